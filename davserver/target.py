"""The one parse of a request's target and Destination header.

Every name a request touches is read here, once, and every later layer (the
access decision, the audit log, WsgiDAV's routing, COPY and MOVE) works from the
result. Two layers that each parse the same header disagree sooner or later:
``Destination: /files#/../team/x`` was authorised for ``files`` by a parser that
cut the fragment and executed in ``team`` by one that kept it; WsgiDAV decodes
``%3F`` before splitting off the query (request_server.py:916-929), so a rename
to ``report%3Fv2.txt`` overwrote ``report``.

The rules (RFC 3986 §3, §2.1; RFC 9112 §3.2; RFC 4918 §10.3):

* a fragment is refused (a client never sends one);
* the query is split off *before* percent-decoding; a Destination has no use for
  one, so a query there is refused rather than guessed at;
* every ``%XX`` and every ``;`` is data of a name; ``%2F`` (a slash inside a name)
  cannot exist on disk and is refused;
* invalid percent-encoding, invalid UTF-8, NUL, raw spaces or control bytes in the
  target, and ``.``/``..`` segments (raw or encoded) are refused;
* empty segments (``//``) are dropped; a trailing slash is kept as a flag;
* the first segment names the share, compared without case (WsgiDAV routes that
  way, wsgidav_app.py:404), and the canonical path spells it in lower case.

Errors are :class:`BadTarget` with a reason for the audit log and the status the
client gets: 400, or 403 for a Destination on another server (RFC 4918 §9.8.5 allows
502 there; no client input gets a 5xx here, and 403 is what it always got).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BadTarget",
    "Target",
    "parse_destination",
    "parse_request_target",
    "parse_wsgi_path",
]

_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
#: Bytes that never stand raw in a request target: controls, space and DEL. (Raw
#: ``"``, ``|``, ``{`` and raw UTF-8 are not URI characters either, but clients send
#: them and they are unambiguous, so they are read as data.)
_RAW_FORBIDDEN = frozenset(range(0x21)) | {0x7F}
_DEFAULT_PORTS = {"https": "443", "http": "80"}


class BadTarget(ValueError):
    """A request target or Destination that names no resource unambiguously.

    ``reason`` goes to the audit log (``bad_path``, ``bad_destination``);
    ``status`` is what the client is told (400, or 403 for another server).
    """

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class Target:
    """A parsed path: decoded names below the server root, and the trailing slash.

    ``segments[0]`` is the share (lower case); the rest name a resource inside it.
    ``Target((), False)`` is the server root ``/``.
    """

    segments: tuple[str, ...]
    trailing_slash: bool = False

    @property
    def share(self) -> str | None:
        """The first segment (a share name or a reserved prefix), or None for ``/``."""
        return self.segments[0] if self.segments else None

    @property
    def name(self) -> str:
        """The last segment: the name of the resource itself ("" for ``/``)."""
        return self.segments[-1] if self.segments else ""

    @property
    def path(self) -> str:
        """The canonical decoded path, e.g. ``/files/report?v2.txt`` or ``/files/docs/``."""
        if not self.segments:
            return "/"
        return "/" + "/".join(self.segments) + ("/" if self.trailing_slash else "")

    @property
    def wsgi_path(self) -> str:
        """``path`` as a WSGI string: its UTF-8 bytes as Latin-1 text (PEP 3333)."""
        return self.path.encode("utf-8").decode("latin-1")

    @property
    def is_share_root(self) -> bool:
        """True for the root of a share (``/files`` or ``/files/``: one segment), False for
        ``/`` and for anything inside a share."""
        return len(self.segments) == 1


def _decode_segment(raw: bytes, reason: str) -> str:
    """Percent-decode one raw path segment strictly and read it as UTF-8."""
    if b"%" in raw:
        pieces = _PERCENT.split(raw)
        out = bytearray()
        for i, piece in enumerate(pieces):
            if i % 2:
                out.append(int(piece, 16))
            elif b"%" in piece:
                raise BadTarget(reason, "invalid percent-encoding")
            else:
                out += piece
        data = bytes(out)
    else:
        data = raw
    try:
        name = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(reason, "a name is not valid UTF-8") from None
    if "/" in name:
        raise BadTarget(reason, "a name cannot contain a slash (%2F)")
    if "\x00" in name:
        raise BadTarget(reason, "a NUL byte in a name")
    if name in (".", ".."):
        raise BadTarget(reason, "a dot segment")
    return name


def _parse_path(raw: bytes, reason: str) -> Target:
    if not raw.startswith(b"/"):
        raise BadTarget(reason, "the path must start with /")
    if any(b in _RAW_FORBIDDEN for b in raw):
        raise BadTarget(reason, "a raw control character, space or delimiter in the path")
    segments = [_decode_segment(part, reason) for part in raw.split(b"/") if part]
    if segments:
        segments[0] = segments[0].lower()
    return Target(tuple(segments), trailing_slash=raw.endswith(b"/") and bool(segments))


def _split_absolute(raw: bytes, reason: str) -> tuple[str, str, bytes]:
    """``scheme://authority/path`` → (scheme, authority, path); path-only input has empty scheme."""
    match = re.match(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)\Z", raw, re.DOTALL)
    if match is None:
        if not raw.startswith(b"/"):
            raise BadTarget(reason, "neither an absolute URI nor an absolute path")
        return "", "", raw
    scheme, authority, path = match.groups()
    try:
        authority_text = authority.decode("ascii").lower()
    except UnicodeDecodeError:
        raise BadTarget(reason, "a non-ASCII host") from None
    if "@" in authority_text:
        raise BadTarget(reason, "user information in the URI")
    return scheme.decode("ascii").lower(), authority_text, path or b"/"


def parse_request_target(raw: bytes) -> tuple[Target, bytes]:
    """Parse the request target as it came on the request line (RFC 9112 §3.2).

    ``raw`` is the target's bytes (origin-form or absolute-form; in absolute-form
    the authority is the Host, which the framing layer checks). Returns the
    target and the raw query (b"" when there is none), which is not decoded.
    Raises :class:`BadTarget` (reason ``bad_path``).
    """
    if raw == b"*":
        return Target(()), b""
    if b"#" in raw:
        raise BadTarget("bad_path", "a fragment in the request target")
    raw, _, query = raw.partition(b"?")
    _scheme, _authority, path = _split_absolute(raw, "bad_path")
    return _parse_path(path, "bad_path"), query


def parse_wsgi_path(path_info: str) -> Target:
    """Canonicalise an already decoded WSGI ``PATH_INFO`` (for callers without the raw target).

    Raises :class:`BadTarget` as :func:`parse_request_target` does; nothing is percent-decoded.
    """
    try:
        data = path_info.encode("latin-1")
    except UnicodeEncodeError:
        data = path_info.encode("utf-8")
    if not data.startswith(b"/"):
        data = b"/" + data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("bad_path", "a name is not valid UTF-8") from None
    segments = [s for s in text.split("/") if s]
    for s in segments:
        if s in (".", "..") or "\x00" in s:
            raise BadTarget("bad_path", "a dot segment or NUL in the path")
    if segments:
        segments[0] = segments[0].lower()
    return Target(tuple(segments), trailing_slash=text.endswith("/") and bool(segments))


def _same_authority(authority: str, host: str, scheme: str) -> bool:
    def norm(value: str) -> str:
        value = value.strip().lower()
        default = _DEFAULT_PORTS.get(scheme)
        if default and value.endswith(":" + default):
            value = value[: -len(default) - 1]
        return value

    return norm(authority) == norm(host)


def parse_destination(value: str, *, host: str, scheme: str = "https") -> Target:
    """Parse a COPY/MOVE ``Destination`` header (RFC 4918 §10.3) into a :class:`Target`.

    ``value`` is the WSGI header string (its bytes as Latin-1, PEP 3333); ``host``
    the request's Host header, ``scheme`` its own scheme. An absolute URI must
    name this server (same scheme, same host and port) or the answer is 403
    (RFC 4918 §9.8.5). Raises :class:`BadTarget` (reason ``bad_destination``).
    """
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    # Only the optional white space of RFC 9110 §5.6.3 (space, tab) surrounds a field value:
    # str.strip() would also take 0x85 and 0xA0, bytes of a raw UTF-8 name ("à" ends in 0xA0).
    raw = raw.strip(b" \t")
    if not raw:
        raise BadTarget("bad_destination", "an empty Destination")
    if b"#" in raw:
        raise BadTarget("bad_destination", "a fragment in the Destination")
    if b"?" in raw:
        raise BadTarget("bad_destination", "a query in the Destination")
    dest_scheme, authority, path = _split_absolute(raw, "bad_destination")
    if dest_scheme and (dest_scheme != scheme.lower() or not _same_authority(authority, host, scheme.lower())):
        raise BadTarget("bad_destination", "the Destination names another server", status=403)
    return _parse_path(path, "bad_destination")
