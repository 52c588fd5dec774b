"""Faults found in review of issue 17 (each test fails until fixed)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from davserver.store.sqlite import SQLiteStore

_OLD_SCHEMA = """
CREATE TABLE locks (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE failures (key TEXT PRIMARY KEY, count INTEGER NOT NULL, window_end REAL NOT NULL);
CREATE TABLE lockout_accounts (
    address TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (address, account));
"""


def test_opening_the_store_with_the_new_code_keeps_a_running_earlier_release_working(tmp_path: Path) -> None:
    """A server of the release before keeps running while the new CLI opens the state file
    (`davserver user unlock`, `cert invite` ... right after `pip install -U`, before the
    restart; or a supervisor that restarts a dead worker from the upgraded code). The
    earlier release's sign-in check reads the ``locks`` table on every request: the
    migration must not take it away from under it (today: DROP TABLE, then every request
    of the old server is a 500 "no such table: locks")."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(_OLD_SCHEMA)
    old.execute("INSERT INTO locks VALUES ('acct:alice:ff', ?)", (time.time() + 900,))
    store = SQLiteStore(path)  # the new CLI or worker opens the same file
    try:
        # what the release before runs for every request (store/sqlite.py any_locked at aaf05ca)
        row = old.execute("SELECT 1 FROM locks WHERE key IN (?) AND until > ? LIMIT 1",
                          ("acct:alice:ff", time.time())).fetchone()
        assert row is not None
    finally:
        store.close()
        old.close()


def test_a_lockout_an_earlier_release_writes_after_the_migration_marker_is_still_enforced(redis_url: str) -> None:
    """After `pip install -U` a supervisor restarts a dead worker from the new code while the
    other workers (or nodes) still run the release before; or an upgrade is rolled back
    and done again. The new worker migrates the ``lock:`` keys and sets the marker; the
    earlier release then keeps writing ``lock:`` keys (an attacker's lockout, an account
    locked until `user unlock`). A process of this release must still enforce those:
    today the marker makes every later process skip them, so the lockout is lifted for
    good by the upgrade."""
    import uuid

    import redis as redis_lib

    from davserver.auth.lockout import Lockouts
    from davserver.store.redis import RedisStore

    prefix = f"review-{uuid.uuid4().hex}:"
    first = RedisStore(redis_url, prefix=prefix)
    Lockouts(first.lockouts).is_locked_out("bob", "ee" * 32, "", time.time())  # migrates, sets the marker
    first.close()
    raw = redis_lib.Redis.from_url(redis_url)
    key = f"{prefix}lock:acct:alice:{'ff' * 32}"
    raw.set(key, repr(time.time() + 900), ex=960)  # what store/redis.py set_lock wrote at aaf05ca
    raw.close()
    later = RedisStore(redis_url, prefix=prefix)  # the next worker, node or CLI of this release
    try:
        assert Lockouts(later.lockouts).is_locked_out("alice", "ff" * 32, "", time.time())
    finally:
        later.close()
