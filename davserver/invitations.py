"""One-time enrolment links: ``davserver cert invite`` makes them, the enrolment listener spends them.

A token is 256 random bits (``secrets.token_urlsafe(32)``), shown once and stored only as its
SHA-256: whoever reads the state store (SQLite file, Redis) cannot enrol. A plain hash, not a
slow password hash, is enough because the token is not guessable to begin with.

An invitation is open until it is spent (one success: two racing requests, one wins),
expires (``enrolment.invite_seconds``), is burned (``enrolment.invite_max_failures`` failed
sign-ins) or is withdrawn (``cert invite --revoke``). The store keeps at most
``enrolment.max_open_invitations`` records; closed ones stay for one more lifetime so a late
visitor hears "gone" (410) rather than "unknown" (404). Times are POSIX seconds; ``now`` may be
passed in so every rule is a fast unit test.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import Config, EnrolmentConfig
from .settings_schema import setting
from .store.base import InvitationRecord, StateStore

__all__ = [
    "Invitation", "InvitationError", "InvitationGone", "Invitations", "TooManyInvitations",
    "MAX_VALID_SECONDS", "UnknownInvitation", "default_base_url", "server_fingerprint", "token_digest",
]

_TOKEN_BYTES = 32  # 256 bits; the issue asks for at least 128
#: Longest lifetime of one invitation (seconds): a year, the bound of ``enrolment.invite_seconds``
#: and of ``cert invite --valid-for``.
MAX_VALID_SECONDS = float(setting("enrolment.invite_seconds").hi or 0)
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")  # token_urlsafe alphabet; 22 chars = 128 bits


@dataclass(frozen=True)
class Invitation:
    """An invitation as callers see it (never the token)."""

    account: str
    created: datetime  # UTC
    expires: datetime  # UTC
    failures: int


class InvitationError(Exception):
    """Base of the invitation errors; the message is fit for the user."""


class UnknownInvitation(InvitationError):
    """No such invitation, or a string that cannot be a token (the enrolment listener answers 404)."""


class InvitationGone(InvitationError):
    """The invitation was spent, expired, burned after too many failures or withdrawn (410).

    ``reason`` is one of ``spent``, ``expired``, ``burned``, ``revoked``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"this invitation is {reason}; ask for a new one")
        self.reason = reason


class TooManyInvitations(InvitationError):
    """``enrolment.max_open_invitations`` invitations are open; nothing was stored."""


def token_digest(token: str) -> str:
    """SHA-256 of the token as lower-case hex: the only form in which a token is stored."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _public(record: InvitationRecord) -> Invitation:
    return Invitation(record.account, _dt(record.created), _dt(record.expires), record.failures)


def server_fingerprint(config: Config) -> str | None:
    """SHA-256 of the server certificate (``tls.certificate``, the one the enrolment
    listener presents) as browsers show it: upper-case hex pairs joined by colons
    (``AB:12:…``, 95 characters); None when the file cannot be read. ``cert invite`` prints
    it with the link, so a user whose browser warns about a private CA can compare it
    before typing a password (docs/clients.md, "You received a link")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(config.tls.certificate.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def default_base_url(config: Config) -> str:
    """``enrolment.url``, else ``https://NAME:PORT`` with the first name of the server certificate's
    subject alternative names that is not a loopback name (``localhost``, 127.0.0.1, ::1; every
    certificate ``davserver init`` makes starts with those), else ``localhost``.

    Raises InvitationError when the certificate cannot be read.
    """
    e = config.enrolment
    if e.url:
        return e.url
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(config.tls.certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvitationError(
            f"cannot read the server certificate {config.tls.certificate} ({exc}); "
            "set enrolment.url in the configuration"
        ) from None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    chosen = next((n for n in names if n not in ("localhost", "127.0.0.1", "::1")), "localhost")
    host = f"[{chosen}]" if ":" in chosen else chosen
    return f"https://{host}:{e.port}"


class Invitations:
    """Invitations kept in the state store (SQLite or Redis: every node sees the same ones).

    ``base_url`` is used when ``config.url`` is unset (see default_base_url()).
    """

    def __init__(self, store: StateStore, config: EnrolmentConfig, *, base_url: str | None = None) -> None:
        self.store = store
        self.config = config
        self.base_url = (config.url or base_url or "").rstrip("/")

    def create(self, account: str, *, valid_for: float | None = None,
               now: float | None = None) -> tuple[str, Invitation]:
        """A new invitation for `account`, valid for `valid_for` seconds (default
        ``enrolment.invite_seconds``); returns the token (shown once) and the invitation.

        Raises ValueError for a `valid_for` that is not a finite number of seconds in
        (0, MAX_VALID_SECONDS] (an infinite one would be stored and then break every listing
        of invitations), TooManyInvitations at the bound.
        """
        now = time.time() if now is None else now
        lifetime = self.config.invite_seconds if valid_for is None else valid_for
        if not (math.isfinite(lifetime) and 0 < lifetime <= MAX_VALID_SECONDS):
            raise ValueError(f"an invitation is valid for more than 0 and at most {MAX_VALID_SECONDS:.0f} "
                             f"seconds (a year), not {lifetime!r}")
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        expires = now + lifetime
        record = InvitationRecord(token_digest(token), account, now, expires, expires + lifetime)
        if not self.store.add_invitation(record, now, self.config.max_open_invitations):
            raise TooManyInvitations(
                f"{self.config.max_open_invitations} invitations are open (enrolment.max_open_invitations); "
                "withdraw some with `davserver cert invite --revoke ACCOUNT` or raise the setting"
            )
        return token, _public(record)

    def _record(self, token: str, now: float) -> InvitationRecord:
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise UnknownInvitation("no such invitation")
        record = self.store.get_invitation(token_digest(token))
        if record is None or now >= record.keep_until:  # Redis drops it by its own clock
            raise UnknownInvitation("no such invitation")
        return record

    @staticmethod
    def _gone(record: InvitationRecord, now: float) -> InvitationGone:
        return InvitationGone("expired" if record.state == "open" and now >= record.expires else record.state)

    def peek(self, token: str, *, now: float | None = None) -> Invitation:
        """The open invitation of `token`; raises UnknownInvitation or InvitationGone."""
        now = time.time() if now is None else now
        record = self._record(token, now)
        if not record.is_open(now):
            raise self._gone(record, now)
        return _public(record)

    def record_failure(self, token: str, *, now: float | None = None) -> int:
        """Count a failed sign-in on the invitation; returns the failures so far. The one that
        reaches ``enrolment.invite_max_failures`` burns it (later calls raise InvitationGone).
        Raises UnknownInvitation or InvitationGone when it is not open."""
        now = time.time() if now is None else now
        record = self._record(token, now)
        n = self.store.fail_invitation(record.digest, now, self.config.invite_max_failures)
        if n == 0:
            raise self._gone(self.store.get_invitation(record.digest) or record, now)
        return n

    def spend(self, token: str, *, now: float | None = None) -> Invitation:
        """Use the invitation up: exactly one of several racing callers gets it back, the others
        (and every later call) get InvitationGone; UnknownInvitation when there is none."""
        now = time.time() if now is None else now
        record = self._record(token, now)
        if not self.store.spend_invitation(record.digest, now):
            raise self._gone(self.store.get_invitation(record.digest) or record, now)
        return _public(record)

    def unspend(self, token: str, *, now: float | None = None) -> bool:
        """Undo the spend() this caller won, when issuing the certificate then failed (the CA
        unreadable, the disk full, the accounts file locked): the link works again, with the
        failures it had ("a failed command changes nothing"). False when it is no longer
        spent or has expired meanwhile; raises UnknownInvitation when there is none.

        Only the winner of spend() may call it: a racing request that lost saw 410 and may
        try again once the link is open again."""
        now = time.time() if now is None else now
        return self.store.unspend_invitation(self._record(token, now).digest, now)

    def open(self, *, now: float | None = None) -> list[Invitation]:
        """Open invitations, soonest expiry first."""
        now = time.time() if now is None else now
        return [_public(r) for r in self.store.open_invitations(now)]

    def revoke(self, account: str, *, now: float | None = None) -> int:
        """Withdraw every open invitation of `account`; returns how many."""
        return self.store.revoke_invitations(account, time.time() if now is None else now)

    def url(self, token: str) -> str:
        """The link to send: ``<base>/enrol/<token>``. Raises InvitationError without a base URL."""
        if not self.base_url:
            raise InvitationError("no enrolment URL: set enrolment.url in the configuration")
        return f"{self.base_url}/enrol/{token}"

