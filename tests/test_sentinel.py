"""Redis Sentinel: a real master, a replica and three sentinels (quorum 2), two server nodes
finding the master through them. Killing the master: both nodes serve again after the
failover without a restart, a code used before stays used, a lock taken before is still
enforced; while no master answers, every node refuses (503, audited), never lets in."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyotp
import pytest
import redis
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from davserver.cli import main
from davserver.config import ConfigError, Home, load_config, parse_config
from davserver.errors import StartupError
from davserver.server import DavServer
from davserver.store.redis import _USE_OTP

from .conftest import Instance, running, session_for
from .test_check import findings as check_findings

PW = "alice-secret-pw"
REDIS_PW = "sentinel-test-pw"
SERVICE = "davtest"
DOWN_AFTER_MS = 1000  # sentinel down-after-milliseconds: the master is "down" after this
LOCKINFO = (b'<?xml version="1.0" encoding="utf-8" ?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>alice</D:owner></D:lockinfo>")


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (apt-get install {name})")
        pytest.skip(f"{name} is not installed")
    return exe


def _client(port: int, db: int = 0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, db=db, password=REDIS_PW, socket_timeout=2,
                       socket_connect_timeout=2)


def _until(what: str, check: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together while chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class SentinelSet:
    """A master, a replica and three sentinels on free loopback ports, in `folder`."""

    folder: Path
    redis_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_redis(self, port: int, *, replica_of: int | None = None) -> None:
        folder = self.folder / f"redis-{port}"
        folder.mkdir(exist_ok=True)
        args = [_exe("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", str(folder), "--requirepass", REDIS_PW, "--masterauth", REDIS_PW]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(f"redis on {port}", lambda: _client(port).ping())

    def start_sentinel(self, port: int, master: int) -> None:
        folder = self.folder / f"sentinel-{port}"
        folder.mkdir(exist_ok=True)
        conf = folder / "sentinel.conf"  # a sentinel rewrites its file: one each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nrequirepass {REDIS_PW}\n"
            f"sentinel sentinel-pass {REDIS_PW}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\nsentinel auth-pass {SERVICE} {REDIS_PW}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 3000\nsentinel parallel-syncs {SERVICE} 1\n"
        )
        self.procs[port] = subprocess.Popen([_exe("redis-sentinel"), str(conf)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def master_port(self) -> int:
        """The port of the master the sentinels agree on."""
        ports = set()
        for port in self.sentinel_ports:
            state = _client(port).sentinel_master(SERVICE)
            assert isinstance(state, dict), state
            ports.add(int(state["port"]))
        assert len(ports) == 1, ports
        return ports.pop()

    def replicas_in_sync(self, master: int) -> int:
        info = _client(master).info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")

    def ready(self) -> bool:
        """Every sentinel sees the master, the replica and the two other sentinels."""
        for port in self.sentinel_ports:
            state = _client(port).sentinel_master(SERVICE)
            assert isinstance(state, dict), state
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
            if state.get("is_sdown") or state.get("is_odown"):
                return False
        return self.replicas_in_sync(self.master_port()) >= 1

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()

    @property
    def sentinel_list(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    """Master + replica + three sentinels (quorum 2, master down after 1 s), all stopped at the end."""
    s = SentinelSet(tmp_path / "sentinels")
    s.folder.mkdir()
    try:
        master, replica, *s.sentinel_ports = _free_ports(5)
        s.redis_ports = [master, replica]
        s.start_redis(master)
        s.start_redis(replica, replica_of=master)
        for port in s.sentinel_ports:
            s.start_sentinel(port, master)
        _until("the sentinels see each other, the replica in sync", s.ready)
        yield s
    finally:
        s.stop()


def _use_sentinels(inst: Instance, s: SentinelSet, **state: Any) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    pw_file = inst.home.root / "config" / "redis.pw"
    pw_file.write_text(REDIS_PW + "\n")
    pw_file.chmod(0o600)
    raw["state"] = {"backend": "redis", "url": "redis://ignored/2", "prefix": f"t-{uuid.uuid4().hex}:",
                    "password_file": str(pw_file), "sentinels": s.sentinel_list, "sentinel_service": SERVICE,
                    **state}
    raw["throttle"] = {"lock_after": 50, "address_lock_after": 500, "delay_after": 500}
    raw["shares"]["secure"] = {"path": "data/secure", "writers": ["*"], "require": ["password", "totp"]}
    (inst.home.root / "data/secure").mkdir(exist_ok=True)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def _enrol(inst: Instance, account: str) -> pyotp.TOTP:
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "totp", "enable", account, "--json"])
    assert out.exit_code == 0, out.output
    return pyotp.TOTP(json.loads(out.output)["secret"])


def _status(inst: Instance, url: str, account: str = "alice", password: str | None = None, **kw: Any) -> int:
    with session_for(inst, account, password=password, **kw) as s:
        return s.get(url, timeout=30).status_code


def _audit(inst: Instance) -> list[dict[str, Any]]:
    path = inst.home.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _audit_after(inst: Instance, before: int, n: int) -> list[dict[str, Any]]:
    """The `n` 503 records of the audit log after its first `before` lines (a line is
    written once its answer is sent, so an earlier answer's line may still come)."""

    def refused() -> list[dict[str, Any]]:
        return [r for r in _audit(inst)[before:] if r.get("status") == 503]

    _until(f"{n} refusals audited", lambda: len(refused()) >= n, 5)
    time.sleep(0.2)
    assert len(refused()) == n, refused()
    return refused()


def _lock(inst: Instance, url: str) -> str:
    with session_for(inst) as s:
        r = s.request("LOCK", url, data=LOCKINFO, headers={"Depth": "0", "Timeout": "Second-600"}, timeout=30)
    assert r.status_code in (200, 201), r.status_code
    return str(r.headers["Lock-Token"]).strip("<>")


def _put(inst: Instance, url: str, body: bytes, token: str | None = None) -> int:
    headers = {"If": f"(<{token}>)"} if token else {}
    with session_for(inst) as s:
        return s.put(url, data=body, headers=headers, timeout=30).status_code


def test_failover_is_followed_and_codes_and_locks_survive_it(
    inst: Instance, sentinels: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="davserver.store.redis")
    _use_sentinels(inst, sentinels)
    alice, bob = _enrol(inst, "alice"), _enrol(inst, "bob")
    old_master, replica = sentinels.redis_ports
    phone = inst.issue("alice", name="alice-phone")
    with ExitStack() as stack:
        n1 = stack.enter_context(running(inst)).url
        n2 = stack.enter_context(running(inst)).url
        code = alice.now()
        assert _status(inst, n1 + "secure/", password=PW + code) == 200
        token = _lock(inst, n1 + "files/doc.txt")
        assert _put(inst, n2 + "files/doc.txt", b"sneaky") == 423, "the lock holds on the other node"
        # the keys are in the URL's database (2), and on the replica: WAIT had it confirm them
        assert _client(replica, db=2).dbsize() > 0 and _client(replica).dbsize() == 0

        sentinels.kill(old_master)
        killed = time.monotonic()
        seen: list[tuple[float, str, int]] = []
        up = {n1: 0, n2: 0}
        while min(up.values()) < 3:
            assert time.monotonic() - killed < 60, f"no failover within 60 s: {seen[-6:]}"
            for node in (n1, n2):
                status = _status(inst, node + "files/", password=PW)
                seen.append((time.monotonic() - killed, node, status))
                up[node] = up[node] + 1 if status == 200 else 0
            time.sleep(0.1)
        assert {status for _, _, status in seen} <= {200, 503}, seen
        new_master = sentinels.master_port()
        assert new_master == replica
        refused = [t for t, _, status in seen if status == 503]
        print(f"\nfailover: both nodes serve {seen[-1][0]:.1f} s after kill -9 of the master; "
              f"503 from {refused[0] if refused else 0:.1f} s to {refused[-1] if refused else 0:.1f} s "
              f"({len(refused)} of {len(seen)} requests)")
        if refused:
            reasons = {r.get("reason") for r in _audit(inst) if r.get("status") == 503}
            assert reasons == {"store_unavailable"}, reasons
        logs = caplog.text
        assert f"moved from 127.0.0.1:{old_master} to 127.0.0.1:{replica}" in logs

        # The invariants, on the node that did not see the code or the lock, and on the new master.
        # The new master never ran the OTP script (replicas get scripts' effects, not the scripts):
        # the replay below meets NOSCRIPT, and redis-py loads the script and runs it again.
        otp_sha = hashlib.sha1(_USE_OTP.encode(), usedforsecurity=False).hexdigest()  # Redis's name
        assert _client(new_master).script_exists(otp_sha) == [False]
        with session_for(inst, client=phone, password=PW + code) as s:
            assert s.get(n2 + "secure/", timeout=30).status_code == 401, "a code used before is refused after"
        assert _client(new_master).script_exists(otp_sha) == [True]
        assert _put(inst, n2 + "files/doc.txt", b"sneaky") == 423, "a lock taken before is enforced after"
        assert _put(inst, n1 + "files/doc.txt", b"mine", token) in (200, 201, 204), "its holder still writes"

        # With the only replica promoted, nothing can confirm a new code (state.wait_replicas: 1): 503.
        before = len(_audit(inst))
        assert _status(inst, n2 + "secure/", "bob", "bob-secret-pw1" + bob.now()) == 503
        records = _audit_after(inst, before, 1)
        assert [(r["status"], r["reason"], r["cert_subject"]) for r in records] == [
            (503, "store_unavailable", "CN=bob")]
        # The old master comes back empty; the sentinels make it a replica of the new one.
        sentinels.start_redis(old_master)
        _until("the old master is a replica in sync", lambda: sentinels.replicas_in_sync(new_master) >= 1, 60)
        carol = _enrol(inst, "carol")
        assert _status(inst, n1 + "secure/", "carol", "carol-secret-pw" + carol.now()) == 200
        with session_for(inst, client=phone, password=PW + code) as s:
            assert s.get(n1 + "secure/", timeout=30).status_code == 401, "still refused on the first node"

        # No master at all: every node refuses, audited, and nothing is let through.
        sentinels.kill(new_master)
        sentinels.kill(old_master)
        before = len(_audit(inst))
        for node in (n1, n2):
            assert _status(inst, node + "files/", password=PW) == 503
            with session_for(inst, client=phone, password=PW + code) as s:
                assert s.get(node + "secure/", timeout=30).status_code == 503
            assert _put(inst, node + "files/doc.txt", b"sneaky") == 503
        records = _audit_after(inst, before, 6)
        assert {r["reason"] for r in records} == {"store_unavailable"}, records
        assert "no sentinel names a master" in caplog.text


def test_a_write_no_replica_confirms_is_refused_and_the_lock_withdrawn(inst: Instance, sentinels: SentinelSet) -> None:
    """state.wait_replicas: a used code or a new lock that no replica confirms within
    state.wait_seconds is a 503 (audited); with wait_replicas 0 the same sign-in works
    (the twin); with the replica back, both work again."""
    _use_sentinels(inst, sentinels, wait_seconds=0.3)
    alice, carol = _enrol(inst, "alice"), _enrol(inst, "carol")
    config = load_config(inst.home)
    assert config.state.wait_replicas == 1 and config.state.wait_seconds == 0.3
    replica = sentinels.procs[sentinels.redis_ports[1]]
    with running(inst) as node:
        assert _status(inst, node.url + "files/", password=PW) == 200
        replica.send_signal(signal.SIGSTOP)  # connected, but confirms nothing
        try:
            before = len(_audit(inst))
            assert _status(inst, node.url + "secure/", password=PW + alice.now()) == 503
            with session_for(inst) as s:
                r = s.request("LOCK", node.url + "files/held.txt", data=LOCKINFO,
                              headers={"Depth": "0", "Timeout": "Second-600"}, timeout=30)
            assert r.status_code == 503 and "Lock-Token" not in r.headers
            records = _audit_after(inst, before, 2)
            assert [r["reason"] for r in records] == ["store_unavailable"] * 2
            assert all(300 <= r["duration_ms"] < 3000 for r in records), "waited state.wait_seconds, no longer"
            # the twin: not waiting for replicas, the same kind of sign-in is let in
            relaxed = DavServer(replace(config, state=replace(config.state, wait_replicas=0)), port=0)
            relaxed.start()
            try:
                assert _status(inst, relaxed.url + "secure/", "carol", "carol-secret-pw" + carol.now()) == 200
            finally:
                relaxed.stop()
        finally:
            replica.send_signal(signal.SIGCONT)
        master = sentinels.redis_ports[0]
        _until("the replica in sync again", lambda: sentinels.replicas_in_sync(master) >= 1)
        # The lock no replica confirmed was withdrawn: nobody holds its token, nothing blocks a write.
        assert _put(inst, node.url + "files/held.txt", b"free") in (200, 201, 204)
        token = _lock(inst, node.url + "files/held.txt")
        assert _put(inst, node.url + "files/held.txt", b"sneaky") == 423
        assert _put(inst, node.url + "files/held.txt", b"mine", token) in (200, 201, 204)


def test_no_sentinel_at_start_is_a_clear_error(inst: Instance, sentinels: SentinelSet) -> None:
    """No sentinel answers, or they know no such master: the server does not start, with
    one line naming state.sentinels and what failed; the twin (the right name, sentinels
    up) serves."""
    dead = _free_ports(2)
    for state, says in (({"sentinels": [f"127.0.0.1:{p}" for p in dead]},
                         f"no sentinel answers: 127.0.0.1:{dead[0]} (ConnectionError), 127.0.0.1:{dead[1]}"),
                        ({"sentinel_service": "nosuch"}, "name no master 'nosuch' that is up")):
        _use_sentinels(inst, sentinels, **state)
        with pytest.raises(StartupError) as err:
            DavServer(load_config(inst.home), port=0).start()
        assert str(err.value).startswith("state.sentinels: state store (redis) unavailable: ")
        assert says in str(err.value) and "\n" not in str(err.value) and REDIS_PW not in str(err.value)
        out = CliRunner().invoke(main, ["--home", str(inst.home.root), "serve", "--port", "0"])
        assert out.exit_code == 2 and out.output == f"error: {err.value}\n", out.output
        code, found = check_findings(inst)  # davserver check asks the sentinels too, not state.url
        assert code == 1 and [(f["level"], f.get("setting")) for f in found] == [("error", "state.sentinels")], found
        assert says in found[0]["message"]
    _use_sentinels(inst, sentinels)
    assert check_findings(inst) == (0, [])
    with running(inst) as node:
        assert _status(inst, node.url + "files/", password=PW) == 200


BAD_SENTINELS = [
    ("10.0.0.5", "state.sentinels[0]", "host:port"),
    ("10.0.0.5:", "state.sentinels[0]", "1 to 65535"),
    ("10.0.0.5:0", "state.sentinels[0]", "1 to 65535"),
    ("10.0.0.5:65536", "state.sentinels[0]", "1 to 65535"),
    ("10.0.0.5:26379x", "state.sentinels[0]", "1 to 65535"),
    (":26379", "state.sentinels[0]", "host:port"),
    ("2001:db8::7:26379", "state.sentinels[0]", "brackets"),
    ("[2001:db8::7]", "state.sentinels[0]", "brackets"),
    ("[10.0.0.5]:26379", "state.sentinels[0]", "IPv6"),
    ("[nonsense]:26379", "state.sentinels[0]", "IPv6"),
    ("redis://10.0.0.5:26379", "state.sentinels[0]", "host:port"),
    ("my host:26379", "state.sentinels[0]", "host:port"),
    (26379, "state.sentinels[0]", "host:port"),
]


@pytest.mark.parametrize(("entry", "key", "says"), BAD_SENTINELS)
def test_a_bad_sentinel_entry_is_a_config_error_naming_it(entry: Any, key: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"state": {"backend": "redis", "sentinels": ["s1:26379", entry][1:]}}, Home(tmp_path))
    assert err.value.key == key and says in str(err.value), str(err.value)
    assert "host:port" in str(err.value) or "[2001:db8::7]:26379" in str(err.value), "the fix is named"


def test_sentinel_lists_and_urls_that_work_and_those_that_do_not(tmp_path: Path) -> None:
    def state(**kw: Any) -> Any:
        return parse_config({"state": {"backend": "redis", **kw}}, Home(tmp_path)).state

    good = state(sentinels=["s1.internal:26379", " 10.0.0.6:26380 ", "[2001:db8::7]:26379"], url="redis://x/3")
    assert good.sentinels == (("s1.internal", 26379), ("10.0.0.6", 26380), ("2001:db8::7", 26379))
    assert state().sentinels == () and state(sentinels=None).sentinels == ()
    for bad, key in (({"sentinels": "s1:26379"}, "state.sentinels"),
                     ({"sentinels": ["s1:26379", "s1:26379"]}, "state.sentinels[1]"),
                     ({"sentinels": ["s1:26379"], "url": "rediss://x/0"}, "state.url"),
                     ({"sentinels": ["s1:26379"], "url": "unix:///run/redis.sock"}, "state.url")):
        with pytest.raises(ConfigError) as err:
            state(**bad)
        assert err.value.key == key, (bad, err.value.key)


_HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
)


@settings(max_examples=200, deadline=None)
@given(hosts=st.lists(st.tuples(st.one_of(_HOSTS, st.ip_addresses(v=6).map(str)), st.integers(1, 65535)),
                      min_size=1, max_size=5, unique=True))
def test_every_sentinel_address_written_as_documented_reads_back(hosts: list[tuple[str, int]]) -> None:
    """host:port, an IPv6 address in brackets: what is written is what the store is given."""
    written = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts]
    config = parse_config({"state": {"backend": "redis", "sentinels": written}}, Home(Path("/nonexistent")))
    assert config.state.sentinels == tuple(hosts)


@settings(max_examples=200, deadline=None)
@given(host=st.ip_addresses(v=6).map(str), port=st.integers(1, 65535))
def test_an_ipv6_sentinel_without_brackets_is_refused_with_the_fix(host: str, port: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"state": {"backend": "redis", "sentinels": [f"{host}:{port}"]}}, Home(Path("/nonexistent")))
    assert err.value.key == "state.sentinels[0]" and f"[{host}]" not in str(err.value)
    assert "brackets" in str(err.value)
