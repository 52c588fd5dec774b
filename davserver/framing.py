"""The Content-Length rule, in one place for http1.py (which frames the request) and every
module that reads ``CONTENT_LENGTH`` from the WSGI environ.

RFC 9110 §8.6: ``Content-Length = 1*DIGIT``, ASCII digits only: no sign, no ``0x``, no
``_`` (which Python's ``int()`` accepts), no other script's digits (``'١٢'.isdigit()`` is
true), no inner spaces. Optional whitespace around the value is not part of it (RFC 9110
§5.5). At most 19 digits (up to 9,999,999,999,999,999,999 bytes), as http1.py has always
allowed: anything longer is no size a client means and would not fit an int64 elsewhere.
A list of values (``3, 3``) is a framing question that http1.py settles before any
application sees the environ (:func:`http1.frame_request`): here it is invalid.

This module imports nothing of davserver, so guard.py (which http1.py imports) can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["BadContentLength", "FramingError", "content_length", "has_body", "parse_content_length"]

_DIGITS = re.compile(r"[0-9]{1,19}")


class FramingError(ValueError):
    """The request's framing is ambiguous or malformed: answered 400, connection closed
    (http1.py).

    ``detail`` says what was wrong, for the response body and the log.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadContentLength(FramingError):
    """A Content-Length value that is not 1 to 19 ASCII digits (RFC 9110 §8.6)."""

    def __init__(self, detail: str = "Content-Length must be 1 to 19 digits (RFC 9110 §8.6)") -> None:
        super().__init__(detail)


def parse_content_length(value: str | bytes) -> int:
    """The length in bytes that one Content-Length value ``value`` says (str or the raw
    bytes of the field), surrounding spaces and tabs ignored. Raises
    :class:`BadContentLength` unless it is 1 to 19 ASCII digits."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if not _DIGITS.fullmatch(text):
        raise BadContentLength
    return int(text)


def content_length(environ: Mapping[str, Any]) -> int | None:
    """The request body's length in bytes from the WSGI environ's ``CONTENT_LENGTH``, or
    None when there is none (absent or empty: no body, or a chunked one). Raises
    :class:`BadContentLength` for any other value than 1 to 19 ASCII digits
    (:func:`parse_content_length`); behind http1.py that never happens, since it refuses
    such a request (400 ``bad_framing``) before the application runs."""
    value = environ.get("CONTENT_LENGTH")
    if value is None or not str(value).strip(" \t"):
        return None
    return parse_content_length(str(value))


def has_body(environ: Mapping[str, Any]) -> bool:
    """Whether the request announces a body, which an early answer leaves unread: a
    Content-Length other than 0 (an invalid one included: it is not "no body") or any
    ``Transfer-Encoding``."""
    try:
        length = content_length(environ)
    except BadContentLength:
        return True
    return bool(length) or bool(environ.get("HTTP_TRANSFER_ENCODING"))
