"""A LOCK is refused on every node while any node is still receiving an upload to the
resource, with ``state.backend: redis`` (redis_davstate.py ``RedisLockStorage.writing``).

WsgiDAV refuses a LOCK during a PUT or PROPPATCH that is still receiving its body
(lock_manager.py ``write_transaction``, CWE-367) but keeps that mark in one process's
memory; with SQLite the mark is a row of the state file (test_workers_race.py). On Redis
it is a member of ``dav:writes`` that names node and process and lapses unless its
process renews it (``WRITE_MARK_SECONDS``), so the mark of a killed process stops
refusing LOCKs at most that long after.

Two real ``davserver serve`` nodes share one real redis-server (conftest ``redis_url``);
the storage-level tests kill a real process holding a mark.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from wsgidav.dav_error import DAVError

from davserver.config import ConfigError, load_config
from davserver.dav import build_dav_app
from davserver.store.redis import RedisStore
from davserver.store.redis_davstate import RedisLockStorage

from .conftest import Instance, client_context, session_for
from .test_dav_state import new_lock
from .test_multinode import LOCKINFO, PW, nodes  # noqa: F401 - nodes is a fixture


def test_a_lock_during_an_upload_on_the_other_node_is_423_and_after_it_200(nodes) -> None:  # noqa: F811
    inst, (n1, n2), _ = nodes
    s = session_for(inst)
    assert s.put(n1 + "files/up.txt", data=b"old").status_code == 201
    port = int(n1.rsplit(":", 1)[1].strip("/"))
    tls = client_context(inst, inst.clients["alice"]).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost")
    auth = base64.b64encode(f"alice:{PW}".encode()).decode()
    body = b"x" * 4096
    try:
        tls.sendall(f"PUT /files/up.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1000])
        time.sleep(0.5)  # node 1 has the first bytes and waits for the rest
        headers = {"Depth": "0", "Timeout": "Second-300"}
        for url in (n2, n1):  # the other node, and the one receiving it
            r = s.request("LOCK", url + "files/up.txt", data=LOCKINFO, headers=headers)
            assert r.status_code == 423, (url, r.status_code, r.text)
        # The twin meanwhile: another resource locks.
        r = s.request("LOCK", n2 + "files/other.txt", data=LOCKINFO, headers=headers)
        assert r.status_code in (200, 201), r.text
        tls.sendall(body[1000:])
        answer = tls.recv(4096)
        assert answer.startswith(b"HTTP/1.1 204"), answer
    finally:
        tls.close()
    # The twin: once the upload is complete the LOCK is granted, on the other node.
    r = s.request("LOCK", n2 + "files/up.txt", data=LOCKINFO, headers=headers)
    assert r.status_code == 200, r.text
    assert (inst.home.root / "data/files/up.txt").read_bytes() == body
    s.close()


_HOLDER = """
import sys, time
from davserver.store.redis import RedisStore
from davserver.store.redis_davstate import RedisLockStorage
locks = RedisLockStorage(RedisStore(sys.argv[1], prefix=sys.argv[2]), write_mark_seconds=float(sys.argv[3]))
with locks.writing("/files/held.txt", lambda: None):
    print("marked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def locks(redis_url: str) -> RedisLockStorage:
    return RedisLockStorage(RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:"))


def _holder(redis_url: str, locks: RedisLockStorage, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, redis_url, locks.store.prefix, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "marked"
    return proc


def _refused(locks: RedisLockStorage, path: str = "/files/held.txt", depth: str = "0") -> bool:
    try:
        got = locks.create(path, new_lock(depth=depth))
    except DAVError as exc:
        assert exc.value == 423
        return True
    locks.delete(got["token"])
    return False


def test_a_killed_processs_mark_lapses_and_a_living_ones_is_renewed(redis_url: str,
                                                                     locks: RedisLockStorage) -> None:
    """The bound hit: with marks of 1 s, a process that holds one for 2.5 s keeps it
    (renewed), also against a depth-infinity LOCK of its folder; killed with SIGKILL,
    its mark refuses LOCKs until it lapses (1 s), then no more. A LOCK elsewhere is
    never refused."""
    proc = _holder(redis_url, locks, 1.0)
    try:
        assert _refused(locks) and _refused(locks, "/files/", depth="infinity")
        assert not _refused(locks, "/files/other.txt") and not _refused(locks, "/files/", depth="0")
        time.sleep(2.5)
        assert _refused(locks), "a living process's mark was not renewed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _refused(locks)  # not yet lapsed
        time.sleep(1.5)
        assert not _refused(locks) and not _refused(locks, "/files/", depth="infinity")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert locks.store.client.zcard(locks.store.prefix + "dav:writes") == 0


def test_a_failed_check_removes_the_mark(locks: RedisLockStorage) -> None:
    class Refused(Exception):
        pass

    def check() -> None:
        raise Refused

    with pytest.raises(Refused), locks.writing("/files/a.txt", check):
        pass
    assert not _refused(locks, "/files/a.txt")
    with locks.writing("/files/a.txt", lambda: None):
        assert _refused(locks, "/files/a.txt")
    assert not _refused(locks, "/files/a.txt")


@pytest.mark.parametrize(("written", "taken"), [(None, 30.0), ("2", 2.0), ("1", 1.0), ("3600", 3600.0)])
def test_locks_write_mark_seconds_reaches_the_storage(inst: Instance, redis_url: str, written: str | None,
                                                      taken: float) -> None:
    """The bound is the setting ``locks.write_mark_seconds`` (default 30, 1–3600): the
    lock storage the server builds on Redis uses it; outside the range it is refused."""
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["state"] = {"backend": "redis", "url": redis_url, "prefix": f"test-{uuid.uuid4().hex}:"}
    if written is not None:
        raw["locks"] = {**raw.get("locks", {}), "write_mark_seconds": float(written)}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    config = load_config(inst.home)
    assert config.locks.write_mark_seconds == taken
    store = RedisStore(redis_url, prefix=raw["state"]["prefix"])
    try:
        app = build_dav_app(config, store)
        assert app.lock_manager is not None
        assert app.lock_manager.storage.write_mark_seconds == taken
    finally:
        store.close()
    for bad in (0.5, 3601):
        raw.setdefault("locks", {})["write_mark_seconds"] = bad
        inst.home.config_file.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match="locks.write_mark_seconds"):
            load_config(inst.home)
