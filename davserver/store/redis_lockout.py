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

Releases before this one (up to commit aaf05ca) keep a lockout at ``P lock:<key>``, with
the same value and TTL. That name is read and cleared, never written: a node (or worker,
or CLI) of the release before may run beside this one on the same Redis (a rolling
upgrade, a supervisor restarting one worker from the upgraded code, a rollback and a
second upgrade), writing ``lock:`` keys at any time. So every read of a lockout
(`RedisLockouts.lockout_until`, `RedisLockouts.any_locked_out`: one MGET of both names)
takes the later end of ``lockout:<key>`` and ``lock:<key>``, every clear
(`RedisLockouts.clear_lockouts_by_prefix`, `RedisLockouts.clear_lockout`) deletes both,
and a new lockout is written under ``lockout:`` only; no key is moved, no marker kept. A
lockout the earlier release writes is enforced here whenever it was written; one this
release writes is not seen by the earlier release (docs/scaling.md). The failure counters
and the per-address notes kept their names, so both releases share them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis as redis_lib

from .base import LockoutStore

__all__ = ["LEGACY_KIND", "RedisKeys", "RedisLockouts", "glob_escape"]

#: The key kind releases before this one keep lockouts under (``P lock:<key>``): read and
#: cleared, never written.
LEGACY_KIND = "lock"

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

# KEYS = pairs of one key's lockout under its name now and under its earlier name.
# Deletes both of each pair; returns how many pairs held at least one.
_CLEAR_PAIRS = """
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('DEL', KEYS[i], KEYS[i + 1]) > 0 then n = n + 1 end
end
return n
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
        self._clear_pairs = client.register_script(_CLEAR_PAIRS)

    def _k(self, kind: str, key: str) -> str:
        return f"{self._store.prefix}{kind}:{key}"

    def _both(self, key: str) -> list[str]:
        """The names of `key`'s lockout: now (``P lockout:<key>``), then before (``P lock:<key>``)."""
        return [self._k("lockout", key), self._k(LEGACY_KIND, key)]

    def _scan_all(self, pattern: str) -> list[bytes]:
        return list(self._store.client.scan_iter(match=pattern, count=1000))

    def add_failure(self, key: str, now: float, window: float) -> int:
        """See LockoutStore.add_failure: one Lua step on ``P fail:<key>``."""
        return int(self._store.call(self._add_failure, keys=[self._k("fail", key)], args=[now, window]))

    def clear_failures(self, key: str) -> None:
        """Forget the failure count of exactly `key` (nothing when there is none)."""
        self._store.call(self._store.client.delete, self._k("fail", key))

    def set_lockout(self, key: str, until: float) -> None:
        """See LockoutStore.set_lockout: one Lua step on ``P lockout:<key>`` (never ``P
        lock:<key>``: a later end there wins at every read), which outlives `until` by a
        minute (`lockout_until` compares with the caller's clock)."""
        ttl = max(60, math.ceil(until - time.time()) + 60)
        self._store.call(self._set_lockout, keys=[self._k("lockout", key)], args=[repr(until), ttl])

    def lockout_until(self, key: str, now: float) -> float | None:
        """See LockoutStore.lockout_until: one MGET of ``P lockout:<key>`` and ``P lock:<key>``,
        the later end."""
        values = self._store.call(self._store.client.mget, self._both(key))
        until = max((float(raw) for raw in values if raw is not None), default=None)
        return until if until is not None and until > now else None

    def any_locked_out(self, keys: list[str], now: float) -> bool:
        """See LockoutStore.any_locked_out: one MGET of both names of every key."""
        if not keys:
            return False
        values = self._store.call(self._store.client.mget, [name for key in keys for name in self._both(key)])
        return any(raw is not None and float(raw) > now for raw in values)

    def clear_lockouts_by_prefix(self, prefix: str) -> int:
        """See LockoutStore.clear_lockouts_by_prefix: SCAN of ``P lockout:<prefix>*``, ``P
        lock:<prefix>*`` and ``P fail:<prefix>*`` (escaped: the exact prefix), then DEL in
        batches of 500; a key held under both names is deleted under both and counts once."""
        call = self._store.call
        lifted: set[str] = set()
        for kind in ("lockout", LEGACY_KIND):
            head = self._k(kind, "")
            for raw in call(self._scan_all, glob_escape(self._k(kind, prefix)) + "*"):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                lifted.add(name[len(head):])
        pairs = sorted(lifted)
        n = 0
        for i in range(0, len(pairs), 250):
            names = [name for key in pairs[i:i + 250] for name in self._both(key)]
            n += int(call(self._clear_pairs, keys=names))
        found = call(self._scan_all, glob_escape(self._k("fail", prefix)) + "*")
        for i in range(0, len(found), 500):
            call(self._store.client.delete, *found[i:i + 500])
        return n

    def note_lockout(self, address: str, account: str, now: float, window: float) -> int:
        """See LockoutStore.note_lockout: one Lua step on the zset ``P lockouts:<address>``."""
        keys = [self._k("lockouts", address)]
        return int(self._store.call(self._note_lockout, keys=keys, args=[repr(now), repr(window), account]))

    def clear_lockout(self, key: str) -> int:
        """See LockoutStore.clear_lockout: one DEL of ``P lockout:<key>`` and ``P lock:<key>``
        (1 when either was there), one of its counter and notes."""
        n = int(self._store.call(self._store.client.delete, *self._both(key)))
        self._store.call(self._store.client.delete, self._k("fail", key), self._k("lockouts", key))
        return 1 if n else 0
