"""Strict HTTP/1.1 framing (http1.py): every ambiguous or malformed framing is answered
400 and closed, with one audit line, and no byte of a body ever runs as a request;
each refusal has a well-formed twin that is served (and keeps the connection alive)."""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from davserver.http1 import FramingError, RequestFraming, frame_request, read_fields
from davserver.server import DavServer

from .conftest import Instance, client_context, session_for

AUTH = "Basic YWxpY2U6YWxpY2Utc2VjcmV0LXB3"  # alice:alice-secret-pw


# --- the parser, in-process ---------------------------------------------------------


def frame(head: bytes, *, http11: bool = True) -> RequestFraming:
    return frame_request(read_fields(io.BytesIO(head + b"\r\n")), http11=http11)


GOOD = b"Host: x\r\nContent-Length: 3\r\n"

#: (name, header section): each must be refused. The exact inputs of the issue and case 15.
BAD_HEADERS = [
    ("two different Content-Length", b"Host: x\r\nContent-Length: 3\r\nContent-Length: 0\r\n"),
    ("two different Content-Length, one line", b"Host: x\r\nContent-Length: 3, 0\r\n"),
    ("Transfer-Encoding with Content-Length", b"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
    ("space before the colon", b"Host: x\r\nTransfer-Encoding : chunked\r\n"),
    ("tab before the colon", b"Host: x\r\nContent-Length\t: 3\r\n"),
    ("obs-fold", b"Host: x\r\nTransfer-Encoding:\r\n chunked\r\n"),
    ("obs-fold with tab", b"Host: x\r\nX-A: 1\r\n\tContent-Length: 3\r\n"),
    ("Content-Length +3", b"Host: x\r\nContent-Length: +3\r\n"),
    ("Content-Length -3", b"Host: x\r\nContent-Length: -3\r\n"),
    ("Content-Length 0x3", b"Host: x\r\nContent-Length: 0x3\r\n"),
    ("Content-Length 1_0", b"Host: x\r\nContent-Length: 1_0\r\n"),
    ("Content-Length empty", b"Host: x\r\nContent-Length: \r\n"),
    ("Content-Length 20 digits", b"Host: x\r\nContent-Length: 12345678901234567890\r\n"),
    ("NUL in a value", b"Host: x\r\nX-A: a\x00b\r\n"),
    ("bare CR in a value", b"Host: x\r\nX-A: a\rb\r\n"),
    ("control character in a value", b"Host: x\r\nX-A: a\x01b\r\n"),
    ("bare LF line end", b"Host: x\r\nX-A: a\n"),
    ("no Host", b"Content-Length: 3\r\n"),
    ("two Host", b"Host: x\r\nHost: y\r\n"),
    ("two Authorization", b"Host: x\r\nAuthorization: Basic a\r\nAuthorization: Basic b\r\n"),
    ("two Destination", b"Host: x\r\nDestination: /a\r\nDestination: /b\r\n"),
    ("Transfer-Encoding gzip, chunked", b"Host: x\r\nTransfer-Encoding: gzip, chunked\r\n"),
    ("Transfer-Encoding chunked, chunked", b"Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
    ("Transfer-Encoding identity", b"Host: x\r\nTransfer-Encoding: identity\r\n"),
    ("Transfer-Encoding xchunked", b"Host: x\r\nTransfer-Encoding: xchunked\r\n"),
    ("Transfer-Encoding chunked;x", b"Host: x\r\nTransfer-Encoding: chunked;x=1\r\n"),
    ("no colon", b"Host: x\r\nContent-Length 3\r\n"),
    ("empty name", b"Host: x\r\n: 3\r\n"),
    ("name with a slash", b"Host: x\r\nContent/Length: 3\r\n"),
]

#: (name, header section, expected length, chunked): the well-formed twins.
GOOD_HEADERS = [
    ("one Content-Length", GOOD, 3, False),
    ("the same Content-Length twice", b"Host: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n", 3, False),
    ("the same Content-Length as a list", b"Host: x\r\nContent-Length: 3, 3\r\n", 3, False),
    ("leading zeros", b"Host: x\r\nContent-Length: 003\r\n", 3, False),
    ("over 4 GiB", b"Host: x\r\nContent-Length: 5000000000\r\n", 5000000000, False),
    ("chunked", b"Host: x\r\nTransfer-Encoding: chunked\r\n", 0, True),
    ("Chunked in capitals, spaces", b"Host: x\r\nTransfer-Encoding:   Chunked  \r\n", 0, True),
    ("no body", b"Host: x\r\n", 0, False),
    ("tab and obs-text in a value", b"Host: x\r\nX-A: a\tb \xe9\r\n", 0, False),
    ("empty Host", b"Host: \r\n", 0, False),
]


@pytest.mark.parametrize(("name", "head"), BAD_HEADERS, ids=[n for n, _ in BAD_HEADERS])
def test_ambiguous_framing_is_refused(name: str, head: bytes) -> None:
    with pytest.raises(FramingError):
        frame(head)


@pytest.mark.parametrize(("name", "head", "length", "chunked"), GOOD_HEADERS, ids=[n for n, *_ in GOOD_HEADERS])
def test_well_formed_framing_is_taken(name: str, head: bytes, length: int, chunked: bool) -> None:
    framing = frame(head)
    assert (framing.length, framing.chunked) == (length, chunked)


def test_http10_needs_no_host_but_may_not_chunk() -> None:
    assert frame(b"Content-Length: 2\r\n", http11=False).length == 2
    assert frame(b"", http11=False).close  # HTTP/1.0 closes unless it asks to keep alive
    assert not frame(b"Connection: Keep-Alive\r\n", http11=False).close
    with pytest.raises(FramingError):
        frame(b"Transfer-Encoding: chunked\r\n", http11=False)


def test_underscore_names_are_dropped() -> None:
    """WSGI maps Content_Length and Content-Length to one key: the underscore one never counts."""
    framing = frame(b"Host: x\r\nContent_Length: 99\r\nX_Forwarded_For: 1.2.3.4\r\n")
    assert framing.length == 0 and framing.headers == {b"Host": b"x"}


def test_connection_and_expect_tokens() -> None:
    assert frame(b"Host: x\r\nConnection: keep-alive, Close\r\n").close
    assert not frame(b"Host: x\r\nConnection: keep-alive\r\n").close
    assert frame(b"Host: x\r\nExpect: 100-Continue\r\n").expect_continue
    assert not frame(b"Expect: 100-continue\r\n", http11=False).expect_continue


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=24))
def test_content_length_is_digits_only(value: bytes) -> None:
    """For any value: accepted exactly when it is 1 to 19 ASCII digits (after OWS), and then
    the length is its decimal value; never an exception other than FramingError."""
    assume(b"\n" not in value)  # a line feed ends the field line: a different request
    head = b"Host: x\r\nContent-Length: " + value + b"\r\n"
    stripped = value.strip(b" \t")
    try:
        framing = frame(head)
    except FramingError:
        assert not (stripped.isdigit() and stripped.isascii() and 1 <= len(stripped) <= 19 and b"\r" not in value)
        return
    assert stripped.isdigit() and len(stripped) <= 19
    assert framing.length == int(stripped)


_TCHAR = st.sampled_from(list(b"!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.lists(_TCHAR, min_size=1, max_size=12).map(bytes),
    value=st.binary(max_size=30),
    junk=st.sampled_from([b"", b" ", b"\t", b"\x00", b"\r", b"\x0b"]),
)
def test_any_field_line_is_taken_only_when_well_formed(name: bytes, value: bytes, junk: bytes) -> None:
    """A name that is a token directly followed by the colon, and a value without control
    characters, is taken as is (minus surrounding whitespace); anything else is refused."""
    assume(b"\n" not in value)  # a line feed ends the field line: a different request
    if name.title() in (b"Host", b"Content-Length", b"Transfer-Encoding"):
        name = b"X-" + name
    line = name + junk + b":" + value
    clean = not junk and not any(c < 0x20 and c != 0x09 or c == 0x7F for c in value)
    try:
        framing = frame(b"Host: x\r\n" + line + b"\r\n")
    except FramingError:
        assert not clean
        return
    assert clean
    if b"_" not in name:
        assert framing.headers[name.title()] == value.strip(b" \t")


# --- a live server -----------------------------------------------------------------


def _tls(inst: Instance, server: DavServer) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return client_context(inst, inst.clients["alice"]).wrap_socket(sock, server_hostname="localhost")


def _read_all(tls: ssl.SSLSocket, seconds: float = 5.0) -> tuple[bytes, bool]:
    """Everything until the server closes (True) or `seconds` pass without it (False)."""
    out = b""
    tls.settimeout(seconds)
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                return out, True
            out += chunk
    except TimeoutError:
        return out, False
    except (ssl.SSLError, OSError):
        return out, True


def _answers(response: bytes) -> int:
    """How many responses (status lines) are in what the server sent."""
    return len(re.findall(rb"(?:^|\r\n)HTTP/1\.1 [0-9]{3} ", response))


def _audit_lines(inst: Instance) -> list[dict]:
    path = inst.home.root / "state" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smuggled(victim: str) -> bytes:
    return (f"DELETE /files/{victim} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _live_variants() -> list[tuple[str, bytes]]:
    head = f"PUT /files/carrier HTTP/1.1\r\nAuthorization: {AUTH}\r\n"
    body = _smuggled("victim.txt")
    n = len(body)
    return [
        ("CL=N then CL=0", f"{head}Host: x\r\nContent-Length: {n}\r\nContent-Length: 0\r\n\r\n".encode() + body),
        ("CL=0 then CL=N", f"{head}Host: x\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n".encode() + body),
        ("TE and CL", f"{head}Host: x\r\nContent-Length: {n + 5}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
         + b"0\r\n\r\n" + body),
        ("space before the colon", f"{head}Host: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n".encode()
         + b"0\r\n\r\n" + body),
        ("obs-fold TE", f"{head}Host: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\n".encode()
         + b"0\r\n\r\n" + body),
        ("CL +3", f"{head}Host: x\r\nContent-Length: +{n}\r\n\r\n".encode() + body),
        ("NUL in a value", f"{head}Host: x\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n".encode() + body),
        ("bare CR in a value", f"{head}Host: x\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n".encode() + body),
        ("no Host", f"{head}Content-Length: 0\r\n\r\n".encode() + body),
        ("two Host", f"{head}Host: x\r\nHost: y\r\nContent-Length: 0\r\n\r\n".encode() + body),
        ("TE gzip", f"{head}Host: x\r\nTransfer-Encoding: gzip\r\n\r\n".encode() + body),
        ("TE in HTTP/1.0", f"PUT /files/carrier HTTP/1.0\r\nAuthorization: {AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n"
         .encode() + b"0\r\n\r\n" + body),
    ]


def test_live_framing_variants_are_refused_closed_and_audited(inst: Instance, server: DavServer) -> None:
    """Each variant: 400 with Connection: close, the connection closed, exactly one audit line
    (deny, bad_framing, 400), and the request hidden in the body never runs."""
    files = inst.home.root / "data" / "files"
    for name, data in _live_variants():
        (files / "victim.txt").write_text("must survive")
        before = len(_audit_lines(inst))
        tls = _tls(inst, server)
        tls.sendall(data)
        response, closed = _read_all(tls)
        tls.close()
        assert response.startswith(b"HTTP/1.1 400 "), (name, response[:80])
        assert _answers(response) == 1, (name, response)
        assert b"Connection: close" in response, name
        assert closed, f"{name}: the connection stays open"
        assert (files / "victim.txt").read_text() == "must survive", name
        assert not (files / "carrier").exists(), name
        time.sleep(0.05)
        lines = _audit_lines(inst)[before:]
        assert len(lines) == 1, (name, lines)
        assert (lines[0]["decision"], lines[0]["reason"], lines[0]["status"]) == ("deny", "bad_framing", 400), name
        assert lines[0]["cert_subject"] == "CN=alice" and lines[0]["method"] in ("PUT", None)


def test_live_well_formed_twins_are_served_on_one_connection(inst: Instance, server: DavServer) -> None:
    """The twins on one kept-alive connection: identical Content-Length twice, a chunked PUT
    with an extension and a trailer, then a GET: all served, in order, the connection open."""
    files = inst.home.root / "data" / "files"
    tls = _tls(inst, server)
    requests = (
        f"PUT /files/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nContent-Length: 3\r\n"
        f"Content-Length: 3\r\n\r\nabc"
        f"PUT /files/b.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"3;name=value\r\nxyz\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
        f"GET /files/a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n"
    ).encode()
    tls.sendall(requests)
    response, closed = _read_all(tls, seconds=2.0)
    tls.close()
    assert not closed, "a well-formed exchange keeps the connection"
    statuses = re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", response)
    assert statuses == [b"201", b"201", b"200"], response
    assert response.endswith(b"abc")
    assert (files / "a.txt").read_bytes() == b"abc"
    assert (files / "b.txt").read_bytes() == b"xyz0123456789"


def test_http10_without_host_is_served(inst: Instance, server: DavServer) -> None:
    (inst.home.root / "data" / "files" / "h.txt").write_text("ten")
    tls = _tls(inst, server)
    tls.sendall(f"GET /files/h.txt HTTP/1.0\r\nAuthorization: {AUTH}\r\n\r\n".encode())
    response, closed = _read_all(tls)
    tls.close()
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"ten") and closed


BAD_CHUNK_SIZES = [b"0x3", b"+3", b"1_0", b"-5", b" 3", b"3 ", b"", b"g", b"3\x00", b"12345678901234567"]


def test_live_bad_chunk_sizes_are_refused(inst: Instance, server: DavServer) -> None:
    """Python's int(x, 16) takes 0x3, +3, 1_0 and -5: here each is a 400, the upload is not
    stored, the connection is closed and the audit line says bad_framing."""
    files = inst.home.root / "data" / "files"
    for size in BAD_CHUNK_SIZES:
        before = len(_audit_lines(inst))
        tls = _tls(inst, server)
        tls.sendall(f"PUT /files/chunk.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                    f"Transfer-Encoding: chunked\r\n\r\n".encode() + size + b"\r\nabc\r\n0\r\n\r\n"
                    + _smuggled("v.txt"))
        response, closed = _read_all(tls)
        tls.close()
        assert response.startswith(b"HTTP/1.1 400 "), (size, response[:60])
        assert _answers(response) == 1 and closed, size
        assert not (files / "chunk.txt").exists(), size
        time.sleep(0.05)
        lines = _audit_lines(inst)[before:]
        assert len(lines) == 1, (size, lines)
        assert (lines[0]["decision"], lines[0]["reason"], lines[0]["status"]) == ("deny", "bad_framing", 400), size
    # twin: the same sizes written correctly
    s = session_for(inst)
    r = s.put(server.url + "files/chunk.txt", data=iter([b"abc", b"0123456789abcdef"]))
    assert r.status_code == 201 and (files / "chunk.txt").read_bytes() == b"abc0123456789abcdef"


def test_a_chunked_body_cut_off_is_not_stored(inst: Instance, server: DavServer) -> None:
    """The end of the stream before the last chunk is a broken body, not a short file."""
    tls = _tls(inst, server)
    tls.sendall(f"PUT /files/cut.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode())
    time.sleep(0.2)
    tls.close()
    time.sleep(0.5)
    assert not Path(inst.home.root / "data" / "files" / "cut.txt").exists()


def test_unread_chunked_body_never_runs_as_a_request(inst: Instance, server: DavServer) -> None:
    """A PUT into a missing folder is answered 409 before its chunked body is read. cheroot
    kept such a connection open and parsed the unread body as the next request; here the
    connection closes after the one answer."""
    files = inst.home.root / "data" / "files"
    (files / "victim.txt").write_text("must survive")
    inner = _smuggled("victim.txt")
    tls = _tls(inst, server)
    tls.sendall(f"PUT /files/missing/x HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n".encode()
                + f"{len(inner):x}\r\n".encode() + inner + b"\r\n0\r\n\r\n")
    response, closed = _read_all(tls)
    tls.close()
    assert response.startswith(b"HTTP/1.1 409 ") and _answers(response) == 1 and closed, response
    assert b"Connection: close" in response
    assert (files / "victim.txt").read_text() == "must survive"


@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "LOCK"])
def test_live_bad_chunk_in_an_xml_body_is_refused(inst: Instance, server: DavServer, method: str) -> None:
    """XML bodies are read by the request limits before WsgiDAV: the same 400, one audit line."""
    xml = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    for size, status in ((b"0x10", b"400"), (f"{len(xml):x}".encode(), None)):
        before = len(_audit_lines(inst))
        tls = _tls(inst, server)
        target = "/files/lock-target.txt" if method == "LOCK" else "/files/"  # a share root cannot be locked
        tls.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nDepth: 0\r\n"
                    f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
                    + size + b"\r\n" + xml + b"\r\n0\r\n\r\n")
        response, closed = _read_all(tls)
        tls.close()
        assert _answers(response) == 1 and closed, (size, response[:100])
        time.sleep(0.05)
        lines = _audit_lines(inst)[before:]
        assert len(lines) == 1, lines
        if status is not None:
            assert response.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in response
            assert (lines[0]["decision"], lines[0]["reason"], lines[0]["status"]) == ("deny", "bad_framing", 400)
        else:  # twin: the well-formed chunk is parsed as XML (whatever WsgiDAV then answers)
            assert lines[0]["reason"] != "bad_framing", lines
