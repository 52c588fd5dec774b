"""SIGTERM: stop accepting, let in-flight requests finish up to the deadline, and
never leave a partial file in place of a complete one."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from .conftest import Instance, client_context

AUTH = "Basic " + base64.b64encode(b"alice:alice-secret-pw").decode()


@contextmanager
def server_process(inst: Instance, shutdown_timeout: float) -> Iterator[tuple[subprocess.Popen[str], int]]:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["server"]["shutdown_timeout"] = shutdown_timeout
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve",
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not port:
            line = proc.stderr.readline()
            if m := re.search(r"serving https://127\.0\.0\.1:(\d+)/", line):
                port = int(m.group(1))
        assert port, "the server did not start"
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def slow_put(inst: Instance, port: int, name: str, body: bytes, seconds: float, on_half: Callable[[], object]) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    tls = client_context(inst, inst.clients["alice"]).wrap_socket(sock, server_hostname="localhost")
    tls.sendall(f"PUT /files/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode())
    pieces = 20
    step = len(body) // pieces
    response = b""
    try:
        for i in range(pieces):
            chunk = body[i * step:] if i == pieces - 1 else body[i * step:(i + 1) * step]
            tls.sendall(chunk)
            if i == pieces // 2:
                on_half()
            time.sleep(seconds / pieces)
        while not response.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in response:
            data = tls.recv(4096)
            if not data:
                break
            response += data
    except OSError:
        pass
    finally:
        tls.close()
    return response


def test_sigterm_lets_an_upload_in_flight_finish(inst: Instance) -> None:
    body = os.urandom(4 << 20)
    with server_process(inst, shutdown_timeout=20) as (proc, port):
        response = slow_put(inst, port, "big.bin", body, 2.0, lambda: proc.send_signal(signal.SIGTERM))
        assert response.startswith(b"HTTP/1.1 201") or response.startswith(b"HTTP/1.1 204"), response[:100]
        assert proc.wait(timeout=20) == 0
    target = inst.home.root / "data/files/big.bin"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(body).digest()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "no longer accepting"


def test_sigterm_deadline_never_leaves_a_partial_file(inst: Instance) -> None:
    target = inst.home.root / "data/files/keep.bin"
    old = os.urandom(1 << 20)
    target.write_bytes(old)
    body = os.urandom(4 << 20)
    with server_process(inst, shutdown_timeout=1) as (proc, port):
        slow_put(inst, port, "keep.bin", body, 6.0, lambda: proc.send_signal(signal.SIGTERM))
        proc.wait(timeout=20)
    assert target.read_bytes() == old, "the old file is intact"
    leftovers = [p.name for p in Path(target.parent).iterdir() if p.name not in ("keep.bin",)]
    assert not [n for n in leftovers if n.startswith(".davserver-upload-")], leftovers
