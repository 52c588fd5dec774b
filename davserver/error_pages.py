"""Error answers that say what went wrong and nothing about the server.

WsgiDAV's ErrorPrinter puts its version, the server time and the error's
context text into HTML error pages. Here an error is its status line, or the
RFC 4918 precondition XML that clients act on; details go to the log only.

WsgiDAV writes the same HTML page, with ``WsgiDAV/<version>`` and the server
time in it, as the body of the answers it *returns* rather than raises: every
``util.send_status_response`` (util.py:1256, through
``DAVError.get_response_page``, dav_error.py:249) — the 201 of PUT, MKCOL,
COPY and MOVE, a single error of COPY/MOVE/DELETE (request_server.py:189).
The only HTML a request below this middleware may answer with besides those
pages is a user's file or the folder listing, both a 200/206 of GET or HEAD;
so every other HTML body is such a page and is replaced by the status line.
Every body written here carries the headers of content_safety.py.

A browser navigation (browser_pages.wants_html) gets, for 401, 403, 404, 409, 423, 503
and 507, a small page saying in plain words what happened with a link to the share
or the root (:func:`browser_error_page`; the guard uses it for its refusals too); every
other client keeps the status line as text, byte for byte.
"""

from __future__ import annotations

import html
import http
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import (
    ERROR_DESCRIPTIONS,
    HTTP_INTERNAL_ERROR,
    HTTP_NO_CONTENT,
    HTTP_NOT_MODIFIED,
    DAVError,
    get_http_status_string,
)

from .browser_pages import html_headers, page_bytes, wants_html
from .content_safety import SAFETY_HEADERS, replace_headers
from .request_context import request_context
from .sharefs import os_error_status
from .stepup import PREFIX
from .store.base import StoreUnavailable
from .upstream import BaseMiddleware

__all__ = ["BROWSER_PAGE_STATUSES", "ErrorPages", "browser_error_page"]

log = logging.getLogger("davserver.errors")

# WsgiDAV writes every status line, ours and the ones inside 207 bodies, from one table
# (dav_error.py:294 get_http_status_string) that lacks 413, 414, 416, 503, 507 and more:
# those went out as "414 Status". The missing ones get the RFC 9110 §15 reason phrase
# (Python 3.11's HTTPStatus still has RFC 7231's for 413, 414 and 422).
_RFC9110_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}
for _status in http.HTTPStatus:
    _phrase = _RFC9110_PHRASES.get(_status.value, _status.phrase)
    ERROR_DESCRIPTIONS.setdefault(_status.value, f"{_status.value} {_phrase}")

#: What a browser is told, per status: (heading, explanation). Plain words; nothing
#: about the server or why a sign-in failed (the audit log has the reason).
_PLAIN: dict[int, tuple[str, str]] = {
    401: ("Sign-in needed",
          "The server did not accept the sign-in for this address. Check your user name and password; "
          "if they are right, your account may not open this folder."),
    403: ("Not allowed",
          "Your account may not do this here. The folder may be read-only for you, or the name is one "
          "the server does not accept."),
    404: ("Not found",
          "There is nothing at this address. It may have been moved, renamed or deleted."),
    409: ("Could not be done",
          "This conflicts with what is already there, for example the folder it should go into does not exist."),
    423: ("Locked",
          "Someone is editing this right now, so it is locked. Try again in a few minutes."),
    503: ("Temporarily unavailable",
          "The server cannot answer right now. Try again shortly."),
    507: ("No space left",
          "The server has no room for this. Delete files you no longer need, or ask the administrator."),
}
#: Statuses a browser gets a page for; any other keeps the text answer.
BROWSER_PAGE_STATUSES = frozenset(_PLAIN)
#: Shown when the certificate's account may open the share, the share needs a code from
#: it and no two-factor session is open (guard.py decides, and answers it 403 without a
#: Basic challenge so no password dialog hides it).
_CODE_NEEDED = (
    "A two-factor code is needed",
    "This folder needs a code from your authenticator app as well as your password. "
    "Enter both on the two-factor page; after that your password alone opens the folder for a while.",
)


def _way_back(path: str, share: str) -> tuple[str, str]:
    """(href, name) of the folder that holds ``path`` (decoded, ``/share/…``) in ``share``:
    where the user was before following a link that failed. The share's root when
    ``path`` is the root itself, directly in it, or not in the share at all."""
    root = f"/{share}/"
    inner = path[len(root):].rstrip("/") if path.startswith(root) else ""
    if "/" not in inner:
        return "/" + quote(share, safe="") + "/", share
    folder = inner.rsplit("/", 1)[0]
    return quote(root + folder + "/", safe="/"), folder.rsplit("/", 1)[-1]


def browser_error_page(status: int, *, path: str = "", share: str | None = None,
                       code_next: str | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """The page and its headers for a browser that got ``status`` (one of
    :data:`BROWSER_PAGE_STATUSES`; KeyError otherwise) at ``path`` (decoded, shown escaped).

    ``share``: the share the request was in and the account may read, linked as the way
    back; for a 404 the folder holding ``path`` in it (None: only the root is linked).
    ``code_next``: a code is needed (401 only):
    the page links to the step-up page with ``next`` = this path (decoded; encoded here).
    Headers: browser_pages.html_headers (no script)."""
    heading, text = _CODE_NEEDED if code_next is not None else _PLAIN[status]
    e = html.escape
    parts = [f"<h1>{e(heading)}</h1>", f"<p>{e(text)}</p>"]
    if path and status in (403, 404, 409, 423):
        parts.append(f"<p class=note>Address: <code>{e(path)}</code></p>")
    links = []
    if code_next is not None:
        target = quote(code_next, safe="/")
        links.append(f'<a class=button href="/{PREFIX}/?next={e(target)}">Enter a two-factor code</a>')
    if share:
        # A 404: the folder the missing name was in; otherwise (a 409's parent may be missing) the share.
        href, name = _way_back(path, share) if status == 404 else ("/" + quote(share, safe="") + "/", share)
        links.append(f'<a href="{e(href)}">Back to the folder {e(name)}</a>')
    links.append('<a href="/">All shares</a>')
    parts.append(f'<p class=links>{"".join(links)}</p>')
    body = page_bytes(heading, "".join(parts))
    return body, html_headers(body)


def _share_of(environ: dict[str, Any]) -> str | None:
    """The share the guard allowed this request in (its name), if any."""
    share = request_context(environ).share
    name = getattr(share, "name", None)
    return name if isinstance(name, str) else None


def _browser_answer(environ: dict[str, Any], code: int, headers: list[tuple[str, str]]) -> tuple[
        list[tuple[str, str]], bytes] | None:
    """The HTML page in place of an error answer for a browser navigation, or None."""
    if code not in BROWSER_PAGE_STATUSES or not wants_html(environ):
        return None
    # WsgiDAV's routing moved the share's mount point to SCRIPT_NAME. PEP 3333 makes the path
    # Latin-1 text of UTF-8 bytes, but WsgiDAV's provider has re-decoded PATH_INFO to text by
    # the time an error comes back: a path that is not such Latin-1 text is used as it is.
    wsgi_path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    try:
        path = wsgi_path.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        path = wsgi_path
    body, page_headers = browser_error_page(code, path=path, share=_share_of(environ))
    if environ.get("REQUEST_METHOD") == "HEAD":
        body = b""
        page_headers = replace_headers(page_headers, [("Content-Length", "0")])
    return replace_headers(headers, page_headers), body


def _as_dav_error(exc: BaseException, environ: dict[str, Any]) -> DAVError:
    """The answer for an exception that escaped WsgiDAV while serving ``environ``. An
    OSError gets sharefs.os_error_status's status for its errno and the request's method
    and ``Overwrite`` (the one table fs.py, fastpath.py and copymove.py use); an errno
    a client cannot cause is a 500 with the traceback logged."""
    if isinstance(exc, DAVError):
        return exc
    if isinstance(exc, StoreUnavailable):
        log.error("state store unavailable: %s", exc)
        return DAVError(503, add_headers=[("Retry-After", "5")])
    if isinstance(exc, OSError):
        overwrite = str(environ.get("HTTP_OVERWRITE", "T")).upper() != "F"
        found = os_error_status(exc.errno, str(environ.get("REQUEST_METHOD", "")), overwrite=overwrite)
        if found is not None:
            log.info("%s %s failed: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc)
            return DAVError(found[0])
    if isinstance(exc, ValueError) and "null" in str(exc).lower():
        return DAVError(400)  # an embedded NUL byte in a path
    log.error("internal error", exc_info=exc)
    return DAVError(HTTP_INTERNAL_ERROR)


def _is_status_page(environ: dict[str, Any], status: str, headers: list[tuple[str, str]]) -> bool:
    """Whether an answer is one of WsgiDAV's HTML status pages (see the module's docstring)."""
    values = {k.lower(): v for k, v in headers}
    if values.get("content-type", "").split(";", 1)[0].strip().lower() != "text/html":
        return False
    if values.get("content-length", "").strip() == "0":
        return False  # OPTIONS * says text/html over an empty body
    code = status.split(" ", 1)[0]
    return not (environ.get("REQUEST_METHOD") in ("GET", "HEAD") and code in ("200", "206"))


def _status_answer(environ: dict[str, Any], status: str, headers: list[tuple[str, str]]) -> tuple[
        list[tuple[str, str]], bytes]:
    """The status line as a text/plain body, in place of a status page; other headers kept
    (a browser navigation gets the page of :func:`browser_error_page` instead)."""
    code = status.split(" ", 1)[0]
    page = _browser_answer(environ, int(code), headers) if code.isdigit() else None
    if page is not None:
        return page
    body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else (status + "\n").encode("utf-8")
    return replace_headers(headers, [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body))), *SAFETY_HEADERS]), body


class ErrorPages(BaseMiddleware):
    """Turns every exception into a clean answer and WsgiDAV's status pages into status lines."""

    def __init__(self, wsgidav_app: Any, next_app: Callable[..., Iterable[bytes]], config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, next_app, config)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        captured = util.SubAppStartResponse()
        started = False
        replacement: bytes | None = None

        def start() -> None:
            nonlocal replacement
            headers = captured.response_headers
            if _is_status_page(environ, captured.status, headers):
                headers, replacement = _status_answer(environ, captured.status, headers)
            start_response(captured.status, headers, captured.exc_info)

        try:
            app_iter = self.next_app(environ, captured)
            try:
                for chunk in app_iter:
                    if not started:
                        start()
                        started = True
                    if replacement is None:
                        yield chunk
            finally:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            if not started:
                start()
            if replacement is not None:
                yield replacement
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clean answer
            if started:
                raise  # the status line is out: only the connection can signal the failure now
            error = _as_dav_error(exc, environ)
        status = get_http_status_string(error)
        if error.value in (HTTP_NOT_MODIFIED, HTTP_NO_CONTENT):
            # content_safety.py gives a file's 304 the headers of its 200. A 304 has no
            # Content-Length: one of 0 would contradict the 200's (RFC 9110 §8.6).
            length = [] if error.value == HTTP_NOT_MODIFIED else [("Content-Length", "0")]
            start_response(status, [*length, *(error.add_headers or [])])
            yield b""
            return
        page = _browser_answer(environ, error.value, list(error.add_headers or []))
        if page is not None:
            start_response(status, page[0])
            yield page[1]
            return
        if error.err_condition:
            ctype, body = "application/xml; charset=utf-8", util.to_bytes(error.err_condition.as_string())
        else:
            ctype, body = "text/plain; charset=utf-8", (status + "\n").encode("utf-8")
        if error.value >= 500 and error.value != 507:
            log.warning("%s %s answered %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), status)
        if environ.get("REQUEST_METHOD") == "HEAD" or error.add_body is False:
            body = b""  # a HEAD answer has no body: one would be read as the next response
        headers = replace_headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                                   *(error.add_headers or [])], SAFETY_HEADERS)
        start_response(status, headers)
        yield body
