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
- the request line and headers within ``limits.header_seconds`` (watchdog.Watchdog),
  at most ``enrolment.header_bytes`` of them (default :data:`HEADER_BYTES`; past it
  cheroot answers 414 for the request line, 413 for the headers: cheroot/server.py
  ``HTTPRequest.parse_request``); strict HTTP/1.1 framing (http1.HTTP1Request);
- a form body of at most ``enrolment.form_bytes``, read within ``limits.header_seconds``;
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

from .config import Config
from .enrolment_pages import EnrolmentApp
from .errors import StartupError
from .handshake import HandshakeLoop, HandshakingServer
from .http1 import HTTP1Options, HTTP1Request
from .tls import DeferredHandshakeAdapter, TLSConnection, create_enrolment_context
from .watchdog import Watchdog

__all__ = ["HANDSHAKES_TOTAL", "HEADER_BYTES", "KEEP_ALIVE", "THREADS", "EnrolmentListener"]

log = logging.getLogger("davserver.enrolment")

#: Default of ``enrolment.threads``: request workers of the enrolment listener. Issuing costs one EC key and two PKCS#12
#: files (about 0.4 s of CPU) and argon2 runs at most twice at once in the process
#: (auth/passwords.py): a few workers are all it can use.
THREADS = 4
#: Default of ``enrolment.handshakes_total``: pending TLS handshakes, over all addresses.
HANDSHAKES_TOTAL = 64
#: Default of ``enrolment.header_bytes``: largest request line + header section (bytes).
HEADER_BYTES = 16384
#: Default of ``enrolment.keep_alive_limit``: kept-alive connections; past it answers close
#: the connection.
KEEP_ALIVE = 32


class _Connection(TLSConnection):
    RequestHandlerClass = HTTP1Request


class EnrolmentListener:
    """The listener around an :class:`EnrolmentApp`. `server_certificate` (a
    ``ServerCertificate``) keeps its TLS context current; `audit` receives framing
    refusals. `start()` binds and serves on a background thread; `stop()` ends it.
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
        HTTP1Options.from_limits(config.limits, audit).attach(self._server)
        self.adapter = DeferredHandshakeAdapter(create_enrolment_context(config.tls))
        server_certificate.attach(self.adapter, create_enrolment_context, context=self.adapter.context)
        self._server.ssl_adapter = self.adapter
        self._server.max_request_header_size = e.header_bytes
        self._server.keep_alive_conn_limit = e.keep_alive_limit
        self._server.shutdown_timeout = 5
        self.watchdog = Watchdog()
        self._server.ConnectionClass = type(
            "EnrolmentConnection", (_Connection,),
            {"watchdog": self.watchdog, "header_seconds": config.limits.header_seconds, "header_phase": None},
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
        addr: Any = self._server.bind_addr
        return int(addr[1])

    @property
    def url(self) -> str:
        host = self.bind if ":" not in self.bind else f"[{self.bind}]"
        if host in ("0.0.0.0", "[::]"):  # noqa: S104 - naming the wildcard, not binding it
            host = "127.0.0.1"
        return f"https://{host}:{self.port}"

    def start(self) -> None:
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
        self.handshakes.stop()
        self._server.stop()
        self.watchdog.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
