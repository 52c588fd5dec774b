"""What a share's files are, for every path that serves them.

fs.py (WsgiDAV's path), fastpath.py (the short GET and PROPFIND) and
copymove.py (COPY/MOVE across shares) must agree on these facts, so they live
here and none of those modules imports another for them:

* **which names a share hides** (:func:`is_hidden`): upload temp files
  (:data:`TEMP_PREFIX`), macOS clutter where the share hides it
  (``shares[].macos_clutter``), names that are not UTF-8 (names.py);
* **what is served** (:func:`served_kind`): regular files and folders, never a
  symlink, socket, fifo or device;
* **a file's entity-tag** (:func:`etag`), from one stat;
* **what a failed system call tells the client** (:func:`os_error_status`,
  :func:`dav_error`). The status depends on the errno *and* on what the request
  was doing, so both are inputs:

  - a path that does not exist (``ENOENT``, or ``ENOTDIR``: a component below it
    is a file) is 404 for the resource a request acts on (RFC 9110 §15.5.5), and
    409 where something is being created there — PUT, MKCOL, LOCK of an unmapped
    URL, the destination of COPY and MOVE: the parent collection is missing
    (RFC 4918 §9.7.1, §9.3.1, §9.8.5, §9.9.4);
  - an existing name (``EEXIST``) is 405 for MKCOL (RFC 4918 §9.3.1: MKCOL only on
    an unmapped URL), 412 for COPY and MOVE with ``Overwrite: F`` (§9.8.5, §9.9.4:
    the destination is mapped), and 409 otherwise (RFC 9110 §15.5.10: a conflict
    with the resource's current state, e.g. a name that appeared after COPY
    removed the old one with ``Overwrite: T``).

  Before this module fs.py said 409 for every ENOTDIR and 405 for every EEXIST,
  error_pages.py 404 and 412: each was wrong for some methods.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any, Literal

from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_INTERNAL_ERROR,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_REQUEST_URI_TOO_LONG,
    DAVError,
)

from .config import is_macos_clutter
from .names import is_listable

__all__ = ["CREATING_METHODS", "MISSING_ERRNOS", "TEMP_PREFIX", "dav_error", "etag", "is_hidden", "is_temp_name",
           "os_error_status", "served_kind"]

log = logging.getLogger("davserver.fs")

#: Names of in-progress uploads and copies; hidden from clients and swept at start-up.
TEMP_PREFIX = ".davserver-upload-"


def is_temp_name(name: str) -> bool:
    """True for the name of one of our temp files (``TEMP_PREFIX`` + anything)."""
    return name.startswith(TEMP_PREFIX)


def is_hidden(name: str, *, hide_clutter: bool) -> bool:
    """True when a share's listing leaves the member ``name`` (as os.scandir gives it) out:
    an upload temp file, a name that is not UTF-8 (names.is_listable), or — with
    ``hide_clutter``, i.e. ``shares[].macos_clutter`` other than ``allow`` — macOS
    clutter (config.is_macos_clutter). Both paths' listings and COPY across shares
    (with ``hide_clutter=False``) use it."""
    return is_temp_name(name) or (hide_clutter and is_macos_clutter(name)) or not is_listable(name)


def served_kind(st: os.stat_result) -> Literal["folder", "file"] | None:
    """What a share serves of an ``lstat`` result: ``"folder"``, ``"file"``, or None for a
    symlink, socket, fifo or device (never served, never listed)."""
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return None


def etag(st: os.stat_result) -> str:
    """The opaque-tag (unquoted, as WsgiDAV's ``get_etag`` contract wants, util.py:1413) of a
    file: inode, nanosecond mtime and size, in hex. Strong: it changes with every write,
    also two in one second. The ETag header and ``DAV:getetag`` carry it quoted
    (conditions.entity_tag)."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


# --- errno -> HTTP status ----------------------------------------------------------

#: The errnos that say "no such path": the file or a folder on the way is missing
#: (ENOENT), or a component on the way is a file (ENOTDIR).
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})

#: Methods whose failing system call creates something at the request's URL: a missing
#: parent is their 409 (RFC 4918 §9.7.1 PUT, §9.3.1 MKCOL, §7.3/§9.10.4 LOCK of an
#: unmapped URL). COPY and MOVE create at the Destination and read at the source, so
#: their call sites say which (``creating``).
CREATING_METHODS = frozenset({"PUT", "MKCOL", "LOCK"})

#: Errnos whose status does not depend on the method: (status, text for the client).
_FIXED: dict[int, tuple[int, str]] = {
    errno.ENOSPC: (HTTP_INSUFFICIENT_STORAGE, "Not enough space left to store the file."),  # RFC 4918 §11.5
    errno.EDQUOT: (HTTP_INSUFFICIENT_STORAGE, "Storage quota exceeded."),
    errno.EFBIG: (HTTP_REQUEST_ENTITY_TOO_LARGE, "The file is larger than this server may store."),  # RFC 9110 §15.5.14
    errno.EACCES: (HTTP_FORBIDDEN, "Permission denied."),  # RFC 9110 §15.5.4
    errno.EPERM: (HTTP_FORBIDDEN, "Permission denied."),
    errno.EROFS: (HTTP_FORBIDDEN, "The share is on a read-only filesystem."),
    errno.ELOOP: (HTTP_FORBIDDEN, "Symbolic links are not served."),
    errno.EISDIR: (HTTP_CONFLICT, "The target is a collection."),
    errno.ENOTEMPTY: (HTTP_CONFLICT, "The collection is not empty."),
    errno.ENAMETOOLONG: (HTTP_REQUEST_URI_TOO_LONG, "The name is too long."),  # RFC 9110 §15.5.15
    errno.EILSEQ: (HTTP_BAD_REQUEST, "The filesystem cannot store this name."),
}


def os_error_status(code: int | None, method: str, *, creating: bool | None = None,
                    overwrite: bool = True) -> tuple[int, str | None] | None:
    """The HTTP status and client text for an OSError's ``code`` (its errno) raised while
    answering ``method``, or None for an errno a client cannot cause (the caller
    answers 500 and logs it).

    ``creating``: whether the failing call created something at a new name (a PUT's
    file, MKCOL's folder, the destination of COPY/MOVE) rather than acting on an
    existing resource; None means "as the method does" (:data:`CREATING_METHODS`).
    ``overwrite``: the request's ``Overwrite`` header (RFC 4918 §10.6; T when absent).
    The rules and their RFC sections are in the module docstring.
    """
    method = method.upper()
    if code in MISSING_ERRNOS:
        making = method in CREATING_METHODS if creating is None else creating
        if making:
            return HTTP_CONFLICT, "A parent collection is missing or is not a collection."
        return HTTP_NOT_FOUND, None
    if code == errno.EEXIST:
        if method == "MKCOL":
            return HTTP_METHOD_NOT_ALLOWED, "The resource already exists."
        if method in ("COPY", "MOVE") and not overwrite:
            return HTTP_PRECONDITION_FAILED, "The destination exists and Overwrite is F."
        return HTTP_CONFLICT, "The resource already exists."
    return _FIXED.get(code or 0)


def dav_error(exc: OSError, action: str, environ: Mapping[str, Any] | None = None, *,
              creating: bool | None = None) -> DAVError:
    """The DAVError for ``exc`` raised by ``action`` (a phrase for the log) while answering
    the request of ``environ`` (its ``REQUEST_METHOD`` and ``HTTP_OVERWRITE`` are read; no
    environ: no method). Its text names no server path: the log gets the details, at
    ERROR for a 500 and INFO otherwise. ``creating`` as :func:`os_error_status`."""
    method = str(environ.get("REQUEST_METHOD", "")) if environ is not None else ""
    overwrite = str(environ.get("HTTP_OVERWRITE", "T")).upper() != "F" if environ is not None else True
    found = os_error_status(exc.errno, method, creating=creating, overwrite=overwrite)
    status, text = found if found is not None else (HTTP_INTERNAL_ERROR, "Filesystem error.")
    log.log(logging.ERROR if status == HTTP_INTERNAL_ERROR else logging.INFO, "%s failed: %s", action, exc)
    return DAVError(status, text)
