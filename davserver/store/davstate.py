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
- A LOCK on a resource that a PUT or PROPPATCH is still writing is refused (423)
  whatever process it reaches: :class:`SharedWritesLockManager` keeps WsgiDAV's marks of
  writes in flight in the ``dav_writes`` table instead of one process's memory.
- A lock belongs to the account that took it (``principal``). WsgiDAV enforces
  that for writes and UNLOCK, but not for a LOCK refresh:
  :class:`LockOwnerFilter` closes that gap.
- At most ``LockBounds.per_resource`` live locks on one resource (only shared
  locks can pile up) and ``LockBounds.per_account`` held by one account: counted
  in the same transaction as the conflict check, so no race gets past them.

Dead properties are bounded per resource (:class:`PropertyBounds`): a value's
size, how many, and their bytes together. A PROPPATCH is checked and applied as
one transaction (see :class:`_Pending`), and one PROPFIND answer's dead
properties are measured before it is built (``answer_bytes``). Every refusal is
a :class:`StateLimitExceeded` (507) whose reason reaches the audit line.

What holds under concurrency: a bound is never exceeded, by any number of
racing requests on any number of processes or nodes, because the count and the
write are one transaction (SQLite ``BEGIN IMMEDIATE``) or one Lua script
(Redis). What the bounds do not cover: the number of resources. The state a
writer can add grows with the files it may create (each at most
``bytes_per_resource``); only the share's filesystem (its space, inodes or a
quota on it) bounds how many that is.
"""

from __future__ import annotations

import io
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from defusedxml import ElementTree as DefusedElementTree
from wsgidav import util
from wsgidav.dav_error import (
    HTTP_FAILED_DEPENDENCY,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_LOCKED,
    HTTP_PRECONDITION_FAILED,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
    PRECONDITION_CODE_LockTokenMismatch,
)

from ..access import Refusal
from ..framing import BadContentLength, content_length
from ..request_context import request_context
from ..settings_schema import setting
from ..upstream import (
    BaseMiddleware,
    DAVError,
    LockManager,
    generate_lock_token,
    normalize_lock_root,
    validate_lock,
    xml_to_bytes,
)
from .sqlite import SQLiteStore

__all__ = [
    "DEFAULT_MAX_LOCK_TIMEOUT",
    "LockBounds",
    "LockOwnerFilter",
    "PropertyBounds",
    "RecordLimitReason",
    "SQLiteLockStorage",
    "SQLitePropertyManager",
    "SharedWritesLockManager",
    "StateLimitExceeded",
]

#: Seconds; what `locks.max_timeout_seconds` defaults to.
DEFAULT_MAX_LOCK_TIMEOUT = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dav_locks (
    token TEXT PRIMARY KEY, root TEXT NOT NULL, principal TEXT NOT NULL,
    type TEXT NOT NULL, scope TEXT NOT NULL, depth TEXT NOT NULL,
    owner BLOB NOT NULL, timeout REAL NOT NULL, expire REAL NOT NULL);
CREATE INDEX IF NOT EXISTS dav_locks_root ON dav_locks(root);
CREATE INDEX IF NOT EXISTS dav_locks_expire ON dav_locks(expire);
CREATE INDEX IF NOT EXISTS dav_locks_principal ON dav_locks(principal, expire);
CREATE TABLE IF NOT EXISTS dav_props (
    url TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (url, name));
CREATE TABLE IF NOT EXISTS dav_writes (
    url TEXT NOT NULL, process TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (url, process));
"""

# Queries are literals (no string building): arguments only ever travel as parameters.
_SELECT_LOCK = (
    "SELECT token, root, principal, type, scope, depth, owner, timeout, expire FROM dav_locks WHERE token = ?"
)


#: The URLs with properties directly inside a folder (parameters: the folder's URL with
#: its '/' as `lo`, `hi` from _below, len(lo), `hi` again), by a skip walk over the
#: primary key: from a member to the next URL; from a URL deeper down to the first one
#: past its sub-folder (prefix + U+10FFFF sorts after every URL below it).
_MEMBERS = """
WITH RECURSIVE walk(u, n) AS (
    SELECT (SELECT min(url) FROM dav_props WHERE url > ? AND url < ?), ?
    UNION ALL
    SELECT (SELECT min(url) FROM dav_props WHERE url < ? AND url > CASE
                WHEN instr(substr(u, n + 1), '/') IN (0, length(u) - n) THEN u
                ELSE substr(u, 1, n + instr(substr(u, n + 1), '/')) || char(1114111) END), n
    FROM walk WHERE u IS NOT NULL
)
SELECT u FROM walk WHERE u IS NOT NULL AND instr(substr(u, n + 1), '/') IN (0, length(u) - n)
"""


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


# --- bounds -------------------------------------------------------------------------------

#: Namespace of the condition element in a refusal's ``<D:error>`` body (RFC 4918 §16
#: lets a server name its own conditions; clients ignore the ones they do not know).
LIMIT_NAMESPACE = "urn:davserver:limit"


@dataclass(frozen=True)
class PropertyBounds:
    """What the dead properties of one resource may hold (settings ``properties.*``).

    - ``value_bytes``: the largest value, in bytes of its XML as stored (the whole
      element, as WsgiDAV serialises it: tag, namespace declaration and content).
    - ``per_resource``: the most properties on one resource.
    - ``bytes_per_resource``: the most bytes of names (UTF-8) plus values on one resource.
    - ``answer_bytes``: the most bytes one PROPFIND answer may carry, estimated before
      it is built (fastpath.check_propfind: every asked-for name costs a propstat entry
      per member, plus the dead properties' bytes and lockdiscovery); over it: refused.
    - ``answer_names``: the most property names one PROPFIND may ask for.

    A write that would leave a resource over a bound, and hold more than before, is
    refused; one that shrinks it (a remove) is always allowed, so lowering a bound
    never traps what is already stored.
    """

    value_bytes: int = setting("properties.max_value_bytes").default
    per_resource: int = setting("properties.max_per_resource").default
    bytes_per_resource: int = setting("properties.max_bytes_per_resource").default
    answer_bytes: int = setting("properties.max_propfind_bytes").default
    answer_names: int = setting("properties.max_propfind_names").default

    def __post_init__(self) -> None:
        for name in ("value_bytes", "per_resource", "bytes_per_resource", "answer_bytes", "answer_names"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class LockBounds:
    """The most live WebDAV locks on one resource (``locks.max_per_resource``; only shared
    locks can pile up there) and held by one account (``locks.max_per_account``), and
    the largest ``<D:owner>`` of one lock in bytes of its XML as stored
    (``locks.max_owner_bytes``; lockdiscovery repeats it in every PROPFIND answer)."""

    per_resource: int = setting("locks.max_per_resource").default
    per_account: int = setting("locks.max_per_account").default
    owner_bytes: int = setting("locks.max_owner_bytes").default

    def __post_init__(self) -> None:
        if self.per_resource < 1 or self.per_account < 1 or self.owner_bytes < 1:
            raise ValueError("lock bounds must be positive")


def check_owner(lock: dict[str, Any], bounds: LockBounds) -> None:
    """Raise StateLimitExceeded (507, ``lock_owner_too_large``) when the lock's owner
    (bytes, as prepare_new_lock left it) is longer than ``bounds.owner_bytes``.
    Called by every lock storage's ``create`` before anything is stored."""
    if len(lock["owner"]) > bounds.owner_bytes:
        raise StateLimitExceeded(Refusal.LOCK_OWNER_TOO_LARGE,
                                 f"lock owner over {bounds.owner_bytes} bytes")


#: The defaults, as the config documents them.
DEFAULT_PROPERTY_BOUNDS = PropertyBounds()
DEFAULT_LOCK_BOUNDS = LockBounds()


class StateLimitExceeded(DAVError):
    """A lock, a property or a PROPFIND answer over its bound: ``507 Insufficient Storage``.

    ``reason`` (access.Refusal) is ``property_too_large`` (one value), ``too_many_properties``,
    ``property_bytes_exceeded`` (names + values of one resource), ``too_many_locks``
    (on one resource), ``too_many_account_locks`` or ``answer_too_large`` (PROPFIND).

    Why 507 for every kind: RFC 4918 §9.2.1 names it for a PROPPATCH ("the server did
    not have sufficient space to record the property"), and §11.5 defines it as the
    server being unable to store the representation a request needs, a condition that
    lasts until something is removed — which is what a full lock table or a too large
    answer is, too. 503 would say the whole server is overloaded and invite a retry
    after ``Retry-After``; clients (rclone, Windows' MiniRedir) retry 503 in a loop,
    where a 507 is reported to the user. A refusal's body (LOCK, PROPFIND) is
    ``<D:error><L:REASON xmlns:L="urn:davserver:limit"/></D:error>``; inside a
    PROPPATCH's 207 the property's propstat carries the 507.
    """

    def __init__(self, reason: Refusal, context: str | None, *, in_multistatus: bool = False) -> None:
        condition = f"{{{LIMIT_NAMESPACE}}}{reason.replace('_', '-')}"
        super().__init__(
            HTTP_INSUFFICIENT_STORAGE,
            context_info=context,
            # a property's propstat has no room for it; WsgiDAV would write its repr into
            # the 207's responsedescription instead (dav_error.py get_user_info)
            err_condition=None if in_multistatus else DAVErrorCondition(condition),
        )
        self.reason = reason


def refuse(environ: dict[str, Any] | None, reason: Refusal, context: str, *,
           in_multistatus: bool = False) -> StateLimitExceeded:
    """Note the reason for the audit line and return the error to raise. Only the first
    refusal of a request says why (WsgiDAV repeats each one's text in a 207's
    responsedescription: 20,000 refused properties would carry 20,000 copies)."""
    first = environ is None or request_context(environ).refuse_first(reason)
    return StateLimitExceeded(reason, context if first else None, in_multistatus=in_multistatus)


def prop_bytes(name: str, value: bytes) -> int:
    """What a property counts toward ``bytes_per_resource``: its name (UTF-8) and its value."""
    return len(name.encode("utf-8")) + len(value)


def over_bounds(bounds: PropertyBounds, count: int, total: int, count_before: int,
                total_before: int) -> Refusal | None:
    """The reason a resource may not go from (count_before, total_before) to (count, total), or None."""
    if count > bounds.per_resource and count > count_before:
        return Refusal.TOO_MANY_PROPERTIES
    if total > bounds.bytes_per_resource and total > total_before:
        return Refusal.PROPERTY_BYTES_EXCEEDED
    return None


def project(sizes: dict[str, int], changes: list[tuple[str, bytes | None]]) -> dict[str, int]:
    """The resource's property sizes after `changes` (in document order: RFC 4918 §9.2)."""
    after = dict(sizes)
    for name, value in changes:
        if value is None:
            after.pop(name, None)
        else:
            after[name] = prop_bytes(name, value)
    return after


#: environ key: the PROPPATCH changes collected in its dry run, per resource.
_PENDING_KEY = "davserver.proppatch"


class _Pending:
    """One PROPPATCH's changes to one resource, checked as they come and applied as one.

    WsgiDAV first tries every instruction with ``dry_run=True`` (request_server.py
    do_PROPPATCH) and, only when all succeed, applies them one call at a time. Here
    the dry run collects the changes and checks each, in document order (RFC 4918
    §9.2), against the stored state plus the changes before it: no instruction may
    take the resource over a bound while it holds more than before the PROPPATCH (a
    property that does not fit gets 507 in the 207, the others 424, nothing is
    stored). The first real call applies them all in one transaction (SQLite) or
    one script (Redis) that checks the end state again against what is stored at
    that moment. So a PROPPATCH is atomic, and racing ones can never leave a
    resource over a bound: a loser gets 507 for its first property, 424 for the rest.
    """

    __slots__ = ("changes", "count", "count_before", "done", "outcome", "sizes", "total", "total_before")

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = dict(sizes)
        self.count_before = self.count = len(sizes)
        self.total_before = self.total = sum(sizes.values())
        self.changes: list[tuple[str, bytes | None]] = []
        self.done = 0  # changes the real pass has reached
        self.outcome: Refusal | str | None = None  # "ok" or a refusal's reason, once applied

    def add(self, bounds: PropertyBounds, name: str, value: bytes | None) -> Refusal | None:
        """Take the change into the projection; the reason it does not fit (and then it is not taken)."""
        old = self.sizes.get(name)
        new = None if value is None else prop_bytes(name, value)
        count = self.count + (old is None and new is not None) - (old is not None and new is None)
        total = self.total - (old or 0) + (new or 0)
        reason = over_bounds(bounds, count, total, self.count_before, self.total_before)
        if reason is None:
            if new is None:
                self.sizes.pop(name, None)
            else:
                self.sizes[name] = new
            self.count, self.total = count, total
            self.changes.append((name, value))
        return reason


class BoundedProperties:
    """The part of a property manager that enforces :class:`PropertyBounds` (both backends).

    A backend provides ``_sizes`` (name -> bytes of one resource's properties) and
    ``_apply`` (check the bounds against what is stored and make the changes, in one
    transaction; the reason when they do not fit); this class turns WsgiDAV's
    ``write_property``/``remove_property`` calls into checked, atomic batches.
    """

    bounds: PropertyBounds

    def _sizes(self, url: str) -> dict[str, int]:
        raise NotImplementedError

    def _apply(self, url: str, changes: list[tuple[str, bytes | None]]) -> Refusal | None:
        raise NotImplementedError

    def _change(self, url: str, name: str, value: bytes | None, dry_run: bool,
                environ: dict[str, Any] | None) -> None:
        """One instruction of a PROPPATCH (value None: remove). Raises StateLimitExceeded (507),
        or DAVError(424) for the later instructions of a batch that was refused at commit."""
        if value is not None and len(value) > self.bounds.value_bytes:
            raise refuse(environ, Refusal.PROPERTY_TOO_LARGE,
                         f"{name}: {len(value)} bytes, at most {self.bounds.value_bytes}", in_multistatus=True)
        batches: dict[str, _Pending] | None = environ.setdefault(_PENDING_KEY, {}) if environ is not None else None
        if dry_run:
            if batches is None:
                return  # nothing to collect into: the real call checks on its own
            pending = batches.get(url)
            if pending is None:
                pending = batches[url] = _Pending(self._sizes(url))
            reason = pending.add(self.bounds, name, value)
            if reason is not None:
                raise refuse(environ, reason, self._describe(reason, url), in_multistatus=True)
            return
        pending = batches.get(url) if batches is not None else None
        if pending is not None and pending.changes[pending.done:pending.done + 1] == [(name, value)]:
            pending.done += 1
            if pending.outcome is None:
                refused = self._apply(url, pending.changes)
                pending.outcome = refused or "ok"
                if refused is not None:
                    raise refuse(environ, refused, self._describe(refused, url), in_multistatus=True)
            elif pending.outcome != "ok":
                raise DAVError(HTTP_FAILED_DEPENDENCY)
            return
        reason = self._apply(url, [(name, value)])  # a call outside a PROPPATCH's dry run/real pair
        if reason is not None:
            raise refuse(environ, reason, self._describe(reason, url), in_multistatus=True)

    def _describe(self, reason: str, url: str) -> str:
        if reason == Refusal.TOO_MANY_PROPERTIES:
            return f"{url}: at most {self.bounds.per_resource} properties"
        return f"{url}: at most {self.bounds.bytes_per_resource} bytes of properties"

    def write_property(
        self,
        norm_url: str,
        name: str,
        property_value: bytes | str,
        dry_run: bool = False,
        environ: dict[str, Any] | None = None,
    ) -> None:
        """Set a dead property (WsgiDAV's PropertyManager interface); 507 over a bound."""
        assert norm_url and norm_url.startswith("/")
        assert name
        assert property_value is not None
        value = property_value.encode("utf-8") if isinstance(property_value, str) else bytes(property_value)
        self._change(norm_url, name, value, dry_run, environ)

    def remove_property(
        self, norm_url: str, name: str, dry_run: bool = False, environ: dict[str, Any] | None = None
    ) -> None:
        """Removing a property that does not exist is not an error."""
        self._change(norm_url, name, None, dry_run, environ)


class RecordLimitReason(BaseMiddleware):
    """Lock bounds at the request: checked before WsgiDAV creates anything, and the
    reason of a refusal put where the audit line finds it.

    WsgiDAV creates the empty file of a LOCK on an unmapped URL before it asks for
    the lock (request_server.py do_LOCK, "TODO: check for locked parents BEFORE
    creating an empty child"), so a LOCK refused only by the storage would leave
    that file behind. A new LOCK is therefore first checked here (``check_bounds``,
    not atomic: a race can still get past it, and then the storage's atomic check
    in ``create`` refuses, leaving the empty file). A lock storage is called
    without the request (LockManager.acquire gets the URL and principal only), so
    its :class:`StateLimitExceeded` is noted on its way to the error page: WsgiDAV's
    request handler is a generator (request_server.py ``__call__``), so the error
    arrives while the answer is iterated, not when the app is called.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "LOCK":
            result: Iterable[bytes] = self.next_app(environ, start_response)
            return result
        lock_manager = self.wsgidav_app.lock_manager
        check = getattr(getattr(lock_manager, "storage", None), "check_bounds", None)
        share_path = getattr(environ.get("wsgidav.provider"), "share_path", None)
        if check is not None and share_path and "HTTP_IF" not in environ:
            # the lock's root as the resource's get_ref_url() will name it (dav_provider.py)
            root = normalize_lock_root(quote(share_path.rstrip("/") + environ.get("PATH_INFO", "")))
            refused: StateLimitExceeded | None = check(root, environ.get("wsgidav.auth.user_name", ""))
            if refused is None:
                refused = _owner_look_ahead(environ, getattr(lock_manager.storage, "bounds", None))
            if refused is not None:
                request_context(environ).refuse_first(refused.reason)
                raise refused
        return _NotingLimit(self.next_app(environ, start_response), environ)


def _owner_look_ahead(environ: dict[str, Any], bounds: LockBounds | None) -> StateLimitExceeded | None:
    """The refusal a new LOCK's ``<D:owner>`` will meet in ``create`` (check_owner), found
    before WsgiDAV creates the empty file of an unmapped URL. Only a body longer than the
    bound can hold a larger owner; such a body (at most ``limits.xml_body_bytes``) is read,
    parsed and left for WsgiDAV to read again; the owner is measured as WsgiDAV stores it
    (request_server.py do_LOCK: xml_to_bytes of the element)."""
    try:
        length = content_length(environ)
    except BadContentLength:
        return None
    if bounds is None or length is None or length <= bounds.owner_bytes:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        root = DefusedElementTree.fromstring(body)
    except Exception:  # noqa: BLE001 - WsgiDAV answers 400
        return None
    owner = root.find("{DAV:}owner")
    if owner is None or len(xml_to_bytes(owner, pretty=False)) <= bounds.owner_bytes:
        return None
    return StateLimitExceeded(Refusal.LOCK_OWNER_TOO_LARGE, f"lock owner over {bounds.owner_bytes} bytes")


class _NotingLimit:
    """An answer passed through unchanged, except that a StateLimitExceeded met while it is
    iterated leaves its reason in the environ; ``close`` reaches the answer (PEP 3333)."""

    def __init__(self, result: Iterable[bytes], environ: dict[str, Any]) -> None:
        self._result = result
        self._iter = iter(result)
        self._environ = environ

    def __iter__(self) -> _NotingLimit:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._iter)
        except StateLimitExceeded as exc:
            request_context(self._environ).refuse_first(exc.reason)
            raise

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            close()


class SQLiteLockStorage:
    """Lock storage for WsgiDAV's LockManager (``lock_storage`` in its config).

    `max_timeout` is in seconds; `bounds` caps the live locks per resource and per account.
    """

    def __init__(
        self,
        store: SQLiteStore,
        *,
        max_timeout: float = DEFAULT_MAX_LOCK_TIMEOUT,
        bounds: LockBounds = DEFAULT_LOCK_BOUNDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_timeout <= 0:
            raise ValueError("max_timeout must be positive")
        self.store = store
        self.max_timeout = float(max_timeout)
        self.bounds = bounds
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
        """Remove every WebDAV lock, live or expired (WsgiDAV's lock storage ``clear``)."""
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
        """Check for conflicts and bounds and store the lock in one transaction.

        Like LockStorageDict.create, fills in `lock` (root, timeout, expire, token)
        and returns it. Raises DAVError(423) when a conflicting lock exists, and
        StateLimitExceeded (507) when the resource or the account (``lock["principal"]``)
        already has as many live locks as its bound allows.
        """
        root, token = prepare_new_lock(path, lock, self.clamp_timeout(lock.get("timeout")))
        check_owner(lock, self.bounds)
        with self.store.transaction() as db:
            now = self._clock()
            db.execute("DELETE FROM dav_locks WHERE expire < ?", (now,))
            conflicts = self._conflicts(db, root, lock["scope"], lock["depth"], now)
            conflicts += self._writes_in_flight(db, root, lock["depth"])
            if conflicts:
                cond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
                for href in conflicts:
                    cond.add_href(href)
                raise DAVError(HTTP_LOCKED, err_condition=cond)
            refused = self._over_bounds(db, root, lock["principal"], now)
            if refused is not None:
                raise refused
            lock["expire"] = now + lock["timeout"]
            lock["token"] = token
            db.execute(
                "INSERT INTO dav_locks (token, root, principal, type, scope, depth, owner, timeout, expire) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token, root, lock["principal"], lock["type"], lock["scope"], lock["depth"], lock["owner"],
                 lock["timeout"], lock["expire"]),
            )
        return lock

    def check_bounds(self, root: str, principal: str) -> StateLimitExceeded | None:
        """The refusal a new lock on `root` for `principal` would meet now, or None (a
        look ahead for RecordLimitReason; ``create`` checks again, atomically)."""
        now = self._clock()
        return self._over_bounds(self._db(), root, principal, now)

    def _over_bounds(self, db: sqlite3.Connection, root: str, principal: str, now: float) -> StateLimitExceeded | None:
        on_root = db.execute("SELECT COUNT(*) FROM dav_locks WHERE root = ? AND expire >= ?", (root, now))
        if on_root.fetchone()[0] >= self.bounds.per_resource:
            return StateLimitExceeded(Refusal.TOO_MANY_LOCKS, f"{root}: at most {self.bounds.per_resource} locks")
        held = db.execute("SELECT COUNT(*) FROM dav_locks WHERE principal = ? AND expire >= ?", (principal, now))
        if held.fetchone()[0] >= self.bounds.per_account:
            return StateLimitExceeded(Refusal.TOO_MANY_ACCOUNT_LOCKS, f"at most {self.bounds.per_account} locks")
        return None

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

    # --- writes in flight, seen by every process (SharedWritesLockManager) ----------------

    @contextmanager
    def writing(self, url: str, check: Callable[[], None]) -> Iterator[None]:
        """Run `check` (WsgiDAV's write-permission check, which reads the locks through this
        storage) and mark `url` (a normalized lock root) as being written by this process,
        in one IMMEDIATE transaction: a LOCK on another process either comes first and the
        check sees it, or comes after and ``create`` sees the mark. The mark is removed
        when the block ends."""
        with self.store.transaction() as db:
            check()
            db.execute("INSERT INTO dav_writes (url, process, count) VALUES (?, ?, 1) "
                       "ON CONFLICT(url, process) DO UPDATE SET count = count + 1", (url, _this_process()))
        try:
            yield
        finally:
            process = _this_process()
            with self.store.transaction() as db:
                db.execute("UPDATE dav_writes SET count = count - 1 WHERE url = ? AND process = ?", (url, process))
                db.execute("DELETE FROM dav_writes WHERE url = ? AND process = ? AND count <= 0", (url, process))

    @staticmethod
    def _writes_in_flight(db: sqlite3.Connection, root: str, depth: str) -> list[str]:
        """URLs at `root` (and below it for a depth-infinity lock) that a live process is
        writing (WsgiDAV's rule, lock_manager.py _check_lock_permission); marks of processes
        that died are dropped."""
        lo, hi = _below(root)
        rows = db.execute(
            "SELECT url, process FROM dav_writes WHERE url = ? OR (? AND url >= ? AND url < ?)",
            (root, depth == "infinity", lo, hi),
        ).fetchall()
        found = []
        for url, process in rows:
            if _alive(process):
                found.append(url)
            else:
                db.execute("DELETE FROM dav_writes WHERE process = ?", (process,))
        return found

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


def _process_id(pid: int) -> str | None:
    """``pid:start`` (start: the process's start time in clock ticks since boot, /proc's
    stat field 22), so a reused pid is not taken for the process that died; None when the
    process does not exist. Without /proc: ``pid:0`` while the pid exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return f"{pid}:{int(stat[stat.rindex(b')') + 2:].split()[19])}"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return f"{pid}:0"


def _alive(process: str) -> bool:
    pid = int(process.split(":", 1)[0])
    return _process_id(pid) == process


_PROCESS: dict[int, str] = {}


def _this_process() -> str:
    """This process's ``pid:start`` (looked up once per pid: a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _PROCESS:
        _PROCESS[pid] = _process_id(pid) or f"{pid}:0"
    return _PROCESS[pid]


class SharedWritesLockManager(LockManager):
    """WsgiDAV's LockManager, with its marks of writes in flight kept in the state file.

    WsgiDAV refuses a LOCK on a resource while a PUT or PROPPATCH to it is still receiving
    its body (lock_manager.py ``write_transaction``, CWE-367), but it keeps that mark in
    the process's memory, so a LOCK reaching another worker process (``server.workers``)
    was granted mid-upload. Here the permission check and the mark are one transaction of
    the storage (:meth:`SQLiteLockStorage.writing`) and ``create`` refuses a LOCK on a
    marked resource (423) whatever process asks. The Redis storage has its own
    ``writing`` (redis_davstate.py: a mark that lapses unless renewed); a storage
    without one keeps WsgiDAV's per-process marks only.
    """

    @contextmanager
    def write_transaction(self, *, url: str, token_list: Any, principal: str, depth: str = "0") -> Iterator[None]:
        writing = getattr(self.storage, "writing", None)
        if writing is None:
            with super().write_transaction(url=url, token_list=token_list, principal=principal, depth=depth):
                yield
            return
        began = False

        def check() -> None:
            nonlocal began
            self._begin_write_transaction(url=url, token_list=token_list, principal=principal, depth=depth)
            began = True

        # WsgiDAV's lock first, the file's second: the order acquire() takes them in (a LOCK
        # holds WsgiDAV's lock while create() waits for the file), so neither waits on the other.
        self._lock.acquire_write()
        try:
            marked = writing(normalize_lock_root(url), check)
            marked.__enter__()
        except BaseException:
            if began:
                self._end_write_transaction(url)
            raise
        finally:
            self._lock.release()
        try:
            yield
        finally:
            try:
                marked.__exit__(None, None, None)
            finally:
                self._end_write_transaction(url)


class SQLitePropertyManager(BoundedProperties):
    """Dead-property storage for WsgiDAV (``property_manager`` in its config).

    Keys are WsgiDAV's ref-URLs (quoted, share prefix included, collections end in '/');
    values are the property's XML as WsgiDAV hands it over (bytes). Writes are held
    to `bounds` (see :class:`BoundedProperties`).
    """

    def __init__(self, store: SQLiteStore, *, bounds: PropertyBounds = DEFAULT_PROPERTY_BOUNDS) -> None:
        self.store = store
        self.bounds = bounds
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
        """The names (Clark notation, ``{ns}local``) of the dead properties of `norm_url`
        (a WsgiDAV ref-URL), sorted; [] for none. `environ` is unused (WsgiDAV's signature)."""
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
        """The value (the property's XML as stored, bytes) of dead property `name` of
        `norm_url`, or None."""
        row = self._db().execute("SELECT value FROM dav_props WHERE url = ? AND name = ?", (norm_url, name)).fetchone()
        return bytes(row[0]) if row else None

    @staticmethod
    def _sizes_in(db: sqlite3.Connection, url: str) -> dict[str, int]:
        return {
            name: len(name.encode("utf-8")) + int(size)
            for name, size in db.execute("SELECT name, length(value) FROM dav_props WHERE url = ?", (url,))
        }

    def _sizes(self, url: str) -> dict[str, int]:
        return self._sizes_in(self._db(), url)

    def _apply(self, url: str, changes: list[tuple[str, bytes | None]]) -> Refusal | None:
        """Check the bounds against what is stored and make the changes: one IMMEDIATE
        transaction, so no other connection or process writes in between."""
        with self.store.transaction() as db:
            before = self._sizes_in(db, url)
            after = project(before, changes)
            reason = over_bounds(self.bounds, len(after), sum(after.values()), len(before), sum(before.values()))
            if reason is not None:
                return reason
            for name, value in changes:
                if value is None:
                    db.execute("DELETE FROM dav_props WHERE url = ? AND name = ?", (url, name))
                else:
                    db.execute(
                        "INSERT INTO dav_props (url, name, value) VALUES (?, ?, ?) "
                        "ON CONFLICT(url, name) DO UPDATE SET value = excluded.value",
                        (url, name, value),
                    )
        return None

    def answer_bytes(self, url: str, *, members: bool, names: tuple[str, ...] | None, values: bool = True,
                     stop_after: int | None = None) -> int:
        """Bytes of dead properties a PROPFIND of `url` would carry, measured without reading them.

        Counts `url` (with and without its trailing '/') and, with `members`, the
        resources directly inside it (Depth 1); names (UTF-8) plus, with `values`, the
        values; only the properties in `names`, or all (None: allprop). `stop_after` is
        accepted for the Redis backend's sake (which stops counting past it); here the
        sum is exact.

        Members are found by a skip walk over the index (``_MEMBERS``): one step per
        member with properties and one per sub-folder, never a step per property
        deeper down, so a share root over a million properties costs what its own
        members do.
        """
        base, slashed, lo, hi = self._tree(url)
        where = "url IN (?, ?)"
        args: list[Any] = [base, slashed]
        if members:
            where = f"(url IN (?, ?) OR url IN ({_MEMBERS}))"
            args += [lo, hi, len(lo), hi]
        size = "length(CAST(name AS BLOB))" + (" + length(value)" if values else "")
        db = self._db()
        if names is None:
            row = db.execute(f"SELECT COALESCE(SUM({size}), 0) FROM dav_props WHERE {where}", args)  # noqa: S608
            return int(row.fetchone()[0])
        total = 0
        for i in range(0, len(names), 500):
            batch = list(names[i : i + 500])
            sql = (f"SELECT COALESCE(SUM({size}), 0) FROM dav_props WHERE {where} "  # noqa: S608
                   f"AND name IN ({','.join('?' * len(batch))})")
            total += int(db.execute(sql, args + batch).fetchone()[0])
        return total

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
        """Move the dead properties of `src_url` to `dest_url` (and, `with_children`, of
        everything below it, their URLs rebased), replacing what the destination had: one
        IMMEDIATE transaction."""
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
        """Remove every dead property of every resource."""
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
                    request_context(environ).refuse(Refusal.LOCK_TOKEN_OWNER)  # audited as a refusal by the guard
                    raise DAVError(HTTP_FORBIDDEN, context_info="Token was created by another user.")
        result: Iterable[bytes] = self.next_app(environ, start_response)
        return result
