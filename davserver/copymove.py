"""COPY and MOVE executed on the Destination the guard parsed and authorised.

WsgiDAV's ``RequestServer._copy_or_move`` (request_server.py:847-1210) reads
the raw Destination header itself: ``unquote`` first, then ``urlparse``
(request_server.py:916-929). Decoding before splitting turns ``report%3Fv2.txt``
into the name ``report`` plus a query, and ``Projects%3Bold`` into ``Projects``
plus parameters, so a rename overwrote an unrelated file; and a fragment that
the guard's parser cut off was kept as part of the path.

Its remaining 300 lines (Overwrite, Depth, lock and precondition checks,
multi-status answers) are right and stay WsgiDAV's: the same code runs here,
with those two names bound to functions that hand it the destination path from
target.py unchanged. WsgiDAV's module is not altered; only this copy of the
function sees the two replacements. ``tests/test_request_target.py`` checks that
the upstream function still reads them, so an upgrade that changes it fails.

WsgiDAV refuses a COPY or MOVE between two shares (each is its own provider:
"Inter-realm copy/move is not supported", 502). A reader of one share who
writes another may copy a file across, so :func:`_across_shares` does that
with the same checks: Overwrite, the If header on both ends, WebDAV locks on
the destination (and on the source of a MOVE), atomic file writes, dead
properties carried over. A tree is walked without recursion.
"""

from __future__ import annotations

import errno
import os
import stat
import types
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import ParseResult

from wsgidav import request_server, util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_CREATED,
    HTTP_FORBIDDEN,
    HTTP_NO_CONTENT,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)

from .request_context import request_context
from .sharefs import dav_error, is_hidden
from .target import Target
from .upstream import send_status_response

__all__ = ["copy_or_move"]

_upstream = request_server.RequestServer._copy_or_move


def _already_decoded(value: str) -> str:
    return value


def _path_only(url: str, scheme: str = "", allow_fragments: bool = True) -> ParseResult:
    return ParseResult("", "", url, "", "", "")


_globals = dict(vars(request_server))
_globals.update(unquote=_already_decoded, urlparse=_path_only)
_copy_or_move = types.FunctionType(_upstream.__code__, _globals, "_copy_or_move", _upstream.__defaults__)


def copy_or_move(
    server: request_server.RequestServer,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    *,
    is_move: bool,
) -> Iterable[bytes]:
    """Run WsgiDAV's COPY/MOVE with the guard's parsed Destination
    (``RequestContext.destination``, request_context.py) as the destination.

    ``server`` is the RequestServer handling the request (the ``__self__`` of the
    default handler WsgiDAV passes to ``custom_request_handler``). Raises
    ``DAVError`` as WsgiDAV does (400 when no parsed destination is present).
    """
    destination: Target | None = request_context(environ).destination
    if destination is None:
        raise DAVError(HTTP_BAD_REQUEST, context_info="Missing or invalid Destination header.")
    source_share = getattr(server._davProvider, "share", None)
    if source_share is not None and destination.share != source_share.name:
        try:
            return _across_shares(server, environ, start_response, destination, is_move=is_move)
        except OSError as exc:  # a system call on the way: the status sharefs.py gives it
            raise dav_error(exc, f"{'moving' if is_move else 'copying'} across shares", environ,
                            creating=True) from None
    raw = environ.get("HTTP_DESTINATION")
    environ["HTTP_DESTINATION"] = destination.path  # what the two replacements pass through
    try:
        result: Iterable[bytes] = _copy_or_move(server, environ, start_response, is_move)
    finally:
        if raw is None:
            environ.pop("HTTP_DESTINATION", None)
        else:
            environ["HTTP_DESTINATION"] = raw
    return result


def _walk(root: str, *, listed_only: bool = True) -> list[tuple[str, bool]]:
    """The entries below ``root`` as (path relative to it, is a folder), parents first,
    without recursion (Python 3.11's os.walk recurses once per level). With
    ``listed_only``, what listings hide is skipped: symlinks, special files,
    upload temp files and names that are not UTF-8 (sharefs.is_hidden; macOS clutter is
    copied, as before)."""
    found: list[tuple[str, bool]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if listed_only and (is_hidden(entry.name, hide_clutter=False)
                                    or not (is_dir or entry.is_file(follow_symlinks=False))):
                    continue
                found.append((child, is_dir))
                if is_dir:
                    stack.append(child)
    found.sort(key=lambda item: item[0].count("/"))
    return found


def _remove_tree(path: str) -> None:
    """Delete a file or a whole folder tree, deepest first, without recursion."""
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    for rel, is_dir in reversed(_walk(path, listed_only=False)):
        full = os.path.join(path, rel)
        os.rmdir(full) if is_dir else os.unlink(full)
    os.rmdir(path)


def _resource_of(provider: Any, path: str | None, environ: dict[str, Any]) -> Any:
    """``provider``'s resource at ``path``. WsgiDAV's resources take their provider
    from ``environ["wsgidav.provider"]`` (dav_provider.py:176, in _DAVResource.__init__),
    which names the source's share: lock and property URLs would be the source's."""
    own = environ.get("wsgidav.provider")
    environ["wsgidav.provider"] = provider
    try:
        return provider.get_resource_inst(path, environ)
    finally:
        environ["wsgidav.provider"] = own


def _across_shares(
    server: request_server.RequestServer,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    destination: Target,
    *,
    is_move: bool,
) -> Iterable[bytes]:
    """COPY or MOVE from this share into another one (both already authorised).

    Answers 201 (created) or 204 (replaced); raises ``DAVError`` 404 (no source),
    409 (no destination folder), 412 (exists and ``Overwrite: F``), 403 (onto or
    below itself, where two shares overlap on disk), 423 (a WebDAV lock without
    its token), and the filesystem's errors as sharefs.dav_error maps them (also an
    OSError raised here: :func:`copy_or_move` maps it, as creating the destination).
    """
    provider = server._davProvider
    app = environ["wsgidav.app"]
    dest_provider = app.provider_map.get("/" + str(destination.share))
    if dest_provider is None:
        raise DAVError(HTTP_CONFLICT, context_info="No such share.")
    src_res = provider.get_resource_inst(environ["PATH_INFO"], environ)
    if src_res is None:
        raise DAVError(HTTP_NOT_FOUND)
    overwrite = environ.get("HTTP_OVERWRITE", "T").upper()
    depth = environ.get("HTTP_DEPTH", "infinity").lower()
    if overwrite not in ("T", "F") or (src_res.is_collection and depth not in ("0", "infinity")) or (
        is_move and src_res.is_collection and depth != "infinity"
    ):
        raise DAVError(HTTP_BAD_REQUEST, context_info="Invalid Overwrite or Depth header.")
    dest_path = "/" + "/".join(destination.segments[1:])
    dest_res = _resource_of(dest_provider, dest_path, environ)
    dest_parent = _resource_of(dest_provider, util.get_uri_parent(dest_path), environ)
    if dest_parent is None or not dest_parent.is_collection:
        raise DAVError(HTTP_CONFLICT, context_info="Destination parent must be a collection.")
    # The destination's new name and the tree's depth, as within one share (fs.py, names.py).
    dest_provider.check_tree(environ, src_res if src_res.is_collection else None, dest_path)
    src_file = src_res._file_path
    dest_file = dest_provider._loc_to_file_path(dest_path, environ)
    real_src, real_dest = os.path.realpath(src_file), os.path.realpath(dest_file)
    if real_dest == real_src or real_dest.startswith(real_src.rstrip("/") + "/"):
        raise DAVError(HTTP_FORBIDDEN, context_info="Cannot copy/move source onto or below itself")
    server._evaluate_if_headers(src_res, environ)
    server._evaluate_if_headers(dest_res, environ)
    if is_move:
        server._check_write_permission(src_res, "infinity", environ)
        src_parent = provider.get_resource_inst(util.get_uri_parent(src_res.path), environ)
        server._check_write_permission(src_parent, "0", environ)
    if dest_res is None:
        server._check_write_permission(dest_parent, "0", environ)
    else:
        server._check_write_permission(dest_res, "infinity", environ)
        if overwrite != "T":
            raise DAVError(HTTP_PRECONDITION_FAILED, context_info="Destination exists and Overwrite is F")
        if dest_res.is_collection or src_res.is_collection:
            dest_res.remove_all_properties(recursive=True)
            dest_res.remove_all_locks(recursive=True)
            _remove_tree(dest_file)
        else:
            dest_res.remove_all_properties(recursive=False)
            dest_res.remove_all_locks(recursive=False)
    props = provider.prop_manager

    def carry(src_url: str, dest_url: str) -> None:
        if props is not None:
            props.copy_properties(src_url, dest_url, environ)

    src_url = src_res.get_ref_url()
    dest_url = dest_provider.share_path + util.quote(dest_path)
    moved = False
    if is_move:
        try:
            os.rename(src_file, dest_file)
            moved = True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    if moved:
        if props is not None:
            props.move_properties(src_url, dest_url.rstrip("/") + ("/" if src_res.is_collection else ""),
                                  with_children=True, environ=environ)
        src_res.remove_all_locks(recursive=True)
    elif not src_res.is_collection:
        dest_provider.copy_file_in(src_file, dest_file, environ)
        carry(src_url, dest_url)
    else:
        os.mkdir(dest_file, stat.S_IMODE(os.stat(src_file).st_mode))
        carry(src_url, dest_url + "/")
        if depth == "infinity":
            for rel, is_dir in _walk(src_file):
                quoted = util.quote(rel)
                if is_dir:
                    os.mkdir(os.path.join(dest_file, rel), stat.S_IMODE(os.stat(os.path.join(src_file, rel)).st_mode))
                    carry(f"{src_url}{quoted}/", f"{dest_url}/{quoted}/")
                else:
                    dest_provider.copy_file_in(os.path.join(src_file, rel), os.path.join(dest_file, rel), environ)
                    carry(f"{src_url}{quoted}", f"{dest_url}/{quoted}")
    if is_move and not moved:
        src_res.remove_all_properties(recursive=True)
        src_res.remove_all_locks(recursive=True)
        if src_res.is_collection:
            _remove_tree(src_file)
        else:
            os.unlink(src_file)
    status = HTTP_NO_CONTENT if dest_res is not None else HTTP_CREATED
    return send_status_response(environ, start_response, status)
