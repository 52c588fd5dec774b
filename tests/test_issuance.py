"""Certificates handed out by enrolment and renewal: the same certificate `cert issue` makes,
bound the same way, as PKCS#12 (modern and legacy), an Apple profile, or from a CSR whose key
never reaches davserver."""

from __future__ import annotations

import base64
import plistlib
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from davserver import instance
from davserver.accounts import load_accounts
from davserver.issuance import Delivery, IssuanceError, check_csr, deliver, renew
from davserver.pki import PKIError
from tests.conftest import Instance, running

PW = "enrol-p12-password"


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60, check=False)


def bound(inst: Instance, account: str) -> set[str]:
    return {c.fingerprint for c in load_accounts(inst.home.accounts_file)[account].certificates}


def inventory(inst: Instance) -> set[str]:
    return {p.name for p in inst.ca.issued_dir.glob("*.crt")}


def shape(cert: x509.Certificate) -> tuple[object, ...]:
    """Subject, issuer and extensions (type, criticality; values but the key identifiers)."""
    exts = sorted(
        (e.oid.dotted_string, e.critical,
         None if isinstance(e.value, x509.SubjectKeyIdentifier | x509.AuthorityKeyIdentifier) else e.value)
        for e in cert.extensions
    )
    return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), repr(exts)


@pytest.fixture
def delivery(inst: Instance) -> Delivery:
    return deliver(inst.home, "alice", p12_password=PW)


def test_the_delivered_certificate_is_the_one_cert_issue_makes_and_is_bound(inst: Instance, delivery: Delivery) -> None:
    cert = x509.load_pem_x509_certificate(delivery.certificate_pem)
    issued_by_cli = x509.load_pem_x509_certificate(inst.clients["alice"].crt.read_bytes())
    assert shape(cert) == shape(issued_by_cli)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert delivery.issued.fingerprint in bound(inst, "alice")
    assert issued_by_cli != cert and inst.clients["alice"].issued.fingerprint in bound(inst, "alice")
    assert f"{delivery.issued.serial}.crt" in inventory(inst), "recorded, so it can be revoked"
    assert delivery.ca_pem == inst.ca_file.read_bytes()
    ca = x509.load_pem_x509_certificate(delivery.ca_pem)
    cert.verify_directly_issued_by(ca)


def test_the_p12_opens_with_openssl_and_cryptography(tmp_path: Path, delivery: Delivery) -> None:
    assert delivery.p12 is not None and delivery.legacy_p12 is not None
    cert = x509.load_pem_x509_certificate(delivery.certificate_pem)
    for data in (delivery.p12, delivery.legacy_p12):
        key, leaf, chain = pkcs12.load_key_and_certificates(data, PW.encode())
        assert leaf == cert and key is not None and key.public_key() == cert.public_key()
        assert [c.public_bytes(serialization.Encoding.PEM) for c in chain] == [delivery.ca_pem]
        path = tmp_path / "x.p12"
        path.write_bytes(data)
        opened = openssl("pkcs12", "-in", str(path), "-nodes", "-passin", f"pass:{PW}")
        assert opened.returncode == 0, opened.stderr
        assert b"PRIVATE KEY" in opened.stdout and delivery.certificate_pem.strip() in opened.stdout
        wrong = openssl("pkcs12", "-in", str(path), "-nodes", "-passin", "pass:not-the-password")
        assert wrong.returncode != 0, "twin: a wrong password does not open it"
        with pytest.raises(ValueError):
            pkcs12.load_key_and_certificates(data, b"not-the-password")


def _p12_info(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "info.p12"
    path.write_bytes(data)
    info = openssl("pkcs12", "-in", str(path), "-info", "-noout", "-passin", f"pass:{PW}")
    assert info.returncode == 0, info.stderr
    return info.stderr.decode() + info.stdout.decode()


def test_legacy_p12_is_3des_for_both_bags_with_a_sha1_mac_and_modern_is_aes(tmp_path: Path, delivery: Delivery) -> None:
    assert delivery.p12 is not None and delivery.legacy_p12 is not None
    legacy = _p12_info(tmp_path, delivery.legacy_p12)
    assert re.search(r"^MAC: sha1\b", legacy, re.M), legacy
    assert re.search(r"^PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC", legacy, re.M), legacy
    assert re.search(r"^Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC", legacy, re.M), legacy
    assert "AES" not in legacy
    modern = _p12_info(tmp_path, delivery.p12)
    assert re.search(r"^MAC: sha256\b", modern, re.M), modern
    assert re.search(r"^PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC", modern, re.M), modern
    assert re.search(r"^Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC", modern, re.M), modern
    assert "TripleDES" not in modern


def test_the_mobileconfig_holds_the_identity_and_the_ca(inst: Instance) -> None:
    uuids: set[str] = set()
    for _ in range(3):
        d = deliver(inst.home, "alice", p12_password=PW)
        assert d.mobileconfig is not None
        profile = plistlib.loads(d.mobileconfig)
        assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
        payloads = {p["PayloadType"]: p for p in profile["PayloadContent"]}
        assert set(payloads) == {"com.apple.security.pkcs12", "com.apple.security.root"}
        identity, root = payloads["com.apple.security.pkcs12"], payloads["com.apple.security.root"]
        key, leaf, _ = pkcs12.load_key_and_certificates(identity["PayloadContent"], PW.encode())
        assert leaf is not None and leaf.public_bytes(serialization.Encoding.PEM) == d.certificate_pem
        assert key is not None and key.public_key() == leaf.public_key()
        assert "Password" not in identity, "the profile does not carry the password"
        ca = x509.load_pem_x509_certificate(d.ca_pem)
        assert root["PayloadContent"] == ca.public_bytes(serialization.Encoding.DER)
        for p in (profile, identity, root):
            assert str(uuid.UUID(p["PayloadUUID"])).upper() == p["PayloadUUID"]
            uuids.add(p["PayloadUUID"])
            # the server certificate of a fresh instance names only localhost
            assert p["PayloadIdentifier"].startswith("localhost.davserver.alice")
    assert len(uuids) == 9, "every payload of every profile has its own UUID"


def test_the_private_key_is_not_kept(inst: Instance, delivery: Delivery) -> None:
    assert delivery.p12 is not None
    key, _, _ = pkcs12.load_key_and_certificates(delivery.p12, PW.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    forms = [
        secret,
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    ]
    files = [p for p in inst.home.root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not any(form in data for form in forms), path
    # twin: the search finds a key that is kept (cert issue writes PREFIX.key)
    alice_key = serialization.load_pem_private_key(inst.clients["alice"].key.read_bytes(), None)
    assert isinstance(alice_key, ec.EllipticCurvePrivateKey)
    kept = alice_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    assert any(kept in p.read_bytes() for p in files)


def _openssl_csr(tmp_path: Path, *newkey: str) -> tuple[bytes, Path]:
    """A CSR made by `openssl req`, asking for a foreign subject and a CA certificate; the key
    stays in a folder davserver never sees."""
    outside = tmp_path / "token"
    outside.mkdir(exist_ok=True)
    key = outside / "key.pem"
    made = openssl("req", "-new", *newkey, "-nodes", "-keyout", str(key), "-subj", "/CN=mallory/O=Evil Corp",
                   "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "subjectAltName=DNS:evil.example",
                   "-addext", "extendedKeyUsage=serverAuth,codeSigning")
    assert made.returncode == 0, made.stderr
    return made.stdout, key


@pytest.mark.parametrize("newkey", [
    ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
    ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"),
    ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"),
    ("-newkey", "rsa:2048"),
    ("-newkey", "ed25519"),
])
def test_a_csr_from_openssl_req_is_signed_and_bound_with_the_accounts_subject(
    inst: Instance, tmp_path: Path, newkey: tuple[str, ...]
) -> None:
    csr_pem, key_path = _openssl_csr(tmp_path, *newkey)
    d = deliver(inst.home, "alice", csr_pem=csr_pem)
    assert d.p12 is None and d.legacy_p12 is None and d.mobileconfig is None
    cert = x509.load_pem_x509_certificate(d.certificate_pem)
    assert cert.subject.rfc4514_string() == "CN=alice", "the CSR's subject is ignored"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # the certificate carries the outside key, and openssl verifies it against the CA
    outside_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert cert.public_key() == outside_key.public_key()
    crt = tmp_path / "signed.crt"
    crt.write_bytes(d.certificate_pem)
    verified = openssl("verify", "-CAfile", str(inst.ca_file), "-purpose", "sslclient", str(crt))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert d.issued.fingerprint in bound(inst, "alice")
    assert key_path.read_bytes() not in b"".join(p.read_bytes() for p in inst.home.root.rglob("*") if p.is_file())


def _tampered(csr_pem: bytes) -> bytes:
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    assert der.count(b"mallory") == 1
    bad = der.replace(b"mallory", b"mallorz")
    body = base64.encodebytes(bad).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines)
            + "\n-----END CERTIFICATE REQUEST-----\n").encode()


def _csr(key: object, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
    req = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return req.public_bytes(serialization.Encoding.PEM)


def test_bad_csrs_are_refused_with_a_reason_and_nothing_is_issued(inst: Instance, tmp_path: Path) -> None:
    good, _ = _openssl_csr(tmp_path, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    weak, _ = _openssl_csr(tmp_path, "-newkey", "rsa:1024")
    cases = {
        "signature does not verify": _tampered(good),
        "1024 bits": weak,
        "not a PEM certificate signing request": b"garbage\n",
        "not a PEM certificate signing request ": b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                                                 b"-----END CERTIFICATE REQUEST-----\n",
        "secp256k1": _csr(ec.generate_private_key(ec.SECP256K1()), hashes.SHA256()),
        "key type": _csr(dsa.generate_private_key(2048), hashes.SHA256()),
        "larger than": b"-" * (65 << 10),
    }
    before_inventory, before_bound = inventory(inst), bound(inst, "alice")
    for reason, pem in cases.items():
        with pytest.raises(IssuanceError, match=re.escape(reason.strip())):
            deliver(inst.home, "alice", csr_pem=pem)
        with pytest.raises(IssuanceError):
            check_csr(pem)
    assert inventory(inst) == before_inventory and bound(inst, "alice") == before_bound
    # twins: the untampered CSR, a 2048-bit RSA key and an Ed25519 key made here are accepted
    for pem in (good, _csr(rsa.generate_private_key(65537, 2048), hashes.SHA256()),
                _csr(ed25519.Ed25519PrivateKey.generate())):
        check_csr(pem)
    assert deliver(inst.home, "alice", csr_pem=good).issued.fingerprint in bound(inst, "alice")


def test_refusals_issue_nothing(inst: Instance) -> None:
    before = inventory(inst)
    with pytest.raises(IssuanceError, match="no account 'nobody'"):
        deliver(inst.home, "nobody", p12_password=PW)
    with pytest.raises(IssuanceError, match="one of the two"):
        deliver(inst.home, "alice")
    with pytest.raises(IssuanceError, match="one of the two"):
        deliver(inst.home, "alice", p12_password=PW, csr_pem=b"x")
    with pytest.raises(PKIError, match="must not be empty"):
        deliver(inst.home, "alice", p12_password="")
    assert inventory(inst) == before


def test_renew_issues_a_new_bound_certificate_and_keeps_the_old(inst: Instance) -> None:
    inst.issue("bob", name="bob-mail", email="bob@example.org")
    old = inst.ca.list_issued()[-1]
    assert old.account == "bob" and old.email == "bob@example.org"
    d = renew(inst.home, old.serial.lower(), p12_password=PW)
    assert d.issued.account == "bob" and d.issued.email == "bob@example.org" and d.issued.serial != old.serial
    assert {old.fingerprint, d.issued.fingerprint} <= bound(inst, "bob")
    assert inst.ca.get_issued(old.serial).status == "valid"
    # twins: a revoked certificate is not renewed, an unknown serial is named
    inst.ca.revoke(old.serial)
    before = inventory(inst)
    with pytest.raises(IssuanceError, match="revoked"):
        renew(inst.home, old.serial, p12_password=PW)
    with pytest.raises(PKIError, match="no issued certificate with serial ABC"):
        renew(inst.home, "abc", p12_password=PW)
    assert inventory(inst) == before


def test_list_expiring(inst: Instance) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    short = inst.issue("carol", name="carol-short", days=10)
    soon = [c.serial for c in inst.ca.list_expiring(30, now=now)]
    assert soon == [short.issued.serial]
    assert inst.ca.list_expiring(9, now=now) == []
    everything = inst.ca.list_expiring(400, now=now)
    assert len(everything) == 4 and everything[0].serial == short.issued.serial
    inst.ca.revoke(short.issued.serial)
    assert inst.ca.list_expiring(30, now=now) == [], "revoked ones are not listed"
    assert inst.ca.list_expiring(30, now=now + timedelta(days=11)) == [], "nor expired ones"


def test_racing_enrolments_keep_every_binding(inst: Instance, tmp_path: Path) -> None:
    """Eight enrolments at once (threads of one server) each bind their certificate: the
    accounts file is edited by one at a time, so none is lost."""
    import threading

    csr_pem, _ = _openssl_csr(tmp_path, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    barrier = threading.Barrier(8)
    fingerprints: list[str] = []

    def enrol(account: str) -> None:
        barrier.wait()
        fingerprints.append(deliver(inst.home, account, csr_pem=csr_pem).issued.fingerprint)

    threads = [threading.Thread(target=enrol, args=(("alice", "bob")[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fingerprints) == 8
    assert set(fingerprints) <= bound(inst, "alice") | bound(inst, "bob")


@pytest.mark.parametrize("newkey", [
    ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"),
    ("-newkey", "rsa:2048"),
    ("-newkey", "ed25519"),
])
def test_a_csr_certificate_opens_a_share_over_tls(inst: Instance, tmp_path: Path, newkey: tuple[str, ...]) -> None:
    """The signed certificate, with the key that never left its folder, signs in on a live
    server; the twin without the binding (revoked) is refused."""
    csr_pem, key_path = _openssl_csr(tmp_path, *newkey)
    d = deliver(inst.home, "bob", csr_pem=csr_pem)
    crt = tmp_path / "signed.crt"
    crt.write_bytes(d.certificate_pem)
    with running(inst) as server:
        s = requests.Session()
        s.trust_env = False
        s.verify = str(inst.ca_file)
        s.cert = (str(crt), str(key_path))
        s.auth = ("bob", "bob-secret-pw1")
        assert s.get(f"{server.url}ro/readme.txt", timeout=30).status_code == 200
        instance.unbind_certificates(inst.home, [d.issued])
        inst.ca.revoke(d.issued.serial)
        for _ in range(50):  # the server re-reads accounts and CRL on change
            try:
                status = s.get(f"{server.url}ro/readme.txt", timeout=30).status_code
            except requests.exceptions.SSLError:
                status = 0
            if status != 200:
                break
            time.sleep(0.1)
        assert status != 200


def test_account_edits_and_bindings_at_once_lose_nothing(inst: Instance) -> None:
    """Password changes (`davserver user passwd` -> `instance.edit_account`) racing
    certificate bindings (what every enrolment ends with): each of the 60 bindings stays
    and the last password hash is one that was written. Before, the edit loaded and
    saved the file outside the accounts lock and could undo a binding."""
    import dataclasses
    import secrets
    import threading

    from davserver.auth.passwords import hash_password

    hashes = [hash_password(f"new-password-{n}") for n in range(3)]
    template = inst.clients["alice"].issued
    barrier = threading.Barrier(6)
    bound_now: list[str] = []

    def bind(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            issued = dataclasses.replace(template, fingerprint=secrets.token_hex(32), serial=secrets.token_hex(8))
            instance.bind_certificate(inst.home, issued)
            bound_now.append(issued.fingerprint)

    def edit(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            assert instance.edit_account(inst.home, "bob", password_hash=hashes[n])

    threads = [threading.Thread(target=bind, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=edit, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bound_now) == 60 and set(bound_now) <= bound(inst, "alice")
    assert load_accounts(inst.home.accounts_file)["bob"].password_hash in hashes
    assert not instance.edit_account(inst.home, "nobody", enabled=False)  # no such account: nothing written
