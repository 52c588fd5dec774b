"""The form field ``format``: a browser POST answers the one file chosen on the form
(iOS Safari installs a configuration profile only from a response typed
application/x-apple-aspen-config, not from a data: link), preselected by User-Agent;
the default page flow and the scripted Accept interface stay as they were."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from davserver.enrolment_pages import FORMATS, check_delivery_form, default_format, delivery_fields
from davserver.invitations import Invitations
from tests.conftest import PASSWORDS, Instance
from tests.test_enrolment_web import enrol_url, invite, issued_count, openssl_csr, post, serving

ALICE_PW = PASSWORDS["alice"]
P12_PW = "file-password-1"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what browsers send

UA = {
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.4 Mobile/15E148 Safari/604.1",
    "ipad-old": "Mozilla/5.0 (iPad; CPU OS 12_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                "Version/12.1 Mobile/15E148 Safari/604.1",
    "android": "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/120.0.0.0 Mobile Safari/537.36",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/120.0.0.0 Safari/537.36",
    "macos": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.4 Safari/605.1.15",
    "linux": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "none": "",
}
PRESELECTED = {"iphone": "mobileconfig", "ipad-old": "mobileconfig", "android": "page", "windows": "page",
               "macos": "page", "linux": "page", "none": "page"}


def ca_cert(inst: Instance) -> x509.Certificate:
    return x509.load_pem_x509_certificate(inst.ca_file.read_bytes())


@pytest.mark.parametrize("kind", sorted(UA))
def test_format_preselected_by_user_agent(kind: str) -> None:
    assert default_format(UA[kind]) == PRESELECTED[kind]
    selected = re.findall(r"<option value=(\w+) selected>", delivery_fields(UA[kind]))
    assert selected == [PRESELECTED[kind]]
    assert re.findall(r"<option value=(\w+)", delivery_fields(UA[kind])) == list(FORMATS)


def test_form_page_offers_the_choice(inst: Instance) -> None:
    with serving(inst) as server:
        token = invite(server)
        from tests.test_enrolment_web import anonymous

        with anonymous(inst) as s:
            page = s.get(enrol_url(server, token), headers={"User-Agent": UA["iphone"], "Accept": HTML}, timeout=30)
        assert page.status_code == 200
        assert "<select id=format name=format>" in page.text
        assert "<option value=mobileconfig selected>" in page.text


def test_each_format_answers_one_typed_download(inst: Instance, tmp_path: Path) -> None:
    """A browser POST (Accept: text/html) with each file format gets that file, typed and
    as an attachment; its bytes parse with the password chosen."""
    with serving(inst) as server:
        before = issued_count(inst)
        fields = {"password": ALICE_PW, "p12_password": P12_PW}

        r = post(inst, enrol_url(server, invite(server)), {**fields, "format": "mobileconfig"}, accept=HTML,
                 headers={"User-Agent": UA["iphone"]})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-apple-aspen-config"
        assert r.headers["Content-Disposition"] == 'attachment; filename="alice.mobileconfig"'
        assert r.headers["Cache-Control"] == "no-store"
        profile = plistlib.loads(r.content)
        payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
        assert set(payloads) == {"com.apple.security.pkcs12", "com.apple.security.root"}
        key, cert, _ = pkcs12.load_key_and_certificates(payloads["com.apple.security.pkcs12"]["PayloadContent"],
                                                        P12_PW.encode())
        assert key is not None and cert is not None
        assert x509.load_der_x509_certificate(payloads["com.apple.security.root"]["PayloadContent"]) == ca_cert(inst)

        for fmt, name in (("p12", "alice.p12"), ("legacy_p12", "alice-legacy.p12")):
            r = post(inst, enrol_url(server, invite(server)), {**fields, "format": fmt}, accept=HTML,
                     headers={"User-Agent": UA["android"]})
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"] == "application/x-pkcs12", fmt
            assert r.headers["Content-Disposition"] == f'attachment; filename="{name}"'
            key, cert, chain = pkcs12.load_key_and_certificates(r.content, P12_PW.encode())
            assert key is not None and cert is not None, fmt
            assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"
            assert ca_cert(inst) in chain
            with pytest.raises(ValueError):
                pkcs12.load_key_and_certificates(r.content, b"another-password")
        # the legacy file is the 3DES one: its bags say pbeWithSHAAnd3-KeyTripleDES-CBC
        assert b"\x2a\x86\x48\x86\xf7\x0d\x01\x0c\x01\x03" in r.content

        _key, csr = openssl_csr(tmp_path)
        r = post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "csr": csr.read_text(),
                                                           "format": "pem"}, accept=HTML)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-pem-file"
        assert r.headers["Content-Disposition"] == 'attachment; filename="alice.crt"'
        signed = x509.load_pem_x509_certificate(r.content)
        assert signed.issuer == ca_cert(inst).subject
        # with a CSR the certificate is the only file there is, whatever file was chosen
        r = post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "csr": csr.read_text(),
                                                           "format": "mobileconfig"}, accept=HTML)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-pem-file"
        assert issued_count(inst) == before + 5


def test_default_page_flow_and_scripted_accept_unchanged(inst: Instance) -> None:
    fields = {"password": ALICE_PW, "p12_password": P12_PW}
    with serving(inst) as server:
        for extra in ({}, {"format": "page"}, {"format": ""}):
            r = post(inst, enrol_url(server, invite(server)), {**fields, **extra}, accept=HTML,
                     headers={"User-Agent": UA["iphone"]})
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "Content-Disposition" not in r.headers
            links = re.findall(r'href="data:[^;]+;base64,[^"]+" download="([^"]+)"', r.text)
            assert sorted(links) == ["alice-legacy.p12", "alice.mobileconfig", "alice.p12", "davserver-ca.crt"], extra
        # scripts: no format, Accept names the file (issue 13 item 3, exactly as before)
        r = post(inst, enrol_url(server, invite(server)), fields)
        assert r.headers["Content-Type"] == "application/x-pkcs12"
        assert r.headers["Content-Disposition"] == 'attachment; filename="alice.p12"'
        assert pkcs12.load_key_and_certificates(r.content, P12_PW.encode())[0] is not None
        r = post(inst, enrol_url(server, invite(server)), fields, accept="application/x-apple-aspen-config")
        assert r.headers["Content-Type"] == "application/x-apple-aspen-config"
        assert plistlib.loads(r.content)["PayloadType"] == "Configuration"


@pytest.mark.parametrize("fields", [
    {"p12_password": P12_PW, "format": "zip"},
    {"p12_password": P12_PW, "format": "pem"},  # a PEM certificate without its key is of no use
    {"p12_password": P12_PW, "format": "P12"},
])
def test_unusable_format_refused_before_the_link_is_spent(inst: Instance, fields: dict[str, str]) -> None:
    with serving(inst) as server:
        token = invite(server)
        before = issued_count(inst)
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, **fields}, accept=HTML)
        assert r.status_code == 400, r.text
        assert issued_count(inst) == before
        assert Invitations(server.store, server.config.enrolment).peek(token).failures == 0
        # the twin: the same link with a usable format
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "p12_password": P12_PW, "format": "p12"},
                 accept=HTML)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-pkcs12"


def test_check_delivery_form_every_format() -> None:
    for fmt in FORMATS:
        _pw, csr, problem = check_delivery_form({"csr": "-----BEGIN CERTIFICATE REQUEST-----", "format": fmt})
        assert problem == "" and csr is not None, fmt
        _pw, _csr, problem = check_delivery_form({"p12_password": P12_PW, "format": fmt})
        assert (problem == "") == (fmt != "pem"), fmt
    assert check_delivery_form({"p12_password": P12_PW, "format": "x" * 500})[2].count("x") < 60


def test_renewal_answers_the_chosen_format(inst: Instance) -> None:
    from tests.test_enrolment_web import alice_cert, renew

    with serving(inst, renew_before_days=400) as server:
        r = renew(inst, server, {"password": ALICE_PW, "p12_password": P12_PW, "format": "mobileconfig"},
                  alice_cert(inst), accept=HTML)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-apple-aspen-config"
        assert r.headers["Content-Disposition"] == 'attachment; filename="alice.mobileconfig"'
        identity = next(p for p in plistlib.loads(r.content)["PayloadContent"]
                        if p["PayloadType"] == "com.apple.security.pkcs12")
        assert pkcs12.load_key_and_certificates(identity["PayloadContent"], P12_PW.encode())[0] is not None
        # the twin: without a format, the browser gets the page, as before
        r = renew(inst, server, {"password": ALICE_PW, "p12_password": P12_PW}, alice_cert(inst), accept=HTML)
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
