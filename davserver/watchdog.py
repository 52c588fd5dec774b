"""Whole-request deadlines, so a client that trickles bytes cannot hold a worker.

cheroot's timeout applies to each read, so a client sending one byte every
few seconds (slowloris) keeps a worker thread forever. The watchdog gives the
handshake plus the request headers one deadline, and a request body a
minimum average rate; past either it shuts the reading side down, which ends the
blocked read in the worker as if the client had gone away.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

__all__ = ["Watchdog", "current_connection", "end_reading"]

log = logging.getLogger("davserver.watchdog")

_local = threading.local()


def current_connection() -> Any:
    """The connection the calling worker thread is serving (set by TLSConnection)."""
    return getattr(_local, "conn", None)


def set_current_connection(conn: Any) -> None:
    """Make ``conn`` (a cheroot HTTPConnection, or None when done) the calling thread's
    current connection, for ``current_connection()``; TLSConnection.communicate sets it
    around each request."""
    _local.conn = conn


class Watchdog:
    """Deadlines of connections, checked every ``interval`` seconds by one daemon thread: a
    connection past its deadline has its reading side ended (``end_reading``) and the
    reason logged. Deadlines are ``time.monotonic()`` seconds; ``arm``/``disarm`` may be
    called from any thread (one deadline per connection, the last armed)."""

    def __init__(self, *, interval: float = 0.25) -> None:
        self.interval = interval
        self._deadlines: dict[int, tuple[float, Any, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any, deadline: float, what: str) -> None:
        """Give ``conn`` the deadline ``deadline`` (``time.monotonic()`` seconds), replacing an
        earlier one; ``what`` names the phase for the log and ``conn.deadline_passed``
        (e.g. ``"request headers"``, ``"request body"``)."""
        self._deadlines[id(conn)] = (deadline, conn, what)

    def disarm(self, conn: Any) -> None:
        """Drop the deadline of ``conn``, if it has one."""
        self._deadlines.pop(id(conn), None)

    def start(self) -> None:
        """Start the checking thread (a daemon: it never holds the process up)."""
        self._thread = threading.Thread(target=self._run, name="davserver-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the checking thread and wait up to 5 s for it; armed deadlines then no longer fire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for key, (deadline, conn, what) in list(self._deadlines.items()):
                if deadline >= now:
                    continue
                current = self._deadlines.get(key)
                if current is None or current[0] >= now:
                    continue  # re-armed or disarmed meanwhile
                self._deadlines.pop(key, None)
                log.info("closing a connection from %s: %s too slow", getattr(conn, "remote_addr", "?"), what)
                end_reading(conn, what)


def end_reading(conn: Any, what: str) -> None:
    """End the blocked read of the worker serving `conn` (an HTTPConnection) as if the
    client had ended its stream, and mark ``conn.deadline_passed`` with `what` (the
    request answers 408 when its headers were cut off, http1.py).

    Only the reading side is shut down (Linux wakes a blocked ``recv`` with end of
    stream): the worker then closes the connection itself, with its TLS close_notify
    (``tls.send_close_notify``; RFC 8446 §6.1), which a shut write side would lose. It
    is the plain socket's shutdown, as ``SSLSocket.shutdown`` would drop the TLS object
    under the worker reading from it. Errors (a socket already closed) are ignored.
    """
    conn.deadline_passed = what
    with contextlib.suppress(OSError, AttributeError, TypeError):
        socket.socket.shutdown(conn.socket, socket.SHUT_RD)
