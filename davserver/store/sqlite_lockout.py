"""The SQLite driver of sign-in lockouts (`LockoutStore`), in the state store's file.

Four tables, created when the store opens:

* ``failures`` (key, count, window_end): a failure counter per key;
* ``lockouts`` (key, until): a lockout per key, ``until`` in POSIX seconds;
* ``lockout_accounts`` (address, account, at): the accounts locked out from an address;
* ``locks`` (key, until): where releases before this one (up to commit aaf05ca) keep
  their lockouts, with the same columns (a name that says WebDAV lock: the WebDAV locks
  are ``dav_locks``, store/davstate.py).

``locks`` is read and cleared, never written, and never dropped: a process of the
release before may run beside this one on the same file (the other workers of a
supervisor, the server while an upgraded CLI runs, a rollback and a second upgrade),
reading and writing ``locks`` on every request. So every read of a lockout
(`SQLiteLockouts.lockout_until`, `SQLiteLockouts.any_locked_out`) looks in both tables
and takes the later end, every clear (`SQLiteLockouts.clear_lockouts_by_prefix`,
`SQLiteLockouts.clear_lockout`) deletes from both, and a new lockout goes to
``lockouts`` only. A lockout the earlier release writes at any time, before or after
this release opened the file, is enforced; one this release writes is not seen by the
earlier release (docs/scaling.md). The failure counters and the per-address notes kept
their names, so both releases share them.

Every operation that must not race is one statement or one IMMEDIATE transaction on the
store's connection of this thread (store/sqlite.py), as the rest of the store.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Protocol

from .base import LockoutStore

__all__ = ["LEGACY_TABLE", "SCHEMA", "SQLiteFile", "SQLiteLockouts"]

#: The table releases before this one keep sign-in lockouts in: read and cleared, never written.
LEGACY_TABLE = "locks"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, count INTEGER NOT NULL, window_end REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lockouts (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lockout_accounts (
    address TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (address, account));
CREATE TABLE IF NOT EXISTS {LEGACY_TABLE} (key TEXT PRIMARY KEY, until REAL NOT NULL);
"""

# The later end of one key in either table (one statement: one snapshot of both).
_UNTIL = (f"SELECT MAX(until) FROM (SELECT until FROM lockouts WHERE key = ?1 "  # noqa: S608 - a constant
          f"UNION ALL SELECT until FROM {LEGACY_TABLE} WHERE key = ?1)")

# Exact, case-sensitive prefix: not LIKE, which ignores case (`alice` would lift `Alice`)
# and treats `_` and `%` as wildcards. substr() counts characters, as len() does; `=`
# compares bytes (BINARY). ?1 = len(prefix), ?2 = prefix.
_BY_PREFIX = "substr(key, 1, ?1) = ?2"


class SQLiteFile(Protocol):
    """What the driver needs of store/sqlite.py's `SQLiteStore` (which it must not import:
    the store makes its driver)."""

    def connection(self) -> sqlite3.Connection:
        """This thread's autocommit connection; StoreUnavailable on busy, read-only or full."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A context that runs its block in one IMMEDIATE transaction."""


class SQLiteLockouts(LockoutStore):
    """Sign-in failure counters and lockouts in the SQLite file of `store`. Creating it
    creates the tables (``locks`` of the releases before too, when missing: see the module
    docstring); raises StoreUnavailable when the file cannot be written now."""

    def __init__(self, store: SQLiteFile) -> None:
        self._store = store
        store.connection().executescript(SCHEMA)

    def add_failure(self, key: str, now: float, window: float) -> int:
        """See LockoutStore.add_failure: a read then a write in one IMMEDIATE transaction."""
        with self._store.transaction() as db:
            row = db.execute("SELECT count, window_end FROM failures WHERE key = ?", (key,)).fetchone()
            count = 1 if row is None or row[1] <= now else row[0] + 1
            window_end = now + window if row is None or row[1] <= now else row[1]
            db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (key, count, window_end))
        return int(count)

    def clear_failures(self, key: str) -> None:
        """Forget the failure count of exactly `key` (nothing when there is none)."""
        self._store.connection().execute("DELETE FROM failures WHERE key = ?", (key,))

    def set_lockout(self, key: str, until: float) -> None:
        """See LockoutStore.set_lockout: one upsert into ``lockouts`` keeping the later end
        (a later end in ``locks`` wins at every read)."""
        self._store.connection().execute(
            "INSERT INTO lockouts VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET until = MAX(until, excluded.until)",
            (key, until),
        )

    def lockout_until(self, key: str, now: float) -> float | None:
        """See LockoutStore.lockout_until: the later end in ``lockouts`` and ``locks``, one query."""
        row = self._store.connection().execute(_UNTIL, (key,)).fetchone()
        return float(row[0]) if row is not None and row[0] is not None and row[0] > now else None

    def any_locked_out(self, keys: list[str], now: float) -> bool:
        """See LockoutStore.any_locked_out: one query on the primary keys of ``lockouts`` and
        ``locks``."""
        if not keys:
            return False
        marks = ",".join("?" * len(keys))
        sql = (f"SELECT 1 FROM lockouts WHERE key IN ({marks}) AND until > ? UNION ALL "  # noqa: S608 - only ? marks
               f"SELECT 1 FROM {LEGACY_TABLE} WHERE key IN ({marks}) AND until > ? LIMIT 1")
        return self._store.connection().execute(sql, (*keys, now, *keys, now)).fetchone() is not None

    def clear_lockouts_by_prefix(self, prefix: str) -> int:
        """See LockoutStore.clear_lockouts_by_prefix: lockouts (of ``lockouts`` and ``locks``)
        and counters in one IMMEDIATE transaction; a key held in both tables counts once."""
        args = (len(prefix), prefix)
        with self._store.transaction() as db:
            row = db.execute(f"SELECT COUNT(*) FROM (SELECT key FROM lockouts WHERE {_BY_PREFIX} "  # noqa: S608
                             f"UNION SELECT key FROM {LEGACY_TABLE} WHERE {_BY_PREFIX})", args).fetchone()
            db.execute(f"DELETE FROM lockouts WHERE {_BY_PREFIX}", args)  # noqa: S608 - constants only
            db.execute(f"DELETE FROM {LEGACY_TABLE} WHERE {_BY_PREFIX}", args)  # noqa: S608
            db.execute(f"DELETE FROM failures WHERE {_BY_PREFIX}", args)  # noqa: S608
        return int(row[0])

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
        """See LockoutStore.clear_lockout: one IMMEDIATE transaction, deleting `key` from
        ``lockouts`` and ``locks``; 1 when either held it."""
        with self._store.transaction() as db:
            n = db.execute("DELETE FROM lockouts WHERE key = ?", (key,)).rowcount
            n += db.execute(f"DELETE FROM {LEGACY_TABLE} WHERE key = ?", (key,)).rowcount  # noqa: S608
            db.execute("DELETE FROM failures WHERE key = ?", (key,))
            db.execute("DELETE FROM lockout_accounts WHERE address = ?", (key,))
        return 1 if n else 0
