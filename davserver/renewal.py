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
A node looks at the store once per new fingerprint it sees (a bounded in-process set).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from . import instance
from .accounts import Account
from .auth.identity import CertIdentity
from .config import Home
from .pki import CertificateAuthority, PKIError
from .store.base import StateStore

__all__ = ["RENEW_DUE_KEY", "Renewals", "days_left"]

log = logging.getLogger("davserver.renewal")

#: In the WSGI environ of an allowed request: True when its certificate is due for renewal
#: (set by the guard; the listing shows a banner).
RENEW_DUE_KEY = "davserver.renew_due"

#: Fingerprints checked for a pending revocation, remembered per process (then cleared).
_MAX_CHECKED = 10_000


def days_left(cert: CertIdentity, now: datetime) -> float:
    """Days (fractional) until `cert` expires; negative once it has."""
    return (cert.not_after - now) / timedelta(days=1)


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
        self._ca_name: str | None = None
        self._lock = threading.Lock()

    def due(self, cert: CertIdentity, now: datetime) -> bool:
        """Whether `cert` may be renewed now: the built-in CA issued it (an enterprise
        CA's certificates are renewed by that CA) and it expires within ``renew_before_days``."""
        return days_left(cert, now) <= self.renew_before_days and cert.issuer == self._ca_subject()

    def _ca_subject(self) -> str | None:
        """The built-in CA's subject (RFC 4514), read once; None without a readable CA."""
        if self._ca_name is None:
            try:
                ca = x509.load_pem_x509_certificate(CertificateAuthority(self.home.certs_dir).ca_cert_path.read_bytes())
            except (OSError, ValueError):
                return None
            self._ca_name = ca.subject.rfc4514_string()
        return self._ca_name

    def renew(self, cert: CertIdentity, *, p12_password: str | None, csr_pem: bytes | None) -> Any:
        """Issue the successor of `cert` (an issuance.Delivery); with ``revoke_renewed``,
        note that `cert` goes once the successor is used. Raises what issuance.renew
        raises (IssuanceError, PKIError for a certificate the built-in CA did not issue)."""
        delivery = self._renew(self.home, cert.serial, p12_password=p12_password, csr_pem=csr_pem)
        if self.revoke_renewed and self.store is not None:
            new = delivery.issued
            until = new.not_after.timestamp()
            self.store.set_lock(f"renewal:{new.fingerprint}:{cert.serial}", until)
            self.store.set_lock(f"renewal:{new.fingerprint}", until)
        return delivery

    def note_use(self, account: Account, cert: CertIdentity, now: datetime) -> str | None:
        """Called for every request the guard allows: the first one with a renewed
        certificate revokes its predecessor (``revoke_renewed``). Returns the serial
        revoked, else None. Costs a set lookup once a fingerprint has been checked."""
        if not self.revoke_renewed or self.store is None:
            return None
        with self._lock:
            if cert.fingerprint in self._checked:
                return None
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked.add(cert.fingerprint)
        stamp = now.timestamp()
        if self.store.lock_until(f"renewal:{cert.fingerprint}", stamp) is None:
            return None
        revoked = None
        for bound in account.certificates:
            if bound.serial and self.store.lock_until(f"renewal:{cert.fingerprint}:{bound.serial}", stamp):
                revoked = self._revoke(bound.serial)
        self.store.clear_locks(f"renewal:{cert.fingerprint}")
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
