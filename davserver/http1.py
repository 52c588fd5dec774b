"""HTTP/1.1 message framing for cheroot: strict, bounded, and decided by the application.

cheroot 11.1.2 reads a request's framing leniently and its bodies generously:

* its header reader (``cheroot/server.py`` ``HeaderReader.__call__``, ~line 200) takes
  the last of two different ``Content-Length`` headers (cherrypy/cheroot#275, #737: the
  body of one request ran as a second request), accepts ``Transfer-Encoding`` together
  with ``Content-Length``, strips whitespace between a field name and its colon, joins
  obs-fold lines, and passes NUL and bare CR in values; ``int()`` parses
  ``Content-Length: +3`` and chunk sizes ``0x3``, ``+3``, ``1_0`` and ``-5``
  (``ChunkedRFile._fetch``, ~line 490); a request without ``Host`` is served;
* it answers ``Expect: 100-continue`` while reading the headers (``read_request_headers``,
  ~line 1061), before the application has decided anything, so a client without
  credentials is invited to send its upload;
* after answering a request whose body was not read, it drains the rest with one
  ``rfile.read(remaining)`` (``send_headers``, ~line 1236), which the TLS reader turned
  into one buffer of the announced size: 256 MiB of memory for one ``OPTIONS`` with a
  ``Content-Length`` and no body; and ``ChunkedRFile`` reads a whole chunk of any
  announced size into memory.

:class:`HTTP1Request` replaces those parts:

* **Strict framing** (RFC 9112 §2.2, §3.2, §5, §6.1, §6.3, §7.1; RFC 9110 §5.5, §8.6):
  every field name is a token followed directly by the colon; no obs-fold; no NUL, CR
  or other control character in a value; ``Content-Length`` is digits only (framing.py), and
  repeated only with the same value; ``Transfer-Encoding`` is exactly ``chunked`` (any
  letter case), never with ``Content-Length`` and never in an HTTP/1.0 request; an
  HTTP/1.1 request has exactly one ``Host``; the fields in :data:`SINGLE_FIELDS` appear
  once. Chunk sizes are 1 to 16 hex digits. Anything else is answered ``400`` with
  ``Connection: close``, and one audit line (decision ``deny``, reason
  ``bad_framing``). Header names containing ``_`` are dropped (as Apache httpd and nginx
  do): WSGI maps ``-`` and ``_`` to the same environ key, so ``Content_Length`` would
  otherwise reach the application as ``CONTENT_LENGTH``.
* **Bodies in bounded blocks**: the connection's reader returns at most
  ``SocketReader.max_read`` bytes per call (tls.py) and a chunk is streamed, never
  read whole.
* **``100 Continue`` only when the application first reads the body**, i.e. after the
  guard allowed the request (PEP 3333's second option). A request answered without
  reading its body never gets one.
* **Early answers close**: a response sent while the body is unread says
  ``Connection: close`` and the socket goes to a :class:`Lingerer`, which reads and
  drops what the client still sends, in blocks, up to ``limits.linger_bytes`` and
  ``limits.linger_seconds``, for at most ``limits.linger_connections`` sockets, on one
  small thread, never a request worker (RFC 9112 §9.6: closing on unread data sends a
  reset that can destroy the response before the client reads it).
"""

from __future__ import annotations

import contextlib
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cheroot.server import HTTPRequest

from .access import Refusal, refusal_for_status
from .audit import AuditLog
from .config import LimitsConfig
from .framing import FramingError, parse_content_length
from .request_context import request_context
from .tls import CERT_ENVIRON_KEY, SocketWriter, send_close_notify

__all__ = [
    "SINGLE_FIELDS",
    "BadChunkedBody",
    "ChunkedBody",
    "FramingError",
    "HTTP1Options",
    "HTTP1Request",
    "LengthBody",
    "Lingerer",
    "RequestFraming",
    "frame_request",
    "read_fields",
]

log = logging.getLogger("davserver.http1")

CRLF = b"\r\n"

#: RFC 9110 §5.6.2 token: what a field name must be, with nothing between it and the colon.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control characters a field value must not hold (RFC 9110 §5.5: NUL, CR, LF; the
#: field-vchar grammar excludes the other CTLs too). HTAB is allowed.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: What may follow a chunk size on its line: a chunk extension (RFC 9112 §7.1.1), no CTLs.
_CHUNK_EXT = re.compile(rb"[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*")

#: Fields that carry one value: a second field line of the same name is refused, as the
#: server and the application could each read a different one (RFC 9110 §5.3).
SINGLE_FIELDS = frozenset(
    {
        b"Host",
        b"Authorization",
        b"Content-Type",
        b"Depth",
        b"Destination",
        b"If",
        b"Lock-Token",
        b"Overwrite",
        b"Timeout",
    }
)

#: Fields whose repeated lines are joined with ", " (cheroot's ``comma_separated_headers``);
#: of other repeated fields outside SINGLE_FIELDS the last line counts, as in cheroot.
LIST_FIELDS = frozenset(
    {
        b"Accept", b"Accept-Charset", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges", b"Allow",
        b"Cache-Control", b"Connection", b"Content-Encoding", b"Content-Language", b"Expect", b"If-Match",
        b"If-None-Match", b"Pragma", b"Proxy-Authenticate", b"Te", b"Trailer", b"Transfer-Encoding", b"Upgrade",
        b"Vary", b"Via", b"Warning", b"Www-Authenticate",
    }
)

#: Longest chunk-size line (size, extensions and CRLF) and longest trailer section.
CHUNK_LINE_BYTES = 4096
TRAILER_BYTES = 16384

#: Largest block the body readers ask the connection for in one call.
BLOCK_BYTES = 1 << 20


class BadChunkedBody(FramingError):
    """A chunked body broke its framing (RFC 9112 §7.1) while the application read it.

    A ``ValueError``, so every layer that reads a body treats it as a body that broke
    off (the filesystem answers 400 and keeps the old file).
    """


# --- the header section ---------------------------------------------------------------


def read_fields(rfile: Any) -> list[tuple[bytes, bytes]]:
    """Read a header (or trailer) section up to its empty line; return ``(name, value)``
    pairs in order, values without surrounding whitespace.

    ``rfile.readline()`` must return one line including its LF (b"" at end of stream);
    bound its size outside (cheroot's ``SizeCheckWrapper`` raises ``MaxSizeExceeded``).
    Raises :class:`FramingError` for a line without CRLF (RFC 9112 §2.2), obs-fold or
    leading whitespace (§5.2, §2.2), a name that is not a token or is followed by
    whitespace (§5.1), a line without a colon, a value with a control character (RFC
    9110 §5.5), and for the end of the stream inside the section.
    """
    fields: list[tuple[bytes, bytes]] = []
    while True:
        line = rfile.readline()
        if not line:
            raise FramingError("the connection ended inside the header section")
        if line == CRLF:
            return fields
        if not line.endswith(CRLF):
            raise FramingError("header lines end with CRLF (RFC 9112 §2.2)")
        line = line[:-2]
        if line[:1] in (b" ", b"\t"):
            raise FramingError("a header line starts with whitespace (obs-fold, RFC 9112 §5.2)")
        name, colon, value = line.partition(b":")
        if not colon:
            raise FramingError("a header line without a colon")
        if not _TOKEN.fullmatch(name):
            raise FramingError("a field name that is not a token, or whitespace before the colon (RFC 9112 §5.1)")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise FramingError("a control character (NUL, CR ...) in a field value (RFC 9110 §5.5)")
        fields.append((name, value))


@dataclass(frozen=True)
class RequestFraming:
    """What the header section says about the message: ``headers`` keyed by title-cased
    name (cheroot's ``inheaders`` shape), the body's ``length`` in bytes (0 when
    ``chunked``), whether the client asked to ``close`` and whether it expects
    ``100 Continue``."""

    headers: dict[bytes, bytes]
    length: int = 0
    chunked: bool = False
    close: bool = False
    expect_continue: bool = False


def _tokens(value: bytes) -> set[bytes]:
    return {part.strip(b" \t").lower() for part in value.split(b",") if part.strip(b" \t")}


def frame_request(fields: list[tuple[bytes, bytes]], *, http11: bool) -> RequestFraming:
    """Decide the framing of a request from its fields (:func:`read_fields`).

    ``http11``: the request line said HTTP/1.1 (else HTTP/1.0). Raises
    :class:`FramingError` for differing or malformed ``Content-Length`` (RFC 9112 §6.3,
    RFC 9110 §8.6), ``Transfer-Encoding`` other than ``chunked``, with
    ``Content-Length``, or in HTTP/1.0 (§6.1, §6.3), a missing ``Host`` in HTTP/1.1 or
    a second one (§3.2), and a repeated field of :data:`SINGLE_FIELDS`.
    """
    headers: dict[bytes, bytes] = {}
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in fields:
        if b"_" in name:
            continue
        key = name.title()
        if key == b"Content-Length":
            lengths.extend(part.strip(b" \t") for part in value.split(b","))
            continue
        if key == b"Transfer-Encoding":
            codings.append(value)
        if key in headers:
            if key in SINGLE_FIELDS:
                raise FramingError(f"{key.decode()} appears more than once")
            if key in LIST_FIELDS:
                value = headers[key] + b", " + value
        headers[key] = value
    if http11 and b"Host" not in headers:
        raise FramingError("an HTTP/1.1 request without Host (RFC 9112 §3.2)")
    length = 0
    if lengths:
        values = {parse_content_length(v) for v in lengths}
        if len(values) != 1:
            raise FramingError("Content-Length headers that differ (RFC 9112 §6.3)")
        length = values.pop()
        headers[b"Content-Length"] = str(length).encode()
    chunked = False
    if codings:
        if not http11:
            raise FramingError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
        if [part.strip(b" \t").lower() for part in b",".join(codings).split(b",")] != [b"chunked"]:
            raise FramingError("Transfer-Encoding other than chunked")
        if lengths:
            raise FramingError("Transfer-Encoding together with Content-Length (RFC 9112 §6.1)")
        chunked = True
        headers[b"Transfer-Encoding"] = b"chunked"
    connection = _tokens(headers.get(b"Connection", b""))
    close = b"close" in connection if http11 else b"keep-alive" not in connection
    expect = http11 and headers.get(b"Expect", b"").strip().lower() == b"100-continue"
    return RequestFraming(headers=headers, length=length, chunked=chunked, close=close, expect_continue=expect)


# --- request bodies -----------------------------------------------------------------


class _Body:
    """``wsgi.input``: reads the body from the connection in bounded blocks, and sends
    ``100 Continue`` before the first read when the client waits for it."""

    def __init__(self, request: HTTP1Request) -> None:
        self._request = request
        self._rfile = request.conn.rfile
        self._await_continue = request.expect_continue
        #: The WSGI environ (set by the request), marked when the framing breaks.
        self.environ: dict[str, Any] | None = None
        self.eof = False
        #: Set once the framing broke; every later read raises it again.
        self.failed: BadChunkedBody | None = None

    @property
    def finished(self) -> bool:
        """True once every byte the framing announced has been read."""
        raise NotImplementedError

    def _starting(self) -> None:
        if self._await_continue:
            self._await_continue = False
            self._request.send_continue()

    def _broken(self, detail: str) -> BadChunkedBody:
        """The error to raise, now and on every later read (the stream is garbage from here);
        the audit line will say bad_framing."""
        if self.environ is not None:
            request_context(self.environ).refuse(Refusal.BAD_FRAMING)
        self.failed = BadChunkedBody(detail)
        return self.failed

    def read(self, size: int | None = -1) -> bytes:
        raise NotImplementedError

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next LF, at most ``size`` bytes (all of a line when
        ``size`` is None or negative: a caller that wants lines of any length)."""
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            want = BLOCK_BYTES if size is None or size < 0 else min(BLOCK_BYTES, size - len(out))
            piece = self._line_piece(want)
            if not piece:
                break
            out += piece
            if piece.endswith(b"\n"):
                break
        return bytes(out)

    def _line_piece(self, size: int) -> bytes:
        raise NotImplementedError

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        """Nothing to release: the connection owns the socket."""


class LengthBody(_Body):
    """A body of ``length`` bytes (``Content-Length``). ``read(n)`` returns ``n`` bytes
    unless the body ends first; a client that goes away early gives a short body."""

    def __init__(self, request: HTTP1Request, length: int) -> None:
        super().__init__(request)
        self._left = length

    @property
    def finished(self) -> bool:
        """True once all ``length`` bytes were read (a zero-length body always is)."""
        return self._left == 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left for None or < 0), read from the
        socket in blocks of at most ``BLOCK_BYTES``; fewer only at the end of the body or when
        the client went away (then ``eof`` is set). ``b""`` once the body is done. The first
        read sends ``100 Continue`` when the client asked for it."""
        if self._left == 0 or size == 0 or self.eof:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        self._starting()
        parts: list[bytes] = []
        got = 0
        while got < want:
            piece = self._rfile.read(min(want - got, BLOCK_BYTES))
            if not piece:
                self.eof = True
                break
            parts.append(piece)
            got += len(piece)
        self._left -= got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _line_piece(self, size: int) -> bytes:
        if self._left == 0 or self.eof:
            return b""
        self._starting()
        line: bytes = self._rfile.readline(min(size, self._left))
        if not line:
            self.eof = True
        self._left -= len(line)
        return line


class ChunkedBody(_Body):
    """A ``Transfer-Encoding: chunked`` body (RFC 9112 §7.1), streamed chunk by chunk.

    Raises :class:`BadChunkedBody` for a chunk size that is not 1 to 16 hex digits
    (``0x3``, ``+3``, ``1_0``, ``-5``), a size line longer than
    :data:`CHUNK_LINE_BYTES`, chunk data not followed by CRLF, a malformed trailer
    section or one longer than :data:`TRAILER_BYTES`, and for the end of the stream
    before the last chunk (a cut-off upload is never taken for a complete one).
    """

    def __init__(self, request: HTTP1Request) -> None:
        super().__init__(request)
        self._in_chunk = 0
        self._done = False

    @property
    def finished(self) -> bool:
        """True once the last (zero-size) chunk and the trailer section were read."""
        return self._done

    def _line(self, limit: int, what: str) -> bytes:
        line: bytes = self._rfile.readline(limit + 1)
        if not line:
            self.eof = True
            raise self._broken(f"the connection ended inside the chunked body ({what})")
        if len(line) > limit or not line.endswith(CRLF) or b"\r" in line[:-2]:
            raise self._broken(f"a malformed {what} line")
        return line[:-2]

    def _next_chunk(self) -> None:
        """At a chunk boundary: read the size line (and the trailers after the last chunk)."""
        line = self._line(CHUNK_LINE_BYTES, "chunk size")
        size = line
        ext = b""
        for i, byte in enumerate(line):
            if byte in b" \t;":
                size, ext = line[:i], line[i:]
                break
        if not _HEX.fullmatch(size) or (ext and not _CHUNK_EXT.fullmatch(ext)):
            raise self._broken(f"a chunk size must be 1 to 16 hex digits, got {size[:20]!r}")
        self._in_chunk = int(size, 16)
        if self._in_chunk == 0:
            self._read_trailers()
            self._done = True

    def _read_trailers(self) -> None:
        total = 0
        while True:
            line = self._line(TRAILER_BYTES, "trailer")
            total += len(line) + 2
            if total > TRAILER_BYTES:
                raise self._broken("the trailer section is too long")
            if not line:
                return
            if line[:1] in (b" ", b"\t"):
                raise self._broken("a trailer line starts with whitespace")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value.strip(b" \t")):
                raise self._broken("a malformed trailer field")

    def _end_chunk(self) -> None:
        crlf = self._rfile.read(2)
        if len(crlf) == 1:
            crlf += self._rfile.read(1)
        if crlf != CRLF:
            if not crlf:
                self.eof = True
            raise self._broken("chunk data must be followed by CRLF")

    def _ensure_data(self) -> bool:
        """Position at chunk data; False at the end of the body."""
        while self._in_chunk == 0:
            if self._done:
                return False
            self._next_chunk()
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the decoded body (the rest of it for None or < 0), chunk
        data only, read in blocks of at most ``BLOCK_BYTES``; ``b""`` at its end. Raises
        BadChunkedBody for broken chunking or a connection that ends inside the body (again
        on every later read); the first read sends ``100 Continue`` when asked for."""
        if self.failed is not None:
            raise self.failed
        if self._done or size == 0:
            return b""
        self._starting()
        limit = None if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while (limit is None or got < limit) and self._ensure_data():
            want = self._in_chunk if limit is None else min(self._in_chunk, limit - got)
            piece = self._rfile.read(min(want, BLOCK_BYTES))
            if not piece:
                self.eof = True
                raise self._broken("the connection ended inside a chunk")
            parts.append(piece)
            got += len(piece)
            self._in_chunk -= len(piece)
            if self._in_chunk == 0:
                self._end_chunk()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _line_piece(self, size: int) -> bytes:
        if self.failed is not None:
            raise self.failed
        if self._done:
            return b""
        self._starting()
        if not self._ensure_data():
            return b""
        line: bytes = self._rfile.readline(min(size, self._in_chunk))
        if not line:
            self.eof = True
            raise self._broken("the connection ended inside a chunk")
        self._in_chunk -= len(line)
        if self._in_chunk == 0:
            self._end_chunk()
        return line


# --- lingering close ---------------------------------------------------------------


@dataclass
class _Lingering:
    sock: socket.socket
    deadline: float
    left: int


class Lingerer:
    """Reads and drops what clients still send after their connection was answered, so
    the kernel does not reset the connection (and destroy the answer) while the client
    is still sending; closes each socket at end of stream, after ``max_bytes`` bytes or
    ``max_seconds`` seconds, whichever comes first.

    One daemon thread with a selector serves every socket; it starts with the first
    socket and ends when none is left. At most ``max_sockets`` linger at a time: past
    that :meth:`add` refuses and the caller closes at once. Memory is one block
    (:data:`BLOCK`) whatever the clients announce. ``counters`` (read-only for others):
    ``lingered``, ``refused``, ``closed_eof``, ``closed_bytes``, ``closed_time``.
    """

    BLOCK = 1 << 16

    def __init__(self, *, max_bytes: int, max_seconds: float, max_sockets: int) -> None:
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.max_sockets = max_sockets
        self.counters = {"lingered": 0, "refused": 0, "closed_eof": 0, "closed_bytes": 0, "closed_time": 0}
        self._lock = threading.Lock()
        self._pending: list[socket.socket] = []
        self._count = 0
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None

    @property
    def lingering(self) -> int:
        """Sockets being drained now (and handed over, not yet picked up)."""
        return self._count

    def add(self, sock: socket.socket) -> bool:
        """Take ``sock`` (a connection whose answer has been sent in full): end the
        sending side, then drain and close it in the background. Returns False, leaving
        ``sock`` to the caller, when ``max_sockets`` already linger or the socket is dead."""
        with self._lock:
            if self._count >= self.max_sockets or self.max_seconds <= 0 or self.max_bytes <= 0:
                self.counters["refused"] += 1
                return False
            try:
                socket.socket.setblocking(sock, False)
                send_close_notify(sock)  # tls.py: the one way a served TLS connection ends
                # From here the plain socket's calls: the TLS layer is not used again.
                socket.socket.shutdown(sock, socket.SHUT_WR)
            except OSError:
                return False
            self._count += 1
            self.counters["lingered"] += 1
            self._pending.append(sock)
            if self._thread is None:
                self._wake = socket.socketpair()
                for end in self._wake:
                    end.setblocking(False)
                self._thread = threading.Thread(target=self._run, name="davserver-linger", daemon=True)
                self._thread.start()
            elif self._wake is not None:
                with contextlib.suppress(OSError):
                    self._wake[1].send(b"\0")
        return True

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        assert self._wake is not None
        wake = self._wake[0]
        sel.register(wake, selectors.EVENT_READ, None)
        live: dict[int, _Lingering] = {}
        buf = memoryview(bytearray(self.BLOCK))
        try:
            while True:
                with self._lock:
                    arrived, self._pending = self._pending, []
                for sock in arrived:
                    entry = _Lingering(sock, time.monotonic() + self.max_seconds, self.max_bytes)
                    try:
                        sel.register(sock, selectors.EVENT_READ, entry)
                    except (OSError, ValueError):
                        self._close(entry, "closed_eof")
                        continue
                    live[id(entry)] = entry
                with self._lock:
                    if not live:
                        if self._pending:
                            continue
                        self._thread = None
                        if self._wake is not None:
                            for end in self._wake:
                                end.close()
                            self._wake = None
                        return
                now = time.monotonic()
                timeout = max(0.0, min(e.deadline for e in live.values()) - now)
                for key, _events in sel.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            while wake.recv(4096):
                                pass
                        continue
                    entry = key.data
                    outcome = self._drain(entry, buf)
                    if outcome:
                        sel.unregister(entry.sock)
                        live.pop(id(entry), None)
                        self._close(entry, outcome)
                now = time.monotonic()
                for entry in [e for e in live.values() if e.deadline <= now]:
                    sel.unregister(entry.sock)
                    live.pop(id(entry), None)
                    self._close(entry, "closed_time")
        finally:
            sel.close()

    def _drain(self, entry: _Lingering, buf: memoryview) -> str | None:
        """Read what is there (a few blocks); the counter to close under, or None to wait."""
        for _ in range(16):
            try:
                n = socket.socket.recv_into(entry.sock, buf)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return "closed_eof"
            if n == 0:
                return "closed_eof"
            entry.left -= n
            if entry.left <= 0:
                return "closed_bytes"
        return None

    def _close(self, entry: _Lingering, outcome: str) -> None:
        with contextlib.suppress(OSError):
            entry.sock.close()
        with self._lock:
            self.counters[outcome] += 1
            self._count -= 1


# --- settings and the request -------------------------------------------------------


@dataclass
class HTTP1Options:
    """What :class:`HTTP1Request` needs from the server, handed over as the cheroot
    server's ``http1`` attribute: the audit log for refusals made before the application
    runs, and the lingering-close bounds (``limits.linger_*``)."""

    audit: AuditLog | None = None
    linger_bytes: int = 64 << 20
    linger_seconds: float = 10.0
    linger_connections: int = 64
    lingerer: Lingerer = field(init=False)

    def __post_init__(self) -> None:
        self.lingerer = Lingerer(
            max_bytes=self.linger_bytes, max_seconds=self.linger_seconds, max_sockets=self.linger_connections
        )

    def attach(self, server: Any) -> None:
        """Make these the options of ``server`` (a cheroot server) for :class:`HTTP1Request`."""
        server.http1 = self

    @classmethod
    def from_limits(cls, limits: LimitsConfig, audit: AuditLog | None) -> HTTP1Options:
        """The options of a listener: its audit log (None: refusals are not audited) and the
        ``limits.linger_*`` bounds (bytes, seconds, connections)."""
        return cls(
            audit=audit,
            linger_bytes=limits.linger_bytes,
            linger_seconds=limits.linger_seconds,
            linger_connections=limits.linger_connections,
        )


def _options(server: Any) -> HTTP1Options:
    options = getattr(server, "http1", None)
    if not isinstance(options, HTTP1Options):
        options = HTTP1Options()
        server.http1 = options
    return options


class HTTP1Request(HTTPRequest):
    """cheroot's request with strict framing, bounded bodies, ``100 Continue`` on the
    first body read, and a lingering close after an answer given before the body was
    read (see the module docstring). Also: honours an application's
    ``Connection: close``, ends the header deadline once the headers are in, and sends
    a small response's headers with its body in one TLS record."""

    #: The client sent ``Expect: 100-continue`` and no ``100 Continue`` was sent yet.
    expect_continue = False
    _audited = False
    _body: _Body | None = None
    _length = 0

    # --- parsing --------------------------------------------------------------------

    def parse_request(self) -> None:
        """cheroot's parse of the request line and headers (cheroot/server.py:730, which calls
        our ``read_request_headers``), then: the header deadline is disarmed and the
        connection leaves its certificate's header phase (handshake.HeaderPhase), and a
        request refused while parsing lingers so its 400 reaches a client still sending."""
        super().parse_request()
        watchdog = getattr(self.conn, "watchdog", None)
        if watchdog is not None:
            watchdog.disarm(self.conn)
        phase = getattr(self.conn, "header_phase", None)
        if phase is not None:
            phase.leave(self.conn)  # headers in: no longer counted against the certificate
        if not self.ready and self._audited:
            self._linger()  # the 400 reaches the client even if it is still sending

    def read_request_headers(self) -> bool:
        """Read and check the header section (:func:`read_fields`, :func:`frame_request`);
        False after answering 400 (or 413 past ``max_request_body_size``)."""
        try:
            fields = read_fields(self.rfile)
            framing = frame_request(fields, http11=self.response_protocol == "HTTP/1.1")
        except FramingError as exc:
            if getattr(self.conn, "deadline_passed", None):
                self.simple_response("400 Bad Request", exc.detail)  # a 408: see simple_response
                return False
            self._refuse(exc.detail)
            return False
        self.inheaders = framing.headers
        mrbs = self.server.max_request_body_size
        if mrbs and framing.length > mrbs:
            self.simple_response("413 Request Entity Too Large", "The request body is too large.")
            return False
        if framing.close:
            self.close_connection = True
        self.chunked_read = framing.chunked
        self.expect_continue = framing.expect_continue
        self._length = framing.length
        return True

    def _refuse(self, detail: str) -> None:
        """400 with Connection: close, and its audit line."""
        log.info("refusing a request from %s: %s", getattr(self.conn, "remote_addr", "?"), detail)
        self._audit(400, Refusal.BAD_FRAMING, self._answer_400(detail))

    def _answer_400(self, detail: str) -> int:
        """Write a 400 that closes the connection; the bytes written."""
        self.close_connection = True
        self.sent_headers = True
        body = f"bad request framing: {detail}\n".encode()
        head = (
            f"{self.server.protocol} 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        with contextlib.suppress(OSError):
            self.conn.wfile.write(head + body)
        return len(head) + len(body)

    def simple_response(self, status: Any, msg: Any = "") -> None:
        """cheroot's short answers; those given before the application ran (a malformed
        request line, headers too large, a timeout mid-request) get their audit line.
        A request cut off because the watchdog ended the reading side
        (``watchdog.end_reading``: a deadline or the header-phase cap) is answered 408,
        not 400: its framing was not wrong, it came too slowly."""
        what = getattr(self.conn, "deadline_passed", None)
        if what and not self.ready and str(status)[:3] == "400":
            status, msg = "408 Request Timeout", f"The {what} took too long."
        super().simple_response(status, msg)
        code = int(str(status)[:3])
        if not self.ready and code >= 400 and (code != 408 or self.started_request):
            self.close_connection = True
            self._audit(code, Refusal.BAD_FRAMING if code == 400 else refusal_for_status(code))

    def _audit(self, status: int, reason: Refusal, sent: int = 0) -> None:
        """One line in the field set of ``Guard._record`` (guard.py)."""
        if self._audited:
            return
        self._audited = True
        audit = _options(self.server).audit
        if audit is None:
            return
        cert = (self.conn.ssl_env or {}).get(CERT_ENVIRON_KEY)
        method = getattr(self, "method", None)
        uri = getattr(self, "uri", None)
        audit.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "peer": self.conn.remote_addr,
                "cert_serial": cert.serial if cert else None,
                "cert_fingerprint": cert.fingerprint if cert else None,
                "cert_subject": cert.subject if cert else None,
                "account": None,
                "share": None,
                "method": method.decode("latin-1") if isinstance(method, bytes) else None,
                "path": uri.decode("utf-8", "backslashreplace")[:2048] if isinstance(uri, bytes) else None,
                "status": status,
                "bytes_in": 0,
                "bytes_out": sent,
                "duration_ms": 0.0,
                "decision": "deny",
                "reason": str(reason),
            }
        )

    # --- the body and the response ----------------------------------------------------

    def send_continue(self) -> None:
        """``100 Continue``: the application has started to read the body."""
        if self.sent_headers:
            return
        self.expect_continue = False
        with contextlib.suppress(OSError):
            self.conn.wfile.write(f"{self.server.protocol} 100 Continue\r\n\r\n".encode("ascii"))

    def respond(self) -> None:
        """Call the application with a bounded ``wsgi.input``; afterwards, a connection
        whose body was not read to its end is closed through the lingerer. An answer that
        breaks off (an exception) after its headers marks the connection
        ``answer_broken``: it then closes without close_notify (tls.py)."""
        body: _Body = ChunkedBody(self) if self.chunked_read else LengthBody(self, self._length)
        self._body = body
        self.rfile = body
        try:
            self._respond(body)
        except BaseException:
            # Broken off after its first bytes left: the connection must not end with
            # close_notify, which would vouch for a whole answer (tls.TLSConnection.close).
            self.conn.answer_broken = self.sent_headers
            raise
        if not body.finished:
            self.close_connection = True
            if not body.eof:
                self._linger()

    def _respond(self, body: _Body) -> None:
        try:
            gateway = self.server.gateway(self)
            body.environ = gateway.env
            if self.method in (b"GET", b"HEAD") and (self._length or self.chunked_read):
                self._hide_body(gateway.env)
            gateway.respond()
            if self.ready:
                self.ensure_headers_sent()
            if self.chunked_write:
                self.conn.wfile.write(b"0\r\n\r\n")
        except BadChunkedBody as exc:
            # It escaped the application before an answer: answer here (the guard wrote the line).
            self.close_connection = True
            if not self.sent_headers:
                self._answer_400(exc.detail)
        finally:
            wfile = self.conn.wfile
            if isinstance(wfile, SocketWriter):
                wfile.release()

    def _hide_body(self, environ: dict[str, Any]) -> None:
        """Content in a GET or HEAD has no defined semantics (RFC 9110 §9.3.1, §9.3.2),
        and WsgiDAV answers a file's GET with one 415: the application sees no body, is
        answered as usual, and the unread body closes the connection."""
        environ.pop("CONTENT_LENGTH", None)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        environ["wsgi.input"] = LengthBody(self, 0)

    def send_headers(self) -> None:
        """cheroot's send_headers (cheroot/server.py:1168) after two changes: an application's
        ``Connection: close`` closes the connection, and an answer given before the body was
        read closes it too, so cheroot never drains the body into memory (server.py ~1236:
        the lingerer drops it instead). The headers are held to go out with the first body
        block, one TLS record for a small answer (tls.SocketWriter.hold)."""
        for key, value in self.outheaders:
            if key.lower() == b"connection" and value.lower() == b"close":
                self.close_connection = True
        if self._body is not None and not self._body.finished:
            # Answered before the body was read: never read it here (cheroot would, whole,
            # into memory: server.py ~1236); the lingerer drops it after the answer.
            self.close_connection = True
        wfile = self.conn.wfile
        if isinstance(wfile, SocketWriter):
            wfile.hold()  # sent with the first body block: one TLS record for a small answer
        super().send_headers()

    def _linger(self) -> None:
        """Hand the socket to the lingerer; cheroot's close() then leaves it alone."""
        if _options(self.server).lingerer.add(self.conn.socket):
            self.conn.linger = True
