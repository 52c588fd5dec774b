"""The bytes of one request, for its audit line and its upload-rate deadline.

guard.py wraps every request it lets through in these: :class:`CountedInput` counts the
body the application read (``bytes_in``) and, through :func:`body_deadline`, keeps the
connection's watchdog deadline (watchdog.py) ahead of a client that sends at least
``limits.body_min_bytes_per_second`` after ``limits.body_grace_seconds``; from a slower one
the watchdog ends the reading side, and the read that meets that end raises
:class:`BodyTimeout` (408) instead of handing a cut body to the application as if it were
whole. :class:`AuditedResponse` counts the answer
(``bytes_out``) and calls back when the server closes it (PEP 3333: ``close`` is always
called), where the guard writes the one audit line. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .config import LimitsConfig
from .framing import BadContentLength, content_length
from .upstream import DAVError
from .watchdog import current_connection

__all__ = ["BODY_DEADLINE", "AuditedResponse", "BodyTimeout", "CountedInput", "body_deadline"]

#: What :func:`body_deadline` arms the watchdog for (``conn.deadline_passed`` once it passed).
BODY_DEADLINE = "request body"


class BodyTimeout(DAVError):
    """The request body stopped arriving at ``limits.body_min_bytes_per_second``: the
    watchdog ended the connection's reading side (watchdog.end_reading) and a read met
    that end. Answered ``408 Request Timeout`` (RFC 9110 §15.5.9: the request did not
    arrive whole in the time the server was prepared to wait) with ``Connection: close``,
    never processed with the part that came. A DAVError, so WsgiDAV's handlers (a PUT's
    copy loop, an XML body's parse) pass it on as the answer."""

    def __init__(self) -> None:
        super().__init__(408, "The request body came too slowly.", add_headers=[("Connection", "close")])


def _raise_if_cut(on_cut: Callable[[], None] | None) -> None:
    """Raise BodyTimeout when the current connection's body deadline has passed, after
    ``on_cut()`` (the guard records the audit reason there: a reader below may already
    have recorded another, e.g. http1.ChunkedBody's bad_framing for the cut chunk)."""
    conn = current_connection()
    if conn is not None and getattr(conn, "deadline_passed", None) == BODY_DEADLINE:
        if on_cut is not None:
            on_cut()
        raise BodyTimeout


class CountedInput:
    """wsgi.input wrapper that counts the bytes the application read (``count``), and
    keeps the body's watchdog deadline ahead of a client that sends at a fair rate:
    ``on_progress(count, eof)`` is called after every ``read``. A read that ends (empty,
    or an error of the stream) because that deadline passed calls ``on_cut()`` and raises
    :class:`BodyTimeout`."""

    def __init__(self, stream: Any, on_progress: Callable[[int, bool], None] | None = None,
                 on_cut: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self.count = 0
        self._on_progress = on_progress
        self._on_cut = on_cut

    def read(self, *args: Any) -> bytes:
        """The stream's ``read``, counted; raises BodyTimeout for a body cut by its deadline."""
        try:
            data: bytes = self._stream.read(*args)
        except (OSError, ValueError):  # a chunked body cut mid-chunk, a TLS stream cut
            _raise_if_cut(self._on_cut)
            raise
        size = args[0] if args else None
        if size is None or size < 0 or len(data) < size:  # it met the end: a cut one or the body's
            _raise_if_cut(self._on_cut)
        self.count += len(data)
        if self._on_progress is not None:
            self._on_progress(self.count, not data)
        return data

    def readline(self, *args: Any) -> bytes:
        """The stream's ``readline``, counted; raises BodyTimeout as ``read`` does."""
        try:
            data: bytes = self._stream.readline(*args)
        except (OSError, ValueError):
            _raise_if_cut(self._on_cut)
            raise
        if not data.endswith(b"\n"):  # it met the end (or the size asked): maybe a cut one
            _raise_if_cut(self._on_cut)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        """The stream's ``readlines``, counted; raises BodyTimeout as ``read`` does."""
        try:
            lines: list[bytes] = self._stream.readlines(*args)
        except (OSError, ValueError):
            _raise_if_cut(self._on_cut)
            raise
        _raise_if_cut(self._on_cut)  # readlines reads to the end: a cut end is a cut body
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class AuditedResponse:
    """Response iterable that counts the bytes sent and calls ``finish(sent, complete)``
    when the server closes it (``complete``: the body was iterated to its end)."""

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
        """Close the wrapped answer, then call ``finish`` (also when closing raised)."""
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._sent, self._complete)


def body_deadline(
    environ: dict[str, Any], limits: LimitsConfig, started: float
) -> Callable[[int, bool], None] | None:
    """A request body must average ``limits.body_min_bytes_per_second`` (bytes per second)
    after ``limits.body_grace_seconds`` counted from ``started`` (``time.monotonic``):
    arms the current connection's watchdog and returns the progress callback for
    :class:`CountedInput`, which moves the deadline with every read and disarms it at
    the body's end. None when there is no watchdog, no rate limit or no body."""
    conn = current_connection()
    watchdog = getattr(conn, "watchdog", None)
    if watchdog is None or not limits.body_min_bytes_per_second:
        return None
    try:
        expected = content_length(environ)
    except BadContentLength:
        expected = None
    if expected == 0 and not environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    rate = limits.body_min_bytes_per_second
    watchdog.arm(conn, started + limits.body_grace_seconds, BODY_DEADLINE)

    def progress(count: int, eof: bool) -> None:
        if eof or (expected is not None and count >= expected):
            watchdog.disarm(conn)
        else:
            watchdog.arm(conn, started + limits.body_grace_seconds + count / rate, BODY_DEADLINE)

    return progress
