"""TOTP (RFC 6238): 30-second steps, 6 digits, at most one step of clock drift
either way. The matched step is returned so the caller can refuse its reuse."""

from __future__ import annotations

import hmac

import pyotp

__all__ = ["STEP_SECONDS", "match_step", "new_secret", "provisioning_uri"]

STEP_SECONDS = 30
_DRIFT_STEPS = 1


def new_secret() -> str:
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def match_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code equals `code` (constant-time compares), or None."""
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now) // STEP_SECONDS
    found = None
    for step in range(current - _DRIFT_STEPS, current + _DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
            found = step
    return found
