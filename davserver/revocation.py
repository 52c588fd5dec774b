"""The server's view of the CRL, re-read whenever the file changes.

Revocation is checked on every request (not only at the handshake), so a
certificate revoked with the CLI stops working at once, also on a
kept-alive connection.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .errors import StartupError
from .files import FileWatch, file_stamp
from .pki import CertificateAuthority, PKIError, load_crl_serials

__all__ = ["RevocationList"]

log = logging.getLogger("davserver.revocation")

#: Re-sign when less than this is left of the CRL's validity (it is signed for 30 days).
_MARGIN = timedelta(days=10)


class RevocationList:
    """The revoked serials of the CRL file ``tls.crl`` (``path``; None: no CRL, nothing
    revoked), re-read when the file changes (another inode, size or time). Thread-safe.
    Raises StartupError at construction when the file cannot be read or parsed: the
    server does not start without the CRL it was told to enforce."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._serials: frozenset[str] = frozenset()
        self.next_update: datetime | None = None
        self._watch: FileWatch | None = None
        if path is not None:
            # Stamped before the first load: a change during it is seen at the next look.
            self._watch = FileWatch(path, seen=file_stamp(path))
            try:
                self._serials, self.next_update = load_crl_serials(path)
            except PKIError as exc:
                raise StartupError(f"tls.crl: {exc}") from None

    def serials(self) -> frozenset[str]:
        """The serials revoked now: a ``pki.RevokedSerials`` (upper-case hex, as
        ``pki.serial_hex`` and ``CertIdentity.serial`` write them, with the CRL's issuer)
        once a CRL was read. A changed file that no longer parses is logged and the last
        good list kept; never raises."""
        if self._watch is None:
            return self._serials
        changed, stamp = self._watch.look()
        if changed:
            with self._lock:
                if stamp != self._watch.seen:
                    try:
                        self._serials, self.next_update = load_crl_serials(self._watch.path)
                        log.info("CRL reloaded from %s (%d revoked)", self._watch.path, len(self._serials))
                    except PKIError as exc:
                        log.error("CRL not reloaded, keeping the last good version: %s", exc)
                    self._watch.seen = stamp
        return self._serials

    def keep_fresh(self, certs_dir: Path, *, now: datetime | None = None, margin: timedelta = _MARGIN) -> str:
        """Re-sign our own CA's CRL well before its nextUpdate; warn about anyone else's.

        Clients never see a stale CRL from us, and tools that load the CRL into
        OpenSSL (which then refuses every client past nextUpdate) keep working.
        Returns what was done: "fresh", "renewed", "stale" or "none".
        """
        if self.path is None:
            return "none"
        self.serials()
        now = now or datetime.now(UTC)
        if self.next_update is not None and self.next_update - now > margin:
            return "fresh"
        ca = CertificateAuthority(certs_dir)
        own = ca.exists() and self.path.resolve() == ca.crl_path.resolve() and os.access(ca.ca_key_path, os.R_OK)
        if own:
            try:
                ca.write_crl(now=now)
            except PKIError as exc:
                log.error("could not re-sign the CRL: %s", exc)
            else:
                log.info("CRL re-signed (it was due %s)", self.next_update)
                self.serials()
                return "renewed"
        log.warning(
            "the CRL %s is due for an update (nextUpdate %s): publish a fresh one (`davserver cert crl`)",
            self.path,
            self.next_update,
        )
        return "stale"
