"""Refused TLS handshakes in the audit log, one line each, within a rate limit.

A client refused at the handshake (no certificate, a certificate of another CA, an
expired one, one without the clientAuth EKU, or bytes that are not TLS) never sends a
request, so the guard never audits it. The handshake loop (handshake.py) reports each
failed handshake here (``HandshakeLoop.on_failure``); :func:`classify` maps OpenSSL's
error to a reason of ``access.Refusal``, and :class:`TLSRefusals` writes the audit line
(``event`` = ``tls_handshake``, the guard's field set, plus ``detail``: OpenSSL's own
words) and counts it for the metrics.

OpenSSL's verify codes (``ssl.SSLCertVerificationError.verify_code``, the
``X509_V_ERR_*`` values of ``openssl/x509_vfy.h``) and reason strings
(``ssl.SSLError.reason``) are what tell the cases apart; on a server the client
certificate is verified for the ``sslclient`` purpose (OpenSSL ``ssl/ssl_cert.c``
``ssl_verify_cert_chain``), so a certificate whose EKU lacks clientAuth fails with
``X509_V_ERR_INVALID_PURPOSE``. An alert the *client* sends (it refuses our server
certificate: ``TLSV1_ALERT_UNKNOWN_CA`` ...) is ``tls_error``: the five reasons name the
client's certificate, and ``detail`` says which alert it was.

A connection that closes before its handshake completed (a TCP health check, a port
scan, a client that gave up) was not refused and is not logged.

Bounds (``config.py``): at most ``audit.tls_refusals_per_second`` lines per second from
one address (an IPv6 address counts by its /64, as ``addresses.client_block``) and
``audit.tls_refusals_total_per_second`` from all; past either, the refusals are counted
and, once the second is over, one line (``event`` = ``tls_refusals_suppressed``) says how
many were left out and why. The metrics (``counter``) see every refusal.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .access import Refusal
from .addresses import client_block
from .audit import AuditLog
from .proxy_protocol import ProxyHeaderError

__all__ = ["EVENT", "SUPPRESSED_EVENT", "TLSRefusals", "classify"]

log = logging.getLogger("davserver.tls_refusals")

#: The ``event`` field of a refused handshake's audit line.
EVENT = "tls_handshake"
#: The ``event`` field of the line that counts the lines left out in one second.
SUPPRESSED_EVENT = "tls_refusals_suppressed"

# X509_V_ERR_* (openssl/x509_vfy.h, OpenSSL 3.0).
_EXPIRED = {9: "CERT_NOT_YET_VALID", 10: "CERT_HAS_EXPIRED"}
_UNKNOWN_CA = {
    2: "UNABLE_TO_GET_ISSUER_CERT",
    7: "CERT_SIGNATURE_FAILURE",  # a CA of the same name, another key
    18: "DEPTH_ZERO_SELF_SIGNED_CERT",
    19: "SELF_SIGNED_CERT_IN_CHAIN",
    20: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    21: "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    24: "INVALID_CA",
    30: "AKID_SKID_MISMATCH",
}
_BAD_EKU = {26: "INVALID_PURPOSE"}

#: OpenSSL reasons of a server that asked for a certificate and got none (TLS 1.3, 1.2).
_NO_CERT_REASONS = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"})


def classify(exc: BaseException) -> Refusal | None:
    """The audit reason of a failed server handshake, or None when it is no refusal.

    `exc` is what ``TLSConnection.continue_handshake`` raised: ``ssl.SSLError`` (its
    subclass ``SSLCertVerificationError`` carries ``verify_code``), ``OSError`` (the peer
    went away) or ``ValueError`` (an unparsable certificate). A client that closed the
    connection before its handshake completed (``SSLEOFError``, ``SSLZeroReturnError`` or
    a plain ``OSError`` such as ECONNRESET: a TCP health check, a port scan, a client that
    gave up) was not refused and is None. Returns
    ``Refusal.NO_CERT``, ``UNKNOWN_CA``, ``CERT_EXPIRED``, ``BAD_EKU`` or ``TLS_ERROR``;
    ``PROXY_HEADER`` for a ``proxy_protocol.ProxyHeaderError`` (server.proxy_protocol).
    """
    if isinstance(exc, ProxyHeaderError):
        return Refusal.PROXY_HEADER  # closed before TLS for its PROXY header (handshake.py, proxy_protocol.py)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code in _EXPIRED:
            return Refusal.CERT_EXPIRED
        if code in _UNKNOWN_CA:
            return Refusal.UNKNOWN_CA
        if code in _BAD_EKU:
            return Refusal.BAD_EKU
        return Refusal.TLS_ERROR
    if isinstance(exc, ssl.SSLError):
        if getattr(exc, "reason", None) in _NO_CERT_REASONS:
            return Refusal.NO_CERT
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return None
        return Refusal.TLS_ERROR
    if isinstance(exc, ValueError):
        return Refusal.TLS_ERROR  # a certificate the chain check passed but that does not parse
    if isinstance(exc, OSError):
        return None
    return Refusal.TLS_ERROR


def _detail(exc: BaseException) -> str:
    """OpenSSL's words for the failure (``verify_message`` or ``reason``), for the audit line."""
    message = getattr(exc, "verify_message", None)
    if message:
        return f"certificate verify failed: {message}"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    return f"{type(exc).__name__}: {exc}"[:200]


class TLSRefusals:
    """Writes one audit line per refused TLS handshake, at most `per_address` a second from
    one address key and `total` a second in all (each ≥ 1), and a summary line for each
    second in which some were left out.

    `address_key` maps a peer address to the key it is limited by (addresses.client_block);
    `counter`, when given, is called with the reason (a ``Refusal`` value as str) of every
    refusal, written or not (the metrics). `clock` is monotonic seconds. Thread-safe.
    Raises ``ValueError`` for a limit below 1.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        per_address: int,
        total: int,
        address_key: Callable[[str], str] = client_block,
        counter: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_address < 1 or total < 1:
            raise ValueError("per_address and total must be at least 1")
        self.audit = audit
        self.per_address = per_address
        self.total = total
        self.address_key = address_key
        self.counter = counter
        self.clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._written = 0
        self._by_address: dict[str, int] = {}  # at most `total` keys: only addresses written for
        self._suppressed: Counter[str] = Counter()
        self._timer: threading.Timer | None = None
        self._closed = False

    def refused(self, exc: BaseException, peer: str, *, duration: float = 0.0) -> Refusal | None:
        """Record one failed handshake of `peer` (its address as the audit log shows it)
        that took `duration` seconds; returns the reason, or None when it was no refusal
        (see :func:`classify`)."""
        reason = classify(exc)
        if reason is None:
            return None
        if self.counter is not None:
            self.counter(str(reason))
        record: dict[str, Any] | None = None
        summary: dict[str, Any] | None = None
        with self._lock:
            summary = self._roll(self.clock())
            key = self.address_key(peer)
            seen = self._by_address.get(key, 0)
            if self._written < self.total and seen < self.per_address:
                self._written += 1
                self._by_address[key] = seen + 1
                record = {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "event": EVENT,
                    "peer": peer or None,
                    "cert_serial": None,
                    "cert_fingerprint": None,
                    "cert_subject": None,
                    "account": None,
                    "share": None,
                    "method": None,
                    "path": None,
                    "status": 0,
                    "bytes_in": 0,
                    "bytes_out": 0,
                    "duration_ms": round(duration * 1000, 2),
                    "decision": "deny",
                    "reason": str(reason),
                    "detail": _detail(exc),
                }
            else:
                self._suppressed[str(reason)] += 1
                self._schedule()
        if summary is not None:
            self.audit.write(summary)
        if record is not None:
            self.audit.write(record)
        return reason

    def flush(self) -> None:
        """Write the summary of a second that is over (called by a timer; idempotent)."""
        with self._lock:
            self._timer = None
            summary = self._roll(self.clock())
        if summary is not None:
            self.audit.write(summary)

    def close(self) -> None:
        """Write what is left out so far, and stop the timer (before the audit log closes)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            summary = self._summary()
        if summary is not None:
            self.audit.write(summary)

    # --- under the lock ---------------------------------------------------------

    def _roll(self, now: float) -> dict[str, Any] | None:
        window = int(now)
        if window == self._window:
            return None
        summary = self._summary()
        self._window = window
        self._written = 0
        self._by_address.clear()
        return summary

    def _summary(self) -> dict[str, Any] | None:
        if not self._suppressed:
            return None
        count = sum(self._suppressed.values())
        summary = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": SUPPRESSED_EVENT,
            "peer": None,
            "decision": "deny",
            "reason": None,
            "suppressed": count,
            "reasons": dict(self._suppressed),
            "detail": (
                f"{count} more refused TLS handshakes not logged in one second "
                f"(audit.tls_refusals_per_second {self.per_address}, "
                f"audit.tls_refusals_total_per_second {self.total})"
            ),
        }
        self._suppressed.clear()
        return summary

    def _schedule(self) -> None:
        if self._timer is not None or self._closed:
            return
        delay = self._window + 1 - self.clock() + 0.01
        self._timer = threading.Timer(max(0.01, delay), self.flush)
        self._timer.daemon = True
        self._timer.start()
