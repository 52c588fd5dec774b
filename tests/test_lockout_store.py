"""The `LockoutStore` contract (store/base.py), run against both drivers: SQLite
(store/sqlite_lockout.py) and a real Redis (store/redis_lockout.py); failures counted by
two processes at once are all counted; lockouts stored by the release before (the SQLite
table ``locks``, the Redis keys ``lock:``), whenever written, are read beside the new
names (the later end wins) and lifted with them, and never written."""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from davserver.auth.lockout import Lockouts
from davserver.store.base import LockoutStore, StateStore
from davserver.store.redis import RedisStore
from davserver.store.redis_lockout import RedisLockouts
from davserver.store.sqlite import SQLiteStore
from davserver.store.sqlite_lockout import SQLiteLockouts

from .racing import run_spawned

FAR = 4102444800.0  # 2100-01-01, POSIX seconds


def _open(kind: str, where: str) -> StateStore:
    """The store of `kind` at `where` (a SQLite file, or ``<redis url> <prefix>``)."""
    if kind == "redis":
        url, prefix = where.split(" ")
        return RedisStore(url, prefix=prefix)
    return SQLiteStore(Path(where))


@pytest.fixture(params=["sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "redis":
        return "redis", f"{request.getfixturevalue('redis_url')} test-{uuid.uuid4().hex}:"
    return "sqlite", str(tmp_path / "state.db")


@pytest.fixture
def driver(where: tuple[str, str]) -> Iterator[LockoutStore]:
    store = _open(*where)
    yield store.lockouts
    store.close()


# --- the contract ------------------------------------------------------------------------------


def test_each_store_hands_out_its_own_driver(where: tuple[str, str]) -> None:
    store = _open(*where)
    try:
        assert isinstance(store.lockouts, RedisLockouts if where[0] == "redis" else SQLiteLockouts)
    finally:
        store.close()


def test_failures_count_within_their_window_per_exact_key(driver: LockoutStore) -> None:
    assert [driver.add_failure("acct:a:fp:password", now=t, window=60) for t in (0, 1, 59)] == [1, 2, 3]
    assert driver.add_failure("acct:a:fp:password", now=60, window=60) == 1, "the window ended: start over"
    assert driver.add_failure("acct:A:fp:password", now=61, window=60) == 1, "case-sensitive"
    driver.clear_failures("acct:a:fp")  # a prefix of the key, not the key: nothing
    assert driver.add_failure("acct:a:fp:password", now=62, window=60) == 2
    driver.clear_failures("acct:a:fp:password")
    assert driver.add_failure("acct:a:fp:password", now=63, window=60) == 1
    assert driver.add_failure("acct:A:fp:password", now=64, window=60) == 2, "the other key kept its count"


def test_a_lockout_ends_at_its_end_and_is_only_ever_lengthened(driver: LockoutStore) -> None:
    assert driver.lockout_until("k", now=0) is None
    driver.set_lockout("k", until=100.5)
    assert driver.lockout_until("k", now=0) == 100.5
    driver.set_lockout("k", until=50)  # earlier: changes nothing
    assert driver.lockout_until("k", now=60) == 100.5
    driver.set_lockout("k", until=FAR)
    assert driver.lockout_until("k", now=200) == FAR
    driver.set_lockout("j", until=10)
    assert driver.lockout_until("j", now=10) is None, "ended at its end"


def test_any_locked_out_asks_for_several_keys_in_one_call(driver: LockoutStore) -> None:
    assert driver.any_locked_out([], now=0) is False
    driver.set_lockout("addr:192.0.2.1", until=100)
    assert driver.any_locked_out(["acct:a:fp", "acct:a:*", "addr:192.0.2.1"], now=50) is True
    assert driver.any_locked_out(["acct:a:fp", "addr:192.0.2.10"], now=50) is False
    assert driver.any_locked_out(["addr:192.0.2.1"], now=100) is False


def test_clearing_by_prefix_is_exact_and_counts_the_lockouts(driver: LockoutStore) -> None:
    for name in ("alice", "Alice", "a_ice", "al*", "alice2"):
        driver.set_lockout(f"acct:{name}:fp", until=FAR)
        driver.add_failure(f"acct:{name}:fp:totp", now=0, window=FAR)
    driver.set_lockout("acct:alice:*", until=FAR)
    assert driver.clear_lockouts_by_prefix("acct:alice:") == 2  # its certificate's and the account-wide one
    assert not driver.any_locked_out(["acct:alice:fp", "acct:alice:*"], now=0)
    assert driver.add_failure("acct:alice:fp:totp", now=1, window=FAR) == 1, "its counts went too"
    for name in ("Alice", "a_ice", "al*", "alice2"):
        assert driver.lockout_until(f"acct:{name}:fp", now=0) == FAR, name
        assert driver.add_failure(f"acct:{name}:fp:totp", now=1, window=FAR) == 2, name
    assert driver.clear_lockouts_by_prefix("acct:a_") == 1, "_ is itself, not a wildcard"
    assert driver.clear_lockouts_by_prefix("acct:al*") == 1, "* is itself"
    assert driver.clear_lockouts_by_prefix("acct:nobody:") == 0


def test_lockouts_noted_per_address_count_accounts_in_the_window(driver: LockoutStore) -> None:
    assert driver.note_lockout("addr:a", "alice", now=0, window=100) == 1
    assert driver.note_lockout("addr:a", "alice", now=10, window=100) == 1, "one account counts once"
    assert driver.note_lockout("addr:b", "bob", now=20, window=100) == 1, "per address"
    assert driver.note_lockout("addr:a", "bob", now=50, window=100) == 2
    assert driver.note_lockout("addr:a", "carol", now=111, window=100) == 2, "alice (at 10) aged out"


def test_clearing_one_key_lifts_its_lockout_count_and_notes(driver: LockoutStore) -> None:
    driver.set_lockout("addr:a", until=FAR)
    driver.set_lockout("addr:ab", until=FAR)
    driver.add_failure("addr:a", now=0, window=100)
    driver.note_lockout("addr:a", "alice", now=0, window=100)
    assert driver.clear_lockout("addr:a") == 1
    assert driver.clear_lockout("addr:a") == 0, "nothing left to lift"
    assert driver.lockout_until("addr:a", now=0) is None
    assert driver.lockout_until("addr:ab", now=0) == FAR, "a key is not a prefix"
    assert driver.add_failure("addr:a", now=1, window=100) == 1
    assert driver.note_lockout("addr:a", "bob", now=2, window=100) == 1


def test_the_rules_run_on_either_driver(driver: LockoutStore) -> None:
    from davserver.config import ThrottleConfig

    lockouts = Lockouts(driver, ThrottleConfig(lock_after=2, delay_after=1000, address_lock_after=1))
    fp = "ab" * 32
    lockouts.fail("alice", fp, "password", "192.0.2.7", 1000.0)
    assert not lockouts.is_locked_out("alice", fp, "", 1000.0)
    lockouts.fail("alice", fp, "password", "192.0.2.7", 1001.0)
    assert lockouts.is_locked_out("alice", fp, "", 1001.0)
    assert lockouts.is_locked_out("bob", fp, "::ffff:192.0.2.7", 1001.0), "the address too (one account: limit 1)"
    assert lockouts.unlock_address("192.0.2.7") == 1
    assert lockouts.unlock_account("alice") == 1
    assert not lockouts.is_locked_out("alice", fp, "192.0.2.7", 1001.0)


# --- two processes at once ---------------------------------------------------------------------

ROUNDS = 10
PER_PROCESS = 25


def _count(kind: str, where: str, index: int, barrier: Any, results: Any) -> None:
    """A spawned process: opens its own store, then per round waits at the barrier and
    counts PER_PROCESS failures on one key, reporting (index, round, counts)."""
    store = _open(kind, where)
    try:
        barrier.wait(120)
        for r in range(ROUNDS):
            barrier.wait(120)
            counts = [store.lockouts.add_failure(f"acct:race{r}:fp:password", time.time(), 900)
                      for _ in range(PER_PROCESS)]
            results.put((index, r, counts))
    finally:
        store.close()


def test_failures_counted_by_two_processes_at_once_are_all_counted(where: tuple[str, str]) -> None:
    if where[0] == "sqlite":
        _open(*where).close()  # the file exists before the racers open it
    got = run_spawned(_count, [(*where, i) for i in range(2)], 2 * ROUNDS)
    for r in range(ROUNDS):
        counts = sorted(c for index, rnd, cs in got if rnd == r for c in cs)
        # each count from 1 to 2 × PER_PROCESS handed out once: none lost, none twice
        assert counts == list(range(1, 2 * PER_PROCESS + 1)), (r, counts)
    store = _open(*where)
    try:
        assert store.lockouts.add_failure("acct:race0:fp:password", time.time(), 900) == 2 * PER_PROCESS + 1
    finally:
        store.close()


# --- what earlier releases stored --------------------------------------------------------------

#: A state file made by the release before the driver (commit aaf05ca: its SQLiteStore and
#: Lockouts: two wrong passwords of alice from 192.0.2.7 with lock_after 2 and address_lock_after
#: 1, bob's account-wide lockout, a pending renewal revocation, and carol's lockout that ended
#: long ago), dumped with sqlite3's iterdump; the fingerprints are {a}, {r} and {c} (`_before`).
BEFORE_LOCKOUTS_TABLE = """
BEGIN TRANSACTION;
CREATE TABLE failures (key TEXT PRIMARY KEY, count INTEGER NOT NULL, window_end REAL NOT NULL);
INSERT INTO "failures" VALUES('acct:alice:{a}:password',2,1700000900.0);
INSERT INTO "failures" VALUES('acct:alice:*:password',2,2015360000.0);
CREATE TABLE grants (
    account TEXT NOT NULL, fingerprint TEXT NOT NULL, epoch TEXT NOT NULL,
    opened REAL NOT NULL, last_used REAL NOT NULL, idle_until REAL NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (account, fingerprint));
CREATE TABLE invitations (
    digest TEXT PRIMARY KEY, account TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    keep_until REAL NOT NULL, failures INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE lockout_accounts (
    address TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (address, account));
INSERT INTO "lockout_accounts" VALUES('addr:192.0.2.7','alice',1700000001.0);
CREATE TABLE locks (key TEXT PRIMARY KEY, until REAL NOT NULL);
INSERT INTO "locks" VALUES('acct:alice:{a}',4102444801.0);
INSERT INTO "locks" VALUES('addr:192.0.2.7',4102444801.0);
INSERT INTO "locks" VALUES('acct:bob:*',4102444800.0);
INSERT INTO "locks" VALUES('renewal:{r}:1A2B',4102444800.0);
INSERT INTO "locks" VALUES('renewal:{r}',4102444800.0);
INSERT INTO "locks" VALUES('acct:carol:{c}',1000.0);
CREATE TABLE otp_steps (account TEXT PRIMARY KEY, step INTEGER NOT NULL);
CREATE TABLE period_secrets (
    name TEXT NOT NULL, period INTEGER NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (name, period));
CREATE TABLE shared_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
COMMIT;
"""

ALICE, CAROL, RENEWED = "ab" * 32, "ef" * 32, "cd" * 32
NOW = 1700000002.0


def _before(path: Path) -> None:
    """Write the state file of the release before at `path`."""
    db = sqlite3.connect(path)
    try:
        db.executescript(BEFORE_LOCKOUTS_TABLE.format(a=ALICE, r=RENEWED, c=CAROL))
    finally:
        db.close()


def _tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def _assert_kept(lockouts: Lockouts) -> None:
    """What the installation held before the upgrade still holds after it."""
    assert lockouts.is_locked_out("alice", ALICE, "", NOW)
    assert lockouts.is_locked_out("dave", "00" * 32, "192.0.2.7", NOW), "the address lockout"
    assert lockouts.is_locked_out("bob", "11" * 32, "", NOW), "bob's account-wide lockout"
    assert not lockouts.is_locked_out("carol", CAROL, "", NOW), "an ended lockout stays ended"
    assert lockouts.renewal_pending(RENEWED, NOW) and lockouts.renewed(RENEWED, "1A2B", NOW)
    assert not lockouts.renewed(RENEWED, "FFFF", NOW)


def _write_legacy(where: tuple[str, str], key: str, until: float) -> None:
    """Lock `key` out until `until` as a process of the release before does, beside this one
    (commit aaf05ca: store/sqlite.py ``set_lock``, an upsert into ``locks`` keeping the later
    end; store/redis.py ``set_lock``, ``P lock:<key>`` = repr(until) with TTL until + 60 s)."""
    kind, at = where
    if kind == "redis":
        url, prefix = at.split(" ")
        raw = redis.Redis.from_url(url)
        try:
            raw.set(f"{prefix}lock:{key}", repr(until), ex=max(60, math.ceil(until - time.time()) + 60))
        finally:
            raw.close()
        return
    db = sqlite3.connect(at, isolation_level=None, timeout=10)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, until REAL NOT NULL)")  # its schema
        db.execute("INSERT INTO locks VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET until = MAX(until, excluded.until)",
                   (key, until))
    finally:
        db.close()


def _legacy_keys(where: tuple[str, str]) -> set[str]:
    """The lockout keys held under the name of the release before."""
    kind, at = where
    if kind == "redis":
        url, prefix = at.split(" ")
        raw = redis.Redis.from_url(url)
        try:
            head = f"{prefix}lock:"
            return {name.decode()[len(head):] for name in raw.scan_iter(match=f"{head}*")}  # no glob in `head`
        finally:
            raw.close()
    db = sqlite3.connect(at)
    try:
        return {row[0] for row in db.execute("SELECT key FROM locks")}
    finally:
        db.close()


def test_a_lockout_the_release_before_writes_while_this_one_runs_is_enforced(where: tuple[str, str]) -> None:
    """Read both, write new: lockouts written under the old name AFTER this release opened
    the store (a worker or node of the release before still running) are enforced, the later
    end of a key held under both names wins, and this release writes only the new name."""
    store = _open(*where)
    try:
        driver = store.lockouts
        driver.set_lockout("acct:a:fp", until=100)
        driver.set_lockout("acct:b:fp", until=500)
        _write_legacy(where, "acct:a:fp", 200)  # later than this release's
        _write_legacy(where, "acct:b:fp", 300)  # earlier than this release's
        _write_legacy(where, "acct:c:fp", 400)  # only the release before's
        _write_legacy(where, "acct:d:fp", 10)  # ended
        assert driver.lockout_until("acct:a:fp", now=0) == 200
        assert driver.lockout_until("acct:b:fp", now=0) == 500
        assert driver.lockout_until("acct:c:fp", now=0) == 400
        assert driver.lockout_until("acct:c:fp", now=400) is None, "ended at its end"
        assert driver.lockout_until("acct:d:fp", now=20) is None
        assert driver.any_locked_out(["acct:x:fp", "acct:a:fp"], now=150) is True, "the legacy end wins"
        assert driver.any_locked_out(["acct:x:fp", "acct:c:fp"], now=350) is True
        assert driver.any_locked_out(["acct:x:fp", "acct:d:fp"], now=20) is False
        driver.set_lockout("acct:c:fp", until=350)  # earlier than the legacy end: still 400
        assert driver.lockout_until("acct:c:fp", now=0) == 400
        driver.set_lockout("acct:fresh:fp", until=FAR)
        assert _legacy_keys(where) == {"acct:a:fp", "acct:b:fp", "acct:c:fp", "acct:d:fp"}, "never written"
        # what the rules ask: bob's account-wide lockout and an address lockout of the release before
        _write_legacy(where, "acct:bob:*", FAR)
        _write_legacy(where, "addr:192.0.2.9", FAR)
        lockouts = Lockouts(driver)
        assert lockouts.is_locked_out("bob", "11" * 32, "", NOW)
        assert lockouts.is_locked_out("erin", "22" * 32, "192.0.2.9", NOW)
        assert not lockouts.is_locked_out("erin", "22" * 32, "192.0.2.10", NOW)
    finally:
        store.close()


def test_unlocking_lifts_the_lockouts_of_both_releases(where: tuple[str, str]) -> None:
    store = _open(*where)
    try:
        driver = store.lockouts
        driver.set_lockout("acct:alice:fp", until=FAR)
        _write_legacy(where, "acct:alice:fp", FAR + 1)  # the same key under both names: one lockout
        _write_legacy(where, "acct:alice:*", FAR)  # account-wide, only under the old name
        driver.set_lockout("acct:alice:fp2", until=FAR)  # only under the new name
        for name in ("Alice", "a_ice", "al*", "alice2", "al%"):
            _write_legacy(where, f"acct:{name}:fp", FAR)
        driver.add_failure("acct:alice:fp:totp", now=0, window=FAR)
        assert Lockouts(driver).unlock_account("alice") == 3
        assert not driver.any_locked_out(["acct:alice:fp", "acct:alice:*", "acct:alice:fp2"], now=0)
        assert driver.add_failure("acct:alice:fp:totp", now=1, window=FAR) == 1, "its counts went too"
        assert _legacy_keys(where) == {f"acct:{n}:fp" for n in ("Alice", "a_ice", "al*", "alice2", "al%")}
        for name in ("Alice", "a_ice", "al*", "alice2", "al%"):
            assert driver.lockout_until(f"acct:{name}:fp", now=0) == FAR, name
        assert driver.clear_lockouts_by_prefix("acct:a_") == 1, "_ is itself, not a wildcard"
        assert driver.clear_lockouts_by_prefix("acct:al*") == 1, "* is itself"
        assert driver.clear_lockouts_by_prefix("acct:al%") == 1, "% is itself"
        assert driver.clear_lockouts_by_prefix("acct:alice:") == 0
        # one address: under the old name only, then under both
        _write_legacy(where, "addr:a", FAR)
        _write_legacy(where, "addr:ab", FAR)
        driver.note_lockout("addr:a", "alice", now=0, window=100)
        assert driver.clear_lockout("addr:a") == 1
        assert driver.clear_lockout("addr:a") == 0, "nothing left to lift"
        assert driver.lockout_until("addr:a", now=0) is None
        assert driver.lockout_until("addr:ab", now=0) == FAR, "a key is not a prefix"
        assert driver.note_lockout("addr:a", "bob", now=2, window=100) == 1, "its notes went"
        driver.set_lockout("addr:ab", until=FAR + 5)
        assert driver.clear_lockout("addr:ab") == 1, "one lockout under two names counts once"
        assert driver.lockout_until("addr:ab", now=0) is None
        assert _legacy_keys(where) == {"acct:Alice:fp", "acct:alice2:fp"}
    finally:
        store.close()


def test_a_state_file_of_the_release_before_keeps_its_lockouts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _before(path)
    store = SQLiteStore(path)
    try:
        assert {"locks", "lockouts"} <= _tables(path), "the release before may still be reading locks"
        lockouts = Lockouts(store.lockouts)
        _assert_kept(lockouts)
        # the counters are shared: one more wrong password is the third of that window
        assert store.lockouts.add_failure(f"acct:alice:{ALICE}:password", NOW, 900) == 3
        assert lockouts.unlock_account("alice") == 1
        assert not lockouts.is_locked_out("alice", ALICE, "", NOW)
    finally:
        store.close()
    again = SQLiteStore(path)
    try:
        assert not Lockouts(again.lockouts).is_locked_out("alice", ALICE, "", NOW)
        assert Lockouts(again.lockouts).is_locked_out("bob", "11" * 32, "", NOW)
    finally:
        again.close()
    assert "locks" in _tables(path)


def _open_file(path: str, index: int, barrier: Any, results: Any) -> None:
    barrier.wait(120)
    store = SQLiteStore(Path(path))
    try:
        results.put(Lockouts(store.lockouts).is_locked_out("bob", "11" * 32, "", NOW))
    finally:
        store.close()


def test_processes_opening_a_file_of_the_release_before_at_once_all_enforce_its_lockouts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _before(path)
    assert run_spawned(_open_file, [(str(path), i) for i in range(3)], 3) == [True, True, True]
    assert "locks" in _tables(path)


def test_redis_lockouts_of_the_release_before_are_read_in_place(redis_url: str) -> None:
    """The release before kept a lockout at ``P lock:<key>`` (its until as repr text, TTL
    until + 60 s: store/redis.py ``set_lock``); they stay there, are enforced and are lifted
    by an unlock; another deployment's and the WebDAV lock keys are not touched."""
    prefix = f"test-{uuid.uuid4().hex}:"
    raw = redis.Redis.from_url(redis_url)
    try:
        ttl = int(FAR - time.time()) + 60
        for key, until in ((f"acct:alice:{ALICE}", FAR + 1), ("addr:192.0.2.7", FAR + 1), ("acct:bob:*", FAR),
                           (f"renewal:{RENEWED}:1A2B", FAR), (f"renewal:{RENEWED}", FAR),
                           (f"acct:carol:{CAROL}", 1000.0), ("acct:erin:fp", FAR)):
            raw.set(f"{prefix}lock:{key}", repr(until), ex=ttl)
        raw.set(f"{prefix}lockout:acct:erin:fp", repr(FAR + 5), ex=ttl)  # later under the new name
        raw.set(f"{prefix}dav:lock:token", "{}")  # a WebDAV lock: not a sign-in lockout
        raw.set(f"other-{prefix}lock:acct:alice:fp", repr(FAR))  # another deployment's
        store = RedisStore(redis_url, prefix=prefix)
        try:
            lockouts = Lockouts(store.lockouts)
            _assert_kept(lockouts)
            assert store.lockouts.lockout_until("acct:erin:fp", now=0) == FAR + 5, "the later end wins"
            assert len(raw.keys(f"{prefix}lock:*")) == 7, "nothing moved"
            assert raw.get(f"{prefix}lockout:acct:bob:*") is None, "nothing written under the new name"
            assert 0 < raw.ttl(f"{prefix}lock:acct:bob:*") <= ttl, "its expiry is its own"
            raw.set(f"{prefix}lock:late", repr(FAR))  # written after this release started
            assert store.lockouts.lockout_until("late", now=0) == FAR
            assert lockouts.unlock_account("alice") == 1
            assert not lockouts.is_locked_out("alice", ALICE, "", NOW)
            assert raw.get(f"{prefix}lock:acct:alice:{ALICE}") is None
            assert lockouts.unlock_address("192.0.2.7") == 1
            assert raw.get(f"{prefix}lock:addr:192.0.2.7") is None
            assert raw.get(f"{prefix}dav:lock:token") == b"{}"
            assert raw.exists(f"other-{prefix}lock:acct:alice:fp")
        finally:
            store.close()
    finally:
        for name in raw.scan_iter(match=f"*{prefix}*"):
            raw.delete(name)
        raw.close()


def test_redis_legacy_lockouts_are_cleared_only_under_the_deployments_own_prefix(redis_url: str) -> None:
    """The deployment prefix's glob characters are literal in the SCAN of the old name too."""
    tag = uuid.uuid4().hex[:8]
    odd_prefix, plain_prefix = f"t{tag}[1]*?\\:", f"t{tag}1x\\:"  # the unescaped pattern would match both
    raw = redis.Redis.from_url(redis_url)
    odd = RedisStore(redis_url, prefix=odd_prefix)
    try:
        for prefix in (odd_prefix, plain_prefix):
            raw.set(f"{prefix}lock:acct:alice:fp", repr(FAR), ex=3600)
        raw.set(f"{odd_prefix}lock:acct:alice2:fp", repr(FAR), ex=3600)
        assert odd.lockouts.clear_lockouts_by_prefix("acct:alice:") == 1
        assert odd.lockouts.lockout_until("acct:alice:fp", now=0) is None
        assert odd.lockouts.lockout_until("acct:alice2:fp", now=0) == FAR
        assert raw.get(f"{plain_prefix}lock:acct:alice:fp") == repr(FAR).encode()
    finally:
        odd.close()
        for prefix in (odd_prefix, plain_prefix):
            for name in (f"{prefix}lock:acct:alice:fp", f"{prefix}lock:acct:alice2:fp"):
                raw.delete(name)
        raw.close()
