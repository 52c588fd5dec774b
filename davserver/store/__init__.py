"""Runtime state the server learns (OTP steps used, grants, failure counters,
locks), behind one small interface so a shared backend can replace the
embedded SQLite one without touching the auth core."""

from .base import Grant, StateStore
from .sqlite import SQLiteStore

__all__ = ["Grant", "SQLiteStore", "StateStore", "open_store"]


def open_store(path: "str | object") -> StateStore:
    from pathlib import Path

    return SQLiteStore(Path(str(path)))
