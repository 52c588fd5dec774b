"""The server certificate and key, picked up from disk without a restart.

An ACME client (certbot, acme.sh, lego) renews ``tls.certificate`` and
``tls.private_key`` every few weeks, and the built-in CA re-issues its own server
certificate (cert_lifecycle.py); every running server must serve the new pair without
a restart. :class:`ServerCertificate` watches both files, and ``tls.client_ca`` (``os.stat``:
inode, size, mtime, ctime; nothing is read while they are unchanged), and when they change it reads
both, checks them as one pair, builds every TLS context that serves them afresh, and
only then switches each listener to its new context.

Why new contexts rather than ``SSLContext.load_cert_chain`` on the live one:
``load_cert_chain`` sets the certificate, then the key, on the ``SSL_CTX`` that the
accept thread is creating connections from (CPython ``Modules/_ssl.c``
``_ssl__SSLContext_load_cert_chain_impl`` drops the GIL around both OpenSSL calls).
Between the two, OpenSSL has already dropped the old key, which no longer matches the
new certificate (OpenSSL 3.0 ``ssl/ssl_rsa.c`` ``ssl_set_cert``): a handshake begun in
that window fails, and a key that then fails to load (certbot writes the two files one
after the other) leaves the running server with a certificate and no key. A context
built to the side is checked whole, including the client-CA names (tls_ca_names.py),
partial-chain verification and the options of ``create_ssl_context``, and one
attribute assignment (atomic under the GIL) hands it to the adapter: connections
accepted before it keep their own ``SSL_CTX`` (kept alive by their ``SSLSocket``),
so a kept-alive connection goes on as it was; the next accepted connection gets the new
certificate. Every context built here gets the session-ticket keys shared by every worker
and node (tls_tickets.py, ``share_ticket_keys``; ``rotate_ticket_keys`` moves them all to
the next period's keys), bound to the server certificate and the trusted client CAs
(``_ticket_scope``): a reload that changes either makes each client do one full handshake
(the new certificate is then what it sees), one that changes neither keeps sessions.

A pair that is half written, mismatched, unreadable or whose key other users may read
is never served: the old pair stays, one warning says what is wrong, and the files are
read again at every check until they form a good pair.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .config import TLSConfig
from .errors import StartupError
from .files import FileStamp, file_stamp
from .pki import serial_hex
from .tls import create_ssl_context
from .tls_tickets import SharedTicketKeys

__all__ = ["ContextBuilder", "ServerCertificate", "read_pair"]

log = logging.getLogger("davserver.tls")

#: Builds a server ``ssl.SSLContext`` from the ``tls:`` settings, reading the pair from
#: disk (``tls.create_ssl_context``, ``tls.create_enrolment_context``); raises StartupError.
ContextBuilder = Callable[[TLSConfig], Any]

_SHA256 = hashes.SHA256()

#: Per file: its files.FileStamp, or None when it cannot be stat'ed.
_Stamp = FileStamp | None


class _HasContext(Protocol):
    context: Any


@dataclass(frozen=True)
class _Pair:
    certificate_pem: bytes
    key_pem: bytes
    chain: list[x509.Certificate]


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def read_pair(tls: TLSConfig) -> _Pair:
    """Read ``tls.certificate`` (PEM: the leaf first, then its chain) and
    ``tls.private_key`` (PEM, unencrypted) and check they are one pair.

    Raises StartupError naming the file and what is wrong: unreadable, not (or not
    wholly) PEM, an encrypted key, or a key that is not the certificate's.
    """
    try:
        cert_pem = tls.certificate.read_bytes()
    except OSError as exc:
        raise StartupError(f"tls.certificate: cannot read {tls.certificate} ({exc.strerror})") from None
    try:
        key_pem = tls.private_key.read_bytes()
    except OSError as exc:
        raise StartupError(f"tls.private_key: cannot read {tls.private_key} ({exc.strerror})") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise StartupError(
            f"tls.certificate: {tls.certificate} holds no complete PEM certificate (half written?)"
        ) from None
    # A file cut off after a whole certificate parses: the count and the last line tell.
    # (A key in the same file, as some set-ups keep it, is no certificate block.)
    if cert_pem.count(b"-----BEGIN CERTIFICATE-----") != len(chain) or not cert_pem.rstrip().endswith(b"-----"):
        raise StartupError(f"tls.certificate: {tls.certificate} ends in an incomplete PEM block (half written?)")
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except TypeError:
        raise StartupError(
            f"tls.private_key: {tls.private_key} is encrypted; store it without a passphrase, mode 600"
        ) from None
    except ValueError:
        raise StartupError(
            f"tls.private_key: {tls.private_key} holds no complete PEM private key (half written?)"
        ) from None
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise StartupError(
            f"tls.private_key: {tls.private_key} is not the key of {tls.certificate} "
            f"(serial {serial_hex(chain[0].serial_number)}); install the matching pair"
        )
    return _Pair(cert_pem, key_pem, chain)


class ServerCertificate:
    """``tls.certificate`` and ``tls.private_key`` as one pair, and the TLS contexts of
    every listener that serves them.

    ``check()`` (the server's maintenance loop calls it every ``tls.reload_seconds``)
    loads a changed pair and switches every attached listener to a context rebuilt
    from it, all or none. Thread-safe. Constructing one reads and checks the pair:
    raises StartupError as :func:`read_pair` does.
    """

    def __init__(self, tls: TLSConfig) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._targets: list[tuple[_HasContext, ContextBuilder]] = []
        self._stamp = self._stamps()
        pair = read_pair(tls)
        self._chain = pair.chain
        #: Reloads done since start (for tests and metrics).
        self.reloads = 0
        self._failing: str | None = None
        self._tickets: SharedTicketKeys | None = None
        self._ticket_period = 0
        #: Per attached target: what its tickets are bound to (``_ticket_scope``).
        self._scopes: list[bytes] = []

    def _ticket_scope(self, context: ssl.SSLContext, leaf: x509.Certificate, client_ca: bytes) -> bytes:
        """What a context's ticket keys are bound to besides the period (tls_tickets.py
        ``derive_keys``): the server certificate, and for a context that verifies clients
        the ``tls.client_ca`` bundle it trusts, and the verify mode. A session is then not
        resumed under another server certificate or another set of trusted CAs (a CA taken
        out of the bundle must not let its certificates' sessions back in), nor one from
        the enrolment listener (no client certificate) on the main listener."""
        verifies = context.verify_mode != ssl.CERT_NONE
        return hashlib.sha256(b"\0".join((leaf.fingerprint(_SHA256), client_ca if verifies else b"",
                                          str(int(context.verify_mode)).encode()))).digest()

    def _client_ca_bytes(self) -> bytes:
        try:
            return self.tls.client_ca.read_bytes()
        except OSError:
            return b""

    def share_ticket_keys(self, keys: SharedTicketKeys, now: float | None = None) -> None:
        """From now on every context attached or built here encrypts session tickets with
        `keys` (tls_tickets.py) of the period at `now` (Unix seconds, default the clock),
        the contexts attached already included. Call it before serving."""
        with self._lock:
            self._tickets = keys
            self._ticket_period = keys.period(now)
            for (target, _), scope in zip(self._targets, self._scopes, strict=True):
                keys.apply(target.context, self._ticket_period, scope)

    def rotate_ticket_keys(self, now: float | None = None) -> bool:
        """When the ticket-key period at `now` (Unix seconds, default the clock) is not the
        one in force, set its keys on every attached context (the server's maintenance loop
        calls this every few seconds); True when they changed. Tickets of the period before
        are no longer resumed (one full handshake). No-op without shared keys."""
        with self._lock:
            keys = self._tickets
            if keys is None or keys.period(now) == self._ticket_period:
                return False
            self._ticket_period = keys.period(now)
            for (target, _), scope in zip(self._targets, self._scopes, strict=True):
                keys.apply(target.context, self._ticket_period, scope)
        log.debug("TLS session-ticket keys rotated to period %d", self._ticket_period)
        return True

    def _stamps(self) -> tuple[_Stamp, _Stamp, _Stamp]:
        # tls.client_ca too: a CA bundle extended for a CA renewal (docs/certificates.md)
        # is trusted without a restart; create_ssl_context checks it like the pair.
        return file_stamp(self.tls.certificate), file_stamp(self.tls.private_key), file_stamp(self.tls.client_ca)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate served now (the leaf)."""
        return self._chain[0]

    @property
    def not_after(self) -> datetime:
        """When the certificate served now expires (aware UTC)."""
        return self.certificate.not_valid_after_utc

    def attach(self, target: _HasContext, build: ContextBuilder = create_ssl_context,
               *, context: Any = None) -> Any:
        """Set ``target.context`` (a cheroot SSL adapter, ``tls.DeferredHandshakeAdapter``
        or any object whose ``context`` the listener reads for each accepted socket) to
        ``build(tls)``, or to `context` when it was just built, and again to a fresh
        ``build(tls)`` after each reload. Returns the context set now. The enrolment
        listener attaches its adapter with ``tls.create_enrolment_context``."""
        ctx = context if context is not None else build(self.tls)
        with self._lock:
            scope = self._ticket_scope(ctx, self._chain[0], self._client_ca_bytes())
            if self._tickets is not None:
                self._tickets.apply(ctx, self._ticket_period, scope)
            target.context = ctx
            self._targets.append((target, build))
            self._scopes.append(scope)
        return ctx

    def check(self) -> bool:
        """Reload if the certificate, the key or ``tls.client_ca`` changed (or the last
        attempt failed): True when every attached listener now serves contexts built
        from the files as they are, False when nothing changed or they are not usable
        (the old contexts stay; a warning names the problem once, until it changes).
        Never raises for what is on disk."""
        with self._lock:
            stamp = self._stamps()
            if stamp == self._stamp and self._failing is None:
                return False
            try:
                pair = read_pair(self.tls)
                contexts = [build(self.tls) for _, build in self._targets]
                client_ca = self.tls.client_ca.read_bytes()
                if read_pair(self.tls).certificate_pem != pair.certificate_pem or self._stamps() != stamp:
                    raise StartupError(
                        f"tls.certificate: {self.tls.certificate} changed while it was loaded; trying again"
                    )
            except (StartupError, ssl.SSLError, OSError, ValueError) as exc:
                message = str(exc)
                if message != self._failing:
                    log.warning("the TLS files were not reloaded, the old certificate and CAs stay in force: %s",
                                message)
                self._failing = message
                return False
            self._scopes = [self._ticket_scope(ctx, pair.chain[0], client_ca) for ctx in contexts]
            for (target, _), ctx, scope in zip(self._targets, contexts, self._scopes, strict=True):
                if self._tickets is not None:
                    self._tickets.apply(ctx, self._ticket_period, scope)
                target.context = ctx
            old = self.certificate
            self._chain, self._stamp, self._failing = pair.chain, stamp, None
            self.reloads += 1
        if old.fingerprint(_SHA256) != pair.chain[0].fingerprint(_SHA256):
            log.info(
                "server certificate reloaded from %s: serial %s, valid until %s",
                self.tls.certificate, serial_hex(pair.chain[0].serial_number),
                pair.chain[0].not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
            )
        else:
            log.info("TLS files reloaded (%s, %s); the server certificate is the same",
                     self.tls.private_key, self.tls.client_ca)
        return True
