"""Writing from the folder listing in a browser: upload (file picker, drag and drop,
with progress), new folder, rename and delete, and the CSRF protection of every
browser write (csrf.py, checked once in the guard's decision).

The page's script sends the same PUT/MKCOL/MOVE/DELETE a WebDAV client sends, with
the certificate-bound token in ``X-Davserver-CSRF``; a request that carries a
browser's headers (``Origin``, ``Sec-Fetch-*``) but comes from another site or lacks
a valid token is refused 403 and audited ``csrf``; a request without those headers
(curl, rclone, every WebDAV client) is not checked.

Playwright drives Debian's chromium with alice's (or bob's) client certificate, as in
test_browser.py, whose fixtures and helpers these tests import. Screenshots of the
listing at 360 px and 1280 px go to docs/img/ with DAVSERVER_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from davserver.access import Refusal
from davserver.auth.identity import CertIdentity
from davserver.csrf import HEADER, SAFE_METHODS, TOKEN_TTL_SECONDS, CsrfTokens
from davserver.server import DavServer
from tests.conftest import Instance, running, session_for
from tests.test_browser import browser, cert_context, listed  # noqa: F401 - browser is a fixture
from tests.test_clients import run_curl, share_dir

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Dialog, FilePayload, Page, Route, ViewportSize

pytestmark = pytest.mark.client

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
PHONE: ViewportSize = {"width": 360, "height": 740}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
#: Names that must survive upload and rename exactly: markup, quotes, URL delimiters,
#: percent signs that look like escapes, spaces, non-ASCII, a leading dot.
HOSTILE = ['<script>alert("x")<!--.txt', "<img src=x onerror=alert(1)>.txt",
           'say "hi" & \'bye\'.txt', "a#b?c=d.txt", "100% %2F..%2Fup.txt",
           "  spaced  name .txt", "Grüße ✓ 日本.txt", ".hidden", "semi;colon+plus.txt"]


# --- helpers -----------------------------------------------------------------------------


def _upload(name: str, mime_type: str, buffer: bytes) -> FilePayload:
    """One file for the page's file picker (Playwright's set_input_files)."""
    return {"name": name, "mimeType": mime_type, "buffer": buffer}


def token_of(page_html: str) -> str:
    m = re.search(r'data-token="([^"]+)"', page_html)
    assert m, page_html
    return html.unescape(m[1])


def audit_lines(inst: Instance) -> list[dict[str, Any]]:
    path = inst.home.root / "state" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]  # whole lines only


def last_audit(inst: Instance, count_before: int, method: str) -> dict[str, Any]:
    """The audit line of the one request made since ``count_before`` lines (written when its answer ends)."""
    deadline = time.monotonic() + 5
    while True:
        fresh = [r for r in audit_lines(inst)[count_before:] if r["method"] == method]
        if fresh or time.monotonic() > deadline:
            assert len(fresh) == 1, fresh
            return fresh[0]
        time.sleep(0.02)


def alice_context(browser: Browser, inst: Instance, server: DavServer, viewport: ViewportSize = DESKTOP,  # noqa: F811
                  account: str = "alice") -> BrowserContext:
    client = inst.clients[account]
    return cert_context(browser, inst, server, account, viewport=viewport,
                        http_credentials={"username": client.account, "password": client.password})


class Watch:
    """What a page said on its console and which dialogs it opened (answered as told)."""

    def __init__(self, page: Page, answer: str | bool | None = True) -> None:
        self.console: list[str] = []
        self.dialogs: list[tuple[str, str]] = []
        self.answer = answer
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append((dialog.type, dialog.message))
        if self.answer is False or self.answer is None:
            dialog.dismiss()
        elif isinstance(self.answer, str):
            dialog.accept(self.answer)
        else:
            dialog.accept()

    def violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m or "pageerror" in m]


def reloaded(page: Page, action: Any) -> None:
    """Run ``action`` and wait for the page's reload after a successful change."""
    try:
        with page.expect_navigation(wait_until="load", timeout=60_000):
            action()
    except Exception as exc:  # noqa: BLE001 - say what the page said instead of a bare timeout
        status = page.locator("#status").inner_text() if page.locator("#status").count() else ""
        raise AssertionError(f"the page did not reload: {status!r}") from exc


def upload_slowly(ctx: BrowserContext, page: Page, files: list[FilePayload],
                  while_uploading: Callable[[], object]) -> None:
    """Choose `files` in the page's picker with uploads at 8 MB/s (Chrome's network
    emulation), so the page can be seen uploading: `while_uploading` runs once the
    progress bar shows 4 MB sent (within 30 s); returns after the reload that ends it."""
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                  "downloadThroughput": -1, "uploadThroughput": 8_000_000})
    with page.expect_navigation(wait_until="load", timeout=120_000):
        page.set_input_files("#pick", files=files)
        deadline = time.monotonic() + 30
        while page.evaluate("() => (document.querySelector('#status progress') || {value: 0}).value") < 4e6:
            assert time.monotonic() < deadline, "no progress shown"
            time.sleep(0.05)
        while_uploading()


def shot(page: Page, name: str) -> None:
    """A screenshot of the page; written to docs/img/ only with DAVSERVER_UPDATE_SCREENSHOTS=1."""
    picture = page.screenshot(full_page=True)
    assert picture.startswith(b"\x89PNG")
    if os.environ.get("DAVSERVER_UPDATE_SCREENSHOTS") == "1":
        (IMG / name).write_bytes(picture)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def live(inst: Instance) -> Iterator[tuple[Instance, DavServer]]:
    with running(inst) as server:
        yield inst, server


# --- the tokens (csrf.py) ------------------------------------------------------------------


def _cert(fingerprint: str) -> CertIdentity:
    now = datetime.now(UTC)
    return CertIdentity(fingerprint=fingerprint, serial="01", subject="CN=x", issuer="CN=ca", common_name="x",
                        emails=(), upns=(), uris=(), not_before=now, not_after=now, client_auth=True)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_is_refused_as_a_token_never_an_exception(text: str) -> None:
    tokens = CsrfTokens(key=b"k" * 32)
    assert tokens.valid(_cert("a" * 64), text) is False


def test_a_token_lives_ttl_seconds_for_its_certificate_only() -> None:
    """The bound hit on both sides: valid at issue + ttl, refused a second later; refused
    for another certificate, from another key, or issued more than a minute ahead."""
    now = [1_700_000_000.0]
    tokens = CsrfTokens(key=b"k" * 32, ttl_seconds=TOKEN_TTL_SECONDS, clock=lambda: now[0])
    mine, other = _cert("a" * 64), _cert("b" * 64)
    token = tokens.issue(mine)
    assert tokens.valid(mine, token) and not tokens.valid(other, token)
    assert not CsrfTokens(key=b"j" * 32, clock=lambda: now[0]).valid(mine, token)
    now[0] += TOKEN_TTL_SECONDS
    assert tokens.valid(mine, token)
    now[0] += 1
    assert not tokens.valid(mine, token)
    assert not tokens.valid(mine, tokens.issue(mine, int(now[0]) + 61))
    assert tokens.valid(mine, tokens.issue(mine, int(now[0]) + 59))


# --- the guard's decision, for the kind: methods x browser headers x tokens -----------------

UNSAFE = ("PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH", "LOCK", "UNLOCK", "POST")
ORIGINS = {"no Origin": None, "foreign": "https://evil.example", "null": "null", "same": "SAME"}
SITES = (None, "cross-site", "same-site", "same-origin", "none")
TOKENS = ("missing", "wrong", "other certificate's", "valid")
_PROPPATCH = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:x"><D:set><D:prop>'
              b"<Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>")
_LOCK = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
         b"<D:locktype><D:write/></D:locktype></D:lockinfo>")


def _request(s: requests.Session, url: str, method: str, name: str, headers: dict[str, str]) -> requests.Response:
    """``method`` on the file ``name``, shaped to succeed."""
    target = url + name
    kw: dict[str, Any] = {}
    h = dict(headers)
    if method in ("MOVE", "COPY"):
        h["Destination"] = target + ".moved"
        h["Overwrite"] = "T"
    elif method == "MKCOL":
        target += ".dir"
    elif method == "PROPPATCH":
        kw["data"] = _PROPPATCH
        h["Content-Type"] = "application/xml"
    elif method == "LOCK":
        kw["data"] = _LOCK
        h["Content-Type"] = "application/xml"
    elif method == "UNLOCK":
        h["Lock-Token"] = "<opaquelocktoken:00000000-0000-0000-0000-000000000000>"
    elif method in ("PUT", "POST"):
        kw["data"] = b"after"
    return s.request(method, target, headers=h, timeout=30, **kw)


def test_every_unsafe_browser_request_needs_our_origin_and_a_valid_token(live: tuple[Instance, DavServer]) -> None:
    """The decision for the kind: each unsafe method with each combination of Origin,
    Sec-Fetch-Site and token. Refused (403, audit ``csrf``, the file untouched) exactly
    when browser headers are present and the origin is another or the token is not
    valid for this certificate; allowed otherwise (a success status, no ``csrf``)."""
    inst, server = live
    url = server.url + "files/"
    host = server.url.rstrip("/")
    with session_for(inst, "bob") as s:
        bobs = token_of(s.get(url, timeout=30).text)
    with session_for(inst, "alice") as s:
        valid = token_of(s.get(url, timeout=30).text)
        issued, _, mac = valid.partition(".")
        tokens = {"missing": None, "wrong": f"{issued}.{mac[::-1]}", "other certificate's": bobs, "valid": valid}
        seen: dict[str, int] = {"refused": 0, "allowed": 0}
        for n, (method, (olabel, origin), site, tlabel) in enumerate(
                itertools.product(UNSAFE, ORIGINS.items(), SITES, TOKENS)):
            headers: dict[str, str] = {}
            if origin is not None:
                headers["Origin"] = host if origin == "SAME" else origin
            if site is not None:
                headers["Sec-Fetch-Site"] = site
                headers["Sec-Fetch-Mode"] = "cors"
            token = tokens[tlabel]
            if token is not None:
                headers[HEADER] = token
            browser_request = bool(headers.keys() & {"Origin", "Sec-Fetch-Site"})
            cross = origin not in (None, "SAME") or site in ("cross-site", "same-site")
            refuse = browser_request and (cross or tlabel != "valid")
            name = f"k{n}.txt"
            before = len(audit_lines(inst))
            assert s.put(url + name, data=b"before", timeout=30).status_code == 201
            last_audit(inst, before, "PUT")  # its line is written once the answer ends
            before = len(audit_lines(inst))
            r = _request(s, url, method, name, headers)
            record = last_audit(inst, before, method)
            label = (method, olabel, site, tlabel, r.status_code, record["reason"])
            if refuse:
                seen["refused"] += 1
                assert r.status_code == 403, label
                assert (record["decision"], record["reason"]) == ("deny", Refusal.CSRF), label
                assert (share_dir(inst, "files") / name).read_bytes() == b"before", label
            else:
                seen["allowed"] += 1
                assert r.status_code != 403 and record["reason"] != Refusal.CSRF, label
                assert r.status_code < 400 or (method, r.status_code) in (("POST", 405), ("UNLOCK", 409)), label
        assert seen["refused"] > 0 and seen["allowed"] > 0, seen


def test_safe_methods_and_plain_clients_are_not_checked(live: tuple[Instance, DavServer], tmp_path: Path) -> None:
    """Reads from a browser need no token (even cross-site: the answer is not readable
    there), and curl writes without any of these headers, as before."""
    inst, server = live
    (share_dir(inst, "files") / "read.txt").write_bytes(b"read me")
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    with session_for(inst, "alice") as s:
        for method in sorted(SAFE_METHODS - {"TRACE"}):
            headers = {**cross, "Depth": "0"} if method == "PROPFIND" else cross
            r = s.request(method, server.url + "files/read.txt", headers=headers, timeout=30)
            assert r.status_code < 400, (method, r.status_code)
    alice = inst.clients["alice"]
    local = tmp_path / "curl.bin"
    local.write_bytes(os.urandom(4096))
    rc, status, _, err = run_curl(inst, tmp_path, "-T", str(local), f"{server.url}files/curl.bin", client=alice)
    assert (rc, status) == (0, 201), err
    assert (share_dir(inst, "files") / "curl.bin").read_bytes() == local.read_bytes()
    rc, status, _, err = run_curl(inst, tmp_path, "-X", "DELETE", f"{server.url}files/curl.bin", client=alice)
    assert (rc, status) == (0, 204), err
    # The same curl posing as a browser without the token is refused: the headers decide.
    local.write_bytes(b"again")
    rc, status, _, err = run_curl(inst, tmp_path, "-T", str(local), "-H", "Sec-Fetch-Site: same-origin",
                                  f"{server.url}files/curl.bin", client=alice)
    assert (rc, status) == (0, 403), err
    assert not (share_dir(inst, "files") / "curl.bin").exists()


def test_write_controls_only_where_access_decide_allows_a_put(live: tuple[Instance, DavServer]) -> None:
    """The listing offers writing (and connect-src 'self', and the write script's hash)
    exactly where the account may PUT: alice on files and team, not on ro; bob on files,
    not on team (he only reads it). Every page's script is allowed by hash only."""
    inst, server = live
    cases = {("alice", "files"): True, ("alice", "team"): True, ("alice", "ro"): False,
             ("bob", "files"): True, ("bob", "team"): False, ("bob", "ro"): False}
    for (account, share), writable in cases.items():
        with session_for(inst, account) as s:
            r = s.get(f"{server.url}{share}/", timeout=30)
        assert r.status_code == 200, (account, share, r.status_code)
        csp = r.headers["Content-Security-Policy"]
        assert "'self'" not in csp.split("connect-src")[0] and "unsafe-inline" not in csp.split("style-src")[0]
        assert "script-src 'sha256-" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert ("connect-src 'self'" in csp) is writable, (account, share, csp)
        assert ('id=tools' in r.text) is writable and ('data-token=' in r.text) is writable, (account, share)
        assert ("<button" in r.text) is writable, (account, share)
        for script in re.findall(r"<script>(.*?)</script>", r.text, re.S):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp, (account, share)


# --- in the browser ------------------------------------------------------------------------


def test_upload_two_files_with_the_picker(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    inst, server = live
    big = os.urandom(20 * 1024 * 1024)
    small = "a small note ✓\n".encode()
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        response = page.goto(server.url + "files/")
        assert response is not None and response.status == 200
        upload_slowly(ctx, page, [_upload("big.bin", "application/octet-stream", big),
                                  _upload("note.txt", "text/plain", small)],
                      lambda: shot(page, "browser-listing-uploading-1280.png"))
        files = share_dir(inst, "files")
        assert sha((files / "big.bin").read_bytes()) == sha(big)
        assert (files / "note.txt").read_bytes() == small
        assert {"big.bin", "note.txt"} <= set(listed(page))
        assert watch.dialogs == [] and watch.violations() == [], watch.console
        puts = [r for r in audit_lines(inst) if r["method"] == "PUT"]
        assert [(r["path"], r["status"], r["bytes_in"]) for r in puts] == [
            ("/files/big.bin", 201, len(big)), ("/files/note.txt", 201, len(small))]

        # Again with the same name: the page asks before it replaces; "no" keeps the file.
        watch.answer = False
        page.set_input_files("#pick", files=[_upload("note.txt", "text/plain", b"new")])
        page.wait_for_timeout(500)
        assert watch.dialogs[-1][0] == "confirm" and "Replace" in watch.dialogs[-1][1]
        assert (files / "note.txt").read_bytes() == small
        watch.answer = True
        reloaded(page, lambda: page.set_input_files(
            "#pick", files=[_upload("note.txt", "text/plain", b"new")]))
        assert (files / "note.txt").read_bytes() == b"new"
    finally:
        ctx.close()


def test_a_file_created_meanwhile_is_not_overwritten(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """The page uploads a new name with If-None-Match: *; a file of that name that
    appeared after the page loaded stays, and the refusal (412) is said in plain words."""
    inst, server = live
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        page.goto(server.url + "files/")
        (share_dir(inst, "files") / "race.txt").write_bytes(b"theirs")
        page.set_input_files("#pick", files=[_upload("race.txt", "text/plain", b"mine")])
        error = page.locator("#status .err")
        error.wait_for()
        assert "already here" in error.inner_text(), error.inner_text()
        assert (share_dir(inst, "files") / "race.txt").read_bytes() == b"theirs"
        assert page.locator("#again").count() == 1
    finally:
        ctx.close()


def test_drag_and_drop_uploads(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    inst, server = live
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "files/")
        data = page.evaluate_handle(
            "() => { const t = new DataTransfer();"
            " t.items.add(new File(['dropped bytes \\u2713'], 'dropped.txt', {type: 'text/plain'})); return t; }")
        page.dispatch_event("body", "dragover", {"dataTransfer": data})
        assert "dragging" in (page.locator("body").get_attribute("class") or "")
        reloaded(page, lambda: page.dispatch_event("body", "drop", {"dataTransfer": data}))
        assert (share_dir(inst, "files") / "dropped.txt").read_bytes() == "dropped bytes ✓".encode()
        assert "dropped.txt" in listed(page)
        assert watch.violations() == [], watch.console
    finally:
        ctx.close()


def test_new_folder_rename_and_delete(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    inst, server = live
    files = share_dir(inst, "files")
    (files / "keep.txt").write_bytes(b"keep")
    ctx = alice_context(browser, inst, server, PHONE)  # the whole round at phone width
    try:
        page = ctx.new_page()
        watch = Watch(page, "Holiday photos")
        page.goto(server.url + "files/")
        reloaded(page, lambda: page.click("#mkdir"))
        assert (files / "Holiday photos").is_dir()
        assert listed(page)["Holiday photos/"] == "/files/Holiday%20photos/"

        # Rename the folder and the file.
        watch.answer = "Photos 2026"
        reloaded(page, lambda: page.get_by_role("button", name="Rename Holiday photos").click())
        assert (files / "Photos 2026").is_dir() and not (files / "Holiday photos").exists()
        watch.answer = "kept.txt"
        reloaded(page, lambda: page.get_by_role("button", name="Rename keep.txt").click())
        assert (files / "kept.txt").read_bytes() == b"keep" and not (files / "keep.txt").exists()

        # Renaming onto an existing name is refused (Overwrite: F), in plain words.
        (files / "other.txt").write_bytes(b"other")
        page.reload()
        watch.answer = "other.txt"
        page.get_by_role("button", name="Rename kept.txt").click()
        error = page.locator("#status .err")
        error.wait_for()
        assert "already here" in error.inner_text(), error.inner_text()
        assert (files / "other.txt").read_bytes() == b"other" and (files / "kept.txt").exists()

        # Delete asks first: dismissed, the file stays; accepted, it goes.
        page.reload()
        watch.answer = False
        page.get_by_role("button", name="Delete kept.txt").click()
        page.wait_for_timeout(500)
        assert watch.dialogs[-1] == ("confirm", "Delete \u201ckept.txt\u201d?")
        assert (files / "kept.txt").exists()
        watch.answer = True
        reloaded(page, lambda: page.get_by_role("button", name="Delete kept.txt").click())
        assert not (files / "kept.txt").exists() and "kept.txt" not in listed(page)
        reloaded(page, lambda: page.get_by_role("button", name="Delete Photos 2026").click())
        assert "everything in it" in watch.dialogs[-1][1]
        assert not (files / "Photos 2026").exists()
        assert watch.violations() == [], watch.console
        methods = [(r["method"], r["status"]) for r in audit_lines(inst) if r["method"] not in ("GET", "HEAD")]
        assert methods == [("MKCOL", 201), ("MOVE", 201), ("MOVE", 201), ("MOVE", 412), ("DELETE", 204),
                           ("DELETE", 204)], methods
    finally:
        ctx.close()


@pytest.mark.parametrize(("account", "share"), [("bob", "team"), ("alice", "ro")])
def test_a_reader_gets_no_write_controls_and_a_forged_write_is_refused(
    live: tuple[Instance, DavServer], browser: Browser, account: str, share: str  # noqa: F811
) -> None:
    inst, server = live
    (share_dir(inst, share) / "doc.txt").write_bytes(b"doc")
    ctx = alice_context(browser, inst, server, account=account)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        response = page.goto(f"{server.url}{share}/")
        assert response is not None and response.status == 200
        assert listed(page)["doc.txt"] == f"/{share}/doc.txt"
        assert page.locator("#tools, #pick, #mkdir, button").count() == 0
        assert "connect-src" not in response.headers["content-security-policy"]
        readonly = page.locator(".readonly").inner_text()
        assert readonly == "You can open and download the files here, but not change them.", readonly
        if (account, share) == ("alice", "ro"):
            shot(page, "browser-listing-readonly-1280.png")
            page.set_viewport_size(PHONE)
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            shot(page, "browser-listing-readonly-360.png")
        # A forged write from our own origin without the token (a script that got into a
        # page, here the writable listing of files whose CSP allows fetch): refused as
        # csrf before any share rule, for the write and a POST alike.
        page.goto(f"{server.url}files/")
        before = len(audit_lines(inst))
        for method in ("PUT", "POST"):
            status = page.evaluate(
                "async ([m, u]) => (await fetch(u, {method: m, body: 'forged', credentials: 'include'})).status",
                [method, f"/{share}/doc.txt"])
            assert status == 403, (method, status)
        assert (share_dir(inst, share) / "doc.txt").read_bytes() == b"doc"
        refused = [r for r in audit_lines(inst)[before:] if r["method"] in ("PUT", "POST")]
        assert [(r["method"], r["decision"], r["reason"]) for r in refused] == [
            ("PUT", "deny", "csrf"), ("POST", "deny", "csrf")], refused
        assert watch.dialogs == []
    finally:
        ctx.close()


def test_twin_a_same_origin_fetch_with_the_token_writes(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """The twin of the forged write: the same fetch with the page's token succeeds."""
    inst, server = live
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        page.goto(server.url + "files/")
        token = page.locator("#tools").get_attribute("data-token")
        page.goto(server.url + "files/")
        for token_sent, expected in ((None, 403), (token, 201)):
            headers = {HEADER: token_sent} if token_sent else {}
            status = page.evaluate(
                "async ([u, h]) => (await fetch(u, {method: 'PUT', body: 'by fetch', headers: h})).status",
                ["/files/fetched.txt", headers])
            assert status == expected, (token_sent, status)
        assert (share_dir(inst, "files") / "fetched.txt").read_bytes() == b"by fetch"
    finally:
        ctx.close()


def test_hostile_names_round_trip_without_running_script(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """Each name arrives on disk exactly (upload), is listed and linked exactly, and
    renames exactly; no script runs from a name and the console shows no CSP violation."""
    inst, server = live
    files = share_dir(inst, "files")
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "files/")
        payloads = {name: f"content of {name}".encode() for name in HOSTILE}
        reloaded(page, lambda: page.set_input_files("#pick", files=[
            _upload(n, "text/plain", b) for n, b in payloads.items()]))
        assert {p.name: p.read_bytes() for p in files.iterdir()} == payloads
        assert set(listed(page).values()) == {"/"} | {"/files/" + quote(n) for n in HOSTILE}
        for name in HOSTILE:
            new = "renamed " + name.strip()
            watch.answer = new
            button = page.locator(f'button.rename[data-href="/files/{quote(name)}"]')
            assert button.get_attribute("data-name") == name
            reloaded(page, button.click)
            assert (files / new).read_bytes() == payloads[name], name
            assert not (files / name).exists()
            href = "/files/" + quote(new)
            assert href in listed(page).values(), (name, listed(page))
            assert requests_get(inst, server.url.rstrip("/") + href) == payloads[name], (name, href)
        assert watch.dialogs and all(kind == "prompt" for kind, _ in watch.dialogs), "a name ran script"
        assert watch.violations() == [], watch.console
    finally:
        ctx.close()


def requests_get(inst: Instance, url: str) -> bytes:
    with session_for(inst, "alice") as s:
        r = s.get(url, timeout=30)
    assert r.status_code == 200, (url, r.status_code)
    return r.content


def test_phone_width_screenshots_and_layout(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """At 360 px the writable listing needs no sideways scrolling and its controls are reachable."""
    inst, server = live
    files = share_dir(inst, "files")
    (files / "Documents").mkdir()
    (files / "Holiday photos").mkdir()
    (files / "budget 2026 - final version (2).xlsx").write_bytes(os.urandom(48_000))
    (files / "notes.txt").write_bytes(b"notes\n")
    ctx = alice_context(browser, inst, server, PHONE)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "files/")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        for control in ("Upload files", "New folder"):
            box = page.get_by_text(control, exact=True).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (control, box)
        box = page.get_by_role("button", name="Delete notes.txt").bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"], box
        shot(page, "browser-listing-writable-360.png")
        page.set_viewport_size(DESKTOP)
        shot(page, "browser-listing-writable-1280.png")
        assert watch.violations() == [], watch.console
    finally:
        ctx.close()


# --- the guide, as written -------------------------------------------------------------------


def test_the_browser_guide_shows_what_the_page_says() -> None:
    """docs/browser.md: every picture it shows exists, and every message it explains is
    one the listing's script says (word for word), so the guide cannot drift from the page."""
    from davserver import listing

    guide = (IMG.parent / "browser.md").read_text()
    flat = " ".join(guide.split())
    pictures = re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", guide)
    assert pictures and all((IMG.parent / p).is_file() for p in pictures), pictures
    assert {p for p in pictures if "listing" in p} == {
        f"img/browser-listing-{n}.png" for n in ("writable-1280", "uploading-1280", "readonly-1280",
                                                 "writable-360", "readonly-360")}
    table = guide[guide.index("| The page says |"):].split("\n\n", 1)[0]
    said = [row.split("|")[1].strip() for row in table.splitlines()[2:]]
    assert len(said) >= 7, said
    for sentence in said:
        assert sentence in listing._WRITE_SCRIPT, sentence
    for sentence in ("Show the folder as it is now", "Upload files", "New folder"):
        assert sentence in flat and sentence in listing._WRITE_SCRIPT + _listing_html(), sentence
    assert "You can open and download the files here, but not change them." in flat


def _listing_html() -> str:
    import inspect

    from davserver import listing
    return inspect.getsource(listing.Listing._render)


def test_refusals_are_said_in_plain_words(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """A file another client has locked (423) and a page whose token is no longer valid
    (403: here the token is swapped for another certificate's) say what happened and
    what to do; nothing changes."""
    inst, server = live
    files = share_dir(inst, "files")
    (files / "locked.txt").write_bytes(b"in use")
    with session_for(inst, "alice") as s:
        r = s.request("LOCK", server.url + "files/locked.txt", data=_LOCK, timeout=30,
                      headers={"Content-Type": "application/xml", "Timeout": "Second-600"})
        assert r.status_code == 200, r.text
    with session_for(inst, "bob") as s:
        bobs = token_of(s.get(server.url + "files/", timeout=30).text)
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "files/")
        page.get_by_role("button", name="Delete locked.txt").click()
        error = page.locator("#status .err")
        error.wait_for()
        assert error.inner_text() == ("\u201clocked.txt\u201d was not deleted. It is locked because someone is "
                                      "working on it. Try again later."), error.inner_text()
        assert (files / "locked.txt").read_bytes() == b"in use"

        def swap_token(route: Route) -> None:
            response = route.fetch()
            route.fulfill(response=response, body=re.sub(r'data-token="[^"]+"', f'data-token="{bobs}"',
                                                         response.text()))

        page.route("**/files/", swap_token)
        page.reload()
        page.unroute("**/files/")
        watch.answer = "new folder"
        page.click("#mkdir")
        page.locator("#status .err").wait_for()
        said = page.locator("#status .err").inner_text()
        assert said == ("The folder \u201cnew folder\u201d was not created. This page can no longer send changes. "
                        "Reload the page, then try again."), said
        assert not (files / "new folder").exists()
        page.click("#again")
        page.wait_for_load_state()
        assert page.locator("#status").inner_text() == ""
        assert watch.violations() == [], watch.console
    finally:
        ctx.close()
    refused = [(r["method"], r["status"], r["reason"]) for r in audit_lines(inst) if r["method"] in ("DELETE", "MKCOL")]
    assert refused == [("DELETE", 423, "resource_locked"), ("MKCOL", 403, "csrf")], refused


def test_a_listing_open_longer_than_its_token_asks_for_a_reload(inst: Instance, browser: Browser) -> None:  # noqa: F811
    """``auth.browser_token_seconds`` (here its least, 10 s) bounds how long a listing's
    token is accepted. A change sent from a page open longer is refused (403, audited
    csrf), nothing changes, and the page says in plain words to reload it; after the
    reload the same change is made. The twin: a change within the time is made."""
    TTL = 10
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + f"\nauth: {{browser_token_seconds: {TTL}}}\n")
    files = share_dir(inst, "files")
    with running(inst) as server:
        assert server.config.auth.browser_token_seconds == TTL
        ctx = alice_context(browser, inst, server)
        try:
            page = ctx.new_page()
            watch = Watch(page, answer="fresh")
            page.goto(server.url + "files/")
            reloaded(page, lambda: page.click("#mkdir"))  # the twin: in time
            assert (files / "fresh").is_dir()
            shown = time.monotonic()
            time.sleep(max(0.0, shown + TTL + 1 - time.monotonic()))
            watch.answer = "late"
            page.click("#mkdir")
            page.locator("#status .err").wait_for()
            said = page.locator("#status .err").inner_text()
            assert said == ("The folder \u201clate\u201d was not created. This page has been open too long to make "
                            "changes from it. Reload the page, then try again."), said
            assert not (files / "late").exists()
            page.click("#again")
            page.wait_for_load_state()
            reloaded(page, lambda: page.click("#mkdir"))
            assert (files / "late").is_dir()
            assert watch.violations() == [], watch.console
        finally:
            ctx.close()
    made = [(r["method"], r["status"], r["reason"]) for r in audit_lines(inst) if r["method"] == "MKCOL"]
    assert [m[:2] for m in made] == [("MKCOL", 201), ("MKCOL", 403), ("MKCOL", 201)], made
    assert made[1][2] == Refusal.CSRF.value


def test_a_reader_with_a_valid_token_is_still_refused_by_the_share_rule(
    live: tuple[Instance, DavServer], browser: Browser  # noqa: F811
) -> None:
    """The token says the request comes from our page, not that the account may write:
    bob, a reader of team, takes the real token of a page he can read (the listing of
    files, where he may write) and sends PUT, DELETE and MOVE to team with it, from that
    page. Each passes the CSRF check and is refused by the share's rule (403,
    write_denied); nothing changes. The twin: the same token writes in files."""
    inst, server = live
    team = share_dir(inst, "team")
    (team / "doc.txt").write_bytes(b"doc")
    ctx = alice_context(browser, inst, server, account="bob")
    try:
        page = ctx.new_page()
        page.goto(f"{server.url}team/")
        assert page.locator("#tools").count() == 0  # a reader's listing offers no writes
        page.goto(f"{server.url}files/")
        token = page.locator("#tools").get_attribute("data-token")
        assert token
        before = len(audit_lines(inst))
        sent = {
            "PUT": ("/team/doc.txt", {}),
            "DELETE": ("/team/doc.txt", {}),
            "MOVE": ("/team/doc.txt", {"Destination": f"{server.url}team/moved.txt", "Overwrite": "F"}),
        }
        for method, (url, extra) in sent.items():
            status = page.evaluate(
                "async ([m, u, h]) => (await fetch(u, {method: m, headers: h, body: m === 'PUT' ? 'x' : null,"
                " credentials: 'include'})).status",
                [method, url, {HEADER: token, **extra}])
            assert status == 403, (method, status)
        refused = [(r["method"], r["decision"], r["reason"]) for r in audit_lines(inst)[before:]]
        assert refused == [(m, "deny", "write_denied") for m in sent], refused
        assert (team / "doc.txt").read_bytes() == b"doc" and not (team / "moved.txt").exists()
        # The twin: the token is good, and writes where bob may write.
        status = page.evaluate(
            "async ([u, t]) => (await fetch(u, {method: 'PUT', headers: {'X-Davserver-CSRF': t}, body: 'mine',"
            " credentials: 'include'})).status", ["/files/bob.txt", token])
        assert status == 201, status
        assert (share_dir(inst, "files") / "bob.txt").read_bytes() == b"mine"
    finally:
        ctx.close()


def test_a_refusal_by_the_share_rule_does_not_ask_for_a_reload(
    live: tuple[Instance, DavServer], browser: Browser  # noqa: F811
) -> None:
    """A 403 that is the share's rule, not the page's token (here the share became
    read-only for the page while it was open: its folder is swapped for ro's), says the
    account may not change this and not to reload (a reload would not help); the token
    refusal of the twin in test_refusals_are_said_in_plain_words asks for one."""
    inst, server = live

    def to_ro(route: Route) -> None:
        response = route.fetch()
        route.fulfill(response=response, body=response.text().replace('data-base="/files/"', 'data-base="/ro/"'))

    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page, answer="new folder")
        page.route("**/files/", to_ro)
        page.goto(server.url + "files/")
        page.unroute("**/files/")
        before = len(audit_lines(inst))
        page.click("#mkdir")
        page.locator("#status .err").wait_for()
        said = page.locator("#status .err").inner_text()
        assert said == ("The folder \u201cnew folder\u201d was not created. Your account may not change this "
                        "here, or the server does not accept this name."), said
        assert "reload" not in said.lower()
        assert not (share_dir(inst, "ro") / "new folder").exists()
        refused = [(r["method"], r["status"], r["reason"]) for r in audit_lines(inst)[before:]]
        # (Chromium first tries /ro/ without the password: the 401 of its Basic round trip.)
        assert refused[-1] == ("MKCOL", 403, "read_only") and {r[1] for r in refused} <= {401, 403}, refused
        assert watch.violations() == [], watch.console
    finally:
        ctx.close()


def test_uploading_a_name_of_a_folder_says_so_and_asks_nothing(
    live: tuple[Instance, DavServer], browser: Browser  # noqa: F811
) -> None:
    """A file whose name is a folder's here is not offered to overwrite (that would fail
    405): the page says a folder of that name is here, without a dialog or a request. The
    twin: a file's name asks to replace it, and does."""
    inst, server = live
    files = share_dir(inst, "files")
    (files / "report").mkdir()
    (files / "notes.txt").write_bytes(b"old")
    ctx = alice_context(browser, inst, server)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(server.url + "files/")
        before = len(audit_lines(inst))
        page.set_input_files("#pick", files=[_upload("report", "text/plain", b"new")])
        page.locator("#status .err").wait_for()
        said = page.locator("#status .err").inner_text()
        assert said == ("\u201creport\u201d was not uploaded: a folder of that name is already here. "
                        "Rename the folder or the file first."), said
        assert watch.dialogs == [] and (files / "report").is_dir()
        assert [r for r in audit_lines(inst)[before:] if r["method"] == "PUT"] == []
        reloaded(page, lambda: page.set_input_files(
            "#pick", files=[_upload("notes.txt", "text/plain", b"new")]))
        assert [d[0] for d in watch.dialogs] == ["confirm"], watch.dialogs
        assert (files / "notes.txt").read_bytes() == b"new"
    finally:
        ctx.close()


def test_upload_of_20_mb_on_a_phone(live: tuple[Instance, DavServer], browser: Browser) -> None:  # noqa: F811
    """The two-file upload (one of 20 MiB) on a 360 px screen with touch: the picker's label
    is on screen and tappable without sideways scrolling, progress is shown, and both files
    arrive with their exact bytes and are listed."""
    inst, server = live
    big = os.urandom(20 * 1024 * 1024)
    small = "from the phone ✓\n".encode()
    ctx = alice_context(browser, inst, server, PHONE)
    try:
        page = ctx.new_page()
        watch = Watch(page)
        response = page.goto(server.url + "files/")
        assert response is not None and response.status == 200
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        label = page.locator("label", has_text="Upload files").bounding_box()
        assert label is not None and label["x"] >= 0 and label["x"] + label["width"] <= PHONE["width"], label

        def fits_while_uploading() -> None:
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # while uploading too

        upload_slowly(ctx, page, [_upload("big.bin", "application/octet-stream", big),
                                  _upload("phone.txt", "text/plain", small)], fits_while_uploading)
        files = share_dir(inst, "files")
        assert sha((files / "big.bin").read_bytes()) == sha(big)
        assert (files / "phone.txt").read_bytes() == small
        assert {"big.bin", "phone.txt"} <= set(listed(page))
        assert watch.dialogs == [] and watch.violations() == [], watch.console
    finally:
        ctx.close()
