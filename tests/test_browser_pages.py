"""The pages a browser gets besides the listing: the refusal and error pages (guard.py,
error_pages.py) and the step-up page (stepup.py), on the skeleton of browser_pages.py.

Plain HTTP tests show what a browser navigation (Accept: text/html, or Sec-Fetch-Dest:
document) gets and that every other client keeps the short text answers byte for byte;
Playwright tests (fixtures of tests/test_browser.py) walk a user from a TOTP share to the
step-up page and back, and take the screenshots in docs/img/ at 360 px and 1280 px.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgidav.dav_error import DAVError

from davserver.browser_pages import LOCAL_TIME_SCRIPT, page_bytes, safe_next, script_csp, wants_html
from davserver.error_pages import BROWSER_PAGE_STATUSES, ErrorPages, browser_error_page
from davserver.request_context import CONTEXT_KEY, RequestContext
from davserver.server import DavServer
from tests.conftest import Instance, running, session_for
from tests.test_browser import (  # noqa: F401 - browser and secure are fixtures
    STEPUP,
    add_share,
    browser,
    cert_context,
    password_context,
    secure,
    submit,
    wrong_code,
)
from tests.test_clients import share_dir
from tests.test_totp_live import code, configure, enrol

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

CHROMIUM_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)
BROWSER = {"Accept": CHROMIUM_ACCEPT, "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
REALM = 'Basic realm="davserver", charset="UTF-8"'
IMG = Path(__file__).resolve().parent.parent / "docs" / "img"

CODE_PAGE_TEXT = (
    "This folder needs a code from your authenticator app as well as your password. "
    "Enter both on the two-factor page; after that your password alone opens the folder for a while."
)


def audit_lines(inst: Instance) -> list[dict[str, Any]]:
    path = inst.home.root / "state" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_audit(inst: Instance, path: str, count: int) -> dict[str, Any]:
    """The ``count``-th audit line for ``path``, without its time and duration."""
    for _ in range(100):  # the line is written when the server closes the response
        lines = [r for r in audit_lines(inst) if r.get("path") == path]
        if len(lines) >= count:
            return {k: v for k, v in lines[count - 1].items() if k not in ("time", "duration_ms", "peer")}
        time.sleep(0.05)
    raise AssertionError(f"no audit line {count} for {path}")


@pytest.fixture
def vault(inst: Instance) -> Iterator[tuple[Instance, DavServer, pyotp.TOTP]]:
    """alice enrolled in TOTP; shares secure (everyone, password + code) and vault (bob only,
    password + code); a live server."""
    configure(inst)
    add_share(inst, "vault", readers=["bob"], require=["password", "totp"])
    totp = enrol(inst)
    with running(inst) as server:
        yield inst, server, totp


# --- wants_html and safe_next (no server) ------------------------------------------------------


def test_wants_html_is_a_browser_navigation_only() -> None:
    yes = [
        {"HTTP_ACCEPT": CHROMIUM_ACCEPT},
        {"HTTP_ACCEPT": "text/html"},
        {"HTTP_ACCEPT": "*/*", "HTTP_SEC_FETCH_DEST": "document"},
        {"HTTP_ACCEPT": "text/html;q=0.9,*/*;q=0.8"},
    ]
    no = [
        {},  # rclone, litmus, Windows' redirector
        {"HTTP_ACCEPT": "*/*"},  # curl, requests
        {"HTTP_ACCEPT": "application/json, text/html;q=0.5"},
        {"HTTP_ACCEPT": "text/html;q=0"},
        {"HTTP_ACCEPT": "text/html;q=nan"},
        {"HTTP_ACCEPT": CHROMIUM_ACCEPT, "HTTP_SEC_FETCH_DEST": "empty"},  # a page's own fetch()
        {"HTTP_ACCEPT": CHROMIUM_ACCEPT, "HTTP_SEC_FETCH_DEST": "image"},
    ]
    assert [wants_html(e) for e in yes] == [True] * len(yes)
    assert [wants_html(e) for e in no] == [False] * len(no)


NASTY_NEXT = [
    "", "files/", "//evil.example/", "///evil.example", "/\\evil.example", "\\/evil.example", "/\t/evil.example",
    "/\n/evil.example", "/\r\n//evil.example", " /files/", "https://evil.example/", "javascript:alert(1)",
    "http:/files", "/files/\x00", "/files/\u202egnp.exe", "/files/\u2028", "/" + "a" * 2048, "\x7f/files",
    "/files/\x85", "/files/\u200b",
]


def test_safe_next_refuses_each_way_out_and_keeps_the_good_path() -> None:
    assert [v for v in NASTY_NEXT if safe_next(v) is not None] == []
    assert safe_next("/secure/Grüße ✓/plan.txt") == "/secure/Gr%C3%BC%C3%9Fe%20%E2%9C%93/plan.txt"
    assert safe_next("/secure/") == "/secure/"
    assert safe_next("/files/a%20b?x=1#y") == "/files/a%2520b%3Fx%3D1%23y"  # the decoded name, kept exactly


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list("/\\:@.%?#\t\n\r \x00\x0b\u3000\u2028\u202e\ufeffevil")), max_size=20),
    st.from_regex(r"\A[/\\]{0,3}[a-z:]{0,8}[/\\]{0,3}.{0,10}\Z"),
))
def test_safe_next_only_ever_links_inside_this_origin(value: str) -> None:
    """Whatever ``next`` says, the href, resolved as a browser resolves it against a page
    of ours, stays on our scheme and host, and its path is the value's own."""
    href = safe_next(value)
    if href is None:
        return
    base = "https://dav.example:8443/_davserver/?next=x"
    resolved = urlsplit(urljoin(base, href))
    assert (resolved.scheme, resolved.netloc) == ("https", "dav.example:8443"), (value, href)
    assert href.startswith("/") and not href.startswith("//"), href
    assert re.fullmatch(r"[A-Za-z0-9/%._~-]*", href), href  # nothing a parser or HTML could read otherwise


def test_time_script_is_allowed_by_its_hash_only() -> None:
    body = page_bytes("t", "<p>x</p>", scripts=(LOCAL_TIME_SCRIPT,))
    assert f"<script>{LOCAL_TIME_SCRIPT}</script>".encode() in body
    assert script_csp(LOCAL_TIME_SCRIPT).startswith("'sha256-")
    assert script_csp(LOCAL_TIME_SCRIPT) != script_csp(LOCAL_TIME_SCRIPT + " ")
    assert b'<meta name=viewport content="width=device-width,initial-scale=1">' in body


# --- error pages in process: every status, browser and not ---------------------------------


def _call(app: ErrorPages, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize("status", sorted(BROWSER_PAGE_STATUSES | {400, 405, 412, 500}))
def test_error_page_for_browser_and_text_for_others(status: int) -> None:
    def raising(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise DAVError(status)

    app = ErrorPages(None, raising, {})
    share = type("Share", (), {"name": "files"})()
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/files/Gr\u00c3\u00bc\u00c3\u009fe.txt",
            CONTEXT_KEY: RequestContext(share=share)}
    line, headers, body = _call(app, dict(base))
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == (line + "\n").encode() and line.startswith(str(status)), body

    line, headers, body = _call(app, {**base, "HTTP_ACCEPT": CHROMIUM_ACCEPT})
    assert line.startswith(str(status))
    if status not in BROWSER_PAGE_STATUSES:
        assert body == (line + "\n").encode(), (status, body)
        return
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))
    assert "default-src 'none'" in headers["Content-Security-Policy"], headers
    assert "script-src" not in headers["Content-Security-Policy"], headers
    text = body.decode()
    assert '<a href="/files/">Back to the folder files</a><a href="/">All shares</a>' in text, text
    assert "WsgiDAV" not in text and "Traceback" not in text
    if status in (403, 404, 409, 423):
        assert "<code>/files/Grüße.txt</code>" in text, text
    expected, _ = browser_error_page(status, path="/files/Grüße.txt", share="files")
    assert body == expected
    _, _, head = _call(app, {**base, "HTTP_ACCEPT": CHROMIUM_ACCEPT, "REQUEST_METHOD": "HEAD"})
    assert head == b""


# --- refusals of a live server ---------------------------------------------------------------


def _code_page(next_path: str) -> bytes:
    href = next_path.replace(" ", "%20")
    return page_bytes("A two-factor code is needed", (
        "<h1>A two-factor code is needed</h1>"
        f"<p>{CODE_PAGE_TEXT}</p>"
        f'<p class=links><a class=button href="/_davserver/?next={href}">Enter a two-factor code</a>'
        '<a href="/">All shares</a></p>'
    ))


def test_totp_share_refusal_sends_a_browser_to_the_code_page(vault: tuple[Instance, DavServer, pyotp.TOTP]) -> None:
    inst, server, totp = vault
    alice = inst.clients["alice"]
    (share_dir(inst, "secure") / "sub").mkdir()
    url = f"{server.url}secure/sub/"
    attempts = {
        "password alone (otp_required)": alice.password,
        "a wrong code (bad_otp)": alice.password + wrong_code(totp),
        "a wrong password": "not-the-password" + code(totp),
        "no credentials": None,
    }
    for n, (label, password) in enumerate(attempts.items()):
        with session_for(inst, "alice", password=password or "") as s:
            if password is None:
                s.auth = None
            text = s.get(url, timeout=30)
            text_audit = last_audit(inst, "/secure/sub/", 2 * n + 1)
            page = s.get(url, headers=BROWSER, timeout=30)
            page_audit = last_audit(inst, "/secure/sub/", 2 * n + 2)
        # Other clients: today's answer, byte for byte.
        assert (text.status_code, text.content) == (401, b"invalid credentials\n"), label
        assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert text.headers["WWW-Authenticate"] == REALM
        # A browser without a two-factor session: the page that leads to the code, as a 403
        # without a challenge (no password dialog: a password alone cannot open the share).
        assert page.status_code == 403, label
        assert "WWW-Authenticate" not in page.headers, label
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.content == _code_page("/secure/sub/"), (label, page.text)
        # The same audit line either way (the page is longer and says 403).
        assert page_audit["status"] == 403, page_audit
        assert {**text_audit, "bytes_out": 0, "status": 0} == {**page_audit, "bytes_out": 0, "status": 0}, label
        assert text_audit["decision"] == "deny"
    assert [r["reason"] for r in audit_lines(inst) if r.get("path") == "/secure/sub/"][::2] == [
        "otp_required", "bad_otp", "bad_password", "no_credentials"]

    # A non-ASCII folder: the link carries the path percent-encoded.
    (share_dir(inst, "secure") / "Grüße ✓").mkdir()
    with session_for(inst, "alice") as s:
        page = s.get(f"{server.url}secure/Gr%C3%BC%C3%9Fe%20%E2%9C%93/", headers=BROWSER, timeout=30)
    assert page.status_code == 403
    assert 'href="/_davserver/?next=/secure/Gr%C3%BC%C3%9Fe%20%E2%9C%93/"' in page.text, page.text

    # HEAD: the same status as GET, no challenge, no body.
    with session_for(inst, "alice") as s:
        head = s.head(url, headers=BROWSER, timeout=30)
    assert (head.status_code, head.content, head.headers["Content-Length"]) == (403, b"", "0")
    assert "WWW-Authenticate" not in head.headers

    # The twin: with the code, in; that opens a two-factor session, and from then on a
    # browser's failed sign-in is the usual 401 with the challenge (the dialog asks for the
    # password, which alone now opens the share) and the generic page, right password or not.
    with session_for(inst, "alice", password=alice.password + code(totp)) as s:
        ok = s.get(url, headers=BROWSER, timeout=30)
    assert ok.status_code == 200, ok.text
    for password in (None, "not-the-password"):
        with session_for(inst, "alice", password=password or "") as s:
            if password is None:
                s.auth = None
            page = s.get(url, headers=BROWSER, timeout=30)
            text = s.get(url, timeout=30)
        assert (page.status_code, page.headers["WWW-Authenticate"]) == (401, REALM), password
        assert b"Sign-in needed" in page.content and b"two-factor" not in page.content, page.text
        assert (text.status_code, text.content) == (401, b"invalid credentials\n")
    with session_for(inst, "alice") as s:
        assert s.get(url, headers=BROWSER, timeout=30).status_code == 200  # the password alone, now


def test_other_refusals_say_nothing_about_codes(vault: tuple[Instance, DavServer, pyotp.TOTP]) -> None:
    """A share alice may not read (vault, bob's), a share that does not exist, and a wrong
    password on a share without a code: the generic page, linking to the root only."""
    inst, server, _ = vault
    generic = page_bytes("Sign-in needed", (
        "<h1>Sign-in needed</h1><p>The server did not accept the sign-in for this address. Check your user name "
        "and password; if they are right, your account may not open this folder.</p>"
        '<p class=links><a href="/">All shares</a></p>'
    ))
    cases = {
        "vault/": None, "no-such-share/": None, "files/": "wrong password",
    }
    bodies = {}
    for path, password in cases.items():
        with session_for(inst, "alice", password=password) as s:
            page = s.get(server.url + path, headers=BROWSER, timeout=30)
            text = s.get(server.url + path, timeout=30)
        assert (page.status_code, text.status_code) == (401, 401), path
        assert text.content == b"invalid credentials\n", path
        bodies[path] = page.content
    assert bodies == dict.fromkeys(cases, generic)
    # The twin: alice's right password opens files; bob's vault page leads him to the code page.
    with session_for(inst, "alice") as s:
        assert s.get(server.url + "files/", headers=BROWSER, timeout=30).status_code == 200
    enrol(inst, "bob")
    with session_for(inst, "bob") as s:
        page = s.get(server.url + "vault/", headers=BROWSER, timeout=30)
    assert page.status_code == 403 and b"Enter a two-factor code" in page.content, page.text
    assert "WWW-Authenticate" not in page.headers


def test_status_pages_for_a_browser_and_text_for_webdav_clients(server: DavServer, inst: Instance) -> None:
    files = share_dir(inst, "files")
    (files / "doc.txt").write_bytes(b"doc\n")
    u = server.url
    with session_for(inst, "alice") as s:
        lock = s.request("LOCK", u + "files/doc.txt", timeout=30, data=(
            '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype></D:lockinfo>"))
        assert lock.status_code == 200, lock.text
        requests_by_status: dict[int, tuple[str, str]] = {
            404: ("GET", "files/missing.txt"),
            403: ("PUT", "ro/new.txt"),
            409: ("MKCOL", "files/no/such/parent/"),
            423: ("PUT", "files/doc.txt"),
        }
        for status, (method, path) in requests_by_status.items():
            text = s.request(method, u + path, data=b"x" if method == "PUT" else None, timeout=30)
            # Accept alone: a browser's Sec-Fetch-* on a write without the listing's token is csrf (csrf.py).
            page = s.request(method, u + path, data=b"x" if method == "PUT" else None,
                             headers={"Accept": CHROMIUM_ACCEPT} if method != "GET" else BROWSER, timeout=30)
            assert text.status_code == page.status_code == status, (status, text.text, page.text)
            assert text.headers["Content-Type"].startswith(("text/plain", "application/xml")), text.headers
            assert b"<html" not in text.content, (status, text.content)
            assert page.headers["Content-Type"] == "text/html; charset=utf-8", (status, page.headers)
            share = path.split("/", 1)[0]
            assert f'<a href="/{share}/">Back to the folder {share}</a>'.encode() in page.content, page.text
            assert f"<code>/{path}</code>".encode() in page.content, page.text
        # The exact text answers WebDAV clients had before.
        assert s.get(u + "files/missing.txt", timeout=30).content == b"404 Not Found\n"
        assert s.put(u + "ro/new.txt", data=b"x", timeout=30).content == b"forbidden\n"
    assert not (share_dir(inst, "ro") / "new.txt").exists()
    assert (files / "doc.txt").read_bytes() == b"doc\n"


# --- in Chromium -------------------------------------------------------------------------------


def _watch_console(page: Page) -> list[str]:
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda exc: messages.append(f"pageerror: {exc}"))
    return messages


def _shoot(page: Page, folder: Path, name: str) -> None:
    """A screenshot into ``folder``; into docs/img/ too with DAVSERVER_UPDATE_SCREENSHOTS=1
    (so an ordinary test run leaves the documentation's pictures alone)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 2000, f"{name}: an empty picture"
    if os.environ.get("DAVSERVER_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, IMG / path.name)


SIZES: dict[str, ViewportSize] = {"360": {"width": 360, "height": 740}, "1280": {"width": 1280, "height": 800}}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_browser_from_totp_share_to_code_page_and_back(
    secure: tuple[Instance, DavServer, pyotp.TOTP], browser: Browser, size: str  # noqa: F811
) -> None:
    """The whole way, on a phone-sized screen and a desktop one: the first visit, with no
    credentials at all (Playwright's page gets a 401 where a browser shows its password
    dialog), is the guide page itself, 403 without a challenge; the step-up page; back to
    the folder, which now asks for the password (401 with the challenge); the password alone
    opens it."""
    inst, server, totp = secure
    alice = inst.clients["alice"]
    (share_dir(inst, "secure") / "Pläne").mkdir()
    (share_dir(inst, "secure") / "Pläne" / "plan.txt").write_bytes(b"plan\n")
    ctx = cert_context(browser, inst, server, viewport=SIZES[size])
    try:
        page = ctx.new_page()
        console = _watch_console(page)
        folder = server.url + "secure/Pl%C3%A4ne/"
        response = page.goto(folder)
        assert response is not None and response.status == 403, response and response.status
        assert "www-authenticate" not in response.headers, response.headers  # no password dialog
        assert page.locator("h1").inner_text() == "A two-factor code is needed"
        _fits(page)
        link = page.get_by_role("link", name="Enter a two-factor code")
        assert link.get_attribute("href") == "/_davserver/?next=/secure/Pl%C3%A4ne/"
        with page.expect_navigation():
            link.click()
        assert page.url == server.url + "_davserver/?next=/secure/Pl%C3%A4ne/"
        assert page.locator("dd").nth(1).inner_text().startswith("alice")

        # A wrong code: the hint that each code works once; the way back is kept.
        page.fill("#password", alice.password)
        page.fill("#code", wrong_code(totp))
        response = submit(page, "Verify")
        assert response.status == 403
        assert page.locator("p.err").inner_text() == (
            "The password or the code was not accepted. Each code can be used once — wait for the next one.")
        assert page.get_by_role("link", name=re.compile("Continue")).count() == 0

        page.fill("#password", alice.password)
        page.fill("#code", totp.now())
        response = submit(page, "Verify")
        assert response.status == 200, page.content()
        assert page.locator("p.ok").inner_text() == "Code accepted: your two-factor session is open."
        _fits(page)
        back = page.get_by_role("link", name="Continue to the folder /secure/Pläne/")
        assert back.get_attribute("href") == "/secure/Pl%C3%A4ne/"
        assert back.locator("code").inner_text() == "/secure/Pläne/"
        with page.expect_response(folder) as answer:
            back.click()
        # The session is open: now the browser's password dialog comes (the usual challenge;
        # Playwright without credentials cancels it: net::ERR_INVALID_AUTH_CREDENTIALS).
        assert answer.value.status == 401
        assert answer.value.headers["www-authenticate"] == REALM
        assert not [m for m in console if "Content Security Policy" in m or "pageerror" in m], console
    finally:
        ctx.close()
    # The password typed into that dialog (Playwright's http_credentials) opens the folder.
    ctx = cert_context(browser, inst, server, viewport=SIZES[size],
                       http_credentials={"username": alice.account, "password": alice.password})
    try:
        page = ctx.new_page()
        response = page.goto(folder)
        assert response is not None and response.status == 200
        assert "plan.txt" in page.content()
        _fits(page)
    finally:
        ctx.close()


def test_next_elsewhere_is_never_linked(
    secure: tuple[Instance, DavServer, pyotp.TOTP], browser: Browser  # noqa: F811
) -> None:
    """A step-up page reached with a foreign ``next`` opens the session but offers no link out."""
    inst, server, totp = secure
    alice = inst.clients["alice"]
    ctx = cert_context(browser, inst, server)
    try:
        page = ctx.new_page()
        page.goto(server.url + STEPUP + "?next=//evil.example/")
        assert page.locator("input[name=next]").count() == 0
        page.fill("#password", alice.password)
        page.fill("#code", totp.now())
        submit(page, "Verify")
        assert page.locator("p.ok").inner_text() == "Code accepted: your two-factor session is open."
        hrefs = page.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        assert all(h.startswith("/") and not h.startswith("//") for h in hrefs), hrefs
        # The twin: the session shows a good next as a link back.
        page.goto(server.url + STEPUP + "?next=/secure/")
        assert page.get_by_role("link", name="Back to the folder /secure/").get_attribute("href") == "/secure/"
    finally:
        ctx.close()


def _fits(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    assert width <= viewport, f"the page is {width} px wide in a {viewport} px window"


def test_screenshots_of_the_pages(
    secure: tuple[Instance, DavServer, pyotp.TOTP], browser: Browser, tmp_path: Path  # noqa: F811
) -> None:
    """Each page at 360 px and 1280 px, into docs/img/: no sideways scrolling, the times in
    local time, no CSP violation in the console."""
    inst, server, totp = secure
    alice = inst.clients["alice"]
    # A symbolic link is never served (sharefs.py): the 403 "not allowed" page, as root too.
    (share_dir(inst, "files") / "unreadable.txt").symlink_to("/etc/hostname")
    for size, viewport in SIZES.items():
        # No password at all: "sign-in needed", the page a browser shows after its dialog's Cancel
        # (Playwright cancels that dialog and keeps no page: the answer is fetched, then shown).
        with session_for(inst, "alice") as s:
            s.auth = None
            answer = s.get(server.url + "files/", headers=BROWSER, timeout=30)
        assert (answer.status_code, answer.headers["WWW-Authenticate"]) == (401, REALM)
        ctx = cert_context(browser, inst, server, viewport=viewport)
        try:
            page = ctx.new_page()
            page.set_content(answer.text)
            assert page.locator("h1").inner_text() == "Sign-in needed"
            _fits(page)
            _shoot(page, tmp_path, f"{size}-refusal-sign-in")
        finally:
            ctx.close()
        ctx = password_context(browser, inst, server)
        try:
            page = ctx.new_page()
            page.set_viewport_size(viewport)
            console = _watch_console(page)
            response = page.goto(server.url + "secure/")
            assert response is not None and response.status == 403
            _fits(page)
            _shoot(page, tmp_path, f"{size}-refusal-code-needed")
            response = page.goto(server.url + "files/unreadable.txt")
            assert response is not None and response.status == 403
            assert page.locator("h1").inner_text() == "Not allowed"
            _fits(page)
            _shoot(page, tmp_path, f"{size}-refusal-not-allowed")
            response = page.goto(server.url + "files/no-such-file.txt")
            assert response is not None and response.status == 404
            _fits(page)
            _shoot(page, tmp_path, f"{size}-refusal-not-found")
            page.goto(server.url + STEPUP + "?next=/secure/")
            _fits(page)
            shown = page.locator("time").first
            assert shown.get_attribute("title", timeout=5000) and "UTC" not in shown.inner_text(), shown.inner_text()
            _shoot(page, tmp_path, f"{size}-stepup-form")
            page.fill("#password", alice.password)
            page.fill("#code", wrong_code(totp))
            submit(page, "Verify")
            _fits(page)
            _shoot(page, tmp_path, f"{size}-stepup-wrong-code")
            page.get_by_text("Certificate details").click()
            page.fill("#password", alice.password)
            page.fill("#code", code(totp, 0 if size == "360" else 1))
            submit(page, "Verify")
            page.get_by_text("Certificate details").click()
            _fits(page)
            _shoot(page, tmp_path, f"{size}-stepup-session-open")
            submit(page, "End the two-factor session now")
            assert not [m for m in console if "Content Security Policy" in m or "pageerror" in m], console
        finally:
            ctx.close()


def test_not_found_leads_back_to_the_folder_it_was_in(server: DavServer, inst: Instance) -> None:
    """A 404 deep in a share links to the folder that held the missing name, not the
    share's root; directly in the share (the twin) that folder is the root."""
    (share_dir(inst, "files") / "a" / "Bü").mkdir(parents=True)
    cases = {
        "files/a/B%C3%BC/missing.txt": '<a href="/files/a/B%C3%BC/">Back to the folder Bü</a>',
        "files/a/gone/": '<a href="/files/a/">Back to the folder a</a>',
        "files/missing.txt": '<a href="/files/">Back to the folder files</a>',
    }
    with session_for(inst, "alice") as s:
        for path, link in cases.items():
            page = s.get(server.url + path, headers=BROWSER, timeout=30)
            assert page.status_code == 404, path
            assert link in page.text, (path, page.text)
            assert s.get(server.url + path, timeout=30).content == b"404 Not Found\n"


def _served_script_hashes(body: str) -> set[str]:
    return {script_csp(m) for m in re.findall(r"<script>(.*?)</script>", body, flags=re.S)}


def _csp_script_hashes(header: str) -> set[str]:
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in header.split(";") if d.strip()}
    return set(directives["script-src"].split()[1:]) if "script-src" in directives else set()


def test_served_csp_allows_exactly_the_scripts_served(
    secure: tuple[Instance, DavServer, pyotp.TOTP],  # noqa: F811
) -> None:
    """The Content-Security-Policy header each page is served with allows by hash exactly
    the inline scripts in that page's bytes (so each runs, and nothing else would), with
    no 'self', 'unsafe-inline' or host source: the writable and read-only listings and the
    step-up page."""
    inst, server, _ = secure
    pages = {"files/": 2, "ro/": 1, STEPUP + "?next=/secure/": 1}
    with session_for(inst, "alice") as s:
        for path, scripts in pages.items():
            page = s.get(server.url + path, headers=BROWSER, timeout=30)
            assert page.status_code == 200, (path, page.text)
            served = _served_script_hashes(page.text)
            allowed = _csp_script_hashes(page.headers["Content-Security-Policy"])
            assert len(served) == scripts and served == allowed, (path, served, allowed)
            assert all(a.startswith("'sha256-") for a in allowed), allowed
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            # The twin: one byte more in any script and its hash is not allowed.
            for body in re.findall(r"<script>(.*?)</script>", page.text, flags=re.S):
                assert script_csp(body + ";") not in allowed


def test_listing_says_every_status_a_write_can_answer_in_plain_words() -> None:
    """Each status the write path can answer has its own sentence in the listing's script
    (not "It did not work (414)."); a 403 that is not about the page's age does not tell
    the user to reload; a name of an existing folder is said, not asked to overwrite."""
    from davserver.listing import _WRITE_SCRIPT

    table = dict(re.findall(r'^(\d{3}):"([^"]+)"', _WRITE_SCRIPT, flags=re.M))
    statuses = ["400", "403", "404", "405", "409", "412", "413", "414", "415", "423", "503", "507"]
    assert [s for s in statuses if s not in table] == [], table
    assert "reload" not in table["403"].lower(), table["403"]
    assert "a folder of that name is already here" in _WRITE_SCRIPT
    assert "It did not work" in _WRITE_SCRIPT  # the twin: a status outside the table still gets words
