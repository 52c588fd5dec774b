"""Two server nodes, one Redis, one shared data folder and configuration: everything the
nodes must agree on (used codes, grants, failure counts, WebDAV locks, revocations) holds
across them, and losing a node loses no file."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pyotp
import pytest
import yaml
from click.testing import CliRunner

from davserver.cli import main

from .conftest import Instance, client_context, server_process, session_for
from .test_clients import run_litmus

PW = "alice-secret-pw"
LOCKINFO = (b'<?xml version="1.0" encoding="utf-8" ?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>alice</D:owner></D:lockinfo>")


@pytest.fixture
def nodes(inst: Instance, redis_url: str) -> Iterator[tuple[Instance, list[str], list]]:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["state"] = {"backend": "redis", "url": redis_url, "prefix": f"test-{uuid.uuid4().hex}:"}
    raw["throttle"] = {"lock_after": 6, "address_lock_after": 100, "delay_after": 100}
    raw["shares"]["secure"] = {"path": "data/secure", "writers": ["*"], "require": ["password", "totp"]}
    (inst.home.root / "data/secure").mkdir()
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    with server_process(inst) as (p1, url1), server_process(inst) as (p2, url2):
        yield inst, [url1, url2], [p1, p2]


def enrol(inst: Instance) -> pyotp.TOTP:
    import json

    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "totp", "enable", "alice", "--json"])
    assert out.exit_code == 0, out.output
    return pyotp.TOTP(json.loads(out.output)["secret"])


def get(inst: Instance, url: str, password: str, account: str = "alice") -> int:
    with session_for(inst, account, password=password) as s:
        return s.get(url).status_code


def test_a_code_used_on_one_node_is_refused_on_the_other(nodes) -> None:
    inst, (n1, n2), _ = nodes
    totp = enrol(inst)
    code = totp.now()
    second = inst.issue("alice", name="alice-phone")
    assert get(inst, n1 + "secure/", PW + code) == 200
    with session_for(inst, client=second, password=PW + code) as s:
        assert s.get(n2 + "secure/").status_code == 401, "replayed on node 2 with another certificate"


def test_a_grant_opened_on_one_node_is_honoured_on_the_other(nodes) -> None:
    inst, (n1, n2), _ = nodes
    totp = enrol(inst)
    assert get(inst, n2 + "secure/", PW) == 401, "no grant yet"
    assert get(inst, n1 + "secure/", PW + totp.now()) == 200
    assert get(inst, n2 + "secure/", PW) == 200


def test_failures_on_both_nodes_add_up_to_one_lock(nodes) -> None:
    inst, (n1, n2), _ = nodes
    for i in range(6):
        # distinct guesses: a repeat of the same wrong password is not a new guess (throttle.count_repeats)
        assert get(inst, (n1, n2)[i % 2] + "files/", f"wrong-password-{i}") == 401
    assert get(inst, n1 + "files/", PW) == 401
    assert get(inst, n2 + "files/", PW) == 401
    assert get(inst, n1 + "files/", "bob-secret-pw1", account="bob") == 200, "the twin: bob is not locked"
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "unlock", "alice"])
    assert out.exit_code == 0 and "1 lock" in out.output
    assert get(inst, n2 + "files/", PW) == 200


def test_a_lock_taken_on_one_node_blocks_writes_on_the_other(nodes) -> None:
    inst, (n1, n2), _ = nodes
    s = session_for(inst)
    r = s.request("LOCK", n1 + "files/doc.txt", data=LOCKINFO, headers={"Depth": "0", "Timeout": "Second-300"})
    assert r.status_code in (200, 201)
    token = r.headers["Lock-Token"].strip("<>")
    assert s.put(n2 + "files/doc.txt", data=b"sneaky").status_code == 423
    assert s.put(n2 + "files/doc.txt", data=b"mine", headers={"If": f"(<{token}>)"}).status_code in (200, 201, 204)
    assert s.request("UNLOCK", n2 + "files/doc.txt", headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert s.put(n1 + "files/doc.txt", data=b"free").status_code in (200, 201, 204)
    s.close()


def test_racing_for_the_same_lock_on_two_nodes_one_wins(nodes) -> None:
    inst, (n1, n2), _ = nodes
    for round_ in range(5):
        results: list[int] = []
        barrier = threading.Barrier(2)

        def take(url: str, name: str, barrier: threading.Barrier, results: list[int]) -> None:
            with session_for(inst) as s:
                barrier.wait()
                r = s.request("LOCK", url + name, data=LOCKINFO, headers={"Depth": "0", "Timeout": "Second-60"})
                results.append(r.status_code)

        name = f"files/race{round_}.txt"
        threads = [threading.Thread(target=take, args=(u, name, barrier, results)) for u in (n1, n2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) in ([200, 423], [201, 423]), results


def test_revocation_and_password_change_reach_every_node(nodes) -> None:
    inst, (n1, n2), _ = nodes
    assert get(inst, n1 + "files/", PW) == 200 and get(inst, n2 + "files/", PW) == 200
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "passwd", "alice", "--password-stdin"],
                             input="a-new-password-1\n")
    assert out.exit_code == 0, out.output
    assert get(inst, n1 + "files/", PW) == 401 and get(inst, n2 + "files/", PW) == 401
    assert get(inst, n2 + "files/", "a-new-password-1") == 200
    serial = inst.clients["alice"].issued.serial
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "cert", "revoke", serial])
    assert out.exit_code == 0, out.output
    assert get(inst, n1 + "files/", "a-new-password-1") == 401 and get(inst, n2 + "files/", "a-new-password-1") == 401


def test_litmus_on_node_2_while_node_1_is_busy(nodes, tmp_path) -> None:
    inst, (n1, n2), _ = nodes
    stop = threading.Event()

    def load() -> None:
        with session_for(inst, "bob") as s:
            while not stop.is_set():
                s.put(n1 + "files/load.bin", data=os.urandom(256 << 10))
                s.request("PROPFIND", n1 + "files/", headers={"Depth": "1"})

    worker = threading.Thread(target=load)
    worker.start()
    try:
        run_litmus(inst, tmp_path, n2 + "files/")  # fails the test on any failed suite
    finally:
        stop.set()
        worker.join(timeout=30)


def test_killing_a_node_mid_upload_loses_no_file(nodes) -> None:
    inst, (n1, n2), procs = nodes
    target = inst.home.root / "data/files/precious.bin"
    old = os.urandom(1 << 20)
    target.write_bytes(old)
    port = int(n1.rsplit(":", 1)[1].strip("/"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = client_context(inst, inst.clients["alice"]).wrap_socket(sock, server_hostname="localhost")
    auth = base64.b64encode(f"alice:{PW}".encode()).decode()
    tls.sendall(f"PUT /files/precious.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                f"Content-Length: {8 << 20}\r\n\r\n".encode())
    tls.sendall(os.urandom(3 << 20))
    time.sleep(0.3)
    procs[0].kill()  # node 1 dies mid-upload
    procs[0].wait(timeout=10)
    tls.close()
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(old).digest()
    with session_for(inst) as s:
        assert s.get(n2 + "files/precious.bin").content == old, "node 2 keeps serving"
        assert s.put(n2 + "files/precious.bin", data=b"new").status_code in (200, 201, 204)
    assert target.read_bytes() == b"new"


def test_redis_down_fails_closed(inst: Instance, tmp_path) -> None:
    """No Redis at start: a clear one-line error. Redis gone while serving: 503, never a way in."""
    import shutil
    import subprocess

    from .conftest import free_port

    raw = yaml.safe_load(inst.home.config_file.read_text())
    port = free_port()
    raw["state"] = {"backend": "redis", "url": f"redis://127.0.0.1:{port}/0"}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "serve", "--port", "0"])
    assert out.exit_code == 2 and "state.url" in out.output and "Traceback" not in out.output
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required"
    redis_proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        with server_process(inst) as (_proc, url):
            assert get(inst, url + "files/", PW) == 200
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            with session_for(inst, password=PW) as s:
                r = s.get(url + "files/")
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert get(inst, url + "files/", "wrong-password") == 503, "no answer on credentials without the store"
    finally:
        if redis_proc.poll() is None:
            redis_proc.kill()
        redis_proc.wait(timeout=10)
