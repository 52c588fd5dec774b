"""Enrolment end to end in a real browser (issue 13 item 6): Chromium opens the
invitation link on the enrolment listener (no client certificate: Chromium's own TLS
stack, trusting our CA from an NSS database), fills the form and downloads the
``.p12`` the result page recommends; the file is imported into a fresh NSS database
and Chromium's TLS stack then presents it and lists a share (as
tests/test_chromium_nss.py does). The time from invitation to the listed file is
printed (``-s`` shows it).

A missing chromium or playwright skips on a workstation and fails in CI, like the
other client tools.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import PASSWORDS, Instance, running
from tests.test_browser import CHROMIUM_ARGS, NAV_TIMEOUT_MS, require_playwright
from tests.test_chromium_nss import FILE_NAME, P12_PASSWORD, add_open_share, run_chromium_nss, served_paths
from tests.test_clients import clean_env, require_tool
from tests.test_enrolment_web import enable, invite

pytestmark = pytest.mark.client

LINUX_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36"


def nss_home_trusting_ca(inst: Instance, folder: Path) -> dict[str, str]:
    """An environment whose HOME holds an NSS database that trusts our CA for TLS
    servers: Chromium on Linux reads its user trust anchors from ``~/.pki/nssdb``."""
    require_tool("certutil")
    folder.mkdir(parents=True, exist_ok=True)
    env = clean_env(folder)
    db = Path(env["HOME"]) / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", "davserver-ca", "-t", "C,,", "-i", str(inst.ca_file)],
                   check=True, capture_output=True)
    return env


def test_browser_enrolment_p12_lists_share_through_nss(inst: Instance, tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    sync_api = require_playwright()
    add_open_share(inst)
    enable(inst)
    env = nss_home_trusting_ca(inst, tmp_path / "browser")
    with running(inst) as server:
        assert server.enrolment is not None
        started = time.monotonic()
        link = f"{server.enrolment.url}/enrol/{invite(server)}"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, env=env, timeout=30_000)
            try:
                context = browser.new_context(user_agent=LINUX_FIREFOX, accept_downloads=True)
                context.set_default_timeout(NAV_TIMEOUT_MS)
                page = context.new_page()
                response = page.goto(link)
                assert response is not None and response.status == 200, response
                assert "Get your certificate" in page.content()
                page.fill("#password", PASSWORDS["alice"])
                page.fill("#p12_password", P12_PASSWORD)
                with page.expect_navigation() as nav:
                    page.get_by_role("button", name="Get my certificate").click()
                result = nav.value
                assert result is not None and result.status == 200, page.content()[:2000]
                assert "Install on Linux" in page.content()
                with page.expect_download() as download_info:
                    page.get_by_role("link", name="alice.p12 (modern", exact=False).click()
                download = download_info.value
                p12 = tmp_path / "alice-from-browser.p12"
                download.save_as(p12)
                assert download.suggested_filename == "alice.p12"
                # a reload is a POST again: the link is spent, nothing new is issued
                again = page.reload()
                assert again is not None and again.status == 410
            finally:
                browser.close()
        key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), P12_PASSWORD.encode())
        assert key is not None and cert is not None
        serial = format(cert.serial_number, "X")
        rc, dom, err = run_chromium_nss(inst, server, tmp_path, f"{server.url}open/", p12)
        elapsed = time.monotonic() - started
    assert rc == 0, f"chromium exited {rc}\n{err[-4000:]}"
    assert f">{FILE_NAME}</a>" in dom, f"{dom[:3000]}\n--- stderr\n{err[-4000:]}"
    assert "Signed in as <b>alice</b>" in dom
    assert f"serial number {serial}" in dom, "Chromium presented the certificate the browser just enrolled"
    assert "/open/" in served_paths(inst)
    print(f"\ninvite to first file listed in the browser: {elapsed:.2f} s")
    if os.environ.get("ENROLMENT_TIMING_FILE"):
        Path(os.environ["ENROLMENT_TIMING_FILE"]).write_text(f"{elapsed:.3f}\n")


def test_browser_without_trusted_ca_gets_no_enrolment_page(inst: Instance, tmp_path: Path) -> None:
    """The twin of the NSS trust above: a Chromium whose NSS database lacks our CA
    refuses the enrolment listener's certificate, so the passing test proves that
    Chromium's own TLS stack verified it."""
    chromium = require_tool("chromium")
    sync_api = require_playwright()
    enable(inst)
    (tmp_path / "untrusting").mkdir()
    env = clean_env(tmp_path / "untrusting")
    with running(inst) as server:
        assert server.enrolment is not None
        link = f"{server.enrolment.url}/enrol/{invite(server)}"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, env=env, timeout=30_000)
            try:
                page = browser.new_page()
                with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
                    page.goto(link, timeout=NAV_TIMEOUT_MS)
            finally:
                browser.close()
