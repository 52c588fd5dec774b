"""Password hashing with argon2id (RFC 9106 parameters from argon2-cffi), and the
preparation of a password before it is hashed or checked.

Passwords are prepared as RFC 8265 §4.2 (PRECIS OpaqueString, which RFC 7617 §2.1
names for Basic with ``charset="UTF-8"``) enforces them: every non-ASCII space
(Unicode category Zs) becomes U+0020, then the text is put in Unicode Normalization
Form C. The profile maps no widths and no case (§4.2.2 step 1: fullwidth and
halfwidth characters "MUST NOT" be mapped), so neither does davserver. Characters the
profile disallows (controls) are not refused, so no existing password stops working.
So ``é`` typed as one code point (NFC, Windows, Linux) or as ``e`` + U+0301 (NFD,
macOS file names, some input methods) is the same password.

`hash_password` hashes the prepared form. Hashes made before preparation existed
hold whatever form was typed; `password_forms` therefore also yields the typed text
as it came, and its NFD form, so a hash made from an NFD password keeps working
whichever form the client sends. Those extra forms cost one more argon2 check each,
and only for passwords whose forms differ (ASCII passwords get exactly one).
"""

from __future__ import annotations

import os
import threading
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["hash_password", "needs_rehash", "password_forms", "prepare_password", "verify_password"]

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


def prepare_password(password: str) -> str:
    """`password` as RFC 8265 §4.2 OpaqueString enforcement makes it: non-ASCII spaces
    (category Zs) mapped to U+0020, then NFC. Never raises; idempotent."""
    mapped = "".join(" " if ch != " " and unicodedata.category(ch) == "Zs" else ch for ch in password)
    return unicodedata.normalize("NFC", mapped)


def password_forms(typed: str) -> tuple[str, ...]:
    """The texts to check a typed password against a stored hash with, most likely
    first and without repeats: the prepared form (what `hash_password` has hashed
    since preparation began), the typed text unchanged and its NFD form (hashes made
    earlier from a non-NFC password). One element for ASCII text."""
    prepared = prepare_password(typed)
    forms = [prepared, typed, unicodedata.normalize("NFD", typed)]
    return tuple(dict.fromkeys(forms))


def hash_password(password: str) -> str:
    """An argon2id hash of `password` after `prepare_password` (so NFC and NFD
    spellings of one password get a hash both verify against)."""
    with _checks:
        return _hasher.hash(prepare_password(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time check (argon2 compares digests with a constant-time compare)."""
    with _checks:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` (an argon2 PHC string) was made with other parameters than
    today's defaults of argon2-cffi, so it should be replaced at the next successful
    sign-in. Raises argon2.exceptions.InvalidHashError (a ValueError) for a string that is
    no argon2 hash."""
    return _hasher.check_needs_rehash(password_hash)
