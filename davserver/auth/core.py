"""One place decides whether a request may proceed, and why not.

The client only ever learns "invalid credentials" (401) or, for an
authenticated account that may not write, "forbidden" (403); the precise
reason goes to the audit log and the throttle. "Missing" is kept apart from
"wrong": a missing factor is a challenge, a wrong one is a counted failure.

TOTP works with clients that only know user + password: the user types the
password followed by the current code, which opens a *grant* bound to the
account and the certificate; while it lasts the password alone (or with any
stale code the client keeps re-sending) is enough for that certificate.

Only six ASCII digits make a code. A password followed by six characters that are
digits in any script is read as password + code, so a code typed in Arabic-Indic
or fullwidth digits is a wrong code (counted), never an error.

Failures lead to sign-in lockouts as `lockout.py` describes: counted per factor,
each factor's count cleared only by that factor's success, so a right password
never wipes out wrong codes. A failure repeating one already counted within the
window (the same user and password) is not counted again: it tests nothing new.
Wrong codes always count, each one. Windows' Mini-Redirector retries
one sign-in eleven times (sigoden/dufs#307); those are one failure, not a lockout.

Passwords are compared after RFC 8265 OpaqueString preparation (`passwords.py`).
The Basic user must be the certificate's account; with ``auth.strip_domain``
(default on) ``DOMAIN\\user`` and ``user@domain``, as Windows sends them, are the
account when the user part is exactly its name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..access import Refusal, authorize
from ..accounts import Account, Accounts
from ..config import IdentityConfig, ShareConfig, ThrottleConfig, TOTPConfig
from ..pki import RevokedSerials
from ..store.base import Grant, StateStore
from . import totp
from .identity import CertIdentity
from .issuers import SubjectRules
from .lockout import FACTOR_OF, Lockouts
from .passwords import password_forms, prepare_password, verify_password

__all__ = ["FAILURE_KEY_NAME", "Authenticator", "Credentials", "Decision", "authorize", "credential_epoch"]

log = logging.getLogger("davserver.auth")

#: Reasons that count against the throttle: somebody guessed wrong.
FAILURES = frozenset(FACTOR_OF)
_CODE_DIGITS = totp.CODE_DIGITS


@dataclass(frozen=True)
class Credentials:
    """What the Basic header said; ``malformed`` when it could not be decoded."""

    user: str = ""
    password: str = ""
    malformed: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome of one authentication and authorisation: whether the request may
    proceed, the status the client is told when not (401 or 403; 0 when allowed), the
    audit reason (``"ok"`` or a reason code such as ``bad_password``, access.py), the
    account when the certificate named one, the factors proved beyond the certificate,
    when a TOTP grant in use ends (POSIX seconds, UTC) and how long to hold a failed
    answer back (seconds)."""

    allowed: bool
    status: int  # 0 when allowed; otherwise what the client is told (401, 403)
    reason: str  # "ok" or a reason code for the audit log
    account: Account | None = None
    factors: tuple[str, ...] = ()  # what this request proved beyond the certificate
    grant_expires: float | None = None  # POSIX time a TOTP grant in use ends
    delay: float = 0.0  # seconds to hold a failed answer back (growing with failures)

    @classmethod
    def deny(cls, reason: str, account: Account | None = None, status: int = 401) -> Decision:
        """A refusal for ``reason`` (an audit reason code) told to the client as ``status``,
        with no factors and no delay."""
        return cls(False, status, reason, account)


def credential_epoch(account: Account) -> str:
    """Changes whenever the password or the TOTP secret changes, which ends every grant."""
    material = f"{account.password_hash}|{account.totp_secret}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


#: The failure digests' key: the store's shared secret of this name (StateStore.shared_secret).
FAILURE_KEY_NAME = "failure-digest"
_FAILURE_KEY_BYTES = 32


class _Fingerprinted(Protocol):
    """What the password check, the lockout and the failure count need of a certificate."""

    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class _Holder:
    """Stands for the certificate of a form that has none (`Authenticator.verify_factors`)."""

    fingerprint: str


class _VerifiedCache:
    """Verified (account, certificate, password) triples, kept so argon2 runs once
    per login instead of on every request.

    Entries hold a keyed digest of the password, never the password, and the
    password hash they were verified against: a password change misses. The
    lifetime slides: each hit extends it by ``ttl``, up to ``max_age`` after the
    verification, so a busy client is not re-verified mid-transfer and an idle
    one is forgotten after ``ttl``.
    """

    _STRIPES = 64

    def __init__(self, ttl: float, max_age: float | None = None, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_age = max(ttl, max_age if max_age is not None else 12 * ttl)
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        # key -> (expires, verified_at, password hash)
        self._entries: dict[tuple[str, str, bytes], tuple[float, float, str]] = {}
        self._lock = threading.Lock()
        # Misses for the same key take the same stripe, so concurrent requests of
        # one login wait for a single argon2 check instead of each running one.
        self._stripes = [threading.Lock() for _ in range(self._STRIPES)]

    def key(self, account: Account, fingerprint: str, password: str) -> tuple[str, str, bytes]:
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        return (account.name, fingerprint, digest)

    def stripe(self, key: tuple[str, str, bytes]) -> threading.Lock:
        return self._stripes[key[2][0] % self._STRIPES]

    def hit(self, key: tuple[str, str, bytes], account: Account, now: float) -> bool:
        if self.ttl <= 0:
            return False
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now or not hmac.compare_digest(entry[2], account.password_hash or ""):
            return False
        expires = min(now + self.ttl, entry[1] + self.max_age)
        if expires > entry[0]:
            self._entries[key] = (expires, entry[1], entry[2])
        return True

    def remember(self, key: tuple[str, str, bytes], account: Account, now: float) -> None:
        if self.ttl <= 0 or account.password_hash is None:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl, now, account.password_hash)


class Authenticator:
    """The authentication decision of every request and form: certificate to account,
    password and TOTP per the share's ``require``, grants, and the sign-in lockout's
    counting (auth/lockout.py). Holds no framework object; time comes in as ``now``
    (an aware datetime, UTC), state through the ``StateStore``. Thread-safe."""

    def __init__(
        self,
        identity: IdentityConfig,
        *,
        cache_seconds: float,
        cache_max_seconds: float | None = None,
        store: StateStore | None = None,
        totp_config: TOTPConfig | None = None,
        throttle: ThrottleConfig | None = None,
        strip_domain: bool = True,
        failure_key: bytes | None = None,
    ) -> None:
        """``strip_domain``: accept ``DOMAIN\\user`` and ``user@domain`` as ``user`` (see
        `user_matches`). ``failure_key`` keys the digests of failures (32 bytes): by default
        the store's shared secret FAILURE_KEY_NAME, the same in every process and node on the
        store, so a repeated wrong password counts once whichever one it reaches (raises
        StoreUnavailable when the store is down); without a store, a random key."""
        self.identity = identity
        #: Raises StartupError when a rule's issuer is not one readable CA certificate.
        self.subject_rules = SubjectRules(identity.subject_rules)
        self.strip_domain = strip_domain
        if failure_key is None:
            failure_key = (store.shared_secret(FAILURE_KEY_NAME, _FAILURE_KEY_BYTES) if store is not None
                           else secrets.token_bytes(_FAILURE_KEY_BYTES))
        self._failure_key = failure_key
        self.store = store
        self.totp = totp_config or TOTPConfig()
        self.throttle = throttle or ThrottleConfig()
        self._cache = _VerifiedCache(cache_seconds, cache_max_seconds)
        self.lockouts = Lockouts(store.lockouts, self.throttle) if store is not None else None

    # --- certificate -> account -----------------------------------------------------

    def account_for(self, cert: CertIdentity, accounts: Accounts) -> Account | None:
        """Fingerprint binding first; then the admin's subject rules, in order, each for
        the certificates its issuing CA signed."""
        name = accounts.owner_of(cert.fingerprint)
        if name is None:
            # Only from the rules whose issuing CA's key signed this certificate (auth/issuers.py).
            name = next((c for c in self.subject_rules.names(cert) if c in accounts), None)
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
        if cert.serial in revoked and (
            # A CRL's serials are its issuer's; a bare set (tests) revokes the serial of any issuer.
            not isinstance(revoked, RevokedSerials) or revoked.revokes(cert.serial, cert.issuer)
        ):
            return Decision.deny("revoked")
        account = self.account_for(cert, accounts)
        if account is None:
            return Decision.deny("unknown_cert")
        if not account.enabled:
            return Decision.deny("disabled", account)
        return Decision(True, 0, "ok", account)

    # --- the whole decision ---------------------------------------------------------

    def required(self, account: Account, require: tuple[str, ...]) -> tuple[str, ...]:
        """The factors (of ``config.FACTORS``) a request of ``account`` must prove where the
        share asks for ``require``: both password and TOTP for an account marked
        ``totp: required``, else ``require`` as given."""
        return ("password", "totp") if account.totp_required else require

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
        peer: str = "",
        access: Callable[[Account], Refusal | None] | None = None,
    ) -> Decision:
        """Authenticate, then authorise: ``access`` (access.decide bound to the request's
        parsed resources) is the resource rule; without it, ``share`` and ``write`` are
        checked as one resource. A refused share is 401 like a failed sign-in (its
        existence is not confirmed); every other resource refusal is 403."""
        found = self.check_certificate(cert, accounts, revoked, now)
        if not found.allowed:
            return found
        account = found.account
        assert account is not None and cert is not None
        stamp = now.timestamp()
        needed = self.required(account, require)
        factors: tuple[str, ...] = ()
        grant_expires = None
        if needed:
            if self._locked(account, cert, peer, stamp):
                return Decision.deny("locked", account)
            if credentials is None:
                return Decision.deny("no_credentials", account)
            if credentials.malformed:
                return self._failed("bad_auth_header", account, cert, peer, stamp, "")
            if not self.user_matches(credentials.user, account.name):
                seen = f"{credentials.user}\0{credentials.password}"
                return self._failed("user_mismatch", account, cert, peer, stamp, seen)
            if "totp" in needed:
                outcome, grant_expires = self._password_and_totp(account, cert, credentials.password, stamp)
                factors = ("password", "totp")
            else:
                outcome = "ok" if self._password_ok(account, cert, (credentials.password,), stamp) else "bad_password"
                factors = ("password",)
            if outcome != "ok":
                if outcome in FAILURES:
                    return self._failed(outcome, account, cert, peer, stamp, credentials.password)
                return Decision.deny(outcome, account)
        denied = access(account) if access is not None else authorize(account, share, write)
        if denied == "share_denied":
            return Decision.deny(denied, account)
        if denied:
            return Decision.deny(denied, account, status=403)
        return Decision(True, 0, "ok", account, factors, grant_expires)

    def step_up(
        self, *, account: Account, cert: CertIdentity, password: str, code: str, now: datetime, peer: str = ""
    ) -> Decision:
        """The browser step-up form: password and code in separate fields."""
        stamp = now.timestamp()
        if self._locked(account, cert, peer, stamp):
            return Decision.deny("locked", account)
        if not self._password_ok(account, cert, (password,), stamp):
            return self._failed("bad_password", account, cert, peer, stamp, password)
        outcome, expires = self._prove_code(account, cert, code.strip(), stamp)
        if outcome != "ok":
            seen = f"{password}\0{code.strip()}"
            return self._failed(outcome, account, cert, peer, stamp, seen) if outcome in FAILURES else Decision.deny(
                outcome, account
            )
        return Decision(True, 0, "ok", account, ("password", "totp"), expires)

    def verify_factors(
        self, *, account: Account, holder: str, password: str, code: str, now: datetime, peer: str = ""
    ) -> Decision:
        """Password, and the code when the account has TOTP, of a form that opens no grant:
        the enrolment page (no client certificate yet) and renewal. `holder` stands where
        a sign-in has the certificate's fingerprint: the lockout counts failures under it
        (``acct:<account>:<holder>``), account-wide and per address exactly as for a
        sign-in (lockout.py). A used code is spent (it cannot sign in elsewhere). Denies
        with ``locked``, ``bad_password``, ``bad_otp``, ``otp_replayed`` (401, with the
        delay to hold the answer back) or ``totp_unavailable``."""
        stamp = now.timestamp()
        key = _Holder(holder)
        if self._locked(account, key, peer, stamp):
            return Decision.deny("locked", account)
        if not self._password_ok(account, key, (password,), stamp):
            return self._failed("bad_password", account, key, peer, stamp, password)
        if not account.totp_secret:
            return Decision(True, 0, "ok", account, ("password",))
        if self.store is None:
            return Decision.deny("totp_unavailable", account)
        step = totp.match_step(account.totp_secret, code.strip(), stamp)
        outcome = "bad_otp" if step is None else "ok" if self.store.use_otp_step(account.name, step) else "otp_replayed"
        if outcome != "ok":
            return self._failed(outcome, account, key, peer, stamp, "")
        if self.lockouts is not None:
            self.lockouts.succeed(account.name, holder, "totp")
        return Decision(True, 0, "ok", account, ("password", "totp"))

    def end_grant(self, account: Account, cert: CertIdentity) -> None:
        """End the TOTP grant of ``account`` on the certificate ``cert`` (sign-out): the next
        request needs a code again. Nothing without a store; raises StoreUnavailable."""
        if self.store is not None:
            self.store.end_grant(account.name, cert.fingerprint)

    def current_grant(self, account: Account, cert: CertIdentity, now: datetime) -> Grant | None:
        """The TOTP grant of ``account`` on ``cert`` still in force at ``now`` (not idle or
        past its absolute end, and opened under the current password and secret:
        ``credential_epoch``), else None; None without a store. Raises StoreUnavailable."""
        if self.store is None:
            return None
        grant = self.store.get_grant(account.name, cert.fingerprint)
        if grant is None or not grant.valid(now.timestamp()) or grant.epoch != credential_epoch(account):
            return None
        return grant

    def user_matches(self, typed: str, account: str) -> bool:
        """Whether the Basic user `typed` names `account` (the certificate's). Exactly
        equal; or, with ``strip_domain``, ``DOMAIN\\account`` (text after the last
        backslash, the down-level logon name Windows' Mini-Redirector and ``net use``
        send) or ``account@domain`` (text before the last ``@``, the UPN form). Case is
        never folded: ``Carol`` is not ``carol``."""
        if typed == account:
            return True
        if not self.strip_domain:
            return False
        if "\\" in typed and typed.rpartition("\\")[2] == account:
            return True
        return "@" in typed and typed.rpartition("@")[0] == account

    # --- factors ----------------------------------------------------------------------

    def _password_ok(self, account: Account, cert: _Fingerprinted, candidates: tuple[str, ...], now: float) -> bool:
        """True when any candidate is the password; cached candidates are tried first, without argon2.
        Each candidate is tried in the forms `passwords.password_forms` gives (prepared as
        RFC 8265 OpaqueString first, then as typed, for hashes made before preparation)."""
        candidates = tuple(dict.fromkeys(form for candidate in candidates for form in password_forms(candidate)))
        keys = [self._cache.key(account, cert.fingerprint, candidate) for candidate in candidates]
        if any(self._cache.hit(key, account, now) for key in keys):
            return True
        for key, candidate in zip(keys, candidates, strict=True):
            with self._cache.stripe(key):
                if self._cache.hit(key, account, now):  # verified while this request waited
                    return True
                if not verify_password(account.password_hash, candidate):
                    continue
                self._cache.remember(key, account, now)
            if self.lockouts is not None:  # forgives earlier wrong passwords, never wrong codes
                self.lockouts.succeed(account.name, cert.fingerprint, "password")
            return True
        return False

    def _password_and_totp(
        self, account: Account, cert: CertIdentity, typed: str, now: float
    ) -> tuple[str, float | None]:
        if not account.totp_secret:
            return "totp_not_enrolled", None
        if self.store is None:
            return "totp_unavailable", None
        tail = typed[-_CODE_DIGITS:]
        # Digits of any script mark a code attempt; only ASCII ones can match (totp.match_step).
        has_code = len(typed) > _CODE_DIGITS and tail.isdigit()
        base = typed[:-_CODE_DIGITS] if has_code else typed
        grant = self.store.get_grant(account.name, cert.fingerprint)
        if grant is not None and grant.valid(now) and grant.epoch == credential_epoch(account):
            # Within a grant: the password alone, or with whatever code the client re-sends.
            if not self._password_ok(account, cert, (base, typed) if has_code else (typed,), now):
                return "bad_password", None
            self.store.touch_grant(account.name, cert.fingerprint, now, self.totp.grant_idle_seconds)
            return "ok", min(grant.expires, now + self.totp.grant_idle_seconds)
        if not has_code:
            return ("otp_required", None) if self._password_ok(account, cert, (typed,), now) else ("bad_password", None)
        if not self._password_ok(account, cert, (base,), now):
            if self._password_ok(account, cert, (typed,), now):
                return "otp_required", None  # a password that ends in digits, typed without a code
            return "bad_password", None
        return self._prove_code(account, cert, tail, now)

    def _prove_code(self, account: Account, cert: CertIdentity, code: str, now: float) -> tuple[str, float | None]:
        if not account.totp_secret:
            return "totp_not_enrolled", None
        if self.store is None:
            return "totp_unavailable", None
        step = totp.match_step(account.totp_secret, code, now)
        if step is None:
            return "bad_otp", None
        if not self.store.use_otp_step(account.name, step):
            return "otp_replayed", None
        expires = now + self.totp.grant_absolute_seconds
        idle_until = min(expires, now + self.totp.grant_idle_seconds)
        self.store.open_grant(
            Grant(account.name, cert.fingerprint, credential_epoch(account), now, now, idle_until, expires)
        )
        if self.lockouts is not None:
            self.lockouts.succeed(account.name, cert.fingerprint, "totp")
        return "ok", idle_until

    # --- throttling --------------------------------------------------------------------

    def _locked(self, account: Account, cert: _Fingerprinted, peer: str, now: float) -> bool:
        if self.lockouts is None:
            return False
        return self.lockouts.is_locked_out(account.name, cert.fingerprint, peer, now)

    def _failed(
        self, reason: str, account: Account, cert: _Fingerprinted, peer: str, now: float, seen: str
    ) -> Decision:
        """Count the failure against its factor, for the canonical account and the certificate.

        `seen` is what was tried (the password, or user and password): for a password
        failure its keyed digest (HMAC-SHA256, never the text; NFC and NFD spellings are
        one) lets `Lockouts.fail` count a repeat within the window once. A code failure
        always counts: the same six digits in another step are a new guess (a replayed
        old code included), and in the same step forgiving them would win nothing."""
        delay = 0.0
        if self.lockouts is not None:
            factor = FACTOR_OF[reason]
            digest = ""
            if factor == "password":  # every wrong or replayed code counts (lockout.py)
                material = f"{reason}\0{prepare_password(seen)}".encode("utf-8", "surrogatepass")
                digest = hmac.new(self._failure_key, material, hashlib.sha256).hexdigest()[:32]
            delay = self.lockouts.fail(account.name, cert.fingerprint, factor, peer, now, digest)
        return Decision(False, 401, reason, account, delay=delay)
