"""WebDAV locks and dead properties, kept in the state store's SQLite file.

WsgiDAV keeps both in memory by default, so a restart forgets every lock (a
client holding one then overwrites what another saved meanwhile) and every
property a client set. These two classes implement the interfaces WsgiDAV
expects (``wsgidav.lock_man.lock_storage.LockStorageDict`` and
``wsgidav.prop_man.property_manager.PropertyManager``) on two tables in the
same file as the rest of the runtime state, using the store's per-thread
connections (so ``SQLiteStore.close()`` closes them too).

Values are plain columns (XML as BLOB), never pickles.

Locks:

- ``create`` checks for conflicting locks and inserts in one IMMEDIATE
  transaction, so two threads, or two processes sharing the file, cannot both
  get an exclusive lock. (WsgiDAV's LockManager checks first under a lock that
  only covers its own process; this is the check that holds across processes.)
- Timeouts are capped at ``max_timeout`` seconds: "Infinite", a missing
  Timeout header (WsgiDAV's default is a week) or anything longer gets the cap.
- Expired locks are never returned; they are purged on open, on every create
  and refresh, and when looked up.
- A lock belongs to the account that took it (``principal``). WsgiDAV enforces
  that for writes and UNLOCK, but not for a LOCK refresh:
  :class:`LockOwnerFilter` closes that gap.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_FORBIDDEN,
    HTTP_LOCKED,
    HTTP_PRECONDITION_FAILED,
    DAVError,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
    PRECONDITION_CODE_LockTokenMismatch,
)
from wsgidav.lock_man.lock_manager import generate_lock_token, normalize_lock_root, validate_lock
from wsgidav.mw.base_mw import BaseMiddleware

from .sqlite import SQLiteStore

__all__ = ["DEFAULT_MAX_LOCK_TIMEOUT", "LockOwnerFilter", "SQLiteLockStorage", "SQLitePropertyManager"]

#: Seconds; what `locks.max_timeout_seconds` defaults to.
DEFAULT_MAX_LOCK_TIMEOUT = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dav_locks (
    token TEXT PRIMARY KEY, root TEXT NOT NULL, principal TEXT NOT NULL,
    type TEXT NOT NULL, scope TEXT NOT NULL, depth TEXT NOT NULL,
    owner BLOB NOT NULL, timeout REAL NOT NULL, expire REAL NOT NULL);
CREATE INDEX IF NOT EXISTS dav_locks_root ON dav_locks(root);
CREATE INDEX IF NOT EXISTS dav_locks_expire ON dav_locks(expire);
CREATE TABLE IF NOT EXISTS dav_props (
    url TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (url, name));
"""

# Queries are literals (no string building): arguments only ever travel as parameters.
_SELECT_LOCK = (
    "SELECT token, root, principal, type, scope, depth, owner, timeout, expire FROM dav_locks WHERE token = ?"
)


def _below(prefix: str) -> tuple[str, str]:
    """Bounds of the strings that start with `prefix` + '/' (case-sensitive, index-friendly:
    '0' sorts right after '/'). SQLite's LIKE would ignore case and need escaping."""
    base = prefix.rstrip("/")
    return base + "/", base + "0"


def _ancestors(root: str) -> list[str]:
    """Normalized lock roots of every parent collection of `root`, nearest first."""
    out = []
    parent = util.get_uri_parent(root)
    while parent:
        out.append(normalize_lock_root(parent))
        parent = util.get_uri_parent(parent)
    return out


def _lock_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    token, root, principal, type_, scope, depth, owner, timeout, expire = row
    return {
        "token": token,
        "root": root,
        "principal": principal,
        "type": type_,
        "scope": scope,
        "depth": depth,
        "owner": bytes(owner),
        "timeout": float(timeout),
        "expire": float(expire),
    }


def prepare_new_lock(path: str, lock: dict[str, Any], timeout: float) -> tuple[str, str]:
    """Fill in a new lock's root, capped timeout and owner (as bytes); returns (root, new token).

    Shared by every lock storage, so each backend only decides how to check and store.
    """
    assert lock.get("token") is None
    assert lock.get("expire") is None, "Use timeout instead of expire"
    assert path and "/" in path
    root = normalize_lock_root(path)
    lock["root"] = root
    lock["timeout"] = timeout
    owner = lock.get("owner") or b""
    lock["owner"] = owner.encode("utf-8") if isinstance(owner, str) else bytes(owner)
    validate_lock(lock)
    return root, generate_lock_token()


class SQLiteLockStorage:
    """Lock storage for WsgiDAV's LockManager (``lock_storage`` in its config)."""

    def __init__(
        self,
        store: SQLiteStore,
        *,
        max_timeout: float = DEFAULT_MAX_LOCK_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_timeout <= 0:
            raise ValueError("max_timeout must be positive")
        self.store = store
        self.max_timeout = float(max_timeout)
        self._clock = clock
        store.connection().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self.store.path)!r}, max_timeout={self.max_timeout:g})"

    def _db(self) -> sqlite3.Connection:
        return self.store.connection()

    def clamp_timeout(self, timeout: float | None) -> float:
        """Seconds a lock is granted for: the request's, but never infinite nor above the cap."""
        if timeout is None or timeout <= 0 or timeout > self.max_timeout:
            return self.max_timeout
        return float(timeout)

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Called by LockManager: nothing to open (the store owns the connections)."""
        self.cleanup()

    def close(self) -> None:
        """Called by LockManager.__del__: the store closes the connections, not us."""

    def cleanup(self) -> int:
        """Purge expired locks; returns how many."""
        return self._db().execute("DELETE FROM dav_locks WHERE expire < ?", (self._clock(),)).rowcount

    def clear(self) -> None:
        self._db().execute("DELETE FROM dav_locks")

    # --- single locks ----------------------------------------------------------------

    def get(self, token: str) -> dict[str, Any] | None:
        """The lock, or None when it does not exist or has expired (an expired one is purged)."""
        row = self._db().execute(_SELECT_LOCK, (token,)).fetchone()
        if row is None:
            return None
        lock = _lock_dict(row)
        if lock["expire"] < self._clock():
            self._db().execute("DELETE FROM dav_locks WHERE token = ? AND expire < ?", (token, self._clock()))
            return None
        return lock

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        """Check for conflicts and store the lock in one transaction.

        Like LockStorageDict.create, fills in `lock` (root, timeout, expire, token)
        and returns it. Raises DAVError(423) when a conflicting lock exists.
        """
        root, token = prepare_new_lock(path, lock, self.clamp_timeout(lock.get("timeout")))
        with self.store.transaction() as db:
            now = self._clock()
            db.execute("DELETE FROM dav_locks WHERE expire < ?", (now,))
            conflicts = self._conflicts(db, root, lock["scope"], lock["depth"], now)
            if conflicts:
                cond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
                for href in conflicts:
                    cond.add_href(href)
                raise DAVError(HTTP_LOCKED, err_condition=cond)
            lock["expire"] = now + lock["timeout"]
            lock["token"] = token
            db.execute(
                "INSERT INTO dav_locks (token, root, principal, type, scope, depth, owner, timeout, expire) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token, root, lock["principal"], lock["type"], lock["scope"], lock["depth"], lock["owner"],
                 lock["timeout"], lock["expire"]),
            )
        return lock

    @staticmethod
    def _conflicts(db: sqlite3.Connection, root: str, scope: str, depth: str, now: float) -> list[str]:
        """Roots of live locks a new (scope, depth) lock on `root` would conflict with.

        The same rules as LockManager._check_lock_permission: a lock on the resource
        conflicts unless both are shared; a parent's lock only if it is depth-infinity
        (and not both shared); a child's lock whenever the new lock is depth-infinity.
        """
        hrefs: list[str] = []
        for path in (root, *_ancestors(root)):
            for lock_scope, lock_depth in db.execute(
                "SELECT scope, depth FROM dav_locks WHERE root = ? AND expire >= ?", (path, now)
            ):
                if path != root and lock_depth != "infinity":
                    continue
                if lock_scope == "shared" and scope == "shared":
                    continue
                hrefs.append(path)
        if depth == "infinity":
            lo, hi = _below(root)
            hrefs += [
                r
                for (r,) in db.execute(
                    "SELECT root FROM dav_locks WHERE root >= ? AND root < ? AND root != ? AND expire >= ?",
                    (lo, hi, root, now),
                )
            ]
        return hrefs

    def refresh(self, token: str, *, timeout: float | None) -> dict[str, Any]:
        """Give a live lock a new timeout (capped); 412 when it no longer exists."""
        timeout = self.clamp_timeout(timeout)
        with self.store.transaction() as db:
            now = self._clock()
            db.execute("DELETE FROM dav_locks WHERE expire < ?", (now,))
            db.execute("UPDATE dav_locks SET timeout = ?, expire = ? WHERE token = ?", (timeout, now + timeout, token))
            row = db.execute(_SELECT_LOCK, (token,)).fetchone()
        if row is None:
            raise DAVError(HTTP_PRECONDITION_FAILED, err_condition=PRECONDITION_CODE_LockTokenMismatch)
        return _lock_dict(row)

    def delete(self, token: str) -> bool:
        """Remove a lock; False when it did not exist."""
        return self._db().execute("DELETE FROM dav_locks WHERE token = ?", (token,)).rowcount > 0

    # --- lists -----------------------------------------------------------------------

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[Any]:
        """Live locks on `path` (include_root) and/or below it (include_children)."""
        assert path and path.startswith("/")
        assert include_root or include_children
        root = normalize_lock_root(path)
        lo, hi = _below(root)
        rows = self._db().execute(
            "SELECT token, root, principal, type, scope, depth, owner, timeout, expire FROM dav_locks "
            "WHERE ((? AND root = ?) OR (? AND root >= ? AND root < ? AND root != ?)) AND expire >= ? "
            "ORDER BY root, token",
            (include_root, root, include_children, lo, hi, root, self._clock()),
        ).fetchall()
        locks = [_lock_dict(row) for row in rows]
        return [lock["token"] for lock in locks] if token_only else locks


class SQLitePropertyManager:
    """Dead-property storage for WsgiDAV (``property_manager`` in its config).

    Keys are WsgiDAV's ref-URLs (quoted, share prefix included, collections end in '/');
    values are the property's XML as WsgiDAV hands it over (bytes).
    """

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        store.connection().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self.store.path)!r})"

    def _db(self) -> sqlite3.Connection:
        return self.store.connection()

    @staticmethod
    def _tree(url: str) -> tuple[str, str, str, str]:
        """Arguments for `(url IN (?, ?) OR (url >= ? AND url < ?))`: `url`, with or without
        its trailing '/', and everything below it."""
        base = url.rstrip("/") or "/"
        lo, hi = _below(base)
        return base, base.rstrip("/") + "/", lo, hi

    def get_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> list[str]:
        return [
            name
            for (name,) in self._db().execute("SELECT name FROM dav_props WHERE url = ? ORDER BY name", (norm_url,))
        ]

    def get_many(self, urls: list[str]) -> dict[str, tuple[tuple[str, bytes], ...]]:
        """The properties of many resources (a folder's members) in a few queries: url -> ((name, value), …)."""
        found: dict[str, list[tuple[str, bytes]]] = {}
        db = self._db()
        for i in range(0, len(urls), 500):
            batch = urls[i : i + 500]
            sql = f"SELECT url, name, value FROM dav_props WHERE url IN ({','.join('?' * len(batch))})"  # noqa: S608
            for url, name, value in db.execute(sql + " ORDER BY url, name", batch):
                found.setdefault(url, []).append((name, bytes(value)))
        return {url: tuple(props) for url, props in found.items()}

    def get_property(self, norm_url: str, name: str, environ: dict[str, Any] | None = None) -> bytes | None:
        row = self._db().execute("SELECT value FROM dav_props WHERE url = ? AND name = ?", (norm_url, name)).fetchone()
        return bytes(row[0]) if row else None

    def write_property(
        self,
        norm_url: str,
        name: str,
        property_value: bytes | str,
        dry_run: bool = False,
        environ: dict[str, Any] | None = None,
    ) -> None:
        assert norm_url and norm_url.startswith("/")
        assert name
        assert property_value is not None
        if dry_run:
            return
        value = property_value.encode("utf-8") if isinstance(property_value, str) else bytes(property_value)
        self._db().execute(
            "INSERT INTO dav_props (url, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT(url, name) DO UPDATE SET value = excluded.value",
            (norm_url, name, value),
        )

    def remove_property(
        self, norm_url: str, name: str, dry_run: bool = False, environ: dict[str, Any] | None = None
    ) -> None:
        """Removing a property that does not exist is not an error."""
        if dry_run:
            return
        self._db().execute("DELETE FROM dav_props WHERE url = ? AND name = ?", (norm_url, name))

    def remove_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> None:
        """Remove the resource's properties and those of everything below it.

        WsgiDAV deletes a folder with one rmtree and then asks to remove the folder's
        properties only (dav_provider.py remove_all_properties ignores `recursive`);
        kept on disk, its members' properties would reappear on new files of the same name.
        """
        self._db().execute(
            "DELETE FROM dav_props WHERE (url IN (?, ?) OR (url >= ? AND url < ?))", self._tree(norm_url)
        )

    def copy_properties(self, src_url: str, dest_url: str, environ: dict[str, Any] | None = None) -> None:
        """The destination ends up with exactly the source's properties."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT name, value FROM dav_props WHERE url = ?", (src_url,)).fetchall()
            db.execute("DELETE FROM dav_props WHERE url = ?", (dest_url,))
            db.executemany("INSERT INTO dav_props (url, name, value) VALUES (?, ?, ?)",
                           [(dest_url, name, value) for name, value in rows])

    def move_properties(
        self, src_url: str, dest_url: str, with_children: bool, environ: dict[str, Any] | None = None
    ) -> None:
        with self.store.transaction() as db:
            if not with_children:
                rows = db.execute("SELECT url, name, value FROM dav_props WHERE url = ?", (src_url,)).fetchall()
                moved = [(dest_url, name, value) for _url, name, value in rows]
                db.execute("DELETE FROM dav_props WHERE url = ?", (src_url,))
                db.execute("DELETE FROM dav_props WHERE url = ?", (dest_url,))
            else:
                src = src_url.rstrip("/")
                dest = dest_url.rstrip("/")
                rows = db.execute(
                    "SELECT url, name, value FROM dav_props WHERE (url IN (?, ?) OR (url >= ? AND url < ?))",
                    self._tree(src_url),
                ).fetchall()
                moved = [(dest + url[len(src):], name, value) for url, name, value in rows]
                for url in (src_url, dest_url):
                    db.execute(
                        "DELETE FROM dav_props WHERE (url IN (?, ?) OR (url >= ? AND url < ?))", self._tree(url)
                    )
            db.executemany("INSERT OR REPLACE INTO dav_props (url, name, value) VALUES (?, ?, ?)", moved)

    def clear(self) -> None:
        self._db().execute("DELETE FROM dav_props")

    def close(self) -> None:
        """The store closes the connections."""


class LockOwnerFilter(BaseMiddleware):
    """Refuses a LOCK that presents another account's lock token (RFC 4918 §6.4).

    WsgiDAV checks the lock's principal on writes (lock_manager.py
    _get_write_conflicts) and on UNLOCK (request_server.py do_UNLOCK,
    is_token_locked_by_user), but a LOCK refresh only checks that the token
    matches the URL (request_server.py do_LOCK: "TODO: test, if token is owned by
    user"). Its If-header check would normally stop another account, except that
    a tagged list (`If: <https://host/path> (<token>)`) is never matched against
    the resource (util.test_if_header_dict compares with the ref-URL) and so is
    not checked at all. Without this filter, any account could keep another
    account's lock alive for ever.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        lock_manager = self.wsgidav_app.lock_manager
        if environ.get("REQUEST_METHOD") == "LOCK" and environ.get("HTTP_IF") and lock_manager is not None:
            util.parse_if_header_dict(environ)
            user = environ.get("wsgidav.auth.user_name")
            for token in environ["wsgidav.ifLockTokenList"]:
                lock = lock_manager.get_lock(token)
                if lock is not None and lock["principal"] != user:
                    environ["davserver.limit"] = "lock_token_owner"  # audited as a refusal (guard.REFUSAL_KEY)
                    raise DAVError(HTTP_FORBIDDEN, context_info="Token was created by another user.")
        result: Iterable[bytes] = self.next_app(environ, start_response)
        return result
