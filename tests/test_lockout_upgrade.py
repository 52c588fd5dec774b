"""Faults found in review of issue 17 (each test fails until fixed)."""

from __future__ import annotations

import os
import sqlite3
import stat
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


def modes_of_a_new_store(folder: Path) -> dict[str, int]:
    """Opens a new store at `folder`/state.db, writes to it (so SQLite makes its -wal and
    -shm), and returns the permission bits of every file in `folder` by name."""
    store = SQLiteStore(folder / "state.db")
    try:
        store.shared_secret("csrf", 32)
        return {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in folder.iterdir()}
    finally:
        store.close()


def test_the_state_files_are_never_readable_by_others_in_a_shared_folder(tmp_path: Path) -> None:
    """``state.path`` may name a file in a folder others can enter (/var/lib/davserver made
    0755 by a package, or any existing folder: mkdir's mode does not apply to it). The
    file holds the CSRF key, the TLS ticket keys, grants and lockouts; its -wal and -shm
    hold the same bytes. Today state.db is chmod 0600 only after SQLite made it (umask
    mode until then) and the -wal/-shm made while it was so stay 0644 (also at aaf05ca)."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    modes = modes_of_a_new_store(folder)
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def test_an_existing_installation_readable_by_others_is_tightened_when_opened(tmp_path: Path) -> None:
    """An installation of an older release, its state.db, -wal and -shm 0644 (a process of
    that release still has them open): opening the store makes all three 0600, and the
    older process goes on using them."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path, isolation_level=None)
    try:
        old.execute("PRAGMA journal_mode=WAL")
        old.executescript(_OLD_SCHEMA)
        old.execute("INSERT INTO locks VALUES ('acct:alice:ff', ?)", (time.time() + 900,))
        names = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        for name in names:
            name.chmod(0o644)
        store = SQLiteStore(path)
        try:
            assert {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in names} == {
                p.name: "0o600" for p in names}
            old.execute("INSERT INTO locks VALUES ('acct:bob:ff', ?)", (time.time() + 900,))
            assert store.lockouts.lockout_until("acct:bob:ff", time.time()) is not None
        finally:
            store.close()
    finally:
        old.close()


def test_a_new_state_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    """The umask takes bits away from what os.open asks; the file is made exactly 0600
    (a umask of 0277 would leave it 0400: a store that cannot write), and so are the -wal
    and -shm SQLite makes after it."""
    before = os.umask(0o277)
    try:
        modes = modes_of_a_new_store(tmp_path)
    finally:
        os.umask(before)
    assert modes == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
