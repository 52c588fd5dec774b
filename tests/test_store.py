"""The state-store contract, run against every backend."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from davserver.store import Grant, SQLiteStore, StateStore
from davserver.store.redis import RedisStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        s: StateStore = RedisStore(url, prefix=f"test-{uuid.uuid4().hex}:")
    else:
        s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


def test_an_otp_step_is_accepted_once_and_never_an_older_one(store: StateStore) -> None:
    assert store.use_otp_step("alice", 100)
    assert not store.use_otp_step("alice", 100)
    assert not store.use_otp_step("alice", 99)
    assert store.use_otp_step("alice", 101)
    assert store.use_otp_step("bob", 100), "steps are per account"


def test_otp_step_is_atomic_under_threads(store: StateStore) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        wins.append(store.use_otp_step("alice", 500))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_grants_open_touch_expire_and_end(store: StateStore) -> None:
    g = Grant("alice", "fp1", "epoch", opened=0, last_used=0, idle_until=10, expires=100)
    store.open_grant(g)
    assert store.get_grant("alice", "fp1") == g
    assert store.get_grant("alice", "fp2") is None
    store.touch_grant("alice", "fp1", now=5, idle=10)
    got = store.get_grant("alice", "fp1")
    assert got is not None and got.idle_until == 15 and got.valid(14) and not got.valid(15)
    store.touch_grant("alice", "fp1", now=95, idle=10)  # idle has passed: a touch does not revive it
    got = store.get_grant("alice", "fp1")
    assert got is not None and got.idle_until == 15
    store.open_grant(Grant("alice", "fp2", "e", 0, 0, 10, 12))
    store.touch_grant("alice", "fp2", now=5, idle=10)
    got = store.get_grant("alice", "fp2")
    assert got is not None and got.idle_until == 12, "never past the absolute end"
    store.end_grant("alice", "fp1")
    assert store.get_grant("alice", "fp1") is None
    assert store.end_grants("alice") == 1
    assert store.get_grant("alice", "fp2") is None


def test_any_locked_asks_for_several_keys_at_once(store: StateStore) -> None:
    assert not store.lockouts.any_locked_out([], now=0)
    assert not store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.4"], now=0)
    store.lockouts.set_lockout("addr:1.2.3.4", until=100)
    assert store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.4"], now=50)
    assert store.lockouts.any_locked_out(["addr:1.2.3.4"], now=50)
    assert not store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.5"], now=50)
    assert not store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.4"], now=100)  # lifted at its end
    store.lockouts.set_lockout("acct:a:fp", until=300)
    assert store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.4"], now=200)
    store.lockouts.clear_lockouts_by_prefix("acct:a:")
    assert not store.lockouts.any_locked_out(["acct:a:fp", "addr:1.2.3.4"], now=200)


def test_failures_count_in_a_window_and_locks_lift(store: StateStore) -> None:
    assert [store.lockouts.add_failure("k", now=t, window=60) for t in (0, 1, 2)] == [1, 2, 3]
    assert store.lockouts.add_failure("k", now=61, window=60) == 1, "a new window starts over"
    store.lockouts.clear_failures("k")
    assert store.lockouts.add_failure("k", now=62, window=60) == 1
    store.lockouts.set_lockout("acct:alice:fp", until=100)
    assert store.lockouts.lockout_until("acct:alice:fp", now=50) == 100
    assert store.lockouts.lockout_until("acct:alice:fp", now=100) is None
    store.lockouts.set_lockout("acct:alice:fp", until=200)
    store.lockouts.set_lockout("acct:alice_x:fp", until=200)
    assert store.lockouts.clear_lockouts_by_prefix("acct:alice:") == 1, "a prefix is no pattern: alice_x keeps its own"
    assert store.lockouts.lockout_until("acct:alice:fp", now=150) is None
    assert store.lockouts.lockout_until("acct:alice_x:fp", now=150) == 200


def test_state_survives_reopening(tmp_path: Path) -> None:
    a = SQLiteStore(tmp_path / "s.db")
    a.use_otp_step("alice", 7)
    a.lockouts.set_lockout("x", until=10**12)
    a.close()
    b = SQLiteStore(tmp_path / "s.db")
    try:
        assert not b.use_otp_step("alice", 7)
        assert b.lockouts.lockout_until("x", now=0) == 10**12
    finally:
        b.close()
    assert oct((tmp_path / "s.db").stat().st_mode & 0o777) == "0o600"
