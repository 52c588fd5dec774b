"""Error answers that say what went wrong and nothing about the server.

WsgiDAV's ErrorPrinter puts its version, the server time and the error's
context text into HTML error pages. Here an error is its status line, or the
RFC 4918 precondition XML that clients act on; details go to the log only.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_NO_CONTENT,
    HTTP_NOT_FOUND,
    HTTP_NOT_MODIFIED,
    DAVError,
    get_http_status_string,
)
from wsgidav.mw.base_mw import BaseMiddleware

from .store.base import StoreUnavailable

__all__ = ["ErrorPages"]

log = logging.getLogger("davserver.errors")

#: OS errors a client can cause or should hear about, as HTTP statuses.
_OS_ERRORS = {
    errno.EACCES: HTTP_FORBIDDEN,
    errno.EPERM: HTTP_FORBIDDEN,
    errno.ENOENT: HTTP_NOT_FOUND,
    errno.ENOTDIR: HTTP_NOT_FOUND,
    errno.ENAMETOOLONG: 414,
    errno.ENOSPC: 507,
    errno.EDQUOT: 507,
    errno.EFBIG: 413,
    errno.EISDIR: 409,
    errno.ENOTEMPTY: 409,
    errno.EEXIST: 412,
    errno.EILSEQ: 400,
}


def _as_dav_error(exc: BaseException) -> DAVError:
    if isinstance(exc, DAVError):
        return exc
    if isinstance(exc, StoreUnavailable):
        log.error("state store unavailable: %s", exc)
        return DAVError(503, add_headers=[("Retry-After", "5")])
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return DAVError(_OS_ERRORS[exc.errno])
    if isinstance(exc, ValueError) and "null" in str(exc).lower():
        return DAVError(400)  # an embedded NUL byte in a path
    log.error("internal error", exc_info=exc)
    return DAVError(HTTP_INTERNAL_ERROR)


class ErrorPages(BaseMiddleware):
    def __init__(self, wsgidav_app: Any, next_app: Callable[..., Iterable[bytes]], config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        captured = util.SubAppStartResponse()
        started = False
        try:
            app_iter = self.next_app(environ, captured)
            try:
                for chunk in app_iter:
                    if not started:
                        start_response(captured.status, captured.response_headers, captured.exc_info)
                        started = True
                    yield chunk
            finally:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            if not started:
                start_response(captured.status, captured.response_headers, captured.exc_info)
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clean answer
            if started:
                raise  # the status line is out: only the connection can signal the failure now
            error = _as_dav_error(exc)
        status = get_http_status_string(error)
        if error.value in (HTTP_NOT_MODIFIED, HTTP_NO_CONTENT):
            start_response(status, [("Content-Length", "0")])
            yield b""
            return
        if error.err_condition:
            ctype, body = "application/xml; charset=utf-8", util.to_bytes(error.err_condition.as_string())
        else:
            ctype, body = "text/plain; charset=utf-8", (status + "\n").encode("utf-8")
        if error.value >= 500 and error.value != 507:
            log.warning("%s %s answered %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), status)
        if environ.get("REQUEST_METHOD") == "HEAD" or error.add_body is False:
            body = b""  # a HEAD answer has no body: one would be read as the next response
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *(error.add_headers or [])]
        start_response(status, headers)
        yield body
