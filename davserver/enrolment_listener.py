"""The enrolment listener: a second HTTPS listener (``enrolment.bind``:``enrolment.port``,
only when ``enrolment.enabled``) that serves the enrolment pages and nothing else.

It presents the server certificate and requests **no** client certificate
(``tls.create_enrolment_context``): its visitors have none yet. Its one application is
:class:`~davserver.enrolment_pages.EnrolmentApp`, which answers ``/enrol/<token>`` and
404 to every other path; the WebDAV application, the guard and ``/_davserver/`` are not
reachable from it at all, so no file can be served here whatever the path says.

It reuses the main listener's defences, each with its own, smaller pool so a flood of
enrolment visitors never takes the main server's workers or handshake slots:

- handshakes completed off the workers (handshake.HandshakeLoop), at most
  ``server.handshakes_per_address`` per address and ``enrolment.handshakes_total`` in
  all (default :data:`HANDSHAKES_TOTAL`), each within ``limits.handshake_seconds``;
- ``enrolment.threads`` request workers (cheroot ``numthreads``; default :data:`THREADS`);
- at most ``enrolment.header_phase_per_address`` connections of one address (IPv6: its
  /64, as ``addresses.client_block`` groups it) holding a worker while their request
  headers or form body arrive (:class:`AddressPhase`; default
  :data:`HEADER_PHASE_PER_ADDRESS`, and never all the workers): one address trickling
  bytes on many connections cannot keep every other visitor waiting;
- the request line and headers within ``limits.header_seconds`` (watchdog.Watchdog),
  at most ``enrolment.header_bytes`` of them (default :data:`HEADER_BYTES`; past it
  cheroot answers 414 for the request line, 413 for the headers: cheroot/server.py
  ``HTTPRequest.parse_request``); strict HTTP/1.1 framing (http1.HTTP1Request);
- a form body of at most ``enrolment.form_bytes``, read within ``limits.header_seconds``;
- one audit writer for every layer (enrolment_audit.EnrolmentAudit): each line names the
  listener, and no line holds an invitation token, whatever path a client sent;
- at most ``enrolment.keep_alive_limit`` kept-alive connections (default
  :data:`KEEP_ALIVE`), each idle for ``server.timeout``.

The server certificate is reloaded with the main listener's: the adapter is attached to
the server's ``server_certificate`` (server_certificate.ServerCertificate), which sets a
fresh ``create_enrolment_context`` on it whenever the files change.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .addresses import client_block
from .config import Config
from .enrolment_audit import EnrolmentAudit
from .enrolment_pages import EnrolmentApp
from .errors import StartupError
from .handshake import ConnectionPhase, HandshakeLoop, HandshakingServer, listener_url
from .http1 import HTTP1Options, HTTP1Request
from .settings_schema import setting
from .tls import DeferredHandshakeAdapter, TLSConnection, create_enrolment_context
from .watchdog import Watchdog

__all__ = [
    "HANDSHAKES_TOTAL", "HEADER_BYTES", "HEADER_PHASE_PER_ADDRESS", "KEEP_ALIVE", "THREADS", "AddressPhase",
    "EnrolmentListener",
]

log = logging.getLogger("davserver.enrolment")

#: Default of ``enrolment.threads``: request workers of the enrolment listener. Issuing costs one EC key and two PKCS#12
#: files (about 0.4 s of CPU) and argon2 runs at most twice at once in the process
#: (auth/passwords.py): a few workers are all it can use.
THREADS: int = setting("enrolment.threads").default
#: Default of ``enrolment.handshakes_total``: pending TLS handshakes, over all addresses.
HANDSHAKES_TOTAL: int = setting("enrolment.handshakes_total").default
#: Default of ``enrolment.header_bytes``: largest request line + header section (bytes).
HEADER_BYTES: int = setting("enrolment.header_bytes").default
#: Default of ``enrolment.keep_alive_limit``: kept-alive connections; past it answers close
#: the connection.
KEEP_ALIVE: int = setting("enrolment.keep_alive_limit").default
#: Default of ``enrolment.header_phase_per_address``: connections of one address (IPv6:
#: /64) that may hold a worker while their request headers or form body arrive. A browser
#: sends its headers in one packet and spends microseconds in that phase, so two are room
#: for a household or an office behind one address; the rest of the workers
#: (:data:`THREADS`) stay free for everyone else.
HEADER_PHASE_PER_ADDRESS: int = setting("enrolment.header_phase_per_address").default


class AddressPhase(ConnectionPhase):
    """Bounds the connections of one client address that hold a worker of the enrolment
    listener while their request headers or their form body arrive.

    The enrolment listener requests no client certificate, so ``handshake.HeaderPhase``
    (keyed by certificate fingerprint) counts none of its connections; this is the same
    bound keyed by address: ``auth.lockout.address_key`` of ``conn.remote_addr`` (an IPv6
    address counts as its /64, one subscriber's block). A connection is in the phase from
    :meth:`enter` (``tls.TLSConnection.communicate``, when a worker picks it up; again by
    ``enrolment_pages.read_form`` for the body, as :attr:`counts_body` says) until
    :meth:`leave` (``http1.HTTP1Request.parse_request`` once the headers are in,
    ``read_form`` once the body is, and the end of ``communicate``). At most `per_address`
    (≥ 1) connections of one address are in it: a new one at the cap ends the reading side
    of the *oldest* at once (``watchdog.end_reading``: its worker answers 408 and closes),
    never waiting, since a worker waiting here would be a worker taken all the same. The
    newest is kept because a legitimate request from the same address sends its headers
    at once and is done before the next trickler comes in. Raises ValueError for
    `per_address` below 1."""

    counts_body = True

    def __init__(self, per_address: int) -> None:
        super().__init__(per_address, _address, evict_after=0.0, setting="enrolment.header_phase_per_address",
                         client="address", limit_name="per_address")
        self.per_address = per_address


def _address(conn: Any) -> str:
    """The per-address key of `conn`: the client block (addresses.client_block) of its ``remote_addr``."""
    return client_block(str(getattr(conn, "remote_addr", "") or ""))


class _Connection(TLSConnection):
    RequestHandlerClass = HTTP1Request


class EnrolmentListener:
    """The listener around an :class:`EnrolmentApp`. `server_certificate` (a
    ``ServerCertificate``) keeps its TLS context current; `audit` (the server's AuditLog)
    receives, through one :class:`~davserver.enrolment_audit.EnrolmentAudit` handed to the
    framing layer and to `app`, every line of this listener. `start()` binds and serves on
    a background thread; `stop()` ends it.
    Raises StartupError when the address is taken or not allowed."""

    def __init__(self, config: Config, app: EnrolmentApp, *, server_certificate: Any, audit: Any,
                 port: int | None = None) -> None:
        self.config = config
        e = config.enrolment
        self.bind = e.bind
        self._port = e.port if port is None else port
        self._server = HandshakingServer(
            (self.bind, self._port),
            app,
            numthreads=e.threads,
            server_name="davserver-enrolment",
            request_queue_size=e.handshakes_total,
            timeout=int(config.server.timeout),
        )
        #: The one audit writer of every layer of this listener (enrolment_audit.py).
        self.audit = EnrolmentAudit.wrap(audit)
        app.audit = self.audit
        HTTP1Options.from_limits(config.limits, self.audit).attach(self._server)
        self.adapter = DeferredHandshakeAdapter(create_enrolment_context(config.tls))
        server_certificate.attach(self.adapter, create_enrolment_context, context=self.adapter.context)
        self._server.ssl_adapter = self.adapter
        self._server.max_request_header_size = e.header_bytes
        self._server.keep_alive_conn_limit = e.keep_alive_limit
        self._server.shutdown_timeout = 5
        self.watchdog = Watchdog()
        # Never every worker: one address always leaves at least one free for the others.
        self.header_phase = AddressPhase(max(1, min(e.header_phase_per_address, e.threads - 1)))
        self._server.ConnectionClass = type(
            "EnrolmentConnection", (_Connection,),
            {"watchdog": self.watchdog, "header_seconds": config.limits.header_seconds,
             "header_phase": self.header_phase},
        )
        self.handshakes = HandshakeLoop(
            self._server,
            per_address=min(config.server.handshakes_per_address, e.handshakes_total),
            total=e.handshakes_total,
            deadline_seconds=config.limits.handshake_seconds,
        )
        self._server.handshakes = self.handshakes
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port: the configured one until ``start()``, then the one bound (a free one
        when ``enrolment.port`` is 0; cheroot's prepare() resolves it, cheroot/server.py:1994)."""
        addr: Any = self._server.bind_addr
        return int(addr[1])

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` of this listener (handshake.listener_url), the enrolment
        pages being under ``/enrol/`` of it."""
        return listener_url(self.bind, self.port)

    def start(self) -> None:
        """Bind the socket, then serve on a daemon thread (with the handshake loop and the
        watchdog) and return. Raises StartupError naming ``enrolment.port`` when the address
        cannot be bound (in use, not allowed); an error while serving later is logged and
        stops only this listener."""
        try:
            self._server.prepare()
        except OSError as exc:
            raise StartupError(
                f"enrolment.port: cannot listen on {self.bind}:{self._port} ({exc}); "
                "stop the other server, pick another enrolment.port, or set enrolment.enabled: false"
            ) from None
        self.handshakes.start()
        self.watchdog.start()
        self._thread = threading.Thread(target=self._serve, name="davserver-enrolment", daemon=True)
        self._thread.start()
        log.info("enrolment pages on %s/enrol/", self.url)

    def _serve(self) -> None:
        try:
            self._server.serve()
        except BaseException:  # noqa: BLE001 - the main server goes on without enrolment
            log.exception("the enrolment listener stopped on an error")

    def stop(self) -> None:
        """Stop taking connections, end the handshake loop, the server (5 s for requests in
        flight) and the watchdog, and wait up to 10 s for the serving thread."""
        self.handshakes.stop()
        self._server.stop()
        self.watchdog.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
