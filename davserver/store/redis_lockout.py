"""The Redis driver of sign-in lockouts (`LockoutStore`), on the state store's client.

Keys, under the deployment prefix ``P`` (``state.prefix``):

* ``P fail:<key>``: a failure counter (hash: ``n``, ``window_end``), TTL its window + 60 s;
* ``P lockout:<key>``: a lockout, its end (POSIX seconds, text), TTL its end + 60 s;
* ``P lockouts:<address key>``: the accounts locked out from an address (zset, score: when).

Counting a failure, setting a lockout and noting a lockout are each one Lua script, so
racing nodes never lose a count; `RedisLockouts.any_locked_out` is one MGET.
`RedisLockouts.clear_lockouts_by_prefix` finds keys with SCAN (an administrator's
command, not the request path) under a MATCH pattern whose glob characters (of the
deployment prefix too) are escaped, so it matches the exact, case-sensitive prefix.

Releases before this one kept a lockout at ``P lock:<key>``. The first call of each
process moves any such key to ``P lockout:<key>`` (one Lua step per key: the later end
wins, the TTL goes with it) unless the marker ``P migrated:lockout-keys`` says a process
did it already, then sets the marker; so lockouts and pending renewal revocations
survive the upgrade at the cost of one EXISTS per process. A node of an earlier release
still running after that writes ``lock:`` keys the new nodes do not see: upgrade every
node of a deployment together (docs/scaling.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis as redis_lib

from .base import LockoutStore

__all__ = ["LEGACY_KIND", "MIGRATED_MARKER", "RedisKeys", "RedisLockouts", "glob_escape"]

#: The key kind earlier releases kept lockouts under (``P lock:<key>``), migrated once.
LEGACY_KIND = "lock"
#: The key (under the prefix) that says the ``lock:`` keys were migrated.
MIGRATED_MARKER = "migrated:lockout-keys"

# KEYS[1] = failure counter (hash: n, window_end); ARGV = now, window seconds.
_ADD_FAILURE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local window_end = tonumber(redis.call('HGET', KEYS[1], 'window_end') or '-1')
local n
if window_end <= now then
  n = 1
  redis.call('HSET', KEYS[1], 'n', 1, 'window_end', now + window)
else
  n = redis.call('HINCRBY', KEYS[1], 'n', 1)
end
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
return n
"""

# KEYS[1] = lockout key; ARGV = until, ttl. A lockout is only ever lengthened.
_SET_LOCKOUT = """
local old = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
"""

# KEYS[1] = zset of accounts locked out from one address (score: when); ARGV = now, window, account.
_NOTE_LOCKOUT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]) or '-1')
if now > old then redis.call('ZADD', KEYS[1], now, ARGV[3]) end
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] = a lockout under its earlier name, KEYS[2] = the same under its name now.
# Moves it (with its TTL) unless the new key ends later; 1 when there was one to move.
_MIGRATE_ONE = """
local old = redis.call('GET', KEYS[1])
if not old then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
local new = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(old) > new then
  if ttl > 0 then redis.call('SET', KEYS[2], old, 'PX', ttl) else redis.call('SET', KEYS[2], old) end
end
redis.call('DEL', KEYS[1])
return 1
"""

_GLOB_SPECIALS = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern (stringmatchlen: backslash escapes)."""
    return "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in text)


class RedisKeys(Protocol):
    """What the driver needs of store/redis.py's `RedisStore` (which it must not import:
    the store makes its driver)."""

    prefix: str

    @property
    def client(self) -> redis_lib.Redis:
        """The store's client and connection pool."""

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, a Redis error raised as StoreUnavailable."""


class RedisLockouts(LockoutStore):
    """Sign-in failure counters and lockouts on the Redis of `store`. Every method raises
    StoreUnavailable when Redis cannot be reached (or no sentinel names a master)."""

    def __init__(self, store: RedisKeys) -> None:
        self._store = store
        client = store.client
        self._add_failure = client.register_script(_ADD_FAILURE)
        self._set_lockout = client.register_script(_SET_LOCKOUT)
        self._note_lockout = client.register_script(_NOTE_LOCKOUT)
        self._migrate_one = client.register_script(_MIGRATE_ONE)
        self._migrated = False
        self._migrating = threading.Lock()

    def _k(self, kind: str, key: str) -> str:
        return f"{self._store.prefix}{kind}:{key}"

    def _ready(self) -> None:
        """Migrate the ``lock:`` keys of earlier releases once per process (module docstring)."""
        if self._migrated:
            return
        with self._migrating:
            if not self._migrated:
                self._migrate()
                self._migrated = True

    def _migrate(self) -> int:
        """Move every ``P lock:<key>`` to ``P lockout:<key>`` unless the marker says it was
        done; returns how many were moved. Raises StoreUnavailable (then tried again at
        the next call)."""
        call, client = self._store.call, self._store.client
        marker = self._store.prefix + MIGRATED_MARKER
        if call(client.exists, marker):
            return 0
        legacy = self._k(LEGACY_KIND, "")
        moved = 0
        for raw in call(self._scan_all, glob_escape(legacy) + "*"):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            key = name[len(legacy):]
            moved += int(call(self._migrate_one, keys=[name, self._k("lockout", key)]))
        call(client.set, marker, "1")
        return moved

    def _scan_all(self, pattern: str) -> list[bytes]:
        return list(self._store.client.scan_iter(match=pattern, count=1000))

    def add_failure(self, key: str, now: float, window: float) -> int:
        """See LockoutStore.add_failure: one Lua step on ``P fail:<key>``."""
        self._ready()
        return int(self._store.call(self._add_failure, keys=[self._k("fail", key)], args=[now, window]))

    def clear_failures(self, key: str) -> None:
        """See LockoutStore.clear_failures."""
        self._ready()
        self._store.call(self._store.client.delete, self._k("fail", key))

    def set_lockout(self, key: str, until: float) -> None:
        """See LockoutStore.set_lockout: one Lua step on ``P lockout:<key>``, which outlives
        `until` by a minute (`lockout_until` compares with the caller's clock)."""
        self._ready()
        ttl = max(60, math.ceil(until - time.time()) + 60)
        self._store.call(self._set_lockout, keys=[self._k("lockout", key)], args=[repr(until), ttl])

    def lockout_until(self, key: str, now: float) -> float | None:
        """See LockoutStore.lockout_until."""
        self._ready()
        raw = self._store.call(self._store.client.get, self._k("lockout", key))
        if raw is None:
            return None
        until = float(raw)
        return until if until > now else None

    def any_locked_out(self, keys: list[str], now: float) -> bool:
        """See LockoutStore.any_locked_out: one MGET."""
        if not keys:
            return False
        self._ready()
        values = self._store.call(self._store.client.mget, [self._k("lockout", key) for key in keys])
        return any(raw is not None and float(raw) > now for raw in values)

    def clear_lockouts_by_prefix(self, prefix: str) -> int:
        """See LockoutStore.clear_lockouts_by_prefix: SCAN of ``P lockout:<prefix>*`` and
        ``P fail:<prefix>*`` (escaped), DEL in batches of 500."""
        self._ready()
        lifted = 0
        for kind in ("lockout", "fail"):
            pattern = glob_escape(self._k(kind, prefix)) + "*"
            found = self._store.call(self._scan_all, pattern)
            for i in range(0, len(found), 500):
                n = int(self._store.call(self._store.client.delete, *found[i:i + 500]))
                lifted += n if kind == "lockout" else 0
        return lifted

    def note_lockout(self, address: str, account: str, now: float, window: float) -> int:
        """See LockoutStore.note_lockout: one Lua step on the zset ``P lockouts:<address>``."""
        self._ready()
        keys = [self._k("lockouts", address)]
        return int(self._store.call(self._note_lockout, keys=keys, args=[repr(now), repr(window), account]))

    def clear_lockout(self, key: str) -> int:
        """See LockoutStore.clear_lockout."""
        self._ready()
        n = int(self._store.call(self._store.client.delete, self._k("lockout", key)))
        self._store.call(self._store.client.delete, self._k("fail", key), self._k("lockouts", key))
        return n
