"""Bounded WebDAV state: dead properties (value size, count and bytes per resource),
locks (per resource, per account) and the dead-property size of one PROPFIND answer.

Contract tests drive the property manager and the lock storage of both backends
(SQLite, and a real redis-server) the way WsgiDAV does; live tests send the
attacker's exact requests to a real TLS server on either backend and check the
status, the audit line's reason, that the state did not grow, and that the
legitimate twin (Windows' Win32* properties, a normal LOCK/UNLOCK) still works.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsgidav.dav_error import HTTP_LOCKED, DAVError

from davserver.request_context import request_context
from davserver.store.davstate import (
    LockBounds,
    PropertyBounds,
    SQLiteLockStorage,
    SQLitePropertyManager,
    StateLimitExceeded,
    prop_bytes,
)
from davserver.store.redis import RedisStore
from davserver.store.redis_davstate import RedisLockStorage, RedisPropertyManager
from davserver.store.sqlite import SQLiteStore

from .conftest import Instance, running, session_for
from .test_dav_state import Backend, Clock, new_lock, redis_keys

Store = SQLiteStore | RedisStore
PropertyManager = SQLitePropertyManager | RedisPropertyManager
LockStorage = SQLiteLockStorage | RedisLockStorage


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    b = Backend(request.param, tmp_path, url)
    yield b
    b.close()


def props_of(store: Store, bounds: PropertyBounds) -> PropertyManager:
    if isinstance(store, RedisStore):
        return RedisPropertyManager(store, bounds=bounds)
    return SQLitePropertyManager(store, bounds=bounds)


def locks_of(store: Store, bounds: LockBounds, clock: Clock | None = None) -> LockStorage:
    kw: dict[str, Any] = {"bounds": bounds, "max_timeout": 3600}
    if clock is not None:
        kw["clock"] = clock
    return RedisLockStorage(store, **kw) if isinstance(store, RedisStore) else SQLiteLockStorage(store, **kw)


def el(name: str, text: str) -> bytes:
    """A property's XML as WsgiDAV stores it (etree.tostring of the element)."""
    ns, local = name[1:].split("}")
    return f'<ns0:{local} xmlns:ns0="{ns}">{text}</ns0:{local}>'.encode()


def proppatch(pm: PropertyManager, url: str, changes: Sequence[tuple[str, bytes | None]],
              environ: dict[str, Any] | None = None) -> list[int]:
    """What WsgiDAV's do_PROPPATCH does (request_server.py): every instruction as a dry run,
    and only when all pass, each for real. The status of each instruction, as in the 207."""
    environ = {} if environ is None else environ

    def one(name: str, value: bytes | None, dry_run: bool) -> int:
        try:
            if value is None:
                pm.remove_property(url, name, dry_run, environ)
            else:
                pm.write_property(url, name, value, dry_run, environ)
        except DAVError as exc:
            return exc.value
        return 200

    dry = [one(name, value, True) for name, value in changes]
    if any(s != 200 for s in dry):
        return [424 if s == 200 else s for s in dry]
    return [one(name, value, False) for name, value in changes]


def stored(pm: PropertyManager, url: str) -> dict[str, bytes]:
    return {name: pm.get_property(url, name) or b"" for name in pm.get_properties(url)}


SMALL = PropertyBounds(value_bytes=1024, per_resource=8, bytes_per_resource=4096, answer_bytes=1 << 16)


# --- contract: properties --------------------------------------------------------------------


def test_a_value_over_the_bound_is_refused_and_one_at_the_bound_stored(backend: Backend) -> None:
    pm = props_of(backend.open(), SMALL)
    at = b"<a>" + b"x" * (1024 - 7) + b"</a>"
    over = b"<a>" + b"x" * (1024 - 6) + b"</a>"
    assert len(at) == 1024 and len(over) == 1025
    environ: dict[str, Any] = {}
    assert proppatch(pm, "/files/a", [("{x}ok", el("{x}ok", "1")), ("{x}big", over)], environ) == [424, 507]
    assert request_context(environ).refusal == "property_too_large"
    assert stored(pm, "/files/a") == {}, "nothing of a refused PROPPATCH is stored"
    environ = {}
    assert proppatch(pm, "/files/a", [("{x}big", at)], environ) == [200]
    assert request_context(environ).refusal is None
    assert stored(pm, "/files/a") == {"{x}big": at}


def test_the_count_bound_refuses_the_properties_past_it(backend: Backend) -> None:
    pm = props_of(backend.open(), SMALL)
    environ: dict[str, Any] = {}
    changes: list[tuple[str, bytes | None]] = [(f"{{x}}p{i}", el(f"{{x}}p{i}", "")) for i in range(20)]
    assert proppatch(pm, "/files/a", changes, environ) == [424] * 8 + [507] * 12
    assert request_context(environ).refusal == "too_many_properties"
    assert stored(pm, "/files/a") == {}
    assert proppatch(pm, "/files/a", changes[:8]) == [200] * 8, "exactly the bound fits"
    assert proppatch(pm, "/files/a", changes[8:9]) == [507]
    # replacing a value and removing one to set another keep the count: both allowed
    assert proppatch(pm, "/files/a", [changes[0], ("{x}p1", None), changes[9]]) == [200, 200, 200]
    assert len(stored(pm, "/files/a")) == 8


def test_the_bytes_bound_counts_names_and_values(backend: Backend) -> None:
    pm = props_of(backend.open(), SMALL)
    value = b"<v>" + b"y" * 1000 + b"</v>"  # 1,007 bytes, + a 4-byte name: 1,011 each
    four = [(f"{{x}}{i}", value) for i in range(4)]
    assert sum(prop_bytes(n, v) for n, v in four) == 4 * 1011 <= 4096
    environ: dict[str, Any] = {}
    assert proppatch(pm, "/files/a", [*four, ("{x}4", value)], environ) == [424] * 4 + [507]
    assert request_context(environ).refusal == "property_bytes_exceeded"
    assert proppatch(pm, "/files/a", four) == [200] * 4
    over, exact = b"<v>" + b"y" * 42 + b"</v>", b"<v>" + b"y" * 41 + b"</v>"
    assert proppatch(pm, "/files/a", [("{x}4", over)]) == [507], "4,044 + 4 + 49 bytes > 4,096"
    assert proppatch(pm, "/files/a", [("{x}4", exact)]) == [200], "4,044 + 4 + 48 bytes: exactly the bound"
    assert proppatch(pm, "/files/a", [("{x}0", None), ("{x}5", value)]) == [200, 200]


def test_a_lowered_bound_still_lets_properties_be_removed(backend: Backend) -> None:
    store = backend.open()
    roomy = props_of(store, PropertyBounds(per_resource=50))
    assert proppatch(roomy, "/files/a", [(f"{{x}}{i}", b"<v/>") for i in range(20)]) == [200] * 20
    tight = props_of(store, SMALL)
    assert proppatch(tight, "/files/a", [("{x}new", b"<v/>")]) == [507], "over the bound, no growth"
    assert proppatch(tight, "/files/a", [("{x}0", None), ("{x}1", None)]) == [200, 200]
    assert proppatch(tight, "/files/a", [("{x}2", b"<w/>")]) == [200], "same count, same bytes"
    assert len(stored(tight, "/files/a")) == 18


def test_a_direct_write_outside_a_proppatch_is_checked_too(backend: Backend) -> None:
    pm = props_of(backend.open(), SMALL)
    for i in range(8):
        pm.write_property("/files/a", f"{{x}}{i}", b"<v/>")
    with pytest.raises(StateLimitExceeded) as exc:
        pm.write_property("/files/a", "{x}8", b"<v/>")
    assert exc.value.value == 507 and exc.value.reason == "too_many_properties"
    pm.remove_property("/files/a", "{x}0")
    pm.write_property("/files/a", "{x}8", b"<v/>")
    assert len(stored(pm, "/files/a")) == 8


def test_racing_proppatches_never_leave_a_resource_over_its_bound(backend: Backend) -> None:
    """Eight connections (as eight processes or nodes would have), each a PROPPATCH of 5 new
    properties where the bound is 8: every dry run passes, at most one can commit."""
    pms = [props_of(backend.open(), SMALL) for _ in range(8)]
    for round_ in range(5):
        url = f"/files/r{round_}"
        barrier = threading.Barrier(len(pms))
        results: list[list[int]] = []

        def attempt(pm: PropertyManager, k: int, url: str = url, barrier: threading.Barrier = barrier,
                    results: list[list[int]] = results) -> None:
            changes: list[tuple[str, bytes | None]] = [(f"{{x}}{k}-{i}", b"<v/>") for i in range(5)]
            environ: dict[str, Any] = {}
            for name, value in changes:  # the dry run, all at once …
                pm.write_property(url, name, value or b"", True, environ)
            barrier.wait()  # … then the real pass, side by side
            results.append(proppatch(pm, url, changes, environ))

        threads = [threading.Thread(target=attempt, args=(pm, k)) for k, pm in enumerate(pms)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [r for r in results if r == [200] * 5]
        assert len(wins) == 1, results
        assert all(r == [507, 424, 424, 424, 424] for r in results if r not in wins), results
        names = stored(pms[0], url)
        assert len(names) == 5 and len({n.split("-")[0] for n in names}) == 1, "one PROPPATCH, whole"


OPS = st.lists(
    st.lists(st.tuples(st.sampled_from([f"{{x}}{i}" for i in range(12)]),
                       st.one_of(st.none(), st.integers(0, 700))), min_size=1, max_size=6),
    min_size=1, max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=OPS)
def test_any_sequence_of_proppatches_stays_in_bounds_and_is_all_or_nothing(backend: Backend,
                                                                           batches: list[Any]) -> None:
    """For any PROPPATCHes (sets of random sizes, removes): each is applied whole or not at
    all, exactly as a model of the rule says, and no resource ever grows past a bound.

    The rule: the instructions are taken in document order (RFC 4918 §9.2) and none may
    take the resource over a bound while holding more than it did before the PROPPATCH."""
    bounds = PropertyBounds(value_bytes=600, per_resource=5, bytes_per_resource=2000)
    pm = props_of(backend.open(), bounds)
    pm.clear()
    model: dict[str, bytes] = {}
    for batch in batches:
        changes: list[tuple[str, bytes | None]] = [
            (name, None if size is None else b"<v>" + b"z" * size + b"</v>") for name, size in batch
        ]
        count0, total0 = len(model), sum(prop_bytes(n, v) for n, v in model.items())
        after = dict(model)
        fits = True
        for name, value in changes:
            if value is None:
                after.pop(name, None)
            else:
                after[name] = value
            count, total = len(after), sum(prop_bytes(n, v) for n, v in after.items())
            fits = fits and (value is None or len(value) <= 600) and (count <= 5 or count <= count0) and (
                total <= 2000 or total <= total0)
        statuses = proppatch(pm, "/files/h", changes)
        assert (statuses == [200] * len(changes)) == fits, (model, changes, statuses)
        if fits:
            model = after
        else:
            assert 507 in statuses and set(statuses) <= {424, 507}
        assert stored(pm, "/files/h") == model


def test_answer_bytes_measures_what_a_propfind_would_carry(backend: Backend) -> None:
    pm = props_of(backend.open(), PropertyBounds())
    layout = {
        "/files/d/": {"{x}a": b"<a>1</a>"},
        "/files/d/f1": {"{x}a": b"<a>22</a>", "{x}b": b"<b>333</b>"},
        "/files/d/sub/": {"{x}b": b"<b>4444</b>"},
        "/files/d/sub/deep": {"{x}a": b"<a>" + b"5" * 500 + b"</a>"},  # not a member of /files/d
        "/files/dx": {"{x}a": b"<a>not below /files/d</a>"},
    }
    for url, props in layout.items():
        for name, value in props.items():
            pm.write_property(url, name, value)

    def size(urls: list[str], names: tuple[str, ...] | None = None, values: bool = True) -> int:
        return sum(len(n) + (len(v) if values else 0)
                   for u in urls for n, v in layout[u].items() if names is None or n in names)

    members = ["/files/d/", "/files/d/f1", "/files/d/sub/"]
    for url in ("/files/d", "/files/d/"):  # either form of the folder's URL
        assert pm.answer_bytes(url, members=False, names=None) == size(["/files/d/"])
        assert pm.answer_bytes(url, members=True, names=None) == size(members)
        assert pm.answer_bytes(url, members=True, names=("{x}b",)) == size(members, ("{x}b",))
        assert pm.answer_bytes(url, members=True, names=("{x}none",)) == 0
        assert pm.answer_bytes(url, members=True, names=None, values=False) == size(members, values=False)
    assert pm.answer_bytes("/files/d/sub", members=True, names=None) == size(["/files/d/sub/", "/files/d/sub/deep"])
    assert pm.answer_bytes("/files/d/f1", members=True, names=None) == size(["/files/d/f1"])


URL_PARTS = st.sampled_from(["a", "b", "a b", "a%20b", "z", "a-", "a0", "~"])
TREES = st.lists(
    st.tuples(st.lists(URL_PARTS, min_size=1, max_size=3), st.booleans(),
              st.sampled_from(["{x}p", "{x}q", "{y}p"]), st.integers(1, 50)),
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREES)
def test_answer_bytes_counts_exactly_the_folder_and_its_direct_members(backend: Backend, tree: list[Any]) -> None:
    """For any tree of URLs with properties (files and folders, siblings whose names share a
    prefix with a sub-folder, deep sub-trees the walk skips): the folder's Depth 1 measure is
    what a brute-force sum over the folder and its direct members gives."""
    pm = props_of(backend.open(), PropertyBounds())
    if isinstance(pm, RedisPropertyManager):
        pm.walk_step = 3  # the walk hands back and resumes many times
    pm.clear()
    stored_: dict[str, dict[str, bytes]] = {}
    for parts, folder, name, size in tree:
        url = "/files/d/" + "/".join(parts) + ("/" if folder else "")
        value = b"<v>" + b"w" * size + b"</v>"
        pm.write_property(url, name, value)
        stored_.setdefault(url, {})[name] = value
    pm.write_property("/files/d/", "{x}top", b"<t/>")
    stored_.setdefault("/files/d/", {})["{x}top"] = b"<t/>"
    pm.write_property("/files/dz", "{x}p", b"<not-below/>")

    def direct(url: str) -> bool:
        rest = url[len("/files/d/"):]
        return "/" not in rest.rstrip("/")

    for names in (None, ("{x}p",), ("{y}p", "{x}top")):
        expected = sum(len(n) + len(v) for url, props in stored_.items() if direct(url)
                       for n, v in props.items() if names is None or n in names)
        assert pm.answer_bytes("/files/d", members=True, names=names) == expected
        assert pm.answer_bytes("/files/d", members=True, names=names, stop_after=expected) == expected
        if expected:  # past the bound the count may stop early, but always says "over"
            assert pm.answer_bytes("/files/d", members=True, names=names, stop_after=expected - 1) > expected - 1
    expected_names = sum(len(n) for url, props in stored_.items() if direct(url) for n in props)
    assert pm.answer_bytes("/files/d/", members=True, names=None, values=False) == expected_names


# --- contract: locks ----------------------------------------------------------------------------


def shared_lock(principal: str = "alice") -> dict[str, Any]:
    return new_lock(principal, scope="shared")


def test_shared_locks_on_one_resource_stop_at_the_bound(backend: Backend) -> None:
    clock = Clock()
    locks = locks_of(backend.open(), LockBounds(per_resource=4, per_account=100), clock)
    tokens = [locks.create("/files/a", shared_lock())["token"] for _ in range(4)]
    with pytest.raises(StateLimitExceeded) as exc:
        locks.create("/files/a", shared_lock("bob"))
    assert exc.value.value == 507 and exc.value.reason == "too_many_locks"
    assert locks.create("/files/b", shared_lock())["token"], "another resource is not affected"
    assert locks.delete(tokens[0])
    tokens[0] = locks.create("/files/a", shared_lock("bob"))["token"]  # a freed place can be taken
    clock.now += 601  # the locks expire (timeout 600): they count no more
    assert len({locks.create("/files/a", shared_lock())["token"] for _ in range(4)}) == 4
    with pytest.raises(DAVError) as conflict:
        locks.create("/files/a", new_lock("carol"))
    assert conflict.value.value == HTTP_LOCKED, "a conflict is still a conflict, not a bound"


def test_locks_of_one_account_stop_at_the_bound(backend: Backend) -> None:
    clock = Clock()
    locks = locks_of(backend.open(), LockBounds(per_resource=100, per_account=5), clock)
    tokens = [locks.create(f"/files/f{i}", new_lock("alice"))["token"] for i in range(5)]
    with pytest.raises(StateLimitExceeded) as exc:
        locks.create("/files/f5", new_lock("alice"))
    assert exc.value.reason == "too_many_account_locks"
    assert locks.create("/files/f5", new_lock("bob"))["token"], "another account is not affected"
    assert locks.delete(tokens.pop())
    tokens.append(locks.create("/files/f6", new_lock("alice"))["token"])
    locks.refresh(tokens[0], timeout=3000)  # one lock kept alive, the others expire
    clock.now += 601
    for i in range(4):
        locks.create(f"/files/g{i}", new_lock("alice"))
    with pytest.raises(StateLimitExceeded):
        locks.create("/files/g4", new_lock("alice"))


def test_the_look_ahead_agrees_with_create(backend: Backend) -> None:
    """check_bounds (asked before WsgiDAV creates a locked empty file) refuses exactly when
    create would, for the resource bound and the account bound."""
    clock = Clock()
    locks = locks_of(backend.open(), LockBounds(per_resource=2, per_account=3), clock)
    assert locks.check_bounds("/files/a", "alice") is None
    for _ in range(2):
        locks.create("/files/a", shared_lock())
    refused = locks.check_bounds("/files/a", "bob")
    assert refused is not None and refused.reason == "too_many_locks" and refused.value == 507
    with pytest.raises(StateLimitExceeded):
        locks.create("/files/a", shared_lock("bob"))
    assert locks.check_bounds("/files/b", "alice") is None
    locks.create("/files/b", shared_lock())
    refused = locks.check_bounds("/files/c", "alice")
    assert refused is not None and refused.reason == "too_many_account_locks"
    assert locks.check_bounds("/files/c", "bob") is None
    clock.now += 601
    assert locks.check_bounds("/files/a", "alice") is None, "expired locks count no more"


def test_racing_lock_requests_get_exactly_the_bound(backend: Backend) -> None:
    stores = [backend.open() for _ in range(8)]
    storages = [locks_of(s, LockBounds(per_resource=3, per_account=1000)) for s in stores]
    barrier = threading.Barrier(len(storages))
    outcomes: list[int] = []

    def attempt(storage: LockStorage) -> None:
        barrier.wait()
        for _ in range(2):
            try:
                storage.create("/files/race", shared_lock())
                outcomes.append(200)
            except DAVError as exc:
                outcomes.append(exc.value)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [200] * 3 + [507] * 13
    assert len(storages[0].get_lock_list("/files/race", include_root=True, include_children=False,
                                         token_only=True)) == 3


def test_redis_lock_bounds_leave_no_keys_behind(redis_url: str, tmp_path: Path) -> None:
    b = Backend("redis", tmp_path, redis_url)
    try:
        store = b.open()
        assert isinstance(store, RedisStore)
        locks = locks_of(store, LockBounds(per_resource=2, per_account=3))
        tokens = [locks.create("/files/a", shared_lock())["token"] for _ in range(2)]
        tokens.append(locks.create("/files/b", shared_lock())["token"])
        with pytest.raises(StateLimitExceeded):
            locks.create("/files/c", shared_lock())
        store.client.delete(f"{store.prefix}dav:lock:{tokens[0]}")  # its key's TTL fired early
        assert locks.get_lock_list("/files/a", include_root=True, include_children=False, token_only=True) == [
            tokens[1]
        ]
        assert locks.create("/files/c", shared_lock())["token"], "the vanished lock no longer counts"
        for token in locks.get_lock_list("/", include_root=True, include_children=True, token_only=True):
            assert locks.delete(token)
        assert redis_keys(store, "dav:") == []
    finally:
        b.close()


# --- live: the attacker's requests ---------------------------------------------------------------


WIN32 = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" '
    b'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    b"<Z:Win32CreationTime>Sun, 29 Nov 2026 21:00:00 GMT</Z:Win32CreationTime>"
    b"<Z:Win32LastAccessTime>Sun, 29 Nov 2026 21:00:01 GMT</Z:Win32LastAccessTime>"
    b"<Z:Win32LastModifiedTime>Sun, 29 Nov 2026 21:00:02 GMT</Z:Win32LastModifiedTime>"
    b"<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
    b"</D:prop></D:set></D:propertyupdate>"
)
SHARED_LOCK = (
    b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:shared/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>attacker</D:owner></D:lockinfo>"
)
EXCLUSIVE_LOCK = SHARED_LOCK.replace(b"<D:shared/>", b"<D:exclusive/>")
XML = {"Content-Type": "application/xml; charset=utf-8"}


def proppatch_body(props: list[tuple[str, str]]) -> bytes:
    sets = "".join(f"<Z:{name}>{value}</Z:{name}>" for name, value in props)
    return ('<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:attack">'
            f"<D:set><D:prop>{sets}</D:prop></D:set></D:propertyupdate>").encode()


def statuses(r: requests.Response) -> dict[str, int]:
    """Property (Clark name) -> the status its propstat gives, from a 207. (The reason phrase
    is not looked at here: test_field_cases.py checks the phrases.)"""
    assert r.status_code == 207, (r.status_code, r.text[:300])
    out = {}
    for propstat in ET.fromstring(r.content).iter("{DAV:}propstat"):  # noqa: S314 - our own server
        status = propstat.findtext("{DAV:}status") or ""
        for prop in propstat.find("{DAV:}prop") or []:
            out[prop.tag] = int(status.split(" ")[1])
    return out


def state_bytes(inst: Instance, redis: RedisStore | None) -> int:
    """What the dead properties and locks take: the SQLite file and its WAL, or the bytes
    Redis holds under the instance's prefix for them."""
    if redis is None:
        db = inst.home.root / "state" / "state.db"
        with sqlite3.connect(db) as conn:  # the WAL's pages into the file: what stays
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return sum(f.stat().st_size for f in db.parent.glob("state.db*"))
    total = 0
    for key in redis.client.scan_iter(match=redis.prefix + "dav:*"):
        total += int(redis.client.memory_usage(key) or 0)
    return total


def audit_reasons(inst: Instance, method: str) -> list[str | None]:
    time.sleep(0.2)  # the line is written once the answer is out
    lines = (inst.home.root / "state" / "audit.log").read_text().splitlines()
    return [rec.get("reason") for rec in map(json.loads, lines) if rec.get("method") == method]


@pytest.fixture(params=["sqlite", "redis"])
def live(request: pytest.FixtureRequest, inst: Instance) -> Iterator[tuple[Instance, RedisStore | None]]:
    """The instance, on SQLite or on a real redis-server (its own prefix)."""
    redis: RedisStore | None = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        raw = yaml.safe_load(inst.home.config_file.read_text())
        prefix = f"test-{uuid.uuid4().hex}:"
        raw["state"] = {"backend": "redis", "url": url, "prefix": prefix}
        inst.home.config_file.write_text(yaml.safe_dump(raw))
        redis = RedisStore(url, prefix=prefix)
    try:
        yield inst, redis
    finally:
        if redis is not None:
            keys = list(redis.client.scan_iter(match=redis.prefix + "*"))
            if keys:
                redis.client.delete(*keys)
            redis.close()


#: What the issue's attack may leave in the state, at most (before: 38 MiB and more).
GROWTH_BOUND = 1 << 20


def test_the_issues_property_attacks_are_refused_and_store_nothing(live: tuple[Instance, RedisStore | None]) -> None:
    inst, redis = live
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        base = f"{srv.url}files/"
        for i in range(40):
            assert alice.put(f"{base}f{i}.txt", data=b"x").status_code in (201, 204)
        before = state_bytes(inst, redis)

        # one PROPPATCH with a 1,000,000-byte value
        r = alice.request("PROPPATCH", base + "f0.txt", data=proppatch_body([("v", "a" * 1_000_000)]), headers=XML)
        assert statuses(r) == {"{urn:attack}v": 507}
        assert b"at most 65536" in r.content and b"DAVErrorCondition" not in r.content
        assert audit_reasons(inst, "PROPPATCH")[-1] == "property_too_large"

        # one PROPPATCH with 20,000 properties: 256 would fit, none is stored
        r = alice.request("PROPPATCH", base + "f1.txt", data=proppatch_body([(f"p{i}", "") for i in range(20000)]),
                          headers=XML)
        got = statuses(r)
        assert len(got) == 20000
        assert sorted(set(got.values())) == [424, 507]
        assert sum(s == 507 for s in got.values()) == 20000 - 256
        assert len(r.content) < 1 << 20, "the 207 repeats no explanation 20,000 times"
        assert r.content.count(b"at most 256 properties") == 1 and b"DAVErrorCondition" not in r.content
        assert audit_reasons(inst, "PROPPATCH")[-1] == "too_many_properties"

        # 40 × 1 MB
        started = time.monotonic()
        for i in range(40):
            r = alice.request("PROPPATCH", f"{base}f{i}.txt", data=proppatch_body([("v", "b" * 1_000_000)]),
                              headers=XML)
            assert statuses(r) == {"{urn:attack}v": 507}
        assert time.monotonic() - started < 60

        growth = state_bytes(inst, redis) - before
        assert growth < GROWTH_BOUND, f"state grew by {growth} bytes"
        if redis is not None:
            assert redis_keys(redis, "dav:props") == []

        # and a 150-byte PROPFIND stays small
        r = alice.request("PROPFIND", base, headers={"Depth": "1"})
        assert r.status_code == 207
        assert len(r.content) < 64 << 10
        assert b"urn:attack" not in r.content


@pytest.mark.parametrize(
    ("setting", "value", "refused", "fits", "reason"),
    [
        # 2,000 bytes of content make a 2,030-byte value (the element's tag and namespace)
        ("max_value_bytes", 2048, [("v", "x" * 2100)], [("v", "x" * 2000)], "property_too_large"),
        ("max_per_resource", 3, [("a", ""), ("b", ""), ("c", ""), ("d", "")], [("a", ""), ("b", ""), ("c", "")],
         "too_many_properties"),
        ("max_bytes_per_resource", 8192, [("a", "x" * 3000), ("b", "x" * 3000), ("c", "x" * 3000)],
         [("a", "x" * 3000), ("b", "x" * 3000)], "property_bytes_exceeded"),
    ],
)
def test_each_property_setting_is_the_bound_the_server_enforces(
    inst: Instance, setting: str, value: int, refused: list[tuple[str, str]], fits: list[tuple[str, str]],
    reason: str,
) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["properties"] = {setting: value}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/p.txt"
        alice.put(url, data=b"x")
        got = statuses(alice.request("PROPPATCH", url, data=proppatch_body(refused), headers=XML))
        assert sorted(got.values()) == [424] * (len(refused) - 1) + [507], got
        assert audit_reasons(inst, "PROPPATCH")[-1] == reason
        got = statuses(alice.request("PROPPATCH", url, data=proppatch_body(fits), headers=XML))
        assert set(got.values()) == {200}, got


def test_windows_properties_are_still_stored(live: tuple[Instance, RedisStore | None]) -> None:
    """The twin: Windows' Win32* PROPPATCH after every upload, a few hundred bytes."""
    inst, _ = live
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/report.docx"
        assert alice.put(url, data=b"x" * 4096).status_code in (201, 204)
        r = alice.request("PROPPATCH", url, data=WIN32, headers=XML)
        assert set(statuses(r).values()) == {200}
        assert audit_reasons(inst, "PROPPATCH")[-1] in (None, "ok")
        # several KB of ordinary properties on one file (Office, Finder tags …)
        props = [(f"meta{i}", "m" * 2000) for i in range(8)]
        r = alice.request("PROPPATCH", url, data=proppatch_body(props), headers=XML)
        assert set(statuses(r).values()) == {200}
        r = alice.request("PROPFIND", url, headers={"Depth": "0"})
        assert r.status_code == 207
        assert b"Win32FileAttributes" in r.content and r.content.count(b"m" * 2000) == 8


def test_600_shared_locks_stop_at_the_bound(live: tuple[Instance, RedisStore | None]) -> None:
    inst, redis = live
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        url = f"{srv.url}files/shared.txt"
        alice.put(url, data=b"x")
        before = state_bytes(inst, redis)
        codes: list[int] = []
        times: list[float] = []
        for _ in range(600):
            started = time.monotonic()
            r = alice.request("LOCK", url, data=SHARED_LOCK, headers={**XML, "Depth": "0"})
            times.append(time.monotonic() - started)
            codes.append(r.status_code)
        assert codes == [200] * 64 + [507] * 536
        assert b"too-many-locks" in r.content
        assert audit_reasons(inst, "LOCK")[-1] == "too_many_locks"
        assert state_bytes(inst, redis) - before < GROWTH_BOUND
        # the last LOCKs cost what the first ones did (before: 23 ms growing to 93 ms)
        first, last = sorted(times[:50])[25], sorted(times[-50:])[25]
        assert last < max(3 * first, 0.05), (first, last)
        r = alice.request("PROPFIND", url, headers={"Depth": "0"})
        assert r.status_code == 207 and len(r.content) < 128 << 10


def test_a_normal_lock_and_unlock_still_work(live: tuple[Instance, RedisStore | None]) -> None:
    inst, _ = live
    with running(inst) as srv:
        alice, bob = session_for(inst, "alice"), session_for(inst, "bob")
        url = f"{srv.url}files/doc.txt"
        alice.put(url, data=b"v1")
        for _ in range(3):
            r = alice.request("LOCK", url, data=EXCLUSIVE_LOCK, headers={**XML, "Depth": "0"})
            assert r.status_code == 200, r.text
            token = r.headers["Lock-Token"]
            assert alice.put(url, data=b"v2", headers={"If": f"({token})"}).status_code in (200, 204)
            assert bob.request("LOCK", url, data=EXCLUSIVE_LOCK, headers={**XML, "Depth": "0"}).status_code == 423
            assert alice.request("UNLOCK", url, headers={"Lock-Token": token}).status_code == 204


def test_locks_per_account_are_bounded(live: tuple[Instance, RedisStore | None]) -> None:
    inst, _ = live
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["locks"] = {"max_per_account": 5}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    with running(inst) as srv:
        alice, bob = session_for(inst, "alice"), session_for(inst, "bob")
        for i in range(6):
            r = alice.request("LOCK", f"{srv.url}files/l{i}.txt", data=EXCLUSIVE_LOCK, headers={**XML, "Depth": "0"})
            assert r.status_code == (507 if i == 5 else 201), (i, r.status_code)
        assert audit_reasons(inst, "LOCK")[-1] == "too_many_account_locks"
        assert b"too-many-account-locks" in r.content
        assert not (inst.home.root / "data/files/l5.txt").exists(), "a refused LOCK creates no file"
        r = bob.request("LOCK", f"{srv.url}files/l5.txt", data=EXCLUSIVE_LOCK, headers={**XML, "Depth": "0"})
        assert r.status_code in (200, 201), "another account still locks"


ALLPROP = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
PROPNAME = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
NAMED = (b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:attack">'
         b"<D:prop><D:getcontentlength/><Z:small/></D:prop></D:propfind>")


def test_a_propfind_answer_over_the_bound_is_refused_on_both_paths(live: tuple[Instance, RedisStore | None]) -> None:
    inst, _ = live
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["properties"] = {"max_propfind_bytes": 65536}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    with running(inst) as srv:
        alice = session_for(inst, "alice")
        folder = f"{srv.url}files/big/"
        assert alice.request("MKCOL", folder).status_code == 201
        for i in range(4):  # 4 × 20 KB of dead properties: more than 64 KiB in one Depth 1 answer
            alice.put(f"{folder}f{i}", data=b"x")
            body = proppatch_body([("blob", "q" * 20000), ("small", "s")])
            assert set(statuses(alice.request("PROPPATCH", f"{folder}f{i}", data=body, headers=XML)).values()) == {
                200}

        def propfind(url: str, body: bytes | None, depth: str = "1", **headers: str) -> requests.Response:
            return alice.request("PROPFIND", url, data=body, headers={**XML, "Depth": depth, **headers})

        # the short path (no lock in the way): allprop with and without a body
        for request_body in (None, ALLPROP):
            r = propfind(folder, request_body)
            assert r.status_code == 507, r.status_code
            assert b"answer-too-large" in r.content
            assert audit_reasons(inst, "PROPFIND")[-1] == "answer_too_large"
        # twins: what the answer would carry is small
        assert propfind(folder, NAMED).status_code == 207
        assert propfind(folder, PROPNAME).status_code == 207  # names only (WsgiDAV's path)
        assert propfind(f"{folder}f0", ALLPROP, depth="0").status_code == 207
        assert propfind(folder, ALLPROP, depth="0").status_code == 207

        # WsgiDAV's path: a lock in the folder makes the short path hand allprop over
        r = alice.request("LOCK", f"{folder}f0", data=EXCLUSIVE_LOCK, headers={**XML, "Depth": "0"})
        assert r.status_code == 200
        r = propfind(folder, ALLPROP)
        assert r.status_code == 507 and b"answer-too-large" in r.content
        assert audit_reasons(inst, "PROPFIND")[-1] == "answer_too_large"
        r = propfind(folder, NAMED)
        assert r.status_code == 207
        for name in ("f1", "f2"):  # the bound counts the whole answer (tests/test_answer_bounds.py)
            alice.request("PROPPATCH", f"{folder}{name}", data=proppatch_body([]).replace(
                b"<D:set><D:prop></D:prop></D:set>", b"<D:remove><D:prop><Z:blob/></D:prop></D:remove>"), headers=XML)
        r = propfind(folder, ALLPROP)
        assert r.status_code == 207, "two values removed: 45 KB fits"
        assert b"activelock" in r.content, "WsgiDAV rendered it (the lock is shown)"
