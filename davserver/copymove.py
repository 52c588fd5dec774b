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
function sees the two replacements. ``tests/test_destination.py`` checks that
the upstream function still reads them, so an upgrade that changes it fails.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import ParseResult

from wsgidav import request_server

from .target import Target

__all__ = ["DESTINATION_KEY", "copy_or_move"]

#: Where the guard leaves the parsed Destination (a target.Target) for this module.
DESTINATION_KEY = "davserver.destination"

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
    """Run WsgiDAV's COPY/MOVE with ``environ[DESTINATION_KEY]`` as the destination.

    ``server`` is the RequestServer handling the request (the ``__self__`` of the
    default handler WsgiDAV passes to ``custom_request_handler``). Raises
    ``DAVError`` as WsgiDAV does (400 when no parsed destination is present).
    """
    destination: Target | None = environ.get(DESTINATION_KEY)
    if destination is None:
        from wsgidav.dav_error import HTTP_BAD_REQUEST, DAVError

        raise DAVError(HTTP_BAD_REQUEST, context_info="Missing or invalid Destination header.")
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
