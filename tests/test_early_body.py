"""Bodies answered early (http1.py, tls.SocketReader): an answer given before the body was
read never reads the announced length into memory, the client still receives it (lingering
close, bounded by limits.linger_*), and ``100 Continue`` is sent only once the application
reads the body, i.e. after the guard allowed the request."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import yaml

from davserver.config import ConfigError, load_config
from davserver.http1 import HTTP1Options, Lingerer
from davserver.server import DavServer
from davserver.tls import SocketReader

from .conftest import PROMPT_SECONDS, Instance, client_context, running, server_process, session_for

AUTH = "Basic YWxpY2U6YWxpY2Utc2VjcmV0LXB3"  # alice:alice-secret-pw
WRONG = "Basic YWxpY2U6d3Jvbmc="  # alice:wrong
BOB = "Basic Ym9iOmJvYi1zZWNyZXQtcHcx"  # bob:bob-secret-pw1
LOCKINFO = (b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>x</D:owner></D:lockinfo>")
ANNOUNCED = 256 << 20


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def tune(inst: Instance, **limits: object) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw.setdefault("limits", {}).update(limits)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def tls_to(inst: Instance, port: int, account: str = "alice") -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_context(inst, inst.clients[account]).wrap_socket(sock, server_hostname="localhost")


def first_bytes(tls: ssl.SSLSocket, seconds: float = 5.0) -> bytes:
    tls.settimeout(seconds)
    try:
        return tls.recv(4096)
    except TimeoutError:
        return b""


def head_of(method: str, path: str, auth: str | None, extra: str = "", length: int = ANNOUNCED) -> bytes:
    cred = f"Authorization: {auth}\r\n" if auth else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{cred}{extra}Content-Length: {length}\r\n\r\n".encode()


def lingerer(server: DavServer) -> Lingerer:
    options = server._server.http1  # type: ignore[attr-defined]
    assert isinstance(options, HTTP1Options)
    return options.lingerer


# --- the connection's reader ----------------------------------------------------------


def test_reader_never_allocates_what_it_is_asked_for() -> None:
    """read(1 GiB) with 100 bytes on the wire allocated 1 GiB before (cheroot's drain)."""
    a, b = socket.socketpair()
    try:
        a.sendall(b"x" * 100)
        a.shutdown(socket.SHUT_WR)
        reader = SocketReader(b, "rb", 1 << 16)
        tracemalloc.start()
        try:
            assert reader.read(1 << 30) == b"x" * 100
            assert reader.read(1 << 30) == b""
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"peak {peak} bytes"
    finally:
        a.close()
        b.close()


def test_reader_returns_at_most_max_read_per_call() -> None:
    a, b = socket.socketpair()
    try:
        data = os.urandom(4 * SocketReader.max_read + 123)
        def send() -> None:
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        reader = SocketReader(b, "rb", 1 << 16)
        got = bytearray()
        for size in (-1, None, 1 << 30, 5):
            piece = reader.read(size)
            assert 0 < len(piece) <= SocketReader.max_read
            got += piece
        line = reader.readline()  # no LF in random data for a while: bounded too
        assert len(line) <= SocketReader.max_read
        got += line
        while chunk := reader.read(1 << 20):
            got += chunk
        sender.join()
        assert bytes(got) == data
    finally:
        a.close()
        b.close()


# --- 100 Continue only after the decision ---------------------------------------------


@pytest.mark.parametrize(
    ("what", "method", "path", "auth", "status"),
    [
        ("no password", "PUT", "/files/up.bin", None, b"401"),
        ("wrong password", "PUT", "/files/up.bin", WRONG, b"401"),
        ("a reader writing to a read-only share", "PUT", "/ro/up.bin", AUTH, b"403"),
        ("a reader of team writing to it", "PUT", "/team/up.bin", BOB, b"403"),
    ],
)
def test_no_100_continue_for_a_refused_upload(inst: Instance, server: DavServer, what: str, method: str,
                                              path: str, auth: str | None, status: bytes) -> None:
    account = "bob" if auth == BOB else "alice"
    tls = tls_to(inst, server.port, account)
    tls.sendall(head_of(method, path, auth, "Expect: 100-continue\r\n", 1 << 30))
    got = first_bytes(tls)
    tls.close()
    assert got.startswith(b"HTTP/1.1 " + status), (what, got[:40])
    assert b"100 Continue" not in got and b"Connection: close" in got, what


def test_100_continue_comes_when_the_upload_is_allowed(inst: Instance, server: DavServer) -> None:
    tls = tls_to(inst, server.port)
    tls.sendall(head_of("PUT", "/files/up.bin", AUTH, "Expect: 100-continue\r\n", 5))
    assert first_bytes(tls) == b"HTTP/1.1 100 Continue\r\n\r\n"
    tls.sendall(b"hello")
    got = first_bytes(tls)
    tls.close()
    assert got.startswith(b"HTTP/1.1 201 ")
    assert (inst.home.root / "data" / "files" / "up.bin").read_bytes() == b"hello"


def test_http_client_receives_the_401_of_a_refused_8_mib_upload(inst: Instance, server: DavServer) -> None:
    """Python's http.client sends the whole body, then reads (case 17): it saw SSLEOFError."""
    body = os.urandom(8 << 20)
    for auth, status in ((WRONG, 401), (AUTH, 201)):
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=30,
                                           context=client_context(inst, inst.clients["alice"]))
        try:
            conn.request("PUT", "/files/big.bin", body=body, headers={"Authorization": auth})
            response = conn.getresponse()
            response.read()
            assert response.status == status
        finally:
            conn.close()
    assert (inst.home.root / "data" / "files" / "big.bin").read_bytes() == body


# --- early answers: prompt, bounded, closed ------------------------------------------------


def test_every_early_answer_leaves_the_body_unread(inst: Instance, server: DavServer) -> None:
    """Each answer given before the body was read arrives at once with Connection: close,
    and the server's memory does not follow the announced 256 MiB (it did, per request)."""
    s = session_for(inst)
    url = server.url
    files = inst.home.root / "data" / "files"
    (files / "small.txt").write_text("s")
    (files / "locked.txt").write_text("l")
    lock = s.request("LOCK", url + "files/locked.txt", data=LOCKINFO,
                     headers={"Depth": "0", "Timeout": "Second-120", "Content-Type": "text/xml"})
    assert lock.status_code == 200
    variants = [
        ("OPTIONS, certificate only", "OPTIONS", "/", None, "", b"200"),
        ("PUT into a missing folder", "PUT", "/files/missing/x.bin", AUTH, "", b"409"),
        ("PUT onto a locked file", "PUT", "/files/locked.txt", AUTH, "", b"423"),
        ("PUT with a stale If-Match", "PUT", "/files/small.txt", AUTH, 'If-Match: "stale"\r\n', b"412"),
        ("GET with a body", "GET", "/files/small.txt", AUTH, "", b"200"),
        ("POST to the step-up page", "POST", "/_davserver/", None, "", b""),
        ("PUT without password", "PUT", "/files/x.bin", None, "", b"401"),
        ("PROPFIND with Depth infinity", "PROPFIND", "/files/", AUTH, "Depth: infinity\r\n", b"403"),
    ]
    base = rss_mib()
    for what, method, path, auth, extra, status in variants:
        tls = tls_to(inst, server.port)
        started = time.monotonic()
        tls.sendall(head_of(method, path, auth, extra))
        got = first_bytes(tls)
        waited = time.monotonic() - started
        grew = rss_mib() - base
        tls.close()
        assert got.startswith(b"HTTP/1.1 " + status), (what, got[:40])
        assert b"Connection: close" in got.split(b"\r\n\r\n")[0], what
        assert waited < 2, (what, waited)
        assert grew < 32, f"{what}: +{grew:.0f} MiB"
    # twin: the same kind of request with its body read is kept alive
    tls = tls_to(inst, server.port)
    tls.sendall(head_of("PUT", "/files/small.txt", AUTH, "", 3) + b"new")
    got = first_bytes(tls)
    assert got.startswith(b"HTTP/1.1 204 ") and b"Connection: close" not in got
    tls.sendall(b"GET /files/small.txt HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode() + b"\r\n\r\n")
    got = first_bytes(tls)
    tls.close()
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"new")


@contextmanager
def announcing(inst: Instance, port: int, count: int, size: int, *, send: bool) -> Iterator[list[ssl.SSLSocket]]:
    """`count` certificate-only OPTIONS announcing `size` bytes each; with `send`, each then
    sends zeros as fast as the server takes them, on a thread of its own."""
    socks = [tls_to(inst, port) for _ in range(count)]
    stop = threading.Event()

    def pump(tls: ssl.SSLSocket) -> None:
        block = b"\0" * (1 << 16)
        try:
            while not stop.is_set():
                tls.sendall(block)
        except (OSError, ssl.SSLError):
            pass

    threads = []
    for tls in socks:
        tls.sendall(head_of("OPTIONS", "/", None, "", size))
        if send:
            t = threading.Thread(target=pump, args=(tls,), daemon=True)
            t.start()
            threads.append(t)
    try:
        yield socks
    finally:
        stop.set()
        for tls in socks:
            tls.close()
        for t in threads:
            t.join(5)


def test_four_clients_announcing_4_gib_leave_memory_flat(inst: Instance) -> None:
    """The server in its own process: four certificate-only clients announce 4 GiB each
    (two send nothing, two send as fast as they can); its RSS stays within +32 MiB and a
    certificate holder is served at once. Before: +4 GiB per silent client."""
    with server_process(inst) as (proc, url):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        s = session_for(inst)
        assert s.get(url + "files/").status_code == 200
        base = rss_mib(proc.pid)
        peak = base
        with announcing(inst, port, 2, 4 << 30, send=False) as silent, \
                announcing(inst, port, 2, 4 << 30, send=True):
            for tls in silent:
                assert first_bytes(tls).startswith(b"HTTP/1.1 200 ")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.05)
            started = time.monotonic()
            r = s.get(url + "files/")
            served = time.monotonic() - started
        assert r.status_code == 200 and served < 1.0, served
        assert peak - base < 32, f"RSS {base:.0f} -> {peak:.0f} MiB"


# --- the lingering close and its bounds -------------------------------------------------


def refused_upload(inst: Instance, port: int) -> ssl.SSLSocket:
    tls = tls_to(inst, port)
    tls.sendall(head_of("PUT", "/files/x.bin", WRONG, "", 1 << 30))
    assert first_bytes(tls).startswith(b"HTTP/1.1 401 ")
    return tls


def send_until_cut(tls: ssl.SSLSocket, limit: int, seconds: float = 10.0) -> int:
    sent = 0
    block = b"\0" * (1 << 16)
    deadline = time.monotonic() + seconds
    try:
        while sent < limit and time.monotonic() < deadline:
            tls.sendall(block)
            sent += len(block)
    except (OSError, ssl.SSLError):
        pass
    return sent


def wait_for(predicate: Callable[[], object], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_linger_bytes_ends_the_drain(inst: Instance) -> None:
    tune(inst, linger_bytes=1 << 20)
    with running(inst) as srv:
        tls = refused_upload(inst, srv.port)
        sent = send_until_cut(tls, 64 << 20)
        tls.close()
        assert sent < 32 << 20, f"{sent >> 20} MiB taken past a 1 MiB linger cap"
        assert wait_for(lambda: lingerer(srv).counters["closed_bytes"] == 1)


def test_linger_bytes_twin_a_client_within_the_cap_reads_its_answer(inst: Instance) -> None:
    tune(inst, linger_bytes=16 << 20)
    with running(inst) as srv:
        tls = refused_upload(inst, srv.port)
        assert send_until_cut(tls, 4 << 20) >= 4 << 20
        tls.close()
        assert wait_for(lambda: lingerer(srv).counters["closed_eof"] == 1)
        assert lingerer(srv).counters["closed_bytes"] == 0


def test_linger_seconds_ends_the_drain(inst: Instance) -> None:
    tune(inst, linger_seconds=1)
    with running(inst) as srv:
        tls = refused_upload(inst, srv.port)  # then silent, connection kept open
        started = time.monotonic()
        assert wait_for(lambda: lingerer(srv).counters["closed_time"] == 1, 2 + PROMPT_SECONDS)
        assert 0.8 < time.monotonic() - started < 1 + PROMPT_SECONDS
        assert lingerer(srv).lingering == 0
        tls.close()


def test_linger_connections_caps_the_lingering_sockets(inst: Instance) -> None:
    tune(inst, linger_connections=2)
    with running(inst) as srv:
        held = [refused_upload(inst, srv.port) for _ in range(3)]
        assert wait_for(lambda: lingerer(srv).counters["refused"] == 1)
        counters = lingerer(srv).counters
        assert counters["lingered"] == 2 and lingerer(srv).lingering == 2
        for tls in held:
            tls.close()
        assert wait_for(lambda: lingerer(srv).lingering == 0)
        # the lingering sockets took no worker: a request is served meanwhile too
        assert session_for(inst).get(srv.url + "files/").status_code == 200


def test_linger_seconds_zero_closes_at_once(inst: Instance) -> None:
    tune(inst, linger_seconds=0)
    with running(inst) as srv:
        tls = refused_upload(inst, srv.port)
        assert wait_for(lambda: lingerer(srv).counters["refused"] == 1)
        assert lingerer(srv).counters["lingered"] == 0
        tls.close()


@pytest.mark.parametrize(("key", "value"), [("linger_bytes", -1), ("linger_seconds", -1), ("linger_connections", -1),
                                            ("linger_bytes", "64M"), ("linger_connections", True)])
def test_linger_settings_are_checked(inst: Instance, key: str, value: object) -> None:
    tune(inst, **{key: value})
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        load_config(inst.home)


def test_linger_settings_defaults(inst: Instance) -> None:
    limits = load_config(inst.home).limits
    assert (limits.linger_bytes, limits.linger_seconds, limits.linger_connections) == (64 << 20, 10.0, 64)


def test_lingering_close_ends_tls_with_close_notify(inst: Instance, server: DavServer) -> None:
    """After an early answer the TLS stream ends properly (RFC 8446 §6.1), so a client that
    reads to the end sees a clean end, not an EOF "in violation of protocol"."""
    ctx = client_context(inst, inst.clients["alice"])
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    try:
        tls.sendall(head_of("PUT", "/files/x.bin", WRONG, "", 1 << 30))
        out = b""
        while chunk := tls.recv(65536):  # raises SSLEOFError on an end without close_notify
            out += chunk
        assert out.startswith(b"HTTP/1.1 401 ") and out.endswith(b"invalid credentials\n")
    finally:
        tls.close()
