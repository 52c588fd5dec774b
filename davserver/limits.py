"""Request limits applied after authentication and before WsgiDAV.

WsgiDAV reads XML request bodies whole into memory and treats a PROPFIND
without Depth as infinite. Here XML bodies are capped (413, read
incrementally, so a chunked body is never larger in memory than the cap) and
PROPFIND must name a finite depth (403 with DAV:propfind-finite-depth, RFC 4918
§9.1): a folder tree walk is the client's job, one level at a time.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

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


class Limits:
    def __init__(self, app: Callable[..., Iterable[bytes]], *, xml_body_bytes: int) -> None:
        self.app = app
        self.xml_body_bytes = xml_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method == "PROPFIND":
            depth = environ.get("HTTP_DEPTH", "").strip().lower()
            if depth not in ("0", "1"):
                environ["davserver.limit"] = "propfind_depth"
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
                environ["davserver.limit"] = "xml_too_large"
                return _simple(start_response, "413 Content Too Large", b"request body too large\n", close=True)
        return self.app(environ, start_response)

    def _cap_body(self, environ: dict[str, Any]) -> bool:
        """True when the body is over the cap. A chunked body is read here, at most cap + 1 bytes,
        and handed on with a Content-Length (WsgiDAV ignores XML bodies without one)."""
        length = environ.get("CONTENT_LENGTH", "").strip()
        if length:
            return length.isdigit() and int(length) > self.xml_body_bytes
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
