"""TLS handshakes off the request workers: one selector loop completes them without
blocking, and only a connection whose handshake has completed reaches a worker.

cheroot 11.1.2's accept loop (``cheroot/connections.py:250``, ``ConnectionManager._run``
after ``_from_server_socket``) hands every accepted connection to
``HTTPServer.process_conn`` (``cheroot/server.py:2194``), which queues it for a worker. With the handshake on the
worker, a client that connected and stayed silent, or sent its ClientHello one byte at
a time, held a worker until the deadline: 64 silent connections stalled a certificate
holder for 20 s, 40 trickling ones for about 10 s.

:class:`HandshakingServer` sends a connection that has not completed its handshake to
a :class:`HandshakeLoop` instead: a thread that steps every pending handshake with
non-blocking ``do_handshake()`` calls as its socket becomes readable or writable. A
completed connection goes back to cheroot: to a worker at once when OpenSSL already
holds decrypted bytes of it (``SSLSocket.pending()``, invisible to ``select``),
otherwise to cheroot's own selector (``HTTPServer.put_conn``, ``cheroot/server.py:1954``), where a silent
certificate holder waits like any idle keep-alive connection, not on a worker.

Bounds (all settings in ``config.py``):

- ``limits.handshake_seconds``: a handshake not completed this long after the
  connection was accepted is closed.
- ``server.handshakes_per_address``: pending handshakes from one address (an IPv6
  client counts by its /64 prefix, the block one subscriber gets). A new
  connection from an address at its cap closes that address's *oldest* pending
  handshake. The newest is kept because a legitimate client behind the same address
  (a NAT) completes its handshake within a round trip or two, while a flood's oldest
  connections are the silent ones; refusing the newest instead would let a flood hold
  the cap and lock that address's real users out for the whole deadline.
- ``server.handshakes_total``: pending handshakes in all. At the cap, a new connection
  closes the oldest pending handshake of the address holding the most of them, so a
  flood from one address cannot push out the clients of other addresses.

- Certificate check: a completed handshake whose client certificate is revoked, or
  maps to no enabled account (``HandshakeLoop(admit=...)``, wired by the server to the
  guard's own certificate check), is marked (``_REFUSED_KEY`` in its ``ssl_env``). All
  such connections share one slot group in :class:`HeaderPhase`, so however many
  refused certificates a client holds, they cannot keep workers waiting for headers;
  they are still answered (401 with the reason in the audit line, by the guard), not
  dropped after a completed handshake, which a client would take for a network fault.

After the handshake, :class:`HeaderPhase` bounds the connections of one client
certificate that hold a worker while their request headers arrive
(``limits.header_phase_per_certificate``): a request worker blocks on a connection
from the moment it becomes readable until its header section is complete, so 40
connections trickling a request line a byte a second held every worker for
``limits.header_seconds``.

Every closed handshake is counted (:class:`HandshakeCounters`, read by
:meth:`HandshakeLoop.counters`) and logged at INFO, at most one line per kind every
:data:`LOG_INTERVAL` seconds with the number of events it stands for.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .addresses import client_block
from .proxy_protocol import ProxyHeaderError, ProxyPolicy, read_header, starts_with_proxy_header
from .tls import TLSConnection
from .upstream import WSGIServer
from .watchdog import end_reading

__all__ = [
    "listener_url",
    "HandshakeCounters",
    "HandshakeLoop",
    "HandshakingServer",
    "ConnectionPhase",
    "HeaderPhase",
    "HeaderPhaseCounters",
    "client_address",
    "raise_open_file_limit",
]

log = logging.getLogger("davserver.handshake")

#: Seconds between two log lines of one kind (failed handshakes, timeouts, evictions).
LOG_INTERVAL = 10.0

#: The soft open-file limit asked for when the hard one is unlimited (Linux caps it at fs.nr_open).
_NO_LIMIT_TARGET = 1 << 20

#: Longest sleep of the loop when nothing happens (the next deadline usually comes sooner).
_IDLE_SECONDS = 1.0


#: In a connection's ``ssl_env`` (connection state, written and read here only, before
#: any request exists): why its certificate can never be served (set by the handshake
#: loop's ``admit`` check); such connections share one HeaderPhase group.
_REFUSED_KEY = "davserver.refused_certificate"


@dataclass
class HandshakeCounters:
    """Totals since the server started, for the metrics endpoint; only the loop thread writes.

    ``accepted``: connections that entered the loop; ``completed``: handed to the server;
    ``failed``: handshake refused or broken (no or untrusted certificate, not TLS, peer
    gone); ``timed_out``: past ``limits.handshake_seconds``; ``evicted_per_address`` and
    ``evicted_total``: closed to make room under ``server.handshakes_per_address`` and
    ``server.handshakes_total``; ``refused_certificate``: completed, then closed because
    the certificate is revoked or maps to no enabled account (the ``admit`` callback);
    ``proxy_refused``: closed before TLS for their PROXY header (``server.proxy_protocol``:
    missing, malformed or too long from a trusted proxy, or sent by any other address);
    ``pending``: handshakes in progress now.
    """

    accepted: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    evicted_per_address: int = 0
    evicted_total: int = 0
    refused_certificate: int = 0
    proxy_refused: int = 0
    pending: int = 0


class _RateLimitedLog:
    """INFO lines of one kind at most every `interval` seconds, each saying how many
    events it stands for, so a flood cannot flood the log too."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def info(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + self.interval
        held = self._held.pop(kind, 0)
        if held:
            log.info(msg + " (and %d more like it in the last %.0f s)", *args, held, self.interval)
        else:
            log.info(msg, *args)


def client_address(conn: Any) -> str:
    """The client's address as the audit log and the metrics show it: the connection's
    ``remote_addr`` (the one place to change when the address comes from elsewhere,
    e.g. a PROXY protocol header); "" when unknown."""
    return str(getattr(conn, "remote_addr", None) or "")


#: Stages of a pending connection before TLS (``server.proxy_protocol`` on): its PROXY
#: header is awaited (from a trusted proxy), or its first bytes are screened for one.
#: ``_AFTER_HEADER``: the header is in, no TLS byte yet (a proxy's health check closes here).
_AWAIT_HEADER, _SCREEN, _AFTER_HEADER, _TLS = "header", "screen", "after-header", "tls"


class _Pending:
    __slots__ = ("address", "conn", "deadline", "events", "held", "stage")

    def __init__(self, conn: TLSConnection, address: str, deadline: float, stage: str = _TLS) -> None:
        self.conn = conn
        self.address = address
        self.deadline = deadline
        self.events = selectors.EVENT_READ
        self.stage = stage
        self.held = bytearray()  # bytes of a PROXY header taken so far


class HandshakeLoop:
    """Completes TLS handshakes on one thread, without blocking, within bounds.

    `server` is the cheroot server the completed connections go back to; `per_address`
    and `total` cap the pending handshakes (≥ 1); `deadline_seconds` is the time from
    acceptance to a completed handshake. :meth:`submit` is called by cheroot's accept
    thread; everything else about a pending connection happens on the loop's thread.
    `admit`, called on the loop's thread with the completed connection's ``ssl_env`` (the
    parsed certificate under ``tls.CERT_ENVIRON_KEY``) and its peer address, returns None
    to hand the connection on, or a refusal reason (a short word such as ``"revoked"``)
    to mark it (``_REFUSED_KEY``) before handing it on; it must be cheap and must not block
    (it runs once per handshake, for every client). An exception in it marks the
    connection as refused. `lingerer` (an ``http1.Lingerer``, optional) takes the socket
    of a handshake refused with an alert while the client's bytes wait unread, so that
    the alert is not lost to a reset (:meth:`_close_refused`).
    `proxy` (``server.proxy_protocol``, a ``proxy_protocol.ProxyPolicy``; None: off): a
    connection from a trusted proxy must first send its PROXY header, read here within
    the same deadline (:meth:`_before_tls`); its source address then replaces the
    connection's ``remote_addr``, the one address every later layer reads, and the
    connection counts under it from then on (while the header is awaited it counts
    only toward `total`, not toward the proxy's `per_address`). A connection from any
    other address that begins with a PROXY header is closed. `on_proxy_refusal(peer,
    detail)`, called on the loop's thread, records each such refusal (the audit line).
    A trusted proxy's connection that closes before its header or right after it,
    before any TLS byte (its health checks), is closed quietly: no refusal, no failure.
    Raises ``ValueError`` for a cap below 1 or a deadline not above 0.
    """

    #: Called on the loop's thread with each failed handshake's exception, the client's
    #: address (:func:`client_address`) and the seconds since acceptance; set by the server
    #: (tls_refusals.TLSRefusals.refused). It must be cheap and must not block.
    on_failure: Callable[[BaseException, str, float], object] | None = None

    def __init__(
        self,
        server: Any,
        *,
        per_address: int,
        total: int,
        deadline_seconds: float,
        admit: Callable[[dict[str, Any], str], str | None] | None = None,
        lingerer: Any = None,
        proxy: ProxyPolicy | None = None,
        on_proxy_refusal: Callable[[str, str], None] | None = None,
    ) -> None:
        if per_address < 1 or total < 1 or deadline_seconds <= 0:
            raise ValueError("per_address and total must be at least 1, deadline_seconds above 0")
        self.server = server
        self.per_address = per_address
        self.total = total
        self.deadline_seconds = deadline_seconds
        self.admit = admit
        self.lingerer = lingerer
        self.proxy = proxy
        self.on_proxy_refusal = on_proxy_refusal
        self._counters = HandshakeCounters()
        self._log = _RateLimitedLog()
        self._intake: deque[TLSConnection] = deque()
        self._order: dict[_Pending, None] = {}  # oldest first: deadlines come in this order
        self._by_address: dict[str, dict[_Pending, None]] = {}
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- any thread ---------------------------------------------------------------

    def counters(self) -> HandshakeCounters:
        """A copy of the totals (see :class:`HandshakeCounters`)."""
        snapshot = HandshakeCounters(**asdict(self._counters))
        snapshot.pending = len(self._order)
        return snapshot

    def start(self) -> None:
        """Start the loop's thread (idempotent)."""
        if self._thread is not None:
            return
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="davserver-handshakes", daemon=True)
        self._thread.start()

    def submit(self, conn: TLSConnection) -> None:
        """Take over an accepted connection whose handshake has not completed."""
        # No lock: this runs on cheroot's accept thread, the main thread of `davserver
        # serve`, where SIGTERM raises KeyboardInterrupt and could leave a lock held.
        self._intake.append(conn)
        if self._thread is None or self._stopping.is_set():
            self._close_intake()  # stop() may have emptied the intake already
        else:
            self._wake()

    def stop(self) -> None:
        """Stop the thread and close every pending handshake."""
        self._stopping.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=10)
        for entry in list(self._order):
            self._drop(entry)
            _close(entry.conn)
        self._close_intake()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self._selector is not None:
            self._selector.close()

    def _close_intake(self) -> None:
        while True:
            try:
                conn = self._intake.popleft()  # atomic: submit() and stop() may both drain
            except IndexError:
                return
            _close(conn)

    def _wake(self) -> None:
        # A full socket buffer means unread wake-ups: the loop wakes up anyway.
        with contextlib.suppress(OSError):
            assert self._wake_w is not None
            self._wake_w.send(b"\0")

    # --- the loop's thread ----------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            timeout = _IDLE_SECONDS
            if self._order:
                timeout = max(0.0, min(timeout, next(iter(self._order)).deadline - time.monotonic()))
            try:
                events = self._selector.select(timeout)
            except OSError:  # noqa: PERF203 - a closed fd under the selector; the next pass recovers
                log.exception("handshake selector failed")
                continue
            for key, _ in events:
                if key.data is None:
                    self._take_intake()
                else:
                    self._step(key.data)
            self._expire(time.monotonic())

    def _take_intake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while self._intake:
            conn = self._intake.popleft()
            try:
                self._admit(conn)
            except Exception:  # noqa: BLE001 - one broken connection must not end the loop
                log.exception("could not take over a new connection; closed")
                for entry in [e for e in self._order if e.conn is conn]:
                    self._drop(entry)
                _close(conn)

    def _admit(self, conn: TLSConnection) -> None:
        assert self._selector is not None
        self._counters.accepted += 1
        address = client_block(str(conn.remote_addr or ""))
        stage = self._first_stage(str(conn.remote_addr or ""))
        if stage == _AWAIT_HEADER:
            address = _AWAIT_HEADER + " " + address  # not the proxy's per-address cap: see _before_tls
        same = self._by_address.get(address)
        if stage != _AWAIT_HEADER and same is not None and len(same) >= self.per_address:
            self._evict(next(iter(same)), per_address=True)
        if len(self._order) >= self.total:
            self._evict(self._oldest_of_busiest(), per_address=False)
        entry = _Pending(conn, address, time.monotonic() + self.deadline_seconds, stage)
        conn.socket.setblocking(False)
        # The client speaks first: nothing to do until its ClientHello arrives.
        self._selector.register(conn.socket, selectors.EVENT_READ, entry)
        self._order[entry] = None
        self._by_address.setdefault(address, {})[entry] = None
        if _bytes_waiting(conn.socket):
            self._step(entry)  # usually it has: one trip through select() saved

    def _oldest_of_busiest(self) -> _Pending:
        busiest = max(self._by_address.values(), key=len)
        return next(iter(busiest))

    def _evict(self, entry: _Pending, *, per_address: bool) -> None:
        # Counted before the close: whoever sees the close also sees the count.
        if per_address:
            self._counters.evicted_per_address += 1
            self._log.info(
                "evict_address",
                "closed the oldest pending TLS handshake from %s: server.handshakes_per_address (%d) reached",
                entry.address, self.per_address,
            )
        else:
            self._counters.evicted_total += 1
            self._log.info(
                "evict_total",
                "closed the oldest pending TLS handshake from %s (the busiest address): "
                "server.handshakes_total (%d) reached",
                entry.address, self.total,
            )
        self._drop(entry)
        _close(entry.conn)

    def _drop(self, entry: _Pending) -> None:
        """Forget a pending handshake (the caller closes or hands on its connection)."""
        if entry not in self._order:
            return
        del self._order[entry]
        same = self._by_address[entry.address]
        del same[entry]
        if not same:
            del self._by_address[entry.address]
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(entry.conn.socket)

    def _first_stage(self, peer: str) -> str:
        if self.proxy is None:
            return _TLS
        return _AWAIT_HEADER if self.proxy.trusts(peer) else _SCREEN

    def _before_tls(self, entry: _Pending) -> bool:
        """The PROXY stage of a pending connection (``server.proxy_protocol`` on): True
        when its TLS handshake may start now, False while bytes are awaited or after it
        was closed. From a trusted proxy the header is read (exactly its bytes: the
        ClientHello stays in the kernel for OpenSSL) and its source address becomes the
        connection's ``remote_addr`` (LOCAL / UNKNOWN: the proxy's own stays); from any
        other address the first bytes are looked at, not read, and a PROXY header there
        closes the connection."""
        assert self.proxy is not None
        conn = entry.conn
        peer = str(conn.remote_addr or "")
        try:
            if entry.stage == _SCREEN:
                if not self._screen(entry):
                    return False
                entry.stage = _TLS
                return True
            header = read_header(conn.socket, self.proxy.version, entry.held, max_v2_bytes=self.proxy.max_v2_bytes)
        except EOFError:
            # A trusted proxy's plain TCP check: connected and closed, sent nothing. Not audited.
            self._drop(entry)
            _close(conn)
            return False
        except (ProxyHeaderError, OSError) as exc:
            self._counters.proxy_refused += 1
            self._drop(entry)
            _close(conn)
            self._log.info("proxy_refused", "closed a connection from %s before TLS: %s", peer or "?", exc)
            if self.on_proxy_refusal is not None:
                try:
                    self.on_proxy_refusal(peer, str(exc))
                except Exception:  # noqa: BLE001 - recording a refusal must not end the loop
                    log.exception("recording a PROXY header refusal failed")
            return False
        if header is None:
            return False
        entry.stage = _AFTER_HEADER
        if header.source is not None:
            conn.remote_addr, conn.remote_port = header.source
        self._rekey(entry, client_block(str(conn.remote_addr or "")))
        return True

    def _screen(self, entry: _Pending) -> bool:
        """The first bytes of a connection from an untrusted address: True for anything
        but the start of a PROXY header (a ClientHello begins 0x16; "" is an EOF that
        the TLS step reports); False while they are only the beginning of one (taken
        into ``held``: they are no TLS either way). Raises ProxyHeaderError for a
        header, or for bytes that began like one and are neither."""
        sock = entry.conn.socket
        data = _peek(sock, 16 - len(entry.held))
        if data is None:
            return False
        if not data and not entry.held:
            return True
        if not data:
            raise ProxyHeaderError("closed after the beginning of a PROXY header")
        verdict = starts_with_proxy_header(bytes(entry.held) + data)
        if verdict is False and not entry.held:
            return True
        if verdict is None:
            entry.held += socket.socket.recv(sock, len(data), socket.MSG_DONTWAIT)
            return False
        if verdict:
            raise ProxyHeaderError("a PROXY header from an address not in server.trusted_proxies")
        raise ProxyHeaderError("neither TLS nor a PROXY header")

    def _rekey(self, entry: _Pending, address: str) -> None:
        """Count `entry` under `address` from now on; at that address's cap, close its
        oldest other pending handshake (as :meth:`_admit` does for a new connection)."""
        old = self._by_address[entry.address]
        del old[entry]
        if not old:
            del self._by_address[entry.address]
        same = self._by_address.get(address)
        if same is not None and len(same) >= self.per_address:
            self._evict(next(iter(same)), per_address=True)
        entry.address = address
        self._by_address.setdefault(address, {})[entry] = None

    def _step(self, entry: _Pending) -> None:
        """Advance a pending connection as far as its bytes allow (:meth:`_advance`); an
        unexpected error in doing so closes that connection, never the loop's thread
        (which would leave every later connection waiting until the server stops)."""
        try:
            self._advance(entry)
        except Exception:  # noqa: BLE001 - one broken connection must not end the loop
            log.exception("connection from %s broke in the handshake loop; closed", entry.address or "?")
            self._drop(entry)
            _close(entry.conn)

    def _advance(self, entry: _Pending) -> None:
        if entry.stage in (_AWAIT_HEADER, _SCREEN) and not self._before_tls(entry):
            return
        if entry.stage == _AFTER_HEADER:
            try:
                first = _peek(entry.conn.socket, 1)
            except OSError:
                first = b""
            if first is None:
                return  # the ClientHello has not arrived yet
            if not first:
                # Closed after its header, before any TLS byte: a proxy's health check (HAProxy
                # sends a LOCAL header, with v1 its own addresses, then closes). Not a failed handshake.
                self._drop(entry)
                _close(entry.conn)
                return
            entry.stage = _TLS
        conn = entry.conn
        try:
            wanted = conn.continue_handshake()
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._counters.failed += 1
            self._report_failure(entry, exc)
            self._drop(entry)
            self._close_refused(conn, alerted=isinstance(exc, ssl.SSLError))
            self._log.info("failed", "TLS handshake with %s failed: %s", entry.address or "?", exc)
            return
        except Exception:  # noqa: BLE001 - one broken connection must not end the loop
            self._counters.failed += 1
            self._drop(entry)
            _close(conn)
            log.exception("TLS handshake with %s broke", entry.address or "?")
            return
        if wanted:
            if wanted != entry.events:
                assert self._selector is not None
                self._selector.modify(conn.socket, wanted, entry)
                entry.events = wanted
            return
        self._counters.completed += 1
        self._drop(entry)
        if self.admit is not None and self._refuse(entry):
            return
        try:
            self._hand_on(conn)
        except OSError as exc:  # the peer left right after its handshake
            log.debug("connection from %s lost after its handshake: %s", entry.address or "?", exc)
            _close(conn)

    def _report_failure(self, entry: _Pending, exc: BaseException) -> None:
        """Hand a failed handshake to ``on_failure`` (the audit of TLS refusals,
        tls_refusals.py) with the client's address (:func:`client_address`) and the
        seconds since it was accepted; an error there is logged, never raised."""
        if self.on_failure is None:
            return
        try:
            started = entry.deadline - self.deadline_seconds
            self.on_failure(exc, client_address(entry.conn), time.monotonic() - started)
        except Exception:  # noqa: BLE001 - auditing a refusal must not end the loop
            log.exception("could not record the failed TLS handshake with %s", entry.address or "?")

    def _close_refused(self, conn: TLSConnection, *, alerted: bool) -> None:
        """Close a connection whose handshake failed. When OpenSSL answered with an alert
        (``alerted``: no certificate, untrusted CA ...) and the client already sent more
        (a TLS 1.3 client sends its request right after its Finished, before the server
        has checked its certificate), a plain close would reset the connection over that
        unread data, and the reset destroys the alert before the client reads it (it then
        reports a bare EOF: 7 runs in 10 here). Such a socket goes to the lingerer
        (``lingerer.add``, http1.Lingerer: the write side ends, what the client still
        sends is read and dropped within ``limits.linger_bytes``, ``linger_seconds`` and
        ``linger_connections``; the server gives this loop a lingerer of its own, so these
        never take the slots of served connections); any other closes at once."""
        if (
            alerted
            and self.lingerer is not None
            and _bytes_waiting(conn.socket)
            and self.lingerer.add(conn.socket)
        ):
            conn.linger = True
            return
        _close(conn)

    def _refuse(self, entry: _Pending) -> bool:
        """Mark a completed connection whose certificate ``admit`` refuses (it is handed on
        all the same, into the refused group of :class:`HeaderPhase`); always False."""
        assert self.admit is not None
        try:
            reason = self.admit(entry.conn.ssl_env, str(entry.conn.remote_addr or ""))
        except Exception:  # noqa: BLE001 - a broken check refuses; it must not end the loop
            log.exception("certificate check after the TLS handshake with %s broke", entry.address or "?")
            reason = "error"
        if reason is None:
            return False
        self._counters.refused_certificate += 1
        entry.conn.ssl_env[_REFUSED_KEY] = reason
        self._log.info(
            "refused_certificate",
            "a connection from %s presents a refused client certificate (%s): one shared header slot group",
            entry.address or "?", reason,
        )
        return False

    def _hand_on(self, conn: TLSConnection) -> None:
        server = self.server
        if not server.ready:
            _close(conn)
            return
        conn.socket.settimeout(server.timeout)
        if conn.socket.pending():
            # Decrypted bytes inside OpenSSL: select() would never report them.
            server.process_conn(conn)
        else:
            # Idle until its first request arrives, in cheroot's selector, not on a worker.
            server.put_conn(conn)

    def _expire(self, now: float) -> None:
        while self._order:
            entry = next(iter(self._order))
            if entry.deadline > now:
                return
            self._counters.timed_out += 1
            self._drop(entry)
            _close(entry.conn)
            self._log.info(
                "timed_out",
                "closed a TLS handshake from %s: not completed within limits.handshake_seconds (%g s)",
                entry.address or "?", self.deadline_seconds,
            )


#: A connection in the header phase for less than this is not evicted yet: the one
#: entering waits (at most this long) for it to finish or to age, so parallel requests
#: of one certificate that a busy machine delays by a few milliseconds are not cut off.
EVICT_AFTER_SECONDS = 0.05


@dataclass
class HeaderPhaseCounters:
    """Totals since the server started: ``evicted``, connections shut down to make room
    under ``limits.header_phase_per_certificate``; ``in_phase``: connections in the
    header phase now."""

    evicted: int = 0
    in_phase: int = 0


class ConnectionPhase:
    """Bounds the connections of one client that hold a worker while a part of their
    request (the header section, or a form body) arrives.

    A connection is in the phase from :meth:`enter` until :meth:`leave` (both called by
    the worker thread serving it). A legitimate client sends a whole header section in one
    packet, so it spends microseconds here; a client trickling its headers spends up to
    the watchdog's deadline, on a worker. ``key(conn)`` names its client ("" for one not
    counted); at most ``limit`` (≥ 1) connections of one key are in the phase: a new one
    at the cap ends the reading side of the *oldest* of them (``watchdog.end_reading``:
    its worker's blocked read ends, it answers 408 or closes, with close_notify), once
    that one has been in the phase ``evict_after`` seconds; the newest is kept because a
    fast legitimate request of the same client must still be served while the tricklers
    lose their slots. Evictions are logged at INFO, at most one line of a kind every
    :data:`LOG_INTERVAL` seconds, naming ``setting`` (the bound's config key) and the
    ``client`` kind ("certificate", "address"). Raises ``ValueError`` for ``limit``
    below 1 (naming ``limit_name``). :class:`HeaderPhase` keys by certificate,
    ``enrolment_listener.AddressPhase`` by address.
    """

    #: Whether enrolment_pages.read_form enters the phase again for the form body.
    counts_body = False

    def __init__(self, limit: int, key: Callable[[Any], str], *, evict_after: float, setting: str,
                 client: str, limit_name: str = "limit") -> None:
        if limit < 1:
            raise ValueError(f"{limit_name} must be at least 1")
        self.limit = limit
        self.evict_after = evict_after
        self._key = key
        self._setting = setting
        self._client = client
        self._cond = threading.Condition()
        # key -> {id(conn): (monotonic entry time, conn, what it waits for)}, oldest first
        self._by_key: dict[str, dict[int, tuple[float, Any, str]]] = {}
        self._keys: dict[int, str] = {}
        #: Connections shut down to make room since the start.
        self.evicted = 0
        self._log = _RateLimitedLog()

    def counters(self) -> HeaderPhaseCounters:
        """A copy of the totals (see :class:`HeaderPhaseCounters`)."""
        with self._cond:
            return HeaderPhaseCounters(evicted=self.evicted, in_phase=len(self._keys))

    def in_phase(self) -> int:
        """Connections in the phase now (all clients)."""
        with self._cond:
            return len(self._keys)

    def enter(self, conn: Any, what: str = "request header section") -> None:
        """`conn` (an HTTPConnection) starts waiting for `what` (named in the 408 of an
        evicted one); at the cap, shut down the oldest connection of its client in the
        phase. Idempotent; a connection without a key is not counted."""
        key = self._key(conn)
        if not key:
            return
        with self._cond:
            if id(conn) in self._keys:
                return
            while True:
                same = self._by_key.setdefault(key, {})
                if len(same) < self.limit:
                    break
                oldest, (started, victim, victim_what) = next(iter(same.items()))
                wait = started + self.evict_after - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del same[oldest]
                del self._keys[oldest]
                self.evicted += 1
                self._log.info(
                    f"evict_{self._setting}",
                    "closed the oldest connection of %s %s still sending its %s: %s (%d) reached",
                    self._client, key[:16], victim_what, self._setting, self.limit,
                )
                # The reading side only: its worker closes it, with close_notify.
                end_reading(victim, victim_what)
            same[id(conn)] = (time.monotonic(), conn, what)
            self._keys[id(conn)] = key

    def leave(self, conn: Any) -> None:
        """`conn`'s part is in (or its request ended); idempotent."""
        with self._cond:
            key = self._keys.pop(id(conn), None)
            if key is None:
                return
            same = self._by_key.get(key)
            if same is not None:
                same.pop(id(conn), None)
                if not same:
                    del self._by_key[key]
            self._cond.notify_all()


def _certificate_key(conn: Any) -> str:
    """The SHA-256 fingerprint of `conn`'s certificate (``SSL_CLIENT_CERT_SHA256`` in
    ``ssl_env``), ``_REFUSED_KEY`` for one the handshake loop refused, "" without one."""
    env = getattr(conn, "ssl_env", None) or {}
    return _REFUSED_KEY if env.get(_REFUSED_KEY) else str(env.get("SSL_CLIENT_CERT_SHA256") or "")


class HeaderPhase(ConnectionPhase):
    """The :class:`ConnectionPhase` of the main listener: the header section, from the
    moment a worker picks a connection up (``tls.TLSConnection.communicate``) until it has
    been read (``http1.HTTP1Request.parse_request``), at most `per_certificate`
    connections of one client certificate (its SHA-256 fingerprint), the oldest evicted
    once it has been in the phase `evict_after` seconds (:data:`EVICT_AFTER_SECONDS`).
    Every connection whose certificate the handshake loop refused (``_REFUSED_KEY``)
    counts in one group, as if all were one certificate; one without a fingerprint is
    not counted. Raises ``ValueError`` for `per_certificate` below 1.
    """

    def __init__(self, per_certificate: int, *, evict_after: float = EVICT_AFTER_SECONDS) -> None:
        super().__init__(per_certificate, _certificate_key, evict_after=evict_after,
                         setting="limits.header_phase_per_certificate", client="certificate",
                         limit_name="per_certificate")
        self.per_certificate = per_certificate


def _bytes_waiting(sock: ssl.SSLSocket) -> bool:
    """True when the kernel holds bytes of `sock`: a non-blocking peek at the TCP stream
    under the TLS layer (hence the plain socket's recv), which reads nothing into OpenSSL
    (a silent connection costs no read buffer)."""
    try:
        return bool(socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing yet (EAGAIN), or an error the handshake step will meet
        return False


def _peek(sock: ssl.SSLSocket, size: int) -> bytes | None:
    """Up to `size` bytes the kernel holds for `sock`, left there; b"" at the end of the
    stream, None when nothing has arrived yet: the plain socket's recv, under TLS."""
    try:
        return socket.socket.recv(sock, size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None


def _close(conn: TLSConnection) -> None:
    with contextlib.suppress(OSError):
        conn.close()


def listener_url(bind: str, port: int) -> str:
    """``https://HOST:PORT`` of a TLS listener bound to ``bind`` (an IP address or
    ``localhost``) and ``port``: IPv6 in brackets, a wildcard (``0.0.0.0``, ``::``)
    named as ``127.0.0.1``. Shared by the main and the enrolment listener."""
    host = bind if ":" not in bind else f"[{bind}]"
    if host in ("0.0.0.0", "[::]"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    return f"https://{host}:{port}"


class HandshakingServer(WSGIServer):
    """cheroot's WSGI server, with handshakes in a :class:`HandshakeLoop`.

    ``process_conn`` (``cheroot/server.py:2194``; called from ``cheroot/connections.py:250``
    and ``:255``) is where cheroot's connection manager
    hands over both new connections and kept-alive ones that became readable; a
    :class:`~davserver.tls.TLSConnection` whose handshake has not completed goes to
    ``handshakes`` instead of the worker pool. Set ``handshakes`` before serving.
    """

    handshakes: HandshakeLoop | None = None
    #: A listening socket bound by another process (the supervisor: supervisor.py) and
    #: shared by several workers: ``prepare`` serves on it instead of binding its own.
    inherited_socket: socket.socket | None = None

    def bind(self, family: int, type: int, proto: int = 0) -> Any:  # noqa: A002 - cheroot's signature
        """cheroot's ``bind`` (``cheroot/server.py:1982``, called from ``prepare``), or with
        an ``inherited_socket`` that socket as it is."""
        if self.inherited_socket is None:
            return super().bind(family, type, proto)
        sock = self.socket = self.inherited_socket
        self.bind_addr = self.resolve_real_bind_addr(sock)
        return sock

    @staticmethod
    def bind_socket(socket_: socket.socket, bind_addr: Any) -> socket.socket:
        """cheroot's ``bind_socket`` (``cheroot/server.py`` ``HTTPServer.bind``), closing the
        socket when it cannot be bound: cheroot's ``bind`` has not stored it in ``self.socket``
        yet, so its ``prepare`` never closes it and the error's traceback kept it open (the
        enrolment listener's port taken left a socket behind)."""
        try:
            socket_.bind(bind_addr)
        except BaseException:
            socket_.close()
            raise
        return socket_

    def prepare(self) -> None:
        """cheroot's ``prepare``; on an ``inherited_socket`` accept() then never waits: the
        other workers wake for the same connection, and cheroot's 1 s accept timeout
        (``cheroot/server.py:1861``) would stall this worker's connection loop whenever
        another one took it (``connections.py`` ``_from_server_socket`` treats EAGAIN as
        nothing to accept)."""
        super().prepare()
        if self.inherited_socket is not None:
            self.socket.setblocking(False)

    def process_conn(self, conn: Any) -> None:
        """A newly accepted connection goes to the handshake loop until its TLS handshake is
        done; a handshaken (or plain) one goes to cheroot's worker queue
        (cheroot/server.py:2194 ``process_conn``)."""
        if self.handshakes is not None and isinstance(conn, TLSConnection) and not conn.handshake_done:
            self.handshakes.submit(conn)
        else:
            super().process_conn(conn)


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit and return the new soft
    limit: every pending handshake, kept-alive connection and open file is a descriptor,
    and the usual soft limit (1,024) is below what one flood opens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _NO_LIMIT_TARGET
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft
    log.info("open-file limit raised from %d to %d", soft, target)
    return target
