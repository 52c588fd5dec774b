"""The state-store contract. Times are POSIX seconds (float, UTC) passed in by the caller.

`StateStore` is what a backend keeps for sign-in (used TOTP steps, grants), enrolment
invitations and shared secrets; its `StateStore.lockouts` is the `LockoutStore` driver
that keeps sign-in failure counters and lockouts for auth/lockout.py's rules (the shape
of SFTPGo's Defender: the rules in one class, the storage behind an interface with one
driver per backend: store/sqlite_lockout.py, store/redis_lockout.py). Keys of lockouts
and failure counters are opaque strings made by auth/lockout.py; a driver compares them
exactly (case-sensitive, no patterns). A "lock" is a WebDAV lock (store/davstate.py,
store/redis_davstate.py), never a sign-in lockout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["MIN_SECRET_BYTES", "Grant", "InvitationRecord", "LockoutStore", "StateStore", "StoreUnavailable",
           "check_secret"]


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
        """Whether the grant still holds at `now` (POSIX seconds): before both its idle end
        and its absolute end."""
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
        """Whether the invitation can still be used at `now` (POSIX seconds): ``open`` and
        not past ``expires``."""
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


class LockoutStore(Protocol):
    """The driver that keeps sign-in failure counters and lockouts: what the rules of
    auth/lockout.py (`Lockouts`, the only caller) need, nothing more. Keys are opaque,
    case-sensitive strings; times and windows are POSIX seconds (float) passed in by the
    caller, so every process and node judges by the same clock it was handed. Every
    method raises StoreUnavailable when the backend cannot be reached or cannot write
    now (the request that needed it fails closed, 503). Each method is atomic across the
    threads, processes and nodes sharing the store: racing callers never lose a count.

    Drivers: store/sqlite_lockout.py (`SQLiteLockouts`, tables ``failures``, ``lockouts``,
    ``lockout_accounts``) and store/redis_lockout.py (`RedisLockouts`, keys ``fail:``,
    ``lockout:``, ``lockouts:`` under the deployment prefix). Each also reads and clears,
    never writes, the lockouts of releases before this one (table ``locks``, keys
    ``lock:``), which may run beside it on the same store: a lockout's end is the later
    of both names."""

    def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure for `key` at `now`; a count whose window (`window` seconds from
        its first failure) has passed starts again at 1. Returns the count after this one
        (>= 1)."""

    def clear_failures(self, key: str) -> None:
        """Forget the failure count of exactly `key` (nothing when there is none)."""

    def set_lockout(self, key: str, until: float) -> None:
        """Lock `key` out until `until` (POSIX seconds); a lockout is only ever lengthened:
        an earlier `until` than the one stored changes nothing."""

    def lockout_until(self, key: str, now: float) -> float | None:
        """When the lockout of `key` ends (POSIX seconds), or None when it has none at `now`
        (never set, lifted, or ended at or before `now`)."""

    def any_locked_out(self, keys: list[str], now: float) -> bool:
        """Whether any of `keys` is locked out at `now` (False for no keys): one round trip
        (one SQLite query, one Redis MGET), asked on every request."""

    def clear_lockouts_by_prefix(self, prefix: str) -> int:
        """Lift the lockouts and forget the failure counts whose key starts with `prefix`
        (an exact, case-sensitive prefix: no wildcards, ``alice`` is not ``Alice``, ``_``
        and ``*`` are themselves). Returns how many lockout records were removed (ended
        ones still stored included)."""

    def note_lockout(self, address: str, account: str, now: float, window: float) -> int:
        """Record that `account` was locked out from the `address` key at `now`; returns how
        many distinct accounts were locked out from it within the last `window` seconds
        (one account counts once however often)."""

    def clear_lockout(self, key: str) -> int:
        """Lift the lockout of exactly `key` and forget its failure count and the lockouts
        noted against it (`note_lockout`); returns 1 when a lockout record still in the
        store was removed, else 0."""


class StateStore(Protocol):
    """What every state backend keeps: used TOTP steps, step-up grants, enrolment
    invitations, shared secrets, and (through `lockouts`) sign-in failure counters and
    lockouts. Implemented by store/sqlite.py (`SQLiteStore`) and store/redis.py
    (`RedisStore`); tests/test_store.py is the contract suite run against both. Unless
    said otherwise a method raises StoreUnavailable when the backend cannot be reached."""

    #: The sign-in lockout driver sharing this store's connections (auth/lockout.py uses it).
    lockouts: LockoutStore

    # one code, one use
    def use_otp_step(self, account: str, step: int) -> bool:
        """Record TOTP time step `step` (an integer: POSIX seconds // 30) as used by
        `account`; False when it (or a later step) was used already. Atomic: of racing
        callers with one step, exactly one gets True."""

    # grants
    def open_grant(self, grant: Grant) -> None:
        """Store `grant`, replacing the grant of the same account and certificate
        fingerprint; it lasts until its ``idle_until`` unless touched."""

    def get_grant(self, account: str, fingerprint: str) -> Grant | None:
        """The grant of `account` with the certificate of `fingerprint` (hex SHA-256), or
        None. A grant past its idle end may still be returned: check `Grant.valid`."""

    def touch_grant(self, account: str, fingerprint: str, now: float, idle: float) -> None:
        """Extend a grant still valid at `now` to ``now + idle`` seconds, never past its
        absolute ``expires``; a grant already idle past its end stays ended."""

    def end_grant(self, account: str, fingerprint: str) -> None:
        """End the grant of `account` with that certificate (nothing when there is none)."""

    def end_grants(self, account: str) -> int:
        """End every grant of `account` (password or TOTP changed, disabled, removed);
        returns how many were stored."""

    # enrolment invitations (davserver/invitations.py)
    def add_invitation(self, record: InvitationRecord, now: float, limit: int) -> bool:
        """Store `record` unless `limit` records are kept and all of them are open. Atomic: first
        drops records past keep_until, then, to make room, closed and expired records (soonest
        expiry first). False, storing nothing, when `limit` open invitations remain."""

    def get_invitation(self, digest: str) -> InvitationRecord | None:
        """The invitation whose token has the SHA-256 `digest` (hex), in whatever state, or
        None when none is kept."""

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

    def close(self) -> None:
        """Close this process's connections; the store is not used after."""
