"""The outermost WSGI layer: every request is authenticated and authorised here,
and audited when its response ends. There is no route around it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from .accounts import AccountsWatcher
from .audit import AuditLog
from .auth.core import Authenticator, Credentials, Decision, authorize
from .auth.identity import CertIdentity
from .config import Config, ShareConfig, is_macos_clutter
from .dav import VISIBLE_SHARES_KEY
from .revocation import RevocationList
from .stepup import PREFIX as STEPUP_PREFIX
from .stepup import StepUpPage
from .store.base import StateStore, StoreUnavailable
from .tls import CERT_ENVIRON_KEY
from .watchdog import current_connection

__all__ = ["Guard", "parse_basic"]

StartResponse = Callable[..., Any]
log = logging.getLogger("davserver.guard")

#: Methods that only read. Anything else, including methods we do not know, counts as a write.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "COPY"})
_REALM = 'Basic realm="davserver", charset="UTF-8"'


def parse_basic(header: str | None) -> Credentials | None:
    """Decode an Authorization header; anything odd is `malformed`, never an exception."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return Credentials(malformed=True)
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return Credentials(malformed=True)
    user, sep, password = text.partition(":")
    if not sep:
        return Credentials(malformed=True)
    return Credentials(user=user, password=password)


def _first_segment(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0].lower()


def _readable_path(path: str) -> str:
    """WSGI hands the path's UTF-8 bytes over as Latin-1 text (PEP 3333); the audit log
    wants the name people see."""
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path


def _has_dot_segments(path: str) -> bool:
    """`/files/../team/x` would be authorised for `files` and served from `team`:
    paths with dot segments (after decoding) are refused outright."""
    return any(part in (".", "..") for part in path.split("/"))


class _Counted:
    """wsgi.input wrapper that counts the bytes the application read, and keeps
    the body's watchdog deadline ahead of a client that sends at a fair rate."""

    def __init__(self, stream: Any, on_progress: Callable[[int, bool], None] | None = None) -> None:
        self._stream = stream
        self.count = 0
        self._on_progress = on_progress

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        if self._on_progress is not None:
            self._on_progress(self.count, not data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line


class _Audited:
    """Response iterable that writes the audit record when the server closes it."""

    def __init__(self, body: Iterable[bytes], finish: Callable[[int, bool], None]) -> None:
        self._body = body
        self._finish = finish
        self._sent = 0
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk
        self._complete = True

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._sent, self._complete)


class Guard:
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
        )
        self.stepup = StepUpPage(self.authenticator, clock)

    # --- the decision -----------------------------------------------------------

    def _share(self, name: str) -> ShareConfig | None:
        return self.config.shares.get(name)

    def _decide(self, environ: dict[str, Any], share: ShareConfig | None) -> Decision:
        try:
            return self._decide_with_store(environ, share)
        except StoreUnavailable as exc:
            # Fail closed: without the shared state (locks, grants, used codes) nobody gets in.
            log.error("refusing %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), exc)
            return Decision.deny("store_unavailable", status=503)

    def _decide_with_store(self, environ: dict[str, Any], share: ShareConfig | None) -> Decision:
        method = environ.get("REQUEST_METHOD", "")
        cert: CertIdentity | None = environ.get(CERT_ENVIRON_KEY)
        accounts = self.accounts.current()
        require = share.require if share is not None else self.config.default_require
        if method == "OPTIONS":
            # Windows' WebDAV redirector gives up when OPTIONS answers 401, so OPTIONS
            # needs the certificate only (it reveals no content, just the methods).
            require = ()
        decision = self.authenticator.decide(
            cert=cert,
            credentials=parse_basic(environ.get("HTTP_AUTHORIZATION")),
            accounts=accounts,
            revoked=self.revocations.serials(),
            share=share,
            require=require,
            write=method not in _READ_METHODS,
            now=self.clock(),
            peer=environ.get("REMOTE_ADDR", ""),
        )
        if (
            decision.allowed
            and share is not None
            and share.macos_clutter == "refuse"
            and method not in _READ_METHODS
            and is_macos_clutter(environ.get("PATH_INFO", "").rstrip("/").rsplit("/", 1)[-1])
        ):
            return Decision.deny("macos_clutter", decision.account, status=403)
        if decision.allowed and method in ("COPY", "MOVE"):
            denied = self._check_destination(environ, decision)
            if denied:
                return Decision.deny(denied, decision.account, status=403)
        return decision

    def _check_destination(self, environ: dict[str, Any], decision: Decision) -> str | None:
        """COPY and MOVE write where the Destination header points: that share must allow it."""
        dest = environ.get("HTTP_DESTINATION", "")
        try:
            parts = urlsplit(dest)
        except ValueError:
            return "bad_destination"
        host = environ.get("HTTP_HOST", "")
        if parts.netloc and host and parts.netloc.lower() != host.lower():
            return "bad_destination"
        dest_path = unquote(parts.path)
        if _has_dot_segments(dest_path) or "\x00" in dest_path:
            return "bad_destination"
        share = self._share(_first_segment(dest_path))
        if share is None or decision.account is None:
            return "dest_write_denied"
        denied = authorize(decision.account, share, write=True)
        name = dest_path.rstrip("/").rsplit("/", 1)[-1]
        if not denied and share.macos_clutter == "refuse" and is_macos_clutter(name):
            denied = "macos_clutter"
        return f"dest_{denied}" if denied else None

    # --- WSGI -------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        path = _readable_path(environ.get("PATH_INFO", ""))
        if _has_dot_segments(path) or "\x00" in path:
            refusal = b"bad request path\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Content-Length", str(len(refusal))), ("Connection", "close")])
            self._record(environ, path, Decision.deny("bad_path", status=400), None, "400", 0, 0, started, True)
            return [refusal]
        share_name = _first_segment(path)
        share = self._share(share_name)
        counted = _Counted(environ.get("wsgi.input"), self._body_deadline(environ, started))
        environ["wsgi.input"] = counted
        if share_name == STEPUP_PREFIX and share is None:
            return self._stepup(environ, start_response, path, started, counted)
        decision = self._decide(environ, share)
        status_seen = ["000"]

        def finish(sent: int, complete: bool) -> None:
            conn = current_connection()
            if conn is not None and getattr(conn, "watchdog", None) is not None:
                conn.watchdog.disarm(conn)
            self._record(environ, path, decision, share_name if share else None, status_seen[0],
                         counted.count, sent, started, complete)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_seen[0] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info)

        if not decision.allowed:
            if decision.delay:
                time.sleep(decision.delay)  # growing delay: slows guessing without telling why
            return _Audited(self._deny(environ, decision, recording_start_response), finish)
        account = decision.account
        assert account is not None
        environ["wsgidav.auth.user_name"] = account.name
        environ["wsgidav.auth.realm"] = share_name if share else "/"
        environ["davserver.account"] = account.name
        environ["davserver.factors"] = decision.factors
        environ["davserver.grant_expires"] = decision.grant_expires
        environ["davserver.share"] = share
        environ["davserver.totp_enrolled"] = account.totp_secret is not None
        environ[VISIBLE_SHARES_KEY] = frozenset(
            name for name, s in self.config.shares.items() if s.may_read(account.name, account.groups)
        )
        try:
            body = self.app(environ, recording_start_response)
        except Exception:
            finish(0, False)
            raise
        return _Audited(body, finish)

    def _body_deadline(self, environ: dict[str, Any], started: float) -> Callable[[int, bool], None] | None:
        """A request body must average limits.body_min_bytes_per_second after a grace time."""
        conn = current_connection()
        watchdog = getattr(conn, "watchdog", None)
        limits = self.config.limits
        if watchdog is None or not limits.body_min_bytes_per_second:
            return None
        length = environ.get("CONTENT_LENGTH", "")
        expected = int(length) if length.isdigit() else None
        if expected == 0 and not environ.get("HTTP_TRANSFER_ENCODING"):
            return None
        rate = limits.body_min_bytes_per_second
        watchdog.arm(conn, started + limits.body_grace_seconds, "request body")

        def progress(count: int, eof: bool) -> None:
            if eof or (expected is not None and count >= expected):
                watchdog.disarm(conn)
            else:
                watchdog.arm(conn, started + limits.body_grace_seconds + count / rate, "request body")

        return progress

    def _stepup(
        self, environ: dict[str, Any], start_response: StartResponse, path: str, started: float, counted: _Counted
    ) -> Iterable[bytes]:
        """The step-up page needs only the certificate; the form itself asks for password and code."""
        cert: CertIdentity | None = environ.get(CERT_ENVIRON_KEY)
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
            except StoreUnavailable as exc:
                log.error("step-up page: %s", exc)
                decision = Decision.deny("store_unavailable", found.account, status=503)
                body = self._deny(environ, decision, recording)

        def finish(sent: int, complete: bool) -> None:
            self._record(environ, path, decision, None, status_seen[0], counted.count, sent, started, complete)

        return _Audited(body, finish)

    def _deny(self, environ: dict[str, Any], decision: Decision, start_response: StartResponse) -> list[bytes]:
        if decision.status == 403:
            status, body = "403 Forbidden", b"forbidden\n"
            headers = []
        elif decision.status == 503:
            status, body = "503 Service Unavailable", b"temporarily unavailable, try again shortly\n"
            headers = [("Retry-After", "5")]
        else:
            status, body = "401 Unauthorized", b"invalid credentials\n"
            headers = [("WWW-Authenticate", _REALM)]
        headers += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or environ.get("HTTP_TRANSFER_ENCODING"):
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
    ) -> None:
        cert: CertIdentity | None = environ.get(CERT_ENVIRON_KEY)
        self.audit.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "peer": environ.get("REMOTE_ADDR"),
                "cert_serial": cert.serial if cert else None,
                "cert_fingerprint": cert.fingerprint if cert else None,
                "cert_subject": cert.subject if cert else None,
                "account": decision.account.name if decision.account else None,
                "share": share,
                "method": environ.get("REQUEST_METHOD"),
                "path": path,
                "status": int(status) if status.isdigit() else 0,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
                "decision": "allow" if decision.allowed else "deny",
                "reason": environ.get("davserver.limit")
                or (decision.reason if complete or not decision.allowed else "aborted"),
            }
        )
