"""Renewal of a client certificate by its holder, before it lapses (``/_davserver/renew``).

A certificate is *due* within ``enrolment.renew_before_days`` days of its notAfter; the
signed-in page then offers renewal and the listing shows a banner (listing.py). The new
certificate is issued and bound beside the old one (issuance.renew). The old one stays
valid until it expires, unless ``enrolment.revoke_renewed`` is true: then it is revoked
once the new one has been **used**, i.e. at the first request the guard allows with the
new certificate's fingerprint (:meth:`Renewals.note_use`). Revoking at once would lock
out every device still holding the old certificate before the new one is installed.

Pending revocations live in the state store, so every node sees them (two keys per
renewal, expiring with the new certificate): ``renewal:<new fingerprint>`` says one is
pending, ``renewal:<new fingerprint>:<old serial>`` names the certificate to revoke.
A node looks at the store once per new fingerprint it sees (a bounded in-process set);
a look-up that fails (the store unreachable, the CA unwritable) is tried again at the
next request, so a brief Redis outage never leaves a renewed certificate unrevoked.

"The built-in CA issued it" means: its issuer is one of the CAs in ``certs/ca.crt`` (read
again whenever that file changes: after a CA renewal by docs/certificates.md, plan B, the
file holds the new CA and the old one, and both CAs' certificates are renewed, by the new
CA) and ``certs/issued/<serial>.crt`` is this very certificate (same SHA-256 fingerprint):
a certificate from another CA that shares the name (every ``davserver init`` CA is
``CN=davserver CA``) and a serial of ours is never renewed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import instance
from .accounts import Account
from .auth.identity import CertIdentity
from .auth.lockout import Lockouts
from .config import Home
from .files import FileWatch
from .pki import CertificateAuthority, PKIError, serial_hex
from .store.base import StateStore

__all__ = ["Renewals", "days_left", "renew_serial"]

log = logging.getLogger("davserver.renewal")

#: Fingerprints checked for a pending revocation, remembered per process (then cleared).
_MAX_CHECKED = 10_000


def days_left(cert: CertIdentity, now: datetime) -> float:
    """Days (fractional) until `cert` expires; negative once it has."""
    return (cert.not_after - now) / timedelta(days=1)


def renew_serial(home: Home, store: StateStore | None, serial: str, *, p12_password: str | None = None,
                 csr_pem: bytes | None = None, renew: Callable[..., Any] | None = None) -> Any:
    """Renew certificate `serial` (upper-case hex) of `home`: the one path of every renewal,
    the holder's (:meth:`Renewals.renew`, ``/_davserver/renew``) and the administrator's
    (``davserver cert renew``), so the two cannot differ. `renew` is ``issuance.renew``
    (the default) and returns its ``Delivery``. With a `store` (pass it when
    ``enrolment.revoke_renewed`` is true, else None), the old certificate is noted for
    revocation at the first request the new one makes (:meth:`Renewals.note_use`, on any
    node sharing the store); the note expires with the new certificate. Raises what
    ``issuance.renew`` raises, and what the store raises (StoreUnavailable) after the new
    certificate was issued and bound (the old one then stays valid)."""
    if renew is None:
        from .issuance import renew as issue_renewal

        renew = issue_renewal
    delivery = renew(home, serial, p12_password=p12_password, csr_pem=csr_pem)
    if store is not None:
        new = delivery.issued
        Lockouts(store.lockouts).note_renewal(new.fingerprint, serial, new.not_after.timestamp())
    return delivery


class Renewals:
    """Renewal for the holders of certificates issued by the built-in CA of `home`.

    `renew_before_days` is ``enrolment.renew_before_days``; `revoke_renewed` is
    ``enrolment.revoke_renewed``; `renew` is ``issuance.renew`` (home, serial,
    p12_password=, csr_pem=) -> issuance.Delivery; `form_bytes` is ``enrolment.form_bytes``,
    the largest renewal form body (bytes) the page reads."""

    def __init__(self, home: Home, store: StateStore | None, *, renew_before_days: int, revoke_renewed: bool,
                 renew: Callable[..., Any], form_bytes: int = 16384) -> None:
        self.home = home
        self.form_bytes = form_bytes
        self.store = store
        self.renew_before_days = renew_before_days
        self.revoke_renewed = revoke_renewed
        self._renew = renew
        self._checked: set[str] = set()
        self._ca_names: frozenset[str] = frozenset()
        self._ca_watch = FileWatch(CertificateAuthority(home.certs_dir).ca_cert_path)
        self._lock = threading.Lock()

    def due(self, cert: CertIdentity, now: datetime) -> bool:
        """Whether `cert` may be renewed now: the built-in CA issued it (an enterprise
        CA's certificates are renewed by that CA; see the module docstring) and it expires
        within ``renew_before_days``. Costs two ``os.stat`` calls (the CA file, the
        inventory entry); the CA file is read again only when it changed."""
        if days_left(cert, now) > self.renew_before_days or cert.issuer not in self._ca_subjects():
            return False
        return bool(self._issued_path(cert).is_file())

    def _issued_path(self, cert: CertIdentity) -> Path:
        try:
            serial = serial_hex(int(cert.serial, 16))
        except ValueError:
            serial = "-"
        return CertificateAuthority(self.home.certs_dir).issued_dir / f"{serial}.crt"

    def _ca_subjects(self) -> frozenset[str]:
        """The subjects (RFC 4514) of every CA in the built-in CA file, re-read when its
        files.FileStamp changed; empty without a readable file."""
        changed, stamp = self._ca_watch.look()
        if stamp is None:
            return frozenset()
        if changed:
            try:
                cas = x509.load_pem_x509_certificates(self._ca_watch.path.read_bytes())
            except (OSError, ValueError):
                return frozenset()  # half written: read again at the next request
            self._ca_names = frozenset(ca.subject.rfc4514_string() for ca in cas)
            self._ca_watch.seen = stamp
        return self._ca_names

    def _check_ours(self, cert: CertIdentity) -> None:
        """Raise PKIError unless ``issued/<serial>.crt`` is `cert` itself (same SHA-256)."""
        try:
            der = x509.load_pem_x509_certificate(self._issued_path(cert).read_bytes()).public_bytes(
                serialization.Encoding.DER)
        except (OSError, ValueError):
            der = b""
        if hashlib.sha256(der).hexdigest() != cert.fingerprint.lower():
            raise PKIError(f"certificate {cert.serial} was not issued by this server's CA; "
                           "ask your administrator for a new one")

    def renew(self, cert: CertIdentity, *, p12_password: str | None, csr_pem: bytes | None) -> Any:
        """Issue the successor of `cert` (an issuance.Delivery); with ``revoke_renewed``,
        note that `cert` goes once the successor is used. Raises what issuance.renew
        raises (IssuanceError, PKIError for a certificate the built-in CA did not issue:
        one whose serial is ours but whose bytes are not is refused before anything is issued)."""
        self._check_ours(cert)
        return renew_serial(self.home, self.store if self.revoke_renewed else None, cert.serial,
                            p12_password=p12_password, csr_pem=csr_pem, renew=self._renew)

    def note_use(self, account: Account, cert: CertIdentity, now: datetime) -> str | None:
        """Called for every request the guard allows: the first one with a renewed
        certificate revokes its predecessor (``revoke_renewed``). Returns the serial
        revoked, else None. Costs a set lookup once a fingerprint has been checked.
        Raises what the store raises (StoreUnavailable) and OSError; the fingerprint is
        then looked up again at its next request."""
        if not self.revoke_renewed or self.store is None:
            return None
        with self._lock:
            if cert.fingerprint in self._checked:
                return None
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked.add(cert.fingerprint)
        try:
            return self._revoke_predecessor(self.store, account, cert, now.timestamp())
        except BaseException:
            with self._lock:
                self._checked.discard(cert.fingerprint)  # not done: look again next time
            raise

    def _revoke_predecessor(self, store: StateStore, account: Account, cert: CertIdentity,
                            stamp: float) -> str | None:
        notes = Lockouts(store.lockouts)
        if not notes.renewal_pending(cert.fingerprint, stamp):
            return None
        revoked = None
        for bound in account.certificates:
            if bound.serial and notes.renewed(cert.fingerprint, bound.serial, stamp):
                revoked = self._revoke(bound.serial)
        notes.clear_renewal(cert.fingerprint)
        return revoked

    def _revoke(self, serial: str) -> str | None:
        try:
            item = CertificateAuthority(self.home.certs_dir).revoke(serial)
        except PKIError as exc:
            log.warning("renewed certificate %s not revoked: %s", serial, exc)
            return None
        instance.unbind_certificates(self.home, [item])
        log.info("certificate %s of %s revoked: its renewal has been used", item.serial, item.account)
        return item.serial
