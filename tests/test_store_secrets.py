"""The state-store contract for shared secrets (StateStore.shared_secret), both backends.

Keys that a request may meet in another process than the one that used them first (the
CSRF tokens' HMAC key, the failure digests' key) come from the store: made once, by
whichever process or node asks first, and the same bytes for every later caller. Raced
from spawned PROCESSES (fresh interpreters sharing nothing but the store), released
together by a barrier, many rounds: exactly one value per name. A store that cannot be
reached raises StoreUnavailable, never a key of one process.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from davserver.auth.core import FAILURE_KEY_NAME, Authenticator
from davserver.config import IdentityConfig
from davserver.guard import CSRF_KEY_NAME
from davserver.store import SQLiteStore, StateStore, StoreUnavailable
from davserver.store.base import MIN_SECRET_BYTES
from davserver.store.redis import RedisStore

from .conftest import free_port
from .racing import WAIT, run_spawned

PROCESSES = 4
ROUNDS = 15


@pytest.fixture(params=["sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """(backend, location, prefix): what a process needs to open the same store itself."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}:"
    return "sqlite", str(tmp_path / "state" / "state.db"), ""


def open_at(backend: str, location: str, prefix: str) -> StateStore:
    if backend == "redis":
        return RedisStore(location, prefix=prefix)
    return SQLiteStore(Path(location))


@pytest.fixture
def store(where: tuple[str, str, str]) -> Iterator[StateStore]:
    s = open_at(*where)
    yield s
    s.close()


def test_one_name_one_value_for_every_caller_and_opening(store: StateStore, where: tuple[str, str, str]) -> None:
    first = store.shared_secret("csrf")
    assert len(first) == 32 and first != bytes(32)
    assert store.shared_secret("csrf") == first
    other = open_at(*where)  # another connection, as another process or node has
    try:
        assert other.shared_secret("csrf") == first
        # twin: another name is another secret, of the size asked for
        assert other.shared_secret("failure-digest") not in (first, b"")
        assert len(store.shared_secret("long", 64)) == 64
    finally:
        other.close()


def test_bad_names_sizes_and_a_stored_size_mismatch_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="needs a name"):
        store.shared_secret("")
    with pytest.raises(ValueError, match="too short"):
        store.shared_secret("short", MIN_SECRET_BYTES - 1)
    assert len(store.shared_secret("exact", MIN_SECRET_BYTES)) == MIN_SECRET_BYTES  # twin: the bound itself
    with pytest.raises(ValueError, match="one name, one size"):
        store.shared_secret("exact", 32)
    assert len(store.shared_secret("exact", MIN_SECRET_BYTES)) == MIN_SECRET_BYTES  # unchanged by the refusal


def _racer(where: tuple[str, str, str], rounds: int, barrier: Any, results: Any) -> None:
    """A spawned process: opens the store itself, then per round waits at the barrier and
    asks for that round's secret, which nobody has made yet."""
    store = open_at(*where)
    try:
        for r in range(rounds):
            barrier.wait(WAIT)
            try:
                results.put((r, store.shared_secret(f"race-{r}").hex()))
            except Exception as exc:  # noqa: BLE001 - reported, asserted by the parent
                results.put((r, f"error: {type(exc).__name__}: {exc}"))
    finally:
        store.close()


def test_processes_making_a_secret_at_once_all_get_one_value(where: tuple[str, str, str]) -> None:
    if where[0] == "sqlite":
        SQLiteStore(Path(where[1])).close()  # the file exists; its first opening is raced elsewhere
    seen: dict[int, set[str]] = {r: set() for r in range(ROUNDS)}
    for r, value in run_spawned(_racer, [(where, ROUNDS)] * PROCESSES, ROUNDS * PROCESSES):
        seen[r].add(value)
    assert all(len(values) == 1 and not next(iter(values)).startswith("error") for values in seen.values()), seen
    store = open_at(*where)
    try:  # the value they agreed on is the one kept; every round made its own
        assert {store.shared_secret(f"race-{r}").hex() for r in range(ROUNDS)} == set().union(*seen.values())
        assert len(set().union(*seen.values())) == ROUNDS
    finally:
        store.close()


def test_an_unreachable_redis_raises_store_unavailable_and_no_key_is_made() -> None:
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="dead:")
    try:
        with pytest.raises(StoreUnavailable):
            dead.shared_secret(CSRF_KEY_NAME)
        # the authenticator keys its failure digests from the store: no store, no start
        with pytest.raises(StoreUnavailable):
            Authenticator(IdentityConfig(), cache_seconds=1, store=dead)
    finally:
        dead.close()


def test_a_locked_sqlite_file_raises_store_unavailable_and_then_answers(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            store.shared_secret(FAILURE_KEY_NAME)
        holder.execute("ROLLBACK")
        key = store.shared_secret(FAILURE_KEY_NAME)  # twin: once free, the key is made
        assert len(key) == 32 and store.shared_secret(FAILURE_KEY_NAME) == key
    finally:
        holder.close()
        store.close()

