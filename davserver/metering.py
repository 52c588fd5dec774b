"""The bytes of one request, for its audit line and its upload-rate deadline.

guard.py wraps every request it lets through in these: :class:`CountedInput` counts the
body the application read (``bytes_in``) and, through :func:`body_deadline`, keeps the
connection's watchdog deadline (watchdog.py) ahead of a client that sends at least
``limits.body_min_bytes_per_second`` after ``limits.body_grace_seconds``; a slower one
loses the connection as if it had left. :class:`AuditedResponse` counts the answer
(``bytes_out``) and calls back when the server closes it (PEP 3333: ``close`` is always
called), where the guard writes the one audit line. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .config import LimitsConfig
from .framing import BadContentLength, content_length
from .watchdog import current_connection

__all__ = ["AuditedResponse", "CountedInput", "body_deadline"]


class CountedInput:
    """wsgi.input wrapper that counts the bytes the application read (``count``), and
    keeps the body's watchdog deadline ahead of a client that sends at a fair rate:
    ``on_progress(count, eof)`` is called after every ``read``."""

    def __init__(self, stream: Any, on_progress: Callable[[int, bool], None] | None = None) -> None:
        self._stream = stream
        self.count = 0
        self._on_progress = on_progress

    def read(self, *args: Any) -> bytes:
        """The stream's ``read``, counted."""
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        if self._on_progress is not None:
            self._on_progress(self.count, not data)
        return data

    def readline(self, *args: Any) -> bytes:
        """The stream's ``readline``, counted."""
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        """The stream's ``readlines``, counted."""
        lines: list[bytes] = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
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
    watchdog.arm(conn, started + limits.body_grace_seconds, "request body")

    def progress(count: int, eof: bool) -> None:
        if eof or (expected is not None and count >= expected):
            watchdog.disarm(conn)
        else:
            watchdog.arm(conn, started + limits.body_grace_seconds + count / rate, "request body")

    return progress
