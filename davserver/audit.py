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
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._stream.write(line + "\n")
            except (OSError, ValueError) as exc:  # a full disk must not take requests down
                log.error("audit record not written: %s", exc)

    def close(self) -> None:
        if self._owned:
            with self._lock:
                self._stream.close()
