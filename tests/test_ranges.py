"""Range on GET and HEAD (RFC 9110 §14): both GET paths answer what a reference reading
of the RFC, written here independently of davserver/ranges.py, says they must."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver.ranges import ByteRange, Unsatisfiable, resolve_range
from davserver.server import DavServer

from .conftest import Instance, session_for, wsgidav_only

SIZES = (0, 1, 2, 10, 37, 1024)
DATA = bytes(range(256)) * 4  # 1024 bytes; file "rN.bin" holds DATA[:N]




# --- the reference: RFC 9110 §14.1.1-§14.2 read directly ---------------------------

_RANGE_SET = re.compile(r"(?i:bytes)=(?P<set>.*)", re.S)
_SPEC = re.compile(r"(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+)")


def reference(header: str, size: int) -> tuple[int, bytes | None]:
    """(status, body) a GET of DATA[:size] with ``Range: header`` must give; body None for 416."""
    status, span = reference_span(header, size)
    if status == 416:
        return 416, None
    return status, DATA[span[0]:span[1] + 1] if span else DATA[:size]


def reference_span(header: str, size: int) -> tuple[int, tuple[int, int] | None]:
    """(status, (first, last) of a 206) for a GET of DATA[:size] with ``Range: header``.

    Unknown unit, invalid set, empty file, or satisfiable ranges that are not one
    contiguous run of bytes: 200 with everything (ignoring is what §14.2 allows and what
    the server documents). No satisfiable range: 416. Otherwise 206 with exactly the
    requested bytes.
    """
    m = _RANGE_SET.fullmatch(header.strip(" \t"))
    if m is None:
        return 200, None
    wanted: set[int] = set()
    elements = [e.strip(" \t") for e in m.group("set").split(",")]
    if not any(elements):
        return 200, None
    for element in elements:
        if not element:
            continue
        spec = _SPEC.fullmatch(element)
        if spec is None:
            return 200, None
        if spec.group("suffix") is not None:
            n = int(spec.group("suffix"))
            wanted.update(range(max(0, size - n), size) if n else ())
        else:
            first = int(spec.group("first"))
            last = int(spec.group("last")) if spec.group("last") else None
            if last is not None and last < first:
                return 200, None
            end = size - 1 if last is None else min(last, size - 1)
            wanted.update(range(first, end + 1))
    if size == 0:
        return 200, None
    if not wanted:
        return 416, None
    lo, hi = min(wanted), max(wanted)
    if len(wanted) != hi - lo + 1:
        return 200, None
    return 206, (lo, hi)


# --- Range header strings: well-formed, nearly well-formed and junk ----------------

_num = st.one_of(st.integers(0, 40), st.integers(1000, 1100), st.just(99999999999999999999))
_spec = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", _num, _num),
    st.builds(lambda a: f"{a}-", _num),
    st.builds(lambda n: f"-{n}", _num),
    st.sampled_from(["-", "", "abc-def", "5", "1-2-3", " 3-4 ", "\t-7", "+1-2", "0x1-2", "1 - 2"]),
)
_unit = st.sampled_from(["bytes", "BYTES", "Bytes", "npt", "items", "", "byte", "bytes "])
range_headers = st.one_of(
    st.builds(lambda u, specs, sep: u + "=" + sep.join(specs), _unit, st.lists(_spec, min_size=1, max_size=4),
              st.sampled_from([",", ", ", " ,", ",,"])),
    st.text(alphabet="bytes=0123456789-, \t;npt.", max_size=20),
).map(lambda h: h.strip(" \t")).filter(bool)  # a client sends no empty header, and trims it


class TestReference:
    """resolve_range (the server's reading) agrees with the reference, for every header."""

    @settings(max_examples=2000, deadline=None)
    @given(range_headers, st.sampled_from(SIZES))
    @example("bytes=5-2", 1024)
    @example("npt=0.000-", 1024)
    @example("bytes=-0", 1024)
    @example("bytes=0-1,5-6", 1024)
    @example("bytes=0-1,2-3", 1024)
    @example("bytes=99999999999999999999-", 1024)
    def test_resolve_range_matches_the_reference(self, header: str, size: int) -> None:
        status, body = reference(header, size)
        got = resolve_range(header, size)
        if status == 200:
            assert got is None
        elif status == 416:
            assert got == Unsatisfiable(size) and got.content_range == f"bytes */{size}"
        else:
            assert isinstance(got, ByteRange) and body is not None
            assert DATA[got.first:got.last + 1] == body and got.size == len(body) and got.length == size


# --- the live server, both paths ---------------------------------------------------


@pytest.fixture
def files(inst: Instance) -> dict[int, str]:
    for n in SIZES:
        (inst.home.root / f"data/files/r{n}.bin").write_bytes(DATA[:n])
    return {n: f"files/r{n}.bin" for n in SIZES}


def _check_get(s: requests.Session, url: str, header: str, size: int, extra: dict[str, str] | None = None) -> None:
    status, body = reference(header, size)
    r = s.get(url, headers={"Range": header, **(extra or {})})
    assert r.status_code == status, (header, size, r.status_code, r.headers.get("Content-Range"))
    if status == 416:
        assert r.headers["Content-Range"] == f"bytes */{size}"
        return
    assert body is not None
    assert r.content == body and r.headers["Content-Length"] == str(len(body))
    if status == 206:
        span = reference_span(header, size)[1]
        assert span is not None and r.headers["Content-Range"] == f"bytes {span[0]}-{span[1]}/{size}"
    else:
        assert "Content-Range" not in r.headers


def _check_head(s: requests.Session, url: str, header: str, size: int) -> None:
    r = s.head(url, headers={"Range": header})
    assert r.status_code == 200, (header, r.status_code)  # RFC 9110 §14.2: HEAD ignores Range
    assert r.headers["Content-Length"] == str(size) and "Content-Range" not in r.headers


def test_range_headers_on_both_paths_match_the_reference(inst: Instance, server: DavServer, files: dict[int, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = session_for(inst)
    etags = {n: s.head(server.url + path).headers["ETag"] for n, path in files.items()}

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(range_headers, st.sampled_from(SIZES), st.sampled_from(["none", "current", "other"]))
    def check(header: str, size: int, if_range: str) -> None:
        url = server.url + files[size]
        for path in ("short", "wsgidav"):
            with (wsgidav_only(monkeypatch) if path == "wsgidav" else _nothing()):
                if if_range == "none":
                    _check_get(s, url, header, size)
                elif if_range == "current":  # the same as no If-Range (RFC 9110 §13.1.5)
                    _check_get(s, url, header, size, {"If-Range": etags[size]})
                else:  # a changed file: Range ignored, the whole file
                    r = s.get(url, headers={"Range": header, "If-Range": '"changed"'})
                    assert r.status_code == 200 and r.content == DATA[:size], (path, header, r.status_code)
                _check_head(s, url, header, size)

    check()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


CASE_08 = [
    # (Range, status, body slice of the 1024-byte file, Content-Range) from cases/08-range-edges.py
    ("bytes=1000-2000", 206, slice(1000, 1024), "bytes 1000-1023/1024"),
    ("bytes=1024-", 416, None, "bytes */1024"),
    ("bytes=5000-6000", 416, None, "bytes */1024"),
    ("bytes=-100", 206, slice(924, 1024), "bytes 924-1023/1024"),
    ("bytes=-5000", 206, slice(0, 1024), "bytes 0-1023/1024"),
    ("bytes=0-0", 206, slice(0, 1), "bytes 0-0/1024"),
    ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1024"),  # the twin of the refusals below
    ("npt=0.000-", 200, slice(0, 1024), None),  # unknown unit: MUST be ignored (§14.2)
    ("bytes=5-2", 200, slice(0, 1024), None),  # invalid: ignored, not the last two bytes
    ("bytes=abc-def", 200, slice(0, 1024), None),
    ("bytes=-", 200, slice(0, 1024), None),
    ("bytes=99999999999999999999-", 416, None, "bytes */1024"),
    ("bytes=-0", 416, None, "bytes */1024"),  # WsgiDAV sent a 206 of no bytes, "bytes 1024-1023/1024"
    ("bytes=0-1,5-6", 200, slice(0, 1024), None),  # disjoint: no multipart, ignored
    ("bytes=0-1,2-3", 206, slice(0, 4), "bytes 0-3/1024"),  # touching: coalesced
]


@pytest.mark.parametrize("path", ["short", "wsgidav"])
def test_the_case_08_ranges_on_both_paths(inst: Instance, server: DavServer, files: dict[int, str],
                                          monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    s = session_for(inst)
    url = server.url + files[1024]
    with wsgidav_only(monkeypatch) if path == "wsgidav" else _nothing():
        for header, status, part, content_range in CASE_08:
            r = s.get(url, headers={"Range": header})
            assert (r.status_code, r.headers.get("Content-Range")) == (status, content_range), header
            if part is not None:
                assert r.content == DATA[part], header
        head = s.head(url, headers={"Range": "bytes=0-9"})
        assert (head.status_code, head.headers["Content-Length"], head.headers.get("Content-Range")) == (
            200, "1024", None)
        plain = s.head(url)  # the twin: HEAD with Range is the HEAD without it
        assert plain.status_code == 200 and plain.headers["Content-Length"] == "1024"
        r = s.get(server.url + files[0], headers={"Range": "bytes=0-"})
        assert r.status_code == 200 and r.content == b""


def test_ranges_on_one_connection_reassemble_the_file(inst: Instance, server: DavServer,
                                                      files: dict[int, str]) -> None:
    """Finder's parallel chunk reads (GCDWebServer PR#248), on the short path."""
    s = session_for(inst)
    parts = {o: s.get(server.url + files[1024], headers={"Range": f"bytes={o}-{o + 255}"}) for o in (768, 0, 512, 256)}
    assert all(r.status_code == 206 for r in parts.values())
    assert b"".join(parts[o].content for o in sorted(parts)) == DATA


def test_short_and_wsgidav_paths_send_the_same_headers_for_a_range(inst: Instance, server: DavServer,
                                                                   files: dict[int, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = session_for(inst)
    url = server.url + files[1024]
    fast = s.get(url, headers={"Range": "bytes=10-19"})
    with wsgidav_only(monkeypatch):
        full = s.get(url, headers={"Range": "bytes=10-19"})
    assert fast.status_code == full.status_code == 206 and fast.content == full.content == DATA[10:20]
    ignore = {"Date"}
    assert [(k, v) for k, v in fast.headers.items() if k not in ignore] == [
        (k, v) for k, v in full.headers.items() if k not in ignore]
