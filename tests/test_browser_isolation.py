"""One account's file cannot script another account's browser (issue: cross-account script).

alice may write the share ``files``; bob reads it, and he alone reads ``vault``, a
share that needs password and TOTP (bob stepped up once, so his certificate holds a
grant). alice uploads pages whose script reads ``/vault/secret.txt`` with whatever
credentials the browser has and PUTs it back into ``files``, where she can read it.
bob opens them in real Chromium (Debian's, driven by Playwright) with his
certificate and password. The script must not run: the file is a download, and even
forced inline its sandbox gives it no origin. The control runs the very same file
with the safety headers stripped on the way (as served before): there the secret
leaks, so the test can tell. The twins: an image and a text file still display
inline, and the listing renders and its links work.

Screenshots of what bob saw go to the test's temporary folder.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyotp
import pytest
import yaml

from davserver.server import DavServer
from tests.conftest import Instance, running, session_for
from tests.test_browser import browser, cert_context, follow, listed  # noqa: F401 - browser is a fixture
from tests.test_clients import share_dir
from tests.test_totp_live import code, enrol

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

pytestmark = pytest.mark.client

SECRET = "bob's TOTP-protected secret 4f1c9e\n"
SAFETY = ("content-security-policy", "x-content-type-options", "content-disposition",
          "cross-origin-resource-policy")
#: How long a page's script gets to do its work before we look (the control needs < 1 s).
SCRIPT_SECONDS = 4.0


def steal_js(loot: str) -> str:
    """What alice's page runs: read bob's secret, write it where alice can read it."""
    return (
        "(async () => {"
        " const r = await fetch('/vault/secret.txt', {credentials: 'include'});"
        " const t = await r.text();"
        f" await fetch('/files/{loot}', {{method: 'PUT', body: t, credentials: 'include'}});"
        " document.title = 'exfiltrated';"
        "})();"
    )


def payloads() -> dict[str, bytes]:
    """evil.<ext> -> a document of that type whose script steals into loot-<ext>.txt."""
    def xhtml(loot: str) -> bytes:
        return (f'<html xmlns="http://www.w3.org/1999/xhtml"><body><p>hello bob</p>'
                f"<script><![CDATA[{steal_js(loot)}]]></script></body></html>").encode()

    return {
        "evil.html": f"<!doctype html><p>hello bob</p><script>{steal_js('loot-html.txt')}</script>".encode(),
        "evil.htm": f"<!doctype html><p>hello bob</p><script>{steal_js('loot-htm.txt')}</script>".encode(),
        "evil.svg": (f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50"><text y="20">hello bob'
                     f"</text><script><![CDATA[{steal_js('loot-svg.txt')}]]></script></svg>").encode(),
        "evil.xhtml": xhtml("loot-xhtml.txt"),
        "evil.xml": xhtml("loot-xml.txt"),
    }


def loot_name(name: str) -> str:
    return f"loot-{name.rsplit('.', 1)[1]}.txt"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG (RFC 2083), so the test needs no imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


def wav(seconds: int = 1, rate: int = 8000) -> bytes:
    """A short 16-bit mono tone."""
    samples = b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(rate * seconds))
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + fmt + b"data"
            + struct.pack("<I", len(samples)) + samples)


@pytest.fixture
def vault(inst: Instance) -> Iterator[tuple[Instance, DavServer]]:
    """Share `vault` (bob only; password + TOTP), bob stepped up inline; alice's pages in `files`."""
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["shares"]["vault"] = {"path": "data/vault", "readers": ["bob"], "require": ["password", "totp"]}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    share_dir(inst, "vault").mkdir()
    (share_dir(inst, "vault") / "secret.txt").write_text(SECRET)
    totp: pyotp.TOTP = enrol(inst, "bob")
    with running(inst) as server:
        bob = inst.clients["bob"]
        with session_for(inst, "bob", password=bob.password + code(totp)) as s:
            assert s.get(server.url + "vault/secret.txt", timeout=30).text == SECRET  # opens bob's grant
        with session_for(inst, "alice") as s:
            assert s.get(server.url + "vault/secret.txt", timeout=30).status_code in (401, 403)
            for name, body in payloads().items():
                assert s.put(server.url + "files/" + name, data=body, timeout=30).status_code == 201, name
            s.put(server.url + "files/photo.png", data=png(120, 60, (220, 30, 30)), timeout=30)
            s.put(server.url + "files/notes.txt", data="plain notes for bob ✓\n".encode(), timeout=30)
            s.put(server.url + "files/tone.wav", data=wav(), timeout=30)
        yield inst, server


def bob_context(browser: Browser, inst: Instance, server: DavServer) -> BrowserContext:  # noqa: F811
    bob = inst.clients["bob"]
    return cert_context(browser, inst, server, "bob", accept_downloads=True,
                        http_credentials={"username": bob.account, "password": bob.password})


def vault_reads(inst: Instance) -> list[dict[str, Any]]:
    audit = (inst.home.root / "state" / "audit.log").read_text().splitlines()
    return [r for r in map(json.loads, audit) if r["path"].startswith("/vault/")]


def looted(inst: Instance) -> list[str]:
    return sorted(p.name for p in share_dir(inst, "files").glob("loot-*"))


def wait_for_loot(inst: Instance, name: str, seconds: float, page: Page | None = None) -> bool:
    """Whether the loot file appears within ``seconds``; with ``page``, its routes are served meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (share_dir(inst, "files") / name).exists():
            return True
        if page is not None:
            page.wait_for_timeout(100)  # Playwright runs route handlers only while it is called
        else:
            time.sleep(0.1)
    return False


def shot(page: Page, tmp_path: Path, label: str) -> Path:
    path = tmp_path / f"{label}.png"
    page.screenshot(path=str(path))
    return path


def strip_headers(names: tuple[str, ...]) -> Any:
    """A route handler that fetches the real answer (bob's certificate and password) and
    hands it to the page without the named headers."""
    def handle(route: Route) -> None:
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() not in names}
        route.fulfill(response=response, headers=headers)

    return handle


def without_browser_headers(route: Route) -> None:
    """Send the request as a non-browser client would: no Origin, no Sec-Fetch-*."""
    headers = {k: v for k, v in route.request.all_headers().items()
               if k.lower() != "origin" and not k.lower().startswith("sec-fetch-")}
    route.fulfill(response=route.fetch(headers=headers))


def test_attackers_page_cannot_read_bobs_files(vault: tuple[Instance, DavServer], browser: Browser,  # noqa: F811
                                               tmp_path: Path) -> None:
    inst, server = vault
    reads_before = len(vault_reads(inst))
    ctx = bob_context(browser, inst, server)
    try:
        page = ctx.new_page()
        response = page.goto(server.url + "files/")
        assert response is not None and response.status == 200
        assert set(payloads()) <= set(listed(page))
        for name in payloads():
            # bob clicks alice's page in the listing: the browser saves it, it does not open it.
            with page.expect_download() as info:
                page.get_by_role("link", name=name, exact=True).click()
            download = info.value
            assert download.suggested_filename == name
            assert Path(download.path()).read_bytes() == payloads()[name]
            # Typed into the address bar, the same.
            with page.expect_download() as info:
                try:
                    page.goto(server.url + "files/" + name)
                except Exception as exc:  # noqa: BLE001 - playwright: "Download is starting"
                    assert "Download is starting" in str(exc) or "ERR_ABORTED" in str(exc), exc
            assert info.value.suggested_filename == name
            assert page.url == server.url + "files/", "the page was replaced by alice's"
        time.sleep(SCRIPT_SECONDS)
        shot(page, tmp_path, "after-downloads")
        assert page.locator("h1").inner_text() == "files"
    finally:
        ctx.close()
    assert looted(inst) == [], "alice's script read bob's secret"
    assert len(vault_reads(inst)) == reads_before, vault_reads(inst)[reads_before:]


def test_forced_inline_the_sandbox_still_stops_the_script(vault: tuple[Instance, DavServer],
                                                          browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    """Defence in depth: with Content-Disposition stripped on the way the page renders, but
    its sandbox (an opaque origin, no script) keeps it from reading anything."""
    inst, server = vault
    reads_before = len(vault_reads(inst))
    ctx = bob_context(browser, inst, server)
    try:
        page = ctx.new_page()
        page.route("**/files/evil.*", strip_headers(("content-disposition",)))
        for name in payloads():
            response = page.goto(server.url + "files/" + name)
            assert response is not None and response.status == 200, name
            assert "sandbox" in response.headers["content-security-policy"]
            assert "hello bob" in page.content(), name  # it did render
            time.sleep(1.0)
            assert page.title() != "exfiltrated", name
            shot(page, tmp_path, f"inline-{name}")
        time.sleep(SCRIPT_SECONDS)
    finally:
        ctx.close()
    assert looted(inst) == [], "a sandboxed page's script ran"
    assert len(vault_reads(inst)) == reads_before, vault_reads(inst)[reads_before:]


def test_control_without_the_headers_the_script_steals(vault: tuple[Instance, DavServer],
                                                       browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    """The same files, the safety headers stripped on the way (as the server sent them
    before): each script reads bob's secret and writes it into `files`. This is what the
    two tests above would see if the defence were gone."""
    inst, server = vault
    ctx = bob_context(browser, inst, server)
    try:
        page = ctx.new_page()
        page.route("**/files/evil.*", strip_headers(SAFETY))
        # The loot's PUT also without the browser's Origin and Sec-Fetch-* headers: the
        # server refuses a browser's write without its token (csrf.py), a defence the
        # control must take away too to show what the script would do.
        page.route("**/files/loot-*", without_browser_headers)
        for name in payloads():
            response = page.goto(server.url + "files/" + name)
            assert response is not None and response.status == 200, name
            assert wait_for_loot(inst, loot_name(name), 10, page), f"{name}: the control's script did not run"
            shot(page, tmp_path, f"control-{name}")
    finally:
        ctx.close()
    for name in payloads():
        assert (share_dir(inst, "files") / loot_name(name)).read_text() == SECRET, name


def test_images_text_and_listing_still_work_for_bob(vault: tuple[Instance, DavServer], browser: Browser,  # noqa: F811
                                                    tmp_path: Path) -> None:
    inst, server = vault
    ctx = bob_context(browser, inst, server)
    try:
        page = ctx.new_page()
        response = page.goto(server.url)
        assert response is not None and response.status == 200
        assert listed(page) == {"files/": "/files/", "ro/": "/ro/", "team/": "/team/", "vault/": "/vault/"}
        response = follow(page, "files/")
        assert response.status == 200 and page.locator("h1").inner_text() == "files"
        shot(page, tmp_path, "listing")

        # A picture opens in the browser, drawn.
        response = follow(page, "photo.png")
        assert response.status == 200 and "content-disposition" not in response.headers
        assert response.headers["content-type"] == "image/png"
        assert "sandbox" in response.headers["content-security-policy"]
        image = page.locator("img")
        assert image.count() == 1
        box = image.bounding_box()
        assert box is not None and (box["width"], box["height"]) == (120, 60), box
        picture = shot(page, tmp_path, "photo")
        assert picture.stat().st_size > 0
        page.go_back()

        # A text file opens in the browser as text.
        response = follow(page, "notes.txt")
        assert response.status == 200 and "content-disposition" not in response.headers
        assert page.locator("body").inner_text().strip() == "plain notes for bob ✓"
        shot(page, tmp_path, "notes")
        page.go_back()

        # Audio and video are downloads (inline, the sandbox leaves the player empty).
        with page.expect_download() as info:
            page.get_by_role("link", name="tone.wav", exact=True).click()
        assert info.value.suggested_filename == "tone.wav"
        assert Path(info.value.path()).read_bytes() == wav()

        # Back in the listing, the vault's link works (bob's grant), and its file opens.
        assert page.locator("h1").inner_text() == "files"
        follow(page, "../")
        follow(page, "vault/")
        assert page.locator("h1").inner_text() == "vault"
        response = follow(page, "secret.txt")
        assert response.status == 200 and page.locator("body").inner_text().strip() == SECRET.strip()
    finally:
        ctx.close()
