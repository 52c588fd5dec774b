"""Headers that keep a user's file from acting as a page of the server's origin.

Every account's files come from the one origin at which each browser also
holds its client certificate and Basic credentials. A file a browser renders
as a document there (HTML, XHTML, SVG, XML with a stylesheet, an MHTML archive
…) would run its script as a page of the server: its ``fetch`` reads whatever
the *reader's* certificate and password reach — another account's
TOTP-protected files included — and writes them where its author can read
them. So every answer that passes below the folder listing carries:

- ``X-Content-Type-Options: nosniff`` — the browser uses the type we send and
  never sniffs HTML out of a ``.txt`` or an unknown type;
- ``Content-Security-Policy: sandbox; default-src 'none'; frame-ancestors 'none'``
  — even if rendered, the document gets a unique opaque origin (no cookies,
  credentials or same-origin ``fetch``), no script, no plugins, no subresources,
  and cannot be framed;
- ``Cross-Origin-Resource-Policy: same-origin`` — another site cannot pull a
  file in as ``<script>`` or ``<img>`` with the reader's certificate;

and a GET or HEAD answer whose ``Content-Type`` (the one actually sent, not
the extension) is not on :data:`INLINE_TYPES` also carries
``Content-Disposition: attachment`` with the file's name (RFC 6266 §4, the
non-ASCII name as ``filename*`` per RFC 8187 §3.2): the browser saves it
instead of rendering it. The allow-list holds only types a browser shows as a
passive document and that still display in the sandbox — plain text and
raster images. Everything else is a download: audio and video (see
:data:`INLINE_TYPES`), the active types (``text/html``, ``application/xhtml+xml``,
``image/svg+xml``, ``text/xml`` and ``application/xml``, ``multipart/related``,
``message/rfc822``, ``text/xsl``), PDF (a viewer with a script engine of
its own), and every type we cannot vouch for, including a missing or
malformed ``Content-Type``.

The middleware sits between :class:`~davserver.listing.Listing` (which answers
folder pages with its own strict policy) and WsgiDAV's request resolver, so it
sees both GET paths: the short one (``fastpath.fast_get``, called from
``ShareProvider.custom_request_handler``) and WsgiDAV's own
(``request_server.py`` ``_send_resource``), and a ``304 Not Modified``, which
WsgiDAV raises as a ``DAVError`` from inside ``_send_resource``
(``util.py`` ``evaluate_http_conditionals``): a 304 updates the headers a cache
stored with the 200 (RFC 9111 §4.3.4), so it carries the same ones.

A file's GET or HEAD answer — its 200, 206 and 304 on both paths — also
carries :data:`CACHE_HEADERS`: ``Cache-Control: private, no-cache``. Without
it a browser assigns its own freshness lifetime from ``Last-Modified``
(RFC 9111 §4.2.2; REDbot flags it) and may show a file that a WebDAV client has
since changed; ``no-cache`` makes it revalidate every reuse, which the ETag
turns into a 304. ``private``: each answer depends on the reader's client
certificate, so no shared cache may store it (RFC 9111 §5.2.2.7). A GET's
error (a 404 is cacheable by default, RFC 9110 §15.1) has no validator to
revalidate with, so it carries :data:`NO_STORE_HEADERS` instead, as the
folder listing and its redirect do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import HTTP_NOT_MODIFIED, DAVError

from .upstream import BaseMiddleware

__all__ = [
    "CACHE_HEADERS", "FORM_PAGE_HEADERS", "INLINE_TYPES", "NO_STORE_HEADERS", "SAFETY_HEADERS", "ContentSafety",
    "content_disposition", "file_headers",
]

#: Headers on every answer below the listing (and on the error answers of error_pages.py).
SAFETY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "sandbox; default-src 'none'; frame-ancestors 'none'"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

#: Headers of the server's own HTML pages with forms (the step-up and renewal page,
#: stepup.py; the enrolment pages, enrolment_pages.py): never stored, no script, no
#: framing, forms post only to themselves, HSTS. Referrer-Policy is same-origin, not
#: no-referrer: under no-referrer the browser's own form POST carries `Origin: null`,
#: which the CSRF checks must refuse; and a link to the client guide never carries an
#: enrolment token in a Referer. No Pragma: it is a request field (RFC 9111 §5.4).
FORM_PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Strict-Transport-Security", "max-age=31536000"),
)

#: The cache policy of a file's GET/HEAD answer, which has validators (see the module docstring).
CACHE_HEADERS: tuple[tuple[str, str], ...] = (("Cache-Control", "private, no-cache"),)
#: The cache policy of a GET/HEAD answer without validators: an error, a redirect, a listing.
NO_STORE_HEADERS: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)

#: Media types (lower case, without parameters) a browser shows inline as a passive
#: document, and that still display under the sandbox. Anything else is sent as an
#: attachment. Audio and video are not here: Chromium's media document loads the file
#: again from the sandbox's opaque origin, which the policy (media-src) and then CORS
#: refuse, so the player stayed empty; as a download they play.
INLINE_TYPES = frozenset(
    {
        "text/plain",
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
        "image/vnd.microsoft.icon", "image/x-icon",
    }
)

#: RFC 8187 §3.2.1 attr-char besides ALPHA / DIGIT (``quote`` keeps ``_.-~`` itself).
_ATTR_CHAR = "!#$&+^`|"


def _renders_inline(content_type: str | None) -> bool:
    """Whether a browser shows an answer of this Content-Type as a passive document.

    One media type, its essence (without parameters, lower case) on the list. A
    value with a comma is refused: Fetch's "extract a MIME type" splits the header
    at commas and takes the last type (``text/plain;,text/html`` is HTML).
    """
    if content_type is None or "," in content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in INLINE_TYPES


def content_disposition(name: str) -> str:
    """``attachment`` with the file's name, for a download that keeps its name.

    ``name`` is the last segment of the path (any Unicode). The result is
    ``attachment; filename="<fallback>"; filename*=UTF-8''<name percent-encoded>``
    (RFC 6266 §4.1 and appendix D): browsers use ``filename*`` (RFC 8187 §3.2);
    the fallback replaces every character outside printable ASCII, and ``"``,
    ``\\`` and ``%`` (which some user agents decode), by ``_``. A name that is not
    valid Unicode (a lone surrogate) has those characters encoded as ``?``.
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name) or "download"
    encoded = quote(name, safe=_ATTR_CHAR, encoding="utf-8", errors="replace")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def file_headers(headers: list[tuple[str, str]], path: str) -> list[tuple[str, str]]:
    """A GET/HEAD answer's headers with :data:`SAFETY_HEADERS`, :data:`CACHE_HEADERS` and,
    for a type not on :data:`INLINE_TYPES`, ``Content-Disposition: attachment`` named after ``path``'s
    last segment. Headers of the same names already present are replaced."""
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    extra = [*SAFETY_HEADERS, *CACHE_HEADERS]
    if not _renders_inline(content_type):
        extra.append(("Content-Disposition", content_disposition(path.rstrip("/").rsplit("/", 1)[-1])))
    return replace_headers(headers, extra)


def replace_headers(headers: list[tuple[str, str]], extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without those named in ``extra``, followed by ``extra``."""
    extra = list(extra)
    names = {k.lower() for k, _ in extra}
    return [(k, v) for k, v in headers if k.lower() not in names] + extra


class ContentSafety(BaseMiddleware):
    """Adds the headers above to every answer of the request resolver below it."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        is_file_method = environ.get("REQUEST_METHOD") in ("GET", "HEAD")

        def safe_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if is_file_method:
                headers = file_headers(headers, environ.get("PATH_INFO", ""))
            else:
                headers = replace_headers(headers, SAFETY_HEADERS)
            return start_response(status, headers, exc_info)

        if not is_file_method:
            return self.next_app(environ, safe_start_response)
        try:
            app_iter = self.next_app(environ, safe_start_response)
        except DAVError as exc:
            self._on_error(environ, exc)
            raise
        return self._iterate(environ, app_iter)

    def _iterate(self, environ: dict[str, Any], app_iter: Iterable[bytes]) -> Iterator[bytes]:
        # WsgiDAV's GET is a generator: its DAVErrors (304 among them) come out while iterating.
        try:
            yield from app_iter
        except DAVError as exc:
            self._on_error(environ, exc)
            raise
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _on_error(environ: dict[str, Any], exc: DAVError) -> None:
        """A file's 304 gets the headers its 200 had, its other errors ``no-store``;
        error_pages.py writes them."""
        if exc.value == HTTP_NOT_MODIFIED:
            path = environ.get("PATH_INFO", "")
            sent = [("Content-Type", util.guess_mime_type(path, environ.get("wsgidav.config")))]
            headers = file_headers(sent, path)[1:]
            exc.add_headers = replace_headers(list(exc.add_headers or []), headers)
        else:
            exc.add_headers = replace_headers(list(exc.add_headers or []), NO_STORE_HEADERS)
