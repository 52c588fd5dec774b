"""The filesystem behind each share: WsgiDAV's FilesystemProvider made safe to write to.

WsgiDAV 4.4 writes a PUT straight over the target (`open(path, "wb")`), so an
aborted or failed upload destroys the old file and is still answered 2xx; COPY
writes the destination in place with `shutil.copy2`; ETags use whole-second
mtimes; and its error pages carry absolute server paths. Here:

* a PUT or COPY writes a hidden temp file (`.davserver-upload-*`) in the target's
  folder and renames it over the target only when every byte arrived and is on
  disk, so readers see the old file or the new one, never a mix or a half; a new
  file appears only once complete, and COPY onto a file replaces it in one step;
* a body shorter than its Content-Length, a full disk (507) or a file size limit
  (413) leave the old file byte-for-byte intact and no temp file behind;
* temp files never show: not listed, 404 by name, refused as a write target;
* ETags use the nanosecond mtime, size and inode, so two writes in one second differ;
* a PUT's X-OC-Mtime is set on the temp file before the rename (so the answer's ETag
  is the new file's), and its SHA-1 and MD5 are computed as it is written and kept
  with the file (oc_compat.py: ownCloud's oc:checksums, what rclone's owncloud vendor
  needs to sync same-size edits);
* nothing resolves outside the share root (symlinks are never followed, and a
  request routed to a share other than the one the guard authorised is refused),
  and no error page names a server path;
* names: a new name with a control character is refused (400, ``bad_name``);
  names already on disk are listed safely, and names that are not UTF-8 are
  hidden (the rules are in names.py);
* a share root cannot be replaced, deleted, moved, or copied into itself (PUT
  405, the others 403, ``share_root``/``dest_share_root``): WsgiDAV asks for the
  parent of the root there and failed with a 500;
* trees are bounded by ``limits.max_tree_depth`` levels below the share root:
  nothing is created deeper (PUT, MKCOL, LOCK, COPY, MOVE), and COPY, MOVE and
  DELETE of a folder whose tree reaches deeper are refused (403, ``tree_depth``)
  before WsgiDAV walks it — its walk (dav_provider.py:467 ``get_descendants``),
  ``shutil.rmtree``/``copytree`` and Python 3.11's ``os.walk`` recurse once per
  level and a 1,100-level tree made on disk ended in a RecursionError (500). The
  depth is measured here with an explicit stack, never by recursion.
* Unicode normalisation: a name is found in any canonical form (NFC, NFD). macOS
  asks for ``cafe\u0301.txt`` (NFD) where Windows and Linux created ``caf\u00e9.txt``
  (NFC); when the exact name is missing, the folder's one member whose NFC equals
  the request's NFC is used (one scandir of that folder, only on a miss of a
  non-ASCII name; an exact hit costs one lstat per component as before). A
  request path is rewritten to the names on disk before WsgiDAV or the short
  paths see it, so hrefs, locks and dead properties use the on-disk form. Names
  stay on disk as they were created; a new name that differs from an existing
  one only by normalisation (possible only where two such twins already exist
  on disk, so the request matches neither) is refused (409, ``name_collision``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    DAVError,
    PRECONDITION_CODE_ProtectedProperty,
)

from .access import Refusal
from .conditions import PreconditionServer, entity_tag
from .config import ShareConfig
from .copymove import copy_or_move
from .fastpath import check_propfind, fast_get, fast_propfind
from .files import fsync_dir
from .framing import BadContentLength, content_length
from .hrefs import quote_href
from .names import display_name, refused_name
from .oc_compat import (
    CHECKSUMS,
    LASTMODIFIED,
    Digests,
    agrees,
    checksums_element,
    parse_seconds,
    read_expected,
    read_mtime,
    set_mtime,
    store_checksums,
    stored_checksums,
)
from .ranges import normalise_range
from .request_context import request_context
from .settings_schema import setting
from .sharefs import TEMP_PREFIX, dav_error, etag, is_hidden, is_temp_name, served_kind
from .upstream import DAVNonCollection, FileResource, FilesystemProvider, FolderResource

__all__ = ["DEFAULT_MAX_TREE_DEPTH", "TEMP_PREFIX", "AtomicFile", "ShareProvider", "is_temp_name", "sweep_temp_files",
           "tree_height_exceeds"]

log = logging.getLogger("davserver.fs")

_BLOCK = 1 << 16
#: The guard records here which share it authorised the request for.
_REALM_KEY = "wsgidav.auth.realm"
#: Folder scans of one request (:meth:`ShareProvider._resolve`): (folder, name) -> its twins.
_TWINS_KEY = "davserver.twins"


# --- errors (the errno -> status rules are sharefs.py's) ----------------------------


def _refuse(environ: dict[str, Any], reason: Refusal, status: int, text: str,
            headers: list[tuple[str, str]] | None = None) -> DAVError:
    """A refusal with its audit reason (``RequestContext.refusal``, read by the guard's audit line)."""
    request_context(environ).refuse(str(reason))
    return DAVError(status, text, add_headers=headers)


def _check_new_name(environ: dict[str, Any], name: str) -> None:
    """Raise 400 ``bad_name`` for a name that may not be created (names.py)."""
    problem = refused_name(name)
    if problem is not None:
        log.info("refused to create a name with a forbidden character: %r", name)
        raise _refuse(environ, Refusal.BAD_NAME, HTTP_BAD_REQUEST, problem)


def _twins(folder: str, name: str) -> tuple[str, ...]:
    """The members of ``folder`` other than ``name`` whose NFC form equals ``name``'s (one
    scandir). Temp files and names that are not listed (names.py) never count."""
    want = unicodedata.normalize("NFC", name)
    try:
        with os.scandir(folder) as entries:
            return tuple(e.name for e in entries if e.name != name and not is_hidden(e.name, hide_clutter=False)
                         and unicodedata.normalize("NFC", e.name) == want)
    except (OSError, ValueError):
        return ()


# --- tree depth -------------------------------------------------------------------


def _depth(path: str) -> int:
    """Levels below the share root: ``/`` is 0, ``/a`` and ``/a/`` are 1, ``/a/b`` is 2."""
    return sum(1 for part in path.split("/") if part)


def tree_height_exceeds(folder: str, budget: int) -> bool:
    """True when anything under the folder ``folder`` lies more than ``budget`` levels below it.

    A member of ``folder`` is 1 level below it. Walks with an explicit stack (one
    ``scandir`` per folder, symlinks not followed) and stops at the first entry
    past the budget, so it never recurses and stops early on a deep tree. A path
    too long for the system (ENAMETOOLONG) counts as too deep: WsgiDAV could not
    walk it either. Other errors (a folder removed meanwhile, no permission) skip
    that folder.
    """
    if budget < 0:
        return True
    stack = [(folder, 0)]
    while stack:
        path, level = stack.pop()
        try:
            entries = os.scandir(path)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return True
            continue
        with entries:
            for entry in entries:
                if level + 1 > budget:
                    return True
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, level + 1))
                except OSError:
                    continue
    return False


def _incomplete_body(received: int, expected: int | None) -> DAVError:
    log.info("PUT body incomplete: %d of %s bytes", received, expected if expected is not None else "?")
    return DAVError(HTTP_BAD_REQUEST, "The request body ended early; the file was not changed.")


# --- atomic replacement -----------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it (os.umask() would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class AtomicFile:
    """A file written beside `target` and renamed over it on a successful `close()`.

    Until then the target is untouched. `abort()` (or any failure) removes the temp
    file. `expected_size`, when given, must equal the bytes written. `like` copies
    mode and times from another file (COPY); otherwise the new file gets the old
    file's mode and owner, or the mode of a freshly created file. `mtime` (whole Unix
    seconds, a PUT's X-OC-Mtime) is set before the rename, so the file appears with
    it. `digests` (oc_compat.py) sees every byte written: a body whose digest is not
    the client's OC-Checksum is refused (400, target untouched), and with
    ``digests.keep`` the checksums are stored on the file, stamped after its times are
    set. `environ` is the request's, to record a refusal's audit reason and an
    accepted mtime (``RequestContext.mtime_accepted``).
    """

    def __init__(self, target: str, *, expected_size: int | None = None, like: os.stat_result | None = None,
                 mtime: int | None = None, digests: Digests | None = None,
                 environ: dict[str, Any] | None = None) -> None:
        self.target = target
        self.folder = os.path.dirname(target)
        self.expected_size = expected_size
        self.like = like
        self.mtime = mtime
        self.digests = digests
        self.environ = environ
        self.written = 0
        self._done = False
        try:
            fd, self.temp_path = _locked_temp_file(self.folder)
        except OSError as exc:
            self._done = True
            raise dav_error(exc, "creating an upload file", environ, creating=True) from None
        self._file = os.fdopen(fd, "wb", buffering=_BLOCK)

    # A file-like object for WsgiDAV's do_PUT, which calls writelines() and then close().

    def write(self, data: bytes) -> int:
        """Append ``data`` to the temp file (buffered), feed it to ``digests`` and count it in
        ``written`` (bytes); returns ``len(data)``. On an OSError the upload is aborted (temp
        file removed, target untouched) and a DAVError raised with the errno's status
        (sharefs.os_error_status: ENOSPC/EDQUOT 507, EFBIG 413, EACCES 403 …)."""
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise dav_error(exc, f"writing {self.target}", self.environ, creating=True) from None
        if self.digests is not None:
            self.digests.update(data)
        self.written += len(data)
        return len(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        """Write every chunk; a body that breaks off (reset, timeout, bad chunking) is a 400."""
        it = iter(chunks)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                return
            except DAVError:
                self.abort()
                raise
            except Exception as exc:
                self.abort()
                log.info("PUT body broke off after %d bytes: %r", self.written, exc)
                raise _incomplete_body(self.written, self.expected_size) from None
            # A refused write (507, 413) leaves the rest of the body unread: the connection
            # layer closes after the answer and drops the rest off the workers (http1.py).
            self.write(chunk)

    def close(self) -> None:
        """Commit: check the length, flush, fsync, rename over the target, fsync the folder."""
        if self._done:
            return
        if self.expected_size is not None and self.written != self.expected_size:
            self.abort()
            raise _incomplete_body(self.written, self.expected_size)
        if self.digests is not None:
            try:
                self.digests.check(self.environ)
            except DAVError:
                self.abort()
                raise
        try:
            self._file.flush()
            fd = self._file.fileno()
            mode = self._apply_metadata(fd)
            kept_mtime = False
            if self.mtime is not None:
                os.utime(fd, ns=(time.time_ns(), self.mtime * 1_000_000_000))
                # A filesystem clamps times it cannot hold (ext4: after 2446): not "accepted".
                kept_mtime = os.fstat(fd).st_mtime_ns == self.mtime * 1_000_000_000
            if self.digests is not None and self.digests.keep:
                store_checksums(fd, self.digests.value())  # stamped with the times just set
            os.fsync(fd)
            # Renamed while still open, so its lock (:func:`sweep_temp_files`) covers the rename.
            os.replace(self.temp_path, self.target)
            _writing_done(self.temp_path)
            if not mode & stat.S_IWUSR:  # the owner's write bit was kept for the sweep until now
                try:
                    os.fchmod(fd, mode)
                except OSError as exc:  # the data is in place; only the mode is not
                    log.error("could not set the mode of %s to %o: %s", self.target, mode, exc)
            self._file.close()
        except OSError as exc:
            self.abort()
            raise dav_error(exc, f"storing {self.target}", self.environ, creating=True) from None
        self._done = True
        fsync_dir(self.folder)
        if kept_mtime and self.environ is not None:
            request_context(self.environ).mtime_accepted = True

    def abort(self) -> None:
        """Drop the temp file; the target stays as it was."""
        if self._done:
            return
        self._done = True
        try:  # removed before its file is closed: still under its lock
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("could not remove upload file %s: %s", self.temp_path, exc)
        _writing_done(self.temp_path)
        with contextlib.suppress(OSError):
            self._file.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()

    def _apply_metadata(self, fd: int) -> int:
        """Give the temp file its final times, owner and mode; returns the mode (permission
        bits). The owner's write bit stays set until after the rename (:meth:`close` drops
        it then, on the open descriptor): a leftover of this file must stay openable for
        writing by the server's user, which the sweep needs for an exclusive lock on NFS
        (:func:`_remove_if_unlocked`). A crash between the rename and that ``fchmod``
        leaves the new file writable by its owner, who may change its mode anyway."""
        if self.like is not None:
            mode = stat.S_IMODE(self.like.st_mode)
            os.fchmod(fd, mode | stat.S_IWUSR)
            os.utime(fd, ns=(self.like.st_atime_ns, self.like.st_mtime_ns))
            return mode
        try:
            old = os.lstat(self.target)
        except OSError:
            old = None
        if old is not None and stat.S_ISREG(old.st_mode):
            mode = stat.S_IMODE(old.st_mode)
            os.fchmod(fd, mode | stat.S_IWUSR)
            if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):  # not root: the new file keeps our owner
                    os.fchown(fd, old.st_uid, old.st_gid)
            return mode
        mode = 0o666 & ~_umask()
        os.fchmod(fd, mode | stat.S_IWUSR)
        return mode


def _atomic_copy(src: str, dest: str, *, checksums: bool = False, environ: dict[str, Any] | None = None) -> None:
    """Copy file data and mode/times (like shutil.copy2) via a temp file, so no half target is left.

    With ``checksums`` the copy's own checksums are computed as it is written and kept
    (oc_compat.py): the copy is a new inode, the source's stamp does not describe it.
    ``environ`` is the request's: its method decides the status of a failure (sharefs.py)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise dav_error(exc, f"reading {src}", environ, creating=False) from None
    with os.fdopen(fd, "rb") as source:
        try:
            like = os.fstat(fd)
        except OSError as exc:
            raise dav_error(exc, f"reading {src}", environ, creating=False) from None
        digests = Digests(keep=True, expected=None) if checksums else None
        out = AtomicFile(dest, expected_size=like.st_size, like=like, digests=digests, environ=environ)
        try:
            while True:
                block = source.read(1 << 20)
                if not block:
                    break
                out.write(block)
        except OSError as exc:
            out.abort()
            raise dav_error(exc, f"reading {src}", environ, creating=False) from None
        except BaseException:
            out.abort()
            raise
        out.close()


#: Temp files this process is writing (absolute paths). flock() locks belong to an open
#: file, so the sweep's own open conflicts with a writer in the same process too; but
#: where the kernel emulates flock() with fcntl() locks (NFS), locks are per process, and
#: a sweep in the writing process would get its own writer's lock: it checks this set.
_WRITING: set[str] = set()
_WRITING_LOCK = threading.Lock()
#: Attempts at a temp file that is ours and locked before giving up (a sweep in another
#: process can remove a fresh file in the instant between its creation and its lock).
_TEMP_ATTEMPTS = 5


def _writing_done(path: str) -> None:
    with _WRITING_LOCK:
        _WRITING.discard(path)


def _same_file(fd: int, path: str) -> bool:
    """True when `path` still names the open file `fd` (not removed, not replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _locked_temp_file(folder: str) -> tuple[int, str]:
    """Create a temp upload file in `folder` holding an exclusive ``flock`` on it; returns
    ``(fd, path)``. The lock lasts until the file is closed (after its rename or removal,
    :class:`AtomicFile`) or its process dies (the kernel drops it): it is how
    :func:`sweep_temp_files` tells a file in flight from a leftover. Where the filesystem
    cannot lock (``flock`` fails with anything but EWOULDBLOCK) the file is written
    unlocked and the sweep, unable to lock it either, leaves it alone. Raises OSError
    (creating the file; or EEXIST after ``_TEMP_ATTEMPTS`` files a sweep took from under us)."""
    for _ in range(_TEMP_ATTEMPTS):
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a sweep holds it and is removing it: take another name
            continue
        except OSError as exc:
            log.debug("no lock on upload file %s (%s): the sweep will leave it alone", path, exc)
        # Locked, but a sweep may have removed the name between mkstemp and flock.
        if _same_file(fd, path):
            with _WRITING_LOCK:
                _WRITING.add(path)
            return fd, path
        os.close(fd)
    raise OSError(errno.EEXIST, "no upload file could be created and locked", folder)


def _remove_if_unlocked(path: str) -> bool:
    """Remove the temp file `path` if no process holds its lock; True when removed.

    The file is opened write-only (never following a symlink, never truncated or
    created; nothing is written) and locked with ``LOCK_EX|LOCK_NB``. For writing
    because on Linux NFS ``flock`` is emulated with ``fcntl`` locks, and an exclusive
    one needs a descriptor open for writing (flock(2) NOTES; read-only: EBADF, and
    nothing could ever be swept there). :class:`AtomicFile` keeps the owner's write bit
    on a temp file until after its rename, so a leftover is writable by the server's
    user; one that is not (left by an older version) is opened read-only instead, which
    local filesystems lock just the same. Held by a writer (BlockingIOError) it is in
    flight and stays; a lock that cannot be
    taken at all (ENOLCK, EOPNOTSUPP, EINVAL on a filesystem without locks) also leaves it
    (fail safe). Under the lock the name must still be that file (a writer may have
    renamed it over its target between our listing and our open) before it is removed."""
    with _WRITING_LOCK:
        if path in _WRITING:
            return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("leftover upload file %s kept: it cannot be locked here (%s)", path, exc)
            return False
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _same_file(fd, path):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)  # drops the lock


def sweep_temp_files(root: Path, *, older_than: float = 60.0) -> int:
    """Remove temp files left under `root` by interrupted uploads; returns how many.

    Safe at any time, in any process: the process writing a temp file holds an exclusive
    ``flock`` on it from its creation until after its rename or removal
    (:class:`AtomicFile`), and a file is removed only when the sweep can take that lock
    itself, and under it (:func:`_remove_if_unlocked`). A process that dies loses its locks
    (the kernel drops them), so its files become removable at once; a file that cannot be
    locked at all is kept. On Linux NFS (2.6.12 on) ``flock`` is emulated with ``fcntl``
    byte-range locks, which the NFS server sees, so a lock held on another machine also
    keeps the file; a mount whose locks are local only (``local_lock=flock``/``all``,
    ``nolock``) cannot show it: there `older_than` (seconds since the file was last
    written; default 60) is what keeps another machine's upload. On one machine pass 0
    (maintenance.py does, with ``state.backend: sqlite``): the locks alone decide.
    """
    removed = 0
    cutoff = time.time() - older_than
    folders = [str(root)]  # an explicit stack: os.walk recurses per level in Python 3.11
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as found:  # closed even when reading it fails half-way
                entries = list(found)
        except OSError as exc:
            log.warning("could not look for leftover upload files in %s: %s", folder, exc)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                    continue
                if not is_temp_name(entry.name):
                    continue
                st = entry.stat(follow_symlinks=False)
                if (stat.S_ISREG(st.st_mode) and (older_than <= 0 or st.st_mtime < cutoff)
                        and _remove_if_unlocked(entry.path)):
                    removed += 1
            except OSError as exc:
                log.warning("could not remove leftover upload file %s: %s", entry.path, exc)
    if removed:
        log.info("removed %d leftover upload file(s) under %s", removed, root)
    return removed


# --- resources --------------------------------------------------------------------


class _File(FileResource):
    """A regular file: atomic PUT and COPY, nanosecond ETags, no symlink following.

    Length, Last-Modified and ETag all come from one stat. For the target of a GET the
    file is opened first and that stat taken from the open file, so a PUT replacing it
    meanwhile cannot make the body disagree with the headers.
    """

    _upload: AtomicFile | None = None
    _fd: int | None = None

    def __init__(self, path: str, environ: dict[str, Any], file_path: str, *, pin: bool = False) -> None:
        if not pin:
            super().__init__(path, environ, file_path)
            return
        fd = os.open(file_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file")
            DAVNonCollection.__init__(self, path, environ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._file_path = file_path
        self.file_stat = st
        self.name = util.to_str(os.path.basename(file_path))

    def __del__(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def get_etag(self) -> str:
        return etag(self.file_stat)

    def get_property_value(self, name: str) -> Any:
        """``DAV:getetag`` is the entity-tag, quoted exactly as the ETag header (RFC 4918
        §15.6); WsgiDAV writes ``get_etag()`` unquoted (dav_provider.py:748,
        mar10/wsgidav#222), so a sync client comparing the two saw every file as changed.
        ``oc:checksums`` is the checksums kept for this very file (oc_compat.py), or 404."""
        if name == "{DAV:}getetag":
            return entity_tag(self.get_etag())
        if name == CHECKSUMS:
            value = stored_checksums(self._file_path, self.file_stat) if self.provider.checksums else None
            if value is None:
                raise DAVError(HTTP_NOT_FOUND)
            return checksums_element(value)
        if name in ("{DAV:}quota-used-bytes", "{DAV:}quota-available-bytes"):
            # RFC 4331 defines them on collections; WsgiDAV answers a file's with 200 and
            # an empty value (dav_provider.py:733), the short path with 404, as here.
            raise DAVError(HTTP_NOT_FOUND)
        return super().get_property_value(name)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any:
        """ownCloud's PROPPATCH of a file's time and checksums, as rclone sends it
        (oc_compat.py): ``DAV:lastmodified`` in Unix seconds sets the time (409 for a bad
        value); ``oc:checksums`` is the server's own: a value that agrees, or cannot be
        checked, is 200 and stores nothing, one that contradicts is 409, removing it 403
        (RFC 4918 §16 cannot-modify-protected-property)."""
        if name not in (LASTMODIFIED, CHECKSUMS):
            return super().set_property_value(name, value, dry_run=dry_run)
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        if value is None:
            raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)
        if name == CHECKSUMS:
            claimed = " ".join(el.text or "" for el in value.iter("{http://owncloud.org/ns}checksum"))
            ours = stored_checksums(self._file_path, self.file_stat) if self.provider.checksums else None
            if not agrees(claimed, ours):
                raise DAVError(HTTP_CONFLICT, "These are not the checksums of the file.")
            return True
        seconds = parse_seconds(value.text or "")
        if seconds is None or len(value):
            raise DAVError(HTTP_CONFLICT, "lastmodified must be whole seconds since 1970 (0 to 253402300799).")
        if not dry_run:
            try:
                self.file_stat = set_mtime(self._file_path, seconds)
            except OSError as exc:
                raise dav_error(exc, f"setting the time of {self._file_path}", self.environ, creating=False) from None
        return True

    def get_href(self) -> str:
        """The href WsgiDAV writes for this file: hrefs.py's quoting, as the short path's."""
        return quote_href(self.provider.mount_path + self.provider.share_path + self.get_preferred_path())

    def get_display_name(self) -> str:
        return display_name(self.name)

    def get_content(self) -> Any:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", _BLOCK)
        try:
            fd = os.open(self._file_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise dav_error(exc, f"opening {self._file_path}", self.environ, creating=False) from None
        return os.fdopen(fd, "rb", _BLOCK)

    def begin_write(self, *, content_type: str | None = None) -> AtomicFile:
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        expected = read_expected(self.environ)
        keep = bool(self.provider.checksums)
        digests = Digests(keep=keep, expected=expected) if keep or expected is not None else None
        self._upload = AtomicFile(self._file_path, expected_size=_expected_length(self.environ),
                                  mtime=read_mtime(self.environ), digests=digests, environ=self.environ)
        return self._upload

    def end_write(self, *, with_errors: bool) -> None:
        upload, self._upload = self._upload, None
        if upload is not None and with_errors:
            upload.abort()
        if not with_errors:
            try:
                self.file_stat = os.stat(self._file_path, follow_symlinks=False)
            except OSError as exc:
                raise dav_error(exc, f"stat {self._file_path}", self.environ, creating=False) from None

    def delete(self) -> None:
        try:
            super().delete()
        except OSError as exc:
            raise dav_error(exc, f"deleting {self._file_path}", self.environ, creating=False) from None

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        """COPY over an existing file: replace it in one step. (WsgiDAV deletes the target
        first, request_server.py:1067, so a copy that then fails would lose it.)"""
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        self.provider.check_tree(self.environ, None, dest_path)
        dest_res = self.provider.get_resource_inst(dest_path, self.environ)
        if not isinstance(dest_res, _File) or self.environ.get("HTTP_OVERWRITE", "T") != "T":
            return False  # new target or a folder: WsgiDAV's way, ending in copy_move_single()
        _atomic_copy(self._file_path, dest_res._file_path, checksums=self.provider.checksums, environ=self.environ)
        # What WsgiDAV's delete of the old target would have dropped:
        dest_res.remove_all_properties(recursive=False)
        dest_res.remove_all_locks(recursive=False)
        self._copy_dead_properties(dest_path, is_move=False, with_children=False)
        return True

    def handle_move(self, dest_path: str) -> bool:
        """Only checks the destination's name and depth; WsgiDAV then moves as usual."""
        self.provider.check_tree(self.environ, None, dest_path)
        return False

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        dest = self.provider._loc_to_file_path(dest_path, self.environ)
        _atomic_copy(self._file_path, dest, checksums=self.provider.checksums, environ=self.environ)
        self._copy_dead_properties(dest_path, is_move=is_move, with_children=False)

    def move_recursive(self, dest_path: str) -> None:
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        dest = self.provider._loc_to_file_path(dest_path, self.environ)
        try:
            os.rename(self._file_path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise dav_error(exc, f"moving {self._file_path}", self.environ, creating=True) from None
            # another filesystem: copy whole, then drop the source
            _atomic_copy(self._file_path, dest, checksums=self.provider.checksums, environ=self.environ)
            try:
                os.unlink(self._file_path)
            except OSError as exc2:
                raise dav_error(exc2, f"moving {self._file_path}", self.environ, creating=False) from None
        self._copy_dead_properties(dest_path, is_move=True, with_children=True)

    def _copy_dead_properties(self, dest_path: str, *, is_move: bool, with_children: bool) -> None:
        prop_man = self.provider.prop_manager
        if not prop_man:
            return
        dest_res = self.provider.get_resource_inst(dest_path, self.environ)
        if is_move:
            prop_man.move_properties(
                self.get_ref_url(), dest_res.get_ref_url(), with_children=with_children, environ=self.environ
            )
        else:
            prop_man.copy_properties(self.get_ref_url(), dest_res.get_ref_url(), self.environ)


class _NewFile(_File):
    """The target of a PUT that does not exist yet: it appears only when the upload is complete.

    (WsgiDAV creates an empty file first, which would stay behind after a failed upload.)
    """

    def __init__(self, path: str, environ: dict[str, Any], file_path: str) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._file_path = file_path
        self.file_stat = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, 0))
        self.name = util.to_str(os.path.basename(file_path))


class _Folder(FolderResource):
    """A folder whose listing hides temp files, symlinks, special files and names that
    are not UTF-8; new names and tree depth are checked before WsgiDAV acts."""

    def get_href(self) -> str:
        """The href WsgiDAV writes for this folder: hrefs.py's quoting, as the short path's."""
        return quote_href(self.provider.mount_path + self.provider.share_path + self.get_preferred_path())

    def get_display_name(self) -> str:
        return display_name(self.name)

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any:
        """``oc:checksums`` is the server's own, and a folder has none (oc_compat.py): a
        PROPPATCH setting or removing it is 403 (RFC 4918 §16
        cannot-modify-protected-property), not a dead property that PROPFIND would then
        answer as the folder's checksums."""
        if name == CHECKSUMS:
            raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)
        return super().set_property_value(name, value, dry_run=dry_run)

    def get_member_names(self) -> list[str]:
        try:
            with os.scandir(self._file_path) as found:  # closed even when reading it fails half-way
                entries = list(found)
        except OSError as exc:
            raise dav_error(exc, f"listing {self._file_path}", self.environ, creating=False) from None
        names = []
        share = getattr(self.provider, "share", None)
        hide_clutter = share is not None and share.macos_clutter != "allow"
        for entry in entries:
            if is_hidden(entry.name, hide_clutter=hide_clutter):
                continue
            try:  # what served_kind() serves, told from the entry's type without a stat
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
            except OSError:
                continue
        return names

    def get_member_list(self) -> list[Any]:
        members = (self.get_member(name) for name in self.get_member_names())
        return [m for m in members if m is not None]  # skip what vanished since the listing

    def create_empty_resource(self, name: str) -> Any:
        assert "/" not in name
        if self.provider.readonly:
            raise DAVError(HTTP_FORBIDDEN)
        path = util.join_uri(self.path, name)
        self.provider.check_tree(self.environ, None, path)
        fp = self.provider._loc_to_file_path(path, self.environ)
        if self.environ.get("REQUEST_METHOD") == "PUT":
            return _NewFile(path, self.environ, fp)
        try:  # LOCK on an unmapped URL: a real empty file, as WebDAV wants
            os.close(os.open(fp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
        except OSError as exc:
            raise dav_error(exc, f"creating {fp}", self.environ, creating=True) from None
        return self.provider.get_resource_inst(path, self.environ)

    def create_collection(self, name: str) -> None:
        self.provider.check_tree(self.environ, None, util.join_uri(self.path, name))
        try:
            super().create_collection(name)
        except OSError as exc:
            raise dav_error(exc, f"creating folder {name!r} in {self._file_path}", self.environ,
                            creating=True) from None

    def delete(self) -> None:
        try:
            super().delete()
        except OSError as exc:
            raise dav_error(exc, f"deleting {self._file_path}", self.environ, creating=False) from None

    def handle_delete(self) -> bool:
        """Only checks the tree's depth; WsgiDAV then walks and deletes it as usual."""
        self.provider.check_tree(self.environ, self, None)
        return False

    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        """Only checks the destination's name and the tree's depth; WsgiDAV then copies."""
        self.provider.check_tree(self.environ, self, dest_path)
        return False

    def handle_move(self, dest_path: str) -> bool:
        """Only checks the destination's name and the tree's depth; WsgiDAV then moves."""
        self.provider.check_tree(self.environ, self, dest_path)
        return False

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        try:
            super().copy_move_single(dest_path, is_move=is_move)
        except OSError as exc:
            raise dav_error(exc, f"copying {self._file_path}", self.environ, creating=True) from None

    def move_recursive(self, dest_path: str) -> None:
        try:
            super().move_recursive(dest_path)
        except (OSError, shutil.Error) as exc:
            if isinstance(exc, OSError):
                raise dav_error(exc, f"moving {self._file_path}", self.environ, creating=True) from None
            log.error("moving %s failed: %s", self._file_path, exc)
            raise DAVError(HTTP_INTERNAL_ERROR, "Filesystem error.") from None


def _expected_length(environ: dict[str, Any]) -> int | None:
    """Bytes the PUT body must have: Content-Length, 0 without one, None for chunked bodies."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        return content_length(environ) or 0
    except BadContentLength:
        return None


# --- the provider -----------------------------------------------------------------


def _answer_mtime(environ: dict[str, Any], start_response: Any) -> Any:
    """``start_response`` that adds ``X-OC-MTime: accepted`` to a 2xx answer of a PUT that
    stored the client's X-OC-Mtime (rclone webdav.go master:1204 looks for it)."""

    def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if request_context(environ).mtime_accepted and status.startswith("2"):
            headers = [*headers, ("X-OC-MTime", "accepted")]
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    return respond

#: Methods refused on a share root itself.
_ROOT_REFUSED = frozenset({"PUT", "DELETE", "MOVE", "COPY"})


#: The default of ``limits.max_tree_depth``: levels below a share root.
DEFAULT_MAX_TREE_DEPTH: int = setting("limits.max_tree_depth").default


class ShareProvider(FilesystemProvider):
    """A share's folder; symlinks are never followed out of it.

    ``max_tree_depth`` (``limits.max_tree_depth``) bounds how many levels below the
    share root anything may be created, and how deep a tree COPY, MOVE and DELETE
    may walk (see the module docstring). ``checksums`` (``properties.checksums``)
    computes SHA-1 and MD5 of every upload and copy as it is written and answers them
    as ``oc:checksums`` (oc_compat.py).
    """

    def __init__(self, share: ShareConfig, *, max_tree_depth: int = DEFAULT_MAX_TREE_DEPTH,
                 checksums: bool = True) -> None:
        super().__init__(str(share.path), readonly=share.read_only, fs_opts={"follow_symlinks": False})
        self.share = share
        self.max_tree_depth = max_tree_depth
        self.checksums = checksums

    def copy_file_in(self, src: str, dest: str, environ: dict[str, Any]) -> None:
        """Copy the file at path ``src`` (any share) to path ``dest`` in this share in one
        step (an atomic rename of a complete temp file, mode and times kept), for COPY and
        MOVE across shares (copymove.py). Raises DAVError as the filesystem's error maps
        for the request of ``environ`` (sharefs.dav_error)."""
        _atomic_copy(src, dest, environ=environ)

    def is_readonly(self) -> bool:
        """Read-only shares say so in OPTIONS (DAV: 1, no write methods, no locking)."""
        return bool(self.readonly)

    def custom_request_handler(self, environ: dict[str, Any], start_response: Any, default_handler: Any) -> Any:
        """The common GET and PROPFIND take a short path (see fastpath.py); all else is WsgiDAV's.

        A PUT, DELETE, MOVE or COPY of the share root itself is refused first
        (:meth:`_check_share_root`). A PUT's X-OC-Mtime is read before its body
        (oc_compat.read_mtime: 400 for a bad one, nothing written) and, once stored, answered
        ``X-OC-MTime: accepted``."""
        self._on_disk(environ)
        method = environ["REQUEST_METHOD"]
        if method in _ROOT_REFUSED and not environ.get("PATH_INFO", "").strip("/"):
            self._check_share_root(environ, method)
        if method == "PUT" and read_mtime(environ) is not None:
            start_response = _answer_mtime(environ, start_response)
        # WsgiDAV's own methods, with conditions.py deciding every precondition (RFC 9110 §13,
        # RFC 4918 §10.4), also on a name that does not exist yet.
        default_handler = getattr(PreconditionServer.of(default_handler.__self__), default_handler.__name__)
        answer = None
        if method in ("GET", "HEAD"):
            if "HTTP_RANGE" in environ:  # read once for both paths (ranges.py)
                normalise_range(environ, self._file_size(environ) if method == "GET" else None)
            answer = fast_get(self, environ, start_response)
        elif method == "PROPFIND":
            check_propfind(self, environ)  # the answer's size, for both paths
            answer = fast_propfind(self, environ, start_response)
        elif method in ("COPY", "MOVE"):  # on the Destination the guard parsed and authorised
            self._destination_on_disk(environ)
            return copy_or_move(default_handler.__self__, environ, start_response, is_move=method == "MOVE")
        return answer if answer is not None else default_handler(environ, start_response)

    def _file_size(self, environ: dict[str, Any]) -> int | None:
        """The size in bytes of the regular file a GET names, or None when it names
        anything else (missing, a folder, a symlink: the answering path says which).
        Confined like every lookup (:meth:`_loc_to_file_path`); raises DAVError as it does."""
        path = environ["PATH_INFO"]
        if any(is_temp_name(part) for part in path.split("/")):
            return None
        self._check_realm(environ)
        try:
            st = os.lstat(self._loc_to_file_path(path, environ))
        except (OSError, ValueError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _check_share_root(self, environ: dict[str, Any], method: str) -> None:
        """Refuse what would replace, remove or duplicate the share root (``/files``, ``/files/``).

        The root is configuration, not content: PUT onto it is 405 (RFC 4918 §9.7.2,
        PUT on a collection; with ``Allow``), DELETE and MOVE are 403 (§9.6, §9.9.4),
        and COPY is 403 when the destination is in the same share, i.e. inside the
        source (§9.8.5; Apache mod_dav answers the same). WsgiDAV asked for the
        root's parent (request_server.py:647, :856) and failed with a 500.
        """
        if method == "PUT":
            allow = "OPTIONS, GET, HEAD, PROPFIND" + ("" if self.readonly else ", PROPPATCH, LOCK, UNLOCK")
            raise _refuse(environ, Refusal.SHARE_ROOT, HTTP_METHOD_NOT_ALLOWED, "A share root is a collection.",
                          [("Allow", allow)])
        if method == "COPY":
            dest = request_context(environ).destination
            if dest is not None and getattr(dest, "share", None) != self.share.name:
                return  # into another share: not inside the source
            raise _refuse(environ, Refusal.SHARE_ROOT, HTTP_FORBIDDEN, "A share root cannot be copied into itself.")
        raise _refuse(environ, Refusal.SHARE_ROOT, HTTP_FORBIDDEN, "A share root cannot be deleted or moved.")

    def check_tree(self, environ: dict[str, Any], source: Any, dest_path: str | None) -> None:
        """Refuse a new name that may not be created, or an operation past ``max_tree_depth``.

        ``source`` is the folder resource a DELETE, COPY or MOVE walks (None for a
        file or a creation); ``dest_path`` the share path something is created at
        (None for DELETE). Raises DAVError 400 ``bad_name`` (names.py) or 403
        ``tree_depth``: the destination lies deeper than the limit, or the folder's
        tree reaches deeper than the limit where it is or where it would go.
        """
        limit = self.max_tree_depth
        top = _depth(source.path) if source is not None else 0
        if dest_path is not None:
            name = dest_path.rstrip("/").rsplit("/", 1)[-1]
            if refused_name(name) is not None and not os.path.lexists(self._loc_to_file_path(dest_path, environ)):
                _check_new_name(environ, name)
            if not name.isascii():
                self._check_collision(environ, dest_path)
            top = max(top, _depth(dest_path))
        if top > limit or (source is not None and tree_height_exceeds(source._file_path, limit - top)):
            log.info("refused: a tree deeper than %d levels (limits.max_tree_depth)", limit)
            raise _refuse(environ, Refusal.TREE_DEPTH, HTTP_FORBIDDEN,
                          f"Folders may not be nested deeper than {limit} levels below the share.")

    def _realm_ok(self, environ: dict[str, Any]) -> bool:
        """False when the guard authorised the request for another share than this one."""
        realm = environ.get(_REALM_KEY)
        destination = request_context(environ).destination  # COPY/MOVE: its share was authorised too
        allowed = {str(realm).lower(), getattr(destination, "share", None)}
        return realm is None or self.share.name.lower() in allowed

    def _check_collision(self, environ: dict[str, Any], dest_path: str) -> None:
        """Refuse (409, ``name_collision``) to create a name that differs from an existing
        member of its folder only by Unicode normalisation. Where exactly one such member
        exists the lookup already found it (:meth:`_resolve`), so this is hit where the
        folder holds several (made on disk) and the request matches none of them."""
        file_path = self._loc_to_file_path(dest_path, environ)
        if os.path.lexists(file_path):
            return
        folder, name = os.path.split(file_path)
        if self._twins_of(folder, name, environ.setdefault(_TWINS_KEY, {})):
            log.info("refused a name that differs from an existing one only by Unicode normalisation")
            raise _refuse(environ, Refusal.NAME_COLLISION, HTTP_CONFLICT,
                          "A file or folder of this name, in another Unicode normalisation form, exists.")

    def _check_realm(self, environ: dict[str, Any]) -> None:
        """Refuse a request WsgiDAV routed here although it was authorised for another share
        (e.g. `/files/../team/x`: the guard saw `files`, WsgiDAV's normalisation picked `team`)."""
        realm = environ.get(_REALM_KEY)
        if not self._realm_ok(environ):
            log.warning("request for share %r reached share %r: refused", realm, self.share.name)
            request_context(environ).refuse(Refusal.SHARE_MISMATCH)  # audited as a refusal by the guard
            raise DAVError(HTTP_FORBIDDEN, "Path outside the share.")

    def _loc_to_file_path(self, path: str, environ: dict[str, Any] | None = None) -> str:
        """The file path of a share path, confined to the share: no NUL, no dot segments,
        no temp names, no symlink that leads out, and no server path in the error.

        The share's root was resolved once at start, so only the components below it
        are looked at: one lstat each, where ``realpath`` (as WsgiDAV does it, twice
        per request) walks every component from ``/``. A path without a symlink in it
        is its own real path; one with a symlink is resolved and must stay inside.
        A missing non-ASCII component is matched across Unicode normalisation forms
        (:func:`_twins`, one scandir of its folder per request); the path returned names the
        files as they are on disk.
        """
        return self._resolve(path, environ.setdefault(_TWINS_KEY, {}) if environ is not None else None)[1]

    @staticmethod
    def _twins_of(folder: str, name: str, memo: dict[tuple[str, str], tuple[str, ...]] | None) -> tuple[str, ...]:
        """:func:`_twins`, scanned once per request (``memo``, kept in the request's environ)."""
        if memo is None:
            return _twins(folder, name)
        found = memo.get((folder, name))
        if found is None:
            found = memo[folder, name] = _twins(folder, name)
        return found

    def _resolve(self, path: str, memo: dict[tuple[str, str], tuple[str, ...]] | None = None) -> tuple[list[str], str]:
        """``path``'s components as named on disk (a missing one as requested) and its file
        path. ``memo`` keeps the folder scans of one request (WsgiDAV looks a path up
        several times), so a new non-ASCII name costs one scan of its folder. Raises
        DAVError 400 (NUL, dot segment), 403 (temp name, symlink leading out) or as the
        filesystem's error maps (sharefs.dav_error)."""
        parts = [part for part in path.split("/") if part]
        for part in parts:
            if "\x00" in part or part in (".", ".."):
                raise DAVError(HTTP_BAD_REQUEST, "Invalid path.")
            if is_temp_name(part):
                raise DAVError(HTTP_FORBIDDEN, "Reserved name.")
        root = self.root_folder_path_real
        current = root
        for i, part in enumerate(parts):
            candidate = os.path.join(current, part)
            try:
                try:
                    st = os.lstat(candidate)
                except FileNotFoundError:
                    twins = () if part.isascii() else self._twins_of(current, part, memo)
                    if len(twins) != 1:  # none, or several: the request names none of them
                        break  # nothing below a missing component exists, so nothing there can lead out
                    twin = twins[0]
                    parts[i] = twin
                    candidate = os.path.join(current, twin)
                    st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                break
            except ValueError:
                raise DAVError(HTTP_BAD_REQUEST, "Invalid path.") from None
            except OSError as exc:
                raise dav_error(exc, "resolving a path", creating=False) from None
            current = candidate
            if stat.S_ISLNK(st.st_mode):
                if not self._is_equal_or_child_path(root, os.path.realpath(os.path.join(root, *parts))):
                    raise DAVError(HTTP_FORBIDDEN, "Path outside the share.")
                break
        return parts, os.path.join(root, *parts)

    def _on_disk(self, environ: dict[str, Any]) -> None:
        """Rewrite ``PATH_INFO`` to the names on disk when it names them in another Unicode
        normalisation form (``cafe\u0301.txt`` for ``caf\u00e9.txt``), so WsgiDAV and the short
        paths answer for, lock and keep properties of one resource under one href.

        ASCII paths are left alone at no cost; a non-ASCII path costs one lstat when it
        exists as requested, and the walk of :meth:`_resolve` only when it does not."""
        path = environ.get("PATH_INFO", "")
        if path.isascii() or not self._realm_ok(environ):
            return
        try:
            os.lstat(os.path.join(self.root_folder_path_real, *(p for p in path.split("/") if p)))
            return
        except (OSError, ValueError):
            pass
        try:
            parts = self._resolve(path, environ.setdefault(_TWINS_KEY, {}))[0]
        except DAVError:
            return  # the path is refused as usual where it is looked up
        canonical = "/" + "/".join(parts) + ("/" if path.endswith("/") and parts else "")
        if canonical != path and canonical.strip("/") != path.strip("/"):
            log.debug("request path matched across Unicode normalisation forms")
            environ["PATH_INFO"] = canonical

    def _destination_on_disk(self, environ: dict[str, Any]) -> None:
        """Rewrite a COPY/MOVE Destination (``RequestContext.destination``, the guard's parsed
        target) to the names on disk, as :meth:`_on_disk` does the request path: a MOVE
        onto ``cafe\u0301.txt`` replaces ``caf\u00e9.txt`` and keeps its on-disk name."""
        context = request_context(environ)
        dest = context.destination
        if dest is None or len(dest.segments) < 2 or all(seg.isascii() for seg in dest.segments[1:]):
            return
        app = environ.get("wsgidav.app")
        provider = app.provider_map.get("/" + str(dest.share)) if app is not None else self
        if not isinstance(provider, ShareProvider):
            return
        try:
            parts = provider._resolve("/" + "/".join(dest.segments[1:]), environ.setdefault(_TWINS_KEY, {}))[0]
        except DAVError:
            return  # refused as usual where it is looked up
        if tuple(parts) != dest.segments[1:]:
            context.destination = dataclasses.replace(dest, segments=(dest.segments[0], *parts))

    def get_resource_inst(self, path: str | None, environ: dict[str, Any]) -> Any:
        """The resource at share path ``path``, or None when nothing (servable) is there.

        ``path`` None is what WsgiDAV asks for as the parent of the share root
        (``util.get_uri_parent``): for the source of a COPY of the root to another
        share there is none; as the parent of a COPY/MOVE destination it means
        the destination is the share root, which cannot be replaced (403).
        """
        self._count_get_resource_inst += 1
        self._check_realm(environ)
        if path is None:
            if not environ.get("PATH_INFO", "").strip("/"):
                return None
            # WsgiDAV's util.get_uri_parent also answers None for a blank last name
            # ("/\r", "/ "): that is a name that cannot be created, not the share root.
            dest = request_context(environ).destination
            name = dest.name if dest is not None else environ.get("PATH_INFO", "").rstrip("/").rsplit("/", 1)[-1]
            if not name.strip():
                _check_new_name(environ, name)
            raise _refuse(environ, Refusal.DEST_SHARE_ROOT, HTTP_FORBIDDEN, "A share root cannot be replaced.")
        if any(is_temp_name(part) for part in path.split("/")):
            return None
        fp = self._loc_to_file_path(path, environ)
        try:
            st = os.lstat(fp)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise dav_error(exc, f"stat {fp}", environ, creating=False) from None
        if stat.S_ISLNK(st.st_mode):
            raise DAVError(HTTP_FORBIDDEN, "Symbolic links are not served.")
        try:
            kind = served_kind(st)
            if kind == "folder":
                return _Folder(path, environ, fp)
            if kind == "file":
                pin = environ.get("REQUEST_METHOD") == "GET" and path == environ.get("PATH_INFO")
                return _File(path, environ, fp, pin=pin)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise dav_error(exc, f"stat {fp}", environ, creating=False) from None
        return None  # sockets, fifos, devices: not served (and not listed)
