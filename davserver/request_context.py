"""What the layers of one request tell each other, typed, under one environ key.

The guard (guard.py) is the first layer that knows a request: it creates one
:class:`RequestContext` (:func:`begin`) before anything else runs, fills in the parsed
Destination and, once it allowed the request, the access decision's facts; every later
layer (limits.py, dav.py, listing.py, error_pages.py, fs.py, copymove.py, oc_compat.py,
store/davstate.py, http1.py's body) reads them from the same object through
:func:`request_context` and never parses a header again. A layer after the decision that
still refuses records its reason here (:meth:`RequestContext.refuse`), and the guard's
audit line says deny with it.

The one upstream boundary is the connection's certificate: cheroot copies the TLS
adapter's ``ssl_env`` (tls.py ``connection_environ``) into every request's environ, so
the parsed certificate arrives at ``tls.CERT_ENVIRON_KEY``; :func:`begin` moves it into
the context, here and nowhere else. WsgiDAV's own keys (``wsgidav.auth.user_name``,
``wsgidav.auth.realm``) stay where WsgiDAV reads them.

Caches private to one module (fastpath.py's PROPFIND body, fs.py's folder scans,
oc_compat.py's parsed X-OC-Mtime, store/davstate.py's PROPPATCH batches) keep their own
private keys: nothing else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .tls import CERT_ENVIRON_KEY

if TYPE_CHECKING:
    from .auth.identity import CertIdentity
    from .config import ShareConfig
    from .csrf import CsrfTokens
    from .target import Target

__all__ = ["CONTEXT_KEY", "RequestContext", "begin", "request_context"]

#: The one environ key under which a request's :class:`RequestContext` lives.
CONTEXT_KEY = "davserver.request"


@dataclass(eq=False)
class RequestContext:
    """The facts one request's layers share; one object per request (identity matters:
    ``eq=False``). Every field has the value a layer that ran without the guard sees."""

    #: The client certificate of the connection (tls.py), None without one.
    cert: CertIdentity | None = None
    #: The request target, parsed once by the guard (target.py); None before it did or
    #: when the guard refused it as unparsable.
    target: Target | None = None
    #: A COPY or MOVE's Destination, parsed once by the guard (target.parse_destination);
    #: fs.py rewrites it to the names on disk. None for other methods.
    destination: Target | None = None
    #: The account the guard allowed the request for ("" until it did).
    account: str = ""
    #: The factors the request proved beyond the certificate (``("password", "totp")``).
    factors: tuple[str, ...] = ()
    #: POSIX time (seconds, UTC) a two-factor grant in use ends, None without one.
    grant_expires: float | None = None
    #: The share the guard allowed the request in; None for the root or before the decision.
    share: ShareConfig | None = None
    #: Whether the account has a TOTP secret (the listing links the step-up page).
    totp_enrolled: bool = False
    #: The server's CSRF tokens, for a GET or HEAD the listing may answer (listing.py).
    csrf: CsrfTokens | None = None
    #: Whether access.decide allows a PUT here (the listing offers its write controls).
    may_write: bool = False
    #: Whether the certificate may be renewed now (renewal.Renewals.due; the listing's banner).
    renew_due: bool = False
    #: The shares the account may read (dav.py's root listing shows only these).
    visible_shares: frozenset[str] = field(default_factory=frozenset)
    #: Whether a PUT stored the client's X-OC-Mtime (fs.py; its answer says so: oc_compat.py).
    mtime_accepted: bool = False
    #: The reason (an access.Refusal value) a layer after the decision refused what the
    #: decision allowed; the guard's audit line says deny with it. None: none refused.
    refusal: str | None = None

    def refuse(self, reason: str) -> None:
        """Record ``reason`` (an access.Refusal) as the request's refusal, replacing any
        earlier one: the layer that answers last says why."""
        self.refusal = reason

    def refuse_first(self, reason: str) -> bool:
        """Record ``reason`` unless a refusal is already recorded; True when this was the
        first (store/davstate.py tells the reason only once per request)."""
        if self.refusal is not None:
            return False
        self.refusal = reason
        return True


def begin(environ: dict[str, Any]) -> RequestContext:
    """Create the request's context and store it in ``environ`` (replacing any): the
    guard calls this once, first thing. The certificate moves here from the upstream
    boundary key ``tls.CERT_ENVIRON_KEY`` (cheroot's copy of the connection's ssl_env)."""
    context = RequestContext(cert=environ.get(CERT_ENVIRON_KEY))
    environ[CONTEXT_KEY] = context
    return context


def request_context(environ: dict[str, Any]) -> RequestContext:
    """The request's context, as :func:`begin` made it; a layer called without the guard
    (a unit test, a body read after a request the guard never saw) gets a fresh one, stored
    so every later reader sees the same."""
    context: RequestContext | None = environ.get(CONTEXT_KEY)
    return context if context is not None else begin(environ)
