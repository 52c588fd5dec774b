"""One place decides whether a request may proceed, and why not.

The client only ever learns "invalid credentials" (401) or, for an
authenticated account that may not write, "forbidden" (403); the precise
reason goes to the audit log. "Missing" is kept apart from "wrong": a missing
factor is a challenge, a wrong one is a failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from ..accounts import Account, Accounts
from ..config import IdentityConfig, ShareConfig
from .identity import CertIdentity
from .passwords import verify_password

__all__ = ["Authenticator", "Credentials", "Decision", "authorize"]


@dataclass(frozen=True)
class Credentials:
    """What the Basic header said; ``malformed`` when it could not be decoded."""

    user: str = ""
    password: str = ""
    malformed: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int  # 0 when allowed; otherwise what the client is told (401, 403)
    reason: str  # "ok" or a reason code for the audit log
    account: Account | None = None

    @classmethod
    def deny(cls, reason: str, account: Account | None = None, status: int = 401) -> Decision:
        return cls(False, status, reason, account)


def authorize(account: Account, share: ShareConfig | None, write: bool) -> str | None:
    """The reason an authenticated account may not do this on that share, or None."""
    if share is None:
        return "write_denied" if write else None
    if not share.may_read(account.name, account.groups):
        return "share_denied"
    if write and share.read_only:
        return "read_only"
    if write and not share.may_write(account.name, account.groups):
        return "write_denied"
    return None


class _VerifiedCache:
    """Verified (account, certificate, password) triples, kept briefly so argon2
    runs once per few minutes instead of on every request.

    Entries hold a keyed digest of the password, never the password, and the
    password hash they were verified against: a password change misses.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: dict[tuple[str, str, bytes], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    def hit(self, account: Account, fingerprint: str, password: str, now: float) -> bool:
        if self.ttl <= 0:
            return False
        entry = self._entries.get((account.name, fingerprint, self._digest(password)))
        return entry is not None and entry[0] > now and entry[1] == account.password_hash

    def remember(self, account: Account, fingerprint: str, password: str, now: float) -> None:
        if self.ttl <= 0 or account.password_hash is None:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[(account.name, fingerprint, self._digest(password))] = (
                now + self.ttl,
                account.password_hash,
            )


class Authenticator:
    def __init__(self, identity: IdentityConfig, *, cache_seconds: float) -> None:
        self.identity = identity
        self._cache = _VerifiedCache(cache_seconds)

    def account_for(self, cert: CertIdentity, accounts: Accounts) -> Account | None:
        """Fingerprint binding first; then the admin's subject rules, in order."""
        name = accounts.owner_of(cert.fingerprint)
        if name is None:
            for rule in self.identity.subject_rules:
                candidates = (cert.common_name,) if rule == "cn" else cert.emails
                name = next((c for c in candidates if c and c in accounts), None)
                if name is not None:
                    break
        return accounts.get(name) if name is not None else None

    def check_certificate(
        self, cert: CertIdentity | None, accounts: Accounts, revoked: frozenset[str], now: datetime
    ) -> Decision:
        """Steps that need only the certificate: trust facts, revocation, the account."""
        if cert is None:
            return Decision.deny("no_cert")
        if not cert.client_auth:
            return Decision.deny("bad_eku")
        if not cert.is_current(now):
            return Decision.deny("cert_expired")
        if cert.serial in revoked:
            return Decision.deny("revoked")
        account = self.account_for(cert, accounts)
        if account is None:
            return Decision.deny("unknown_cert")
        if not account.enabled:
            return Decision.deny("disabled", account)
        return Decision(True, 0, "ok", account)

    def decide(
        self,
        *,
        cert: CertIdentity | None,
        credentials: Credentials | None,
        accounts: Accounts,
        revoked: frozenset[str],
        share: ShareConfig | None,
        require: tuple[str, ...],
        write: bool,
        now: datetime,
    ) -> Decision:
        found = self.check_certificate(cert, accounts, revoked, now)
        if not found.allowed:
            return found
        account = found.account
        assert account is not None and cert is not None
        if "password" in require:
            if credentials is None:
                return Decision.deny("no_credentials", account)
            if credentials.malformed:
                return Decision.deny("bad_auth_header", account)
            if credentials.user != account.name:
                return Decision.deny("user_mismatch", account)
            stamp = now.timestamp()
            if not self._cache.hit(account, cert.fingerprint, credentials.password, stamp):
                if not verify_password(account.password_hash, credentials.password):
                    return Decision.deny("bad_password", account)
                self._cache.remember(account, cert.fingerprint, credentials.password, stamp)
        denied = authorize(account, share, write)
        if denied == "share_denied":
            return Decision.deny(denied, account)
        if denied:
            return Decision.deny(denied, account, status=403)
        return Decision(True, 0, "ok", account)
