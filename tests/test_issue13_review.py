"""Review of issue 13's renewal rules (renewal.Renewals) with real certificates from the
project CA, the real SQLite state store and the real issuance:

- with ``enrolment.revoke_renewed``, a state store that fails at the first use of the new
  certificate (a Redis blip) does not leave the old certificate valid for good: the next
  request revokes it (before, the fingerprint was remembered as checked and never looked
  at again until a restart);
- a certificate from another CA that shares the built-in CA's name (every ``davserver
  init`` CA is ``CN=davserver CA``) and carries the serial of someone's certificate is
  not renewed: before, renewal went by serial alone and issued a certificate for the
  serial's account;
- after a CA renewal (docs/certificates.md, plan B: a new CA first in ``certs/ca.crt``, the
  old one after it) the running server offers renewal to the new CA's certificates and
  still to the old CA's, without a restart; a foreign CA's certificate never.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from davserver import issuance
from davserver.accounts import load_accounts
from davserver.auth.identity import CertIdentity, parse_certificate
from davserver.pki import CertificateAuthority, PKIError
from davserver.renewal import Renewals
from davserver.store.base import StoreUnavailable
from davserver.store.sqlite import SQLiteStore
from davserver.store.sqlite_lockout import SQLiteLockouts

from .conftest import Instance

P12_PW = "renewal-file-pw"
NOW = dt.datetime.now(dt.UTC)


class _BlipStore(SQLiteStore):
    """The real SQLite store whose first ``fail`` look-ups raise StoreUnavailable (an outage)."""

    fail = 0

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lockouts = _BlipLockouts(self)


class _BlipLockouts(SQLiteLockouts):
    def __init__(self, owner: _BlipStore) -> None:
        super().__init__(owner)
        self.owner = owner

    def lockout_until(self, key: str, now: float) -> float | None:
        if self.owner.fail > 0:
            self.owner.fail -= 1
            raise StoreUnavailable("state store unreachable (test outage)")
        return super().lockout_until(key, now)


def _identity(path: Path) -> CertIdentity:
    return parse_certificate(x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER))


def _renewals(inst: Instance, store: SQLiteStore | None = None, *, revoke: bool = False) -> Renewals:
    return Renewals(inst.home, store, renew_before_days=400, revoke_renewed=revoke, renew=issuance.renew)


def _status(inst: Instance, serial: str) -> str:
    return inst.ca.get_issued(serial).status


@pytest.mark.parametrize("outage", [0, 1, 3])
def test_revoke_renewed_survives_a_store_outage(inst: Instance, tmp_path: Path, outage: int) -> None:
    store = _BlipStore(tmp_path / "state.db")
    renewals = _renewals(inst, store, revoke=True)
    old = _identity(inst.clients["alice"].crt)
    delivery = renewals.renew(old, p12_password=P12_PW, csr_pem=None)
    new = parse_certificate(x509.load_pem_x509_certificate(delivery.certificate_pem).public_bytes(
        serialization.Encoding.DER))
    account = load_accounts(inst.home.accounts_file)["alice"]
    store.fail = outage
    for _ in range(outage):  # each request during the outage: the guard logs it and goes on
        with pytest.raises(StoreUnavailable):
            renewals.note_use(account, new, NOW)
        assert _status(inst, old.serial) == "valid"
    assert renewals.note_use(account, new, NOW) == old.serial  # the first request after it
    assert _status(inst, old.serial) == "revoked"
    assert renewals.note_use(account, new, NOW) is None  # done: later requests cost a set lookup


def _lookalike_ca(tmp_path: Path, name: str = "davserver CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _client(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, account: str, serial: int,
            days: int = 20) -> CertIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, account)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return parse_certificate(cert.public_bytes(serialization.Encoding.DER))


def test_lookalike_certificate_with_our_serial_is_not_renewed(inst: Instance, tmp_path: Path) -> None:
    renewals = _renewals(inst)
    victim = _identity(inst.clients["bob"].crt)
    ca_key, ca = _lookalike_ca(tmp_path)
    forged = _client(ca_key, ca, "mallory", int(victim.serial, 16))
    assert forged.issuer == victim.issuer and forged.serial == victim.serial
    before = len(inst.ca.list_issued())
    with pytest.raises(PKIError, match="not issued by this server's CA"):
        renewals.renew(forged, p12_password=P12_PW, csr_pem=None)
    assert len(inst.ca.list_issued()) == before  # nothing issued, nothing bound
    assert len(load_accounts(inst.home.accounts_file)["bob"].certificates) == 1
    # twin: bob's own certificate, the same serial, renews
    delivery = renewals.renew(victim, p12_password=P12_PW, csr_pem=None)
    assert delivery.issued.account == "bob" and len(inst.ca.list_issued()) == before + 1


def _plan_b(inst: Instance, tmp_path: Path) -> None:
    """docs/certificates.md, "B. A new CA beside the old one", with the CA's own API."""
    certs = inst.home.certs_dir
    old_ca = (certs / "ca.crt").read_bytes()
    key, ca = _lookalike_ca(tmp_path, "davserver CA 2")
    (certs / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    (certs / "ca.crt.new").write_bytes(ca.public_bytes(serialization.Encoding.PEM) + old_ca)
    shutil.move(certs / "ca.crt.new", certs / "ca.crt")
    (certs / "crl.pem").unlink()
    CertificateAuthority(certs).write_crl()  # `davserver cert crl`


def test_renewal_follows_a_ca_renewal_without_restart(inst: Instance, tmp_path: Path) -> None:
    renewals = _renewals(inst)
    old_ca_cert = _identity(inst.clients["alice"].crt)
    foreign_key, foreign = _lookalike_ca(tmp_path, "Some Other CA")
    stranger = _client(foreign_key, foreign, "alice", x509.random_serial_number())
    assert renewals.due(old_ca_cert, NOW) and not renewals.due(stranger, NOW)
    _plan_b(inst, tmp_path)
    new_ca_cert = parse_certificate(x509.load_pem_x509_certificate(
        issuance.deliver(inst.home, "alice", p12_password=P12_PW).certificate_pem).public_bytes(
        serialization.Encoding.DER))
    assert new_ca_cert.issuer == "CN=davserver CA 2"
    for cert, due in ((new_ca_cert, True), (old_ca_cert, True), (stranger, False)):
        assert renewals.due(cert, NOW) is due, cert.issuer
    # the old CA's certificate renews, signed by the new CA
    renewed = renewals.renew(old_ca_cert, p12_password=P12_PW, csr_pem=None)
    assert x509.load_pem_x509_certificate(renewed.certificate_pem).issuer.rfc4514_string() == "CN=davserver CA 2"
    # outside the window (30 days, the certificates run a year): not due, whichever CA
    late = Renewals(inst.home, None, renew_before_days=30, revoke_renewed=False, renew=issuance.renew)
    assert not late.due(new_ca_cert, NOW) and not late.due(old_ca_cert, NOW)


# --- invitations: a lifetime the store and every listing can hold -------------------------


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_invitation_lifetime_is_finite_and_at_most_a_year(request: pytest.FixtureRequest, tmp_path: Path,
                                                         backend: str) -> None:
    from davserver.config import EnrolmentConfig
    from davserver.invitations import MAX_VALID_SECONDS, Invitations
    from davserver.store.redis import RedisStore

    store = (RedisStore(request.getfixturevalue("redis_url"), prefix=f"review-{tmp_path.name}:")
             if backend == "redis" else SQLiteStore(tmp_path / "state.db"))
    try:
        invitations = Invitations(store, EnrolmentConfig(enabled=True, url="https://dav.example.org:8444"))
        for bad in (float("inf"), float("nan"), -1.0, 0.0, MAX_VALID_SECONDS + 1, 1e300):
            with pytest.raises(ValueError, match="at most 31536000 seconds"):
                invitations.create("alice", valid_for=bad)
        assert invitations.open() == []  # nothing stored by a refusal
        # twins: the longest lifetime, and the default, are stored and listed
        _, longest = invitations.create("alice", valid_for=MAX_VALID_SECONDS)
        _, default = invitations.create("bob")
        assert [i.account for i in invitations.open()] == ["bob", "alice"]
        assert (longest.expires - longest.created).total_seconds() == MAX_VALID_SECONDS
        assert (default.expires - default.created).total_seconds() == 259200
    finally:
        store.close()
