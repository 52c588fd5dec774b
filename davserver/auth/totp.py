"""TOTP (RFC 6238): 30-second steps, 6 digits, at most one step of clock drift
either way. The matched step is returned so the caller can refuse its reuse.

A code is exactly six ASCII digits. `str.isdigit()` also accepts Arabic-Indic,
fullwidth or superscript digits, and `hmac.compare_digest` raises TypeError on
non-ASCII text, so a code typed in another script used to end in a 500: here
anything but ``[0-9]{6}`` is simply a code that does not match.
"""

from __future__ import annotations

import hmac

import pyotp

__all__ = ["CODE_DIGITS", "STEP_SECONDS", "is_code", "match_step", "new_secret", "provisioning_uri"]

STEP_SECONDS = 30
CODE_DIGITS = 6
_DRIFT_STEPS = 1
_ASCII_DIGITS = frozenset("0123456789")


def new_secret() -> str:
    """A fresh random TOTP secret: 32 base32 characters (160 bits, the HMAC-SHA1 key size
    RFC 4226 §4 recommends), as stored in the accounts file."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…`` URI (Google Authenticator's
    key-URI format, percent-encoded) that authenticator apps read from a QR code.
    Raises ValueError when ``secret`` is not base32 of at least 112 bits."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def is_code(text: str) -> bool:
    """Whether `text` has the shape of a code: exactly six ASCII digits (nothing else)."""
    return len(text) == CODE_DIGITS and all(ch in _ASCII_DIGITS for ch in text)


def match_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code equals `code` (constant-time compares), or None.

    `code` may be any text: what is not six ASCII digits never matches and never raises.
    """
    if not is_code(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now) // STEP_SECONDS
    found = None
    for step in range(current - _DRIFT_STEPS, current + _DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * STEP_SECONDS).encode("ascii"), code.encode("ascii")):
            found = step
    return found
