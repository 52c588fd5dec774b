"""The skeleton of every HTML page the server renders for a browser: the step-up page
(stepup.py), the refusal and error pages (guard.py, error_pages.py) and the listing.

One look and one set of rules for all of them:

* a ``<meta name=viewport>`` and a layout that works from 360 px wide up;
* plain words: what happened, and a link to where the user can go next;
* times as ``<time datetime="…Z" title="… UTC">… UTC</time>``, turned into the browser's
  local time by :data:`LOCAL_TIME_SCRIPT` (UTC stays when the script does not run);
* no script but the server's own: every page keeps ``default-src 'none'``, and a script
  the server ships is inline and allowed by the SHA-256 of its exact text
  (:func:`script_csp`, CSP Level 3 §8.4 "hash-source"), never ``'self'`` (which would
  also allow a user's uploaded ``.js`` from this origin) nor ``'unsafe-inline'``.

:func:`wants_html` decides which requests get these pages: browser navigations. Every
other client (WebDAV clients, curl, rclone, a page's own fetch) keeps the short text
answers.
"""

from __future__ import annotations

import base64
import hashlib
import html
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .content_safety import FORM_PAGE_HEADERS, replace_headers

__all__ = [
    "LOCAL_TIME_SCRIPT", "STYLE", "html_headers", "page_bytes", "page_csp", "safe_next", "script_csp",
    "time_html", "wants_html",
]

#: One style for every page: readable at 360 px (no fixed widths, long names wrap).
STYLE = (
    "*{box-sizing:border-box}"
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222;"
    "line-height:1.45;overflow-wrap:anywhere}"
    "h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.15rem;margin-top:2rem}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem}dt{color:#555}dd{margin:0}"
    "@media (max-width:30rem){dl{grid-template-columns:1fr;gap:.1rem}dd{margin-bottom:.6rem}}"
    "label{display:block;margin:.9rem 0 .25rem;font-weight:600}"
    "input[type=password],input[type=text]{width:100%;padding:.6rem;font-size:1.05rem;border:1px solid #999;"
    "border-radius:4px}"
    "button,.button{display:inline-block;margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;border-radius:4px;"
    "border:1px solid #2a5db0;background:#2f6fd6;color:#fff;text-decoration:none;cursor:pointer}"
    "button.quiet{background:#fff;color:#2a5db0}"
    ".ok,.err,.note{padding:.7rem 1rem;border-radius:4px}"
    ".ok{background:#e6f4ea}.err{background:#fce8e6}.note{background:#f3f5f8}"
    "details{margin-top:.2rem;color:#555;font-size:.92rem}summary{cursor:pointer}"
    ".links{margin-top:1.5rem}.links a{display:inline-block;margin:.9rem 1.2rem 0 0}"
    "code{font-size:.92rem}"
)

#: Shows every ``<time datetime>`` in the browser's own time zone and locale. Kept
#: byte-for-byte as hashed: any edit changes the hash :func:`script_csp` computes.
LOCAL_TIME_SCRIPT = (
    'for(const t of document.querySelectorAll("time[datetime]")){'
    'const d=new Date(t.getAttribute("datetime"));'
    'if(!isNaN(d))t.textContent=d.toLocaleString([],{dateStyle:"medium",timeStyle:"short"});}'
)

#: The Content-Security-Policy of a page without script: inline style only, forms post
#: only to this origin, no framing, no <base>.
_BASE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def script_csp(source: str) -> str:
    """The CSP hash-source allowing exactly the inline script ``source`` (its text between
    ``<script>`` and ``</script>``): ``'sha256-<base64>'`` of its UTF-8 bytes."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def page_csp(scripts: Iterable[str] = ()) -> str:
    """The page policy, with ``script-src`` allowing each of ``scripts`` by hash (none: no script)."""
    hashes = " ".join(script_csp(s) for s in scripts)
    return f"{_BASE_CSP}; script-src {hashes}" if hashes else _BASE_CSP


def html_headers(body: bytes, *, scripts: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Headers of a page: content type and length, and content_safety.FORM_PAGE_HEADERS
    (no-store, no framing, nosniff, same-origin referrer, HSTS) with the policy of
    :func:`page_csp`."""
    return replace_headers(
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *FORM_PAGE_HEADERS],
        [("Content-Security-Policy", page_csp(scripts))],
    )


def page_bytes(title: str, body_html: str, *, scripts: Iterable[str] = ()) -> bytes:
    """A whole page: ``title`` is text (escaped here); ``body_html`` is markup the caller
    escaped; each of ``scripts`` is appended as an inline ``<script>`` (list the same ones
    in :func:`html_headers`)."""
    tail = "".join(f"<script>{s}</script>" for s in scripts)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"{body_html}{tail}</body></html>"
    ).encode()


def time_html(stamp: float) -> str:
    """A POSIX time as ``<time>``: UTC as text and tooltip, local time once the script runs."""
    moment = datetime.fromtimestamp(stamp, UTC)
    shown = moment.strftime("%Y-%m-%d %H:%M UTC")
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    full = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{iso}" title="{full}">{shown}</time>'


def _accept_quality(accept: str, wanted: str) -> tuple[float, float]:
    """(q of ``wanted`` as listed by name, highest q of anything else) in an Accept header
    (RFC 9110 §12.5.1); -1 where absent. Malformed q values count as 0."""
    mine, other = -1.0, -1.0
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # NaN and out-of-range values too
                    q = 0.0
        if media.lower() == wanted:
            mine = max(mine, q)
        elif media:
            other = max(other, q)
    return mine, other


def wants_html(environ: Mapping[str, Any]) -> bool:
    """Whether the request is a browser navigation that should get an HTML page.

    ``Sec-Fetch-Dest`` decides when present (Fetch Metadata): ``document`` (or a frame)
    yes, anything else (a page's fetch, an image) no. Without it, ``Accept`` must name
    ``text/html`` with a q above 0 and no lower than any other type; ``*/*`` alone
    (curl, WebDAV clients) is not a preference for HTML."""
    dest = str(environ.get("HTTP_SEC_FETCH_DEST") or "").strip().lower()
    if dest:
        return dest in ("document", "iframe", "frame")
    mine, other = _accept_quality(str(environ.get("HTTP_ACCEPT") or ""), "text/html")
    return mine > 0 and mine >= other


def _forbidden_char(c: str) -> bool:
    """Controls, format characters (bidi overrides, zero widths), separators and the
    backslash (which WHATWG URL parsing reads as ``/`` in special schemes)."""
    return c == "\\" or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") or (
        c != " " and unicodedata.category(c) == "Zs"
    )


def safe_next(value: str | None) -> str | None:
    """A ``next`` path to link back to, or None when it is not a same-origin path.

    ``value`` is the decoded path (what ``parse_qs`` gives). Accepted only when it starts
    with exactly one ``/`` (``//host`` is scheme-relative: another origin), holds no
    backslash (``/\\host`` is read as ``//host``), no control, format or line-separator
    character (a tab or newline is dropped by URL parsers, turning ``/\\t/host`` into
    ``//host``), and is at most 2048 characters. Returns the href to use: ``value``
    percent-encoded, so the href cannot hold ``:``, a quote or markup."""
    if not value or len(value) > 2048 or not value.startswith("/") or value.startswith("//"):
        return None
    if any(_forbidden_char(c) for c in value):
        return None
    return quote(value, safe="/")
