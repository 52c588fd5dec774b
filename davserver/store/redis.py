"""The shared state store for several server nodes: Redis.

Everything two nodes may race on is one atomic step: accepting an OTP step
and changing an invitation are Lua scripts. Values are JSON (never pickle),
expiry is Redis's own key TTL (never a scan), and every key carries the
deployment's prefix. Sign-in failure counters and lockouts are the store's
`RedisStore.lockouts` driver (store/redis_lockout.py: its keys, its scripts, and
the ``lock:`` keys of earlier releases, read and cleared beside its own).

If Redis is unreachable the store raises StoreUnavailable; the guard turns
that into a refusal (fail closed), never into a login without the check.

With Redis Sentinel (``state.sentinels``) the client is redis-py's
``Sentinel.master_for``: every new connection asks the sentinels for the current
master (redis/sentinel.py ``SentinelConnectionPoolProxy.get_master_address``), so a
failover is followed without a restart; a connection still open to a master that was
demoted gets READONLY, which redis-py turns into a ConnectionError and a reconnect
(``SentinelManagedConnection.read_response``). While no sentinel names a master that
answers, every call raises StoreUnavailable. Lua scripts survive a failover: the new
master's script cache is empty, and redis-py's ``Script.__call__`` answers NOSCRIPT
with SCRIPT LOAD and one retry (redis/commands/core.py ``Script``; a pipeline checks
SCRIPT EXISTS first, ``Pipeline.load_scripts``).

Replication is asynchronous, so a master that dies may take its last writes with it.
The two writes whose loss would let something through that was refused before, a used
TOTP step (the code would work once more) and a new WebDAV lock (another client could
write under it), are followed by ``WAIT wait_replicas timeout`` on the same connection;
fewer confirmations than asked raise StoreUnavailable (503): the code is not accepted,
the lock is withdrawn. Everything else (grants, failure counters, sign-in lockouts,
invitation states, dead properties, WebDAV lock refreshes and removals) may lose its last
second or so in a failover: docs/scaling.md says what that means.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .base import Grant, InvitationRecord, LockoutStore, StateStore, StoreUnavailable, check_secret
from .redis_lockout import RedisLockouts

__all__ = ["RedisStore", "redis_call"]

log = logging.getLogger(__name__)

#: Seconds to wait for one sentinel's answer (connect, then reply) before asking the next.
SENTINEL_TIMEOUT = 1.0
#: Seconds to wait for the Redis master (connect, then reply); WAIT blocks at most 3 s of it.
REDIS_TIMEOUT = 5.0

# KEYS[1] = otp key; ARGV[1] = step. Accept only a step later than the last one used.
_USE_OTP = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
local step = tonumber(ARGV[1])
if step <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', 3600)
return 1
"""

# KEYS[1] = grant key; ARGV = now, idle. Extend idle_until (never past expires) if still valid.
_TOUCH_GRANT = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local g = cjson.decode(raw)
local now = tonumber(ARGV[1])
if g.idle_until <= now then return 0 end
g.last_used = now
g.idle_until = math.min(g.expires, now + tonumber(ARGV[2]))
local ttl = math.max(1, math.ceil(g.idle_until - now))
redis.call('SET', KEYS[1], cjson.encode(g), 'EX', ttl)
return 1
"""

# Enrolment invitations: a hash per invitation (KEY_PREFIX .. digest, TTL: keep_until) and an
# index zset (digest by expiry) that bounds how many are kept.
# KEYS[1] = index, KEYS[2] = the new hash; ARGV = now, limit, digest, account, created, expires,
# keep_until, ttl ms, key prefix of the hashes.
_ADD_INVITATION = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local pre = ARGV[9]
local kept, closed = 0, {}
for _, d in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('HMGET', pre .. d, 'state', 'expires', 'keep_until')
  if not v[1] or tonumber(v[3]) <= now then
    redis.call('DEL', pre .. d)
    redis.call('ZREM', KEYS[1], d)
  else
    kept = kept + 1
    if v[1] ~= 'open' or tonumber(v[2]) <= now then table.insert(closed, d) end
  end
end
local i = 1
while kept >= limit and i <= #closed do
  redis.call('DEL', pre .. closed[i])
  redis.call('ZREM', KEYS[1], closed[i])
  kept = kept - 1
  i = i + 1
end
if kept >= limit then return 0 end
redis.call('HSET', KEYS[2], 'account', ARGV[4], 'created', ARGV[5], 'expires', ARGV[6],
           'keep_until', ARGV[7], 'failures', 0, 'state', 'open')
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[3])
return 1
"""

# KEYS[1] = invitation hash; ARGV = now, max failures. Count a failure on an open invitation.
_FAIL_INVITATION = """
local v = redis.call('HMGET', KEYS[1], 'state', 'expires')
if v[1] ~= 'open' or tonumber(v[2]) <= tonumber(ARGV[1]) then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'state', 'burned') end
return n
"""

# KEYS[1] = invitation hash; ARGV = now. Open -> spent, once.
_SPEND_INVITATION = """
local v = redis.call('HMGET', KEYS[1], 'state', 'expires')
if v[1] ~= 'open' or tonumber(v[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'spent')
return 1
"""

# KEYS[1] = the invitation's hash; ARGV[1] = now. Spent -> open (issuing failed after the spend).
_UNSPEND_INVITATION = """
local v = redis.call('HMGET', KEYS[1], 'state', 'expires')
if v[1] ~= 'spent' or tonumber(v[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'open')
return 1
"""

# KEYS[1] = index; ARGV = now, account, key prefix of the hashes. Open -> revoked.
_REVOKE_INVITATIONS = """
local n = 0
for _, d in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local v = redis.call('HMGET', ARGV[3] .. d, 'state', 'account')
  if v[1] == 'open' and v[2] == ARGV[2] then
    redis.call('HSET', ARGV[3] .. d, 'state', 'revoked')
    n = n + 1
  end
end
return n
"""

# A shared secret: SET NX, then GET, in one step; the first element says whether this call made it.
_GET_OR_MAKE_KEY = """
local made = redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {made and 1 or 0, redis.call('GET', KEYS[1])}
"""

#: KEYS[1] the period's secret, KEYS[2] the same name's never-expiring shared secret of
#: earlier releases (deleted); ARGV: fresh bytes, milliseconds to keep them.
_GET_OR_MAKE_PERIOD_KEY = """
redis.call('DEL', KEYS[2])
local made = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return {made and 1 or 0, redis.call('GET', KEYS[1])}
"""

if TYPE_CHECKING:
    class _Sentinel(Sentinel):
        """redis-py's ``Sentinel`` (redis/sentinel.py, untyped), with the types of the
        methods davserver overrides or calls; it is ``Sentinel`` itself at run time."""

        def __init__(self, sentinels: list[tuple[str, int]], min_other_sentinels: int = 0,
                     sentinel_kwargs: dict[str, Any] | None = None, force_master_ip: str | None = None,
                     **connection_kwargs: Any) -> None: ...

        def discover_master(self, service_name: str) -> tuple[str, int]: ...

        def master_for(self, service_name: str, redis_class: type[redis_lib.Redis] = ...,
                       connection_pool_class: Any = ..., **kwargs: Any) -> redis_lib.Redis: ...
else:
    _Sentinel = Sentinel


class _WatchedSentinel(_Sentinel):
    """redis-py's Sentinel that logs when the master it finds changes, or cannot be found:
    what an operator sees of a failover (docs/scaling.md). ``discover_master`` runs for
    every new connection to the master, not for every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._master: tuple[str, int] | None = None  # the last master found
        self._lost = False  # no master found since then
        self._seen_lock = threading.Lock()

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The (host, port) of the master of `service_name`; raises MasterNotFoundError
        (a redis ConnectionError) when no sentinel names one that is up."""
        try:
            found = super().discover_master(service_name)
        except MasterNotFoundError:
            with self._seen_lock:
                lost, self._lost = not self._lost, True
            if lost:
                # The sentinels' addresses, not `exc`: redis-py's text holds each sentinel
                # client's full repr (about 1.5 KB per sentinel) for every failover logged.
                log.error("state store: no sentinel names a master for %r that is up (asked %s); requests that "
                          "need the store are refused (503) until one does", service_name,
                          ", ".join(_address(s) for s in self.sentinels))
            raise
        address = (str(found[0]), int(found[1]))
        with self._seen_lock:
            before, was_lost = self._master, self._lost
            self._master, self._lost = address, False
        shown = f"{address[0]}:{address[1]}"
        if before is None:
            log.info("state store: Redis master for %r is %s (through Sentinel)", service_name, shown)
        elif before != address:
            log.warning("state store: Redis master for %r moved from %s:%s to %s (Sentinel failover); new "
                        "connections use it", service_name, before[0], before[1], shown)
        elif was_lost:
            log.warning("state store: Redis master for %r is %s again (through Sentinel); serving resumes",
                        service_name, shown)
        return address


def redis_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a client method or a registered script); a Redis error
    (unreachable, timeout, READONLY after a failover, no master) is raised as
    StoreUnavailable: every Redis call of the state store goes through here, so the
    callers fail closed on one exception type."""
    try:
        return fn(*args, **kwargs)
    except redis_lib.RedisError as exc:
        raise StoreUnavailable(f"state store (redis) unavailable: {exc}") from exc


class RedisStore(StateStore):
    """The state store on one Redis, or on the master a set of Redis Sentinels names.

    `url` is redis://, rediss:// or unix:// (with `sentinels` only its database number is
    used); `sentinels` are (host, port) pairs, `service` the master name they monitor;
    `password` (from ``state.password_file``) authenticates to Redis and, with
    `sentinels`, to the sentinels too. With `sentinels` and `wait_replicas` > 0, a used
    TOTP step and a new WebDAV lock wait up to `wait_seconds` for that many replicas
    (Redis WAIT) and raise StoreUnavailable when fewer confirm. Redis errors raise
    StoreUnavailable. Sign-in failure counters and lockouts are its `lockouts` driver
    (store/redis_lockout.py). Nothing is sent to Redis before the first call.
    """

    def __init__(self, url: str, *, prefix: str = "davserver:", password: str | None = None,
                 sentinels: Sequence[tuple[str, int]] = (), service: str = "mymaster",
                 wait_replicas: int = 0, wait_seconds: float = 1.0) -> None:
        self.prefix = prefix
        extra = {"password": password} if password else {}
        self.sentinel: Sentinel | None = None
        self.service = service
        self.wait_replicas = wait_replicas if sentinels else 0
        self.wait_ms = max(1, round(wait_seconds * 1000))
        if sentinels:
            from redis.connection import parse_url

            db = int(parse_url(url).get("db") or 0)
            self.sentinel = _WatchedSentinel(
                list(sentinels),
                # No retries against one sentinel: the next one is asked instead (redis-py's default
                # would retry a dead sentinel ten times before moving on).
                sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT,
                                 "retry": Retry(NoBackoff(), 0), **extra},
                socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, db=db, **extra,
            )
            self._r: redis_lib.Redis = self.sentinel.master_for(service)
        else:
            self._r = redis_lib.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                               socket_connect_timeout=REDIS_TIMEOUT, **extra)
        self._use_otp = self._r.register_script(_USE_OTP)
        self._touch_grant = self._r.register_script(_TOUCH_GRANT)
        self._add_invitation = self._r.register_script(_ADD_INVITATION)
        self._fail_invitation = self._r.register_script(_FAIL_INVITATION)
        self._spend_invitation = self._r.register_script(_SPEND_INVITATION)
        self._unspend_invitation = self._r.register_script(_UNSPEND_INVITATION)
        self._revoke_invitations = self._r.register_script(_REVOKE_INVITATIONS)
        self._shared_secret = self._r.register_script(_GET_OR_MAKE_KEY)
        self._period_secret = self._r.register_script(_GET_OR_MAKE_PERIOD_KEY)
        self.lockouts: LockoutStore = RedisLockouts(self)

    @property
    def client(self) -> redis_lib.Redis:
        """The client (and its connection pool), for modules that keep their own keys under
        `prefix` (store/redis_davstate.py); close() closes it."""
        return self._r

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` through :func:`redis_call`."""
        return redis_call(fn, *args, **kwargs)

    def ping(self) -> None:
        """Raise StoreUnavailable unless the Redis master (with sentinels: the one they
        name) answers; the message names the sentinels asked."""
        try:
            self._r.ping()
        except redis_lib.RedisError as exc:
            if self.sentinel is None:
                raise StoreUnavailable(f"state store (redis) unavailable: {exc}") from exc
            answering, silent = [], []
            for sentinel in self.sentinel.sentinels:
                try:
                    sentinel.ping()
                    answering.append(_address(sentinel))
                except redis_lib.RedisError as error:
                    silent.append(f"{_address(sentinel)} ({type(error).__name__})")
            if not answering:
                why = f"no sentinel answers: {', '.join(silent)}"
            elif isinstance(exc, MasterNotFoundError):
                why = f"the sentinels that answer ({', '.join(answering)}) name no master {self.service!r} that is up"
            else:
                why = f"the master {self.service!r} the sentinels name does not answer: {exc}"
            raise StoreUnavailable(f"state store (redis) unavailable: {why}") from exc

    def run_confirmed(self, script: Script, *, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> tuple[Any, bool]:
        """Run a write script, then (with sentinels and ``wait_replicas`` > 0) Redis
        ``WAIT wait_replicas wait_ms`` on the same connection (one pipeline: WAIT counts the
        replicas that have this connection's writes). Returns (the script's answer, whether
        enough replicas confirmed; always True when not waiting). Raises StoreUnavailable."""
        if not self.wait_replicas:
            return self.call(script, keys=list(keys), args=list(args)), True

        def run() -> list[Any]:
            with self._r.pipeline(transaction=False) as pipe:
                script(keys=list(keys), args=list(args), client=pipe)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
                return list(pipe.execute())

        answer, acked = self.call(run)
        confirmed = int(acked) >= self.wait_replicas
        if not confirmed:
            log.error("state store: %d of %d replicas confirmed a write within %d ms; refusing it (503)",
                      int(acked), self.wait_replicas, self.wait_ms)
        return answer, confirmed

    def unconfirmed(self, what: str) -> StoreUnavailable:
        """The error for a write fewer than ``wait_replicas`` replicas confirmed."""
        return StoreUnavailable(f"state store (redis) unavailable: {what} not confirmed by {self.wait_replicas} "
                                f"replica(s) within {self.wait_ms} ms (state.wait_replicas, state.wait_seconds)")

    # --- one code, one use ---------------------------------------------------------

    def use_otp_step(self, account: str, step: int) -> bool:
        """Record `step` as used; False when it or a later one was. With sentinels the
        record must reach ``wait_replicas`` replicas, else StoreUnavailable (the code is
        not accepted; it stays used on the master)."""
        accepted, confirmed = self.run_confirmed(self._use_otp, keys=[self._k("otp", account)], args=[step])
        if accepted and not confirmed:
            raise self.unconfirmed("a used TOTP step")
        return bool(accepted)

    # --- grants ----------------------------------------------------------------------

    def open_grant(self, grant: Grant) -> None:
        ttl = max(1, math.ceil(grant.idle_until - grant.last_used))
        value = json.dumps(grant.__dict__)
        self.call(self._r.set, self._k("grant", grant.account, grant.fingerprint), value, ex=ttl)
        self.call(self._r.sadd, self._k("grants", grant.account), grant.fingerprint)

    def get_grant(self, account: str, fingerprint: str) -> Grant | None:
        raw = self.call(self._r.get, self._k("grant", account, fingerprint))
        return Grant(**json.loads(raw)) if raw else None

    def touch_grant(self, account: str, fingerprint: str, now: float, idle: float) -> None:
        self.call(self._touch_grant, keys=[self._k("grant", account, fingerprint)], args=[now, idle])

    def end_grant(self, account: str, fingerprint: str) -> None:
        self.call(self._r.delete, self._k("grant", account, fingerprint))

    def end_grants(self, account: str) -> int:
        fingerprints = self.call(self._r.smembers, self._k("grants", account))
        keys = [self._k("grant", account, fp.decode()) for fp in fingerprints]
        n = int(self.call(self._r.delete, *keys)) if keys else 0
        self.call(self._r.delete, self._k("grants", account))
        return n

    # --- enrolment invitations -----------------------------------------------------------

    def add_invitation(self, record: InvitationRecord, now: float, limit: int) -> bool:
        ttl_ms = max(1000, math.ceil((record.keep_until - now) * 1000))
        args = [repr(now), limit, record.digest, record.account, repr(record.created), repr(record.expires),
                repr(record.keep_until), ttl_ms, self._k("inv", "")]
        keys = [self._k("invs"), self._k("inv", record.digest)]
        return bool(self.call(self._add_invitation, keys=keys, args=args))

    def get_invitation(self, digest: str) -> InvitationRecord | None:
        raw = self.call(self._r.hgetall, self._k("inv", digest))
        return _invitation(digest, raw) if raw else None

    def fail_invitation(self, digest: str, now: float, max_failures: int) -> int:
        return int(self.call(self._fail_invitation, keys=[self._k("inv", digest)], args=[repr(now), max_failures]))

    def spend_invitation(self, digest: str, now: float) -> bool:
        return bool(self.call(self._spend_invitation, keys=[self._k("inv", digest)], args=[repr(now)]))

    def unspend_invitation(self, digest: str, now: float) -> bool:
        return bool(self.call(self._unspend_invitation, keys=[self._k("inv", digest)], args=[repr(now)]))

    def open_invitations(self, now: float) -> list[InvitationRecord]:
        digests = [d.decode() for d in self.call(self._r.zrangebyscore, self._k("invs"), f"({now!r}", "+inf")]
        out = []
        for digest in digests:
            record = self.get_invitation(digest)
            if record is not None and record.is_open(now):
                out.append(record)
        return sorted(out, key=lambda r: (r.expires, r.created))

    def revoke_invitations(self, account: str, now: float) -> int:
        args = [repr(now), account, self._k("inv", "")]
        return int(self.call(self._revoke_invitations, keys=[self._k("invs")], args=args))

    # --- keys shared by every node on this Redis ------------------------------------------------

    def shared_secret(self, name: str, size: int = 32) -> bytes:
        """See StateStore.shared_secret: ``SET <prefix>secret:<name> <random> NX`` then ``GET``
        in one Lua step, kept without expiry. With sentinels and ``wait_replicas`` > 0, a
        secret this call made must reach that many replicas (else StoreUnavailable: a
        failover could lose it and the nodes would part ways)."""
        check_secret(name, size)
        (made, value), confirmed = self.run_confirmed(
            self._shared_secret, keys=[self._k("secret", name)], args=[secrets.token_bytes(size)])
        if made and not confirmed:
            raise self.unconfirmed(f"the new shared secret {name!r}")
        return check_secret(name, size, bytes(value))

    def period_secret(self, name: str, period: int, size: int, keep_seconds: float) -> bytes:
        """See StateStore.period_secret: ``SET <prefix>period-secret:<name>:<period> <random>
        NX PX <keep_seconds in ms>`` then ``GET`` in one Lua step (and ``DEL`` of the same
        name's `shared_secret` of earlier releases). Redis deletes it when the time is up
        (and so do its replicas); an RDB snapshot or AOF file written while it lived still
        holds it (docs/scaling.md). With sentinels and ``wait_replicas`` > 0 a secret this
        call made must reach that many replicas, as for `shared_secret`."""
        check_secret(name, size)
        if keep_seconds <= 0:  # a period already over: bytes no other process has, stored nowhere
            return secrets.token_bytes(size)
        (made, value), confirmed = self.run_confirmed(
            self._period_secret, keys=[self._k("period-secret", name, str(period)), self._k("secret", name)],
            args=[secrets.token_bytes(size), max(1, math.ceil(keep_seconds * 1000))])
        if made and not confirmed:
            raise self.unconfirmed(f"the new secret {name!r} of period {period}")
        return check_secret(name, size, bytes(value))

    def close(self) -> None:
        """Close the client's connection pool (and the sentinels' clients)."""
        self._r.close()
        if self.sentinel is not None:
            self.sentinel.close()


def _address(client: redis_lib.Redis) -> str:
    """host:port of a client (IPv6 in brackets), for messages."""
    kw = client.connection_pool.connection_kwargs
    host = str(kw.get("host"))
    return f"[{host}]:{kw.get('port')}" if ":" in host else f"{host}:{kw.get('port')}"


def _invitation(digest: str, raw: dict[bytes, bytes]) -> InvitationRecord:
    def f(name: str) -> str:
        return raw[name.encode()].decode()

    return InvitationRecord(
        digest=digest, account=f("account"), created=float(f("created")), expires=float(f("expires")),
        keep_until=float(f("keep_until")), failures=int(f("failures")), state=f("state"),
    )
