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
