"""Cross-site request forgery protection for everything a browser may write: the
step-up and renewal forms (stepup.py) and the folder listing's upload, new folder,
rename and delete (listing.py, which send PUT/MKCOL/MOVE/DELETE through the guard).

Two checks, both needed for a browser's unsafe request:

* :func:`browser_origin_refusal`: the request comes from our own origin (``Origin`` and
  ``Sec-Fetch-Site``, Fetch Metadata; RFC 6454 §7 for ``Origin``);
* :class:`CsrfTokens`: it carries a token the server issued to a page shown to the same
  certificate (an HMAC of the certificate's fingerprint and the issue time), so another
  site cannot make the user's browser write even where a browser sends no ``Origin``.

A request with neither ``Origin`` nor any ``Sec-Fetch-*`` header is not a browser's
(WebDAV clients, curl, rclone): :func:`is_browser` says so, and the guard leaves it alone.
A browser cannot drop these headers from a cross-site request, and another site cannot
read a page of ours to learn a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from .auth.identity import CertIdentity

__all__ = [
    "HEADER", "SAFE_METHODS", "TOKEN_TTL_SECONDS", "CsrfTokens", "browser_origin_refusal", "is_browser",
]

#: The request header the listing's script sends its token in (WSGI: ``HTTP_X_DAVSERVER_CSRF``).
HEADER = "X-Davserver-CSRF"
#: How long an issued token is accepted, in seconds, unless told otherwise (the setting
#: ``auth.browser_token_seconds``; a listing left open longer asks the user to reload it).
TOKEN_TTL_SECONDS = 3600
#: Methods that change nothing (RFC 9110 §9.2.1; PROPFIND: RFC 4918 §9.1). Every other
#: method, COPY and unknown ones included, is unsafe and needs the browser checks.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "TRACE"})


class CsrfTokens:
    """Tokens bound to a client certificate: ``"<issued>.<hex HMAC-SHA256>"``.

    ``key`` is the HMAC key: the server passes its state store's shared secret (guard.py,
    StateStore.shared_secret), so a token issued by one worker process or node is valid on
    every other; when None, 32 random bytes of this process only (tokens then die with
    the process and are refused by every other one); ``ttl_seconds`` is how long a token
    is valid after issue; ``clock`` gives POSIX seconds (tests move it).
    One instance per server, shared by the step-up page and the listing.
    """

    def __init__(self, key: bytes | None = None, ttl_seconds: int = TOKEN_TTL_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = secrets.token_bytes(32) if key is None else key
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, cert: CertIdentity, issued: int | None = None) -> str:
        """A token for pages shown to ``cert``, issued now (or at ``issued``, POSIX seconds)."""
        issued = int(self._clock()) if issued is None else issued
        mac = hmac.new(self._key, f"{cert.fingerprint}:{issued}".encode(), hashlib.sha256).hexdigest()
        return f"{issued}.{mac}"

    def valid(self, cert: CertIdentity, token: str) -> bool:
        """Whether ``token`` was issued by this instance to ``cert`` within ``ttl_seconds``.

        Any text may arrive here: only ASCII digits make the time (``int()`` also reads
        Arabic-Indic digits) and bytes are compared (`hmac.compare_digest` raises
        TypeError on non-ASCII str), so a forged token is refused, never an exception.
        A token from the future (a clock set back) is refused too."""
        issued, _, _mac = token.partition(".")
        if not (issued.isascii() and issued.isdigit()) or len(issued) > 12:
            return False
        age = self._clock() - int(issued)
        if age > self.ttl_seconds or age < -60:
            return False
        return hmac.compare_digest(self.issue(cert, int(issued)).encode(), token.encode("utf-8", "replace"))


    def request_refusal(self, environ: Mapping[str, Any], cert: CertIdentity | None) -> str | None:
        """Why this request must be refused as forged, or None: the one check of the guard.

        Only an unsafe method (not in :data:`SAFE_METHODS`) from a browser (:func:`is_browser`)
        is checked: it must come from our origin (:func:`browser_origin_refusal`) and carry
        a token valid for ``cert`` in the ``X-Davserver-CSRF`` header. Returns a short phrase
        for the log."""
        if environ.get("REQUEST_METHOD", "") in SAFE_METHODS or not is_browser(environ):
            return None
        refused = browser_origin_refusal(environ)
        if refused:
            return refused
        token = environ.get("HTTP_X_DAVSERVER_CSRF", "")
        if not token:
            return f"no {HEADER} header"
        if cert is None or not self.valid(cert, token):
            return f"{HEADER} not valid for this certificate"
        return None


def is_browser(environ: Mapping[str, Any]) -> bool:
    """Whether the request carries what only browsers send: ``Origin`` or a ``Sec-Fetch-*`` header."""
    return bool(environ.get("HTTP_ORIGIN")) or any(key.startswith("HTTP_SEC_FETCH_") for key in environ)


def browser_origin_refusal(environ: Mapping[str, Any]) -> str | None:
    """Why a request does not come from our own origin, or None when it does (or says nothing).

    ``Sec-Fetch-Site`` must be ``same-origin`` or ``none`` (the user's own navigation);
    ``Origin``, when present, must be ``https://<Host>`` exactly (so ``null``, another
    port or scheme are refused). Returns a short phrase for the log."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {site}"
    origin = environ.get("HTTP_ORIGIN")
    if origin and origin != f"https://{environ.get('HTTP_HOST', '')}":
        return "Origin of another site"
    return None
