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
from pathlib import Path
from typing import Any, TextIO

__all__ = ["AuditLog"]

log = logging.getLogger("davserver.audit")

#: Line breaks other than LF that JSON may carry raw but that line-splitting tools
#: (Python's str.splitlines, some log shippers) honour: escaped, so a file name
#: cannot split one record into two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
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
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str).translate(_LINE_BREAKS)
        with self._lock:
            try:
                self._stream.write(line + "\n")
            except (OSError, ValueError) as exc:  # a full disk must not take requests down
                log.error("audit record not written: %s", exc)

    def close(self) -> None:
        if self._owned:
            with self._lock:
                self._stream.close()
