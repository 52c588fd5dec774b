"""WebDAV locks and dead properties: kept in the state store across restarts, bound to
the account that took them, capped in time, granted atomically.

Live tests run against the real TLS server; contract tests drive the storage
classes directly, on both backends: a temporary SQLite database, and a real
redis-server (the session's, under a key prefix of the test's own)."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from wsgidav.dav_error import HTTP_LOCKED, DAVError

from davserver.config import ConfigError, Home, parse_config
from davserver.store.base import StoreUnavailable
from davserver.store.davstate import SQLiteLockStorage, SQLitePropertyManager
from davserver.store.redis import RedisStore
from davserver.store.redis_davstate import RedisLockStorage, RedisPropertyManager
from davserver.store.sqlite import SQLiteStore

from .conftest import Instance, running, session_for

EXCLUSIVE = (
    b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:">'
    b"<D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner>test</D:owner></D:lockinfo>"
)
PROPPATCH = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:davserver:test">'
    "<D:set><D:prop><Z:colour>blau \u00fc</Z:colour></D:prop></D:set></D:propertyupdate>"
).encode()
PROPFIND_COLOUR = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:davserver:test">'
    b"<D:prop><Z:colour/><D:lockdiscovery/></D:prop></D:propfind>"
)


# --- helpers --------------------------------------------------------------------------


def lock(s: requests.Session, url: str, timeout: str | None = None) -> requests.Response:
    headers = {"Content-Type": "application/xml", "Depth": "0"}
    if timeout is not None:
        headers["Timeout"] = timeout
    return s.request("LOCK", url, data=EXCLUSIVE, headers=headers)


def token_of(r: requests.Response) -> str:
    assert r.status_code in (200, 201), (r.status_code, r.text)
    return r.headers["Lock-Token"].strip("<>")


def granted_seconds(r: requests.Response) -> int:
    """The lock's timeout from the LOCK response's lockdiscovery body (RFC 4918 §9.10.1:
    the granted timeout is reported there; there is no Timeout response header)."""
    el = ET.fromstring(r.content).find(".//{DAV:}activelock/{DAV:}timeout")  # noqa: S314 - our own server
    assert el is not None and el.text is not None, r.text
    assert el.text.startswith("Second-"), el.text
    return int(el.text.removeprefix("Second-"))


def propfind(s: requests.Session, url: str) -> ET.Element:
    r = s.request("PROPFIND", url, data=PROPFIND_COLOUR, headers={"Depth": "0", "Content-Type": "application/xml"})
    assert r.status_code == 207, r.text
    return ET.fromstring(r.content)  # noqa: S314 - our own server


def colour(tree: ET.Element) -> str | None:
    """The test property's value, when the server found it (a 200 propstat)."""
    for propstat in tree.iter("{DAV:}propstat"):
        status = propstat.findtext("{DAV:}status") or ""
        el = propstat.find("{DAV:}prop/{urn:davserver:test}colour")
        if el is not None and " 200 " in status:
            return el.text or ""
    return None


def set_locks_config(inst: Instance, **locks: object) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["locks"] = locks
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def put(s: requests.Session, url: str, body: bytes, token: str | None = None, *, tagged: bool = False) -> int:
    headers = {}
    if token is not None:
        headers["If"] = f"<{url}> (<{token}>)" if tagged else f"(<{token}>)"
    return s.put(url, data=body, headers=headers).status_code


# --- live: locks bind writes ------------------------------------------------------------


def test_a_locked_file_refuses_a_put_without_the_token(inst: Instance) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/doc.txt"
        assert alice.put(url, data=b"v1").status_code in (201, 204)
        token_of(lock(alice, url))
        assert put(alice, url, b"v2") == 423
        assert (inst.home.root / "data/files/doc.txt").read_bytes() == b"v1"


def test_a_locked_file_accepts_a_put_with_the_token(inst: Instance) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/doc.txt"
        alice.put(url, data=b"v1")
        token = token_of(lock(alice, url))
        assert put(alice, url, b"v2", token) in (200, 201, 204)
        assert put(alice, url, b"v3", token, tagged=True) in (200, 201, 204)
        assert (inst.home.root / "data/files/doc.txt").read_bytes() == b"v3"
        assert alice.request("UNLOCK", url, headers={"Lock-Token": f"<{token}>"}).status_code == 204
        assert put(alice, url, b"v4") in (200, 201, 204)


def test_another_account_cannot_use_the_token(inst: Instance) -> None:
    """RFC 4918 §6.4: a lock token is bound to the account that took the lock."""
    with running(inst) as srv:
        alice, bob = session_for(inst, "alice"), session_for(inst, "bob")
        url = f"{srv.url}files/doc.txt"
        alice.put(url, data=b"v1")
        token = token_of(lock(alice, url))
        # An untagged If list is evaluated against bob's own locks only: it fails (412).
        assert put(bob, url, b"bob", token) in (403, 412, 423)
        # A tagged list is not evaluated by WsgiDAV; the lock check still refuses bob.
        assert put(bob, url, b"bob", token, tagged=True) == 423
        assert bob.delete(url, headers={"If": f"(<{token}>)"}).status_code in (403, 412, 423)
        assert bob.request("UNLOCK", url, headers={"Lock-Token": f"<{token}>"}).status_code == 403
        # nor can bob keep alice's lock alive (LOCK refresh with her token)
        for if_header in (f"(<{token}>)", f"<{url}> (<{token}>)"):
            r = bob.request("LOCK", url, headers={"If": if_header, "Timeout": "Second-600"})
            assert r.status_code in (403, 412), (if_header, r.status_code)
        assert (inst.home.root / "data/files/doc.txt").read_bytes() == b"v1"
        # the lock is still alice's, and works for her
        r = alice.request("LOCK", url, headers={"If": f"(<{token}>)", "Timeout": "Second-600"})
        assert r.status_code == 200, r.text
        assert put(alice, url, b"v2", token) in (200, 204)
        assert alice.request("UNLOCK", url, headers={"Lock-Token": f"<{token}>"}).status_code == 204
        assert put(bob, url, b"bob") in (200, 204), "unlocked: bob may write again"


# --- live: survive a restart --------------------------------------------------------------


def test_locks_and_dead_properties_survive_a_restart(inst: Instance) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/kept.txt"
        assert alice.put(url, data=b"v1").status_code in (201, 204)
        r = alice.request("PROPPATCH", url, data=PROPPATCH, headers={"Content-Type": "application/xml"})
        assert r.status_code == 207 and "200 OK" in r.text, r.text
        token = token_of(lock(alice, url))
    with running(inst) as srv:  # a new server on the same instance
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/kept.txt"
        tree = propfind(alice, url)
        assert colour(tree) == "blau \u00fc"
        href = tree.find(".//{DAV:}activelock/{DAV:}locktoken/{DAV:}href")
        assert href is not None and href.text == token
        assert put(alice, url, b"v2") == 423
        assert put(alice, url, b"v2", token) in (200, 204)
        assert alice.request("UNLOCK", url, headers={"Lock-Token": f"<{token}>"}).status_code == 204
    with running(inst) as srv:  # ... and the unlock, too
        alice = session_for(inst, "alice")
        assert put(alice, f"{srv.url}files/kept.txt", b"v3") in (200, 204)


def test_a_deleted_folder_takes_its_members_properties_along(inst: Instance) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        assert alice.request("MKCOL", f"{srv.url}files/dir/").status_code == 201
        url = f"{srv.url}files/dir/a.txt"
        alice.put(url, data=b"a")
        alice.request("PROPPATCH", url, data=PROPPATCH, headers={"Content-Type": "application/xml"})
        assert colour(propfind(alice, url)) == "blau \u00fc"
        assert alice.delete(f"{srv.url}files/dir/").status_code == 204
        alice.request("MKCOL", f"{srv.url}files/dir/")
        alice.put(url, data=b"new")
        assert colour(propfind(alice, url)) is None


# --- live: timeouts are capped ------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["Infinite", "Second-999999999", "Second-4000", None])
def test_lock_timeout_is_capped(inst: Instance, timeout: str | None) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/t.txt"
        alice.put(url, data=b"x")
        r = lock(alice, url, timeout)
        token_of(r)
        assert 3590 <= granted_seconds(r) <= 3600


def test_a_short_timeout_is_granted_as_asked_and_refresh_is_capped_too(inst: Instance) -> None:
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/t.txt"
        alice.put(url, data=b"x")
        r = lock(alice, url, "Second-60")
        token = token_of(r)
        assert 50 <= granted_seconds(r) <= 60
        r = alice.request("LOCK", url, headers={"If": f"(<{token}>)", "Timeout": "Infinite"})
        assert r.status_code == 200, r.text
        assert 3590 <= granted_seconds(r) <= 3600


def test_the_cap_is_configurable(inst: Instance) -> None:
    set_locks_config(inst, max_timeout_seconds=120)
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/t.txt"
        alice.put(url, data=b"x")
        assert 110 <= granted_seconds(lock(alice, url, "Infinite")) <= 120


def test_locks_config_is_validated(tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert parse_config({}, home).locks.max_timeout_seconds == 3600
    assert parse_config({"locks": {"max_timeout_seconds": 60}}, home).locks.max_timeout_seconds == 60
    with pytest.raises(ConfigError, match=r"locks\.max_timeout_seconds"):
        parse_config({"locks": {"max_timeout_seconds": 0}}, home)
    with pytest.raises(ConfigError, match=r"locks\.max_timeout"):
        parse_config({"locks": {"max_timeout": 60}}, home)


# --- live: one winner -----------------------------------------------------------------------


def test_racing_for_an_exclusive_lock_has_exactly_one_winner(inst: Instance) -> None:
    with running(inst) as srv:
        sessions = [session_for(inst, "alice"), session_for(inst, "bob")]
        for i in range(5):
            url = f"{srv.url}files/race{i}.txt"
            sessions[0].put(url, data=b"x")
            for s in sessions:  # warm the TLS connections so both requests start together
                assert s.request("OPTIONS", url).status_code == 200
            barrier = threading.Barrier(len(sessions))
            codes: list[int] = []

            def attempt(s: requests.Session, url: str = url, barrier: threading.Barrier = barrier,
                        codes: list[int] = codes) -> None:
                barrier.wait()
                codes.append(lock(s, url).status_code)

            threads = [threading.Thread(target=attempt, args=(s,)) for s in sessions]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(codes) == [200, 423], codes


# --- contract: both backends --------------------------------------------------------------------

Store = SQLiteStore | RedisStore
LockStorage = SQLiteLockStorage | RedisLockStorage
PropertyManager = SQLitePropertyManager | RedisPropertyManager


def open_backend(name: str, db: str, redis_url: str, prefix: str) -> Store:
    """A new store (its own connections) on a backend's state, as another process or node has."""
    if name == "redis":
        return RedisStore(redis_url, prefix=prefix)
    return SQLiteStore(Path(db))


def lock_storage(store: Store, **kw: Any) -> LockStorage:
    return RedisLockStorage(store, **kw) if isinstance(store, RedisStore) else SQLiteLockStorage(store, **kw)


def property_manager(store: Store) -> PropertyManager:
    return RedisPropertyManager(store) if isinstance(store, RedisStore) else SQLitePropertyManager(store)


def redis_keys(store: RedisStore, start: str) -> list[bytes]:
    """The store's keys that start with `start` (after the prefix); a test-only KEYS."""
    return sorted(k if isinstance(k, bytes) else k.encode() for k in store.client.keys(store.prefix + start + "*"))


class Backend:
    """One backend's state: a SQLite file, or a Redis key prefix of its own (uuid).
    Every store opened here is closed when the test ends."""

    def __init__(self, name: str, tmp_path: Path, redis_url: str = "") -> None:
        self.name = name
        self.spec = (name, str(tmp_path / "state.db"), redis_url, f"test-{uuid.uuid4().hex}:")
        self._opened: list[Store] = []

    def open(self) -> Store:
        store = open_backend(*self.spec)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            if isinstance(store, RedisStore):
                keys = redis_keys(store, "")
                if keys:
                    store.client.delete(*keys)
            store.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    b = Backend(request.param, tmp_path, url)
    yield b
    b.close()


# --- contract: the lock storage -----------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def locks(store: Store, clock: Clock) -> LockStorage:
    storage = lock_storage(store, max_timeout=3600, clock=clock)
    storage.open()
    return storage


def new_lock(principal: str = "alice", *, scope: str = "exclusive", depth: str = "0",
             timeout: float | None = 600) -> dict[str, Any]:
    return {"type": "write", "scope": scope, "depth": depth, "owner": b"<owner>x</owner>",
            "timeout": timeout, "principal": principal}


def test_storage_create_get_delete(locks: LockStorage, clock: Clock) -> None:
    lock_dict = new_lock()
    got = locks.create("/files/a.txt/", lock_dict)
    assert got is lock_dict, "like LockStorageDict, create fills in the caller's dict"
    token = got["token"]
    assert token.startswith("opaquelocktoken:")
    assert got["root"] == "/files/a.txt" and got["expire"] == clock.now + 600
    stored = locks.get(token)
    assert stored == got
    assert isinstance(stored["owner"], bytes)
    assert locks.get("opaquelocktoken:nope") is None
    assert locks.delete(token) is True
    assert locks.delete(token) is False
    assert locks.get(token) is None


@pytest.mark.parametrize("owner", [b"", "<D:href>\u00fc</D:href>", b"\xff\xfe not UTF-8"])
def test_storage_keeps_the_owner_bytes(locks: LockStorage, owner: bytes | str) -> None:
    token = locks.create("/files/a", {**new_lock(), "owner": owner})["token"]
    got = locks.get(token)
    assert got is not None
    assert got["owner"] == (owner.encode() if isinstance(owner, str) else owner)
    [listed] = locks.get_lock_list("/files/a", include_root=True, include_children=False, token_only=False)
    assert listed == got


@pytest.mark.parametrize("asked", [None, -1, 0, 3601, 10**9])
def test_storage_caps_timeouts(locks: LockStorage, clock: Clock, asked: float | None) -> None:
    got = locks.create("/files/a", new_lock(timeout=asked))
    assert got["timeout"] == 3600 and got["expire"] == clock.now + 3600
    refreshed = locks.refresh(got["token"], timeout=asked)
    assert refreshed["timeout"] == 3600


def test_storage_keeps_a_shorter_timeout(locks: LockStorage, clock: Clock) -> None:
    got = locks.create("/files/a", new_lock(timeout=60))
    assert got["timeout"] == 60
    clock.now += 30
    assert locks.refresh(got["token"], timeout=120)["expire"] == clock.now + 120
    assert locks.get(got["token"]) == {**got, "timeout": 120, "expire": clock.now + 120}


def test_storage_expired_locks_vanish_and_are_purged(locks: LockStorage, store: Store, clock: Clock) -> None:
    a = locks.create("/files/a", new_lock(timeout=60))
    b = locks.create("/files/b", new_lock(timeout=600))
    clock.now += 61
    assert locks.get(a["token"]) is None
    assert locks.get_lock_list("/files", include_root=False, include_children=True, token_only=True) == [b["token"]]
    with pytest.raises(DAVError) as exc:
        locks.refresh(a["token"], timeout=60)
    assert exc.value.value == 412
    # an expired lock never blocks a new one, and is gone from the table
    locks.create("/files/a", new_lock("bob"))
    clock.now += 700
    assert locks.cleanup() == 2
    if isinstance(store, SQLiteStore):
        assert store.connection().execute("SELECT COUNT(*) FROM dav_locks").fetchone()[0] == 0
    else:
        assert redis_keys(store, "dav:lock") == [], "no lock, nor any index entry, is left"


def test_storage_lock_lists(locks: LockStorage) -> None:
    top = locks.create("/files/d", new_lock(scope="shared", depth="infinity"))
    child = locks.create("/files/d/x", new_lock(scope="shared"))
    other = locks.create("/files/dx", new_lock())  # a sibling whose name starts the same
    upper = locks.create("/files/D/y", new_lock())  # case matters
    tokens = lambda **kw: set(locks.get_lock_list("/files/d/", token_only=True, **kw))  # noqa: E731
    assert tokens(include_root=True, include_children=False) == {top["token"]}
    assert tokens(include_root=False, include_children=True) == {child["token"]}
    assert tokens(include_root=True, include_children=True) == {top["token"], child["token"]}
    everything = locks.get_lock_list("/", include_root=True, include_children=True, token_only=False)
    assert {lk["token"] for lk in everything} == {top["token"], child["token"], other["token"], upper["token"]}
    assert [lk["root"] for lk in everything] == sorted(lk["root"] for lk in everything)
    assert everything[0] == locks.get(everything[0]["token"])


def test_storage_conflict_rules(locks: LockStorage) -> None:
    locks.create("/s/f", new_lock())
    with pytest.raises(DAVError) as exc:
        locks.create("/s/f", new_lock("alice"))  # even the same account: exclusive means one lock
    assert exc.value.value == HTTP_LOCKED
    # shared + shared is fine; shared + exclusive is not
    locks.create("/s/g", new_lock(scope="shared"))
    locks.create("/s/g", new_lock("bob", scope="shared"))
    with pytest.raises(DAVError):
        locks.create("/s/g", new_lock(scope="exclusive"))
    # a depth-0 lock on a folder does not cover its members; depth-infinity does
    locks.create("/s/d0", new_lock(depth="0"))
    locks.create("/s/d0/m", new_lock("bob"))
    locks.create("/s/di", new_lock(depth="infinity"))
    with pytest.raises(DAVError):
        locks.create("/s/di/deep/m", new_lock("bob"))
    # a depth-infinity lock conflicts with any lock below it
    with pytest.raises(DAVError) as exc:
        locks.create("/s", new_lock("bob", depth="infinity"))
    assert exc.value.err_condition is not None
    assert "/s/f" in exc.value.err_condition.hrefs


def test_storage_shared_and_depth_rules(locks: LockStorage, clock: Clock) -> None:
    locks.create("/t", new_lock(scope="shared", depth="infinity"))
    locks.create("/t/a", new_lock("bob", scope="shared", depth="infinity"))  # shared under shared
    with pytest.raises(DAVError) as exc:  # depth infinity: any lock below is in the way, shared or not
        locks.create("/t", new_lock("carol", scope="shared", depth="infinity"))
    assert exc.value.err_condition is not None and exc.value.err_condition.hrefs == ["/t/a"]
    locks.create("/t", new_lock("carol", scope="shared", depth="0"))
    with pytest.raises(DAVError) as exc:  # exclusive below two depth-infinity locks (not the depth-0 one)
        locks.create("/t/a/b", new_lock("carol"))
    assert exc.value.err_condition is not None
    assert sorted(exc.value.err_condition.hrefs) == ["/t", "/t/a"]
    clock.now += 601  # all expired: nothing is in the way any more
    locks.create("/t", new_lock("carol", depth="infinity"))


def test_storage_conflict_check_is_atomic_across_connections(backend: Backend) -> None:
    """Each thread has its own store (own connections), as separate processes would."""
    stores = [backend.open() for _ in range(8)]
    storages = [lock_storage(s) for s in stores]
    for round_ in range(10):
        barrier = threading.Barrier(len(storages))
        wins: list[str] = []
        losses: list[int] = []

        def attempt(storage: LockStorage, path: str = f"/files/r{round_}",
                    barrier: threading.Barrier = barrier, wins: list[str] = wins,
                    losses: list[int] = losses) -> None:
            barrier.wait()
            try:
                wins.append(storage.create(path, new_lock())["token"])
            except DAVError as exc:
                losses.append(exc.value)

        threads = [threading.Thread(target=attempt, args=(s,)) for s in storages]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and losses == [HTTP_LOCKED] * (len(storages) - 1)


def _lock_in_another_process(spec: tuple[str, str, str, str], path: str, barrier: Any) -> str | None:
    store = open_backend(*spec)
    try:
        storage = lock_storage(store)
        barrier.wait()
        try:
            return str(storage.create(path, new_lock())["token"])
        except DAVError:
            return None
    finally:
        store.close()


def test_storage_conflict_check_is_atomic_across_processes(backend: Backend) -> None:
    open_backend(*backend.spec).close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        with ctx.Pool(4) as pool:
            results = pool.starmap(_lock_in_another_process, [(backend.spec, "/files/p", barrier)] * 4)
    assert sum(r is not None for r in results) == 1, results


def test_storage_survives_reopening(backend: Backend, clock: Clock) -> None:
    store = backend.open()
    token = lock_storage(store, clock=clock).create("/files/a", new_lock())["token"]
    store.close()
    store = backend.open()
    again = lock_storage(store, clock=clock)
    again.open()
    got = again.get(token)
    assert got is not None and got["principal"] == "alice" and got["owner"] == b"<owner>x</owner>"
    if isinstance(store, RedisStore):
        raw = store.client.get(f"{store.prefix}dav:lock:{token}")
        assert isinstance(raw, bytes) and json.loads(raw)["owner"] == "<owner>x</owner>", "JSON, no pickles"


def test_storage_close_leaves_the_store_open(locks: LockStorage, store: Store) -> None:
    locks.close()  # what LockManager.__del__ does
    assert store.use_otp_step("alice", 1)


# --- redis: several nodes, TTLs, errors -----------------------------------------------------------


@pytest.fixture
def redis_backend(tmp_path: Path, redis_url: str) -> Iterator[Backend]:
    b = Backend("redis", tmp_path, redis_url)
    yield b
    b.close()


def _race(storages: list[RedisLockStorage], paths: list[str], depths: list[str]) -> tuple[list[str], list[int]]:
    barrier = threading.Barrier(len(storages))
    wins: list[str] = []
    losses: list[int] = []

    def attempt(storage: RedisLockStorage, path: str, depth: str) -> None:
        barrier.wait()
        try:
            wins.append(storage.create(path, new_lock(depth=depth))["token"])
        except DAVError as exc:
            losses.append(exc.value)

    threads = [threading.Thread(target=attempt, args=args) for args in zip(storages, paths, depths, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, losses


def test_redis_two_nodes_racing_for_an_exclusive_lock_have_one_winner(redis_backend: Backend) -> None:
    """Two nodes: two stores, each with its own client and connections to the one Redis."""
    a, b = redis_backend.open(), redis_backend.open()
    assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
    assert a.client.connection_pool is not b.client.connection_pool
    nodes = [RedisLockStorage(a, max_timeout=3600), RedisLockStorage(b, max_timeout=3600)]
    for i in range(25):
        # the same resource
        wins, losses = _race(nodes, [f"/files/r{i}"] * 2, ["0", "0"])
        assert len(wins) == 1 and losses == [HTTP_LOCKED], (i, wins, losses)
        # a folder (depth infinity) against a member of it
        wins, losses = _race(nodes, [f"/files/d{i}", f"/files/d{i}/m"], ["infinity", "0"])
        assert len(wins) == 1 and losses == [HTTP_LOCKED], (i, wins, losses)
    owners = nodes[0].get_lock_list("/files", include_root=False, include_children=True, token_only=True)
    assert len(owners) == 50 and set(owners) == set(
        nodes[1].get_lock_list("/files", include_root=False, include_children=True, token_only=True))


def test_redis_lock_keys_expire_and_refresh_extends_them(redis_backend: Backend) -> None:
    store = redis_backend.open()
    assert isinstance(store, RedisStore)
    locks = RedisLockStorage(store, max_timeout=3600)
    token = locks.create("/files/a", new_lock(timeout=60))["token"]
    key = f"{store.prefix}dav:lock:{token}"
    assert 60_000 < store.client.pttl(key) <= (60 + 60) * 1000, "the timeout plus a grace minute"
    locks.refresh(token, timeout=10**9)  # capped
    assert 3600_000 < store.client.pttl(key) <= (3600 + 60) * 1000
    assert locks.delete(token)
    assert redis_keys(store, "dav:") == []


def test_redis_a_lock_whose_key_expired_is_gone(redis_backend: Backend) -> None:
    """The key's TTL fired (say a node's clock is behind): the indexes must not keep it alive."""
    store = redis_backend.open()
    assert isinstance(store, RedisStore)
    locks = RedisLockStorage(store, max_timeout=3600)
    token = locks.create("/files/d/a", new_lock())["token"]
    store.client.delete(f"{store.prefix}dav:lock:{token}")  # what the TTL does
    assert locks.get(token) is None
    assert locks.get_lock_list("/", include_root=True, include_children=True, token_only=True) == []
    with pytest.raises(DAVError) as exc:
        locks.refresh(token, timeout=60)
    assert exc.value.value == 412
    other = locks.create("/files/d", new_lock("bob", depth="infinity"))  # not in the way
    assert locks.delete(other["token"])
    assert redis_keys(store, "dav:") == [], "the index entries went with it"


def test_redis_request_paths_never_scan_the_keyspace(redis_backend: Backend) -> None:
    store = redis_backend.open()
    assert isinstance(store, RedisStore)
    clock = Clock()
    locks = RedisLockStorage(store, max_timeout=3600, clock=clock)
    props = RedisPropertyManager(store)

    def scans() -> int:
        stats = store.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0)) for cmd in ("keys", "scan"))

    before = scans()
    locks.open()
    a = locks.create("/files/d", new_lock(depth="infinity", timeout=60))
    with pytest.raises(DAVError):
        locks.create("/files/d/x", new_lock("bob"))
    locks.get_lock_list("/", include_root=True, include_children=True, token_only=False)
    locks.refresh(a["token"], timeout=120)
    clock.now += 121
    locks.get(a["token"])
    locks.cleanup()
    props.write_property("/f/d/", "{urn:x}p", value("d"))
    props.write_property("/f/d/x", "{urn:x}p", value("x"))
    props.copy_properties("/f/d/x", "/f/d/y")
    props.move_properties("/f/d/", "/f/e/", with_children=True)
    props.get_properties("/f/e/x")
    props.remove_properties("/f/e/")
    assert scans() == before
    assert redis_keys(store, "dav:") == []


def test_redis_errors_are_store_unavailable(tmp_path: Path) -> None:
    from .conftest import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="nowhere:")
    try:
        locks = RedisLockStorage(store, max_timeout=60)
        props = RedisPropertyManager(store)
        for call in (
            lambda: locks.create("/files/a", new_lock()),
            lambda: locks.get("opaquelocktoken:x"),
            lambda: locks.refresh("opaquelocktoken:x", timeout=60),
            lambda: locks.delete("opaquelocktoken:x"),
            lambda: locks.get_lock_list("/", include_root=True, include_children=True, token_only=True),
            locks.cleanup,
            lambda: props.get_properties("/f/a"),
            lambda: props.write_property("/f/a", "{urn:x}p", b"<x/>"),
            lambda: props.move_properties("/f/a", "/f/b", with_children=True),
        ):
            with pytest.raises(StoreUnavailable):
                call()
    finally:
        store.close()


DIFF_PATHS = ["/", "/a", "/a/", "/a/b", "/a/b/c", "/a/bc", "/ab", "/A/b", "/a b/x", "/\u00e4", "/\u00e4/x"]


def outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    """What a call returned, or the status and conflicting hrefs of the DAVError it raised."""
    try:
        return fn(*args, **kw)
    except DAVError as exc:
        return exc.value, sorted(exc.err_condition.hrefs) if exc.err_condition else None


def without_token(result: Any) -> Any:
    return {**result, "token": None} if isinstance(result, dict) else result


@pytest.mark.parametrize("seed", range(4))
def test_redis_does_what_sqlite_does(redis_backend: Backend, tmp_path: Path, seed: int) -> None:
    """Random operations on both backends (one clock): the same answers, the same properties."""
    rnd = random.Random(seed)
    clock = Clock()
    sqlite, redis_ = SQLiteStore(tmp_path / "diff.db"), redis_backend.open()
    try:
        locks = [lock_storage(sqlite, max_timeout=100, clock=clock), lock_storage(redis_, max_timeout=100, clock=clock)]
        props = [property_manager(sqlite), property_manager(redis_)]
        tokens: list[tuple[str, str]] = []  # (sqlite's, redis's) for the same lock
        for step in range(250):
            op = rnd.choice(["create"] * 4 + ["get", "refresh", "delete", "list", "tick", "write_property",
                                               "remove_property", "remove_properties", "copy_properties",
                                               "move_properties"])
            p, q = rnd.choice(DIFF_PATHS), rnd.choice(DIFF_PATHS)
            if op == "create":
                asked = new_lock(scope=rnd.choice(["shared", "exclusive"]), depth=rnd.choice(["0", "infinity"]),
                                 timeout=rnd.choice([None, 5, 50]))
                a, b = [outcome(lk.create, p, dict(asked)) for lk in locks]
                assert without_token(a) == without_token(b), (step, op, p, a, b)
                if isinstance(a, dict):
                    tokens.append((a["token"], b["token"]))
            elif op in ("get", "refresh", "delete"):
                if not tokens:
                    continue
                pair = rnd.choice(tokens)
                expired = sqlite.connection().execute(
                    "SELECT expire < ? FROM dav_locks WHERE token = ?", (clock.now, pair[0])).fetchone()
                kw = {"timeout": rnd.choice([None, 5, 500])} if op == "refresh" else {}
                a, b = [outcome(getattr(lk, op), token, **kw) for lk, token in zip(locks, pair, strict=True)]
                # SQLite rolls back the purge of a create that conflicts: an expired lock it still has
                # may be gone from Redis, which purges either way. Deleting it is the only visible difference.
                if not (op == "delete" and expired and expired[0]):
                    assert without_token(a) == without_token(b), (step, op, a, b)
            elif op == "list":
                root, children = rnd.choice([(True, False), (False, True), (True, True)])
                a, b = [[(lk["root"], lk["scope"], lk["depth"], lk["timeout"], lk["expire"])
                         for lk in storage.get_lock_list(p, include_root=root, include_children=children,
                                                         token_only=False)]
                        for storage in locks]
                assert a == sorted(a, key=lambda lk: lk[0].encode()), "ordered by root"
                assert sorted(a) == sorted(b), (step, op, p, a, b)  # the same root's order is the tokens'
                assert [lk[0] for lk in a] == [lk[0] for lk in b]
            elif op == "tick":
                clock.now += rnd.choice([1, 10, 60])
            else:
                args: tuple[Any, ...] = {
                    "write_property": (p, f"{{x}}{step % 3}", value(str(step))),
                    "remove_property": (p, f"{{x}}{step % 3}"),
                    "remove_properties": (p,),
                    "copy_properties": (p, q),
                    "move_properties": (p, q, rnd.choice([False, True])),
                }[op]
                for pm in props:
                    getattr(pm, op)(*args)
            for url in DIFF_PATHS:
                a, b = [[(n, pm.get_property(url, n)) for n in pm.get_properties(url)] for pm in props]
                assert a == b, (step, op, p, q, url, a, b)
    finally:
        sqlite.close()


# --- contract: the property manager -----------------------------------------------------------


@pytest.fixture
def props(store: Store) -> PropertyManager:
    return property_manager(store)


def value(text: str) -> bytes:
    return f'<ns0:p xmlns:ns0="urn:x">{text}</ns0:p>'.encode()


def test_props_write_read_remove(props: PropertyManager) -> None:
    assert props.get_properties("/files/a") == []
    props.write_property("/files/a", "{urn:x}p", value("\u00fc &amp; <b/>"))
    props.write_property("/files/a", "{urn:x}q", value("1"), dry_run=True)
    assert props.get_properties("/files/a") == ["{urn:x}p"]
    assert props.get_property("/files/a", "{urn:x}p") == value("\u00fc &amp; <b/>")
    props.write_property("/files/a", "{urn:x}p", value("2"))
    assert props.get_property("/files/a", "{urn:x}p") == value("2")
    assert props.get_property("/files/a", "{urn:x}nope") is None
    props.remove_property("/files/a", "{urn:x}p", dry_run=True)
    assert props.get_property("/files/a", "{urn:x}p") is not None
    props.remove_property("/files/a", "{urn:x}p")
    props.remove_property("/files/a", "{urn:x}p")  # not an error
    assert props.get_properties("/files/a") == []


def test_props_names_are_sorted(props: PropertyManager) -> None:
    for name in ("{urn:x}b", "{urn:x}\u00e4", "{urn:x}a", "{DAV:}z"):
        props.write_property("/f/a", name, value(name))
    assert props.get_properties("/f/a") == ["{DAV:}z", "{urn:x}a", "{urn:x}b", "{urn:x}\u00e4"]


def test_props_get_many_answers_for_a_whole_folder(props: PropertyManager) -> None:
    urls = [f"/files/d/f{i}" for i in range(1200)]  # more than one batch
    for i in (0, 7, 499, 500, 1199):
        props.write_property(urls[i], "{urn:x}b", value(f"b{i}"))
        props.write_property(urls[i], "{urn:x}a", value(f"a{i}"))
    props.write_property("/files/d/f7/deeper", "{urn:x}a", value("not asked"))
    got = props.get_many(urls + ["/files/none"])
    assert sorted(got) == sorted(urls[i] for i in (0, 7, 499, 500, 1199))
    assert got[urls[500]] == (("{urn:x}a", value("a500")), ("{urn:x}b", value("b500")))
    assert props.get_many([]) == {}


def test_props_remove_properties_takes_the_subtree(props: PropertyManager) -> None:
    for url in ("/files/d/", "/files/d/a", "/files/d/e/b", "/files/dx", "/files/D/a"):
        props.write_property(url, "{urn:x}p", value(url))
    props.remove_properties("/files/d/")
    assert [u for u in ("/files/d/", "/files/d/a", "/files/d/e/b", "/files/dx", "/files/D/a")
            if props.get_properties(u)] == ["/files/dx", "/files/D/a"]


def test_props_copy_replaces_the_destinations(props: PropertyManager) -> None:
    props.write_property("/f/a", "{urn:x}p", value("a"))
    props.write_property("/f/b", "{urn:x}old", value("b"))
    props.copy_properties("/f/a", "/f/b")
    assert props.get_properties("/f/b") == ["{urn:x}p"]
    assert props.get_properties("/f/a") == ["{urn:x}p"]
    props.copy_properties("/f/none", "/f/b")
    assert props.get_properties("/f/b") == [], "exactly the source's: none"


def test_props_move_with_and_without_children(props: PropertyManager) -> None:
    props.write_property("/f/a", "{urn:x}p", value("a"))
    props.move_properties("/f/a", "/f/b", with_children=False)
    assert props.get_properties("/f/a") == [] and props.get_property("/f/b", "{urn:x}p") == value("a")
    for url in ("/f/d/", "/f/d/x", "/f/d/e/y", "/f/dx"):
        props.write_property(url, "{urn:x}p", value(url))
    props.write_property("/f/n/stale", "{urn:x}p", value("stale"))
    props.move_properties("/f/d/", "/f/n/", with_children=True)
    assert props.get_property("/f/n/", "{urn:x}p") == value("/f/d/")
    assert props.get_property("/f/n/x", "{urn:x}p") == value("/f/d/x")
    assert props.get_property("/f/n/e/y", "{urn:x}p") == value("/f/d/e/y")
    assert props.get_properties("/f/n/stale") == [], "the destination was replaced"
    assert props.get_properties("/f/d/x") == [] and props.get_properties("/f/dx") == ["{urn:x}p"]
    # the subtree index follows: the moved tree can be removed, then moved nowhere
    props.remove_properties("/f/n/")
    assert [u for u in ("/f/n/", "/f/n/x", "/f/n/e/y") if props.get_properties(u)] == []
    props.move_properties("/f/n/", "/f/m/", with_children=True)
    assert props.get_properties("/f/m/x") == []


def test_props_clear(props: PropertyManager) -> None:
    props.write_property("/f/a", "{urn:x}p", value("a"))
    props.write_property("/f/d/b", "{urn:x}p", value("b"))
    props.clear()
    assert props.get_properties("/f/a") == [] and props.get_properties("/f/d/b") == []
    props.write_property("/f/a", "{urn:x}p", value("again"))
    assert props.get_properties("/f/a") == ["{urn:x}p"]


def test_storage_clear(locks: LockStorage) -> None:
    token = locks.create("/files/d", new_lock(depth="infinity"))["token"]
    locks.clear()
    assert locks.get(token) is None
    assert locks.get_lock_list("/", include_root=True, include_children=True, token_only=True) == []
    locks.create("/files/d/x", new_lock())


def test_props_survive_reopening(backend: Backend) -> None:
    store = backend.open()
    property_manager(store).write_property("/f/a", "{urn:x}p", value("kept"))
    store.close()
    store = backend.open()
    assert property_manager(store).get_property("/f/a", "{urn:x}p") == value("kept")
    if isinstance(store, SQLiteStore):
        row = store.connection().execute("SELECT url, name, value FROM dav_props").fetchone()
        assert row == ("/f/a", "{urn:x}p", value("kept")), "plain columns, no pickles"
    else:
        assert store.client.hgetall(f"{store.prefix}dav:props:/f/a") == {b"{urn:x}p": value("kept")}, "no pickles"
        assert store.client.zrange(f"{store.prefix}dav:prop-urls", 0, -1) == [b"/f/a"]
