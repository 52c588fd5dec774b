"""One set of TLS session-ticket keys for every worker process and every node.

A client that reconnects with a session ticket (TLS 1.2, RFC 5077) or a PSK from a
NewSessionTicket (TLS 1.3, RFC 8446 §4.6.1, §2.2) skips the certificate exchange and its
signatures. OpenSSL encrypts each ticket with keys of its own ``SSL_CTX``, random per
context (``SSL_CTX_new``): with worker processes the supervisor's accept turn-taking sends
the next connection to another worker, and behind a balancer to another node, whose keys
cannot open the ticket, so every reconnect paid a full mutual-TLS handshake.

Here every context the server builds (``ServerCertificate.attach`` and its reloads, for
the main and the enrolment listener) gets keys derived with HKDF-SHA256 (RFC 5869) from the
state store's random secret of the current *period* (``floor(unix time /
tls.session_ticket_seconds)``): ``period_secret("tls-session-tickets", period, 32, ...)``,
the same bytes in every process and on every node on that store, and for the context's
*scope*: its server certificate, trusted client CAs and verify mode (server_certificate.py
``_ticket_scope``), so a session is never resumed under another certificate or CA bundle
than it was made under, nor an enrolment listener's session (no client certificate) on the
main listener. Keys change with the period, on every process at the same wall-clock
instant. A ticket from the previous period is not resumed: that client does one full
handshake (OpenSSL takes one key at a time through this call).

Forward secrecy: each period's secret is random and the store deletes it at the end of the
period after it (one grace period, for processes still rotating and clocks a little
apart): StateStore.period_secret, ``secure_delete`` and a truncating WAL checkpoint on
SQLite, expiry on Redis. Whoever reads the store (or a copy of it: a backup, a replica,
an RDB/AOF file) during period n can open the tickets of periods n-1 and n, and the
sessions they carry; the keys of earlier periods are gone from it and cannot be derived
from anything it keeps (the scope is public). A copy taken earlier holds the keys of its
own time. Earlier releases derived every period's keys from one never-rotated stored
secret of the same name: the first ``period_secret`` call deletes it.

The call is ``SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, keys)`` (OpenSSL 3.0
``ssl.h:1317``, macro ``SSL_CTX_set_tlsext_ticket_keys`` ``tls1.h:310``; ``ssl/s3_lib.c``
``ssl3_ctx_ctrl``: 16 bytes key name, 32 HMAC-SHA256 key, 32 AES-256-CBC key, copied into
the ``SSL_CTX``), reached on the context's own ``SSL_CTX`` through the checked pointer of
tls_ca_names.py. Before writing, the length OpenSSL expects is asked (a NULL ``parg``
returns it) and must be 80; after writing, the keys are read back
(``SSL_CTRL_GET_TLSEXT_TICKET_KEYS``, 58) and must be the ones written. If a check fails
nothing is written and :class:`TicketKeysUnavailable` says why; the server then warns
once and runs with per-process keys (resumption only on the same worker).

A rotation writes the new keys into the contexts in use. OpenSSL copies the 80 bytes with
no lock; a handshake on another thread at that instant may issue or meet a ticket no key
opens: that client does a full handshake, nothing else follows from it.

What a resumed session proves: it carries the client certificate of its full handshake
(``SSL_SESSION`` peer, serialised into the ticket), which ``getpeercert`` returns and the
guard maps to an account and checks against the CRL on every request, as for a full
handshake (tests/test_session_tickets.py). Whoever can read the secret from the store can
forge a ticket naming any certificate the store's nodes trust: the store's credentials
guard it (docs/scaling.md).
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .store.base import StateStore, StoreUnavailable
from .tls_ca_names import CANamesUnavailable, _library, _ssl_ctx_pointer

__all__ = ["KEYS_LENGTH", "SECRET_BYTES", "SECRET_NAME", "SharedTicketKeys", "TicketKeysUnavailable", "derive_keys",
           "set_ticket_keys", "ticket_keys_of"]

log = logging.getLogger("davserver.tls")

#: The state store's per-period secrets the keys come from (``StateStore.period_secret``).
SECRET_NAME = "tls-session-tickets"  # noqa: S105 - the name of the secret, not the secret
#: Bytes of one key set in OpenSSL 3.0: 16 key name + 32 HMAC key + 32 AES key.
KEYS_LENGTH = 80
#: ssl.h (OpenSSL 3.0): SSL_CTRL_GET_TLSEXT_TICKET_KEYS, SSL_CTRL_SET_TLSEXT_TICKET_KEYS.
_GET_KEYS = 58
_SET_KEYS = 59
_HKDF_INFO = b"davserver tls session ticket keys v1 period "
#: Bytes of one period's secret in the store.
SECRET_BYTES = 32


class TicketKeysUnavailable(RuntimeError):
    """The keys could not be set on a context: ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_keys(secret: bytes, period: int, scope: bytes = b"") -> bytes:
    """The :data:`KEYS_LENGTH` key bytes of `period` (an integer, the number of whole
    periods since the Unix epoch) for `scope` (bytes naming what the tickets are bound to:
    server_certificate.py hashes the server certificate, the trusted client CAs and the
    verify mode into it): HKDF-SHA256 (RFC 5869) of `secret` (the store's secret of that
    period, ``StateStore.period_secret``), no salt, the period and the scope in the info.
    Same inputs, same bytes, in any process."""
    info = _HKDF_INFO + period.to_bytes(8, "big", signed=True) + scope
    return HKDF(algorithm=hashes.SHA256(), length=KEYS_LENGTH, salt=None, info=info).derive(secret)


def set_ticket_keys(context: ssl.SSLContext, keys: bytes) -> None:
    """Make `context` (a server ``ssl.SSLContext``) encrypt and open session tickets with
    `keys` (:data:`KEYS_LENGTH` bytes) from now on. Raises ValueError for another length,
    :class:`TicketKeysUnavailable` when the ``SSL_CTX`` cannot be reached safely
    (tls_ca_names.py's checks), OpenSSL expects another length, or the keys read back
    differ; in the first two cases nothing was written."""
    if len(keys) != KEYS_LENGTH:
        raise ValueError(f"ticket keys are {KEYS_LENGTH} bytes, not {len(keys)}")
    try:
        lib = _library()
        ptr = _ssl_ctx_pointer(context, lib)
    except CANamesUnavailable as exc:
        raise TicketKeysUnavailable(exc.reason) from None
    expected = lib.SSL_CTX_ctrl(ptr, _GET_KEYS, 0, None)
    if expected != KEYS_LENGTH:
        lib.ERR_clear_error()
        raise TicketKeysUnavailable(f"OpenSSL expects {expected} bytes of ticket keys, not {KEYS_LENGTH}")
    buf = ctypes.create_string_buffer(keys, KEYS_LENGTH)
    back = ctypes.create_string_buffer(KEYS_LENGTH)
    if (lib.SSL_CTX_ctrl(ptr, _SET_KEYS, KEYS_LENGTH, buf) != 1
            or lib.SSL_CTX_ctrl(ptr, _GET_KEYS, KEYS_LENGTH, back) != 1 or back.raw != keys):
        lib.ERR_clear_error()
        raise TicketKeysUnavailable("the ticket keys read back from the SSL_CTX are not the ones written")


def ticket_keys_of(context: ssl.SSLContext) -> bytes:
    """The :data:`KEYS_LENGTH` ticket-key bytes `context` uses now (for checks and tests).
    Raises :class:`TicketKeysUnavailable` as :func:`set_ticket_keys` does."""
    try:
        lib = _library()
        ptr = _ssl_ctx_pointer(context, lib)
    except CANamesUnavailable as exc:
        raise TicketKeysUnavailable(exc.reason) from None
    back = ctypes.create_string_buffer(KEYS_LENGTH)
    if (lib.SSL_CTX_ctrl(ptr, _GET_KEYS, 0, None) != KEYS_LENGTH
            or lib.SSL_CTX_ctrl(ptr, _GET_KEYS, KEYS_LENGTH, back) != 1):
        lib.ERR_clear_error()
        raise TicketKeysUnavailable(f"OpenSSL does not hand out {KEYS_LENGTH} bytes of ticket keys")
    return back.raw


class SharedTicketKeys:
    """The ticket keys of every process on one state store: `store` (its
    ``period_secret(SECRET_NAME, period, SECRET_BYTES, keep)``, kept to the end of the
    period after `period`) and the period `seconds` (``tls.session_ticket_seconds``, > 0).
    `clock` returns Unix time in seconds. Thread-safe: the secret of the latest period asked
    for is cached (one store call per period, not per context), under a lock."""

    def __init__(self, store: StateStore, seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        if seconds <= 0:
            raise ValueError("the ticket key period must be positive")
        self._store = store
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] | None = None
        self._warned = False

    def period(self, now: float | None = None) -> int:
        """The period number at `now` (Unix seconds; default the clock)."""
        return int((self._clock() if now is None else now) // self.seconds)

    def secret(self, period: int) -> bytes:
        """The store's :data:`SECRET_BYTES` secret of `period`, kept there until the end of
        the period after it. Raises StoreUnavailable."""
        with self._lock:
            if self._cached is not None and self._cached[0] == period:
                return self._cached[1]
            keep = (period + 2) * self.seconds - self._clock()
            value = self._store.period_secret(SECRET_NAME, period, SECRET_BYTES, keep)
            if self._cached is None or period >= self._cached[0]:
                self._cached = (period, value)
            return value

    def apply(self, context: ssl.SSLContext, period: int, scope: bytes = b"") -> bool:
        """Set the keys of `period` and `scope` (:func:`derive_keys` of :meth:`secret`) on
        `context`; True when set. When the store cannot be reached the context gets random
        keys of its own (never keeps an older period's: resumption only on this context
        until the next rotation); on that or TicketKeysUnavailable one warning per
        instance (for the latter the context keeps OpenSSL's own per-process keys)."""
        try:
            try:
                keys = derive_keys(self.secret(period), period, scope)
            except StoreUnavailable as exc:
                set_ticket_keys(context, secrets.token_bytes(KEYS_LENGTH))
                self._warn(f"the state store is unavailable: {exc}")
                return False
            set_ticket_keys(context, keys)
        except TicketKeysUnavailable as exc:
            self._warn(exc.reason)
            return False
        return True

    def _warn(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("TLS session tickets stay per process (%s): a client reconnecting to another "
                        "worker or node does a full handshake", reason)
