"""The state-store contract. Times are POSIX seconds passed in by the caller.

Keys of sign-in lockouts and failure counters are opaque strings made by
auth/lockout.py; a backend compares them exactly (case-sensitive, no patterns).
The lock/locks names below are sign-in lockouts, not WebDAV locks (store/davstate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["MIN_SECRET_BYTES", "Grant", "InvitationRecord", "StateStore", "StoreUnavailable", "check_secret"]


class StoreUnavailable(Exception):
    """The state store cannot be reached: authentication that needs it fails closed."""


@dataclass(frozen=True)
class Grant:
    """A step-up session: TOTP was proven with this certificate, for this account."""

    account: str
    fingerprint: str
    epoch: str  # digest of the account's password hash + TOTP secret when the grant opened
    opened: float
    last_used: float
    idle_until: float
    expires: float  # absolute end

    def valid(self, now: float) -> bool:
        return now < self.idle_until and now < self.expires


@dataclass(frozen=True)
class InvitationRecord:
    """An enrolment invitation as stored: keyed by the SHA-256 of its token (hex), never the token.

    ``state`` is ``open``, ``spent``, ``burned`` (too many failed sign-ins) or ``revoked``; an
    ``open`` record whose ``expires`` has passed is expired. Closed and expired records are kept
    until ``keep_until`` so a late visitor is told the link is gone rather than unknown.
    """

    digest: str
    account: str
    created: float
    expires: float
    keep_until: float
    failures: int = 0
    state: str = "open"

    def is_open(self, now: float) -> bool:
        return self.state == "open" and now < self.expires


#: The fewest bytes a shared secret (`StateStore.shared_secret`) may have: 128 bits.
MIN_SECRET_BYTES = 16


def check_secret(name: str, size: int, value: bytes | None = None) -> bytes:
    """For the drivers' `shared_secret`: raise ValueError for an empty `name`, a `size`
    below MIN_SECRET_BYTES, or a stored `value` that is not `size` bytes; returns `value`
    (b"" when None)."""
    if not name:
        raise ValueError("a shared secret needs a name")
    if size < MIN_SECRET_BYTES:
        raise ValueError(f"shared secret {name!r}: {size} bytes is too short (at least {MIN_SECRET_BYTES})")
    if value is not None and len(value) != size:
        raise ValueError(f"shared secret {name!r}: the store holds {len(value)} bytes, {size} were asked for "
                         "(one name, one size)")
    return value or b""


class StateStore(Protocol):
    # one code, one use
    def use_otp_step(self, account: str, step: int) -> bool:
        """Record `step` as used; False when it (or a later step) was used already. Atomic."""

    # grants
    def open_grant(self, grant: Grant) -> None: ...
    def get_grant(self, account: str, fingerprint: str) -> Grant | None: ...
    def touch_grant(self, account: str, fingerprint: str, now: float, idle: float) -> None: ...
    def end_grant(self, account: str, fingerprint: str) -> None: ...
    def end_grants(self, account: str) -> int: ...

    # throttling
    def add_failure(self, key: str, now: float, window: float) -> int:
        """Count a failure for `key` within `window` seconds; returns the count. Atomic."""

    def clear_failures(self, key: str) -> None: ...
    def set_lock(self, key: str, until: float) -> None: ...
    def lock_until(self, key: str, now: float) -> float | None: ...
    def any_locked(self, keys: list[str], now: float) -> bool:
        """Whether any of the keys is locked at `now`: one round trip, asked on every request."""
    def clear_locks(self, prefix: str) -> int:
        """Remove sign-in lockouts and counters whose key starts with `prefix` (an exact,
        case-sensitive prefix: no wildcards, ``alice`` is not ``Alice``); returns how many lockouts."""

    def note_lockout(self, address: str, account: str, now: float, window: float) -> int:
        """Record that `account` was locked out from the `address` key at `now`; returns how
        many distinct accounts were locked out from it within the last `window` seconds. Atomic."""

    def clear_lockout(self, key: str) -> int:
        """Remove the lockout, counters and lockout records of exactly `key`; returns 1 when a
        lockout still in the store was removed, else 0."""

    # enrolment invitations (davserver/invitations.py)
    def add_invitation(self, record: InvitationRecord, now: float, limit: int) -> bool:
        """Store `record` unless `limit` records are kept and all of them are open. Atomic: first
        drops records past keep_until, then, to make room, closed and expired records (soonest
        expiry first). False, storing nothing, when `limit` open invitations remain."""

    def get_invitation(self, digest: str) -> InvitationRecord | None: ...

    def fail_invitation(self, digest: str, now: float, max_failures: int) -> int:
        """Count a failed sign-in on an open invitation; the one reaching `max_failures` makes it
        ``burned``. Returns the failures after this one, 0 when it is unknown or not open. Atomic."""

    def spend_invitation(self, digest: str, now: float) -> bool:
        """Turn an open invitation into ``spent``; True for exactly one of racing callers. Atomic."""

    def unspend_invitation(self, digest: str, now: float) -> bool:
        """Turn a ``spent`` invitation that has not expired back into ``open`` (the one caller
        whose spend_invitation() won, when issuing then failed); True when it did. Atomic."""

    def open_invitations(self, now: float) -> list[InvitationRecord]:
        """Open invitations, soonest expiry first."""

    def revoke_invitations(self, account: str, now: float) -> int:
        """Turn the account's open invitations into ``revoked``; returns how many."""

    # keys every process and node serving the same users must agree on
    def shared_secret(self, name: str, size: int = 32) -> bytes:
        """The random secret `name` (`size` bytes) that every process and node on this store
        shares: made by the first caller, read by every later one, atomically (racing first
        callers all get the winner's bytes). Kept until the store itself is wiped. Used for
        keys a request may meet in another process than the one that used it first: the
        CSRF tokens' HMAC key (guard.py) and the failure digests' key (auth/core.py).
        Raises StoreUnavailable when the store cannot be reached (a server then does not
        start: a per-process key would refuse tokens issued by the other processes), and
        ValueError for an empty `name`, a `size` below 16, or a stored value of another size."""

    def period_secret(self, name: str, period: int, size: int, keep_seconds: float) -> bytes:
        """The random secret of `name` for `period` (an integer, e.g. whole key periods since
        the Unix epoch; `size` bytes), shared like `shared_secret` (made by the first caller,
        the same bytes for every later one, atomically) but deleted when it is no longer
        needed, so that nothing the store keeps can bring it back (forward secrecy: the TLS
        session-ticket keys, tls_tickets.py). `keep_seconds` (float, seconds from now) is how
        long the secret of `period` must stay readable: a caller whose `keep_seconds` is <= 0
        asks for a period already over and gets fresh random bytes that are stored nowhere
        (no other process has them). The secrets of `name` for periods before ``period - 1``
        are deleted by the same call (SQLite, with ``secure_delete`` and a WAL checkpoint
        that truncates the WAL file: their bytes are overwritten in the file); on Redis a
        secret expires `keep_seconds` after it was made (``SET ... NX PX``). Raises
        StoreUnavailable when the store cannot be reached, ValueError as `shared_secret`."""

    def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot be reached."""

    def close(self) -> None: ...
