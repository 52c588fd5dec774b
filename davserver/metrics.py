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

Worker processes (``server.workers`` above 1, supervisor.py) use prometheus_client's own
multiprocess mode (its ``multiprocess.py``, ``values.py``): the supervisor gives every
worker ``PROMETHEUS_MULTIPROC_DIR`` (a private directory) in its environment before
the interpreter starts, so every value a worker's :class:`Metrics` keeps lives in an
mmap'ed file of that directory (``values.MultiProcessValue``: chosen when
prometheus_client is imported). The supervisor serves the one listener
(:func:`supervisor_listener`): ``MultiProcessCollector`` sums the files of every
worker (counters and histograms summed; the open-connection and pending-handshake
gauges are ``livesum``: the sum over workers alive), the certificate expiry dates are
read once, in the supervisor, and :func:`worker_exited` drops a reaped worker's live
gauges (``mark_process_dead``) and folds its counters into one archive file per type,
so counts never go backwards and the directory does not grow with restarts. What
changes for a worker and why is in docs/metrics.md, "Worker processes".
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cheroot import wsgi
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .access import Refusal
from .config import MetricsConfig
from .errors import StartupError
from .handshake import HandshakeCounters
from .pki import CertificateAuthority, PKIError
from .upstream import HTTPConnection
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .config import Config
    from .server_certificate import ServerCertificate
    from .store import StateStore

__all__ = [
    "METHODS", "MULTIPROC_ENV", "Metrics", "MetricsListener", "SupervisorMetrics", "supervisor_listener",
    "worker_exited",
]

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

#: The handshake loop's outcomes exported in ``davserver_handshakes_total``.
HANDSHAKE_OUTCOMES = ("accepted", "completed", "failed", "timed_out", "evicted_per_address", "evicted_total",
                      "refused_certificate")

#: Seconds between two copies of a worker's handshake totals and pending handshakes into
#: its multiprocess files (the handshake loop keeps them as plain integers of its own
#: thread, handshake.py ``HandshakeCounters``): what a scrape shows of them is at most
#: this old, and a worker killed with -9 takes at most this much of its count with it.
HANDSHAKE_SYNC_SECONDS = 1.0

#: The environment variable prometheus_client reads (values.py ``get_value_class``,
#: multiprocess.py): set by the supervisor for its workers only.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """True when this process's metric values live in ``PROMETHEUS_MULTIPROC_DIR``
    (a worker of the supervisor): prometheus_client chose its value class when it was
    imported (values.py ``ValueClass``), so this says what the metrics will do, not
    what the environment says now."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _method(value: object) -> str:
    return value if isinstance(value, str) and value in METHODS else "other"


def _reason(value: object) -> str:
    return value if isinstance(value, str) and value in _REASONS else "other"


class Metrics:
    """The metrics of one server, in a registry of its own (``registry``).

    Feed it with :meth:`observe` (an audit record), :meth:`count_tls_failure` (a reason)
    and :meth:`count_connections` (the connection class); :meth:`watch` adds the figures
    read when scraped. Thread-safe (prometheus_client's metrics lock per value).

    In a worker process (:func:`multiprocess_mode`: ``PROMETHEUS_MULTIPROC_DIR`` set when
    prometheus_client was imported) every value is written to the worker's files in
    that directory as it changes, for the supervisor's listener to sum; ``multiprocess``
    is then True and :meth:`watch` copies the handshake figures into those files every
    `sync_seconds` instead of registering what the supervisor reads itself. Two
    ``Metrics`` in one such process share their values (one file per process).
    """

    def __init__(self, *, sync_seconds: float | None = None) -> None:
        #: True in a worker process: values are in ``PROMETHEUS_MULTIPROC_DIR``.
        self.multiprocess = multiprocess_mode()
        #: Seconds between copies of the handshake figures (None: :data:`HANDSHAKE_SYNC_SECONDS`).
        self.sync_seconds = sync_seconds if sync_seconds is not None else HANDSHAKE_SYNC_SECONDS
        self._mirror: _HandshakeMirror | None = None
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
            registry=r, multiprocess_mode="livesum",  # with workers: the sum over the workers alive
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

    def count_connections(self, base: type[HTTPConnection]) -> type[HTTPConnection]:
        """A subclass of the connection class `base` (cheroot ``HTTPConnection``) whose
        objects count in ``davserver_connections_open`` from creation (cheroot's accept
        thread) until ``close()``, until it is handed to the lingerer (``linger`` set:
        a refused handshake, an answer before its body), or until it is garbage
        collected, whichever comes first; each counts down exactly once."""
        gauge = self.connections

        # A class on a base known only at run time (server.py passes ConnectionClass):
        # mypy cannot type a class statement on it; the base's type is in the signature.
        class CountedConnection(base):  # type: ignore[valid-type,misc]
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
        soonest valid client certificate of the built-in CA in `certs_dir`.

        In a worker (``multiprocess``) only `handshakes` is used: a thread copies it into
        the worker's files every ``sync_seconds`` (and once more at exit); the expiry
        dates are the same files for every worker, read once by the supervisor
        (:func:`supervisor_listener`)."""
        if not self.multiprocess:
            self.registry.register(_Scraped(handshakes, client_ca, server_not_after, certs_dir))
            return
        if handshakes is not None and self._mirror is None:
            self._mirror = _HandshakeMirror(handshakes, self.registry, self.sync_seconds)
            atexit.register(self.close)

    def close(self) -> None:
        """Stop copying the handshake figures, after one last copy (idempotent; a no-op
        in a single process)."""
        if self._mirror is not None:
            self._mirror.close()


class _HandshakeMirror:
    """A worker's handshake totals and pending handshakes, copied from the loop's own
    counters (`read`: ``HandshakeLoop.counters``) into multiprocess values every
    `seconds` on a thread of its own: ``davserver_handshakes_total`` grows by what the
    loop counted since the last copy (so it sums across workers and keeps a dead
    worker's count), ``davserver_handshakes_pending`` is a ``livesum`` gauge."""

    def __init__(self, read: Callable[[], HandshakeCounters], registry: CollectorRegistry, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("sync_seconds must be above 0")
        self._read = read
        self._seconds = seconds
        self._totals = Counter(
            "davserver_handshakes", "TLS handshakes by outcome (HandshakeLoop.counters).", ["outcome"],
            registry=registry,
        )
        for outcome in HANDSHAKE_OUTCOMES:
            self._totals.labels(outcome=outcome)  # exported at 0, as by a single process
        self._pending = Gauge(
            "davserver_handshakes_pending", "TLS handshakes in progress now.", registry=registry,
            multiprocess_mode="livesum",
        )
        self._copied = dict.fromkeys(HANDSHAKE_OUTCOMES, 0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="davserver-metrics-sync", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Copy the figures now."""
        with self._lock:
            counted = self._read()
            for outcome in HANDSHAKE_OUTCOMES:
                now = getattr(counted, outcome)
                if now > self._copied[outcome]:
                    self._totals.labels(outcome=outcome).inc(now - self._copied[outcome])
                    self._copied[outcome] = now
            self._pending.set(counted.pending)

    def _run(self) -> None:
        while not self._stopping.wait(self._seconds):
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - the metrics must never take a worker down
                log.exception("copying the handshake figures failed")

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(timeout=5)
        try:
            self.sync()
        except Exception:  # noqa: BLE001
            log.exception("copying the handshake figures failed")


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
            for outcome in HANDSHAKE_OUTCOMES:
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
            try:
                expiry.add_metric(["server"], self._server_not_after().timestamp())
            except StartupError as exc:  # the supervisor reads the files: a broken pair is absent, /readyz says why
                log.warning("server certificate expiry not read: %s", exc)
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


class Exported(Protocol):
    """What a listener exports: a :class:`Metrics` or the supervisor's :class:`SupervisorMetrics`."""

    registry: CollectorRegistry


class MetricsListener:
    """The plain-HTTP listener of ``metrics.bind``:``metrics.port`` (`config`), serving
    `metrics` (its ``registry``) and the health checks: `alive()` True while the main listener serves,
    `ready()` None when ready or the reason it is not. :data:`METRICS_THREADS` worker
    threads of its own; each request must be read and answered within
    `request_seconds` (the server passes ``limits.header_seconds``), else its
    connection is closed, so slow clients cannot starve the health checks.
    :meth:`prepare` binds (raises OSError when it cannot), :meth:`start` serves on a
    background thread, :meth:`stop` stops; ``port`` is the port bound."""

    def __init__(
        self, config: MetricsConfig, metrics: Exported, *, alive: Callable[[], bool], ready: Callable[[], str | None],
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
        """The TCP port: the configured one until ``prepare()``, then the one bound (a free
        one for port 0; cheroot's prepare() resolves it, cheroot/server.py:1994)."""
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


# --- worker processes: the supervisor's side ---------------------------------------

#: Serialises, within the supervisor, reading the workers' files for a scrape and
#: folding a dead worker's files into the archive (:meth:`SupervisorMetrics.worker_exited`),
#: so a scrape never sees a count twice or not at all.
_FILES_LOCK = threading.Lock()

#: The types of file whose values are counts kept after their worker is gone (a
#: gauge's file is ``gauge_live*_PID.db`` and goes with it: ``mark_process_dead``).
_KEPT_TYPES = ("counter", "histogram")

#: The file per kept type holding the counts of every worker reaped so far. Its name
#: reads as that type to ``MultiProcessCollector`` (the type is the file name up to
#: its first ``_``; the rest is a pid for gauges only).
_ARCHIVE = "{}_archive.db"

_supervised: dict[str, SupervisorMetrics] = {}


class _WorkerFiles(Collector):
    """``MultiProcessCollector`` over `directory`, under :data:`_FILES_LOCK`, skipping
    a file a worker has created but not yet sized (prometheus_client mmap_dict.py
    ``MmapedDict.__init__`` opens, then truncates: read in between, it is empty and
    ``read_all_values_from_file`` fails on its first 4 bytes)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        with _FILES_LOCK:
            files = []
            for name in glob.glob(os.path.join(self._directory, "*.db")):
                try:
                    if os.stat(name).st_size >= 8:
                        files.append(name)
                except FileNotFoundError:
                    continue  # a live gauge's file, removed as its worker was reaped
            merged = list(MultiProcessCollector.merge(files, accumulate=True))
        yield from merged


class _Workers(Collector):
    def __init__(self, alive: Callable[[], int]) -> None:
        self._alive = alive

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "davserver_workers_alive", "Worker processes alive now (the supervisor's count).", value=self._alive()
        )


def _fold(directory: Path, pid: int) -> None:
    """Add the counts in `pid`'s counter and histogram files to the archive of their
    type and remove them, in one step as seen by a scrape (:data:`_FILES_LOCK`): the
    archive is written to the side with ``MultiProcessCollector.merge(...,
    accumulate=False)`` (the form prometheus_client documents for writing merged data
    back to files) and renamed over the old one. Call only once `pid` is gone."""
    with _FILES_LOCK:
        for typ in _KEPT_TYPES:
            mine = directory / f"{typ}_{pid}.db"
            if not mine.exists():
                continue
            archive = directory / _ARCHIVE.format(typ)
            sources = [str(f) for f in (archive, mine) if f.exists() and f.stat().st_size >= 8]
            merged = MultiProcessCollector.merge(sources, accumulate=False)
            side = directory / (_ARCHIVE.format(typ) + ".new")  # not *.db: never read by a scrape
            side.unlink(missing_ok=True)
            out = MmapedDict(str(side))
            try:
                for metric in merged:
                    for sample in metric.samples:
                        key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                       metric.documentation)
                        out.write_value(key, sample.value, 0.0)
            finally:
                out.close()
            os.replace(side, archive)
            mine.unlink()


class SupervisorMetrics:
    """What the supervisor's listener exports (``registry``) and how it answers the
    health checks, for workers writing into `directory` (their ``PROMETHEUS_MULTIPROC_DIR``).

    ``registry`` holds: every worker's metrics summed (``MultiProcessCollector``),
    the certificate expiry dates read here, once per scrape rather than once per
    worker (the CA bundle, the server certificate as on disk, the soonest client
    certificate at most once a minute), and ``davserver_workers_alive`` (`workers_alive()`).

    :meth:`alive`: at least one worker is alive. :meth:`readiness`: None when at least
    one worker is alive, `ready()` (the supervisor's own reason, if given) says
    nothing against, the state store answers and the server certificate on disk is
    readable and current; else the reason. :meth:`worker_exited` after a worker is
    reaped. Raises ValueError when `directory` is not a folder.
    """

    def __init__(
        self, config: Config, directory: str | os.PathLike[str], workers_alive: Callable[[], int],
        ready: Callable[[], str | None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"{MULTIPROC_ENV}: {self.directory} is not a folder")
        self.config = config
        self.workers_alive = workers_alive
        self._ready = ready
        self._lock = threading.Lock()
        self._store: StateStore | None = None
        self._certificate: ServerCertificate | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(self.directory))
        self.registry.register(_Workers(workers_alive))
        self.registry.register(_Scraped(
            None, config.tls.client_ca, self._server_not_after, config.home.certs_dir,
        ))
        _supervised[str(self.directory)] = self

    def _server_certificate(self) -> ServerCertificate:
        from .server_certificate import ServerCertificate

        with self._lock:
            if self._certificate is None:
                self._certificate = ServerCertificate(self.config.tls)  # StartupError when unusable
            else:
                self._certificate.check()  # re-read when the files changed (os.stat only otherwise)
            return self._certificate

    def _server_not_after(self) -> datetime:
        return self._server_certificate().not_after

    def alive(self) -> bool:
        """True while at least one worker is alive (``/healthz``)."""
        return self.workers_alive() > 0

    def readiness(self) -> str | None:
        """None when ready, else why not (``/readyz``); see the class."""
        alive = self.workers_alive()
        if alive < 1:
            return "no worker alive"
        if self._ready is not None:
            reason = self._ready()
            if reason is not None:
                return reason
        from .store import StoreUnavailable, open_store

        try:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.config.state)
                store = self._store
            store.ping()
        except StoreUnavailable as exc:
            return f"state store unavailable: {exc}"
        try:
            not_after = self._server_not_after()
        except StartupError as exc:
            return f"the server certificate cannot be loaded: {exc}"
        if not_after.timestamp() <= time.time():
            return f"the server certificate expired on {not_after:%Y-%m-%d %H:%M} UTC"
        return None

    def worker_exited(self, pid: int) -> None:
        """Worker `pid` is gone (reaped): its live gauges leave the sums
        (``mark_process_dead``) and its counts move into the archive files, so they stay
        in every later scrape. Call it only once the process has exited."""
        mark_process_dead(pid, str(self.directory))
        _fold(self.directory, pid)

    def close(self) -> None:
        """Close the state store opened for ``/readyz`` (idempotent)."""
        _supervised.pop(str(self.directory), None)
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


class SupervisorListener(MetricsListener):
    """The supervisor's listener: a :class:`MetricsListener` of a :class:`SupervisorMetrics`
    (``metrics``), which it closes when stopped."""

    metrics: SupervisorMetrics

    def stop(self) -> None:
        """Stop serving and close what the health checks opened (idempotent)."""
        super().stop()
        self.metrics.close()


def supervisor_listener(
    config: Config, workers_alive: Callable[[], int], ready: Callable[[], str | None] | None = None, *,
    directory: str | os.PathLike[str] | None = None,
) -> SupervisorListener:
    """The health and metrics listener of ``metrics.bind``:``metrics.port`` for a
    supervisor whose workers write into `directory` (None: ``$PROMETHEUS_MULTIPROC_DIR``
    of this process): one scrape sums every worker (:class:`SupervisorMetrics`);
    ``/healthz`` is 200 while at least one worker is alive (`workers_alive()`: how
    many are now), ``/readyz`` as :meth:`SupervisorMetrics.readiness` (`ready`: the
    supervisor's own reason not to be ready, or None). Call ``prepare()`` (binds;
    OSError), ``start()``, and ``stop()`` at the end; :func:`worker_exited` after
    reaping each worker. Raises ValueError when there is no such directory."""
    path = directory if directory is not None else os.environ.get(MULTIPROC_ENV)
    if not path:
        raise ValueError(f"no directory for the workers' metrics: pass directory= or set {MULTIPROC_ENV}")
    metrics = SupervisorMetrics(config, path, workers_alive, ready)
    return SupervisorListener(
        config.metrics, metrics, alive=metrics.alive, ready=metrics.readiness,
        request_seconds=config.limits.header_seconds,
    )


def worker_exited(pid: int, directory: str | os.PathLike[str] | None = None) -> None:
    """The supervisor reaped worker `pid` (its exit status is collected: it writes no
    more): see :meth:`SupervisorMetrics.worker_exited`. `directory`: the workers'
    ``PROMETHEUS_MULTIPROC_DIR``; None is the one of the supervisor_listener made in
    this process (else ``$PROMETHEUS_MULTIPROC_DIR``). Raises ValueError when there is none."""
    if directory is None:
        directory = next(reversed(_supervised)) if _supervised else os.environ.get(MULTIPROC_ENV) or None
        if directory is None:
            raise ValueError(f"no directory for the workers' metrics: pass directory= or set {MULTIPROC_ENV}")
    found = _supervised.get(str(Path(directory)))
    if found is not None:
        found.worker_exited(pid)
        return
    mark_process_dead(pid, str(directory))
    _fold(Path(directory), pid)
