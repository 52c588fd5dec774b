"""The audit log: one JSON object per request, written when the response ends.

It records who (certificate and account), what (method, path, share), the
outcome (status, bytes, duration) and the precise decision reason. It never
records a secret: no Authorization header, no password, no code.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["AuditLog"]

log = logging.getLogger("davserver.audit")

#: Line breaks other than LF that JSON may carry raw but that line-splitting tools
#: (Python's str.splitlines, some log shippers) honour: escaped, so a file name
#: cannot split one record into two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class AuditLog:
    """Append-only JSON lines to ``audit.file`` (standard error when it is None).

    Thread-safe: request threads write while ``reopen()`` (SIGHUP, after logrotate
    renamed the file) swaps the stream under the same lock, so each line lands whole
    in either the old file or the new one, never lost between them.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.observers = []
        self._lock = threading.Lock()
        self._stream: TextIO
        if path is None:
            self._stream = sys.stderr
            self._owned = False
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (field name -> JSON value; what JSON cannot hold is written as
        its ``str``) as one compact line of UTF-8 JSON, U+0085/2028/2029 escaped so no
        tool splits it, then hand it to every observer. A write error (a full disk) or a
        failing observer is logged, never raised: an audit problem does not fail a request."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str).translate(_LINE_BREAKS)
        with self._lock:
            try:
                self._stream.write(line + "\n")
            except (OSError, ValueError) as exc:  # a full disk must not take requests down
                log.error("audit record not written: %s", exc)
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # noqa: BLE001 - a broken observer must not take requests down
                log.exception("audit observer failed")

    #: Called with every record after it is written (metrics.py counts requests and
    #: refusals from them: one place where each figure arises). Append before serving.
    observers: list[Callable[[dict[str, Any]], None]]

    def reopen(self) -> bool:
        """Open ``path`` afresh (creating it) and switch writers to it; close the old
        stream. For log rotation: rename the file, then reopen (SIGHUP / ``systemctl
        reload``). Returns False when there is nothing to reopen (standard error) or
        the new file cannot be opened; then the old stream stays in use and the error
        is logged. Never raises for what is on disk."""
        if not self._owned or self.path is None:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            stream = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            log.error("audit log not reopened, still writing to the old file: %s", exc)
            return False
        with self._lock:
            old, self._stream = self._stream, stream
        try:
            old.close()
        except OSError as exc:
            log.error("closing the old audit log failed: %s", exc)
        return True

    def close(self) -> None:
        """Close the file (standard error is left open). A write after this is logged as not
        written, not raised."""
        if self._owned:
            with self._lock:
                self._stream.close()
