"""The server's view of the CRL, re-read whenever the file changes.

Revocation is checked on every request (not only at the handshake), so a
certificate revoked with the CLI stops working at once, also on a
kept-alive connection.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path

from .errors import StartupError
from .pki import PKIError, load_crl_serials

__all__ = ["RevocationList"]

log = logging.getLogger("davserver.revocation")


class RevocationList:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._serials: frozenset[str] = frozenset()
        self.next_update: datetime | None = None
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            try:
                self._serials, self.next_update = load_crl_serials(path)
            except PKIError as exc:
                raise StartupError(f"tls.crl: {exc}") from None
            self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def serials(self) -> frozenset[str]:
        if self.path is None:
            return self._serials
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._serials, self.next_update = load_crl_serials(self.path)
                        log.info("CRL reloaded from %s (%d revoked)", self.path, len(self._serials))
                    except PKIError as exc:
                        log.error("CRL not reloaded, keeping the last good version: %s", exc)
                    self._stamp = stamp
        return self._serials
