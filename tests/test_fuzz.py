"""Property tests against the live server: whatever the XML bodies and headers,
the answer is never a 5xx and never a hang."""

from __future__ import annotations

import string

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davserver.server import DavServer

from .conftest import Instance, session_for

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

names = st.sampled_from(["propfind", "prop", "allprop", "propname", "propertyupdate", "set", "remove",
                         "lockinfo", "lockscope", "exclusive", "shared", "locktype", "write", "owner",
                         "href", "displayname", "getetag", "x", "lockdiscovery", "resourcetype", "include"])
namespaces = st.sampled_from(["DAV:", "urn:x", "", "http://example.com/ns", "DAV:\x00"])
text = st.text(alphabet=string.printable + "äöü😀<>&\"'", max_size=40)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(names)
    ns = draw(namespaces)
    children = draw(st.lists(elements(depth + 1), max_size=3)) if depth < 3 else []
    body = "".join(children) if children else draw(text).replace("<", "&lt;").replace("&", "&amp;")
    xmlns = f' xmlns="{ns}"' if ns else ""
    return f"<{name}{xmlns}>{body}</{name}>"


xml_bodies = st.one_of(
    elements().map(lambda e: ('<?xml version="1.0" encoding="utf-8"?>' + e).encode()),
    elements().map(lambda e: e.encode("utf-8")),
    st.binary(max_size=300),
    text.map(lambda t: t.encode("utf-8")),
    st.just(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><propfind xmlns="DAV:">&a;</propfind>'),
)

header_values = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
                        .replace("\x0c", ""), max_size=60).map(str.strip)  # clients trim header values


def _no_server_error(r: requests.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:200])


def test_fuzzed_xml_bodies(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    (inst.home.root / "data/files/f.txt").write_text("x")

    @SETTINGS
    @given(method=st.sampled_from(["PROPFIND", "PROPPATCH", "LOCK"]), body=xml_bodies,
           target=st.sampled_from(["files/", "files/f.txt", "files/new.txt", "", "ro/readme.txt"]))
    def check(method: str, body: bytes, target: str) -> None:
        r = s.request(method, server.url + target, data=body, headers={"Depth": "0", "Timeout": "Second-60"},
                      timeout=10)
        _no_server_error(r)
        token = r.headers.get("Lock-Token")
        if token:
            _no_server_error(s.request("UNLOCK", server.url + target, headers={"Lock-Token": token}, timeout=10))

    check()
    assert s.get(server.url + "files/f.txt").text == "x", "the server still serves normally"


def test_fuzzed_headers(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    (inst.home.root / "data/files/g.txt").write_text("hello")

    @SETTINGS
    @given(
        method=st.sampled_from(["GET", "HEAD", "PROPFIND", "COPY", "MOVE", "LOCK", "UNLOCK", "PUT", "DELETE",
                                "OPTIONS", "MKCOL"]),
        header=st.sampled_from(["Depth", "Destination", "If", "Range", "Timeout", "Overwrite", "Lock-Token",
                                "If-Match", "If-None-Match", "If-Modified-Since", "Content-Range", "Authorization"]),
        value=header_values,
    )
    def check(method: str, header: str, value: str) -> None:
        target = server.url + ("files/g.txt" if method not in ("MKCOL", "PUT", "DELETE") else "files/fuzz-new")
        r = s.request(method, target, headers={header: value}, timeout=10,
                      data=b"" if method != "PUT" else b"data")
        _no_server_error(r)

    check()
    assert s.get(server.url + "files/g.txt").status_code in (200, 404)


# --- every request: below 500, and exactly one audit line ---------------------------------

_segment_bytes = st.one_of(
    st.binary(min_size=1, max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),  # any bytes, encoded
    st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%", min_size=1, max_size=12),
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%ff", "%c0%ae", "%e9t%e9.txt", "files", "team", "ro",
                     "_davserver", "g.txt", "%C3%A9", ";", "%3F", "%23", ""]),
)
raw_targets = st.builds(
    lambda segs, slash, query: "/" + "/".join(segs) + ("/" if slash else "") + (f"?{query}" if query else ""),
    st.lists(_segment_bytes, max_size=4), st.booleans(),
    st.text(alphabet=string.ascii_letters + "=&%", max_size=6),
)


def _audit_count(inst: Instance) -> int:
    path = inst.home.state_dir / "audit.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _raw_exchange(inst: Instance, server: DavServer, request: bytes) -> int:
    """Send one request on a fresh TLS connection; the status code of the answer (0: none)."""
    import socket
    import ssl

    from .conftest import client_context

    ctx: ssl.SSLContext = client_context(inst, inst.clients["alice"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = tls.recv(4096)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0


def test_every_request_gets_one_audit_line_and_no_server_error(inst: Instance, server: DavServer) -> None:
    """Whatever the method, target, Destination and credentials, the answer is below 500
    and the audit log gains exactly one line for the request."""
    import base64
    import time

    (inst.home.root / "data/files/g.txt").write_text("hello")
    auth = "Basic " + base64.b64encode(b"alice:" + inst.clients["alice"].password.encode()).decode()

    @SETTINGS
    @given(method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "PROPFIND", "PROPPATCH",
                                   "LOCK", "UNLOCK", "OPTIONS", "POST", "BREW"]),
           target=raw_targets, dest=st.one_of(st.none(), raw_targets),
           credentials=st.sampled_from(["good", "none", "bad"]), body=st.sampled_from([b"", b"x" * 10]))
    def check(method: str, target: str, dest: str | None, credentials: str, body: bytes) -> None:
        headers = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close",
                   f"Content-Length: {len(body)}"]
        if credentials == "good":
            headers.append(f"Authorization: {auth}")
        elif credentials == "bad":
            headers.append("Authorization: Basic YWxpY2U6d3Jvbmc=")
        if dest is not None:
            headers.append(f"Destination: {dest}")
        before = _audit_count(inst)
        status = _raw_exchange(inst, server, ("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        assert 100 <= status < 500, (method, target, dest, status)
        for _ in range(200):  # the line is written just after the answer's last byte
            if _audit_count(inst) > before:
                break
            time.sleep(0.01)
        time.sleep(0.02)
        assert _audit_count(inst) == before + 1, (method, target, dest, status)

    check()
