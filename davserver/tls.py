"""TLS for the listener: a strict SSLContext and a cheroot adapter that
defers the handshake out of the accept loop.

Stock cheroot runs the handshake inside its single accept loop, so one client
that connects and stays silent stalls every new connection until the socket
timeout. Here the accept loop only wraps the socket; the handshake is stepped
without blocking by the handshake loop (handshake.py), never by a request
worker, and the client certificate is parsed there once per connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import stat
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from cheroot.makefile import MakeFile, StreamWriter
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .auth.identity import parse_certificate
from .auth.issuers import check_trust_anchors
from .config import TLSConfig
from .errors import StartupError
from .tls_ca_names import CANamesUnavailable, send_client_ca_names
from .upstream import HTTPConnection, StreamReader
from .watchdog import Watchdog, set_current_connection

__all__ = [
    "CERT_ENVIRON_KEY", "DeferredHandshakeAdapter", "TLSConnection", "create_enrolment_context", "create_ssl_context",
    "send_close_notify",
]

log = logging.getLogger("davserver.tls")

#: Where the parsed client certificate (auth.identity.CertIdentity) sits in the connection's
#: ``ssl_env``, which cheroot copies into each request's WSGI environ: the one upstream
#: boundary key; request_context.begin moves it into the request's context.
CERT_ENVIRON_KEY = "davserver.cert"

#: TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all AEAD already.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _readable(path: Path, what: str, key: str) -> None:
    if not path.is_file():
        raise StartupError(f"tls.{key}: {what} {path} does not exist (run `davserver init` or fix the path)")
    if not os.access(path, os.R_OK):
        raise StartupError(f"tls.{key}: {what} {path} is not readable by this user")


def _check_key_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StartupError(
            f"tls.private_key: {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"fix it with: chmod 600 {path}"
        )


def _server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The server side both listeners share: protocol floor, suites, options, and the
    server certificate and key (checked readable, the key not readable by others)."""
    _readable(tls.certificate, "server certificate", "certificate")
    _readable(tls.private_key, "private key", "private_key")
    _check_key_mode(tls.private_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    # A client's TCP close without close_notify reads as end of stream (as Python already
    # reports it: suppress_ragged_eofs), not as an OpenSSL fatal error, after which no
    # close_notify of ours could follow (send_close_notify). Request bodies are framed
    # (Content-Length, chunked): a cut-off one is still told from a whole one.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    try:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except ssl.SSLError as exc:
        raise StartupError(
            f"tls.certificate: {tls.certificate} and {tls.private_key} do not form a usable pair ({exc.reason})"
        ) from None
    return ctx


def create_enrolment_context(tls: TLSConfig) -> ssl.SSLContext:
    """The enrolment listener's context (enrolment_listener.py): the main listener's
    server certificate, protocol floor and suites, and **no** certificate request
    (``CERT_NONE``): its visitors have no client certificate yet, and a request for one
    would make browsers that hold another certificate ask the user to pick one.
    Called again to pick up a replaced server certificate (the listener's
    ``reload_context``). Raises StartupError as `create_ssl_context` does."""
    ctx = _server_context(tls)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def create_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context that demands a client certificate from the configured CA bundle,
    and names that bundle's CAs in its CertificateRequest (tls_ca_names.py; without
    them, a warning is logged and the context works as before)."""
    _readable(tls.certificate, "server certificate", "certificate")
    _readable(tls.private_key, "private key", "private_key")
    _readable(tls.client_ca, "client CA bundle", "client_ca")
    ctx = _server_context(tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
    except ssl.SSLError as exc:
        raise StartupError(f"tls.client_ca: {tls.client_ca} holds no usable CA certificate ({exc.reason})") from None
    # Any CA in tls.client_ca is a trust anchor, a sub-CA alone too (an admin trusting one
    # company sub-CA, not its root); that is why it may hold CA certificates only.
    check_trust_anchors(tls.client_ca)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if tls.max_ca_names_bytes == 0:
        return ctx  # the admin's choice: no names
    try:
        names = send_client_ca_names(ctx, tls.client_ca, max_bytes=tls.max_ca_names_bytes)
    except CANamesUnavailable as exc:
        log.warning(
            "tls.client_ca: the certificate request names no CA (%s); a client holding several "
            "certificates may present the wrong one", exc.reason,
        )
    else:
        log.debug("the certificate request names %s", "; ".join(names))
    return ctx


def send_close_notify(sock: socket.socket) -> None:
    """End the TLS stream of `sock` properly: the one way the server closes a TLS
    connection it served (``TLSConnection.close``, ``http1.Lingerer``).

    RFC 8446 §6.1 (and RFC 5246 §7.2.1): each party MUST send close_notify before
    closing its write side, unless it sent an error alert; without it a client cannot
    tell a close-delimited body (RFC 9112 §6.3, §9.8) from a truncated one, and OpenSSL
    3.2+ clients (recent curl) report the close as an error. Bounded: the socket is made
    non-blocking first, so ``unwrap()`` hands the alert to the kernel and stops at
    "want read" instead of waiting for the client's close_notify (or, when the send
    buffer is full, gives up at once). A plain socket, one whose TLS layer is gone, or
    one that cannot send now is left as it is; nothing is raised. The caller still
    closes the socket.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return
    with contextlib.suppress(ssl.SSLError, OSError, ValueError):
        socket.socket.setblocking(sock, False)
        sock.unwrap()


def _close_abandoned_wrap(exc: BaseException) -> None:
    """Close the ``ssl.SSLSocket`` a failed ``SSLContext.wrap_socket`` made and dropped.

    ``SSLSocket._create`` (Python 3.11.7 and 3.12.1 ``ssl.py``, "See if we are
    connected") takes the accepted socket's descriptor (``sock.detach()``) into a new
    ``SSLSocket``, then checks the connection: when the peer reset it before the wrap
    without sending a byte (a balancer's TCP check or a forward it aborted, when the
    accept loop lags), ``getpeername()`` fails with ENOTCONN and the ``recv(1)`` after
    it raises ECONNRESET, which leaves ``_create`` without closing that ``SSLSocket``.
    Its descriptor stays open until the object is collected, which then warns
    (``ResourceWarning: unclosed <ssl.SSLSocket ...>``, an error under the tests'
    ``filterwarnings``). CPython gh-113280 fixed it (3.13.0 closes it; 3.11.7 and
    3.12.1 do not). The only reference to it is the ``self`` of ``_create``'s frame in
    `exc`'s traceback; it is closed there (a no-op when Python closed it itself)."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name != "_create" or code.co_filename != ssl.__file__:
            continue
        abandoned = frame.f_locals.get("self")
        if isinstance(abandoned, ssl.SSLSocket):
            with contextlib.suppress(OSError):
                abandoned.close()


class DeferredHandshakeAdapter(BuiltinSSLAdapter):
    """Wraps accepted sockets without handshaking; ``TLSConnection.continue_handshake``,
    driven by the handshake loop (handshake.py), finishes the job."""

    def __init__(self, context: ssl.SSLContext) -> None:  # noqa: D107 - base reads files we already loaded
        self.certificate = self.private_key = ""
        self.certificate_chain = None
        self.ciphers = None
        self.private_key_password = None
        self._server_env: dict[str, Any] = {}
        self.context = context

    def wrap(self, sock: Any) -> tuple[Any, dict[str, Any]]:
        """The accepted socket, TLS-wrapped without a handshake. A peer that sent bytes and
        reset the connection before it was accepted (HAProxy's health check with
        ``send-proxy-v2``: a LOCAL header, then RST) makes Python refuse the wrap
        (``ssl.py`` ``SSLSocket._create``: "Closed before TLS handshake with data in recv
        buffer", errno ENOTCONN), which cheroot's accept loop logged as a traceback; it is
        raised as the reset it is (ECONNRESET, ``cheroot/connections.py:378`` drops it).

        A failed wrap leaves no descriptor open: `sock` is closed, and so is the
        ``SSLSocket`` that Python had already made of it (:func:`_close_abandoned_wrap`).
        Raises OSError (``ConnectionResetError`` for a peer gone) or ``ssl.SSLError``."""
        try:
            s = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except BaseException as exc:
            sock.close()  # still ours when the wrap failed before taking its descriptor
            _close_abandoned_wrap(exc)
            if isinstance(exc, ssl.SSLError) and exc.errno == errno.ENOTCONN:
                raise ConnectionResetError(errno.ECONNRESET, "the client left before it was accepted") from None
            raise
        return s, {}

    def connection_environ(self, sock: ssl.SSLSocket) -> dict[str, Any]:
        """The WSGI environ entries of a connection whose handshake completed (str -> value):
        ``wsgi.url_scheme``, ``HTTPS``, the protocol and cipher, and with a client
        certificate its parsed ``CertIdentity`` under ``CERT_ENVIRON_KEY`` plus mod_ssl's
        names for its facts (``SSL_CLIENT_M_SERIAL``, ``SSL_CLIENT_S_DN``, SAN e-mails,
        UPNs and URIs numbered from 0). Used instead of cheroot's ``get_environ``
        (cheroot/ssl/builtin.py:345), called once per connection. Raises ValueError for a
        certificate that cannot be parsed."""
        cipher = sock.cipher() or ("", "", 0)
        env: dict[str, Any] = {
            "wsgi.url_scheme": "https",
            "HTTPS": "on",
            "SSL_PROTOCOL": cipher[1],
            "SSL_CIPHER": cipher[0],
            "SSL_CLIENT_VERIFY": "NONE",
        }
        der = sock.getpeercert(binary_form=True)
        if der:
            ident = parse_certificate(der)
            env.update(
                {
                    CERT_ENVIRON_KEY: ident,
                    "SSL_CLIENT_VERIFY": "SUCCESS",
                    "SSL_CLIENT_M_SERIAL": ident.serial,
                    "SSL_CLIENT_S_DN": ident.subject,
                    "SSL_CLIENT_I_DN": ident.issuer,
                    "SSL_CLIENT_CERT_SHA256": ident.fingerprint,
                }
            )
            if ident.common_name:
                env["SSL_CLIENT_S_DN_CN"] = ident.common_name
            for i, email in enumerate(ident.emails):
                env[f"SSL_CLIENT_SAN_Email_{i}"] = email
            for i, upn in enumerate(ident.upns):
                env[f"SSL_CLIENT_SAN_OTHER_msUPN_{i}"] = upn
            for i, uri in enumerate(ident.uris):
                env[f"SSL_CLIENT_SAN_URI_{i}"] = uri
        return env


class SocketReader(StreamReader):
    """cheroot's reader, with large reads filled straight from the TLS socket, and
    never more than ``max_read`` bytes per call.

    For a read larger than its buffer, the pure-Python reader allocates a
    buffer-sized bytearray per TLS record, joins the pieces and slices the result:
    several copies of every uploaded byte. Here one buffer is filled in place.

    The buffer is allocated before the bytes arrive, so its size must not come from
    the client: cheroot drains an unread body with one ``read(remaining)``
    (``cheroot/server.py`` ~1236), which made one ``OPTIONS`` with
    ``Content-Length: 268435456`` and no body cost 256 MiB. ``read(size)`` and
    ``readline(size)`` therefore return at most ``max_read`` bytes (also for a size of
    -1 or None, "all"); fewer than asked means "ask again", b"" means end of stream.
    The request bodies (http1.py) read in such blocks.
    """

    #: Most bytes one read() or readline() returns (and allocates), whatever it is asked for.
    max_read = 1 << 20

    # The pure-Python reader's (``_pyio.BufferedReader``) state, which the stubs do not show.
    buffer_size: int
    _read_lock: threading.Lock
    _read_buf: bytes
    _read_pos: int

    def readline(self, size: int | None = -1) -> bytes:
        """A line up to LF included, of at most ``size`` bytes and never more than
        ``max_read`` (also for -1 or None); ``b""`` at the end of the stream."""
        if size is None or size < 0 or size > self.max_read:
            size = self.max_read
        return super().readline(size)

    def read(self, size: int | None = -1) -> Any:
        """At most ``size`` bytes and never more than ``max_read`` (also for -1 or None,
        "all"): fewer means "ask again", ``b""`` the end of the stream. A read larger than
        the buffer is filled in place into one bytearray (returned as it is) straight from
        the socket."""
        if size is None or size < 0 or size > self.max_read:
            size = self.max_read
        if size <= self.buffer_size:
            return super().read(size)
        with self._read_lock:
            held = self._read_buf[self._read_pos :]
            data: bytes | bytearray
            if len(held) >= size:
                self._read_pos += size
                data = held[:size]
            else:
                self._read_buf, self._read_pos = b"", 0
                out = bytearray(size)
                got = len(held)
                out[:got] = held
                with memoryview(out) as view:
                    while got < size:
                        n = self.raw.readinto(view[got:])
                        if not n:
                            break
                        got += n
                del out[got:]
                data = out
        self.bytes_read += len(data)
        return data


class SocketWriter(StreamWriter):
    """Writes straight to the TLS socket.

    cheroot's writer copies every block into a bytearray and again into bytes
    before OpenSSL sees it, which cost a fifth of a large download. Response
    headers can be held back (``hold``) and sent with the first body block, so a
    small response leaves in one TLS record instead of two.
    """

    _holding = False
    _held: bytes | None = None
    #: Up to this size a body block is joined to the held headers; larger ones follow them.
    _JOIN_LIMIT = 1 << 16

    def __init__(self, sock: ssl.SSLSocket, mode: str = "wb", bufsize: int = 1 << 16) -> None:
        super().__init__(sock, mode, bufsize)
        self._sock = sock

    def hold(self) -> None:
        """Keep the next write (the response headers) back until the write after it: a body
        block of at most 64 KiB goes out joined to them in one ``sendall``, a larger one
        right after them; ``release()`` sends them when no body follows."""
        self._holding = True

    def write(self, b: Any) -> int:
        """Send ``b`` (bytes-like) with ``sendall`` on the TLS socket, unbuffered (or hold it,
        see ``hold``); returns ``len(b)``. Raises ValueError when closed, and
        ConnectionResetError when the client went away (an SSL EOF), which cheroot treats
        as routine (cheroot/errors.py socket_errors_to_ignore)."""
        self._checkClosed()
        size = len(b)
        if self._holding:
            self._holding = False
            self._held = bytes(b)
            return size
        if self._held is not None:
            held, self._held = self._held, None
            if size <= self._JOIN_LIMIT:
                b = held + bytes(b)
            else:
                self._send(held)
        self._send(b)
        return size

    def release(self) -> None:
        """Send held headers that no body followed."""
        self._holding = False
        if self._held is not None:
            held, self._held = self._held, None
            self._send(held)

    def _send(self, b: Any) -> None:
        try:
            self._sock.sendall(b)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            # The client went away mid-answer (a cancelled download): the reset cheroot
            # already treats as routine (errors.socket_errors_to_ignore), not a traceback.
            raise ConnectionResetError(errno.ECONNRESET, "client closed the connection") from exc
        self.bytes_written += len(b)


class TLSConnection(HTTPConnection):
    """A connection whose TLS handshake is completed before any worker serves it.

    The handshake loop (handshake.py) calls :meth:`continue_handshake` while the socket
    is non-blocking, and hands the connection on only once it returns 0. From the
    moment a worker picks it up until the request headers are read, one deadline
    applies (``header_seconds``), enforced by the server's watchdog, and the
    connection counts against its certificate's cap in ``header_phase``
    (``handshake.HeaderPhase``, left in ``http1.HTTP1Request.parse_request``).
    """

    _handshake_done = False
    #: The last answer broke off after its first bytes: close without close_notify.
    answer_broken = False
    # cheroot's 8 KiB buffers make every large transfer thousands of small reads and writes.
    rbufsize = 1 << 16
    wbufsize = 1 << 16
    watchdog: Watchdog | None = None
    header_seconds: float = 10.0
    header_phase: Any = None  # handshake.HeaderPhase (handshake.py imports this module)

    def __init__(self, server: Any, sock: Any, makefile: Any = MakeFile) -> None:
        super().__init__(server, sock, makefile)
        self.rfile = SocketReader(sock, "rb", self.rbufsize)
        self.wfile = SocketWriter(sock, "wb", self.wbufsize)

    @property
    def handshake_done(self) -> bool:
        """True once the handshake completed and ``ssl_env`` describes the client."""
        return self._handshake_done

    def continue_handshake(self) -> int:
        """One non-blocking step of the server handshake (the socket must be non-blocking).

        Returns 0 when the handshake has completed (``ssl_env`` is then set, with the
        parsed client certificate), else ``selectors.EVENT_READ`` or
        ``selectors.EVENT_WRITE``: what the socket must become before the next step.
        Raises ``ssl.SSLError`` (refused: no certificate, untrusted CA, not TLS ...),
        ``OSError`` (peer gone) or ``ValueError`` (an unparsable client certificate).
        """
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        self.ssl_env = self.server.ssl_adapter.connection_environ(self.socket)
        self._handshake_done = True
        return 0

    def communicate(self) -> bool:
        """Serve one request on a worker thread (cheroot's HTTPConnection.communicate,
        cheroot/server.py:1301): the connection is the thread's current one (watchdog.py),
        the request headers must arrive within ``header_seconds`` (the watchdog's deadline)
        and the connection counts in its certificate's header phase until they are in.
        Returns True when the connection is to be kept open; a connection whose handshake
        did not complete is refused (False)."""
        set_current_connection(self)
        if self.watchdog is not None:
            self.watchdog.arm(self, time.monotonic() + self.header_seconds, "request headers")
        if self.header_phase is not None and self._handshake_done:
            self.header_phase.enter(self)
        try:
            return self._communicate()
        finally:
            if self.header_phase is not None:
                self.header_phase.leave(self)
            if self.watchdog is not None:
                self.watchdog.disarm(self)
            set_current_connection(None)

    def close(self) -> None:
        """Close the connection, ending its TLS stream with close_notify first
        (:func:`send_close_notify`) once the handshake has completed: every close the
        server starts after a handshake comes here (a worker after ``Connection: close``,
        HTTP/1.0 or an error; cheroot's keep-alive expiry, ``put_conn`` while stopping and
        the shutdown of idle connections; the handshake loop while stopping). A failed
        handshake ended with OpenSSL's own alert. A connection handed to the lingerer
        (``linger``, http1.py) is closed by it, after its close_notify.

        An answer that broke off after its first bytes (``answer_broken``, set by
        ``http1.HTTP1Request.respond``) ends without close_notify: the client must see
        the truncation (RFC 9112 §9.8: a close-delimited body is whole only when the TLS
        stream was closed properly)."""
        if self._handshake_done and not self.linger and not self.answer_broken:
            send_close_notify(self.socket)
        super().close()

    def _communicate(self) -> bool:
        if not self._handshake_done:
            # A worker never waits for a client that has not proved its certificate.
            log.error("connection from %s reached a worker before its TLS handshake; closed",
                      getattr(self, "remote_addr", "?"))
            return False
        return bool(super().communicate())
