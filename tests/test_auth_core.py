"""The pure decision: every rule as a fast unit test, with an injected clock and no sockets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from davserver.accounts import Account, Accounts, BoundCert
from davserver.auth.core import Authenticator, Credentials
from davserver.auth.identity import CertIdentity
from davserver.auth.passwords import hash_password
from davserver.config import IdentityConfig, ShareConfig

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FP = "a" * 64
CERT = CertIdentity(
    fingerprint=FP, serial="1A", subject="CN=alice", issuer="CN=ca", common_name="alice",
    emails=("alice@example.org",), upns=(), uris=(), not_before=NOW - timedelta(days=1),
    not_after=NOW + timedelta(days=30), client_auth=True,
)
HASH = hash_password("right-password")
ACCOUNTS = Accounts({"alice": Account("alice", HASH, certificates=(BoundCert(FP),), groups=frozenset({"staff"}))})
SHARE = ShareConfig("files", Path("/srv"), writers=("*",))
RO = ShareConfig("ro", Path("/srv"), read_only=True, readers=("*",))
GOOD = Credentials("alice", "right-password")


def decide(auth: Authenticator | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = dict(cert=CERT, credentials=GOOD, accounts=ACCOUNTS, revoked=frozenset(), share=SHARE,
                require=("password",), write=False, now=NOW)
    args.update(kw)
    return (auth or Authenticator(IdentityConfig(), cache_seconds=300)).decide(**args)


def test_all_factors_present_is_allowed() -> None:
    d = decide()
    assert d.allowed and d.reason == "ok" and d.account and d.account.name == "alice"


@pytest.mark.parametrize(
    ("changes", "reason", "status"),
    [
        ({"cert": None}, "no_cert", 401),
        ({"cert": replace(CERT, client_auth=False)}, "bad_eku", 401),
        ({"now": NOW + timedelta(days=31)}, "cert_expired", 401),
        ({"now": NOW - timedelta(days=2)}, "cert_expired", 401),
        ({"revoked": frozenset({"1A"})}, "revoked", 401),
        ({"cert": replace(CERT, fingerprint="b" * 64)}, "unknown_cert", 401),
        ({"accounts": ACCOUNTS.edit("alice", enabled=False)}, "disabled", 401),
        ({"credentials": None}, "no_credentials", 401),
        ({"credentials": Credentials(malformed=True)}, "bad_auth_header", 401),
        ({"credentials": Credentials("bob", "right-password")}, "user_mismatch", 401),
        ({"credentials": Credentials("alice", "wrong")}, "bad_password", 401),
        ({"credentials": Credentials("alice", "")}, "bad_password", 401),
        ({"share": RO, "write": True}, "read_only", 403),
        ({"share": ShareConfig("t", Path("/t"), readers=("bob",))}, "share_denied", 401),
        ({"share": ShareConfig("t", Path("/t"), readers=("*",)), "write": True}, "write_denied", 403),
        ({"share": None, "write": True}, "write_denied", 403),
    ],
)
def test_each_missing_or_wrong_factor_is_refused_with_its_reason(changes: dict, reason: str, status: int) -> None:
    d = decide(**changes)
    assert (d.allowed, d.reason, d.status) == (False, reason, status)


def test_certificate_only_share_needs_no_credentials() -> None:
    assert decide(require=(), credentials=None).allowed
    assert not decide(require=(), credentials=None, revoked=frozenset({"1A"})).allowed


def test_groups_and_read_only_share() -> None:
    team = ShareConfig("t", Path("/t"), writers=("@staff",))
    assert decide(share=team, write=True).allowed
    assert decide(share=RO, write=False).allowed


def test_verified_password_is_cached_but_not_across_password_or_certificate(monkeypatch) -> None:
    calls = []
    import davserver.auth.core as core
    from davserver.auth import passwords

    real = passwords.verify_password  # what auth/core.py imports and calls

    def counting(h: str | None, p: str) -> bool:
        calls.append(p)
        return real(h, p)

    monkeypatch.setattr(core, "verify_password", counting)
    auth = Authenticator(IdentityConfig(), cache_seconds=60)
    assert decide(auth).allowed and decide(auth).allowed
    assert len(calls) == 1
    assert not decide(auth, credentials=Credentials("alice", "wrong")).allowed  # a wrong password is never cached
    assert len(calls) == 2
    changed = ACCOUNTS.edit("alice", password_hash=hash_password("new-password-1"))
    assert not decide(auth, accounts=changed).allowed  # old password after a change
    assert decide(auth, now=NOW + timedelta(seconds=61)).allowed  # expired entry: verified again
    assert len(calls) == 4
    other = replace(CERT, fingerprint="d" * 64)
    two = ACCOUNTS.edit("alice", certificates=(BoundCert(FP), BoundCert("d" * 64)))
    assert decide(auth, cert=other, accounts=two).allowed
    assert len(calls) == 5


def test_cache_lifetime_slides_while_used_and_is_capped(monkeypatch) -> None:
    calls = []
    import davserver.auth.core as core
    from davserver.auth import passwords

    real = passwords.verify_password  # what auth/core.py imports and calls

    def counting(h: str | None, p: str) -> bool:
        calls.append(p)
        return real(h, p)

    monkeypatch.setattr(core, "verify_password", counting)
    auth = Authenticator(IdentityConfig(), cache_seconds=60, cache_max_seconds=300)
    for seconds in range(0, 300, 50):  # a busy client: one request every 50 s
        assert decide(auth, now=NOW + timedelta(seconds=seconds)).allowed
    assert len(calls) == 1
    assert decide(auth, now=NOW + timedelta(seconds=300)).allowed  # the absolute cap: verified again
    assert len(calls) == 2
    assert decide(auth, now=NOW + timedelta(seconds=361)).allowed  # idle past the lifetime: verified again
    assert len(calls) == 3


def test_concurrent_misses_of_one_login_run_one_password_check(monkeypatch) -> None:
    import threading
    import time

    import davserver.auth.core as core
    from davserver.auth import passwords

    calls = []
    real = passwords.verify_password  # what auth/core.py imports and calls

    def slow(h: str | None, p: str) -> bool:
        calls.append(p)
        time.sleep(0.2)
        return real(h, p)

    monkeypatch.setattr(core, "verify_password", slow)
    auth = Authenticator(IdentityConfig(), cache_seconds=60)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(decide(auth).allowed)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 6
    assert len(calls) == 1


def test_password_checks_run_at_most_a_few_at_a_time(monkeypatch) -> None:
    """Each argon2 check allocates 64 MiB: a flood of distinct bad passwords must queue, not add up."""
    import threading
    import time

    from davserver.auth import passwords

    running = 0
    peak = 0
    lock = threading.Lock()
    real = passwords._hasher.verify

    def counting(h, p):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.05)
            return real(h, p)
        finally:
            with lock:
                running -= 1

    class Counting:
        verify = staticmethod(counting)

    monkeypatch.setattr(passwords, "_hasher", Counting())
    auth = Authenticator(IdentityConfig(), cache_seconds=60)
    threads = [
        threading.Thread(target=lambda i=i: decide(auth, credentials=Credentials("alice", f"guess-{i}")))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak <= passwords.MAX_CONCURRENT_CHECKS


def test_dummy_hash_has_the_hashers_parameters() -> None:
    """A missing account must cost what a wrong password costs."""
    from davserver.auth import passwords

    assert not passwords._hasher.check_needs_rehash(passwords._DUMMY_HASH)
    assert passwords._hasher.verify(passwords._DUMMY_HASH, "davserver-no-such-password")
    assert not passwords.verify_password(None, "davserver-no-such-password")
