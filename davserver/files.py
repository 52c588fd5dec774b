"""Whole files the server and the CLI keep (the config, accounts, keys, certificates, the
CRL): written atomically, and watched for changes.

:func:`write_atomic` is the one way such a file is written: readers (and a crash) see the
old bytes or the new, never half of them, and a secret is never readable by others, not
even while it is written. Uploads to a share (fs.py ``AtomicFile``) stream instead of
writing bytes at once and hold a lock on their temp file, but commit the same way and
use :func:`fsync_dir` from here.

:class:`FileWatch` is the one way a file is watched: a :class:`FileStamp` (inode, size,
mtime and ctime in nanoseconds) taken at each look, so an edit within the same second that
keeps the size (ctime moves) and a replace by rename (a new inode) are both seen. Watchers
look as often as they did before (accounts.py and revocation.py on every request,
server_certificate.py every ``tls.reload_seconds``, renewal.py when a renewal is due).

This module imports nothing of davserver, so any module may use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileStamp", "FileWatch", "file_stamp", "fsync_dir", "write_atomic"]


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new name in ``folder`` durable (POSIX leaves that to an fsync of
    the folder). Never raises: a folder that cannot be opened or fsynced (some filesystems
    refuse) leaves the rename done but not forced to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, folder_mode: int = 0o777) -> None:
    """Replace ``path`` with ``data`` so that readers see the old content or the new,
    never half of it, and a crash at any point leaves one or the other.

    A temp file ``.<name>.<random>.tmp`` in the same folder is created exclusively with
    mode 0600 (so a secret is never readable by others while it is written, whatever the
    umask), written, given exactly ``mode``, fsynced, renamed over ``path`` and the folder
    fsynced (:func:`fsync_dir`). A missing folder is created with ``folder_mode`` (the
    umask applies, as for ``Path.mkdir``). Raises OSError (the temp file is then removed
    and ``path`` untouched).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=folder_mode)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)  # exact: os.open's mode went through the umask
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class FileStamp:
    """What tells one version of a file from another without reading it: ``ino`` (a
    replace by rename), ``size`` in bytes, ``mtime_ns`` and ``ctime_ns`` (nanoseconds
    since the epoch; ctime moves on every write, also one whose mtime is set back)."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_stamp(path: str | os.PathLike[str]) -> FileStamp | None:
    """The :class:`FileStamp` of ``path`` (symlinks followed: certbot's ``live/`` links
    point to a new ``archive/`` file), or None when it cannot be stat'ed (missing,
    unreadable folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileWatch:
    """Whether one file changed since the last look.

    ``seen`` is the stamp of the version in use (None: missing, or not looked at yet);
    :meth:`look` stats the file now. A watcher reloads when ``look()`` says changed and
    then sets ``seen`` to the stamp it looked at, also when the reload failed (so a broken
    file is reported once, not on every look), under its own lock. Not thread-safe by
    itself: ``seen`` is a plain attribute.
    """

    def __init__(self, path: Path, *, seen: FileStamp | None = None) -> None:
        self.path = path
        self.seen = seen

    def look(self) -> tuple[bool, FileStamp | None]:
        """``(changed, stamp)``: the stamp now and whether it differs from ``seen``."""
        stamp = file_stamp(self.path)
        return stamp != self.seen, stamp
