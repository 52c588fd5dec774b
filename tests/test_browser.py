"""The browser step-up page (/_davserver/) in a real browser, and what its grant
means for clients that only know a password (rclone, litmus); the folder listing a
browser sees, on a password share and on the TOTP share after a step-up.

Playwright drives Debian's chromium and presents alice's client certificate
through its own TLS proxy, which checks the server against our CA
(NODE_EXTRA_CA_CERTS). A missing chromium or playwright skips these tests on a
workstation but fails them in CI (CI=true), like the other client tools.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyotp
import pytest
import yaml
from cryptography import x509

from davserver.listing import human_size
from davserver.server import DavServer
from tests.conftest import Instance, running, session_for
from tests.test_clients import rclone_remote, require_tool, run_curl, run_litmus, run_rclone, share_dir
from tests.test_totp_live import code, configure, enrol

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Response

pytestmark = pytest.mark.client

STEPUP = "_davserver/"
NAV_TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Defaults of the totp section (configure() leaves them alone).
GRANT_IDLE = 1800
GRANT_ABSOLUTE = 43200
#: The step-up page's session line, its times as the <time> elements' datetime (UTC).
_GRANT_TEXT = re.compile(
    r'open until <time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z"[^>]*>[^<]*</time> if unused, '
    r'at the latest <time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z"[^>]*>[^<]*</time>'
)
SESSION = "Two-factor session"


def require_playwright() -> ModuleType:
    """playwright.sync_api; skip without it, but fail in CI where it must be installed."""
    try:
        from playwright import sync_api
    except ImportError:
        message = "the playwright Python package is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true, so a missing client is an error")
        pytest.skip(message)
    return sync_api


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture
def secure(inst: Instance) -> Iterator[tuple[Instance, DavServer, pyotp.TOTP]]:
    """alice enrolled in TOTP; a live server with the share secure: require [password, totp]."""
    configure(inst)
    totp = enrol(inst)
    with running(inst) as server:
        yield inst, server, totp


@pytest.fixture
def browser(inst: Instance, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    chromium = require_tool("chromium")
    sync_api = require_playwright()
    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    # Playwright's client-certificate proxy (Node) then verifies the server against our CA.
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(inst.ca_file))
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


def origin(server: DavServer) -> str:
    return server.url.rstrip("/")


def cert_context(browser: Browser, inst: Instance, server: DavServer, account: str = "alice",
                 **kw: Any) -> BrowserContext:
    client = inst.clients[account]
    ctx = browser.new_context(
        client_certificates=[{"origin": origin(server), "certPath": str(client.crt), "keyPath": str(client.key)}],
        **kw,
    )
    ctx.set_default_timeout(NAV_TIMEOUT_MS)
    return ctx


# --- helpers -----------------------------------------------------------------------


def facts(page: Page) -> dict[str, str]:
    """The page's <dl>: Account, Certificate, Expires, Two-factor session."""
    terms = page.locator("dt").all_inner_texts()
    values = page.locator("dd").all_inner_texts()
    assert len(terms) == len(values), page.content()
    return dict(zip(terms, values, strict=True))


def assert_security_headers(response: Response | None) -> None:
    assert response is not None
    headers = response.headers  # lower-case names
    assert headers.get("cache-control") == "no-store", headers
    csp = headers.get("content-security-policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, headers


def submit(page: Page, button: str) -> Response:
    """Click a form button; the response to the form's POST (the page it navigates to)."""
    with page.expect_navigation() as nav:
        page.get_by_role("button", name=button).click()
    response = nav.value
    assert response is not None
    # Server bug (open): the page sends Referrer-Policy: no-referrer, so by the Fetch
    # standard the browser's POST of the page's own form carries "Origin: null", which
    # StepUpPage._same_origin refuses as cross-site ("The form expired").
    sent = response.request.all_headers()
    refused_as_csrf = "The form expired" in page.content()
    assert not refused_as_csrf, (
        f"{button!r}: the browser's submission of the page's own form was refused as CSRF "
        f"(HTTP {response.status}; it sent Origin: {sent.get('origin')!r}, "
        f"Sec-Fetch-Site: {sent.get('sec-fetch-site')!r})"
    )
    return response


def wrong_code(totp: pyotp.TOTP) -> str:
    """Six digits the server cannot accept now (not in the drift window, with a margin)."""
    now = time.time()
    valid = {totp.at(now + 30 * k) for k in range(-2, 3)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in valid)


def utc(stamp: str) -> float:
    return datetime.strptime(stamp.replace("T", " "), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def session_html(page: Page) -> str:
    """The markup of the step-up page's "Two-factor session" value."""
    return page.locator("dt", has_text=SESSION).locator("xpath=following-sibling::dd[1]").inner_html()


def has_grant(inst: Instance, server: DavServer) -> bool:
    """Does the password alone reach the secure share with alice's certificate?"""
    with session_for(inst, "alice") as s:
        status = s.get(f"{server.url}secure/", timeout=30).status_code
    assert status in (200, 401), status
    return status == 200


def secure_remote(inst: Instance, server: DavServer, tmp_path: Path) -> dict[str, str]:
    """rclone environment with remote `sec:` = the secure share, alice's cert, the password alone."""
    env = rclone_remote(inst, server, tmp_path, "sec", inst.clients["alice"].password)
    env["RCLONE_CONFIG_SEC_URL"] = f"{server.url}secure/"  # overrides the config file's url
    return env


def small_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_text("hello through a grant\n")
    (root / "Grüße ✓.txt").write_text("unicode ✓\n", encoding="utf-8")
    (root / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "nested.txt").write_text("nested\n")
    return root


FAIL_FAST = ("--retries", "1", "--low-level-retries", "1")


# --- 1. browser step-up, then rclone with the password alone ------------------------------


def test_browser_stepup_grant_lets_rclone_in_with_password_alone(
    secure: tuple[Instance, DavServer, pyotp.TOTP], browser: Browser, tmp_path: Path
) -> None:
    inst, server, totp = secure
    alice = inst.clients["alice"]
    assert not has_grant(inst, server), "password alone before any step-up"
    cert = x509.load_pem_x509_certificate(alice.crt.read_bytes())

    ctx = cert_context(browser, inst, server)
    try:
        page = ctx.new_page()
        response = page.goto(server.url + STEPUP)
        assert response is not None and response.status == 200, response and response.text()
        assert_security_headers(response)
        shown = facts(page)
        assert shown["Account"] == "alice", shown
        assert cert.subject.rfc4514_string() == "CN=alice"
        # The certificate by its name; its serial behind the details toggle.
        assert shown["Certificate"].startswith("alice"), shown
        page.get_by_text("Certificate details").click()
        assert f"{cert.serial_number:X}" in facts(page)["Certificate"].upper(), facts(page)
        assert shown[SESSION] == "none", shown

        # A wrong code with the right password: refused, no grant.
        page.fill("#password", alice.password)
        page.fill("#code", wrong_code(totp))
        response = submit(page, "Verify")
        assert response.status == 403
        assert_security_headers(response)
        assert "Each code can be used once" in page.locator("p.err").inner_text()
        assert facts(page)[SESSION] == "none"
        assert not has_grant(inst, server), "a wrong code opened a grant"

        # Password + the right code: the grant is active, with its end times.
        page.fill("#password", alice.password)
        page.fill("#code", totp.now())
        before = time.time()
        response = submit(page, "Verify")
        assert response.status == 200, page.content()
        assert_security_headers(response)
        assert page.locator("p.ok").inner_text() == "Code accepted: your two-factor session is open."
        grant = session_html(page)
        m = _GRANT_TEXT.fullmatch(grant)
        assert m, grant
        idle_end, latest = utc(m[1]), utc(m[2])
        assert before + GRANT_IDLE - 5 <= idle_end <= time.time() + GRANT_IDLE + 1, grant
        assert before + GRANT_ABSOLUTE - 5 <= latest <= time.time() + GRANT_ABSOLUTE + 1, grant
        assert page.get_by_role("button", name="End the two-factor session now").is_visible()

        # No browser involved: rclone with alice's certificate and the password alone.
        env = secure_remote(inst, server, tmp_path)
        src = small_tree(tmp_path / "src")
        copy = run_rclone(env, "copy", *FAIL_FAST, str(src), "sec:")
        assert copy.returncode == 0, copy.stderr
        check = run_rclone(env, "check", "--download", str(src), "sec:")
        assert check.returncode == 0, check.stdout + check.stderr
        for p in src.rglob("*"):
            if p.is_file():
                assert (share_dir(inst, "secure") / p.relative_to(src)).read_bytes() == p.read_bytes(), p
        assert not (share_dir(inst, "files") / "hello.txt").exists(), "rclone wrote to the config file's url"

        # End the grant in the browser: the password alone no longer works.
        response = submit(page, "End the two-factor session now")
        assert response.status == 200
        assert_security_headers(response)
        assert page.locator("p.ok").inner_text() == "Your two-factor session has ended."
        assert facts(page)[SESSION] == "none"
    finally:
        ctx.close()

    late = tmp_path / "late.txt"
    late.write_text("after the grant\n")
    copy = run_rclone(env, "copy", *FAIL_FAST, str(late), "sec:")
    assert copy.returncode != 0, f"rclone got in after the grant ended:\n{copy.stderr}"
    assert "401" in copy.stderr, copy.stderr
    assert not (share_dir(inst, "secure") / "late.txt").exists()
    assert not has_grant(inst, server)


def test_rclone_password_alone_refused_before_stepup(
    secure: tuple[Instance, DavServer, pyotp.TOTP], tmp_path: Path
) -> None:
    inst, server, _ = secure
    env = secure_remote(inst, server, tmp_path)
    src = small_tree(tmp_path / "src")
    copy = run_rclone(env, "copy", *FAIL_FAST, str(src), "sec:")
    assert copy.returncode != 0, f"rclone got in with the password alone:\n{copy.stderr}"
    assert "401" in copy.stderr, copy.stderr
    assert list(share_dir(inst, "secure").iterdir()) == []


# --- 2. CSRF -----------------------------------------------------------------------------


def _csrf(html: str) -> str:
    m = re.search(r'name="?csrf"? value="([^"]+)"', html)
    assert m, html
    return m[1]


def test_stepup_post_without_valid_csrf_is_refused(secure: tuple[Instance, DavServer, pyotp.TOTP]) -> None:
    inst, server, totp = secure
    alice = inst.clients["alice"]
    page_url = server.url + STEPUP
    with session_for(inst, "bob") as s:
        s.auth = None
        bobs_token = _csrf(s.get(page_url, timeout=30).text)
    with session_for(inst, "alice") as s:
        s.auth = None  # the page needs the certificate only; the form carries the password
        page = s.get(page_url, timeout=30)
        assert page.status_code == 200
        token = _csrf(page.text)
        issued, _, mac = token.partition(".")
        right = code(totp)
        form = {"password": alice.password, "code": right}
        flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
        bad: dict[str, tuple[dict[str, str], dict[str, str]]] = {
            "missing": (form, {}),
            "empty": ({**form, "csrf": ""}, {}),
            "forged": ({**form, "csrf": f"{int(time.time())}.{'0' * 64}"}, {}),
            "tampered": ({**form, "csrf": f"{issued}.{flipped}"}, {}),
            "other certificate's": ({**form, "csrf": bobs_token}, {}),
            "cross-site": ({**form, "csrf": token}, {"Origin": "https://evil.example",
                                                     "Sec-Fetch-Site": "cross-site"}),
            "cross-site, Origin null": ({**form, "csrf": token}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"}),
        }
        for label, (data, headers) in bad.items():
            r = s.post(server.url + "_davserver/stepup", data=data, headers=headers, timeout=30)
            assert r.status_code == 403, (label, r.status_code, r.text)
            assert "Two-factor session</dt><dd>none" in r.text, (label, r.text)
            assert not has_grant(inst, server), f"a {label} csrf token opened a grant"

        # Control: the same code was right and is still unspent, so the refusals above
        # were the token's doing.
        r = s.post(server.url + "_davserver/stepup", data={**form, "csrf": token}, timeout=30)
        assert r.status_code == 200, r.text
        assert has_grant(inst, server)

        # Ending the grant needs a valid token too.
        r = s.post(server.url + "_davserver/end", data={"csrf": f"{issued}.{flipped}"}, timeout=30)
        assert r.status_code == 403, r.text
        assert has_grant(inst, server), "a forged token ended the grant"


# --- 3. no client certificate: no page ------------------------------------------------------


def test_browser_without_client_certificate_gets_no_page(
    inst: Instance, server: DavServer, browser: Browser
) -> None:
    url = server.url + STEPUP
    wrong_origin = origin(server).replace("127.0.0.1", "localhost")
    alice = inst.clients["alice"]
    attempts: dict[str, dict[str, Any]] = {
        "no client certificate": {},
        "certificate for another origin": {"client_certificates": [
            {"origin": wrong_origin, "certPath": str(alice.crt), "keyPath": str(alice.key)}]},
    }
    for label, kw in attempts.items():
        # ignore_https_errors: the server's certificate is not why this fails.
        ctx = browser.new_context(ignore_https_errors=True, **kw)
        ctx.set_default_timeout(NAV_TIMEOUT_MS)
        try:
            page = ctx.new_page()
            try:
                response = page.goto(url)
            except Exception as exc:  # playwright's Error: the connection failed
                assert "net::ERR_" in str(exc), (label, exc)
            else:
                assert response is not None
                assert response.status == 503, (label, response.status, page.content())
                assert "Two-factor" not in page.content(), label
        finally:
            ctx.close()
    audit = [json.loads(line) for line in (inst.home.root / "state" / "audit.log").read_text().splitlines()]
    served = [r for r in audit if r.get("event") is None and r["path"].startswith("/_davserver")]
    assert served == [], served
    # the refused handshakes are audited with their reason and carry no path: no_cert, and
    # tls_error where Chromium itself ends a handshake (certificate_unknown: it does not
    # trust the test CA before ignore_https_errors lets it go on)
    reasons = {r["reason"] for r in audit if r.get("event") == "tls_handshake"}
    assert "no_cert" in reasons and reasons <= {"no_cert", "tls_error"}, audit

    # Control: the same settings with the certificate show the page.
    ctx = cert_context(browser, inst, server, ignore_https_errors=True)
    try:
        page = ctx.new_page()
        response = page.goto(url)
        assert response is not None and response.status == 200
        assert facts(page)["Account"] == "alice"
    finally:
        ctx.close()


# --- 4. inline step-up with curl, then litmus with the password alone -----------------------


def test_litmus_on_secure_share_after_inline_stepup(
    secure: tuple[Instance, DavServer, pyotp.TOTP], tmp_path: Path
) -> None:
    inst, server, totp = secure
    alice = inst.clients["alice"]
    url = f"{server.url}secure/"
    rc, status, _, err = run_curl(inst, tmp_path, url, client=alice)
    assert (rc, status) == (0, 401), ("password alone before the grant", err)
    rc, status, _, err = run_curl(inst, tmp_path, url, client=alice, password=alice.password + code(totp))
    assert (rc, status) == (0, 200), ("password + code", err)
    print(run_litmus(inst, tmp_path, url))


def test_curl_password_alone_refused_before_inline_stepup(
    secure: tuple[Instance, DavServer, pyotp.TOTP], tmp_path: Path
) -> None:
    inst, server, _ = secure
    headers = tmp_path / "headers"
    rc, status, body, err = run_curl(inst, tmp_path, "-D", str(headers), f"{server.url}secure/",
                                     client=inst.clients["alice"])
    assert (rc, status) == (0, 401), err
    assert re.search(r"(?im)^www-authenticate: basic ", headers.read_text()), headers.read_text()


# --- 5. the folder listing in a browser ------------------------------------------------------


def add_share(inst: Instance, name: str, **spec: object) -> Path:
    """Add a share (data/<name>) to the instance's config before its server starts."""
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["shares"][name] = {"path": f"data/{name}", **spec}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    folder = share_dir(inst, name)
    folder.mkdir()
    return folder


def listed(page: Page) -> dict[str, str]:
    """The listing's links: shown name -> href."""
    links = page.locator("tbody a")
    return {links.nth(i).inner_text(): links.nth(i).get_attribute("href") or "" for i in range(links.count())}


def size_shown(page: Page, name: str) -> str:
    row = page.locator("tbody tr").filter(has=page.get_by_role("link", name=name, exact=True))
    return row.locator("td").nth(1).inner_text()


def follow(page: Page, name: str) -> Response:
    """Click the listing's link `name`; the response of the page it opens."""
    with page.expect_navigation() as nav:
        page.get_by_role("link", name=name, exact=True).click()
    response = nav.value
    assert response is not None
    return response


def password_context(browser: Browser, inst: Instance, server: DavServer) -> BrowserContext:
    """alice's certificate, and her password (alone) for the server's Basic challenge."""
    alice = inst.clients["alice"]
    return cert_context(browser, inst, server, accept_downloads=True,
                        http_credentials={"username": alice.account, "password": alice.password})


def test_browser_listing_root_share_and_download(inst: Instance, browser: Browser) -> None:
    add_share(inst, "private", readers=["bob"])  # a share alice may not see
    files = share_dir(inst, "files")
    text = "hello from the listing ✓\n".encode()
    blob = os.urandom(300_000)
    (files / "hello.txt").write_bytes(text)
    (files / "blob.bin").write_bytes(blob)
    (files / "Grüße ✓").mkdir()
    (files / "Grüße ✓" / "notiz.txt").write_bytes(b"Notiz\n")
    with running(inst) as server:
        ctx = password_context(browser, inst, server)
        try:
            page = ctx.new_page()
            response = page.goto(server.url)
            assert response is not None and response.status == 200, response and response.text()
            assert_security_headers(response)
            assert page.locator("h1").inner_text() == "All shares"
            assert page.locator(".who b").inner_text() == "alice"
            who = page.locator(".who p").inner_text()
            assert who.startswith("Signed in as alice with the certificate alice, valid until "), who
            details = page.locator(".who details")
            assert details.inner_text() == "Certificate details", "the serial is behind the toggle"
            details.locator("summary").click()
            said = details.inner_text()
            assert said.endswith("You signed in with this certificate and your password."), said
            assert "two-factor" not in who, who  # alice has no TOTP and / is no TOTP share
            assert listed(page) == {"files/": "/files/", "ro/": "/ro/", "team/": "/team/"}

            response = follow(page, "files/")
            assert response.status == 200, response.text()
            assert page.url == server.url + "files/"
            assert page.locator("h1").inner_text() == "files"
            assert listed(page) == {"../": "/", "Grüße ✓/": "/files/Gr%C3%BC%C3%9Fe%20%E2%9C%93/",
                                   "blob.bin": "/files/blob.bin", "hello.txt": "/files/hello.txt"}
            assert size_shown(page, "blob.bin") == human_size(len(blob)) == "293.0 KiB"
            assert size_shown(page, "hello.txt") == f"{len(text)} B"
            assert size_shown(page, "Grüße ✓/") == ""

            # A text file opens in the browser: the response's bytes are the file's.
            response = follow(page, "hello.txt")
            assert response.status == 200
            assert response.body() == text
            page.go_back()
            assert page.locator("h1").inner_text() == "files"

            # A binary file is a download.
            with page.expect_download() as download_info:
                page.get_by_role("link", name="blob.bin", exact=True).click()
            download = download_info.value
            assert download.failure() is None
            assert download.suggested_filename == "blob.bin"
            assert Path(download.path()).read_bytes() == blob

            # A folder with a non-ASCII name, and back up through ../
            response = follow(page, "Grüße ✓/")
            assert response.status == 200
            assert page.locator("h1").inner_text() == "Grüße ✓"
            assert listed(page) == {"../": "/files/", "notiz.txt": "/files/Gr%C3%BC%C3%9Fe%20%E2%9C%93/notiz.txt"}
            assert follow(page, "notiz.txt").body() == b"Notiz\n"
            page.go_back()
            follow(page, "../")
            assert page.locator("h1").inner_text() == "files"

            # The share alice may not see is not served either.
            response = page.goto(server.url + "private/")
            assert response is not None and response.status == 401, response and response.status
            assert page.locator(".where").count() == 0  # no listing
        finally:
            ctx.close()


_GRANT_IN_LISTING = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)Z")  # a <time datetime>


def test_browser_totp_share_listing_after_stepup_page(
    secure: tuple[Instance, DavServer, pyotp.TOTP], browser: Browser
) -> None:
    inst, server, totp = secure
    alice = inst.clients["alice"]
    plan = b"the secure plan\n"
    (share_dir(inst, "secure") / "plan.txt").write_bytes(plan)
    ctx = password_context(browser, inst, server)
    try:
        page = ctx.new_page()
        # Password alone, no grant yet: refused (the code page, 403), nothing of the share shown.
        response = page.goto(server.url + "secure/")
        assert response is not None and response.status == 403, response and response.status
        assert "plan.txt" not in page.content() and page.locator(".where").count() == 0

        # Step up in the page: password + code.
        response = page.goto(server.url + STEPUP)
        assert response is not None and response.status == 200
        page.fill("#password", alice.password)
        page.fill("#code", totp.now())
        response = submit(page, "Verify")
        assert response.status == 200, page.content()
        assert page.locator("p.ok").inner_text() == "Code accepted: your two-factor session is open."

        # The same browser, the password alone: the listing, with the grant's end.
        before = time.time()
        response = page.goto(server.url + "secure/")
        assert response is not None and response.status == 200, response and response.status
        assert_security_headers(response)
        assert page.locator("h1").inner_text() == "secure"
        who = page.locator(".who p").inner_text()
        assert who.startswith("Signed in as alice with the certificate alice, valid until "), who
        details = page.locator(".who details").text_content()
        assert details is not None and details.endswith(
            "You signed in with this certificate, your password and a code from your authenticator app."), who
        assert "two-factor session until" in who, who
        m = _GRANT_IN_LISTING.fullmatch(page.locator(".who time").nth(1).get_attribute("datetime") or "")
        assert m, page.content()
        until = utc(m[1] + " " + m[2])
        assert before + GRANT_IDLE - 60 <= until <= time.time() + GRANT_IDLE, who
        assert listed(page) == {"../": "/", "plan.txt": "/secure/plan.txt"}
        response = follow(page, "plan.txt")
        assert response.status == 200 and response.body() == plan
        page.go_back()

        # The "two-factor sign-in" link leads to the step-up page, which shows the grant.
        sign_in = page.get_by_role("link", name="two-factor sign-in", exact=True)
        assert sign_in.get_attribute("href") == "/" + STEPUP
        response = follow(page, "two-factor sign-in")
        assert response.status == 200
        assert page.url == server.url + STEPUP
        assert _GRANT_TEXT.fullmatch(session_html(page)), session_html(page)
    finally:
        ctx.close()
