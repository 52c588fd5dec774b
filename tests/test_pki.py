"""Tests for the built-in certificate authority (davserver.pki)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from davserver.pki import (
    CertificateAuthority,
    IssuedCert,
    PKIError,
    certificate_fingerprint,
    fingerprint_der,
    load_crl_serials,
    serial_hex,
)

PW = b"correct horse battery"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
needs_openssl = pytest.mark.skipif(not Path(OPENSSL).exists(), reason="openssl CLI not installed")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority(tmp_path / "certs")
    authority.create()
    authority.issue_server_cert(["files.example.org", "10.1.2.3"])
    return authority


def _issue(
    ca: CertificateAuthority,
    account: str = "alice",
    *,
    days: int = 365,
    email: str | None = None,
    legacy_p12: bool = False,
    now: datetime | None = None,
) -> IssuedCert:
    out = ca.certs_dir.parent / "out" / account
    return ca.issue_client_cert(
        account, out_prefix=out, p12_password=PW, days=days, email=email,
        legacy_p12=legacy_p12, now=now,
    )


def _cert(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


# -- CA ---------------------------------------------------------------------------------------


def test_constructor_does_not_touch_disk(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "nope")
    assert not authority.exists()
    assert not (tmp_path / "nope").exists()


def test_create_ca(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "certs")
    authority.create(common_name="Test CA")
    assert authority.exists()
    cert = _cert(authority.ca_cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)  # self-signed
    assert _mode(authority.ca_key_path) == 0o600
    assert load_crl_serials(authority.crl_path)[0] == frozenset()
    assert authority.issued_dir.is_dir()


def test_second_create_refused_without_force(ca: CertificateAuthority) -> None:
    before = ca.ca_cert_path.read_bytes()
    with pytest.raises(PKIError, match="already exists.*--force"):
        ca.create()
    assert ca.ca_cert_path.read_bytes() == before
    ca.ca_cert_path.unlink()  # a lone ca.key is still protected
    key = ca.ca_key_path.read_bytes()
    with pytest.raises(PKIError, match="already exists"):
        ca.create()
    assert ca.ca_key_path.read_bytes() == key


def test_force_replaces_ca_and_empties_inventory(ca: CertificateAuthority) -> None:
    old = _cert(ca.ca_cert_path)
    issued = _issue(ca)
    ca.revoke(issued.serial)
    ca.create(force=True)
    new = _cert(ca.ca_cert_path)
    assert new.public_key() != old.public_key()
    assert ca.list_issued() == []
    assert load_crl_serials(ca.crl_path)[0] == frozenset()
    with pytest.raises((ValueError, InvalidSignature)):
        _cert(issued.paths["crt"]).verify_directly_issued_by(new)


# -- server certificate -----------------------------------------------------------------------


def test_server_cert(ca: CertificateAuthority) -> None:
    cert = _cert(ca.server_cert_path)
    cert.verify_directly_issued_by(_cert(ca.ca_cert_path))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "files.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "files.example.org"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert _mode(ca.server_key_path) == 0o600


def test_server_cert_from_other_ca_fails(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.create()
    with pytest.raises((ValueError, InvalidSignature)):
        _cert(ca.server_cert_path).verify_directly_issued_by(_cert(other.ca_cert_path))


def test_server_cert_default_cn_and_bad_names(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path)
    with pytest.raises(PKIError, match="create the CA first"):
        authority.issue_server_cert()
    authority.create()
    authority.issue_server_cert()
    cert = _cert(authority.server_cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    with pytest.raises(PKIError, match="invalid host name"):
        authority.issue_server_cert(["bad name/with slash"])


# -- client certificate -----------------------------------------------------------------------


def test_client_cert(ca: CertificateAuthority) -> None:
    issued = _issue(ca, "alice", email="alice@example.org")
    cert = _cert(issued.paths["crt"])
    cert.verify_directly_issued_by(_cert(ca.ca_cert_path))
    assert issued.account == "alice" and issued.status == "valid"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.org"]
    assert issued.email == "alice@example.org"
    der = cert.public_bytes(serialization.Encoding.DER)
    assert issued.fingerprint == hashlib.sha256(der).hexdigest() == fingerprint_der(der)
    assert len(issued.fingerprint) == 64
    assert issued.serial == serial_hex(cert.serial_number) == format(cert.serial_number, "X")
    assert _mode(issued.paths["key"]) == 0o600
    assert _mode(issued.paths["p12"]) == 0o600
    assert Path(issued.paths["crt"]).read_text().count("BEGIN CERTIFICATE") == 1  # leaf only
    assert (ca.issued_dir / f"{issued.serial}.crt").read_bytes() == Path(
        issued.paths["crt"]
    ).read_bytes()
    assert issued.not_before.tzinfo is not None
    assert issued.not_before < datetime.now(UTC) - timedelta(minutes=4)  # skew allowance
    assert timedelta(days=364) < issued.not_after - issued.not_before <= timedelta(days=366)
    assert not list(ca.certs_dir.rglob("*.tmp"))
    assert not list(Path(issued.paths["p12"]).parent.glob(".*"))  # no temp files left


def test_client_cert_dotted_prefix(ca: CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "bob.smith"
    issued = ca.issue_client_cert("bob.smith", out_prefix=out, p12_password=PW)
    assert issued.email is None
    assert issued.paths == {
        "p12": str(out) + ".p12",
        "crt": str(out) + ".crt",
        "key": str(out) + ".key",
    }
    assert all(Path(p).is_file() for p in issued.paths.values())


def test_key_files_are_private_from_creation(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check the mode while the data is written, not only after the final rename."""
    modes: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            modes.append(stat.S_IMODE(st.st_mode))
        real_fsync(fd)

    old_umask = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "fsync", spy)
        _issue(ca)
    finally:
        os.umask(old_umask)
    assert sorted(modes) == [0o600, 0o600, 0o644, 0o644]  # key, p12 | crt, issued copy


@pytest.mark.parametrize("account", ["", "-alice", ".x", "a b", "al/ice", "ä", "a" * 65, "a\n"])
def test_bad_account_names_refused(ca: CertificateAuthority, account: str) -> None:
    with pytest.raises(PKIError, match="invalid account name"):
        ca.issue_client_cert(account, out_prefix=ca.certs_dir / "x", p12_password=PW)


@pytest.mark.parametrize("account", ["a", "Alice_1", "bob@example.org", "x-y.z", "a" * 64])
def test_good_account_names_accepted(ca: CertificateAuthority, account: str) -> None:
    assert _issue(ca, account).account == account


def test_bad_parameters_refused(ca: CertificateAuthority) -> None:
    out = ca.certs_dir / "x"
    for days in (0, 3651):
        with pytest.raises(PKIError, match="days"):
            ca.issue_client_cert("alice", out_prefix=out, p12_password=PW, days=days)
    with pytest.raises(PKIError, match="password"):
        ca.issue_client_cert("alice", out_prefix=out, p12_password=b"")
    with pytest.raises(PKIError, match="e-mail"):
        ca.issue_client_cert("alice", out_prefix=out, p12_password=PW, email="not an address")
    assert ca.list_issued() == []


# -- PKCS#12 ----------------------------------------------------------------------------------


def _openssl_info(p12: str, password: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, "pkcs12", "-in", p12, "-passin", "pass:" + password.decode(), "-nokeys", "-info"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_openssl
@pytest.mark.parametrize(
    ("legacy", "expected"),
    [(False, ["PBES2", "PBKDF2", "AES-256-CBC", "hmacWithSHA256", "MAC: sha256"]),
     (True, ["pbeWithSHA1And3-KeyTripleDES-CBC", "MAC: sha1"])],
)
def test_p12_openssl(ca: CertificateAuthority, legacy: bool, expected: list[str]) -> None:
    issued = _issue(ca, legacy_p12=legacy)
    good = _openssl_info(issued.paths["p12"], PW)
    assert good.returncode == 0, good.stderr
    info = good.stdout + good.stderr
    for word in expected:
        assert word in info
    assert "AES-256-CBC" not in info if legacy else "TripleDES" not in info
    assert "subject=CN = alice" in info.replace("subject=CN=alice", "subject=CN = alice")
    bad = _openssl_info(issued.paths["p12"], b"wrong password")
    assert bad.returncode != 0


@pytest.mark.parametrize("legacy", [False, True])
def test_p12_cryptography(ca: CertificateAuthority, legacy: bool) -> None:
    issued = _issue(ca, legacy_p12=legacy)
    data = Path(issued.paths["p12"]).read_bytes()
    p12 = pkcs12.load_pkcs12(data, PW)
    assert p12.key is not None and p12.cert is not None
    assert p12.cert.friendly_name == b"alice"
    assert p12.cert.certificate == _cert(issued.paths["crt"])
    assert p12.key.public_key() == p12.cert.certificate.public_key()
    assert [c.certificate for c in p12.additional_certs] == [_cert(ca.ca_cert_path)]
    key, cert, extra = pkcs12.load_key_and_certificates(data, PW)
    assert key is not None and cert == p12.cert.certificate and len(extra) == 1
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(data, b"wrong password")


def test_export_p12_reexports_existing_pair(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = _issue(ca)
    target = tmp_path / "again.p12"
    ca.export_p12(Path(issued.paths["crt"]), Path(issued.paths["key"]), target, b"new password")
    assert _mode(target) == 0o600
    p12 = pkcs12.load_pkcs12(target.read_bytes(), b"new password")
    assert p12.cert is not None and p12.cert.certificate == _cert(issued.paths["crt"])
    assert p12.cert.friendly_name == b"alice"
    assert len(ca.list_issued()) == 1  # nothing new was issued
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(target.read_bytes(), PW)


def test_export_p12_refuses_mismatches(ca: CertificateAuthority, tmp_path: Path) -> None:
    alice, bob = _issue(ca, "alice"), _issue(ca, "bob")
    with pytest.raises(PKIError, match="does not belong"):
        ca.export_p12(Path(alice.paths["crt"]), Path(bob.paths["key"]), tmp_path / "x.p12", PW)
    other = CertificateAuthority(tmp_path / "other")
    other.create(common_name="Other CA")
    foreign = other.issue_client_cert("eve", out_prefix=tmp_path / "eve", p12_password=PW)
    with pytest.raises(PKIError, match="not issued by the CA"):
        ca.export_p12(
            Path(foreign.paths["crt"]), Path(foreign.paths["key"]), tmp_path / "y.p12", PW
        )
    with pytest.raises(PKIError, match="password"):
        ca.export_p12(Path(alice.paths["crt"]), Path(alice.paths["key"]), tmp_path / "z.p12", b"")
    assert not list(tmp_path.glob("?.p12"))


def test_certificate_fingerprint(ca: CertificateAuthority, tmp_path: Path) -> None:
    issued = _issue(ca)
    assert certificate_fingerprint(Path(issued.paths["crt"])) == issued.fingerprint
    assert certificate_fingerprint(ca.server_cert_path) != issued.fingerprint
    with pytest.raises(PKIError, match="cannot read certificate"):
        certificate_fingerprint(tmp_path / "missing.crt")


# -- real TLS handshakes ----------------------------------------------------------------------


def _server_ctx(ca: CertificateAuthority, crl: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.server_cert_path, ca.server_key_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca.ca_cert_path)
    if crl:
        ctx.load_verify_locations(ca.crl_path)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _client_ctx(ca: CertificateAuthority, cert: IssuedCert | dict[str, str]) -> ssl.SSLContext:
    paths = cert.paths if isinstance(cert, IssuedCert) else cert
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert_path))
    ctx.load_cert_chain(paths["crt"], paths["key"])
    return ctx


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[bool, BaseException | None]:
    """Run one exchange over a socketpair; return (client got reply, server-side error)."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                tls.sendall(b"pong:" + tls.recv(4))
        except (OSError, ssl.SSLError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    ok = False
    try:
        with client.wrap_socket(b, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            ok = tls.recv(16) == b"pong:ping"
    except (OSError, ssl.SSLError):
        ok = False
    finally:
        thread.join(10)
        a.close()
        b.close()
    assert not thread.is_alive()
    return ok, (server_error[0] if server_error else None)


def test_tls_handshake_with_client_cert(ca: CertificateAuthority) -> None:
    issued = _issue(ca)
    ok, err = _handshake(_server_ctx(ca), _client_ctx(ca, issued))
    assert ok and err is None


def test_tls_rejects_foreign_client_cert(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.create()
    foreign = other.issue_client_cert("alice", out_prefix=tmp_path / "f", p12_password=PW)
    ok, err = _handshake(_server_ctx(ca), _client_ctx(ca, foreign))
    assert not ok
    assert isinstance(err, ssl.SSLError)


def test_tls_handshake_rejects_server_cert_as_client_cert(ca: CertificateAuthority) -> None:
    """EKU serverAuth only: the server's own certificate must not log in as a client."""
    client = _client_ctx(ca, {"crt": str(ca.server_cert_path), "key": str(ca.server_key_path)})
    ok, err = _handshake(_server_ctx(ca), client)
    assert not ok and isinstance(err, ssl.SSLError)


def test_tls_handshake_with_crl(ca: CertificateAuthority) -> None:
    good, bad = _issue(ca, "alice"), _issue(ca, "mallory")
    ca.revoke(bad.serial)
    ok, err = _handshake(_server_ctx(ca, crl=True), _client_ctx(ca, good))
    assert ok and err is None
    ok, err = _handshake(_server_ctx(ca, crl=True), _client_ctx(ca, bad))
    assert not ok and isinstance(err, ssl.SSLError) and "revoked" in str(err)


# -- revocation and listing -------------------------------------------------------------------


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


def test_revoke(ca: CertificateAuthority) -> None:
    keep, gone = _issue(ca, "alice"), _issue(ca, "bob")
    number_before = _crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    revoked = ca.revoke(gone.serial.lower())
    assert revoked.status == "revoked" and revoked.serial == gone.serial
    serials, next_update = load_crl_serials(ca.crl_path)
    assert serials == frozenset({gone.serial})
    assert next_update is not None and next_update > datetime.now(UTC) + timedelta(days=29)
    status = {c.serial: c.status for c in ca.list_issued()}
    assert status == {keep.serial: "valid", gone.serial: "revoked"}
    crl = _crl(ca)
    assert crl.is_signature_valid(_cert(ca.ca_cert_path).public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number_before
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    # idempotent: same answer, CRL content unchanged
    again = ca.revoke("0x" + gone.serial)
    assert again.status == "revoked" and load_crl_serials(ca.crl_path)[0] == frozenset({gone.serial})


def test_revoke_tolerates_colons(ca: CertificateAuthority) -> None:
    issued = _issue(ca)
    hexed = issued.serial.rjust(len(issued.serial) + len(issued.serial) % 2, "0")
    colons = ":".join(hexed[i : i + 2] for i in range(0, len(hexed), 2)).lower()
    assert ca.revoke(colons).serial == issued.serial


def test_revoke_unknown_serial(ca: CertificateAuthority) -> None:
    _issue(ca)
    with pytest.raises(PKIError, match="DEADBEEF.*davserver cert list"):
        ca.revoke("deadbeef")
    with pytest.raises(PKIError, match="not a hex serial"):
        ca.revoke("xyz")
    assert load_crl_serials(ca.crl_path)[0] == frozenset()


def test_revoke_account(ca: CertificateAuthority) -> None:
    a1, a2, b1 = _issue(ca, "alice"), _issue(ca, "alice"), _issue(ca, "bob")
    done = ca.revoke_account("alice")
    assert {c.serial for c in done} == {a1.serial, a2.serial}
    assert all(c.status == "revoked" for c in done)
    assert load_crl_serials(ca.crl_path)[0] == frozenset({a1.serial, a2.serial})
    assert {c.serial: c.status for c in ca.list_issued()}[b1.serial] == "valid"
    assert ca.revoke_account("alice") == []
    assert ca.revoke_account("nobody") == []


def test_write_crl_keeps_revocations_and_moves_next_update(ca: CertificateAuthority) -> None:
    issued = _issue(ca)
    ca.revoke(issued.serial)
    later = datetime.now(UTC) + timedelta(days=20)
    ca.write_crl(now=later, next_update_days=7)
    serials, next_update = load_crl_serials(ca.crl_path)
    assert serials == frozenset({issued.serial})
    assert next_update == (later + timedelta(days=7)).replace(microsecond=0)
    assert _crl(ca).last_update_utc < later


def test_expired_status(ca: CertificateAuthority) -> None:
    past = datetime.now(UTC) - timedelta(days=400)
    old = _issue(ca, "alice", days=30, now=past)
    fresh = _issue(ca, "bob")
    status = {c.serial: c.status for c in ca.list_issued()}
    assert status == {old.serial: "expired", fresh.serial: "valid"}
    assert [c.serial for c in ca.list_issued()] == [old.serial, fresh.serial]  # by not_before
    later = datetime.now(UTC) + timedelta(days=400)
    future = {c.serial: c.status for c in ca.list_issued(now=later)}
    assert future == {old.serial: "expired", fresh.serial: "expired"}
    assert ca.revoke_account("alice") == []  # nothing valid left to revoke


def test_load_crl_serials_errors(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="missing"):
        load_crl_serials(tmp_path / "crl.pem")
    (tmp_path / "crl.pem").write_text("garbage")
    with pytest.raises(PKIError, match="cannot read CRL"):
        load_crl_serials(tmp_path / "crl.pem")


def test_crl_from_another_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.create()
    shutil.copy(other.crl_path, ca.crl_path)
    with pytest.raises(PKIError, match="not signed by the CA"):
        ca.write_crl()
