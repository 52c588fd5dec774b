"""Wires configuration, accounts, CRL, TLS, the guard and WsgiDAV into a running server."""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import socket
import threading
import time
from typing import Any

from .accounts import AccountsWatcher
from .audit import AuditLog
from .config import Config, ConfigError
from .dav import build_dav_app
from .enrolment_listener import EnrolmentListener
from .enrolment_pages import EnrolmentApp
from .errors import StartupError
from .guard import Guard
from .handshake import HandshakeLoop, HandshakingServer, HeaderPhase, listener_url, raise_open_file_limit
from .http1 import HTTP1Options, HTTP1Request, Lingerer
from .limits import Limits
from .maintenance import InstanceMaintenance, sweep_leftover_uploads
from .metrics import Metrics, MetricsListener
from .proxy_protocol import ProxyHeaderError, ProxyPolicy
from .revocation import RevocationList
from .server_certificate import ServerCertificate
from .share_overlap import share_overlaps
from .store import StoreUnavailable, open_store, unavailable_at_start
from .tls import CERT_ENVIRON_KEY, DeferredHandshakeAdapter, TLSConnection, create_ssl_context
from .tls_refusals import TLSRefusals
from .tls_tickets import SharedTicketKeys
from .watchdog import Watchdog

__all__ = ["DavServer", "check_shares"]

log = logging.getLogger("davserver.server")


#: How often freed heap memory is handed back to the system.
_TRIM_SECONDS = 5.0

#: What a DavServer is: the whole server in this process, or one of the supervisor's workers.
ROLES = ("single", "worker")


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist on glibc only
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _libc()


def tune_allocator(arenas: int = 2) -> None:
    """glibc gives each busy thread its own malloc arena (up to 8 per core) and keeps
    what is freed in it: with 32 workers that was about 8 MiB of resident memory
    for nothing, as Python's own allocator and the GIL already serialise most
    allocations. Process-wide: the ``davserver`` command calls it before any worker
    thread starts (an arena, once made, stays)."""
    if _glibc is not None:
        _glibc.mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Hand the free pages of the heap back to the system after a burst (many
    clients, big PROPFIND answers), instead of staying at the high-water mark."""
    if _glibc is not None:
        _glibc.malloc_trim(0)


class _Connection(TLSConnection):
    RequestHandlerClass = HTTP1Request


def check_shares(config: Config, *, once: bool = True) -> None:
    """StartupError unless every share's folder exists and no two shares' folders are the
    same or nested with different access settings (share_overlap.py); with `once` (the single server,
    the supervisor: not each worker) warn about shares nobody may use. Leftover uploads
    are swept later, once the listening sockets are bound (``DavServer.start``,
    supervisor.py ``prepare``): a start that fails changes nothing."""
    for name, share in config.shares.items():
        if not share.path.is_dir():
            raise StartupError(f"shares.{name}.path: {share.path} is not a folder (create it or fix the path)")
    overlaps = share_overlaps(config)
    for overlap in overlaps:
        if overlap.refused:
            raise StartupError(f"{overlap.message()} (fix: {overlap.fix()})")
    if not once:
        return
    for overlap in overlaps:
        log.warning("%s", overlap.message())
    for name, share in config.shares.items():
        if not share.readers and not share.writers:
            log.warning("share %r lists no readers or writers: nobody can use it", name)


class DavServer:
    """One listener. `start()` returns once it accepts connections; `port` is the real port.

    ``role="single"`` (the default, ``server.workers: 1``) is the whole server: it binds
    its sockets and runs the once-per-instance maintenance (maintenance.py: the sweep of
    leftover uploads, CRL re-signing, certificate re-issue and expiry warnings).
    ``role="worker"`` is one of the supervisor's worker processes (supervisor.py): it
    serves on `listen_socket` (and `enrolment_socket` when ``enrolment.enabled``), bound
    and listening already, shared with the other workers, never binds, runs none of the
    once-per-instance maintenance and binds no metrics listener (the supervisor serves
    the metrics), while it still reloads its own server certificate, accounts and CRL.
    Raises StartupError (ValueError for an unknown `role`, or a worker without socket).
    """

    def __init__(self, config: Config, *, bind: str | None = None, port: int | None = None,
                 listen_socket: socket.socket | None = None, enrolment_socket: socket.socket | None = None,
                 role: str = "single") -> None:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        if role == "worker" and listen_socket is None:
            raise ValueError("a worker serves on the supervisor's listen_socket")
        self.config = config
        self.role = role
        self.bind = bind if bind is not None else config.server.bind
        self._port = port if port is not None else config.server.port
        self._listen_socket = listen_socket
        if listen_socket is not None:
            self._port = int(listen_socket.getsockname()[1])
        check_shares(config, once=role == "single")
        #: The server certificate and key, reloaded when they change on disk (the
        #: enrolment listener attaches its adapter to it too).
        self.server_certificate = ServerCertificate(config.tls)
        context = create_ssl_context(config.tls)
        try:
            accounts = AccountsWatcher(config.home.accounts_file)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        self.revocations = RevocationList(config.tls.crl)
        self.store = open_store(config.state)
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            self.store.close()
            raise StartupError(unavailable_at_start(config.state, exc)) from None
        self.audit = AuditLog(config.audit.file)
        try:
            self.guard = Guard(
                Limits(
                    build_dav_app(config, self.store),
                    xml_body_bytes=config.limits.xml_body_bytes,
                ),
                config,
                accounts=accounts,
                revocations=self.revocations,
                audit=self.audit,
                store=self.store,
            )
            # One set of session-ticket keys on every worker and node (tls_tickets.py).
            self.server_certificate.share_ticket_keys(SharedTicketKeys(
                self.store, config.tls.session_ticket_seconds))
        except BaseException as exc:
            # e.g. StartupError for a subject rule's issuer file: nothing is left open
            self.audit.close()
            self.store.close()
            if isinstance(exc, StoreUnavailable):  # gone since the ping, reading the shared keys
                raise StartupError(unavailable_at_start(config.state, exc)) from None
            raise
        self._server = HandshakingServer(
            (self.bind, self._port),
            self.guard,
            numthreads=config.server.threads,
            server_name="davserver",
            request_queue_size=config.server.listen_backlog,
            timeout=int(config.server.timeout),
        )
        self._server.inherited_socket = listen_socket
        self._server.ConnectionClass = _Connection
        http1 = HTTP1Options.from_limits(config.limits, self.audit)
        http1.attach(self._server)  # audits framing refusals
        self._server.ssl_adapter = DeferredHandshakeAdapter(context)
        self.server_certificate.attach(self._server.ssl_adapter, create_ssl_context, context=context)
        self._server.max_request_header_size = config.limits.header_bytes
        self._server.keep_alive_conn_limit = config.server.keep_alive_limit
        self._server.shutdown_timeout = config.server.shutdown_timeout
        self.watchdog = Watchdog()
        #: Completes TLS handshakes off the workers; its counters() are for the metrics endpoint.
        self.handshakes = HandshakeLoop(
            self._server,
            per_address=config.server.handshakes_per_address,
            total=config.server.handshakes_total,
            deadline_seconds=config.limits.handshake_seconds,
            admit=self._certificate_refusal,
            # A refused handshake's alert is not lost to a reset. A pool of its own, of the
            # same bounds: clients without a certificate never take the slots of served ones.
            lingerer=Lingerer(
                max_bytes=http1.linger_bytes, max_seconds=http1.linger_seconds, max_sockets=http1.linger_connections
            ),
            # The client's own address behind a balancer: the connection's remote_addr (proxy_protocol.py).
            proxy=ProxyPolicy.from_settings(
                config.server.proxy_protocol, config.server.trusted_proxies, config.server.proxy_header_bytes
            ),
            on_proxy_refusal=self._audit_proxy_refusal,
        )
        self._server.handshakes = self.handshakes
        #: Caps one certificate's connections waiting on workers for their headers.
        self.header_phase = HeaderPhase(config.limits.header_phase_per_certificate)
        # Per server, not per class: two servers in one process keep their own settings.
        self._server.ConnectionClass = type(
            "Connection",
            (_Connection,),
            {
                "watchdog": self.watchdog,
                "header_seconds": config.limits.header_seconds,
                "header_phase": self.header_phase,
            },
        )
        self._wire_operations()
        self._thread: threading.Thread | None = None
        self._serve_error: BaseException | None = None
        self._stopping = threading.Event()
        self._maintenance = threading.Thread(target=self._maintain, name="davserver-maintenance", daemon=True)
        #: The once-per-instance rounds; None in a worker (the supervisor runs them).
        self.instance_maintenance: InstanceMaintenance | None = None
        if role == "single":
            self.instance_maintenance = InstanceMaintenance(config, self.revocations,
                                                            on_reissue=self.server_certificate.check)
        #: The enrolment listener (enrolment_listener.py), when ``enrolment.enabled``.
        self.enrolment: EnrolmentListener | None = None
        if config.enrolment.enabled:
            try:
                self.enrolment = self._enrolment_listener(accounts)
                self.enrolment._server.inherited_socket = enrolment_socket
            except BaseException:
                self.audit.close()
                self.store.close()
                raise

    def _enrolment_listener(self, accounts: AccountsWatcher) -> EnrolmentListener:
        """The second listener: enrolment pages only, sharing this server's store, audit
        log, accounts, sign-in lockouts and server certificate."""
        from .invitations import Invitations, default_base_url
        from .issuance import deliver

        config = self.config
        app = EnrolmentApp(
            config,
            accounts=accounts,
            authenticator=self.guard.authenticator,
            invitations=Invitations(self.store, config.enrolment, base_url=default_base_url(config)),
            store=self.store,
            audit=self.audit,
            issue=functools.partial(deliver, config.home),
            clock=self.guard.clock,
        )
        return EnrolmentListener(config, app, server_certificate=self.server_certificate, audit=self.audit)

    def _audit_proxy_refusal(self, peer: str, detail: str) -> None:
        """A connection closed for its PROXY header (handshake.py ``on_proxy_refusal``):
        audited like a refused TLS handshake, under the same rate limits
        (``audit.tls_refusals_per_second``), reason ``proxy_header``."""
        self.tls_refusals.refused(ProxyHeaderError(detail), peer)

    def _wire_operations(self) -> None:
        """The audit of refused TLS handshakes (tls_refusals.py: every failed handshake
        of the loop, within ``audit.tls_refusals_per_second``) and, with
        ``metrics.enabled``, the metrics (metrics.py) fed from the audit records, the
        connections and the handshake loop, and their listener (bound in ``prepare``)."""
        config = self.config
        #: This server's metrics and their listener; None unless ``metrics.enabled``.
        self.metrics: Metrics | None = None
        self.metrics_listener: MetricsListener | None = None
        if config.metrics.enabled:
            self.metrics = Metrics()
            self.audit.observers.append(self.metrics.observe)
            self._server.ConnectionClass = self.metrics.count_connections(self._server.ConnectionClass)
            builtin = config.home.certs_dir
            self.metrics.watch(
                handshakes=self.handshakes.counters,
                client_ca=config.tls.client_ca,
                server_not_after=lambda: self.server_certificate.not_after,
                certs_dir=builtin,
            )
            if self.role == "single":  # a worker's metrics are served by the supervisor
                self.metrics_listener = MetricsListener(
                    config.metrics, self.metrics, alive=lambda: bool(self._server.ready), ready=self.readiness,
                    request_seconds=config.limits.header_seconds,
                )
        self.tls_refusals = TLSRefusals(
            self.audit,
            per_address=config.audit.tls_refusals_per_second,
            total=config.audit.tls_refusals_total_per_second,
            counter=self.metrics.count_tls_failure if self.metrics is not None else None,
        )
        self.handshakes.on_failure = lambda exc, peer, seconds: self.tls_refusals.refused(exc, peer, duration=seconds)

    def readiness(self) -> str | None:
        """None when this server can serve requests: it listens, the state store answers
        and the server certificate is loaded and current; else why not (``/readyz``)."""
        if not self._server.ready:
            return "not serving"
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            return f"state store unavailable: {exc}"
        if getattr(self._server.ssl_adapter, "context", None) is None:
            return "no TLS context loaded"
        if self.server_certificate.not_after.timestamp() <= time.time():
            return f"the server certificate expired on {self.server_certificate.not_after:%Y-%m-%d %H:%M} UTC"
        return None

    def _certificate_refusal(self, ssl_env: dict[str, Any], peer: str) -> str | None:
        """The handshake loop's check of a completed handshake: None for a certificate that
        may be served, else the reason (revoked, unknown_cert, disabled ...) it never can
        be, by the guard's own certificate check (auth/core.py ``check_certificate``). Such
        connections share one header slot group (handshake.HeaderPhase); the guard still
        answers each request 401 and audits it with that reason."""
        found = self.guard.authenticator.check_certificate(
            ssl_env.get(CERT_ENVIRON_KEY), self.guard.accounts.current(), self.revocations.serials(),
            self.guard.clock(),
        )
        return None if found.allowed else str(found.reason)

    def _maintain(self) -> None:
        """Alone (``role="single"``): the once-per-instance rounds (maintenance.py: at
        start and daily the certificate re-issue and expiry warnings, hourly the CRL).
        Every ``tls.reload_seconds``: pick up a changed server certificate. Every few
        seconds: hand freed memory back."""
        reload_due = time.monotonic() + self.config.tls.reload_seconds
        while True:
            now = time.monotonic()
            if self.instance_maintenance is not None:
                self.instance_maintenance.run_due(now)
            try:
                self.server_certificate.rotate_ticket_keys()
            except Exception:  # noqa: BLE001 - maintenance must never take the server down
                log.exception("TLS session-ticket key rotation failed")
            if now >= reload_due:
                reload_due = now + self.config.tls.reload_seconds
                try:
                    self.server_certificate.check()
                except Exception:  # noqa: BLE001 - maintenance must never take the server down
                    log.exception("server certificate reload failed")
            release_free_memory()
            if self._stopping.wait(min(_TRIM_SECONDS, self.config.tls.reload_seconds)):
                return

    def reload(self) -> dict[str, bool]:
        """Re-open the audit log and re-read what can change on disk: the server
        certificate, key and client CA bundle (``ServerCertificate.check``), the CRL and
        accounts.yaml (each re-read when its file changed; a broken file keeps the last
        good version, logged). What ``davserver serve`` does on SIGHUP (``systemctl
        reload``, logrotate's postrotate). Returns ``{"audit": reopened, "certificate":
        reloaded, "crl": checked, "accounts": checked}``; False means unchanged, not
        applicable or failed (logged). Never raises for what is on disk."""
        done = {"audit": self.audit.reopen(), "certificate": False, "crl": False, "accounts": False}
        try:
            done["certificate"] = self.server_certificate.check()
        except Exception:  # noqa: BLE001 - a reload must never take the server down
            log.exception("reload: the server certificate check failed")
        try:
            self.revocations.serials()
            done["crl"] = True
        except Exception:  # noqa: BLE001
            log.exception("reload: the CRL check failed")
        try:
            self.guard.accounts.current()
            done["accounts"] = True
        except Exception:  # noqa: BLE001
            log.exception("reload: the accounts check failed")
        log.info("reloaded on request: %s", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in done.items()))
        return done

    @property
    def port(self) -> int:
        addr: Any = self._server.bind_addr
        return int(addr[1])

    @property
    def url(self) -> str:
        return listener_url(self.bind, self.port) + "/"

    def prepare(self) -> None:
        """Bind and listen (idempotent), so callers can print the real URL before serving."""
        if self._server.ready:
            return
        # Checked first because cheroot leaks its socket when bind() fails (also for port 0:
        # an address that is not this host's). A worker's socket is bound already.
        err = None if self._listen_socket is not None else bind_errno(self.bind, self._port)
        if err is not None:
            self.audit.close()
            raise _bind_error("server", self.bind, self._port, err, "pick --port")
        try:
            self._server.prepare()
        except OSError as exc:
            self.audit.close()
            err = exc.__cause__.errno if isinstance(exc.__cause__, OSError) else exc.errno
            raise _bind_error("server", self.bind, self._port, err or 0, "pick --port") from None
        if self.metrics_listener is not None:
            try:
                self.metrics_listener.prepare()
            except OSError as exc:
                self._server.stop()
                self.audit.close()
                self.store.close()
                m = self.config.metrics
                raise _bind_error("metrics", m.bind, m.port, exc.errno or 0, "pick another metrics.port") from None

    def start(self) -> None:
        """Listen, then serve on a background thread (used by tests and quickstart)."""
        self.prepare()
        if self.enrolment is not None:
            try:
                self.enrolment.start()
            except BaseException:
                self.audit.close()
                self.store.close()
                self._server.stop()
                raise
        if self.role == "single":  # every socket is ours now; only files no process writes go
            sweep_leftover_uploads(self.config)
        raise_open_file_limit()
        self.handshakes.start()
        self.watchdog.start()
        self._maintenance.start()
        self._thread = threading.Thread(target=self._serve, name="davserver", daemon=True)
        self._thread.start()
        if self.metrics_listener is not None:
            self.metrics_listener.start()

    def _serve(self) -> None:
        try:
            self._server.serve()
        except BaseException as exc:  # noqa: BLE001 - handed on to serve_forever's caller
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                log.exception("the server loop stopped on an error")
            self._serve_error = exc

    def serve_forever(self) -> None:
        """Serve until stopped: the ``davserver serve`` process.

        cheroot's accept loop runs on its own thread while this (main) thread only waits,
        so the KeyboardInterrupt that SIGTERM raises lands here and never inside the loop.
        Raised there within ``Queue.put`` (a connection handed to the workers), between
        ``Condition.notify`` releasing a waiter and removing it (``threading.py``; CPython
        gh-92530 fixed only half of it), it left a stale waiter that swallowed a later
        wake-up: one worker slept through its shutdown request and ``stop()`` waited for
        it forever (one SIGTERM in about twenty, right after traffic).
        """
        self.start()
        self.run_until_stopped()

    def run_until_stopped(self) -> None:
        """The rest of :meth:`serve_forever` once :meth:`start` has returned: wait on this
        (main) thread until the server loop ends or KeyboardInterrupt, then stop."""
        thread = self._thread
        try:
            while thread is not None and thread.is_alive():
                thread.join(0.5)
        finally:
            self.stop()
        if self._serve_error is not None:
            raise self._serve_error

    def stop(self) -> None:
        self._stopping.set()
        if self.enrolment is not None:
            self.enrolment.stop()
        if self.metrics_listener is not None:
            self.metrics_listener.stop()
        self.handshakes.stop()
        self._server.stop()
        self.watchdog.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.tls_refusals.close()
        self.audit.close()
        self.store.close()

    def __enter__(self) -> DavServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind_errno(host: str, port: int) -> int | None:
    """None when a listening socket could bind `host` (an address text) and `port` now,
    else the errno of the refusal (EADDRINUSE, EADDRNOTAVAIL: not an address of this
    host, EACCES: a port below 1024 without the capability, EINVAL ...)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EINVAL
    return None


def port_is_free(host: str, port: int) -> bool:
    """True when `host`:`port` can be bound now (:func:`bind_errno`)."""
    return bind_errno(host, port) is None


def bind_refusal(section: str, host: str, port: int, err: int, other_port: str) -> tuple[str, str, str]:
    """Why `section` (``server``, ``metrics``) cannot bind `host`:`port` with errno `err`,
    as (setting at fault, message, fix); `other_port` says how to choose another port."""
    if err == errno.EADDRINUSE:
        return f"{section}.port", f"{host}:{port} is already in use", f"stop the other server or {other_port}"
    if err == errno.EADDRNOTAVAIL:
        return f"{section}.bind", f"{host} is not an address of this host", "use one of its addresses, 0.0.0.0 or ::"
    if err < 0:  # getaddrinfo's EAI_* (socket.gaierror): an IPv6 zone or a name that does not resolve
        return (f"{section}.bind", f"{host} does not resolve to an address of this host",
                "use one of its IP addresses, 0.0.0.0 or ::")
    if err == errno.EACCES:
        return (f"{section}.port", f"not allowed to listen on {host}:{port}",
                "use a port above 1023, or give the service CAP_NET_BIND_SERVICE: docs/install.md")
    return (f"{section}.bind", f"cannot listen on {host}:{port}: {os.strerror(err) if err else 'refused'}",
            f"fix {section}.bind or {other_port}")


def _bind_error(section: str, host: str, port: int, err: int, other_port: str) -> StartupError:
    key, message, fix = bind_refusal(section, host, port, err, other_port)
    return StartupError(f"{key}: {message} ({fix})")
