"""Health and Prometheus metrics, on a plain-HTTP listener of its own (off by default).

``metrics.enabled`` starts :class:`MetricsListener` on ``metrics.bind``:``metrics.port``:
a cheroot server with one worker thread of its own (never the main listener's pool),
serving exactly three paths and 404 for anything else:

- ``/healthz``: 200 while the main listener serves, else 503;
- ``/readyz``: 200 when the state store answers and the certificates are loaded, else
  503 with the reason (``DavServer.readiness``);
- ``/metrics``: the Prometheus text format, written by ``prometheus_client`` (a
  well-kept library, so the exposition format, escaping and content negotiation are
  not ours to get right).

Each server has its own :class:`Metrics` and ``CollectorRegistry``: two servers in one
process (the tests) never share counters. Every figure is taken where it arises:

- requests, durations, body bytes and refusals from the audit record
  (``AuditLog.observers``): every request the guard, the HTTP/1.1 framing checks and the
  enrolment pages answer is one record, so the counts agree with the audit log;
- TLS handshake refusals from tls_refusals.py (every one, also those the audit log's
  rate limit leaves out);
- open connections from the connection objects themselves (:meth:`Metrics.count_connections`);
- handshake totals from ``HandshakeLoop.counters()`` and certificate expiry dates
  from the files, read when scraped (the client certificates at most once a minute).

Label values are bounded: ``method`` is one of :data:`METHODS` or ``other``; ``status``
is the three-digit code; ``reason`` is an ``access.Refusal`` value or ``other``. The list
of metrics and their meaning is in docs/metrics.md.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.server import HTTPConnection
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .access import Refusal
from .config import MetricsConfig
from .handshake import HandshakeCounters
from .pki import CertificateAuthority, PKIError
from .watchdog import Watchdog

__all__ = ["METHODS", "Metrics", "MetricsListener"]

log = logging.getLogger("davserver.metrics")

#: The ``method`` label's values; any other method counts as ``other``.
METHODS = frozenset({
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE",
    "LOCK", "UNLOCK",
})

_REASONS = frozenset(r.value for r in Refusal)

#: The TLS refusal reasons, exported at 0 from the start so a rate over them is defined.
TLS_REASONS = (Refusal.NO_CERT, Refusal.UNKNOWN_CA, Refusal.CERT_EXPIRED, Refusal.BAD_EKU, Refusal.TLS_ERROR)

#: Request durations (seconds): from a cached GET to a long upload.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: Seconds a scrape reuses the client certificates' soonest expiry (reading the
#: inventory costs a file per issued certificate).
CLIENT_CERTS_CACHE_SECONDS = 60.0


def _method(value: object) -> str:
    return value if isinstance(value, str) and value in METHODS else "other"


def _reason(value: object) -> str:
    return value if isinstance(value, str) and value in _REASONS else "other"


class Metrics:
    """The metrics of one server, in a registry of its own (``registry``).

    Feed it with :meth:`observe` (an audit record), :meth:`count_tls_failure` (a reason)
    and :meth:`count_connections` (the connection class); :meth:`watch` adds the figures
    read when scraped. Thread-safe (prometheus_client's metrics lock per value).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "davserver_requests", "Requests answered, by method and status (one per audit line).",
            ["method", "status"], registry=r,
        )
        self.duration = Histogram(
            "davserver_request_duration_seconds", "Time from the request's headers to the end of its answer.",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.refusals = Counter(
            "davserver_auth_refusals", "Requests refused (decision deny in the audit log), by audit reason.",
            ["reason"], registry=r,
        )
        self.bytes_received = Counter(
            "davserver_bytes_received", "Request body bytes read by the server.", registry=r,
        )
        self.bytes_sent = Counter(
            "davserver_bytes_sent", "Response body bytes sent by the server.", registry=r,
        )
        self.connections = Gauge(
            "davserver_connections_open", "TCP connections of the main listener open now (handshakes included).",
            registry=r,
        )
        self.tls_failures = Counter(
            "davserver_tls_handshake_failures", "TLS handshakes refused, by reason (audit reasons).",
            ["reason"], registry=r,
        )
        for reason in TLS_REASONS:
            self.tls_failures.labels(reason=str(reason))

    # --- feeding ------------------------------------------------------------------

    def observe(self, record: dict[str, Any]) -> None:
        """Count one audit record: a request (``method`` and ``status``), its duration,
        its body bytes, and its reason when refused. Records with an ``event`` (a TLS
        handshake, tls_refusals.py) are counted by :meth:`count_tls_failure` instead."""
        if record.get("event"):
            return
        status = record.get("status")
        code = status if isinstance(status, int) and 0 <= status <= 999 else 0
        self.requests.labels(method=_method(record.get("method")), status=str(code)).inc()
        duration = record.get("duration_ms")
        if isinstance(duration, int | float) and duration >= 0:
            self.duration.observe(duration / 1000)
        for key, counter in (("bytes_in", self.bytes_received), ("bytes_out", self.bytes_sent)):
            value = record.get(key)
            if isinstance(value, int) and value > 0:
                counter.inc(value)
        if record.get("decision") == "deny":
            self.refusals.labels(reason=_reason(record.get("reason"))).inc()

    def count_tls_failure(self, reason: str) -> None:
        """Count one refused TLS handshake (`reason`: tls_refusals.classify's Refusal)."""
        self.tls_failures.labels(reason=_reason(reason)).inc()

    def count_connections(self, base: type) -> type:
        """A subclass of the connection class `base` (cheroot ``HTTPConnection``) whose
        objects count in ``davserver_connections_open`` from creation (cheroot's accept
        thread) until ``close()``, until it is handed to the lingerer (``linger`` set:
        a refused handshake, an answer before its body), or until it is garbage
        collected, whichever comes first; each counts down exactly once."""
        gauge = self.connections

        class CountedConnection(base):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                gauge.inc()
                self._counted = weakref.finalize(self, gauge.dec)

            def close(self) -> None:
                try:
                    super().close()
                finally:
                    self._counted()

            @property
            def linger(self) -> bool:
                return bool(self.__dict__.get("_linger", False))

            @linger.setter
            def linger(self, value: bool) -> None:
                # Handed to the lingerer (http1.Lingerer), which closes the socket within its
                # own bounds and never calls close(): no longer a connection of ours.
                self.__dict__["_linger"] = value
                if value:
                    self._counted()

        CountedConnection.__name__ = CountedConnection.__qualname__ = base.__name__
        return CountedConnection

    def watch(
        self,
        *,
        handshakes: Callable[[], HandshakeCounters] | None = None,
        client_ca: Path | None = None,
        server_not_after: Callable[[], datetime] | None = None,
        certs_dir: Path | None = None,
    ) -> None:
        """Add the figures read at each scrape: the handshake loop's totals
        (``HandshakeLoop.counters``), and the expiry dates of the CA bundle
        (`client_ca`, its soonest), the served certificate (`server_not_after`) and the
        soonest valid client certificate of the built-in CA in `certs_dir`."""
        self.registry.register(_Scraped(handshakes, client_ca, server_not_after, certs_dir))


class _Scraped(Collector):
    def __init__(
        self,
        handshakes: Callable[[], HandshakeCounters] | None,
        client_ca: Path | None,
        server_not_after: Callable[[], datetime] | None,
        certs_dir: Path | None,
    ) -> None:
        self._handshakes = handshakes
        self._client_ca = client_ca
        self._server_not_after = server_not_after
        self._certs_dir = certs_dir
        self._lock = threading.Lock()
        self._clients: tuple[float, float | None] = (-CLIENT_CERTS_CACHE_SECONDS, None)

    def describe(self) -> Iterable[Any]:
        return []  # read at scrape time only; nothing is read at registration

    def collect(self) -> Iterator[Any]:
        if self._handshakes is not None:
            c = self._handshakes()
            totals = CounterMetricFamily(
                "davserver_handshakes", "TLS handshakes by outcome (HandshakeLoop.counters).", labels=["outcome"]
            )
            for outcome in ("accepted", "completed", "failed", "timed_out", "evicted_per_address",
                            "evicted_total", "refused_certificate"):
                totals.add_metric([outcome], getattr(c, outcome))
            yield totals
            yield GaugeMetricFamily("davserver_handshakes_pending", "TLS handshakes in progress now.", value=c.pending)
        expiry = GaugeMetricFamily(
            "davserver_certificate_expiry_timestamp_seconds",
            "When a certificate expires (Unix time): ca (soonest of tls.client_ca), server, client (soonest valid).",
            labels=["kind"],
        )
        ca = self._soonest_ca()
        if ca is not None:
            expiry.add_metric(["ca"], ca)
        if self._server_not_after is not None:
            expiry.add_metric(["server"], self._server_not_after().timestamp())
        client = self._soonest_client()
        if client is not None:
            expiry.add_metric(["client"], client)
        yield expiry

    def _soonest_ca(self) -> float | None:
        if self._client_ca is None:
            return None
        try:
            certs = x509.load_pem_x509_certificates(self._client_ca.read_bytes())
        except (OSError, ValueError):
            return None
        return min((c.not_valid_after_utc.timestamp() for c in certs), default=None)

    def _soonest_client(self) -> float | None:
        if self._certs_dir is None:
            return None
        with self._lock:
            at, value = self._clients
            now = time.monotonic()
            if now - at < CLIENT_CERTS_CACHE_SECONDS:
                return value
            ca = CertificateAuthority(self._certs_dir)
            try:
                valid = [c.not_after for c in ca.list_issued() if c.status == "valid"] if ca.exists() else []
            except (PKIError, OSError, ValueError) as exc:
                log.warning("client certificate expiry not read: %s", exc)
                valid = []
            value = min(valid).timestamp() if valid else None
            self._clients = (now, value)
            return value


#: Worker threads of the metrics listener: one scrape or health check is served while
#: another client is still within its ``request_seconds``.
METRICS_THREADS = 2


class _DeadlineConnection(HTTPConnection):
    """A cheroot connection whose whole request (line, headers, answer) must be done
    within ``request_seconds`` of a worker taking it, enforced by ``watchdog``
    (watchdog.py): cheroot's ``timeout`` bounds each read only, so a client trickling
    one header byte every few seconds would otherwise keep a worker, and with it
    /healthz, forever (cheroot 11.1.2 server.py ``HTTPConnection.communicate``)."""

    watchdog: Watchdog | None = None
    request_seconds: float = 10.0

    def communicate(self) -> bool:
        if self.watchdog is not None:
            self.watchdog.arm(self, time.monotonic() + self.request_seconds, "metrics request")
        try:
            return bool(super().communicate())
        finally:
            if self.watchdog is not None:
                self.watchdog.disarm(self)


class MetricsListener:
    """The plain-HTTP listener of ``metrics.bind``:``metrics.port`` (`config`), serving
    `metrics` and the health checks: `alive()` True while the main listener serves,
    `ready()` None when ready or the reason it is not. :data:`METRICS_THREADS` worker
    threads of its own; each request must be read and answered within
    `request_seconds` (the server passes ``limits.header_seconds``), else its
    connection is closed, so slow clients cannot starve the health checks.
    :meth:`prepare` binds (raises OSError when it cannot), :meth:`start` serves on a
    background thread, :meth:`stop` stops; ``port`` is the port bound."""

    def __init__(
        self, config: MetricsConfig, metrics: Metrics, *, alive: Callable[[], bool], ready: Callable[[], str | None],
        request_seconds: float = 10.0,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.alive = alive
        self.ready = ready
        self._export = make_wsgi_app(metrics.registry)
        self._server = wsgi.Server(
            (config.bind, config.port), self, numthreads=METRICS_THREADS, server_name="davserver-metrics",
            timeout=10,
        )
        self._server.max_request_header_size = 16384
        self._server.max_request_body_size = 1
        self._watchdog = Watchdog()
        self._server.ConnectionClass = type(
            "MetricsConnection", (_DeadlineConnection,),
            {"watchdog": self._watchdog, "request_seconds": request_seconds},
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        addr: Any = self._server.bind_addr
        return int(addr[1])

    def prepare(self) -> None:
        """Bind and listen (idempotent); OSError when the address cannot be bound."""
        if self._server.ready:
            return
        # Tried first: cheroot 11.1.2 leaks its socket when bind() fails (server.py ``prepare``);
        # also for port 0, which still fails for an address that is not this host's.
        family = socket.AF_INET6 if ":" in self.config.bind else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((self.config.bind, self.config.port))
        self._server.prepare()

    def start(self) -> None:
        """Bind if needed and serve on a background thread."""
        self.prepare()
        self._watchdog.start()
        self._thread = threading.Thread(target=self._server.serve, name="davserver-metrics", daemon=True)
        self._thread.start()
        host = self.config.bind if ":" not in self.config.bind else f"[{self.config.bind}]"
        log.info("health and metrics on http://%s:%d/ (/healthz, /readyz, /metrics)", host, self.port)

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self._server.stop()
        self._watchdog.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _plain(start_response, "404 Not Found", "not found\n")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET or HEAD only\n", [("Allow", "GET, HEAD")])
        if path == "/metrics":
            # prometheus_client answers GET only (exposition.py ``prometheus_app``): HEAD is its GET, unsent.
            body: Iterable[bytes] = self._export({**environ, "REQUEST_METHOD": "GET"}, start_response)
            return [] if method == "HEAD" else body
        if path == "/healthz":
            if self.alive():
                return _plain(start_response, "200 OK", "ok\n")
            return _plain(start_response, "503 Service Unavailable", "not serving\n")
        try:
            reason = self.ready()
        except Exception as exc:  # noqa: BLE001 - a failing check is a "not ready", not a 500
            log.exception("readiness check failed")
            reason = f"readiness check failed: {exc}"
        if reason is None:
            return _plain(start_response, "200 OK", "ready\n")
        return _plain(start_response, "503 Service Unavailable", f"not ready: {reason}\n")


def _plain(
    start_response: Callable[..., Any], status: str, text: str, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    start_response(status, headers + (extra or []))
    return [body]
