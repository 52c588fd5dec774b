"""WebDAV locks and dead properties in Redis, shared by several server nodes.

The same interfaces and rules as store/davstate.py (``SQLiteLockStorage`` and
``SQLitePropertyManager``; read its docstring first), on the Redis the state
store already uses, under its key prefix ``P``:

Locks

- ``P dav:lock:<token>``      string, the lock as JSON; key TTL = timeout + a grace
                              minute (timeouts are capped at ``max_timeout``).
- ``P dav:locks-at:<root>``   sorted set of the tokens locking <root>, score = expire.
- ``P dav:lock-roots``        sorted set (all scores 0) of the roots in use: a
                              ZRANGEBYLEX range finds the roots below a path.
- ``P dav:lock-expiry``       sorted set of "<token> <root>", score = expire: what
                              cleanup (and the purge in create and refresh) walks.
- ``P dav:locks-of:<account>`` sorted set of the account's tokens, score = expire:
                              what the per-account bound counts (entries past their
                              expire are dropped when it counts).
- ``P dav:lock-owners``       hash: token -> account, so that dropping a lock whose
                              key has already expired still finds its locks-of entry.

Writes in flight (WsgiDAV refuses a LOCK while a PUT or PROPPATCH to the resource is
still receiving its body; see ``SharedWritesLockManager`` in davstate.py)

- ``P dav:writes``            sorted set (all scores 0) of ``<url>``, a line feed, ``<mark>``: a
                              ZRANGEBYLEX range finds the marks on a URL and below it.
                              ``<mark>`` names the node, the process (pid and start
                              time) and a random part, for the operator and the log.
- ``P dav:write-expiry``      sorted set, the same members, score = when the mark
                              lapses (the node's clock): :data:`WRITE_MARK_SECONDS`
                              after it was set or last renewed. The process renews its
                              marks every third of that while the body arrives, so a
                              mark of a process or node that was killed stops refusing
                              LOCKs at most that long after (another node cannot ask
                              whether a process elsewhere is alive).

Every change to these keys is one Lua script, so they always agree: in
particular ``create`` purges, checks for conflicts and inserts in one script, so
two nodes racing for the same exclusive lock cannot both get it, and the bounds
(locks per resource, per account) are counted in that same script. Lookups read
the root, its ancestors and (for depth infinity) the roots below it: work in
proportion to the locks on that path, never a KEYS or SCAN.

Whether a lock has expired is decided by the node's clock against the stored
expire (as with SQLite); the key TTL only makes sure a lock body that nobody
purges does not stay in Redis for ever. Index entries whose body is gone are
treated as gone and dropped when met.

Properties

- ``P dav:props:<url>``       hash: property name -> the property's XML (bytes).
- ``P dav:prop-urls``         sorted set (all scores 0) of the URLs that have
                              properties: ZRANGEBYLEX finds a subtree for copy,
                              move and remove.

A PROPPATCH is one script that measures the resource's properties (HSTRLEN,
never reading a value), checks the bounds and makes every change, or none.

Values are JSON or plain bytes, never pickles. A Redis error raises
StoreUnavailable. The scripts build key names from the prefix, so a Redis
Cluster (which wants every key declared) is not supported; one Redis (with
replicas) is.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from wsgidav.dav_error import (
    HTTP_LOCKED,
    HTTP_PRECONDITION_FAILED,
    DAVError,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
    PRECONDITION_CODE_LockTokenMismatch,
)

from ..access import Refusal
from ..upstream import normalize_lock_root
from .base import StoreUnavailable
from .davstate import (
    DEFAULT_LOCK_BOUNDS,
    DEFAULT_MAX_LOCK_TIMEOUT,
    DEFAULT_PROPERTY_BOUNDS,
    BoundedProperties,
    LockBounds,
    PropertyBounds,
    SQLitePropertyManager,
    StateLimitExceeded,
    _ancestors,
    _below,
    _this_process,
    check_owner,
    prepare_new_lock,
)
from .redis import RedisStore, redis_call

__all__ = ["RedisLockStorage", "RedisPropertyManager"]

log = logging.getLogger("davserver.store")

#: Seconds a lock's key outlives its expire: nodes' clocks may differ a little from Redis's.
TTL_GRACE = 60
#: Seconds a mark of a write in flight lasts unless its process renews it (every third of
#: it, while the body arrives): the longest a killed process's or node's mark refuses LOCKs.
#: The default of the setting ``locks.write_mark_seconds``.
WRITE_MARK_SECONDS = 30.0
#: Expired locks purged at most per create/refresh (cleanup() purges all, in batches).
PURGE_BATCH = 100
#: Members one script call of answer_bytes looks at before it hands back (a few ms of Redis).
ANSWER_WALK_STEP = 2000

# --- Lua -----------------------------------------------------------------------------------
# ARGV[1] is always the key prefix. Times travel as the strings Python wrote (repr of a float)
# and reach Redis unchanged, so scores compare exactly; Lua's tostring() would round them.

_LOCK_LIB = r"""
local pfx = ARGV[1]
local roots_key = pfx .. 'dav:lock-roots'
local expiry_key = pfx .. 'dav:lock-expiry'
local function lock_key(token) return pfx .. 'dav:lock:' .. token end
local function at_key(root) return pfx .. 'dav:locks-at:' .. root end
local owners_key = pfx .. 'dav:lock-owners'
local function of_key(principal) return pfx .. 'dav:locks-of:' .. principal end
local writes_key = pfx .. 'dav:writes'
local write_expiry_key = pfx .. 'dav:write-expiry'

-- URLs with a live mark of a write in flight among the members of dav:writes in the lex
-- range [lo, hi); lapsed marks (a killed process's) are dropped.
local function writing(lo, hi, now)
  local out = {}
  for _, member in ipairs(redis.call('ZRANGEBYLEX', writes_key, lo, hi)) do
    local lapses = redis.call('ZSCORE', write_expiry_key, member)
    if lapses and tonumber(lapses) >= tonumber(now) then
      table.insert(out, string.match(member, '^(.-)\n'))
    else
      redis.call('ZREM', writes_key, member)
      redis.call('ZREM', write_expiry_key, member)
    end
  end
  return out
end

local function drop(token, root)
  local principal = redis.call('HGET', owners_key, token)
  if principal then
    redis.call('ZREM', of_key(principal), token)
    redis.call('HDEL', owners_key, token)
  end
  redis.call('DEL', lock_key(token))
  redis.call('ZREM', at_key(root), token)
  if redis.call('EXISTS', at_key(root)) == 0 then redis.call('ZREM', roots_key, root) end
  redis.call('ZREM', expiry_key, token .. ' ' .. root)
end

-- Drop up to `limit` locks whose expire is before `now`; returns how many.
local function purge(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', '(' .. now, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    local token, root = string.match(member, '^(%S+) (.*)$')
    drop(token, root)
  end
  return #expired
end

-- The live locks on one root, as {token, json}; an entry whose body is gone (TTL) is dropped.
local function live(root, now)
  local out = {}
  for _, token in ipairs(redis.call('ZRANGEBYSCORE', at_key(root), now, '+inf')) do
    local raw = redis.call('GET', lock_key(token))
    if raw then table.insert(out, {token, raw}) else drop(token, root) end
  end
  return out
end
"""

# ARGV: pfx, now, purge limit, token, root, json, expire, ttl ms, scope, depth, lo, hi, principal,
# locks per resource, locks per account, ancestors... Returns the conflicting roots (one per
# conflicting lock), {'!reason'} when a bound is reached, or an empty list when it stored the lock.
_CREATE = _LOCK_LIB + r"""
local now, token, root, scope, depth = ARGV[2], ARGV[4], ARGV[5], ARGV[9], ARGV[10]
purge(now, tonumber(ARGV[3]))
local hrefs = {}
-- the rules of LockManager._check_lock_permission: a lock on the resource conflicts unless both
-- are shared; a parent's only if it is depth-infinity; a child's whenever the new one is.
local function check(path, on_root)
  for _, lock in ipairs(live(path, now)) do
    local l = cjson.decode(lock[2])
    if (on_root or l.depth == 'infinity') and not (l.scope == 'shared' and scope == 'shared') then
      table.insert(hrefs, path)
    end
  end
end
check(root, true)
for i = 16, #ARGV do check(ARGV[i], false) end
if depth == 'infinity' then
  for _, r in ipairs(redis.call('ZRANGEBYLEX', roots_key, '[' .. ARGV[11], '(' .. ARGV[12])) do
    if r ~= root then
      for _ in ipairs(live(r, now)) do table.insert(hrefs, r) end
    end
  end
end
-- WsgiDAV's rule for writes in flight (lock_manager.py _check_lock_permission): one on
-- the resource, or below it for a depth-infinity lock, conflicts.
for _, url in ipairs(writing('[' .. root .. '\n', '(' .. root .. '\11', now)) do table.insert(hrefs, url) end
if depth == 'infinity' then
  for _, url in ipairs(writing('[' .. ARGV[11], '(' .. ARGV[12], now)) do table.insert(hrefs, url) end
end
if #hrefs > 0 then return hrefs end
if #live(root, now) >= tonumber(ARGV[14]) then return {'!too_many_locks'} end
local of = of_key(ARGV[13])
redis.call('ZREMRANGEBYSCORE', of, '-inf', '(' .. now)
if redis.call('ZCARD', of) >= tonumber(ARGV[15]) then return {'!too_many_account_locks'} end
redis.call('ZADD', of, ARGV[7], token)
redis.call('HSET', owners_key, token, ARGV[13])
redis.call('SET', lock_key(token), ARGV[6], 'PX', ARGV[8])
redis.call('ZADD', at_key(root), ARGV[7], token)
redis.call('ZADD', roots_key, 0, root)
redis.call('ZADD', expiry_key, ARGV[7], token .. ' ' .. root)
return {}
"""

# ARGV: pfx, now, root, principal, locks per resource, locks per account. The reason a new lock
# would be refused now ('' when it would not): create's bound checks, as a look ahead.
_CHECK_BOUNDS = _LOCK_LIB + r"""
local now = ARGV[2]
if #live(ARGV[3], now) >= tonumber(ARGV[5]) then return 'too_many_locks' end
if redis.call('ZCOUNT', of_key(ARGV[4]), now, '+inf') >= tonumber(ARGV[6]) then return 'too_many_account_locks' end
return ''
"""

# ARGV: pfx, now, purge limit, token, root, json, expire, ttl ms, principal. 1 when refreshed, 0 when gone.
_REFRESH = _LOCK_LIB + r"""
local now, token, root = ARGV[2], ARGV[4], ARGV[5]
purge(now, tonumber(ARGV[3]))
local score = redis.call('ZSCORE', at_key(root), token)
if not score or tonumber(score) < tonumber(now) then return 0 end
if redis.call('EXISTS', lock_key(token)) == 0 then drop(token, root) return 0 end
redis.call('SET', lock_key(token), ARGV[6], 'PX', ARGV[8])
redis.call('ZADD', at_key(root), ARGV[7], token)
redis.call('ZADD', expiry_key, ARGV[7], token .. ' ' .. root)
redis.call('ZADD', of_key(ARGV[9]), 'XX', ARGV[7], token)
return 1
"""

# ARGV: pfx, now, token, root. Drops the lock if it has expired (not if a refresh just extended it).
_DROP_EXPIRED = _LOCK_LIB + r"""
local score = redis.call('ZSCORE', at_key(ARGV[4]), ARGV[3])
if score and tonumber(score) < tonumber(ARGV[2]) then drop(ARGV[3], ARGV[4]) return 1 end
return 0
"""

# ARGV: pfx, token. 1 when the lock existed.
_DELETE = _LOCK_LIB + r"""
local raw = redis.call('GET', lock_key(ARGV[2]))
if not raw then return 0 end
drop(ARGV[2], cjson.decode(raw).root)
return 1
"""

# ARGV: pfx, now, include root ('1'/'0'), include children, root, lo, hi. The live locks' JSON.
_LIST = _LOCK_LIB + r"""
local now, root = ARGV[2], ARGV[5]
local out = {}
local function add(r)
  for _, lock in ipairs(live(r, now)) do table.insert(out, lock[2]) end
end
if ARGV[3] == '1' then add(root) end
if ARGV[4] == '1' then
  for _, r in ipairs(redis.call('ZRANGEBYLEX', roots_key, '[' .. ARGV[6], '(' .. ARGV[7])) do
    if r ~= root then add(r) end
  end
end
return out
"""

# ARGV: pfx, now, limit.
_PURGE = _LOCK_LIB + r"""
return purge(ARGV[2], tonumber(ARGV[3]))
"""

# ARGV: pfx, lapse time, members... Sets (or renews) each mark of a write in flight.
_MARK_WRITES = _LOCK_LIB + r"""
for i = 3, #ARGV do
  redis.call('ZADD', writes_key, 0, ARGV[i])
  redis.call('ZADD', write_expiry_key, ARGV[2], ARGV[i])
end
return #ARGV - 2
"""

# ARGV: pfx, lapse time, members... Renews the marks that still exist (not one removed meanwhile).
_RENEW_WRITES = _LOCK_LIB + r"""
local n = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', writes_key, ARGV[i]) then
    redis.call('ZADD', write_expiry_key, ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

# ARGV: pfx, member. Removes one mark.
_UNMARK_WRITE = _LOCK_LIB + r"""
redis.call('ZREM', writes_key, ARGV[2])
return redis.call('ZREM', write_expiry_key, ARGV[2])
"""

# ARGV: pfx.
_CLEAR_LOCKS = _LOCK_LIB + r"""
for _, member in ipairs(redis.call('ZRANGE', expiry_key, 0, -1)) do
  local token, root = string.match(member, '^(%S+) (.*)$')
  drop(token, root)
end
for _, root in ipairs(redis.call('ZRANGE', roots_key, 0, -1)) do redis.call('DEL', at_key(root)) end
redis.call('DEL', roots_key, expiry_key, owners_key, writes_key, write_expiry_key)
return 1
"""

_PROPS_LIB = r"""
local pfx = ARGV[1]
local urls_key = pfx .. 'dav:prop-urls'
local function props_key(url) return pfx .. 'dav:props:' .. url end

-- The URLs with properties in a tree: `base`, `slashed` (base with its '/') and [lo, hi).
local function tree(base, slashed, lo, hi)
  local out = {base}
  if slashed ~= base then table.insert(out, slashed) end
  for _, url in ipairs(redis.call('ZRANGEBYLEX', urls_key, '[' .. lo, '(' .. hi)) do
    if url ~= base and url ~= slashed then table.insert(out, url) end
  end
  return out
end

local function remove(url)
  redis.call('DEL', props_key(url))
  redis.call('ZREM', urls_key, url)
end

-- Add the fields of an HGETALL reply to url's properties.
local function put(url, fields)
  for i = 1, #fields, 2 do redis.call('HSET', props_key(url), fields[i], fields[i + 1]) end
  if #fields > 0 then redis.call('ZADD', urls_key, 0, url) end
end
"""

# ARGV: pfx, base, slashed, lo, hi.
_REMOVE_TREE = _PROPS_LIB + r"""
for _, url in ipairs(tree(ARGV[2], ARGV[3], ARGV[4], ARGV[5])) do remove(url) end
return 1
"""

# ARGV: pfx, src, dest, keep source ('1' copy, '0' move). The destination gets exactly src's properties.
_COPY_ONE = _PROPS_LIB + r"""
local fields = redis.call('HGETALL', props_key(ARGV[2]))
if ARGV[4] ~= '1' then remove(ARGV[2]) end
remove(ARGV[3])
put(ARGV[3], fields)
return 1
"""

# ARGV: pfx, src, dest (both without a trailing '/'), src tree (4), dest tree (4).
_MOVE_TREE = _PROPS_LIB + r"""
local src, dest = ARGV[2], ARGV[3]
local moved = {}
local src_urls = tree(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
for _, url in ipairs(src_urls) do
  local fields = redis.call('HGETALL', props_key(url))
  if #fields > 0 then table.insert(moved, {dest .. string.sub(url, #src + 1), fields}) end
end
for _, url in ipairs(src_urls) do remove(url) end
for _, url in ipairs(tree(ARGV[8], ARGV[9], ARGV[10], ARGV[11])) do remove(url) end
for _, m in ipairs(moved) do put(m[1], m[2]) end
return 1
"""

# ARGV: pfx, url. {name, bytes of its value, ...}; never reads a value.
_SIZES = _PROPS_LIB + r"""
local key, out = props_key(ARGV[2]), {}
for _, name in ipairs(redis.call('HKEYS', key)) do
  table.insert(out, name)
  table.insert(out, redis.call('HSTRLEN', key, name))
end
return out
"""

# ARGV: pfx, url, most properties, most bytes, then (op, name, value) triples: op 's' sets, 'r'
# removes (value ''). The bounds are those of davstate.over_bounds: a resource may not end up over
# one while holding more than before. Returns the refusal's reason, or '' when every change was made.
_APPLY = _PROPS_LIB + r"""
local url = ARGV[2]
local key = props_key(url)
local sizes, count, total = {}, 0, 0
for _, name in ipairs(redis.call('HKEYS', key)) do
  sizes[name] = #name + redis.call('HSTRLEN', key, name)
  count = count + 1
  total = total + sizes[name]
end
local count0, total0 = count, total
for i = 5, #ARGV, 3 do
  local name, old = ARGV[i + 1], sizes[ARGV[i + 1]]
  local new = nil
  if ARGV[i] == 's' then new = #name + #ARGV[i + 2] end
  if old then count = count - 1 total = total - old end
  if new then count = count + 1 total = total + new end
  sizes[name] = new
end
if count > tonumber(ARGV[3]) and count > count0 then return 'too_many_properties' end
if total > tonumber(ARGV[4]) and total > total0 then return 'property_bytes_exceeded' end
for i = 5, #ARGV, 3 do
  if ARGV[i] == 's' then redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  else redis.call('HDEL', key, ARGV[i + 1]) end
end
if redis.call('EXISTS', key) == 1 then redis.call('ZADD', urls_key, 0, url)
else redis.call('ZREM', urls_key, url) end
return ''
"""

# ARGV: pfx, base, slashed, lo, hi, members ('1'/'0'), what ('a' names and values, 'n' names,
# 'p' the names and values of the properties named after), stop after, resume from ('' at the
# start), URLs per call, names... Bytes of dead properties a PROPFIND would carry (see
# SQLitePropertyManager.answer_bytes) as {bytes, where to resume ('' when done)}. It stops past
# `stop after`, and after `URLs per call` members so that a huge folder never holds Redis up
# for long: the caller resumes. A sub-folder's URLs are skipped with one jump: the work follows
# the members, not everything below them.
_ANSWER_BYTES = _PROPS_LIB + r"""
local base, slashed, lo, hi, what = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7]
local stop, from, budget = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local total = 0
local function count(url)
  local key = props_key(url)
  if what == 'p' then
    for i = 11, #ARGV do
      local n = redis.call('HSTRLEN', key, ARGV[i])
      if n > 0 then total = total + #ARGV[i] + n end
    end
  else
    for _, name in ipairs(redis.call('HKEYS', key)) do
      total = total + #name
      if what == 'a' then total = total + redis.call('HSTRLEN', key, name) end
    end
  end
end
if from == '' then
  count(base)
  if slashed ~= base then count(slashed) end
  if ARGV[6] ~= '1' then return {total, ''} end
  from = '(' .. lo
end
while total <= stop and budget > 0 do
  local urls = redis.call('ZRANGEBYLEX', urls_key, from, '(' .. hi, 'LIMIT', 0, 100)
  local jumped = false
  for _, url in ipairs(urls) do
    local rest = string.sub(url, #lo + 1)
    local slash = string.find(rest, '/', 1, true)
    budget = budget - 1
    if slash == nil or slash == #rest then
      count(url)
      from = '(' .. url
    else  -- deeper down: skip the whole sub-folder (U+10FFFF sorts after everything in it)
      from = '(' .. lo .. string.sub(rest, 1, slash) .. '\244\143\191\191'
      jumped = true
      break
    end
    if total > stop or budget <= 0 then break end
  end
  if not jumped and #urls < 100 and budget > 0 and total <= stop then return {total, ''} end
end
if total > stop then return {total, ''} end
return {total, from}
"""

# ARGV: pfx.
_CLEAR_PROPS = _PROPS_LIB + r"""
for _, url in ipairs(redis.call('ZRANGE', urls_key, 0, -1)) do redis.call('DEL', props_key(url)) end
redis.call('DEL', urls_key)
return 1
"""


def _num(x: float) -> str:
    """A float as Redis (and Lua's tonumber) read it back exactly."""
    return repr(float(x))


def _encode_lock(lock: dict[str, Any]) -> bytes:
    """The lock as JSON. The owner XML is kept as text; bytes that are not UTF-8 (never
    from WsgiDAV, but the storage takes any) go as base64 so that the JSON stays valid
    for the scripts' cjson. Strings that cannot be UTF-8 raise, as they do with SQLite."""
    doc = {k: lock[k] for k in ("token", "root", "principal", "type", "scope", "depth")}
    try:
        doc["owner"] = lock["owner"].decode("utf-8")
    except UnicodeDecodeError:
        doc["owner_b64"] = base64.b64encode(lock["owner"]).decode("ascii")
    doc["timeout"] = float(lock["timeout"])
    doc["expire"] = float(lock["expire"])
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _decode_lock(raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw)
    owner = base64.b64decode(doc.pop("owner_b64")) if "owner_b64" in doc else doc.pop("owner").encode("utf-8")
    return {
        "token": doc["token"],
        "root": doc["root"],
        "principal": doc["principal"],
        "type": doc["type"],
        "scope": doc["scope"],
        "depth": doc["depth"],
        "owner": owner,
        "timeout": float(doc["timeout"]),
        "expire": float(doc["expire"]),
    }


class RedisLockStorage:
    """Lock storage for WsgiDAV's LockManager (``lock_storage`` in its config), shared by nodes.

    `max_timeout` is in seconds; `bounds` caps the live locks per resource and per account;
    `write_mark_seconds` is how long a mark of a write in flight lasts unless renewed
    (:meth:`writing`; ValueError unless positive).
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        max_timeout: float = DEFAULT_MAX_LOCK_TIMEOUT,
        bounds: LockBounds = DEFAULT_LOCK_BOUNDS,
        clock: Callable[[], float] = time.time,
        write_mark_seconds: float = WRITE_MARK_SECONDS,
    ) -> None:
        if max_timeout <= 0:
            raise ValueError("max_timeout must be positive")
        if write_mark_seconds <= 0:
            raise ValueError("write_mark_seconds must be positive")
        self.write_mark_seconds = float(write_mark_seconds)
        #: This process's marks of writes in flight, renewed by one thread (per pid: a fork has none).
        self._marks: set[str] = set()
        self._marks_lock = threading.Lock()
        self._renewer_pid = 0
        self.store = store
        self.max_timeout = float(max_timeout)
        self.bounds = bounds
        self._clock = clock
        r = store.client
        self._create = r.register_script(_CREATE)
        self._check_bounds = r.register_script(_CHECK_BOUNDS)
        self._refresh = r.register_script(_REFRESH)
        self._drop_expired = r.register_script(_DROP_EXPIRED)
        self._delete = r.register_script(_DELETE)
        self._list = r.register_script(_LIST)
        self._purge = r.register_script(_PURGE)
        self._clear = r.register_script(_CLEAR_LOCKS)
        self._mark_writes = r.register_script(_MARK_WRITES)
        self._renew_writes = r.register_script(_RENEW_WRITES)
        self._unmark_write = r.register_script(_UNMARK_WRITE)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.store.prefix!r}, max_timeout={self.max_timeout:g})"

    def clamp_timeout(self, timeout: float | None) -> float:
        """Seconds a lock is granted for: the request's, but never infinite nor above the cap."""
        if timeout is None or timeout <= 0 or timeout > self.max_timeout:
            return self.max_timeout
        return float(timeout)

    @staticmethod
    def _ttl_ms(timeout: float) -> int:
        return math.ceil((timeout + TTL_GRACE) * 1000)

    def _key(self, token: str) -> str:
        return f"{self.store.prefix}dav:lock:{token}"

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Called by LockManager: nothing to open (the store owns the connections)."""
        self.cleanup()

    def close(self) -> None:
        """Called by LockManager.__del__: the store closes the connections, not us."""

    def cleanup(self) -> int:
        """Purge expired locks; returns how many."""
        now = _num(self._clock())
        total = 0
        while True:
            n = int(redis_call(self._purge, args=[self.store.prefix, now, 1000]))
            total += n
            if n < 1000:
                return total

    def clear(self) -> None:
        """Remove every WebDAV lock under the deployment prefix, live or expired (WsgiDAV's
        lock storage ``clear``)."""
        redis_call(self._clear, args=[self.store.prefix])

    # --- single locks ----------------------------------------------------------------

    def get(self, token: str) -> dict[str, Any] | None:
        """The lock, or None when it does not exist or has expired (an expired one is purged)."""
        raw = redis_call(self.store.client.get, self._key(token))
        if raw is None:
            return None
        lock = _decode_lock(raw)
        now = self._clock()
        if lock["expire"] < now:
            redis_call(self._drop_expired, args=[self.store.prefix, _num(now), token, lock["root"]])
            return None
        return lock

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        """Check for conflicts and bounds and store the lock in one script.

        Like LockStorageDict.create, fills in `lock` (root, timeout, expire, token)
        and returns it. Raises DAVError(423) when a conflicting lock exists, and
        StateLimitExceeded (507) when the resource or the account already has as
        many live locks as its bound allows.
        """
        root, token = prepare_new_lock(path, lock, self.clamp_timeout(lock.get("timeout")))
        check_owner(lock, self.bounds)
        now = self._clock()
        expire = now + lock["timeout"]
        body = _encode_lock({**lock, "token": token, "expire": expire})
        lo, hi = _below(root)
        # With Sentinel: WAIT for the replicas (store/redis.py run_confirmed), so that a lock
        # a client was given survives a failover; one they did not confirm is withdrawn.
        conflicts, confirmed = self.store.run_confirmed(
            self._create,
            args=[self.store.prefix, _num(now), PURGE_BATCH, token, root, body, _num(expire),
                  self._ttl_ms(lock["timeout"]), lock["scope"], lock["depth"], lo, hi, lock["principal"],
                  self.bounds.per_resource, self.bounds.per_account, *_ancestors(root)],
        )
        if not conflicts and not confirmed:
            with contextlib.suppress(StoreUnavailable):  # else it ends at its timeout; nobody holds its token
                redis_call(self._delete, args=[self.store.prefix, token])
            raise self.store.unconfirmed("a new WebDAV lock")
        if conflicts and conflicts[0].startswith(b"!"):
            raise self._refusal(Refusal(conflicts[0][1:].decode("ascii")), root)
        if conflicts:
            cond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
            for href in conflicts:
                cond.add_href(href.decode("utf-8"))
            raise DAVError(HTTP_LOCKED, err_condition=cond)
        lock["expire"] = expire
        lock["token"] = token
        return lock

    def check_bounds(self, root: str, principal: str) -> StateLimitExceeded | None:
        """The refusal a new lock on `root` for `principal` would meet now, or None (a
        look ahead for davstate.RecordLimitReason; ``create`` checks again, atomically)."""
        args = [self.store.prefix, _num(self._clock()), root, principal, self.bounds.per_resource,
                self.bounds.per_account]
        reason = redis_call(self._check_bounds, args=args)
        return self._refusal(Refusal(reason.decode("ascii")), root) if reason else None

    def _refusal(self, reason: Refusal, root: str) -> StateLimitExceeded:
        bound = self.bounds.per_resource if reason == Refusal.TOO_MANY_LOCKS else self.bounds.per_account
        return StateLimitExceeded(reason, f"{root}: at most {bound} locks")

    def refresh(self, token: str, *, timeout: float | None) -> dict[str, Any]:
        """Give a live lock a new timeout (capped); 412 when it no longer exists."""
        timeout = self.clamp_timeout(timeout)
        raw = redis_call(self.store.client.get, self._key(token))
        if raw is not None:
            lock = _decode_lock(raw)
            now = self._clock()
            lock["timeout"] = timeout
            lock["expire"] = now + timeout
            done = redis_call(
                self._refresh,
                args=[self.store.prefix, _num(now), PURGE_BATCH, token, lock["root"], _encode_lock(lock),
                      _num(lock["expire"]), self._ttl_ms(timeout), lock["principal"]],
            )
            if done:
                return lock
        else:  # purges all the same, as the SQLite version does
            redis_call(self._purge, args=[self.store.prefix, _num(self._clock()), PURGE_BATCH])
        raise DAVError(HTTP_PRECONDITION_FAILED, err_condition=PRECONDITION_CODE_LockTokenMismatch)

    def delete(self, token: str) -> bool:
        """Remove a lock; False when it did not exist."""
        return bool(redis_call(self._delete, args=[self.store.prefix, token]))

    # --- writes in flight, seen by every node (davstate.SharedWritesLockManager) ---------

    @contextlib.contextmanager
    def writing(self, url: str, check: Callable[[], None]) -> Iterator[None]:
        """Mark `url` (a normalized lock root) as being written by this process, run
        `check` (WsgiDAV's write-permission check, which reads the locks through this
        storage), and remove the mark when the block ends (also when `check` raises).

        The mark is set by one script before the check: a LOCK on any node either ran its
        ``create`` script first, so the check sees the lock (and refuses the write), or
        after, so ``create`` sees the mark (423); Redis runs scripts one at a time. (The
        SQLite storage runs both in one transaction instead.) The mark lapses
        ``write_mark_seconds`` after it was set unless this process renews it (a thread,
        every third of that, while the block runs), so a killed process's or node's mark
        refuses LOCKs at most that long. Raises StoreUnavailable when Redis does not answer."""
        member = f"{url}\n{socket.gethostname()}:{_this_process()}:{secrets.token_hex(8)}"
        redis_call(self._mark_writes, args=[self.store.prefix, _num(self._clock() + self.write_mark_seconds), member])
        with self._marks_lock:
            self._marks.add(member)
            self._start_renewer()
        try:
            check()
            yield
        finally:
            with self._marks_lock:
                self._marks.discard(member)
            try:
                redis_call(self._unmark_write, args=[self.store.prefix, member])
            except StoreUnavailable as exc:  # it lapses on its own
                log.warning("a mark of a write in flight stays until it lapses (%g s): %s",
                            self.write_mark_seconds, exc)

    def _start_renewer(self) -> None:
        """Start this process's renewing thread unless it runs (called with _marks_lock held)."""
        if self._renewer_pid == os.getpid():
            return
        self._renewer_pid = os.getpid()
        threading.Thread(target=self._renew_marks, name="davserver-write-marks", daemon=True).start()

    def _renew_marks(self) -> None:
        """Every third of ``write_mark_seconds``: push the lapse time of this process's marks."""
        while True:
            time.sleep(self.write_mark_seconds / 3)
            with self._marks_lock:
                members = list(self._marks)
            if not members:
                continue
            try:
                redis_call(self._renew_writes,
                      args=[self.store.prefix, _num(self._clock() + self.write_mark_seconds), *members])
            except StoreUnavailable as exc:
                log.warning("cannot renew the marks of writes in flight: %s", exc)

    # --- lists -----------------------------------------------------------------------

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[Any]:
        """Live locks on `path` (include_root) and/or below it (include_children)."""
        assert path and path.startswith("/")
        assert include_root or include_children
        root = normalize_lock_root(path)
        lo, hi = _below(root)
        now = self._clock()
        rows = redis_call(
            self._list,
            args=[self.store.prefix, _num(now), int(include_root), int(include_children), root, lo, hi],
        )
        locks = sorted(
            (lock for lock in map(_decode_lock, rows) if lock["expire"] >= now),
            key=lambda lock: (lock["root"].encode("utf-8"), lock["token"]),
        )
        return [lock["token"] for lock in locks] if token_only else locks


class RedisPropertyManager(BoundedProperties):
    """Dead-property storage for WsgiDAV (``property_manager`` in its config), shared by nodes.

    Keys are WsgiDAV's ref-URLs (quoted, share prefix included, collections end in '/');
    values are the property's XML as WsgiDAV hands it over (bytes). Writes are held
    to `bounds` (see davstate.BoundedProperties).
    """

    def __init__(self, store: RedisStore, *, bounds: PropertyBounds = DEFAULT_PROPERTY_BOUNDS) -> None:
        self.store = store
        self.bounds = bounds
        #: Members one answer_bytes script call looks at before handing back.
        self.walk_step = ANSWER_WALK_STEP
        r = store.client
        self._sizes_script = r.register_script(_SIZES)
        self._apply_script = r.register_script(_APPLY)
        self._answer_bytes = r.register_script(_ANSWER_BYTES)
        self._remove_tree = r.register_script(_REMOVE_TREE)
        self._copy_one = r.register_script(_COPY_ONE)
        self._move_tree = r.register_script(_MOVE_TREE)
        self._clear = r.register_script(_CLEAR_PROPS)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.store.prefix!r})"

    def _key(self, url: str) -> str:
        return f"{self.store.prefix}dav:props:{url}"

    def get_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> list[str]:
        """The names (Clark notation) of the dead properties of `norm_url`, sorted; [] for
        none (HKEYS of its hash). `environ` is unused (WsgiDAV's signature)."""
        names: list[bytes] = redis_call(self.store.client.hkeys, self._key(norm_url))
        return [name.decode("utf-8") for name in sorted(names)]

    def get_many(self, urls: list[str]) -> dict[str, tuple[tuple[str, bytes], ...]]:
        """The properties of many resources (a folder's members) in one round trip: url -> ((name, value), …)."""
        pipe = self.store.client.pipeline(transaction=False)
        for url in urls:
            pipe.hgetall(self._key(url))
        replies: list[dict[bytes, bytes]] = redis_call(pipe.execute)
        return {
            url: tuple(sorted((name.decode("utf-8"), bytes(value)) for name, value in reply.items()))
            for url, reply in zip(urls, replies, strict=True)
            if reply
        }

    def get_property(self, norm_url: str, name: str, environ: dict[str, Any] | None = None) -> bytes | None:
        """The value (bytes, as stored) of dead property `name` of `norm_url`, or None."""
        raw = redis_call(self.store.client.hget, self._key(norm_url), name)
        return bytes(raw) if raw is not None else None

    def _sizes(self, url: str) -> dict[str, int]:
        flat: list[Any] = redis_call(self._sizes_script, args=[self.store.prefix, url])
        return {
            name.decode("utf-8"): len(name) + int(size) for name, size in zip(flat[::2], flat[1::2], strict=True)
        }

    def _apply(self, url: str, changes: list[tuple[str, bytes | None]]) -> Refusal | None:
        """Check the bounds against what is stored and make the changes: one script."""
        args: list[Any] = [self.store.prefix, url, self.bounds.per_resource, self.bounds.bytes_per_resource]
        for name, value in changes:
            args += ["r", name, b""] if value is None else ["s", name, value]
        reason = redis_call(self._apply_script, args=args)
        return Refusal(reason.decode("ascii")) if reason else None

    def answer_bytes(self, url: str, *, members: bool, names: tuple[str, ...] | None, values: bool = True,
                     stop_after: int | None = None) -> int:
        """Bytes of dead properties a PROPFIND of `url` would carry (see the SQLite class);
        the count stops soon after it passes `stop_after`."""
        what = "p" if names is not None else "a" if values else "n"
        stop = stop_after if stop_after is not None else 1 << 52
        tree = SQLitePropertyManager._tree(url)
        total, resume = 0, b""
        while True:
            args = [self.store.prefix, *tree, int(members), what, stop - total, resume, self.walk_step,
                    *(names or ())]
            counted, resume = redis_call(self._answer_bytes, args=args)
            total += int(counted)
            if not resume:
                return total

    def remove_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> None:
        """Remove the resource's properties and those of everything below it (see the SQLite class)."""
        redis_call(self._remove_tree, args=[self.store.prefix, *SQLitePropertyManager._tree(norm_url)])

    def copy_properties(self, src_url: str, dest_url: str, environ: dict[str, Any] | None = None) -> None:
        """The destination ends up with exactly the source's properties."""
        redis_call(self._copy_one, args=[self.store.prefix, src_url, dest_url, 1])

    def move_properties(
        self, src_url: str, dest_url: str, with_children: bool, environ: dict[str, Any] | None = None
    ) -> None:
        """Move the dead properties of `src_url` to `dest_url` (and, `with_children`, of
        everything below it, rebased), replacing the destination's: one Lua script."""
        if not with_children:
            redis_call(self._copy_one, args=[self.store.prefix, src_url, dest_url, 0])
            return
        redis_call(
            self._move_tree,
            args=[self.store.prefix, src_url.rstrip("/"), dest_url.rstrip("/"),
                  *SQLitePropertyManager._tree(src_url), *SQLitePropertyManager._tree(dest_url)],
        )

    def clear(self) -> None:
        """Remove every dead property under the deployment prefix."""
        redis_call(self._clear, args=[self.store.prefix])

    def close(self) -> None:
        """The store closes the connections."""
