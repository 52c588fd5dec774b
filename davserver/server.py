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
from typing import TYPE_CHECKING, Any

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
from .store import StateStore, StoreUnavailable, open_store, unavailable_at_start
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
    """glibc (``ctypes.CDLL(None)``) when it has ``malloc_trim`` and ``mallopt``, else None
    (musl, other systems: the two tunings below do nothing)."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both exist on glibc only
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _libc()


def tune_allocator(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas at `arenas` (``mallopt(M_ARENA_MAX)``; no-op without glibc).

    glibc gives each busy thread its own malloc arena (up to 8 per core) and keeps
    what is freed in it: with 32 workers that was about 8 MiB of resident memory
    for nothing, as Python's own allocator and the GIL already serialise most
    allocations. Process-wide: the ``davserver`` command calls it before any worker
    thread starts (an arena, once made, stays)."""
    if _glibc is not None:
        _glibc.mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Hand the free pages of the heap back to the system after a burst (many
    clients, big PROPFIND answers), instead of staying at the high-water mark
    (glibc ``malloc_trim(0)``; no-op without glibc). Never raises."""
    if _glibc is not None:
        _glibc.malloc_trim(0)


class _Connection(TLSConnection):
    """The main listener's connection: TLS (tls.py) with davserver's HTTP/1.1 framing (http1.py)."""

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


#: What ``start()`` makes, read once it (or ``prepare()``) has returned; before that,
#: reading one raises AttributeError saying so (``DavServer.__getattr__``).
_STARTED_PARTS = frozenset({
    "server_certificate", "revocations", "store", "audit", "guard", "handshakes", "header_phase", "watchdog",
    "tls_refusals", "metrics", "metrics_listener", "instance_maintenance", "enrolment", "_server",
})


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

    Constructing one only checks and keeps its arguments: no file is read or opened, no
    socket, thread, directory or store connection is made. :meth:`prepare` checks the
    shares, loads the server certificate, accounts and CRL, opens the state store (and
    pings it) and the audit log, builds the guard and binds; :meth:`start` then starts the
    enrolment listener, sweeps leftover uploads and starts the threads. A failed
    ``prepare``/``start`` releases everything it took (:meth:`stop`'s order) before it
    raises; ``stop()`` then ``start()`` again starts afresh.
    Raises ValueError for an unknown `role`, or a worker without socket (the start raises
    StartupError for what the configuration or the system refuses).
    """

    #: The server certificate and key, reloaded when they change on disk (the enrolment
    #: listener attaches its adapter to it too).
    server_certificate: ServerCertificate
    #: The CRL (``tls.crl``), re-read when it changes.
    revocations: RevocationList
    #: The state store (store/), pinged at start.
    store: StateStore
    #: The audit log (``audit.file``).
    audit: AuditLog
    #: The WSGI application cheroot serves: the access decision around WsgiDAV (guard.py).
    guard: Guard
    #: Completes TLS handshakes off the workers; its counters() are for the metrics endpoint.
    handshakes: HandshakeLoop
    #: Caps one certificate's connections waiting on workers for their headers.
    header_phase: HeaderPhase
    #: Closes connections too slow to send their headers (``limits.header_seconds``).
    watchdog: Watchdog
    #: The audit of refused TLS handshakes and PROXY headers (tls_refusals.py).
    tls_refusals: TLSRefusals
    #: This server's metrics and their listener; None unless ``metrics.enabled`` (no
    #: listener in a worker: the supervisor serves the metrics).
    metrics: Metrics | None
    metrics_listener: MetricsListener | None
    #: The once-per-instance rounds; None in a worker (the supervisor runs them).
    instance_maintenance: InstanceMaintenance | None
    #: The enrolment listener (enrolment_listener.py), when ``enrolment.enabled``.
    enrolment: EnrolmentListener | None
    _server: HandshakingServer

    def __init__(self, config: Config, *, bind: str | None = None, port: int | None = None,
                 listen_socket: socket.socket | None = None, enrolment_socket: socket.socket | None = None,
                 role: str = "single") -> None:
        """Keep the arguments: `bind` (an address text) and `port` override
        ``server.bind``/``server.port``; a worker's `listen_socket` fixes the port. Raises
        ValueError for an unknown `role` or a worker without `listen_socket`."""
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        if role == "worker" and listen_socket is None:
            raise ValueError("a worker serves on the supervisor's listen_socket")
        self.config = config
        self.role = role
        self.bind = bind if bind is not None else config.server.bind
        self._port = port if port is not None else config.server.port
        self._listen_socket = listen_socket
        self._enrolment_socket = enrolment_socket
        if listen_socket is not None:
            self._port = int(listen_socket.getsockname()[1])
        #: "new", "prepared" (bound, not serving), "serving" or "stopped".
        self._state = "new"
        self._thread: threading.Thread | None = None
        self._maintenance: threading.Thread | None = None
        self._serve_error: BaseException | None = None
        self._stopping = threading.Event()

    if not TYPE_CHECKING:  # mypy keeps checking attribute names; at run time a clear error

        def __getattr__(self, name: str) -> Any:
            """Only reached for an attribute not set: a part read before start says so."""
            if name in _STARTED_PARTS:
                raise AttributeError(f"DavServer.{name} exists once start() or prepare() has run")
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- start ------------------------------------------------------------------------

    def _open(self) -> None:
        """The first half of :meth:`prepare`: every part of the server, nothing bound or
        started. Each part is an attribute as soon as it exists, so :meth:`_release`
        finds what to close when a later one fails."""
        config = self.config
        check_shares(config, once=self.role == "single")
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
            self.audit = AuditLog(config.audit.file)
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
            )  # e.g. StartupError for a subject rule's issuer file
            # One set of session-ticket keys on every worker and node (tls_tickets.py).
            self.server_certificate.share_ticket_keys(SharedTicketKeys(
                self.store, config.tls.session_ticket_seconds))
        except StoreUnavailable as exc:  # at the ping, or gone since, reading the shared keys
            raise StartupError(unavailable_at_start(config.state, exc)) from None
        self._server = HandshakingServer(
            (self.bind, self._port),
            self.guard,
            numthreads=config.server.threads,
            server_name="davserver",
            request_queue_size=config.server.listen_backlog,
            timeout=int(config.server.timeout),
        )
        self._server.inherited_socket = self._listen_socket
        self._server.ConnectionClass = _Connection
        http1 = HTTP1Options.from_limits(config.limits, self.audit)
        http1.attach(self._server)  # audits framing refusals
        self._server.ssl_adapter = DeferredHandshakeAdapter(context)
        self.server_certificate.attach(self._server.ssl_adapter, create_ssl_context, context=context)
        self._server.max_request_header_size = config.limits.header_bytes
        self._server.keep_alive_conn_limit = config.server.keep_alive_limit
        self._server.shutdown_timeout = config.server.shutdown_timeout
        self.watchdog = Watchdog()
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
        self.instance_maintenance = None
        if self.role == "single":
            self.instance_maintenance = InstanceMaintenance(config, self.revocations,
                                                            on_reissue=self.server_certificate.check)
        self.enrolment = None
        if config.enrolment.enabled:
            self.enrolment = self._enrolment_listener(accounts)
            self.enrolment._server.inherited_socket = self._enrolment_socket

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
        self.metrics = None
        self.metrics_listener = None
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

    def _bind(self) -> None:
        """The second half of :meth:`prepare`: the main listener (a worker's socket is
        bound already), then the metrics listener; StartupError naming the setting when
        an address cannot be bound."""
        # Checked first because cheroot leaks its socket when bind() fails (also for port 0:
        # an address that is not this host's). A worker's socket is bound already.
        err = None if self._listen_socket is not None else bind_errno(self.bind, self._port)
        if err is not None:
            raise _bind_error("server", self.bind, self._port, err, "pick --port")
        try:
            self._server.prepare()
        except OSError as exc:
            err = exc.__cause__.errno if isinstance(exc.__cause__, OSError) else exc.errno
            raise _bind_error("server", self.bind, self._port, err or 0, "pick --port") from None
        if self.metrics_listener is not None:
            try:
                self.metrics_listener.prepare()
            except OSError as exc:
                m = self.config.metrics
                raise _bind_error("metrics", m.bind, m.port, exc.errno or 0, "pick another metrics.port") from None

    def prepare(self) -> None:
        """Everything :meth:`start` does before serving, so callers can print the real URL
        first: check the shares (:func:`check_shares`), load the server certificate, the
        accounts and the CRL, open the state store and ping it, open the audit log, build
        the guard, then bind and listen (the main listener, then the metrics listener).
        Idempotent while prepared or serving. Raises StartupError (the setting at fault
        and the fix) or OSError (an audit log that cannot be opened), after releasing
        everything taken so far (:meth:`stop`)."""
        if self._state in ("prepared", "serving"):
            return
        self._forget()
        try:
            self._open()
            self._bind()
        except BaseException:
            self._release()
            raise
        self._state = "prepared"

    def _forget(self) -> None:
        """Drop the parts of an earlier, stopped run: a failed start then never closes
        them twice, and a second start makes all of them afresh."""
        for name in _STARTED_PARTS:
            self.__dict__.pop(name, None)
        self._stopping = threading.Event()
        self._serve_error = None

    def start(self) -> None:
        """:meth:`prepare` (if not done), then start the enrolment listener, sweep leftover
        uploads (``role="single"``, once every socket is ours), raise the open-file limit
        and start the threads: handshake loop, watchdog, maintenance, cheroot's serving
        loop, the metrics listener. Returns once connections are accepted (used by tests,
        ``davserver serve`` and quickstart). Raises StartupError (e.g. ``enrolment.port``
        taken) after releasing everything taken so far (:meth:`stop`)."""
        if self._state == "serving":
            return
        self.prepare()
        try:
            if self.enrolment is not None:
                self.enrolment.start()
            if self.role == "single":  # every socket is ours now; only files no process writes go
                sweep_leftover_uploads(self.config)
            raise_open_file_limit()
            self.handshakes.start()
            self.watchdog.start()
            self._maintenance = threading.Thread(target=self._maintain, args=(self._stopping,),
                                                 name="davserver-maintenance", daemon=True)
            self._maintenance.start()
            self._thread = threading.Thread(target=self._serve, name="davserver", daemon=True)
            self._thread.start()
            if self.metrics_listener is not None:
                self.metrics_listener.start()
        except BaseException:
            self._release()
            raise
        self._state = "serving"

    # --- serving ----------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when this server can serve requests: it listens, the state store answers
        and the server certificate is loaded and current; else why not (``/readyz``)."""
        server = self.__dict__.get("_server")
        if server is None or not server.ready:
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

    def _maintain(self, stopping: threading.Event) -> None:
        """Alone (``role="single"``): the once-per-instance rounds (maintenance.py: at
        start and daily the certificate re-issue and expiry warnings, hourly the CRL).
        Every ``tls.reload_seconds``: pick up a changed server certificate. Every few
        seconds: hand freed memory back. Until `stopping` (this run's) is set."""
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
            if stopping.wait(min(_TRIM_SECONDS, self.config.tls.reload_seconds)):
                return

    def reload(self) -> dict[str, bool]:
        """Re-open the audit log and re-read what can change on disk: the server
        certificate, key and client CA bundle (``ServerCertificate.check``), the CRL and
        accounts.yaml (each re-read when its file changed; a broken file keeps the last
        good version, logged). What ``davserver serve`` does on SIGHUP (``systemctl
        reload``, logrotate's postrotate). Returns ``{"audit": reopened, "certificate":
        reloaded, "crl": checked, "accounts": checked}``; False means unchanged, not
        applicable or failed (logged). Never raises for what is on disk; AttributeError
        before :meth:`start`."""
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
        """The TCP port listened on: once prepared the one bound (a real one for port 0,
        still known after stop), before that the one asked for (``port=`` or ``server.port``)."""
        server = self.__dict__.get("_server")
        if server is None:
            return self._port
        addr: Any = server.bind_addr
        return int(addr[1])

    @property
    def url(self) -> str:
        """``https://BIND:PORT/`` of the main listener (:attr:`port`)."""
        return listener_url(self.bind, self.port) + "/"

    def _serve(self) -> None:
        """The serving thread: cheroot's accept loop until stopped; an error ends it and is
        kept for :meth:`run_until_stopped` to raise."""
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
        """Stop serving and release everything :meth:`prepare` and :meth:`start` took:
        the enrolment and metrics listeners, the handshake loop, the main listener
        (in-flight requests get ``server.shutdown_timeout`` seconds), the watchdog and
        the serving and maintenance threads, then the audit log and the state store.
        Idempotent; a no-op before start. A stopped server may be started again."""
        if self._state in ("new", "stopped"):
            return
        self._release()

    def _release(self) -> None:
        """What :meth:`stop` does, for whatever parts exist: a failed start calls it too,
        so each part is skipped until it was made (listeners and loops made but never
        started stop at once)."""
        self._state = "stopped"
        self._stopping.set()
        parts = self.__dict__
        if (enrolment := parts.get("enrolment")) is not None:
            enrolment.stop()
        if (metrics_listener := parts.get("metrics_listener")) is not None:
            metrics_listener.stop()
        if "handshakes" in parts:
            self.handshakes.stop()
        if "_server" in parts:
            self._server.stop()
        if "watchdog" in parts:
            self.watchdog.stop()
        for thread in (self._thread, self._maintenance):
            if thread is not None:
                thread.join(timeout=10)
        self._thread = self._maintenance = None
        if "tls_refusals" in parts:
            self.tls_refusals.close()
        if (metrics := parts.get("metrics")) is not None:
            metrics.close()
        if "audit" in parts:
            self.audit.close()
        if "store" in parts:
            self.store.close()

    def __enter__(self) -> DavServer:
        """:meth:`start`, for ``with DavServer(config) as server:``."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """:meth:`stop`."""
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
    """The StartupError ``"<setting>: <message> (<fix>)"`` of :func:`bind_refusal`."""
    key, message, fix = bind_refusal(section, host, port, err, other_port)
    return StartupError(f"{key}: {message} ({fix})")
