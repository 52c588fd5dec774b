"""Bounded resources and malformed input, from the attacker's side: every refusal is a
clear 4xx (never a 500, never a hang), and each has a twin that shows normal use still works."""

from __future__ import annotations

import base64
import resource
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import yaml

from davserver.server import DavServer

from .conftest import PROMPT_SECONDS, Instance, client_context, running, session_for

AUTH = "Basic " + base64.b64encode(b"alice:alice-secret-pw").decode()
PROPFIND_BODY = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


def tune(inst: Instance, **sections: dict) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    for key, values in sections.items():
        raw.setdefault(key, {}).update(values)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


@pytest.fixture
def fast(inst: Instance) -> Iterator[DavServer]:
    """A server with short deadlines, so slow clients are cut off within the test's patience."""
    tune(inst, limits={"header_seconds": 2, "body_grace_seconds": 2, "body_min_bytes_per_second": 20000,
                       "xml_body_bytes": 4096})
    with running(inst) as server:
        yield server


def raw_tls(inst: Instance, server: DavServer, account: str = "alice") -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return client_context(inst, inst.clients[account]).wrap_socket(sock, server_hostname="localhost")


def read_response(tls: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    except (ssl.SSLError, OSError):
        pass
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


# --- XML bodies and Depth ---------------------------------------------------------------


def test_oversized_xml_body_is_refused_before_it_is_read(inst: Instance, fast: DavServer) -> None:
    s = session_for(inst)
    big = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>' + b"<D:x/>" * 2000 + b"</D:prop></D:propfind>"
    r = s.request("PROPFIND", fast.url + "files/", data=big, headers={"Depth": "1"})
    assert r.status_code == 413
    assert r.headers.get("Connection", "").lower() == "close"
    r = s.request("PROPFIND", fast.url + "files/", data=iter([big[:3000], big[3000:]]), headers={"Depth": "1"})
    assert r.status_code == 413, "a chunked body over the cap"
    assert s.request("PROPFIND", fast.url + "files/", data=PROPFIND_BODY, headers={"Depth": "1"}).status_code == 207
    r = s.request("PROPFIND", fast.url + "files/", data=iter([PROPFIND_BODY[:20], PROPFIND_BODY[20:]]),
                  headers={"Depth": "1"})
    assert r.status_code == 207, "a small chunked XML body is read, not ignored"


@pytest.mark.parametrize("depth", [None, "infinity", "Infinity", "2", "bogus"])
def test_propfind_must_have_a_finite_depth(inst: Instance, server: DavServer, depth: str | None) -> None:
    s = session_for(inst)
    headers = {"Depth": depth} if depth is not None else {}
    r = s.request("PROPFIND", server.url + "files/", headers=headers)
    assert r.status_code == 403
    assert "propfind-finite-depth" in r.text
    assert s.request("PROPFIND", server.url + "files/", headers={"Depth": "1"}).status_code == 207
    assert s.request("PROPFIND", server.url + "files/", headers={"Depth": "0"}).status_code == 207


def test_entity_expansion_is_refused(inst: Instance, server: DavServer) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
                   for i in range(1, 10))
        + b']><D:propfind xmlns:D="DAV:"><D:prop><D:x>&lol9;</D:x></D:prop></D:propfind>'
    )
    started = time.monotonic()
    r = session_for(inst).request("PROPFIND", server.url + "files/", data=bomb, headers={"Depth": "0"})
    assert r.status_code == 400 and time.monotonic() - started < PROMPT_SECONDS  # expanded: 10**9 "lol"s
    external = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b'<D:propfind xmlns:D="DAV:"><D:prop><D:x>&e;</D:x></D:prop></D:propfind>')
    r = session_for(inst).request("PROPFIND", server.url + "files/", data=external, headers={"Depth": "0"})
    assert r.status_code == 400 and "root:" not in r.text


def test_huge_headers_are_refused(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    r = s.get(server.url + "files/", headers={"X-Pad": "a" * (80 << 10)})
    assert 400 <= r.status_code < 500
    assert session_for(inst).get(server.url + "files/").status_code == 200


# --- slow clients -------------------------------------------------------------------------


def test_slowloris_headers_are_cut_off_and_others_are_served(inst: Instance, fast: DavServer) -> None:
    slow = []
    for _ in range(4):
        tls = raw_tls(inst, fast)
        tls.sendall(b"GET /files/ HTTP/1.1\r\nHost: x\r\n")
        slow.append(tls)
    try:
        # A normal client is served while they are pending (16 workers, 4 held here; a
        # stall of every worker is test_header_phase's and test_handshake_flood's subject).
        assert session_for(inst).get(fast.url + "files/").status_code == 200
        deadline = time.monotonic() + 6
        cut = 0
        for tls in slow:
            try:
                while time.monotonic() < deadline:
                    tls.sendall(b"X-Trickle: 1\r\n")  # a header line now and then, never the blank line
                    time.sleep(0.5)
            except (OSError, ssl.SSLError):
                cut += 1
        assert cut == len(slow), "every trickling client was cut off by the whole-request deadline"
    finally:
        for tls in slow:
            tls.close()


def test_a_trickled_upload_is_cut_off_and_the_old_file_survives(inst: Instance, fast: DavServer) -> None:
    target = inst.home.root / "data/files/keep.txt"
    target.write_bytes(b"old content\n")
    tls = raw_tls(inst, fast)
    body_len = 100_000
    tls.sendall(f"PUT /files/keep.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                f"Content-Length: {body_len}\r\n\r\n".encode())
    cut = False
    started = time.monotonic()
    try:
        while time.monotonic() - started < 8:
            tls.sendall(b"x" * 100)
            time.sleep(0.2)
    except (OSError, ssl.SSLError):
        cut = True
    tls.close()
    assert cut, "a body far below the minimum rate is cut off"
    time.sleep(0.3)
    assert target.read_bytes() == b"old content\n"
    r = session_for(inst).put(fast.url + "files/keep.txt", data=b"x" * body_len)
    assert r.status_code in (200, 201, 204)


def test_unauthenticated_big_upload_is_not_read_into_memory(inst: Instance, server: DavServer) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tls = raw_tls(inst, server)
    tls.sendall(b"PUT /files/huge.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\n"
                b"Content-Length: 1073741824\r\n\r\n")
    sent = 0
    block = b"\0" * (1 << 20)
    try:
        while sent < (256 << 20):
            tls.sendall(block)
            sent += len(block)
    except (OSError, ssl.SSLError):
        pass
    tls.close()
    assert sent < (256 << 20), "the server closed the connection instead of draining the body"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 16 << 10, f"peak memory grew by {grown_kib} KiB"
    assert not (inst.home.root / "data/files/huge.bin").exists()


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/files/%zz", {}),
        ("GET", "/files/%", {}),
        ("GET", "/files/a%00b", {}),
        ("GET", "/files/", {"Range": "bytes=abc"}),
        ("GET", "/ro/readme.txt", {"Range": "bytes=999-1"}),
        ("GET", "/ro/readme.txt", {"Range": "bytes=-"}),
        ("BREW", "/files/", {}),
        ("PROPFIND", "/files/", {"Depth": "1", "Content-Type": "application/xml"}),
        ("MOVE", "/files/x", {"Destination": "::::"}),
        ("COPY", "/ro/readme.txt", {"Destination": "https://evil.example/files/x"}),
        ("LOCK", "/files/x", {"Timeout": "Second-abc"}),
        ("PUT", "/files/x", {"If": "(<not-a-token"}),
        ("GET", "/files/" + "a" * 300, {}),
    ],
)
def test_malformed_requests_get_a_4xx(inst: Instance, server: DavServer, method: str, path: str,
                                      headers: dict[str, str]) -> None:
    tls = raw_tls(inst, server)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    body = b"<not xml" if method in ("PROPFIND", "LOCK") else b""
    tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    response = read_response(tls)
    tls.close()
    status = status_of(response)
    assert status < 500, response[:300]
    text = response.decode("latin-1")
    for leak in (str(inst.home.root), "Traceback", "Python/", "CPython"):
        assert leak not in text
    if status >= 400:
        assert "WsgiDAV" not in text, "error pages name no software version"


def test_unicode_names_round_trip(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    for name in ("café.txt", "cafe\u0301.txt", "📁 notes.txt", "日本語.txt", "x" * 250):
        url = server.url + "files/" + name
        assert s.put(url, data=name.encode()).status_code in (201, 204), name
        assert s.get(url).content == name.encode(), name
    too_long = server.url + "files/" + "y" * 300
    assert 400 <= s.put(too_long, data=b"x").status_code < 500
