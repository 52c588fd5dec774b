"""Request limits applied after authentication and before WsgiDAV.

WsgiDAV reads XML request bodies whole into memory and treats a PROPFIND
without Depth as infinite. Here XML bodies are capped (413, read
incrementally, so a chunked body is never larger in memory than the cap) and
a PROPFIND of a collection must name a finite depth (403 with
DAV:propfind-finite-depth, RFC 4918 §9.1): a folder tree walk is the client's job,
one level at a time. §9.1 allows that refusal on collections only: a PROPFIND
without Depth, or with ``Depth: infinity``, of a regular file is the same request as
Depth 0 (a file has no members) and goes on as one (Kodi's existence check sends
no Depth, xbmc/xbmc#2361).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

from .access import Refusal
from .framing import BadContentLength, content_length
from .request_context import request_context

__all__ = ["Limits"]

#: Methods whose body WsgiDAV parses as XML.
XML_METHODS = frozenset({"PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "REPORT", "SEARCH", "MKCOL"})

_FINITE_DEPTH = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n'
)


def _simple(start_response: Callable[..., Any], status: str, body: bytes, *, close: bool,
            ctype: str = "text/plain; charset=utf-8") -> list[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))  # the unread body is not drained into memory
    start_response(status, headers)
    return [body]


def _names_a_file(environ: dict[str, Any]) -> bool:
    """Whether the request's path names a regular file inside its share.

    Looked up without following any symlink: each component below the share root
    is lstat'ed, and a symlink, a missing component or anything but a regular file
    at the end answers False (the request is then treated as one on a collection,
    and refused as before). Only file types are read, nothing is opened, and the
    provider still confines the request itself (fs.py ``_loc_to_file_path``).
    """
    context = request_context(environ)
    share, target = context.share, context.target
    if share is None or target is None:
        return False  # the server root: a collection
    segments = target.segments[1:]
    current = os.fspath(share.path)
    for index, name in enumerate(segments):
        current = os.path.join(current, name)
        try:
            mode = os.lstat(current).st_mode
        except (OSError, ValueError):
            return False
        if stat.S_ISLNK(mode) or (index < len(segments) - 1 and not stat.S_ISDIR(mode)):
            return False
        if index == len(segments) - 1:
            return stat.S_ISREG(mode)
    return False


class Limits:
    """WSGI middleware between the guard and WsgiDAV (see the module docstring): a PROPFIND
    of a collection with Depth infinity or none is refused 403 with
    ``DAV:propfind-finite-depth`` (RFC 4918 §9.1; of a file it becomes Depth 0), and the
    body of an XML method (``XML_METHODS``) over ``xml_body_bytes`` bytes is refused 413
    with ``Connection: close`` (a broken chunked body: 400). The refusal's reason goes to
    the request context (``RequestContext.refuse``) for the audit line."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, xml_body_bytes: int) -> None:
        self.app = app
        self.xml_body_bytes = xml_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method == "PROPFIND":
            depth = environ.get("HTTP_DEPTH", "").strip().lower()
            if depth in ("", "infinity") and _names_a_file(environ):
                environ["HTTP_DEPTH"] = depth = "0"
            if depth not in ("0", "1"):
                request_context(environ).refuse(Refusal.PROPFIND_DEPTH)
                return _simple(start_response, "403 Forbidden", _FINITE_DEPTH, close=False,
                               ctype="application/xml; charset=utf-8")
        if method in XML_METHODS:
            try:
                refused = self._cap_body(environ)
            except ValueError:
                # A chunked body that breaks its framing (http1.BadChunkedBody, which also
                # records the reason bad_framing): 400, and the connection closes.
                return _simple(start_response, "400 Bad Request", b"bad request framing\n", close=True)
            if refused:
                request_context(environ).refuse(Refusal.XML_TOO_LARGE)
                return _simple(start_response, "413 Content Too Large", b"request body too large\n", close=True)
        return self.app(environ, start_response)

    def _cap_body(self, environ: dict[str, Any]) -> bool:
        """True when the body is over the cap. A chunked body is read here, at most cap + 1 bytes,
        and handed on with a Content-Length (WsgiDAV ignores XML bodies without one)."""
        try:
            length = content_length(environ)
        except BadContentLength:
            return False  # http1.py refuses such a request before any application runs
        if length is not None:
            return length > self.xml_body_bytes
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return False
        stream = environ["wsgi.input"]
        data = bytearray()
        while len(data) <= self.xml_body_bytes:
            chunk = stream.read(min(65536, self.xml_body_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > self.xml_body_bytes:
            return True
        environ["wsgi.input"] = io.BytesIO(bytes(data))
        environ["CONTENT_LENGTH"] = str(len(data))
        return False
