"""User files cannot act as pages of the server's origin, on both GET paths; and no
answer names the software's versions.

Every file answer (GET and HEAD; 200, 206 and 304) carries nosniff, a sandboxing
Content-Security-Policy and Cross-Origin-Resource-Policy, and every type not on the
short inline allow-list is an attachment with its name (RFC 6266 / RFC 8187). The
short path (fastpath.fast_get) and WsgiDAV's (_send_resource, the short path switched
off) are checked alike over generated names, extensions and Content-Types. The real
attack in a browser is in test_browser_isolation.py.
"""

from __future__ import annotations

import email.message
import email.utils
import mimetypes
import platform
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import cheroot
import pytest
import requests
import wsgidav
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from wsgidav import util

from davserver import fastpath, fs
from davserver.config import load_config
from davserver.content_safety import INLINE_TYPES, content_disposition, file_headers
from davserver.server import DavServer

from .conftest import Instance, client_context, session_for

CSP = "sandbox; default-src 'none'; frame-ancestors 'none'"
#: Types a browser renders as an active document (script, XSLT, plugins): never inline.
ACTIVE_TYPES = (
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "application/xslt+xml",
    "text/xsl", "multipart/related", "message/rfc822", "application/pdf", "text/javascript",
    "application/javascript", "application/rdf+xml", "application/vnd.mozilla.xul+xml", "text/vtt",
)
#: Extensions of the issue's attack and their relatives: whatever type this host's
#: mimetypes gives them, they must never render.
ACTIVE_EXTENSIONS = (".html", ".htm", ".HTML", ".shtml", ".xhtml", ".xht", ".svg", ".svgz", ".SVG", ".xml",
                     ".xsl", ".mht", ".mhtml", ".eml", ".pdf", ".js", ".rdf")
PASSIVE_EXTENSIONS = (".txt", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".mp4", ".mp3")
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- what a browser would make of the headers -----------------------------------------


def is_attachment(headers: Any) -> bool:
    value = headers.get("Content-Disposition")
    return value is not None and value.split(";", 1)[0].strip().lower() == "attachment"


def disposition_name(value: str) -> str | None:
    """The file name a user agent takes from Content-Disposition (RFC 6266 §4.3: filename*
    wins), parsed by the standard library's MIME parser rather than by our code."""
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    params = msg.get_params(header="content-disposition") or []
    names = [v for k, v in params if k == "filename"]
    extended = [v for v in names if isinstance(v, tuple)]  # filename*, RFC 2231/8187
    chosen = extended[0] if extended else (names[0] if names else None)
    return None if chosen is None else email.utils.collapse_rfc2231_value(chosen)


def renders_inline(content_type: str | None) -> bool:
    """Our reading of the allow-list, stated independently: one MIME type (Fetch splits a
    header value at commas), its essence on the list."""
    if content_type is None or "," in content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in INLINE_TYPES


def check_file_answer(r: requests.Response, name: str, sent_type: str | None = None) -> None:
    """The headers every file answer must carry, for a file called ``name`` (a 304 has no
    Content-Type: ``sent_type`` is the one its 200 had)."""
    h = r.headers
    assert h.get("X-Content-Type-Options") == "nosniff", (name, dict(h))
    assert h.get("Content-Security-Policy") == CSP, (name, dict(h))
    assert h.get("Cross-Origin-Resource-Policy") == "same-origin", (name, dict(h))
    content_type = sent_type or h.get("Content-Type")
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    if essence in ACTIVE_TYPES or any(k in essence for k in ("html", "xml", "svg", "script")):
        assert is_attachment(h), (name, content_type, dict(h))
    if renders_inline(content_type):
        assert "Content-Disposition" not in h, (name, dict(h))
    else:
        assert is_attachment(h), (name, content_type, dict(h))
        assert disposition_name(h["Content-Disposition"]) == name, (name, h["Content-Disposition"])


# --- the header itself ---------------------------------------------------------------


@given(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=60))
@example("evil.html")
@example('a "quoted" \\ name %41.html')
@example("Grüße ✓ 日本.svg")
@example("x\r\nSet-Cookie: a=b.html")
def test_content_disposition_keeps_any_name_and_is_a_valid_header(name: str) -> None:
    value = content_disposition(name)
    assert value.isascii() and value.isprintable(), value  # no CR/LF, nothing outside ASCII
    assert value.startswith("attachment; filename=\"")
    fallback = re.fullmatch(r'attachment; filename="([^"\\%]*)"; filename\*=UTF-8\'\'([!#$&+\-.^_`|~0-9A-Za-z%]*)',
                            value)
    assert fallback, value
    assert disposition_name(value) == name


def test_content_disposition_exact_form() -> None:
    assert content_disposition("evil.html") == "attachment; filename=\"evil.html\"; filename*=UTF-8''evil.html"
    assert content_disposition("Grüße 1.pdf") == (
        "attachment; filename=\"Gr__e 1.pdf\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%201.pdf"
    )


content_types = st.one_of(
    st.sampled_from(sorted(INLINE_TYPES) + list(ACTIVE_TYPES) + ["application/octet-stream", "text/css",
                                                                   "application/json", "text/markdown"]),
    st.from_regex(r"[a-z]{1,12}/[a-z0-9.+\-]{1,20}", fullmatch=True),
).flatmap(
    lambda t: st.tuples(
        st.sampled_from([t, t.upper(), t.title()]),
        st.sampled_from(["", "; charset=utf-8", ";charset=UTF-8", " ; q=1", ",text/html", ";,text/html"]),
    ).map("".join)
)


@given(content_types, st.sampled_from(["/files/evil.html", "/files/photo.png", "/files/notes.txt", "/x"]))
def test_decision_follows_the_type_sent_not_the_extension(content_type: str, path: str) -> None:
    headers = dict(file_headers([("Content-Type", content_type), ("ETag", '"1"')], path))
    assert headers["Content-Type"] == content_type and headers["ETag"] == '"1"'
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Security-Policy"] == CSP
    assert ("Content-Disposition" in headers) is not renders_inline(content_type), (content_type, headers)


def test_missing_type_is_an_attachment_and_headers_are_replaced_not_doubled() -> None:
    headers = file_headers([("X-Content-Type-Options", "sniff"), ("Content-Disposition", "inline")], "/f/a.bin")
    names = [k.lower() for k, _ in headers]
    assert names.count("x-content-type-options") == 1 and names.count("content-disposition") == 1
    assert dict(headers)["X-Content-Type-Options"] == "nosniff"
    assert dict(headers)["Content-Disposition"].startswith("attachment;")


# --- live, on both GET paths ----------------------------------------------------------


@contextmanager
def get_path(monkeypatch: pytest.MonkeyPatch, short: bool) -> Iterator[list[bool]]:
    """Requests in the block take the short GET path (short=True; every call is recorded
    as answered or not) or WsgiDAV's own (the short path switched off)."""
    answered: list[bool] = []
    real = fastpath.fast_get  # what fs.py imports and calls

    def recording(*args: Any) -> Any:
        answer = real(*args)
        answered.append(answer is not None)
        return answer

    with monkeypatch.context() as m:
        m.setattr(fs, "fast_get", recording if short else (lambda *args: None))
        yield answered


def fetch_both(s: requests.Session, url: str, monkeypatch: pytest.MonkeyPatch,
               **kw: Any) -> list[tuple[str, requests.Response]]:
    """GET and HEAD on the short path and on WsgiDAV's: [(label, response)]."""
    out = []
    for short in (True, False):
        with get_path(monkeypatch, short) as answered:
            for method in ("GET", "HEAD"):
                r = s.request(method, url, timeout=30, **kw)
                out.append((f"{method} {'short' if short else 'wsgidav'}", r))
        if short and not kw.get("headers"):
            assert answered == [True, True], "the short path did not answer"
    return out


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn"), blacklist_characters="/\\"),
    min_size=1, max_size=24,
).filter(lambda n: not n.startswith(".") and n.strip() == n)
extensions = st.one_of(
    st.sampled_from(ACTIVE_EXTENSIONS + PASSIVE_EXTENSIONS + ("", ".bin", ".json", ".css", ".md", ".csv")),
    st.sampled_from(sorted(mimetypes.types_map)),
    st.from_regex(r"\.[A-Za-z0-9]{1,6}", fullmatch=True),
)


def test_every_file_answer_on_both_paths(inst: Instance, server: DavServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis over names and extensions: GET and HEAD, short path and WsgiDAV's."""
    root = inst.home.root / "data/files"
    s = session_for(inst, "bob")
    seen: set[str] = set()

    @SETTINGS
    @given(names, extensions)
    @example("evil", ".html")
    @example("evil", ".svg")
    @example("evil", ".xhtml")
    @example("evil", ".htm")
    @example("evil", ".svgz")
    @example("evil", ".xml")
    @example("evil", ".mht")
    @example("Grüße ✓ 日本", ".html")
    @example("report", ".txt")
    @example("photo", ".png")
    def check(stem: str, ext: str) -> None:
        name = stem + ext
        assume(len(name.encode()) < 200 and not fs.is_temp_name(name))
        body = b"<script>fetch('/team/')</script>" + name.encode()
        (root / name).write_bytes(body)
        answers = fetch_both(s, server.url + "files/" + quote(name, safe=""), monkeypatch)
        for label, r in answers:
            assert r.status_code == 200, (label, name, r.status_code)
            check_file_answer(r, name)
            if label.startswith("GET"):
                assert r.content == body, label
        # Both paths and both methods send the same headers that matter.
        keys = ("Content-Type", "Content-Disposition", "X-Content-Type-Options", "Content-Security-Policy",
                "Cross-Origin-Resource-Policy")
        assert len({tuple(r.headers.get(k) for k in keys) for _, r in answers}) == 1, name
        seen.add("attachment" if is_attachment(answers[0][1].headers) else "inline")

    check()
    assert seen == {"attachment", "inline"}, "the generated files never covered both outcomes"


def test_every_content_type_on_both_paths(inst: Instance, server: DavServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis over the Content-Type the server sends (whatever the extension says)."""
    root = inst.home.root / "data/files"
    s = session_for(inst, "bob")
    sent: dict[str, str] = {}
    real = util.guess_mime_type

    def guess(url: str, options: dict[str, Any] | None = None) -> str:
        return sent.get(url.rsplit("/", 1)[-1]) or real(url, options)

    monkeypatch.setattr(util, "guess_mime_type", guess)

    @SETTINGS
    @given(content_types, st.sampled_from(["evil.txt", "photo.png", "page.html", "blob", "Grüße.jpg"]))
    def check(content_type: str, name: str) -> None:
        sent[name] = content_type
        (root / name).write_bytes(b"<html><script>alert(1)</script>")
        for label, r in fetch_both(s, server.url + "files/" + quote(name), monkeypatch):
            assert r.status_code == 200, label
            assert r.headers["Content-Type"] == content_type, label
            check_file_answer(r, name)

    check()


def test_ranges_and_not_modified_carry_the_same_headers(inst: Instance, server: DavServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = inst.home.root / "data/files"
    s = session_for(inst, "bob")
    for name in ("evil.html", "evil.svg", "notes.txt", "Grüße.xhtml"):
        (root / name).write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>" * 10)
        url = server.url + "files/" + quote(name)
        full = s.get(url, timeout=30)
        check_file_answer(full, name)
        partial = s.get(url, headers={"Range": "bytes=5-20"}, timeout=30)
        assert partial.status_code == 206 and partial.content == full.content[5:21]
        check_file_answer(partial, name)
        for conditional in ({"If-None-Match": full.headers["ETag"]},
                            # later than the file (WsgiDAV answers 304 only for a strictly later date)
                            {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}):
            for label, r in fetch_both(s, url, monkeypatch, headers=conditional):
                assert r.status_code == 304, (label, conditional)
                assert r.content == b""
                check_file_answer(r, name, full.headers["Content-Type"])
                assert r.headers.get("Content-Disposition") == full.headers.get("Content-Disposition")


def test_folder_pages_and_errors_keep_their_own_headers(inst: Instance, server: DavServer) -> None:
    """The twin: the listing is still HTML with its own policy (not an attachment, not
    sandboxed: its links work), and error answers are plain text that cannot render."""
    (inst.home.root / "data/files/evil.html").write_bytes(b"<script>alert(1)</script>")
    s = session_for(inst, "bob")
    page = s.get(server.url + "files/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in page.headers
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert 'href="/files/evil.html"' in page.text
    with pytest.raises(AssertionError):
        check_file_answer(page, "files")  # the check sees a page that could run script
    missing = s.get(server.url + "files/nope.html", timeout=30)
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("text/plain")
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    assert missing.headers["Content-Security-Policy"] == CSP


def test_the_middleware_sits_between_the_listing_and_the_resolver(server: DavServer) -> None:
    """Both GET paths run below it: the short one inside the resolver's provider call."""
    from wsgidav.mw.base_mw import BaseMiddleware
    from wsgidav.wsgidav_app import WsgiDAVApp

    from davserver.content_safety import ContentSafety

    app: Any = server.guard
    while not isinstance(app, WsgiDAVApp):
        app = app.app
    layers = []
    mw = app.application
    while isinstance(mw, BaseMiddleware):
        layers.append(type(mw).__name__)
        mw = mw.next_app
    assert layers.index(ContentSafety.__name__) == layers.index("Listing") + 1, layers
    assert layers[-1] == "RequestResolver", layers


# --- no versions in any answer ---------------------------------------------------------

VERSIONS = tuple(
    v for v in {wsgidav.__version__, cheroot.__version__, platform.python_version()} if v
) + ("WsgiDAV", "Cheroot", "CherryPy", "Python/", "github.com/mar10")

LOCK_BODY = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
             b"<D:locktype><D:write/></D:locktype><D:owner>t</D:owner></D:lockinfo>")
PROPPATCH_BODY = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
                  b"<Z:a>1</Z:a></D:prop></D:set></D:propertyupdate>")


def leaks(r: requests.Response) -> list[str]:
    text = r.content.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    return [v for v in VERSIONS if v.lower() in text.lower()]


def test_no_answer_names_a_version(inst: Instance, server: DavServer) -> None:
    """Every method that can answer with a body, in its success and error forms."""
    root = inst.home.root / "data/files"
    (root / "a.txt").write_bytes(b"a")
    (root / "dir").mkdir()
    u = server.url + "files/"
    s = session_for(inst, "alice")
    anon = session_for(inst, "alice", password="wrong")
    no_basic = session_for(inst, "alice")
    no_basic.auth = None
    answers: list[tuple[str, requests.Response]] = []

    def hit(label: str, session: requests.Session, method: str, url: str, expect: int | tuple[int, ...],
            **kw: Any) -> requests.Response:
        r = session.request(method, url, timeout=30, **kw)
        expected = (expect,) if isinstance(expect, int) else expect
        assert r.status_code in expected, (label, r.status_code, r.text)
        answers.append((label, r))
        return r

    created = hit("PUT new", s, "PUT", u + "new.txt", 201, data=b"x")
    hit("PUT overwrite", s, "PUT", u + "new.txt", 204, data=b"y")
    hit("PUT into a missing folder", s, "PUT", u + "missing/x.txt", 409, data=b"x")
    hit("PUT stale If-Match", s, "PUT", u + "a.txt", 412, data=b"x", headers={"If-Match": '"nope"'})
    hit("PUT read-only share", s, "PUT", server.url + "ro/x.txt", (401, 403, 405), data=b"x")
    mkcol = hit("MKCOL", s, "MKCOL", u + "made", 201)
    hit("MKCOL existing", s, "MKCOL", u + "made", 405)
    hit("MKCOL missing parent", s, "MKCOL", u + "no/such", 409)
    copy = hit("COPY new", s, "COPY", u + "a.txt", 201, headers={"Destination": u + "copy.txt"})
    hit("COPY overwrite", s, "COPY", u + "a.txt", 204, headers={"Destination": u + "copy.txt"})
    hit("COPY no overwrite", s, "COPY", u + "a.txt", 412, headers={"Destination": u + "copy.txt", "Overwrite": "F"})
    hit("COPY folder", s, "COPY", u + "dir/", 201, headers={"Destination": u + "dir2/"})
    hit("MOVE new", s, "MOVE", u + "copy.txt", 201, headers={"Destination": u + "moved.txt"})
    hit("MOVE missing", s, "MOVE", u + "nope.txt", 404, headers={"Destination": u + "x.txt"})
    hit("PROPPATCH", s, "PROPPATCH", u + "a.txt", 207, data=PROPPATCH_BODY)
    hit("PROPFIND", s, "PROPFIND", u, 207, headers={"Depth": "1"})
    hit("PROPFIND bad XML", s, "PROPFIND", u, 400, headers={"Depth": "0"}, data=b"<nope")
    hit("PROPFIND too large", s, "PROPFIND", u, 413, headers={"Depth": "0"},
        data=b"<" * (load_config(inst.home).limits.xml_body_bytes + 1))
    hit("PROPFIND infinity", s, "PROPFIND", u, (400, 403), headers={"Depth": "infinity"})
    lock = hit("LOCK", s, "LOCK", u + "a.txt", 200, data=LOCK_BODY, headers={"Timeout": "Second-60"})
    token = lock.headers["Lock-Token"]
    hit("PUT locked", s, "PUT", u + "a.txt", 423, data=b"x")
    hit("DELETE locked", s, "DELETE", u + "a.txt", 423)
    hit("LOCK locked", s, "LOCK", u + "a.txt", 423, data=LOCK_BODY)
    hit("UNLOCK bad token", s, "UNLOCK", u + "a.txt", (400, 403, 409), headers={"Lock-Token": "<urn:uuid:x>"})
    hit("UNLOCK", s, "UNLOCK", u + "a.txt", 204, headers={"Lock-Token": token})
    hit("DELETE", s, "DELETE", u + "moved.txt", 204)
    hit("DELETE missing", s, "DELETE", u + "moved.txt", 404)
    hit("GET", s, "GET", u + "a.txt", 200)
    hit("GET missing", s, "GET", u + "nope", 404)
    hit("GET range not satisfiable", s, "GET", u + "a.txt", 416, headers={"Range": "bytes=50-60"})
    hit("GET with a body", s, "GET", u + "a.txt", (200, 400, 413, 415), data=b"xyz")
    hit("HEAD", s, "HEAD", u + "a.txt", 200)
    hit("HEAD missing", s, "HEAD", u + "nope", 404)
    hit("GET listing", s, "GET", u, 200)
    hit("OPTIONS", s, "OPTIONS", u + "a.txt", 200)
    hit("OPTIONS *", s, "OPTIONS", server.url.rstrip("/") + "/*", (200, 400, 401, 404))  # "/*": no such share
    hit("OPTIONS no password", no_basic, "OPTIONS", u, 200)
    hit("POST", s, "POST", u + "a.txt", (403, 405, 501), data=b"x")
    hit("PATCH", s, "PATCH", u + "a.txt", (403, 405, 501), data=b"x")
    hit("unknown method", s, "BREW", u + "a.txt", (400, 403, 405, 501))
    hit("wrong password", anon, "PUT", u + "x.txt", 401, data=b"x")
    hit("no password", no_basic, "GET", u + "a.txt", 401)
    hit("not a share", s, "GET", server.url + "nosuchshare/", (401, 403, 404))
    hit("bad path", s, "GET", u + "a/%2e%2e/%2e%2e/etc", (400, 403, 404))
    hit("step-up page", no_basic, "GET", server.url + "_davserver/", 200)

    for label, r in answers:
        assert not leaks(r), (label, r.status_code, leaks(r), dict(r.headers), r.text[:300])
        assert r.headers.get("Server", "davserver") == "davserver", (label, r.headers.get("Server"))
        if r.content and r.headers.get("Content-Type", "").startswith("text/html"):
            # The only HTML answers are pages we wrote: the listing and the step-up page.
            assert label in ("GET listing", "step-up page"), (label, r.text[:300])
    # The exact answers: the 201 of PUT, MKCOL and COPY is its status line.
    for r in (created, mkcol, copy):
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert r.text == "201 Created\n"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert created.headers["ETag"]  # the headers WsgiDAV gave it are kept


def raw_answer(inst: Instance, server: DavServer, request: bytes) -> bytes:
    """What the server sends back to raw bytes (TLS with alice's certificate), up to its close."""
    ctx = client_context(inst, inst.clients["alice"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        out = b""
        try:
            while chunk := tls.recv(65536):
                out += chunk
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
    return out


def test_no_answer_to_a_malformed_request_names_a_version(inst: Instance, server: DavServer) -> None:
    """cheroot's own answers (simple_response, before any application code) and the
    server's Server header."""
    host = b"Host: localhost\r\n"
    requests_ = {
        "garbage": b"GARBAGE\r\n\r\n",
        "HTTP/9.9": b"GET /files/ HTTP/9.9\r\n" + host + b"\r\n",
        "bad header": b"GET /files/ HTTP/1.1\r\n" + host + b"No colon here\r\n\r\n",
        "huge header": b"GET /files/ HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        "no credentials": b"GET /files/ HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n",
    }
    for label, request in requests_.items():
        answer = raw_answer(inst, server, request)
        assert answer.startswith(b"HTTP/1.1 "), (label, answer[:200])
        text = answer.decode("latin-1").lower()
        assert not [v for v in VERSIONS if v.lower() in text], (label, answer[:500])
        for line in text.split("\r\n\r\n", 1)[0].split("\r\n"):
            if line.startswith("server:"):
                assert line == "server: davserver", (label, line)


def test_version_check_can_fail(inst: Instance, server: DavServer) -> None:
    """The twin: WsgiDAV's own status page does name its version, so leaks() would see it."""
    from wsgidav.dav_error import DAVError

    _, page = DAVError(201).get_response_page()

    class Page:
        content = page
        headers: dict[str, str] = {}

    assert "WsgiDAV" in leaks(Page())  # type: ignore[arg-type]
    assert wsgidav.__version__ in leaks(Page())  # type: ignore[arg-type]
