"""Password hashing with argon2id (RFC 9106 parameters from argon2-cffi)."""

from __future__ import annotations

import os
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["hash_password", "needs_rehash", "verify_password"]

_hasher = PasswordHasher()
#: Verified against when an account has no hash, so a missing account costs the
#: same time as a wrong password and timing reveals nothing. A constant made with
#: the hasher's own parameters (a test checks they match), because hashing it at
#: import cost a quarter second and 64 MiB of memory in every process.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$WEjIyyA2xkzjUlUeEHkqIA$RGnwzGDDhZvMjfhwlvKnCnMS4l368DeT/rOCDNyTKnE"

#: Each argon2 check allocates its whole memory cost (64 MiB) and releases the GIL,
#: so unbounded concurrent checks add up (a flood of bad passwords, or every
#: request in flight missing the cache at once). At most this many run at a time;
#: the others queue, which also spreads a flood out over time.
MAX_CONCURRENT_CHECKS = max(1, min(2, (os.cpu_count() or 1)))
_checks = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)


def hash_password(password: str) -> str:
    with _checks:
        return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time check (argon2 compares digests with a constant-time compare)."""
    with _checks:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
