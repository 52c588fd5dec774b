"""The embedded default state store: one SQLite file in WAL mode.

Safe for the server's threads (a connection per thread), for several server
processes on one instance home (``server.workers``) and for the CLI writing
while the server runs (WAL, busy timeout). Each operation that must not race is
one statement or one IMMEDIATE transaction: never a deferred read-then-write,
which across processes either loses an update or fails on the lock upgrade
(SQLITE_BUSY). tests/test_workers_race.py races each from processes.

A write that cannot get the file's write lock within ``busy_timeout`` seconds, or
that the file refuses (read-only, full, I/O error), raises StoreUnavailable: the
request that needed it is refused (503), never let through uncounted.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

from .base import Grant, InvitationRecord, LockoutStore, StateStore, StoreUnavailable, check_secret
from .sqlite_lockout import SQLiteLockouts

log = logging.getLogger("davserver.store")

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStore"]

#: Seconds a statement waits for another connection's (or process's) write lock.
DEFAULT_BUSY_TIMEOUT = 10.0
#: Primary result codes that mean "the store cannot do this now": busy, locked, read-only,
#: I/O error, full, cannot open (https://www.sqlite.org/rescode.html).
_UNAVAILABLE = frozenset({5, 6, 8, 10, 13, 14})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS otp_steps (account TEXT PRIMARY KEY, step INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    account TEXT NOT NULL, fingerprint TEXT NOT NULL, epoch TEXT NOT NULL,
    opened REAL NOT NULL, last_used REAL NOT NULL, idle_until REAL NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (account, fingerprint));
CREATE TABLE IF NOT EXISTS invitations (
    digest TEXT PRIMARY KEY, account TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    keep_until REAL NOT NULL, failures INTEGER NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shared_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS period_secrets (
    name TEXT NOT NULL, period INTEGER NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (name, period));
"""

_INVITATION_COLUMNS = "digest, account, created, expires, keep_until, failures, state"


class _Connection(sqlite3.Connection):
    """A connection whose "cannot now" failures (`_UNAVAILABLE`) raise StoreUnavailable, so
    the guard and the error pages fail closed with 503 (guard.py, error_pages.py) for the
    store's own operations and for store/davstate.py's alike."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """sqlite3's execute; StoreUnavailable instead of a "cannot now" OperationalError."""
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        """sqlite3's executemany; StoreUnavailable instead of a "cannot now" OperationalError."""
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: sqlite3.OperationalError) -> Exception:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return StoreUnavailable(f"state store (sqlite): {exc}") if code in _UNAVAILABLE else exc


def _private_file(path: Path) -> None:
    """Make the database file `path` readable by its owner only before SQLite opens it:
    created 0600 when missing (whatever the umask: fchmod), an existing one's group and
    other bits removed (0644 becomes 0600; an owner-only mode is left as it is), and the
    -wal and -shm an older installation left chmod 0600. SQLite creates its -wal and -shm
    with the main file's mode (sqlite3.c: unixOpen through findCreateFileMode for the
    -wal, unixOpenSharedMemory for the -shm, both fchmod in robust_open), so they are
    never readable by others either: they hold the same bytes (CSRF key, TLS ticket keys,
    grants). `path.parent` may be a folder others can enter (``state.path`` names any
    file): a -wal or -shm that is a symlink is left alone (its target is not ours), and
    nothing here blocks on a FIFO. Raises StoreUnavailable when `path` is not a regular
    file, OSError when the file cannot be made or its mode cannot be set (not its
    owner)."""
    # O_NONBLOCK: a FIFO planted at the path must not block the open (SQLite alone fails at once).
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        made = False
    else:
        made = True
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise StoreUnavailable(f"state store (sqlite) unavailable: {path} is not a regular file")
        mode = stat.S_IMODE(found.st_mode)
        if made:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask took away
        elif mode & 0o077:
            os.fchmod(fd, mode & 0o700 or 0o600)  # others' bits go; a read-only file stays read-only
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        try:  # never through a symlink planted there: its target is not ours to change
            side = os.open(f"{path}{suffix}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue  # missing, or a symlink (ELOOP): SQLite decides what to do with it
        try:
            if stat.S_ISREG(os.fstat(side).st_mode):
                os.fchmod(side, 0o600)
        finally:
            os.close(side)


class SQLiteStore(StateStore):
    """The state store in the SQLite file `path` (created with its folder, mode 0600; its
    -wal and -shm get the same mode: `_private_file`). `busy_timeout`: seconds a write
    waits for the file's write lock before StoreUnavailable (SQLite's busy timeout).
    Sign-in failure counters and lockouts are its `lockouts` driver
    (store/sqlite_lockout.py, which also reads and clears the ``locks`` table of earlier
    releases). Opening raises StoreUnavailable when the file cannot be opened or written
    now, OSError when its folder cannot be made or its files' modes cannot be set."""

    def __init__(self, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_file(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._wipe_pending = False  # period_secret: a WAL checkpoint after a delete did not finish
        self._db().executescript(_SCHEMA)
        self.lockouts: LockoutStore = SQLiteLockouts(self)
        path.chmod(0o600)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        """A new connection in WAL mode. Turning a new file to WAL needs it to itself, and
        SQLite answers SQLITE_BUSY at once, without the busy timeout, when another process
        opens it at that moment (the workers of a first start): retried for ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False, factory=_Connection)
        try:
            while True:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except StoreUnavailable:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
            db.execute("PRAGMA synchronous=NORMAL")
            # deleted rows' bytes are overwritten with zeros, not left in free space
            # (period_secret: a deleted key must not be readable from the file)
            db.execute("PRAGMA secure_delete=ON")
        except BaseException:
            db.close()
            raise
        return db

    class _Tx:
        """`SQLiteStore.transaction`: BEGIN IMMEDIATE on enter, COMMIT on a clean exit,
        ROLLBACK otherwise (also when the COMMIT fails)."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except BaseException:
                    self._rollback()  # never leave the thread's connection inside a transaction
                    raise
            self._rollback()

        def _rollback(self) -> None:
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR)
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _tx(self) -> SQLiteStore._Tx:
        return self._Tx(self._db())

    # --- for modules that keep their own tables in this file (store/davstate.py) ---------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit); closed by close()."""
        return self._db()

    def transaction(self) -> SQLiteStore._Tx:
        """`with store.transaction() as db:` runs the block in one IMMEDIATE transaction."""
        return self._tx()

    # --- one code, one use ---------------------------------------------------------

    def use_otp_step(self, account: str, step: int) -> bool:
        """See StateStore.use_otp_step: one upsert that only ever raises the step."""
        cur = self._db().execute(
            "INSERT INTO otp_steps(account, step) VALUES (?, ?) "
            "ON CONFLICT(account) DO UPDATE SET step = excluded.step WHERE excluded.step > otp_steps.step",
            (account, step),
        )
        return cur.rowcount == 1

    # --- grants ----------------------------------------------------------------------

    def open_grant(self, grant: Grant) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO grants VALUES (?, ?, ?, ?, ?, ?, ?)",
            (grant.account, grant.fingerprint, grant.epoch, grant.opened, grant.last_used,
             grant.idle_until, grant.expires),
        )

    def get_grant(self, account: str, fingerprint: str) -> Grant | None:
        row = self._db().execute(
            "SELECT account, fingerprint, epoch, opened, last_used, idle_until, expires FROM grants "
            "WHERE account = ? AND fingerprint = ?",
            (account, fingerprint),
        ).fetchone()
        return Grant(*row) if row else None

    def touch_grant(self, account: str, fingerprint: str, now: float, idle: float) -> None:
        self._db().execute(
            "UPDATE grants SET last_used = ?, idle_until = MIN(expires, ?) "
            "WHERE account = ? AND fingerprint = ? AND idle_until > ?",
            (now, now + idle, account, fingerprint, now),
        )

    def end_grant(self, account: str, fingerprint: str) -> None:
        self._db().execute("DELETE FROM grants WHERE account = ? AND fingerprint = ?", (account, fingerprint))

    def end_grants(self, account: str) -> int:
        return self._db().execute("DELETE FROM grants WHERE account = ?", (account,)).rowcount

    # --- enrolment invitations -----------------------------------------------------------

    def add_invitation(self, record: InvitationRecord, now: float, limit: int) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM invitations WHERE keep_until <= ?", (now,))
            (kept,) = db.execute("SELECT COUNT(*) FROM invitations").fetchone()
            if kept >= limit:  # make room: closed and expired records, soonest expiry first
                db.execute(
                    "DELETE FROM invitations WHERE digest IN (SELECT digest FROM invitations "
                    "WHERE state != 'open' OR expires <= ? ORDER BY expires LIMIT ?)",
                    (now, kept - limit + 1),
                )
                (kept,) = db.execute("SELECT COUNT(*) FROM invitations").fetchone()
                if kept >= limit:
                    return False
            db.execute(
                f"INSERT INTO invitations ({_INVITATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (record.digest, record.account, record.created, record.expires, record.keep_until,
                 record.failures, record.state),
            )
        return True

    def get_invitation(self, digest: str) -> InvitationRecord | None:
        row = self._db().execute(
            f"SELECT {_INVITATION_COLUMNS} FROM invitations WHERE digest = ?", (digest,)  # noqa: S608
        ).fetchone()
        return InvitationRecord(*row) if row else None

    def fail_invitation(self, digest: str, now: float, max_failures: int) -> int:
        row = self._db().execute(
            "UPDATE invitations SET failures = failures + 1, "
            "state = CASE WHEN failures + 1 >= ? THEN 'burned' ELSE state END "
            "WHERE digest = ? AND state = 'open' AND expires > ? RETURNING failures",
            (max_failures, digest, now),
        ).fetchone()
        return int(row[0]) if row else 0

    def spend_invitation(self, digest: str, now: float) -> bool:
        cur = self._db().execute(
            "UPDATE invitations SET state = 'spent' WHERE digest = ? AND state = 'open' AND expires > ?",
            (digest, now),
        )
        return cur.rowcount == 1

    def unspend_invitation(self, digest: str, now: float) -> bool:
        cur = self._db().execute(
            "UPDATE invitations SET state = 'open' WHERE digest = ? AND state = 'spent' AND expires > ?",
            (digest, now),
        )
        return cur.rowcount == 1

    def open_invitations(self, now: float) -> list[InvitationRecord]:
        rows = self._db().execute(
            f"SELECT {_INVITATION_COLUMNS} FROM invitations "  # noqa: S608
            "WHERE state = 'open' AND expires > ? ORDER BY expires, created", (now,)
        ).fetchall()
        return [InvitationRecord(*row) for row in rows]

    def revoke_invitations(self, account: str, now: float) -> int:
        return self._db().execute(
            "UPDATE invitations SET state = 'revoked' WHERE account = ? AND state = 'open' AND expires > ?",
            (account, now),
        ).rowcount

    # --- keys shared by every process on this file -------------------------------------------

    def shared_secret(self, name: str, size: int = 32) -> bytes:
        """See StateStore.shared_secret: INSERT OR IGNORE of fresh random bytes, then SELECT,
        in one IMMEDIATE transaction, so of processes racing to make it one value wins."""
        check_secret(name, size)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO shared_secrets(name, value) VALUES (?, ?)",
                       (name, secrets.token_bytes(size)))
            (value,) = db.execute("SELECT value FROM shared_secrets WHERE name = ?", (name,)).fetchone()
        return check_secret(name, size, bytes(value))

    def period_secret(self, name: str, period: int, size: int, keep_seconds: float) -> bytes:
        """See StateStore.period_secret. In one IMMEDIATE transaction: delete this name's
        secrets of periods before ``top - 1`` (``top``: the latest period asked for, this one
        or one stored) or past their ``expires``, and its `shared_secret` of earlier releases
        (same name), then INSERT OR IGNORE fresh random bytes for `period` and SELECT them.
        ``secure_delete`` (set on every connection) zeroes the deleted rows in the pages
        written to the WAL; the deleted bytes' older copies still sit in earlier WAL frames,
        so after a delete a ``wal_checkpoint(TRUNCATE)`` copies the zeroed pages into the
        database file and empties the WAL (it waits up to ``busy_timeout`` for readers; a
        warning when it could not finish, retried by the next delete)."""
        check_secret(name, size)
        now = time.time()
        value: bytes | None = None
        with self._tx() as db:
            (top,) = db.execute("SELECT MAX(period) FROM period_secrets WHERE name = ?", (name,)).fetchone()
            top = period if top is None else max(int(top), period)
            deleted = db.execute("DELETE FROM period_secrets WHERE name = ? AND (period < ? OR expires <= ?)",
                                 (name, top - 1, now)).rowcount
            deleted += db.execute("DELETE FROM shared_secrets WHERE name = ?", (name,)).rowcount
            if keep_seconds > 0 and period >= top - 1:
                db.execute("INSERT OR IGNORE INTO period_secrets(name, period, value, expires) VALUES (?, ?, ?, ?)",
                           (name, period, secrets.token_bytes(size), now + keep_seconds))
                (stored,) = db.execute("SELECT value FROM period_secrets WHERE name = ? AND period = ?",
                                       (name, period)).fetchone()
                value = bytes(stored)
        if deleted or self._wipe_pending:
            busy, _, _ = self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self._wipe_pending = bool(busy)
            if busy:
                log.warning("state store (sqlite): deleted secrets may stay in %s-wal until the next "
                            "checkpoint (a reader held it)", self.path)
        if value is None:  # a period already over: bytes no other process has, stored nowhere
            return secrets.token_bytes(size)
        return check_secret(name, size, value)

    def ping(self) -> None:
        """Raise StoreUnavailable when the file cannot be read now (``SELECT 1``)."""
        self._db().execute("SELECT 1")

    def close(self) -> None:
        """Close the connections of every thread; a later call opens a new one."""
        with self._all_lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()
