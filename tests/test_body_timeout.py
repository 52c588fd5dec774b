"""A request body that stops arriving at ``limits.body_min_bytes_per_second`` is answered
408 Request Timeout (RFC 9110 §15.5.9) with ``Connection: close`` and audited
``request_timeout``; the part that came is never processed as if it were the whole body.

Before, a stalled PUT was a 400 ("the request body ended early") and a stalled PROPFIND
was evaluated with its cut body (a 404 for a missing file, a 400 for the broken XML): the
kind is every reader of a body — WsgiDAV's PUT copy loop, its XML parse, the short
PROPFIND path, limits.py's chunked XML read, the step-up form — and it is fixed where they
all read: ``metering.CountedInput``. Each stalled case has a twin sent at a fair rate.
Real TLS, real certificates, the server's own watchdog (2 s grace, 20,000 bytes/s).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from davserver.server import DavServer

from .conftest import Instance, client_context, session_for
from .test_limits import AUTH, PROPFIND_BODY, fast, raw_tls, read_response, status_of

__all__ = ["fast"]  # the fixture, imported for use here

PROPPATCH_BODY = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
                  b"<Z:note>kept</Z:note></D:prop></D:set></D:propertyupdate>")
LOCK_BODY = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
             b"<D:locktype><D:write/></D:locktype></D:lockinfo>")

# (method, path, extra headers, body); every one is answered 2xx when its body arrives whole.
CASES = {
    "PUT new file": ("PUT", "/files/new.bin", "", b"n" * 5000),
    "PUT over a file": ("PUT", "/files/keep.txt", "", b"r" * 5000),
    "PROPFIND": ("PROPFIND", "/files/keep.txt", "Depth: 0\r\nContent-Type: application/xml\r\n", PROPFIND_BODY),
    "PROPPATCH": ("PROPPATCH", "/files/keep.txt", "Content-Type: application/xml\r\n", PROPPATCH_BODY),
    "LOCK": ("LOCK", "/files/keep.txt", "Timeout: Second-60\r\nContent-Type: application/xml\r\n", LOCK_BODY),
}


def _audit(inst: Instance) -> list[dict[str, object]]:
    path = inst.home.root / "state/audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _lines(inst: Instance, before: int, method: str) -> list[tuple[object, object]]:
    """(status, reason) of the audit lines of `method` after the first `before`, once
    there is one (the line is written when the server closes the answer, a moment after
    the client read it)."""
    found: list[tuple[object, object]] = []
    deadline = time.monotonic() + 5
    while not found and time.monotonic() < deadline:
        found = [(r["status"], r["reason"]) for r in _audit(inst)[before:] if r.get("method") == method]
        time.sleep(0.05)
    return found


def _send(inst: Instance, server: DavServer, method: str, path: str, extra: str, body: bytes, *,
          chunked: bool = False, stall: bool) -> tuple[bytes, float]:
    """The request with its body whole, or with a tenth of it sent and then nothing;
    the answer and how long it took to come."""
    tls = raw_tls(inst, server)
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n"
    tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n{extra}{framing}\r\n".encode())
    part = body[:len(body) // 10] if stall else body
    tls.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part)
    if chunked and not stall:
        tls.sendall(b"0\r\n\r\n")
    started = time.monotonic()
    try:
        return read_response(tls), time.monotonic() - started
    finally:
        tls.close()


@pytest.fixture
def keep(inst: Instance) -> Iterator[bytes]:
    target = inst.home.root / "data/files/keep.txt"
    target.write_bytes(b"old content\n")
    yield b"old content\n"


@pytest.mark.parametrize("case", CASES)
def test_a_stalled_body_is_a_408_and_nothing_is_processed(inst: Instance, fast: DavServer, keep: bytes,
                                                          case: str) -> None:
    method, path, extra, body = CASES[case]
    files = inst.home.root / "data/files"
    before = len(_audit(inst))
    answer, waited = _send(inst, fast, method, path, extra, body, stall=True)
    assert status_of(answer) == 408, answer[:300]
    assert b"\r\nconnection: close\r\n" in answer.lower().split(b"\r\n\r\n")[0] + b"\r\n"
    assert 1.5 < waited < 10, waited  # the deadline (2 s grace), not a hang
    assert _lines(inst, before, method) == [(408, "request_timeout")]
    assert (files / "keep.txt").read_bytes() == keep
    assert not (files / "new.bin").exists()
    s = session_for(inst)
    if method == "PROPPATCH":  # the property of the cut body was not set
        r = s.request("PROPFIND", fast.url + "files/keep.txt", headers={"Depth": "0"})
        assert r.status_code == 207 and "kept" not in r.text
    if method == "LOCK":  # no lock was taken: another write goes through
        assert s.put(fast.url + "files/keep.txt", data=b"after\n").status_code == 204
        (files / "keep.txt").write_bytes(keep)


@pytest.mark.parametrize("case", CASES)
def test_the_same_body_sent_at_a_fair_rate_is_served(inst: Instance, fast: DavServer, keep: bytes,
                                                     case: str) -> None:
    method, path, extra, body = CASES[case]
    answer, _ = _send(inst, fast, method, path, extra, body, stall=False)
    assert 200 <= status_of(answer) < 300, answer[:300]
    files = inst.home.root / "data/files"
    if method == "PUT":
        assert (files / path.rsplit("/", 1)[1]).read_bytes() == body
    if method == "PROPPATCH":
        r = session_for(inst).request("PROPFIND", fast.url + "files/keep.txt", headers={"Depth": "0"})
        assert "kept" in r.text


def test_a_stalled_chunked_xml_body_read_by_the_limits_layer_is_a_408(inst: Instance, fast: DavServer,
                                                                      keep: bytes) -> None:
    """limits.py reads a chunked XML body itself (to cap it): above WsgiDAV's error pages,
    the guard answers the 408."""
    before = len(_audit(inst))
    answer, _ = _send(inst, fast, "PROPFIND", "/files/keep.txt", "Depth: 0\r\n", PROPFIND_BODY,
                      chunked=True, stall=True)
    assert status_of(answer) == 408, answer[:300]
    assert _lines(inst, before, "PROPFIND") == [(408, "request_timeout")]
    answer, _ = _send(inst, fast, "PROPFIND", "/files/keep.txt", "Depth: 0\r\n", PROPFIND_BODY,
                      chunked=True, stall=False)
    assert status_of(answer) == 207, answer[:300]


def test_a_stalled_step_up_form_is_a_408(inst: Instance, fast: DavServer) -> None:
    """The step-up page reads its form through the same reader."""
    form = b"csrf=" + b"t" * 2000 + b"&password=x&code=123456"
    before = len(_audit(inst))
    answer, _ = _send(inst, fast, "POST", "/_davserver/stepup",
                      "Content-Type: application/x-www-form-urlencoded\r\nOrigin: https://x\r\n", form, stall=True)
    assert status_of(answer) == 408, answer[:300]
    assert _lines(inst, before, "POST") == [(408, "request_timeout")]
    # twin: the whole form is read and judged (a forged token: 403, reason csrf)
    answer, _ = _send(inst, fast, "POST", "/_davserver/stepup",
                      "Content-Type: application/x-www-form-urlencoded\r\nOrigin: https://x\r\n", form, stall=False)
    assert status_of(answer) == 403, answer[:300]


# --- chunked bodies and 100-continue ---------------------------------------------------

def test_a_stalled_chunked_put_is_a_408_audited_request_timeout(inst: Instance, fast: DavServer,
                                                                 keep: bytes) -> None:
    """WsgiDAV's chunked copy loop reads the cut body inside WsgiDAV's error pages. The
    answer is the 408 and nothing is written, but the audit line said ``bad_framing``:
    http1.ChunkedBody records that reason when the watchdog's end of stream cuts a chunk,
    and only the guard's own catch (limits.py's XML read) replaces it."""
    files = inst.home.root / "data/files"
    before = len(_audit(inst))
    for name in ("chunked.bin", "keep.txt"):
        answer, waited = _send(inst, fast, "PUT", f"/files/{name}", "", b"c" * 5000, chunked=True, stall=True)
        assert status_of(answer) == 408, answer[:300]
        assert 1.5 < waited < 10, waited
    assert not (files / "chunked.bin").exists()
    assert (files / "keep.txt").read_bytes() == keep
    found: list[tuple[object, object]] = []
    deadline = time.monotonic() + 5
    while len(found) < 2 and time.monotonic() < deadline:
        found = [(r["status"], r["reason"]) for r in _audit(inst)[before:] if r.get("method") == "PUT"]
        time.sleep(0.05)
    assert found == [(408, "request_timeout")] * 2


def test_a_fair_chunked_put_is_served(inst: Instance, fast: DavServer) -> None:
    answer, _ = _send(inst, fast, "PUT", "/files/chunked.bin", "", b"c" * 5000, chunked=True, stall=False)
    assert 200 <= status_of(answer) < 300, answer[:300]
    assert (inst.home.root / "data/files/chunked.bin").read_bytes() == b"c" * 5000


def _continue_put(inst: Instance, server: DavServer, *, stall: bool) -> tuple[bytes, bytes, float]:
    tls = raw_tls(inst, server)
    body = b"e" * 5000
    tls.sendall(f"PUT /files/expect.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    interim = tls.recv(4096)
    started = time.monotonic()
    tls.sendall(body[:500] if stall else body)
    try:
        return interim, read_response(tls), time.monotonic() - started
    finally:
        tls.close()


def test_a_client_that_waits_for_100_continue_and_then_stalls_is_a_408(inst: Instance, fast: DavServer) -> None:
    before = len(_audit(inst))
    interim, answer, waited = _continue_put(inst, fast, stall=True)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    assert status_of(answer) == 408, answer[:300]
    assert _lines(inst, before, "PUT") == [(408, "request_timeout")]
    assert not (inst.home.root / "data/files/expect.bin").exists()


def test_a_client_that_waits_for_100_continue_then_sends_is_served(inst: Instance, fast: DavServer) -> None:
    interim, answer, _ = _continue_put(inst, fast, stall=False)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    assert 200 <= status_of(answer) < 300, answer[:300]


# --- the enrolment listener's form -------------------------------------------------------

def _enrolment_post(inst: Instance, server: DavServer, token: str, form: bytes, *, stall: bool) -> bytes:
    assert server.enrolment is not None
    with socket.create_connection(("127.0.0.1", server.enrolment.port), timeout=20) as plain, \
            client_context(inst, None).wrap_socket(plain, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"POST /enrol/{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(form)}\r\n\r\n".encode())
        tls.sendall(form[:10] if stall else form)
        return read_response(tls)


def test_a_stalled_enrolment_form_is_a_408(inst: Instance) -> None:
    """The enrolment listener (no client certificate) reads its form with the same rule:
    cut by its deadline (``limits.header_seconds``), 408 and audited ``request_timeout``;
    the link stays unspent. Twin: the whole form is read and judged (a wrong password)."""
    from .test_enrolment_hardening import invite, serving

    form = b"password=wrong-password&p12_password=a-long-enough-p12-password&otp="
    with serving(inst, {"header_seconds": 2}) as server:
        token = invite(server)
        started = time.monotonic()
        answer = _enrolment_post(inst, server, token, form, stall=True)
        assert status_of(answer) == 408, answer[:300]
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5
        while '"request_timeout"' not in (inst.home.root / "state/audit.log").read_text() and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert '"request_timeout"' in (inst.home.root / "state/audit.log").read_text()
        answer = _enrolment_post(inst, server, token, form, stall=False)
        assert status_of(answer) not in (0, 400, 408), answer[:300]
