"""Runtime state the server learns (OTP steps used, grants, failure counters,
sign-in lockouts, WebDAV locks), behind one small interface: SQLite embedded by
default, Redis when several server nodes must agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Grant, StateStore, StoreUnavailable
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from ..config import StateConfig

__all__ = ["Grant", "SQLiteStore", "StateStore", "StoreUnavailable", "open_store", "unavailable_at_start"]


def open_store(state: StateConfig) -> StateStore:
    """The configured backend; Redis is imported only when used."""
    if state.backend == "redis":
        from .redis import RedisStore

        assert state.url is not None
        password = state.password_file.read_text().strip() if state.password_file else None
        return RedisStore(state.url, prefix=state.prefix, password=password, sentinels=state.sentinels,
                          service=state.sentinel_service, wait_replicas=state.wait_replicas,
                          wait_seconds=state.wait_seconds)
    assert state.path is not None
    return SQLiteStore(state.path, busy_timeout=state.busy_timeout_seconds)


def unavailable_at_start(state: StateConfig, exc: StoreUnavailable) -> str:
    """The one line a server that cannot reach its store at start ends with: the setting
    to look at (``state.sentinels`` with Sentinel, else ``state.url``), what failed (the
    store's message names the sentinels asked; never the password) and what to do."""
    if state.sentinels:
        return (f"state.sentinels: {exc} (start the sentinels and Redis, or fix state.sentinels and "
                "state.sentinel_service)")
    return f"state.url: {exc} (start Redis or fix the URL)"
