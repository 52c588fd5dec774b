"""The enrolment listener and renewal over real TLS: the scripted POST of issue 13 (a
PKCS#12 made by the server, a certificate for a CSR made by `openssl req` whose key
never leaves this test), each refusal with the twin that still works, the listener
serving nothing but /enrol/<token>, renewal from /_davserver/ and the listing banner."""

from __future__ import annotations

import base64
import io
import json
import plistlib
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import example, given, settings
from hypothesis import strategies as st

from davserver.cli import main
from davserver.config import load_config
from davserver.enrolment_listener import THREADS
from davserver.enrolment_pages import GUIDE_PATH, MAX_FORM_BYTES, platform_of
from davserver.invitations import Invitations
from davserver.server import DavServer
from tests.conftest import PASSWORDS, Instance, running, session_for

P12_PW = "file-password-1"
ALICE_PW = PASSWORDS["alice"]


# --- helpers ---------------------------------------------------------------------------


def enable(inst: Instance, **enrolment: object) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["enrolment"] = {"enabled": True, "port": 0, **enrolment}
    inst.home.config_file.write_text(yaml.safe_dump(raw))


@contextmanager
def serving(inst: Instance, **enrolment: object) -> Iterator[DavServer]:
    enable(inst, **enrolment)
    with running(inst) as server:
        assert server.enrolment is not None
        yield server


def invite(server: DavServer, account: str = "alice", **kw: Any) -> str:
    token, _ = Invitations(server.store, server.config.enrolment).create(account, **kw)
    return token


def enrol_url(server: DavServer, token: str) -> str:
    assert server.enrolment is not None
    return f"{server.enrolment.url}/enrol/{token}"


def anonymous(inst: Instance) -> requests.Session:
    """A client without a certificate that trusts the instance's CA."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(inst.ca_file)
    return s


def post(inst: Instance, url: str, fields: dict[str, str], accept: str = "application/x-pkcs12",
         headers: dict[str, str] | None = None) -> requests.Response:
    with anonymous(inst) as s:
        return s.post(url, data=fields, headers={"Accept": accept, **(headers or {})}, timeout=30)


def issued_count(inst: Instance) -> int:
    return len(inst.ca.list_issued())


def pem_pair_from_p12(data: bytes, password: str, folder: Path, name: str = "new") -> tuple[str, str]:
    key, cert, _chain = pkcs12.load_key_and_certificates(data, password.encode())
    assert key is not None and cert is not None
    crt, keyfile = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(crt), str(keyfile)


def lists_share(inst: Instance, server: DavServer, cert: tuple[str, str], share: str = "ro") -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(inst.ca_file)
        s.cert = cert
        s.auth = ("alice", ALICE_PW)
        return s.get(f"{server.url}{share}/", timeout=30)


def audit_lines(inst: Instance) -> list[dict[str, Any]]:
    path = inst.home.root / "state" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def enable_totp(inst: Instance, account: str = "alice") -> pyotp.TOTP:
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "totp", "enable", account, "--json"])
    assert out.exit_code == 0, out.output
    return pyotp.TOTP(json.loads(out.output)["secret"])


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


# --- the scripted POST --------------------------------------------------------------------


def test_scripted_p12_enrolment_opens_alices_share(inst: Instance, tmp_path: Path) -> None:
    with serving(inst) as server:
        token = invite(server)
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-pkcs12"
        assert r.headers["Cache-Control"] == "no-store"
        cert = pem_pair_from_p12(r.content, P12_PW, tmp_path)
        listing = lists_share(inst, server, cert)
        assert listing.status_code == 200, listing.text
        assert "readme.txt" in listing.text and "Signed in as <b>alice</b>" in listing.text
        # spent: the same link again is 410, and nothing more is issued
        before = issued_count(inst)
        again = post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW})
        assert again.status_code == 410, again.text
        assert issued_count(inst) == before
    log = audit_lines(inst)
    enrolment = [rec for rec in log if rec.get("listener") == "enrolment"]
    assert [rec["status"] for rec in enrolment] == [200, 410]
    assert enrolment[0]["reason"] == "enrolled" and enrolment[0]["account"] == "alice"
    assert token not in (inst.home.root / "state" / "audit.log").read_text(), "the token is a secret"


def test_scripted_legacy_p12_and_profile(inst: Instance) -> None:
    with serving(inst) as server:
        r = post(inst, enrol_url(server, invite(server)),
                 {"password": ALICE_PW, "p12_password": P12_PW, "legacy": "1"})
        assert r.status_code == 200, r.text
        key, cert, _ = pkcs12.load_key_and_certificates(r.content, P12_PW.encode())
        assert key is not None and cert is not None
        r = post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "p12_password": P12_PW},
                 accept="application/x-apple-aspen-config")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-apple-aspen-config"
        profile = plistlib.loads(r.content)
        kinds = {p["PayloadType"]: p for p in profile["PayloadContent"]}
        assert set(kinds) == {"com.apple.security.pkcs12", "com.apple.security.root"}
        assert pkcs12.load_key_and_certificates(kinds["com.apple.security.pkcs12"]["PayloadContent"],
                                                P12_PW.encode())[0] is not None
        assert x509.load_der_x509_certificate(kinds["com.apple.security.root"]["PayloadContent"]) == \
            x509.load_pem_x509_certificate(inst.ca_file.read_bytes())


def openssl_csr(folder: Path) -> tuple[Path, Path]:
    key, csr = folder / "token.key", folder / "token.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", "/CN=ignored-by-the-server"],
        check=True, capture_output=True,
    )
    return key, csr


def test_scripted_csr_from_openssl_req_opens_alices_share(inst: Instance, tmp_path: Path) -> None:
    key, csr = openssl_csr(tmp_path)
    with serving(inst) as server:
        r = post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "csr": csr.read_text()},
                 accept="application/x-pem-file")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-pem-file"
        cert = x509.load_pem_x509_certificate(r.content)
        assert cert.subject.rfc4514_string() == "CN=alice"
        own = serialization.load_pem_private_key(key.read_bytes(), None)
        assert cert.public_key() == own.public_key(), "the certificate is for the key made outside davserver"
        crt = tmp_path / "token.crt"
        crt.write_bytes(r.content)
        listing = lists_share(inst, server, (str(crt), str(key)))
        assert listing.status_code == 200 and "readme.txt" in listing.text


def test_bad_csr_refused_and_link_still_usable(inst: Instance, tmp_path: Path) -> None:
    _key, csr = openssl_csr(tmp_path)
    text = csr.read_text()
    body = "".join(text.splitlines()[1:-1])
    tampered = text.replace(body[40:44], "AAAA" if body[40:44] != "AAAA" else "BBBB")
    with serving(inst) as server:
        token = invite(server)
        for bad in ("not a csr", tampered):
            r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "csr": bad}, accept="*/*")
            assert r.status_code == 400, r.text
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "csr": text}, accept="*/*")
        assert r.status_code == 200, r.text


# --- refusals and their twins --------------------------------------------------------------


def test_wrong_password_401_nothing_issued_failures_grow(inst: Instance) -> None:
    with serving(inst) as server:
        token = invite(server)
        before = issued_count(inst)
        invitations = Invitations(server.store, server.config.enrolment)
        for n, pw in enumerate(("wrong-password", "", ALICE_PW.upper()), start=1):
            r = post(inst, enrol_url(server, token), {"password": pw, "p12_password": P12_PW})
            assert r.status_code == 401, (pw, r.text)
            assert issued_count(inst) == before
            assert invitations.peek(token).failures == n
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW})
        assert r.status_code == 200
        assert issued_count(inst) == before + 1


def test_wrong_code_401_right_code_200(inst: Instance) -> None:
    totp = enable_totp(inst)
    with serving(inst) as server:
        token = invite(server)
        before = issued_count(inst)
        page = anonymous(inst).get(enrol_url(server, token), timeout=30)
        assert page.status_code == 200 and 'name=otp' in page.text
        for otp in ("", wrong(totp.now()), "１２３４５６"):
            r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "otp": otp, "p12_password": P12_PW})
            assert r.status_code == 401, (otp, r.text)
        assert issued_count(inst) == before
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "otp": totp.now(), "p12_password": P12_PW})
        assert r.status_code == 200, r.text
        assert issued_count(inst) == before + 1


@pytest.mark.parametrize("failures", [4, 5])
def test_burned_after_five_failures(inst: Instance, failures: int) -> None:
    with serving(inst) as server:
        assert server.config.enrolment.invite_max_failures == 5
        token = invite(server)
        for _ in range(failures):
            r = post(inst, enrol_url(server, token), {"password": "guess", "p12_password": P12_PW})
            assert r.status_code == 401
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW})
        assert r.status_code == (410 if failures == 5 else 200), r.text


def test_expired_410_unknown_404(inst: Instance) -> None:
    with serving(inst) as server:
        expired = invite(server, valid_for=100, now=time.time() - 120)  # kept as "gone" for one more lifetime
        fresh = invite(server, valid_for=60)
        fields = {"password": ALICE_PW, "p12_password": P12_PW}
        assert post(inst, enrol_url(server, expired), fields).status_code == 410
        assert anonymous(inst).get(enrol_url(server, expired), timeout=30).status_code == 410
        unknown = fresh[:-4] + ("AAAA" if not fresh.endswith("AAAA") else "BBBB")
        assert post(inst, enrol_url(server, unknown), fields).status_code == 404
        assert post(inst, enrol_url(server, fresh), fields).status_code == 200


def test_unknown_links_lock_the_address_out(inst: Instance) -> None:
    with serving(inst) as server:
        limit = server.config.throttle.lock_after
        token = invite(server)
        with anonymous(inst) as s:
            for i in range(limit):
                r = s.get(enrol_url(server, f"unknown-token-{i:04d}-xxxxxxxxxxxxx"), timeout=30)
                assert r.status_code == 404
            assert s.get(enrol_url(server, token), timeout=30).status_code == 429
        # the main listener is not affected: a sign-in from the same address works
        with session_for(inst) as s:
            assert s.get(f"{server.url}ro/", timeout=30).status_code == 200


def test_enrolment_port_serves_nothing_else(inst: Instance) -> None:
    with serving(inst) as server:
        assert server.enrolment is not None
        base = server.enrolment.url
        paths = ["/", "/ro/", "/ro/readme.txt", "/files/", "/_davserver/", "/_davserver/renew", "/enrol/",
                 "/enrol", "/enrol/../ro/readme.txt", "/%2e%2e/ro/readme.txt", "/enrol/a/b", "/favicon.ico"]
        with anonymous(inst) as s:
            for path in paths:
                for method in ("GET", "HEAD", "POST", "PROPFIND", "OPTIONS"):
                    r = s.request(method, base + path, timeout=30, headers={"Depth": "0"})
                    assert r.status_code == 404, (method, path, r.status_code, r.text[:200])
                    assert "read only" not in r.text
            # the twin: the same file on the main listener, with the certificate
        with session_for(inst) as s:
            assert s.get(f"{server.url}ro/readme.txt", timeout=30).text == "read only\n"


def test_enrolment_listener_asks_for_no_certificate(inst: Instance) -> None:
    with serving(inst) as server:
        assert server.enrolment is not None
        ctx = ssl.create_default_context(cafile=str(inst.ca_file))
        with socket.create_connection(("127.0.0.1", server.enrolment.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /enrol/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 404")
        # the twin: the main listener refuses the same handshake without a certificate
        with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(
                ("127.0.0.1", server.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /ro/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(100)


def test_form_body_bound(inst: Instance) -> None:
    with serving(inst) as server:
        token = invite(server)
        padding = "x" * (MAX_FORM_BYTES + 1 - len("password=&p12_password=" + ALICE_PW + P12_PW + "&pad="))
        big = {"password": ALICE_PW, "p12_password": P12_PW, "pad": padding}
        r = post(inst, enrol_url(server, token), big)
        assert r.status_code == 413
        small = {"password": ALICE_PW, "p12_password": P12_PW, "pad": padding[:-1]}
        assert post(inst, enrol_url(server, token), small).status_code == 200


def test_busy_enrolment_workers_leave_the_main_server_alone(inst: Instance) -> None:
    """More enrolment connections held by a POST whose body never comes than the main
    listener has workers: the main listener still answers at once (the enrolment
    listener's own THREADS workers are the ones waiting)."""
    with serving(inst) as server:
        assert server.enrolment is not None
        token = invite(server)
        ctx = ssl.create_default_context(cafile=str(inst.ca_file))
        held = []
        try:
            for _ in range(server.config.server.threads + THREADS):
                raw = socket.create_connection(("127.0.0.1", server.enrolment.port), timeout=30)
                tls = ctx.wrap_socket(raw, server_hostname="localhost")
                tls.sendall(f"POST /enrol/{token} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n"
                            "Content-Type: application/x-www-form-urlencoded\r\n\r\npassword=".encode())
                held.append(tls)
            time.sleep(0.5)
            started = time.monotonic()
            with session_for(inst) as s:
                assert s.get(f"{server.url}ro/", timeout=30).status_code == 200
            assert time.monotonic() - started < 5
        finally:
            for tls in held:
                tls.close()


# --- renewal ---------------------------------------------------------------------------------


def renew(inst: Instance, server: DavServer, fields: dict[str, str], cert: tuple[str, str] | None,
          accept: str = "application/x-pkcs12") -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(inst.ca_file)
        if cert is not None:
            s.cert = cert
        return s.post(f"{server.url}_davserver/renew", data=fields, headers={"Accept": accept}, timeout=30)


def alice_cert(inst: Instance) -> tuple[str, str]:
    c = inst.clients["alice"]
    return str(c.crt), str(c.key)


def test_renewal_needs_the_current_certificate(inst: Instance) -> None:
    fields = {"password": ALICE_PW, "p12_password": P12_PW}
    with serving(inst, renew_before_days=400) as server:
        assert server.enrolment is not None
        with pytest.raises(requests.exceptions.RequestException):
            renew(inst, server, fields, None)
        r = post(inst, f"{server.enrolment.url}/_davserver/renew", fields)
        assert r.status_code == 404
        before = issued_count(inst)
        assert issued_count(inst) == before
        # the twin: with the certificate, a successor
        r = renew(inst, server, fields, alice_cert(inst))
        assert r.status_code == 200, r.text
        assert issued_count(inst) == before + 1


def test_renewal_not_due_409_and_wrong_password_401(inst: Instance) -> None:
    fields = {"password": ALICE_PW, "p12_password": P12_PW}
    with serving(inst) as server:  # renew_before_days 30, the certificate is valid for a year
        before = issued_count(inst)
        assert renew(inst, server, fields, alice_cert(inst)).status_code == 409
        assert issued_count(inst) == before
    with serving(inst, renew_before_days=400) as server:
        assert renew(inst, server, {**fields, "password": "nope"}, alice_cert(inst)).status_code == 401
        assert issued_count(inst) == before


def test_renewed_certificate_lists_share_and_old_stays(inst: Instance, tmp_path: Path) -> None:
    with serving(inst, renew_before_days=400) as server:
        r = renew(inst, server, {"password": ALICE_PW, "p12_password": P12_PW}, alice_cert(inst))
        assert r.status_code == 200
        new = pem_pair_from_p12(r.content, P12_PW, tmp_path)
        assert lists_share(inst, server, new).status_code == 200
        assert lists_share(inst, server, alice_cert(inst)).status_code == 200


def test_revoke_renewed_revokes_the_old_once_the_new_is_used(inst: Instance, tmp_path: Path) -> None:
    with serving(inst, renew_before_days=400, revoke_renewed=True) as server:
        old_serial = inst.clients["alice"].issued.serial
        key, csr = openssl_csr(tmp_path)
        r = renew(inst, server, {"password": ALICE_PW, "csr": csr.read_text()}, alice_cert(inst),
                  accept="application/x-pem-file")
        assert r.status_code == 200, r.text
        crt = tmp_path / "renewed.crt"
        crt.write_bytes(r.content)
        # not used yet: the old one still works
        assert lists_share(inst, server, alice_cert(inst)).status_code == 200
        assert lists_share(inst, server, (str(crt), str(key))).status_code == 200
        assert inst.ca.get_issued(old_serial).status == "revoked"
        deadline = time.monotonic() + 10
        while lists_share(inst, server, alice_cert(inst)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # the CRL and the accounts file are picked up by their watchers
        assert lists_share(inst, server, alice_cert(inst)).status_code == 401
        assert lists_share(inst, server, (str(crt), str(key))).status_code == 200


def test_stepup_page_offers_renewal_only_when_due_and_listing_banner(inst: Instance) -> None:
    for days, due in ((30, False), (400, True)):
        with serving(inst, renew_before_days=days) as server, session_for(inst) as s:
            page = s.get(f"{server.url}_davserver/", timeout=30)
            assert page.status_code == 200
            assert "Expires" in page.text
            assert ('action="/_davserver/renew"' in page.text) is due, days
            listing = s.get(f"{server.url}ro/", timeout=30)
            assert listing.status_code == 200
            assert ('href="/_davserver/#renew"' in listing.text) is due, days


def test_browser_renewal_form_needs_csrf(inst: Instance) -> None:
    with serving(inst, renew_before_days=400) as server, session_for(inst) as s:
        page = s.get(f"{server.url}_davserver/", timeout=30).text
        csrf = re.search(r'name=csrf value="([^"]+)"', page)
        assert csrf
        fields = {"password": ALICE_PW, "p12_password": P12_PW}
        origin = {"Origin": server.url.rstrip("/"), "Accept": "text/html"}
        before = issued_count(inst)
        r = s.post(f"{server.url}_davserver/renew", data=fields, headers=origin, timeout=30)
        assert r.status_code == 403 and issued_count(inst) == before
        r = s.post(f"{server.url}_davserver/renew", data={**fields, "csrf": csrf[1]}, headers=origin, timeout=30)
        assert r.status_code == 200 and "data:application/x-pkcs12;base64," in r.text
        assert issued_count(inst) == before + 1


# --- the browser result page -------------------------------------------------------------------

UAS = {
    "android": "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36",
    "ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Version/17.1 Mobile Safari",
    "macos": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.1 Safari/605.1.15",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36",
    "windows-old": "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 Chrome/109 Safari/537.36",
    "linux": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
}
#: The file recommended first, per platform.
FIRST = {"android": "alice-legacy.p12", "ios": "alice.mobileconfig", "macos": "alice-legacy.p12",
         "windows": "alice.p12", "windows-old": "alice-legacy.p12", "linux": "alice.p12"}


def downloads(page: str) -> dict[str, bytes]:
    found = re.findall(r'href="data:([^;"]+);base64,([^"]+)" download="([^"]+)"', page)
    return {name: base64.b64decode(data) for _mime, data, name in found}


def test_result_page_per_platform(inst: Instance) -> None:
    with serving(inst) as server:
        for kind, ua in UAS.items():
            r = post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "p12_password": P12_PW},
                     accept="text/html,application/xhtml+xml", headers={"User-Agent": ua})
            assert r.status_code == 200, (kind, r.text)
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            files = downloads(r.text)
            assert set(files) == {"alice.p12", "alice-legacy.p12", "alice.mobileconfig", "davserver-ca.crt"}, kind
            first = re.search(r'download="([^"]+)"', r.text)
            assert first and first[1] == FIRST[kind], (kind, first)
            assert f'href="{GUIDE_PATH}"' in r.text
            profile = plistlib.loads(files["alice.mobileconfig"])
            assert {p["PayloadType"] for p in profile["PayloadContent"]} == {
                "com.apple.security.pkcs12", "com.apple.security.root"}
            for name in ("alice.p12", "alice-legacy.p12"):
                assert pkcs12.load_key_and_certificates(files[name], P12_PW.encode())[0] is not None
        assert server.enrolment is not None
        guide = anonymous(inst).get(server.enrolment.url + GUIDE_PATH, timeout=30)
        assert guide.status_code == 200 and guide.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert "## You received a link" in guide.text
        with session_for(inst) as s:
            assert "## You received a link" in s.get(f"{server.url}_davserver/clients.md", timeout=30).text
    assert platform_of(UAS["android"]) == ("android", True)


def test_platform_of_every_user_agent_shape() -> None:
    cases = {
        "Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X)": ("ios", True),
        "Mozilla/5.0 (Linux; Android 10; K)": ("android", True),
        "Mozilla/5.0 (Windows NT 6.3; Win64; x64)": ("windows", True),
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64)": ("windows", False),
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0": ("linux", False),
        "curl/8.5.0": ("other", False),
        "": ("other", False),
    }
    for ua, expected in cases.items():
        assert platform_of(ua) == expected, ua


def test_racing_posts_issue_once(inst: Instance) -> None:
    with serving(inst) as server:
        token = invite(server)
        before = issued_count(inst)
        codes: list[int] = []

        def one() -> None:
            codes.append(post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW})
                         .status_code)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 410, 410], codes
        assert issued_count(inst) == before + 1


# --- docs/clients.md's scripts, as written ----------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "clients.md"


def doc_script(heading: str) -> str:
    text = DOC.read_text()
    section = re.search(rf"(?ms)^### {re.escape(heading)}\n(.*?)(?=^##)", text)
    assert section, heading
    block = re.search(r"(?ms)^```sh\n(.*?)^```\n", section[1])
    assert block, heading
    return block[1]


def run_doc(script: str, folder: Path, password: str, **urls: str) -> subprocess.CompletedProcess[str]:
    for placeholder, url in urls.items():
        script = script.replace(placeholder, url)
    return subprocess.run(["bash", "-c", script], input=password + "\n", cwd=folder, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(folder)})


@pytest.mark.parametrize("password_ok", [True, False])
def test_doc_scripts_enrol_a_csr_and_renew(inst: Instance, tmp_path: Path, password_ok: bool) -> None:
    _key, csr = openssl_csr(tmp_path)
    csr.rename(tmp_path / "NAME.csr")
    (tmp_path / "davserver-ca.crt").write_bytes(inst.ca_file.read_bytes())
    password = ALICE_PW if password_ok else "not-the-password"
    with serving(inst, renew_before_days=400) as server:
        assert server.enrolment is not None
        token = invite(server)
        enrol = run_doc(doc_script("A key that never leaves your token"), tmp_path, password,
                        **{"https://dav.example.org:8444": server.enrolment.url, "TOKEN": token})
        assert (enrol.returncode == 0) is password_ok, enrol.stderr
        c = inst.clients["alice"]
        (tmp_path / "NAME.crt").write_bytes(c.crt.read_bytes())
        (tmp_path / "NAME.key").write_bytes(c.key.read_bytes())
        renewed = run_doc(doc_script("Renewing before it expires"), tmp_path, password,
                          **{"https://dav.example.org:8443/": server.url})
        assert (renewed.returncode == 0) is password_ok, renewed.stderr
        if password_ok:
            data = (tmp_path / "NAME-new.p12").read_bytes()
            assert pkcs12.load_key_and_certificates(data, b"NEW-FILE-PASSWORD")[1] is not None


# --- the kind: no path but /enrol/<token> reaches anything ----------------------------------

_SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_SEGMENTS = st.lists(st.one_of(_SEGMENT, st.sampled_from(["enrol", "_davserver", "ro", "..", "files", ""])),
                     max_size=4)
_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PROPFIND", "PUT", "DELETE", "OPTIONS", "MKCOL"])


def test_enrolment_app_answers_404_to_every_other_path(inst: Instance) -> None:
    """The enrolment listener's application, called in-process with any path: 404 unless
    the path is /enrol/<one segment of token characters>, and never a file's content."""
    enable(inst)
    server = DavServer(load_config(inst.home), port=0)
    server.prepare()  # the parts exist once prepared (nothing is made at construction)
    assert server.enrolment is not None
    app = server.enrolment._server.wsgi_app

    @settings(max_examples=300, deadline=None)
    @given(segments=_SEGMENTS, method=_METHODS)
    @example(segments=["ro", "readme.txt"], method="GET")
    @example(segments=["_davserver", "renew"], method="POST")
    @example(segments=["enrol", "help", "clients.md"], method="GET")
    @example(segments=["enrol", "help", "clients.md"], method="POST")
    def check(segments: list[str], method: str) -> None:
        path = "/" + "/".join(segments)
        statuses: list[str] = []
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": "192.0.2.7",
                   "wsgi.input": io.BytesIO(), "HTTP_ACCEPT": "*/*", "CONTENT_LENGTH": "0"}
        body = b"".join(app(environ, lambda status, headers, exc=None: statuses.append(status)))
        if path == GUIDE_PATH and method in ("GET", "HEAD"):
            assert statuses == ["200 OK"], statuses  # the client guide, as plain text
        elif re.fullmatch(r"/enrol/[A-Za-z0-9_-]+/?", path) is None:
            assert statuses == ["404 Not Found"], (path, statuses)
        else:  # a token that is not one: unknown (404), a method the page lacks (405), or locked out (429)
            assert statuses[0].split()[0] in ("404", "405", "429"), (path, statuses)
        assert b"read only" not in body

    try:
        check()
    finally:
        server.stop()
