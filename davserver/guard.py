"""The outermost WSGI layer: every request is authenticated and authorised here,
and audited when its response ends. There is no route around it.

The guard is the first layer that knows a request: it creates its context
(request_context.py) with the parsed Destination and, once allowed, the decision's
facts, which every later layer reads from there. Counting the body and the answer and
the upload-rate deadline are metering.py's.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from . import access
from .access import Refusal, refusal_for_status
from .accounts import Account, AccountsWatcher
from .audit import AuditLog
from .auth.core import Authenticator, Credentials, Decision
from .auth.identity import CertIdentity
from .browser_pages import wants_html
from .config import Config, ShareConfig
from .csrf import CsrfTokens
from .error_pages import browser_error_page
from .framing import has_body
from .issuance import renew as renew_certificate
from .metering import AuditedResponse, BodyTimeout, CountedInput, body_deadline
from .renewal import Renewals
from .request_context import RequestContext, begin, request_context
from .revocation import RevocationList
from .stepup import PREFIX as STEPUP_PREFIX
from .stepup import StepUpPage
from .store.base import StateStore, StoreUnavailable
from .target import BadTarget, Target, parse_destination, parse_request_target, parse_wsgi_path
from .watchdog import current_connection

#: The store's shared secret (StateStore.shared_secret) that keys the CSRF tokens (csrf.py).
CSRF_KEY_NAME = "csrf"

__all__ = ["Guard", "parse_basic"]

StartResponse = Callable[..., Any]
log = logging.getLogger("davserver.guard")

_REALM = 'Basic realm="davserver", charset="UTF-8"'
#: The methods of a browser navigation: only these get the two-factor guide page as a
#: 403 without a Basic challenge (Guard._refusal_page); every other method keeps the 401.
_NAVIGATIONS = ("GET", "HEAD")

#: Refusals of a sign-in by an account the certificate maps to (auth/core.py): on a share
#: that needs a code, a browser is sent to the step-up page for each of them alike.
_SIGN_IN_FAILURES = frozenset({
    Refusal.NO_CREDENTIALS, Refusal.BAD_PASSWORD, Refusal.BAD_OTP, Refusal.OTP_REPLAYED, Refusal.OTP_REQUIRED,
    Refusal.USER_MISMATCH, Refusal.BAD_AUTH_HEADER, Refusal.LOCKED,
})

#: What OPTIONS answers, the same for every path of a share whatever exists there
#: (an answer that differs between an existing and a missing file would tell a
#: certificate holder without a password what is in the share).
_OPTIONS_READ = ("1", "OPTIONS, HEAD, GET, PROPFIND")
_OPTIONS_WRITE = ("1,2", "OPTIONS, HEAD, GET, PROPFIND, PROPPATCH, PUT, DELETE, MKCOL, COPY, MOVE, LOCK, UNLOCK")


def _decode_credentials(raw: bytes) -> str:
    """The user-pass octets of Basic as text. UTF-8 first: davserver's challenge says
    ``charset="UTF-8"`` (RFC 7617 §2.1). Octets that are not UTF-8 come from a client
    that ignores the parameter and encodes as ISO-8859-1 (RFC 7617 Appendix B.3 calls it
    historical practice; Windows' Mini-Redirector, OkHttp's default ``Credentials.basic``):
    they are read as Windows-1252, the superset WHATWG Encoding §4.2 reads for the label
    "iso-8859-1" (so 0x80 is €), and the five octets Windows-1252 leaves undefined as
    ISO-8859-1. No octet string is refused. A Latin-1 octet string that happens to be
    valid UTF-8 (e.g. ``Ã©``) is read as UTF-8: such passwords are not expected."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(
            raw[i : i + 1].decode("cp1252", errors="strict") if raw[i] not in _CP1252_UNDEFINED else chr(raw[i])
            for i in range(len(raw))
        )


#: Octets Windows-1252 does not define; read as ISO-8859-1 (the C1 control of that value).
_CP1252_UNDEFINED = frozenset((0x81, 0x8D, 0x8F, 0x90, 0x9D))


def parse_basic(header: str | None) -> Credentials | None:
    """Decode an Authorization header; anything odd is `malformed`, never an exception.
    The user-pass is UTF-8, or else Windows-1252/ISO-8859-1 (`_decode_credentials`);
    only bad base64 or a missing ``:`` is malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return Credentials(malformed=True)
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return Credentials(malformed=True)
    text = _decode_credentials(raw)
    user, sep, password = text.partition(":")
    if not sep:
        return Credentials(malformed=True)
    return Credentials(user=user, password=password)


def _raw_target(environ: dict[str, Any]) -> bytes | None:
    """The request target's bytes as they came on the request line, when the server kept them."""
    raw = environ.get("REQUEST_URI")
    if not isinstance(raw, str):
        return None
    try:
        return raw.encode("latin-1")
    except UnicodeEncodeError:
        return raw.encode("utf-8")


def _printable(raw: bytes | str) -> str:
    """A refused target for the audit log: its text where it decodes, escapes where not."""
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
    return data.decode("utf-8", "backslashreplace")[:2048]


def _has_body(environ: dict[str, Any]) -> bool:
    """Whether the request announced a body (which an early answer leaves unread)."""
    return has_body(environ)


def _body_timed_out(start_response: StartResponse) -> list[bytes]:
    """The 408 of a request whose body came too slowly (metering.BodyTimeout), closing
    the connection (its reading side is already shut)."""
    body = b"request body came too slowly\n"
    start_response("408 Request Timeout", [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]


class Guard:
    """The WSGI middleware in front of WsgiDAV (``app``): parses the request target and a
    COPY/MOVE Destination once (target.py; unparsable: 400/403), decides with the
    Authenticator and access.decide (401 with a Basic challenge, 403, 503 when the store is
    down), answers OPTIONS and the step-up pages itself, and writes one audit record per
    request when its response ends (bytes in and out, duration in seconds). ``clock``
    gives the aware UTC time of every decision. Raises StoreUnavailable at construction
    when ``store`` cannot give the CSRF key."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        config: Config,
        *,
        accounts: AccountsWatcher,
        revocations: RevocationList,
        audit: AuditLog,
        store: StateStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app = app
        self.config = config
        self.accounts = accounts
        self.revocations = revocations
        self.audit = audit
        self.clock = clock
        self.authenticator = Authenticator(
            config.identity,
            cache_seconds=config.auth.credential_cache_seconds,
            cache_max_seconds=config.auth.credential_cache_max_seconds,
            store=store,
            totp_config=config.totp,
            throttle=config.throttle,
            strip_domain=config.auth.strip_domain,
            # failure_key: the store's shared secret, one for every process and node (auth/core.py)
        )
        #: Renewal of the built-in CA's certificates by their holders (renewal.py).
        self.renewals = Renewals(
            config.home, store, renew_before_days=config.enrolment.renew_before_days,
            revoke_renewed=config.enrolment.revoke_renewed, renew=renew_certificate,
            form_bytes=config.enrolment.form_bytes,
        )
        #: One CSRF key per server: the step-up forms and the listing's writes (csrf.py).
        # Its key is the store's shared secret: a token one worker process or node issued is
        # valid on every other (raises StoreUnavailable when the store is down: no start).
        self.csrf = CsrfTokens(key=store.shared_secret(CSRF_KEY_NAME) if store is not None else None,
                               ttl_seconds=config.auth.browser_token_seconds)
        self.stepup = StepUpPage(self.authenticator, clock, self.renewals, self.csrf)

    # --- the decision -----------------------------------------------------------

    def _share(self, name: str) -> ShareConfig | None:
        return self.config.shares.get(name)

    def _decide(
        self, environ: dict[str, Any], target: Target, destination: Target | None, share: ShareConfig | None
    ) -> Decision:
        try:
            return self._decide_with_store(environ, target, destination, share)
        except StoreUnavailable as exc:
            # Fail closed: without the shared state (locks, grants, used codes) nobody gets in.
            log.error("refusing %s %s: %s", environ.get("REQUEST_METHOD"), target.path, exc)
            return Decision.deny(Refusal.STORE_UNAVAILABLE, status=503)

    def _decide_with_store(
        self, environ: dict[str, Any], target: Target, destination: Target | None, share: ShareConfig | None
    ) -> Decision:
        """Authenticate with the factors of every share the request touches (the target's
        and a COPY or MOVE Destination's: :func:`access.required_factors`), then
        :func:`access.decide` once for every resource the request touches. A factor missing
        for either end is refused with its reason (``otp_required``), the destination in
        the audit line."""
        method = environ.get("REQUEST_METHOD", "")
        cert = request_context(environ).cert
        shares = self.config.shares
        require = access.required_factors(method, target, destination, shares, self.config.default_require)
        # A browser's write without our origin and token is refused before any resource
        # rule (so even a reader's forged write says csrf); other clients are not checked.
        forged = self.csrf.request_refusal(environ, cert)
        if forged:
            log.info("refusing %s %s from a browser: %s", method, target.path, forged)
        return self.authenticator.decide(
            cert=cert,
            credentials=parse_basic(environ.get("HTTP_AUTHORIZATION")),
            accounts=self.accounts.current(),
            revoked=self.revocations.serials(),
            share=share,
            require=require,
            write=method not in access.READ_METHODS,
            now=self.clock(),
            peer=environ.get("REMOTE_ADDR", ""),
            access=lambda account: Refusal.CSRF if forged else access.decide(
                account, method, target, destination, shares),
        )

    # --- WSGI -------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        context = begin(environ)  # the request's one context: every later layer reads it
        method = environ.get("REQUEST_METHOD", "")
        raw = _raw_target(environ)
        try:
            if raw is not None:
                target, _query = parse_request_target(raw)
            else:
                target = parse_wsgi_path(environ.get("PATH_INFO", ""))
            destination = self._destination(environ, method)
        except BadTarget as exc:
            return self._refuse_unparsable(environ, start_response, exc, raw, started)
        # From here on every layer, WsgiDAV's routing included, sees the one parsed path.
        environ["PATH_INFO"] = target.wsgi_path
        context.target = target
        context.destination = destination
        path = target.path
        share_name = target.share or ""
        share = self._share(share_name)
        counted = CountedInput(environ.get("wsgi.input"), body_deadline(environ, self.config.limits, started),
                               on_cut=lambda: context.refuse(Refusal.REQUEST_TIMEOUT))
        environ["wsgi.input"] = counted
        if share_name == STEPUP_PREFIX and share is None:
            return self._stepup(environ, start_response, path, started, counted)
        decision = self._decide(environ, target, destination, share)
        status_seen = ["000"]

        def finish(sent: int, complete: bool) -> None:
            conn = current_connection()
            if conn is not None and getattr(conn, "watchdog", None) is not None:
                conn.watchdog.disarm(conn)
            self._record(environ, path, decision, share_name if share else None, status_seen[0],
                         counted.count, sent, started, complete, destination)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_seen[0] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info)

        if not decision.allowed:
            if decision.delay:
                time.sleep(decision.delay)  # growing delay: slows guessing without telling why
            return AuditedResponse(self._deny(environ, decision, recording_start_response), finish)
        account = decision.account
        assert account is not None
        if method == "OPTIONS":
            return AuditedResponse(self._options(environ, share, recording_start_response), finish)
        environ["wsgidav.auth.user_name"] = account.name
        environ["wsgidav.auth.realm"] = share_name if share else "/"
        context.account = account.name
        context.factors = decision.factors
        context.grant_expires = decision.grant_expires
        context.share = share
        context.totp_enrolled = account.totp_secret is not None
        if method in ("GET", "HEAD"):  # the listing offers write controls where this says yes
            context.csrf = self.csrf
            context.may_write = access.decide(account, "PUT", target, None, self.config.shares) is None
        cert = context.cert
        if cert is not None:
            now = self.clock()
            context.renew_due = self.renewals.due(cert, now)
            try:
                self.renewals.note_use(account, cert, now)  # revoke_renewed: the predecessor goes
            except (StoreUnavailable, OSError) as exc:
                log.error("renewal bookkeeping for %s: %s", account.name, exc)
        context.visible_shares = frozenset(
            name for name, s in self.config.shares.items() if s.may_read(account.name, account.groups)
        )
        try:
            body = self.app(environ, recording_start_response)
        except BodyTimeout:  # read above WsgiDAV's error pages (limits.py's chunked XML body)
            context.refuse(Refusal.REQUEST_TIMEOUT)
            body = _body_timed_out(recording_start_response)
        except Exception:
            finish(0, False)
            raise
        return AuditedResponse(body, finish)

    @staticmethod
    def _destination(environ: dict[str, Any], method: str) -> Target | None:
        """The Destination of a COPY or MOVE, parsed once (None for other methods)."""
        if method not in ("COPY", "MOVE"):
            return None
        value = environ.get("HTTP_DESTINATION")
        if value is None:
            raise BadTarget(Refusal.BAD_DESTINATION, "COPY and MOVE need a Destination header")
        return parse_destination(
            value, host=environ.get("HTTP_HOST", ""), scheme=environ.get("wsgi.url_scheme", "https")
        )

    def _refuse_unparsable(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        exc: BadTarget,
        raw: bytes | None,
        started: float,
    ) -> Iterable[bytes]:
        """400 (or 403) for a target or Destination that names nothing unambiguously."""
        log.info("refusing %s: %s", environ.get("REQUEST_METHOD"), exc.detail)
        status = "403 Forbidden" if exc.status == 403 else "400 Bad Request"
        # What was wrong with the name is the client's own input: saying it helps and tells nothing.
        body = b"forbidden\n" if exc.status == 403 else f"bad request: {exc.detail}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if _has_body(environ):
            headers.append(("Connection", "close"))
        start_response(status, headers)
        shown = _printable(raw if raw is not None else environ.get("PATH_INFO", ""))
        decision = Decision.deny(exc.reason, status=exc.status)
        self._record(environ, shown, decision, None, str(exc.status), 0, len(body), started, True, None)
        return [body]

    def _options(
        self, environ: dict[str, Any], share: ShareConfig | None, start_response: StartResponse
    ) -> list[bytes]:
        """OPTIONS, answered here with the same headers for every path of a share."""
        dav, allow = _OPTIONS_WRITE if share is not None and not share.read_only else _OPTIONS_READ
        headers = [("DAV", dav), ("Allow", allow), ("MS-Author-Via", "DAV"), ("Content-Length", "0")]
        if _has_body(environ):
            headers.append(("Connection", "close"))
        start_response("200 OK", headers)
        return []

    def _stepup(
        self, environ: dict[str, Any], start_response: StartResponse, path: str, started: float,
        counted: CountedInput,
    ) -> Iterable[bytes]:
        """The step-up page needs only the certificate; the form itself asks for password and code."""
        cert = request_context(environ).cert
        found = self.authenticator.check_certificate(
            cert, self.accounts.current(), self.revocations.serials(), self.clock()
        )
        status_seen = ["000"]

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_seen[0] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info)

        if not found.allowed or found.account is None or cert is None:
            body: Iterable[bytes] = self._deny(environ, found, recording)
            decision = found
        else:
            try:
                body, decision = self.stepup.handle(environ, recording, found.account, cert)
            except BodyTimeout:  # its form came too slowly
                decision = Decision.deny(Refusal.REQUEST_TIMEOUT, found.account, status=408)
                body = _body_timed_out(recording)
            except StoreUnavailable as exc:
                log.error("step-up page: %s", exc)
                decision = Decision.deny(Refusal.STORE_UNAVAILABLE, found.account, status=503)
                body = self._deny(environ, decision, recording)

        def finish(sent: int, complete: bool) -> None:
            self._record(environ, path, decision, None, status_seen[0], counted.count, sent, started, complete)

        return AuditedResponse(body, finish)

    def _refusal_page(self, environ: dict[str, Any], decision: Decision) -> tuple[
            bool, bytes, list[tuple[str, str]]]:
        """The page a browser navigation gets for a refusal (error_pages.browser_error_page),
        as ``(challenge, body, headers)``; ``challenge`` False turns a 401 into a 403
        without ``WWW-Authenticate``.

        On a share that needs a code, when the certificate maps to an enabled account that
        may read it and has TOTP, and this certificate has **no** open two-factor session,
        every failed sign-in (no password, a wrong one, a right one without a code, a wrong
        or reused code, a lockout) gets the page "a two-factor code is needed" with a link to
        the step-up page and back, answered **403 without a Basic challenge**: a 401 must
        carry ``WWW-Authenticate`` (RFC 9110 §15.5.2), and a browser answers that by
        showing its password dialog again after every password, so the user would see the
        guide only after pressing Cancel, while a password alone can never open the share.
        403, not a 303 to the step-up page: the address stays the folder's (a reload after
        the code opens it) and the page says why a code is needed before asking for one.
        Once a session is open the password alone opens the share, so the usual 401 with
        the challenge (and the generic "sign-in needed" page behind it) asks for it.
        Only a GET or HEAD navigation (:data:`_NAVIGATIONS`) loses the challenge (``_deny``):
        a WebDAV client that prefers HTML (KIO sends ``Accept: text/html, ...`` on PROPFIND
        and PUT too) keeps its 401 with ``WWW-Authenticate``, this page as its body, or it
        could never sign in again.

        Whether the password was right is never part of this: the choice depends on the
        share's policy, the account having TOTP and the session's existence only, which the
        certificate holder is entitled to know. Every other refusal gets the generic page,
        linking only to the root (the share's existence is not confirmed); a 403 links back
        to the share the account may read."""
        target = request_context(environ).target or parse_wsgi_path("/")
        share = self._share(target.share or "")
        account = decision.account
        readable = share is not None and account is not None and share.may_read(account.name, account.groups)
        code_next = None
        if (decision.status not in (403, 503) and readable and account is not None and share is not None
                and decision.reason in _SIGN_IN_FAILURES and account.totp_secret is not None
                and "totp" in self.authenticator.required(account, share.require)
                and not self._session_open(account, request_context(environ).cert)):
            code_next = target.path
        status = decision.status if decision.status in (403, 503) else 401
        back = share.name if status == 403 and readable and share is not None else None  # a 401: the root only
        body, headers = browser_error_page(status, path=target.path, share=back, code_next=code_next)
        return code_next is None, body, headers

    def _session_open(self, account: Account, cert: CertIdentity | None) -> bool:
        """Whether ``cert`` has an open two-factor session (grant) for ``account``; True when
        the state store cannot say (the answer then keeps its Basic challenge, as before)."""
        if cert is None:
            return False
        try:
            return self.authenticator.current_grant(account, cert, self.clock()) is not None
        except (StoreUnavailable, OSError) as exc:
            log.error("two-factor session of %s: %s", account.name, exc)
            return True

    def _deny(self, environ: dict[str, Any], decision: Decision, start_response: StartResponse) -> list[bytes]:
        if decision.status == 403:
            status, body = "403 Forbidden", b"forbidden\n"
            # Only a browser's write is refused for its token (csrf.py): the listing's script
            # reads this to ask for a reload, where a share's rule must not (listing.py).
            headers = [("X-Davserver-Refusal", "csrf")] if decision.reason == Refusal.CSRF else []
        elif decision.status == 503:
            status, body = "503 Service Unavailable", b"temporarily unavailable, try again shortly\n"
            headers = [("Retry-After", "5")]
        else:
            status, body = "401 Unauthorized", b"invalid credentials\n"
            headers = [("WWW-Authenticate", _REALM)]
        if wants_html(environ):
            challenge, body, page_headers = self._refusal_page(environ, decision)
            if not challenge and environ.get("REQUEST_METHOD") in _NAVIGATIONS:
                status, headers = "403 Forbidden", []  # the code page, no session yet (see _refusal_page)
            if environ.get("REQUEST_METHOD") == "HEAD":  # as the text answer: no body, length 0
                body = b""
                page_headers = [(k, "0" if k == "Content-Length" else v) for k, v in page_headers]
            headers += page_headers
        else:
            headers += [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
        if _has_body(environ):
            # An unread body is never drained into memory: end the connection instead.
            headers.append(("Connection", "close"))
        start_response(status, headers)
        return [body]

    def _record(
        self,
        environ: dict[str, Any],
        path: str,
        decision: Decision,
        share: str | None,
        status: str,
        bytes_in: int,
        bytes_out: int,
        started: float,
        complete: bool,
        destination: Target | None = None,
    ) -> None:
        """One audit line per request. ``decision`` is deny when the access decision
        refused, when a later layer refused what it allowed (RequestContext.refusal), or when the
        answer is 401/403 anyway; other 4xx/5xx keep allow with a reason named after
        the status (a missing file is an outcome, not a refusal)."""
        context: RequestContext = request_context(environ)
        cert = context.cert
        code = int(status) if status.isdigit() else 0
        later = context.refusal
        if not decision.allowed:
            verdict, reason = "deny", str(decision.reason)
        elif later:
            verdict, reason = "deny", str(later)
        elif code in (401, 403):
            verdict, reason = "deny", str(Refusal.FORBIDDEN if code == 403 else Refusal.NO_CREDENTIALS)
        elif code >= 400:
            verdict, reason = "allow", str(refusal_for_status(code))
        else:
            verdict, reason = "allow", decision.reason if complete else "aborted"
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "peer": environ.get("REMOTE_ADDR"),
            "cert_serial": cert.serial if cert else None,
            "cert_fingerprint": cert.fingerprint if cert else None,
            "cert_subject": cert.subject if cert else None,
            "account": decision.account.name if decision.account else None,
            "share": share,
            "method": environ.get("REQUEST_METHOD"),
            "path": path,
            "status": code,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "decision": verdict,
            "reason": reason,
        }
        if destination is not None:
            record["destination"] = destination.path
        self.audit.write(record)
