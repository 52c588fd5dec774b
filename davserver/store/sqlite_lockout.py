"""The SQLite driver of sign-in lockouts (`LockoutStore`), in the state store's file.

Three tables, created when the store opens:

* ``failures`` (key, count, window_end): a failure counter per key;
* ``lockouts`` (key, until): a lockout per key, ``until`` in POSIX seconds;
* ``lockout_accounts`` (address, account, at): the accounts locked out from an address.

Releases before this one kept the lockouts in a table named ``locks`` (a name that says
WebDAV lock: the WebDAV locks are ``dav_locks``, store/davstate.py). Opening a file that
still has it moves its rows into ``lockouts`` (keeping the later end of a key held in
both) and drops it, in one IMMEDIATE transaction, so lockouts and pending renewal
revocations survive the upgrade; processes opening the file at once migrate it once.

Every operation that must not race is one statement or one IMMEDIATE transaction on the
store's connection of this thread (store/sqlite.py), as the rest of the store.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Protocol

from .base import LockoutStore

__all__ = ["LEGACY_TABLE", "SCHEMA", "SQLiteFile", "SQLiteLockouts"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, count INTEGER NOT NULL, window_end REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lockouts (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lockout_accounts (
    address TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (address, account));
"""

#: The table earlier releases kept sign-in lockouts in; migrated into ``lockouts`` on open.
LEGACY_TABLE = "locks"


class SQLiteFile(Protocol):
    """What the driver needs of store/sqlite.py's `SQLiteStore` (which it must not import:
    the store makes its driver)."""

    def connection(self) -> sqlite3.Connection:
        """This thread's autocommit connection; StoreUnavailable on busy, read-only or full."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A context that runs its block in one IMMEDIATE transaction."""


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


class SQLiteLockouts(LockoutStore):
    """Sign-in failure counters and lockouts in the SQLite file of `store`. Creating it
    creates the tables and migrates the ``locks`` table of earlier releases (see the
    module docstring); raises StoreUnavailable when the file cannot be written now."""

    def __init__(self, store: SQLiteFile) -> None:
        self._store = store
        store.connection().executescript(SCHEMA)
        if _has_table(store.connection(), LEGACY_TABLE):
            with store.transaction() as db:
                if _has_table(db, LEGACY_TABLE):  # another process may have just done it
                    db.execute(f"INSERT INTO lockouts (key, until) SELECT key, until FROM {LEGACY_TABLE} "  # noqa: S608
                               "WHERE true ON CONFLICT(key) DO UPDATE SET until = MAX(until, excluded.until)")
                    db.execute(f"DROP TABLE {LEGACY_TABLE}")

    def add_failure(self, key: str, now: float, window: float) -> int:
        """See LockoutStore.add_failure: a read then a write in one IMMEDIATE transaction."""
        with self._store.transaction() as db:
            row = db.execute("SELECT count, window_end FROM failures WHERE key = ?", (key,)).fetchone()
            count = 1 if row is None or row[1] <= now else row[0] + 1
            window_end = now + window if row is None or row[1] <= now else row[1]
            db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (key, count, window_end))
        return int(count)

    def clear_failures(self, key: str) -> None:
        """See LockoutStore.clear_failures."""
        self._store.connection().execute("DELETE FROM failures WHERE key = ?", (key,))

    def set_lockout(self, key: str, until: float) -> None:
        """See LockoutStore.set_lockout: one upsert keeping the later end."""
        self._store.connection().execute(
            "INSERT INTO lockouts VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET until = MAX(until, excluded.until)",
            (key, until),
        )

    def lockout_until(self, key: str, now: float) -> float | None:
        """See LockoutStore.lockout_until."""
        row = self._store.connection().execute(
            "SELECT until FROM lockouts WHERE key = ? AND until > ?", (key, now)).fetchone()
        return float(row[0]) if row else None

    def any_locked_out(self, keys: list[str], now: float) -> bool:
        """See LockoutStore.any_locked_out: one query on the primary key."""
        if not keys:
            return False
        marks = ",".join("?" * len(keys))
        sql = f"SELECT 1 FROM lockouts WHERE key IN ({marks}) AND until > ? LIMIT 1"  # noqa: S608 - only ? marks
        return self._store.connection().execute(sql, (*keys, now)).fetchone() is not None

    def clear_lockouts_by_prefix(self, prefix: str) -> int:
        """See LockoutStore.clear_lockouts_by_prefix: lockouts and counters in one IMMEDIATE
        transaction."""
        # Not LIKE: it ignores case (`alice` would lift `Alice`) and treats `_` and `%` as
        # wildcards. substr() counts characters, as len() does; `=` compares bytes (BINARY).
        args = (len(prefix), prefix)
        with self._store.transaction() as db:
            n = db.execute("DELETE FROM lockouts WHERE substr(key, 1, ?) = ?", args).rowcount
            db.execute("DELETE FROM failures WHERE substr(key, 1, ?) = ?", args)
        return int(n)

    def note_lockout(self, address: str, account: str, now: float, window: float) -> int:
        """See LockoutStore.note_lockout: one IMMEDIATE transaction, which also drops the
        records of every address older than `window` (the table stays small)."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM lockout_accounts WHERE at <= ?", (now - window,))
            db.execute(
                "INSERT INTO lockout_accounts VALUES (?, ?, ?) "
                "ON CONFLICT(address, account) DO UPDATE SET at = MAX(at, excluded.at)",
                (address, account, now),
            )
            row = db.execute("SELECT COUNT(*) FROM lockout_accounts WHERE address = ?", (address,)).fetchone()
        return int(row[0])

    def clear_lockout(self, key: str) -> int:
        """See LockoutStore.clear_lockout: one IMMEDIATE transaction."""
        with self._store.transaction() as db:
            n = db.execute("DELETE FROM lockouts WHERE key = ?", (key,)).rowcount
            db.execute("DELETE FROM failures WHERE key = ?", (key,))
            db.execute("DELETE FROM lockout_accounts WHERE address = ?", (key,))
        return int(n)
