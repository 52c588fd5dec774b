"""What the state file's pre-create (store/sqlite.py ``_private_file``) does with names
another user planted in the state folder: it must not change files elsewhere, and must
not hang where SQLite alone would have answered with an error."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from davserver.store.sqlite import SQLiteStore


def test_a_wal_symlink_does_not_chmod_its_target(tmp_path: Path) -> None:
    """``state.db-wal`` planted as a symlink to a file outside the folder: opening the
    store must not change that file's mode (os.chmod follows the link: it became 0600)."""
    folder, outside = tmp_path / "state", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    victim = outside / "page.html"
    victim.write_text("public\n")
    victim.chmod(0o644)
    (folder / "state.db-wal").symlink_to(victim)
    with contextlib.suppress(OSError, sqlite3.Error):  # refusing to open is fine; touching the file elsewhere is not
        SQLiteStore(folder / "state.db").close()
    assert victim.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_at_the_state_path_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A FIFO at the state path: SQLite alone fails at once ("disk I/O error"); the
    pre-create's O_RDONLY open blocks until a writer comes, so start (and every CLI
    command that opens the store) hangs for ever."""
    path = tmp_path / "state.db"
    os.mkfifo(path)
    code = ("import sys; from pathlib import Path; from davserver.store.sqlite import SQLiteStore\n"
            "try:\n    SQLiteStore(Path(sys.argv[1])).close()\nexcept Exception:\n    pass\n")
    try:
        subprocess.run([sys.executable, "-c", code, str(path)], timeout=10, check=False, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("opening a state path that is a FIFO hangs")
