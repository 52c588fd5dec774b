"""TOTP step-up, grants and throttling in the pure core: injected clock, real SQLite store, no sockets."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest

from davserver.accounts import Account, Accounts, BoundCert
from davserver.auth.core import Authenticator, Credentials
from davserver.auth.identity import CertIdentity
from davserver.auth.passwords import hash_password
from davserver.config import IdentityConfig, ShareConfig, ThrottleConfig, TOTPConfig
from davserver.store import SQLiteStore

T0 = datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a 30 s step
SECRET = pyotp.random_base32()
PW = "right-password"
FP1, FP2 = "1" * 64, "2" * 64


def cert(fp: str = FP1) -> CertIdentity:
    return CertIdentity(fp, "1A" if fp == FP1 else "2B", "CN=alice", "CN=ca", "alice", (), (), (),
                        T0 - timedelta(days=1), T0 + timedelta(days=365), True)


ALICE = Account("alice", hash_password(PW), certificates=(BoundCert(FP1), BoundCert(FP2)), totp_secret=SECRET)
ACCOUNTS = Accounts({"alice": ALICE})
TOTP_SHARE = ShareConfig("secure", Path("/s"), writers=("*",), require=("password", "totp"))
PW_SHARE = ShareConfig("files", Path("/f"), writers=("*",), require=("password",))
CERT_SHARE = ShareConfig("open", Path("/o"), writers=("*",), require=())


def code(at: datetime, steps: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(at + timedelta(seconds=30 * steps))


@pytest.fixture
def auth(tmp_path: Path) -> Iterator[Authenticator]:
    store = SQLiteStore(tmp_path / "state.db")
    yield Authenticator(
        IdentityConfig(), cache_seconds=300, store=store,
        totp_config=TOTPConfig(grant_idle_seconds=600, grant_absolute_seconds=3600),
        throttle=ThrottleConfig(lock_after=5, address_lock_after=5, lock_seconds=900, delay_after=2,
                                base_delay_seconds=0.25),
    )
    store.close()


def ask(auth: Authenticator, password: str | None, *, at: datetime = T0, fp: str = FP1,
        share: ShareConfig = TOTP_SHARE, accounts: Accounts = ACCOUNTS, peer: str = "10.0.0.1", user: str = "alice"):
    creds = None if password is None else Credentials(user, password)
    return auth.decide(cert=cert(fp), credentials=creds, accounts=accounts, revoked=frozenset(), share=share,
                       require=share.require, write=False, now=at, peer=peer)


def test_password_plus_code_opens_a_grant(auth: Authenticator) -> None:
    d = ask(auth, PW + code(T0))
    assert d.allowed and d.factors == ("password", "totp")
    assert d.grant_expires == pytest.approx(T0.timestamp() + 600)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        (None, "no_credentials"),
        (PW, "otp_required"),  # missing code: a challenge, not a failure
        ("wrong-password" + "123456", "bad_password"),
        ("wrong-password", "bad_password"),
        (PW + "000000", "bad_otp"),
    ],
)
def test_without_a_grant(auth: Authenticator, typed: str | None, reason: str) -> None:
    if typed and typed.endswith("000000") and code(T0) == "000000":
        pytest.skip("the random code happens to be 000000")
    d = ask(auth, typed)
    assert (d.allowed, d.reason) == (False, reason)


def test_codes_drift_one_step_each_way_and_no_further(auth: Authenticator) -> None:
    assert ask(auth, PW + code(T0, -2)).reason == "bad_otp"
    assert ask(auth, PW + code(T0, +2)).reason == "bad_otp"
    assert ask(auth, PW + code(T0, -1)).allowed


def test_a_code_is_used_once_per_account_across_certificates(auth: Authenticator) -> None:
    c = code(T0)
    assert ask(auth, PW + c).allowed
    d = ask(auth, PW + c, fp=FP2)  # the other certificate has no grant and may not reuse the code
    assert (d.allowed, d.reason) == (False, "otp_replayed")
    assert ask(auth, PW + code(T0, 1), fp=FP2).allowed, "a fresh code works"
    auth.end_grant(ALICE, cert(FP1))
    assert ask(auth, PW + c).reason == "otp_replayed"


def test_within_a_grant_password_alone_or_with_a_stale_code(auth: Authenticator) -> None:
    c = code(T0)
    assert ask(auth, PW + c).allowed
    later = T0 + timedelta(minutes=5)
    assert ask(auth, PW, at=later).allowed
    assert ask(auth, PW + c, at=later).allowed  # the client keeps re-sending the old code
    assert ask(auth, PW + "123456", at=later).allowed  # any six digits
    assert ask(auth, "wrong-password", at=later).reason == "bad_password"
    assert ask(auth, PW, fp=FP2, at=later).reason == "otp_required", "a grant belongs to one certificate"


def test_grant_ends_after_idle_time_and_absolute_time(auth: Authenticator) -> None:
    assert ask(auth, PW + code(T0)).allowed
    assert not ask(auth, PW, at=T0 + timedelta(seconds=601)).allowed  # idle
    assert ask(auth, PW + code(T0, 1), at=T0 + timedelta(seconds=20)).allowed
    t = T0 + timedelta(seconds=20)
    for _ in range(8):  # keep it busy: idle never passes …
        t += timedelta(seconds=500)
        d = ask(auth, PW, at=t)
        if t.timestamp() - (T0 + timedelta(seconds=20)).timestamp() < 3600:
            assert d.allowed, t
        else:
            assert d.reason == "otp_required", "… but the absolute end does"


@pytest.mark.parametrize("change", ["password", "totp"])
def test_grant_ends_when_password_or_totp_secret_changes(auth: Authenticator, change: str) -> None:
    assert ask(auth, PW + code(T0)).allowed
    if change == "password":
        changed = Accounts({"alice": replace(ALICE, password_hash=hash_password(PW))})  # same password, new hash
    else:
        changed = Accounts({"alice": replace(ALICE, totp_secret=pyotp.random_base32())})
    assert not ask(auth, PW, accounts=changed, at=T0 + timedelta(seconds=5)).allowed
    assert ask(auth, PW, accounts=ACCOUNTS, at=T0 + timedelta(seconds=5)).allowed


def test_share_policies(auth: Authenticator) -> None:
    assert ask(auth, None, share=CERT_SHARE).allowed
    assert ask(auth, PW, share=PW_SHARE).allowed
    assert ask(auth, PW, share=TOTP_SHARE).reason == "otp_required"
    required = Accounts({"alice": replace(ALICE, totp_required=True)})
    assert ask(auth, PW, share=PW_SHARE, accounts=required).reason == "otp_required"
    assert ask(auth, None, share=CERT_SHARE, accounts=required).reason == "no_credentials"
    unenrolled = Accounts({"alice": replace(ALICE, totp_secret=None)})
    assert ask(auth, PW + code(T0), accounts=unenrolled).reason == "totp_not_enrolled"


def test_failures_delay_then_lock_and_the_lock_holds_for_the_right_password(auth: Authenticator) -> None:
    delays = [ask(auth, f"nope-{i}").delay for i in range(4)]  # distinct: a repeat counts once
    assert delays[:2] == [0, 0] and 0 < delays[2] < delays[3]
    assert ask(auth, "nope-4").reason == "bad_password"  # the fifth failure sets the lock
    d = ask(auth, PW + code(T0))
    assert (d.allowed, d.reason) == (False, "locked")
    later = T0 + timedelta(seconds=901)
    assert ask(auth, PW + code(later), at=later).allowed, "the lock lifts by itself"


def test_one_accounts_certificates_do_not_lock_out_the_address(auth: Authenticator) -> None:
    # The address lockout counts distinct accounts (tests/test_lockout.py has the rest of the rule).
    for i, fp in enumerate(itertools.islice(itertools.cycle([FP1, FP2]), 10)):
        ask(auth, f"nope-{i}", fp=fp, peer="10.9.9.9")
    assert ask(auth, PW, share=PW_SHARE, fp=FP2, peer="10.9.9.9").reason == "locked", "each pair is locked out"
    third = Accounts({"alice": replace(ALICE, certificates=(*ALICE.certificates, BoundCert("3" * 64)))})
    assert ask(auth, PW, share=PW_SHARE, fp="3" * 64, peer="10.9.9.9", accounts=third).allowed, (
        "the address is not: one account counts once")


def test_a_success_forgives_earlier_typos(auth: Authenticator) -> None:
    for _ in range(4):
        ask(auth, "typo-typo-typo", share=PW_SHARE, peer="")
    assert ask(auth, PW, share=PW_SHARE, peer="").allowed
    for _ in range(4):
        ask(auth, "typo-typo-typo", share=PW_SHARE, peer="")
    assert ask(auth, PW, share=PW_SHARE, peer="").allowed, "four plus four typos never reached five in a row"


def test_browser_step_up(auth: Authenticator) -> None:
    assert not auth.step_up(account=ALICE, cert=cert(), password=PW, code="000001", now=T0).allowed
    d = auth.step_up(account=ALICE, cert=cert(), password=PW, code=code(T0), now=T0)
    assert d.allowed and auth.current_grant(ALICE, cert(), T0) is not None
    assert ask(auth, PW).allowed  # a non-interactive client, password only
    auth.end_grant(ALICE, cert())
    assert auth.current_grant(ALICE, cert(), T0) is None
    assert ask(auth, PW).reason == "otp_required"
