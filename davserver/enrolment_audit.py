"""The one audit writer of the enrolment listener: every record any of its layers writes
(the HTTP/1.1 framing refusals of http1.py, the pages of enrolment_pages.py) passes
through :class:`EnrolmentAudit`, which

- names the listener (``"listener": "enrolment"``), so a refusal on the enrolment port is
  never mistaken for one on the file server's port;
- rewrites every text field that names an enrolment link (:func:`redact`): an invitation
  token is a bearer secret for the account's certificate, and a path on this listener
  may hold one however the client wrote it (origin-form or absolute-form, percent-encoded,
  with a query, extra segments or a ``.`` or ``)`` pasted from an e-mail). What is
  written instead is ``/enrol/`` and the first 16 hex digits of the token's SHA-256 —
  the ``invitation`` field of the pages' lines, and what ``davserver cert invites`` can be
  matched against — so a log reader can still tell which link was used.

No layer writes to the audit log of this listener but through this object, so none of
them can log a token raw, whatever it parses or refuses.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from .audit import AuditLog
from .invitations import token_digest

__all__ = ["EnrolmentAudit", "redact"]

#: ``enrol/`` anywhere in a decoded target (any case: ``/ENROL/x`` is 404, but its ``x``
#: may still be a token typed with the wrong case of the prefix), then the token: the
#: longest run of ``secrets.token_urlsafe``'s alphabet.
_ENROL = re.compile(r"enrol/+([A-Za-z0-9_-]*)", re.IGNORECASE)
#: Percent-decoding rounds: a target encoded twice (``%2541``) is decoded to its token too.
_DECODE_ROUNDS = 4
#: Paths of this listener that are never a token and are written as they are.
_PUBLIC = frozenset({"/enrol/help/clients.md"})


def redact(text: str) -> str:
    """`text` (a request target or path, as received or as decoded) with every enrolment
    token replaced: from the first ``enrol/`` on (after percent-decoding, up to
    :data:`_DECODE_ROUNDS` times), what follows is dropped and replaced by the first 16 hex
    digits of the SHA-256 of the token-alphabet run right after it (nothing when that run
    is empty). Text without ``enrol/`` in any decoding is returned unchanged, and so is
    the client guide's path. E.g. ``https://h/enrol/<token>).`` ->
    ``https://h/enrol/3f2a9c0d1e5b7a68``."""
    decoded = text
    for _ in range(_DECODE_ROUNDS):
        step = unquote(decoded, errors="replace")
        if step == decoded:
            break
        decoded = step
    match = _ENROL.search(decoded)
    if match is None or (decoded == text and text.split("?", 1)[0] in _PUBLIC):
        return text
    token = match[1]
    return decoded[: match.start(1)] + (token_digest(token)[:16] if token else "")


class EnrolmentAudit(AuditLog):
    """The audit log as the enrolment listener's layers see it: ``write(record)`` writes a
    copy of `record` (a dict of the ``Guard._record`` field set) with ``listener`` set to
    ``"enrolment"`` and every string value passed through :func:`redact`, to `audit` (the
    server's ``AuditLog``, which stays the owner of the file: ``reopen`` and ``close`` are
    its own, called by the server). An ``AuditLog`` itself so every layer that takes one
    takes this; :meth:`wrap` makes one, or returns an ``EnrolmentAudit`` unchanged, so
    wrapping twice redacts once."""

    def __init__(self, audit: AuditLog) -> None:  # not super().__init__: that opens a file of its own
        self.inner = audit
        self.path = audit.path
        self.observers = []  # the inner log's observers see every record

    @classmethod
    def wrap(cls, audit: Any) -> EnrolmentAudit:
        """``audit`` (the server's ``AuditLog``) wrapped for the enrolment listener, or
        ``audit`` itself when it already is an ``EnrolmentAudit``."""
        return audit if isinstance(audit, EnrolmentAudit) else cls(audit)

    def write(self, record: dict[str, Any]) -> None:
        """Write a copy of ``record`` (the audit field set, a dict of JSON values) with every
        string value redacted (:func:`redact`) and ``listener`` set to ``"enrolment"`` to
        the inner log; ``record`` itself is not changed. Never raises for the disk."""
        line = {key: redact(value) if isinstance(value, str) else value for key, value in record.items()}
        line["listener"] = "enrolment"
        self.inner.write(line)

    def reopen(self) -> bool:
        """Nothing to reopen here: the server reopens the inner log (SIGHUP)."""
        return False

    def close(self) -> None:
        """Nothing to close here: the server closes the inner log."""
