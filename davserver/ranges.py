"""The one reading of a ``Range`` header, for both GET paths (fastpath.py and WsgiDAV's).

WsgiDAV (util.py:1494 ``obtain_content_ranges``, request_server.py:1618-1662) honours
Range on HEAD (206), finds ``bytes=`` ranges with ``re.search`` inside any unit
(``npt=0.000-`` became 206), reads ``bytes=5-2`` as the suffix ``-2`` (206 with the
last two bytes), answers ``bytes=-0`` with a 206 of no bytes and a Content-Range
ending before it starts, and sends only the first of several ranges. Here the header
is read once, strictly to RFC 9110 §14.1-§14.2, and what WsgiDAV then sees is either
no Range at all or one canonical ``bytes=FIRST-LAST`` it handles correctly:

* **HEAD**: Range is ignored (§14.2: only GET has range handling); 200 as GET would.
* **A unit other than ``bytes``** (compared without case, §14.1): ignored (§14.2 MUST).
* **An invalid ranges-specifier** (not the §14.1.1 grammar, or ``last-pos < first-pos``):
  ignored, 200 with the whole file. §14.2 allows ignoring or 416; ignoring is what
  Apache and nginx do, and a client that sent nonsense still gets correct bytes.
* **Unsatisfiable** (every int-range starts at or past the end; every suffix-range
  has length 0): 416 with ``Content-Range: bytes */LENGTH`` (§15.5.17).
* **An empty file**: Range ignored, 200 with no body (nothing can be satisfied, and
  ignoring is allowed; WsgiDAV did the same).
* **Satisfiable**: last-pos is clamped to the end, a suffix longer than the file is the
  whole file (§14.1.2); 206 with ``Content-Range: bytes FIRST-LAST/LENGTH``.
* **Several ranges**: the satisfiable ones are sorted and coalesced where they overlap
  or touch (§14.2 allows coalescing). If one range results, it is sent as a 206;
  otherwise the Range is ignored and the whole file sent with 200 — multipart/byteranges
  is not implemented, and §14.2 allows ignoring Range; a single-part 206 with only one
  of the requested ranges would leave the client without bytes it asked for.
* **If-Range** (§13.1.5) is evaluated after this, on the canonical range, by the path
  that answers: a request with If-Range always goes to WsgiDAV (strong ETag or exact
  Last-Modified date, request_server.py:1624-1640).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "Unsatisfiable", "normalise_range", "resolve_range"]

_SPEC = re.compile(r"(?:([0-9]+)-([0-9]*)|-([0-9]+))")
_OWS = " \t"


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``first``..``last`` (inclusive, 0-based) of a representation of ``length`` bytes."""

    first: int
    last: int
    length: int

    @property
    def size(self) -> int:
        """How many bytes the range holds."""
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value of a 206 (RFC 9110 §14.4)."""
        return f"bytes {self.first}-{self.last}/{self.length}"


@dataclass(frozen=True)
class Unsatisfiable:
    """No requested range overlaps a representation of ``length`` bytes: 416 (RFC 9110 §15.5.17)."""

    length: int

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value of the 416."""
        return f"bytes */{self.length}"


def _parse(header: str) -> list[tuple[int | None, int | None]] | None:
    """The range-specs of a ``bytes`` ranges-specifier as (first, last) pairs — (None, n) for
    a suffix of n bytes, (first, None) for ``first-`` — or None when the unit is not
    ``bytes`` or the specifier is invalid (RFC 9110 §14.1.1: ``1#range-spec``, OWS around
    commas, empty list elements allowed, digits only, last-pos not before first-pos)."""
    unit, sep, rest = header.strip(_OWS).partition("=")
    if not sep or unit.lower() != "bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for element in rest.split(","):
        element = element.strip(_OWS)
        if not element:
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        m = _SPEC.fullmatch(element)
        if m is None:
            return None
        if m.group(3) is not None:
            specs.append((None, int(m.group(3))))
            continue
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else None
        if last is not None and last < first:
            return None  # §14.1.1: invalid
        specs.append((first, last))
    return specs or None


def resolve_range(header: str, length: int) -> ByteRange | Unsatisfiable | None:
    """What a GET with ``Range: header`` of a ``length``-byte file gets (see the module
    docstring): a ByteRange for a 206, Unsatisfiable for a 416, or None for 200 with the
    whole file (Range ignored). Pure; never raises."""
    specs = _parse(header)
    if specs is None or length <= 0:
        return None
    spans: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:
            assert last is not None
            if last > 0:
                spans.append((max(0, length - last), length - 1))
        elif first < length:
            spans.append((first, length - 1 if last is None else min(last, length - 1)))
    if not spans:
        return Unsatisfiable(length)
    spans.sort()
    start, end = spans[0]
    for first, last in spans[1:]:
        if first > end + 1:
            return None  # disjoint ranges: multipart/byteranges is not offered
        end = max(end, last)
    return ByteRange(start, end, length)


def normalise_range(environ: dict[str, object], length: int | None) -> None:
    """Rewrite a GET/HEAD's ``HTTP_RANGE`` so that whichever path answers does what
    :func:`resolve_range` says, for a file of ``length`` bytes (None when the target is
    not a regular file: only HEAD and syntax are then decided).

    Drops ``HTTP_RANGE`` (and ``HTTP_IF_RANGE``, which RFC 9110 §13.1.5 says to ignore
    without a Range) where Range is to be ignored; otherwise leaves one canonical
    ``bytes=FIRST-LAST``, or ``bytes=LENGTH-`` for an unsatisfiable set (WsgiDAV answers
    that 416 with ``bytes */LENGTH``, util.py:1515-1521).
    """
    header = environ.get("HTTP_RANGE")
    if header is None:
        return
    decided: ByteRange | Unsatisfiable | None = None
    if environ.get("REQUEST_METHOD") == "GET" and isinstance(header, str):
        if length is None:
            if _parse(header) is not None:
                return  # not a file: the path that answers refuses it before looking at Range
        else:
            decided = resolve_range(header, length)
    if decided is None:
        environ.pop("HTTP_RANGE", None)
        environ.pop("HTTP_IF_RANGE", None)
    elif isinstance(decided, Unsatisfiable):
        environ["HTTP_RANGE"] = f"bytes={decided.length}-"
    else:
        environ["HTTP_RANGE"] = f"bytes={decided.first}-{decided.last}"
