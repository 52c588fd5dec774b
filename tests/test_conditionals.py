"""Validators and preconditions (RFC 9110 §13, RFC 4918 §10.4 and §15.6), on the short
GET/PROPFIND paths and on WsgiDAV's alike, for existing names and names that do not
exist yet (conditions.py)."""

from __future__ import annotations

import calendar
import email.utils
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from defusedxml import ElementTree
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgidav import util

from davserver import conditions
from davserver.conditions import Validators, evaluate, if_header_holds, parse_entity_tags, parse_http_date
from davserver.server import DavServer

from .conftest import Instance, session_for, wsgidav_only

OLD = "Mon, 01 Jan 2001 00:00:00 GMT"
LOCKINFO = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            b"<D:locktype><D:write/></D:locktype></D:lockinfo>")




@contextmanager
def no_switch() -> Iterator[None]:
    yield


def both_paths(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    return [("short", no_switch), ("wsgidav", lambda: wsgidav_only(monkeypatch))]


# --- case 10: revalidating a cached file ---------------------------------------------


@pytest.mark.parametrize("path", ["short", "wsgidav"])
def test_case_10_a_304_carries_the_validators_and_if_modified_since_equal_is_not_modified(
        inst: Instance, server: DavServer, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    (inst.home.root / "data/files/Report.docx").write_bytes(b"PK\x03\x04 v1")
    s = session_for(inst)
    f = server.url + "files/Report.docx"
    with wsgidav_only(monkeypatch) if path == "wsgidav" else no_switch():
        first = s.get(f, headers={"User-Agent": "Microsoft Office Word 2014"})
        etag, lm = first.headers["ETag"], first.headers["Last-Modified"]
        for method in ("GET", "HEAD"):
            r = s.request(method, f, headers={"If-None-Match": etag})
            assert (r.status_code, r.content) == (304, b"")
            assert r.headers.get("ETag") == etag and r.headers.get("Last-Modified") == lm
            # RFC 9110 §8.6: no Content-Length, or the 200's (never 0 for a 9-byte file)
            assert r.headers.get("Content-Length") in (None, first.headers["Content-Length"])
        assert s.get(f, headers={"If-None-Match": '"other", ' + etag}).status_code == 304
        assert s.get(f, headers={"If-None-Match": "*"}).status_code == 304
        r = s.get(f, headers={"If-Modified-Since": lm})
        assert r.status_code == 304 and r.headers.get("ETag") == etag
        assert s.head(f, headers={"If-Modified-Since": lm}).status_code == 304
        # the twins: an earlier date, a non-matching If-None-Match (which wins over the date)
        assert s.get(f, headers={"If-Modified-Since": OLD}).content == b"PK\x03\x04 v1"
        r = s.get(f, headers={"If-None-Match": '"other"', "If-Modified-Since": lm})
        assert r.status_code == 200 and r.content == b"PK\x03\x04 v1"
        assert s.put(f, data=b"PK\x03\x04 v2 (someone else saved)").status_code == 204
        r = s.get(f, headers={"If-None-Match": etag})
        assert r.status_code == 200 and r.content.endswith(b"saved)")
        assert s.get(f).status_code == 200  # the connection stayed usable after the 304s


# --- case 11: preconditions on names that do not exist yet ---------------------------


def test_case_11_if_match_star_or_an_unknown_token_on_a_missing_name_creates_nothing(
        inst: Instance, server: DavServer) -> None:
    disk = inst.home.root / "data/files"
    s = session_for(inst)
    u = server.url + "files/"
    r = s.put(u + "missing.md", data=b"x", headers={"If-Match": "*"})
    assert r.status_code == 412 and not (disk / "missing.md").exists()
    r = s.put(u + "missing2.md", data=b"x", headers={"If": "(<opaquelocktoken:00000000-0000-0000-0000-000000000000>)"})
    assert r.status_code == 412 and not (disk / "missing2.md").exists()
    r = s.request("MKCOL", u + "newdir", headers={"If-Match": "*"})
    assert r.status_code == 412 and not (disk / "newdir").exists()
    r = s.request("MKCOL", u + "newdir2", headers={"If": "(<opaquelocktoken:00000000-0000-0000-0000-000000000000>)"})
    assert r.status_code == 412 and not (disk / "newdir2").exists()
    lock = s.request("LOCK", u + "new-lock.md", data=LOCKINFO, headers={"If-Match": "*"})
    assert lock.status_code == 412 and not (disk / "new-lock.md").exists()
    # the twins: the same requests without a failing precondition create the name
    assert s.put(u + "missing.md", data=b"x", headers={"If-None-Match": "*"}).status_code == 201
    assert (disk / "missing.md").read_bytes() == b"x"
    assert s.put(u + "missing.md", data=b"y", headers={"If-Match": "*"}).status_code == 204
    assert s.request("MKCOL", u + "newdir", headers={"If-None-Match": "*"}).status_code == 201
    assert (disk / "newdir").is_dir()
    assert s.request("MKCOL", u + "newdir", headers={"If-Match": "*"}).status_code == 405  # exists: 405 first


def test_case_11_a_token_of_a_lock_on_the_folder_lets_a_new_name_be_created(inst: Instance, server: DavServer) -> None:
    """RFC 4918 §10.4: the token of a Depth-infinity lock on the parent holds for a new name in it."""
    disk = inst.home.root / "data/files/locked"
    disk.mkdir()
    s = session_for(inst)
    u = server.url + "files/locked/"
    lock = s.request("LOCK", u, data=LOCKINFO, headers={"Depth": "infinity", "Timeout": "Second-600"})
    assert lock.status_code == 200
    token = lock.headers["Lock-Token"].strip("<>")
    bad = "opaquelocktoken:00000000-0000-0000-0000-000000000000"
    assert s.put(u + "a.txt", data=b"x", headers={"If": f"(<{bad}>)"}).status_code == 412
    assert not (disk / "a.txt").exists()
    assert s.put(u + "a.txt", data=b"x", headers={"If": f"(<{token}>)"}).status_code == 201
    assert s.request("MKCOL", u + "d", headers={"If": f"(<{bad}>)"}).status_code == 412
    assert s.request("MKCOL", u + "d", headers={"If": f"(<{token}>)"}).status_code == 201
    assert s.request("UNLOCK", u, headers={"Lock-Token": f"<{token}>"}).status_code == 204


def test_case_11_conditional_puts_on_an_existing_file(inst: Instance, server: DavServer) -> None:
    disk = inst.home.root / "data/files/notes.md"
    s = session_for(inst)
    f = server.url + "files/notes.md"
    assert s.put(f, data=b"v1", headers={"If-None-Match": "*"}).status_code == 201
    assert s.put(f, data=b"CLOBBER", headers={"If-None-Match": "*"}).status_code == 412
    assert disk.read_bytes() == b"v1"
    etag = s.head(f).headers["ETag"]
    assert s.put(f, data=b"v2", headers={"If-Match": etag}).status_code == 204
    assert s.put(f, data=b"STALE", headers={"If-Match": etag}).status_code == 412 and disk.read_bytes() == b"v2"
    lm = s.head(f).headers["Last-Modified"]
    assert s.put(f, data=b"v3", headers={"If-Unmodified-Since": lm}).status_code == 204 and disk.read_bytes() == b"v3"
    assert s.put(f, data=b"OLD", headers={"If-Unmodified-Since": OLD}).status_code == 412
    assert disk.read_bytes() == b"v3"
    weak = "W/" + s.head(f).headers["ETag"]
    assert s.put(f, data=b"weak", headers={"If-Match": weak}).status_code == 412  # strong comparison
    assert s.put(f, data=b"weak", headers={"If-None-Match": weak}).status_code == 412  # weak comparison


# --- case 12: getetag is the ETag header ----------------------------------------------

NAMED = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>'
NAMED_UNKNOWN = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><X:x xmlns:X="urn:x"/>'
                 b"</D:prop></D:propfind>")
ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


def getetags(xml: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for response in ElementTree.fromstring(xml).iter("{DAV:}response"):
        out[response.findtext("{DAV:}href") or ""] = response.findtext(".//{DAV:}getetag")
    return out


def test_case_12_getetag_equals_the_etag_header_on_both_paths(inst: Instance, server: DavServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = inst.home.root / "data/files/sync"
    folder.mkdir()
    for i in range(5):
        (folder / f"doc{i}.txt").write_bytes(b"hello" * i)
    s = session_for(inst)
    u = server.url + "files/sync/"
    put = s.put(u + "doc.txt", data=b"hello")
    header = s.head(u + "doc.txt").headers["ETag"]
    assert header.startswith('"') and header.endswith('"') and put.headers["ETag"] == header
    checked = 0
    for label, switch in both_paths(monkeypatch):
        for body in (NAMED, NAMED_UNKNOWN, ALLPROP, None):
            for url, depth in ((u + "doc.txt", "0"), (u, "1"), (u, "0")):
                with switch():  # type: ignore[operator]
                    r = s.request("PROPFIND", url, headers={"Depth": depth}, data=body)
                assert r.status_code == 207, (label, url, depth)
                for href, tag in getetags(r.text).items():
                    if href.endswith("/"):
                        assert not tag  # folders have no entity-tag (404 in their propstat)
                        continue
                    want = s.head(server.url.rstrip("/") + href).headers["ETag"]
                    assert tag == want, (label, body, url, depth, href)
                    checked += 1
    assert checked == 2 * 4 * (1 + 6)
    listed = getetags(s.request("PROPFIND", u + "doc.txt", headers={"Depth": "0"}, data=NAMED).text)
    r = s.put(u + "doc.txt", data=b"hello 2", headers={"If-Match": listed["/files/sync/doc.txt"] or ""})
    assert r.status_code == 204
    # an unquoted tag a client kept from before still matches (and a stale one does not)
    bare = s.head(u + "doc.txt").headers["ETag"].strip('"')
    assert s.put(u + "doc.txt", data=b"hello 3", headers={"If-Match": bare}).status_code == 204
    assert s.put(u + "doc.txt", data=b"hello 4", headers={"If-Match": bare}).status_code == 412


# --- the kind: every precondition header x existing/missing x method, on both paths ----


def _expected(header: str, variant: str, method: str, exists: bool) -> int:
    """What RFC 9110 §13.2 says, written out per case (independently of conditions.py)."""
    ok = {"GET": 200, "HEAD": 200, "PUT": 204 if exists else 201, "MKCOL": 201, "PROPFIND": 207}[method]
    if not exists:
        if method in ("GET", "HEAD", "PROPFIND"):
            return 404  # §13.2.1: preconditions are ignored when the answer would not be 2xx
        return 412 if header == "If-Match" else ok
    safe = method in ("GET", "HEAD")
    if header == "If-Match":
        return ok if variant in ("current", "*") else 412
    if header == "If-None-Match":
        if variant in ("current", "*", "weak"):
            return 304 if safe else 412
        return ok
    if header == "If-Modified-Since":
        return 304 if safe and variant in ("equal", "later") else ok
    if header == "If-Unmodified-Since":
        return 412 if variant == "earlier" else ok
    raise AssertionError(header)


VARIANTS = {
    "If-Match": ("current", "stale", "*", "weak"),
    "If-None-Match": ("current", "stale", "*", "weak"),
    "If-Modified-Since": ("equal", "earlier", "later", "invalid"),
    "If-Unmodified-Since": ("equal", "earlier", "later", "invalid"),
}


def _value(variant: str, etag: str, lm: str) -> str:
    secs = calendar.timegm(email.utils.parsedate_tz(lm)[:9])  # type: ignore[index]
    return {"current": etag, "stale": '"0-0-0"', "*": "*", "weak": "W/" + etag, "equal": lm,
            "earlier": util.get_rfc1123_time(secs - 1), "later": util.get_rfc1123_time(secs + 1),
            "invalid": "yesterday"}[variant]


def test_every_precondition_header_on_existing_and_missing_names(inst: Instance, server: DavServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    disk = inst.home.root / "data/files/kind"
    disk.mkdir()
    (disk / "f.txt").write_bytes(b"content")
    os.utime(disk / "f.txt", (time.time() - 100, time.time() - 100))
    s = session_for(inst)
    u = server.url + "files/kind/"
    failures = []
    count = 0
    for label, switch in both_paths(monkeypatch):
        for header, variants in VARIANTS.items():
            for variant in variants:
                for method in ("GET", "HEAD", "PUT", "PROPFIND"):
                    with switch():  # type: ignore[operator]
                        first = s.head(u + "f.txt")
                        value = _value(variant, first.headers["ETag"], first.headers["Last-Modified"])
                        before = (disk / "f.txt").read_bytes()
                        data = before if method == "PUT" else None
                        r = s.request(method, u + "f.txt", headers={header: value, "Depth": "0"}, data=data)
                    want = _expected(header, variant, method, True)
                    count += 1
                    if r.status_code != want:
                        failures.append((label, header, variant, method, "existing", r.status_code, want))
                    if r.status_code == 304:
                        assert r.headers.get("ETag") == first.headers["ETag"]
                        assert r.headers.get("Last-Modified") == first.headers["Last-Modified"]
                    os.utime(disk / "f.txt", (time.time() - 100, time.time() - 100))
                for method in ("GET", "HEAD", "PUT", "MKCOL", "PROPFIND"):
                    name = f"new-{header}-{variant}-{method}-{label}"
                    value = _value(variant, '"0-0-0"', OLD)
                    with switch():  # type: ignore[operator]
                        r = s.request(method, u + name, headers={header: value, "Depth": "0"},
                                      data=b"x" if method == "PUT" else None)
                    want = _expected(header, variant, method, False)
                    count += 1
                    if r.status_code != want:
                        failures.append((label, header, variant, method, "missing", r.status_code, want))
                    assert (disk / name).exists() == (want in (201, 204)), (label, header, variant, method)
    assert failures == []
    assert count == 2 * 4 * 4 * (4 + 5)


def test_head_answers_as_get_does(inst: Instance, server: DavServer, monkeypatch: pytest.MonkeyPatch) -> None:
    (inst.home.root / "data/files/h.txt").write_bytes(b"head")
    s = session_for(inst)
    f = server.url + "files/h.txt"
    for _label, switch in both_paths(monkeypatch):
        with switch():  # type: ignore[operator]
            g = s.get(f)
            for headers in ({"If-None-Match": g.headers["ETag"]}, {"If-Match": '"x"'},
                            {"If-Modified-Since": g.headers["Last-Modified"]}, {"If-None-Match": '"x"'}):
                get, head = s.get(f, headers=headers), s.head(f, headers=headers)
                assert get.status_code == head.status_code and head.content == b""
                assert get.headers.get("ETag") == head.headers.get("ETag")


def test_if_modified_since_is_only_for_get_and_head(inst: Instance, server: DavServer) -> None:
    """RFC 9110 §13.1.3: a PROPFIND with If-Modified-Since is answered, not 304 (WsgiDAV said 304)."""
    (inst.home.root / "data/files/p.txt").write_bytes(b"p")
    s = session_for(inst)
    lm = s.head(server.url + "files/p.txt").headers["Last-Modified"]
    r = s.request("PROPFIND", server.url + "files/p.txt", headers={"Depth": "0", "If-Modified-Since": lm})
    assert r.status_code == 207
    assert s.get(server.url + "files/p.txt", headers={"If-Modified-Since": lm}).status_code == 304


# --- conditions.py on its own -----------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**33))
def test_every_http_date_form_reads_back(secs: int) -> None:
    imf = email.utils.formatdate(secs, usegmt=True)
    assert parse_http_date(imf) == secs
    t = time.gmtime(secs)
    asctime = time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)
    assert parse_http_date(asctime) == secs
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", t)
    assert parse_http_date(rfc850, now_year=t.tm_year) == secs


@pytest.mark.parametrize("value", ["yesterday", "", "Mon, 32 Jan 2001 00:00:00 GMT", "Mon, 01 Jan 2001 00:00:00 CET",
                                   "Mon, 01 Jan 2001 25:00:00 GMT", "1700000000"])
def test_an_invalid_date_is_not_a_date(value: str) -> None:
    assert parse_http_date(value) is None


_TAG = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='"'), max_size=12)


@given(st.lists(st.tuples(st.booleans(), _TAG), min_size=1, max_size=5))
def test_entity_tag_lists_read_back(tags: list[tuple[bool, str]]) -> None:
    value = ", ".join(("W/" if weak else "") + f'"{tag}"' for weak, tag in tags)
    assert parse_entity_tags(value) == tags


@given(etag=_TAG, other=_TAG, weak=st.booleans(), method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "MKCOL"]),
       exists=st.booleans())
def test_if_match_is_strong_and_if_none_match_weak(etag: str, other: str, weak: bool, method: str,
                                                    exists: bool) -> None:
    current = Validators(etag, 1_000_000) if exists else None
    sent = ("W/" if weak else "") + f'"{other}"'
    match = exists and other == etag
    assert evaluate(method, {"HTTP_IF_MATCH": sent}, current) == (None if match and not weak else 412)
    not_modified = 304 if method in ("GET", "HEAD") else 412
    assert evaluate(method, {"HTTP_IF_NONE_MATCH": sent}, current) == (not_modified if match else None)
    assert evaluate(method, {"HTTP_IF_MATCH": "*"}, current) == (None if exists else 412)
    assert evaluate(method, {"HTTP_IF_NONE_MATCH": "*"}, current) == (not_modified if exists else None)


@given(modified=st.integers(min_value=0, max_value=2**32), date=st.integers(min_value=0, max_value=2**32),
       method=st.sampled_from(["GET", "HEAD", "PUT", "PROPFIND"]), with_if_match=st.booleans())
def test_dates_compare_as_rfc_9110_says(modified: int, date: int, method: str, with_if_match: bool) -> None:
    current = Validators("t", modified)
    sent = util.get_rfc1123_time(date)
    ims = evaluate(method, {"HTTP_IF_MODIFIED_SINCE": sent}, current)
    assert ims == (304 if method in ("GET", "HEAD") and modified <= date else None)
    headers = {"HTTP_IF_UNMODIFIED_SINCE": sent}
    if with_if_match:
        headers["HTTP_IF_MATCH"] = '"t"'  # §13.1.4: If-Unmodified-Since is ignored then
    ius = evaluate(method, headers, current)
    assert ius == (412 if modified > date and not with_if_match else None)


_TOKENS = st.sampled_from(["opaquelocktoken:a", "opaquelocktoken:b", "DAV:no-lock"])
_CONDITION = st.tuples(st.booleans(), st.one_of(_TOKENS.map(lambda t: f"<{t}>"), st.sampled_from(['["e1"]', '["e2"]'])))


@settings(max_examples=300)
@given(lists=st.lists(st.lists(_CONDITION, min_size=1, max_size=3), min_size=1, max_size=3),
       held=st.sets(_TOKENS), tagged=st.booleans())
def test_the_if_header_holds_as_wsgidav_decides_for_a_file(lists: list[list[tuple[bool, str]]], held: set[str],
                                                            tagged: bool) -> None:
    """For an existing file the If header means what it meant on WsgiDAV's path."""
    text = ("</files/a.txt> " if tagged else "") + " ".join(
        "(" + " ".join(("" if positive else "Not ") + c for positive, c in conds) + ")" for conds in lists)
    environ: dict[str, object] = {"HTTP_IF": text}
    util.parse_if_header_dict(environ)
    parsed = environ["wsgidav.conditions.if"]

    class _File:
        def support_etag(self) -> bool:
            return True

    want = util.test_if_header_dict(_File(), parsed, "/files/a.txt", list(held), "e1")
    assert if_header_holds(parsed, "/files/a.txt", "e1", held) == want  # type: ignore[arg-type]


def test_a_missing_name_has_no_entity_tag_to_match() -> None:
    environ: dict[str, object] = {"HTTP_IF": '(["e1"]) (Not ["e1"])'}
    util.parse_if_header_dict(environ)
    parsed = environ["wsgidav.conditions.if"]
    assert if_header_holds(parsed, "/files/new", None, []) is True  # type: ignore[arg-type]
    environ = {"HTTP_IF": '(["e1"])'}
    util.parse_if_header_dict(environ)
    assert if_header_holds(environ["wsgidav.conditions.if"], "/files/new", None, []) is False  # type: ignore[arg-type]
    assert conditions.entity_tag("a-b") == '"a-b"'


def test_a_304_keeps_the_connection_usable(inst: Instance, server: DavServer) -> None:
    (inst.home.root / "data/files/k.txt").write_bytes(b"keep")
    s = session_for(inst)
    etag = s.get(server.url + "files/k.txt").headers["ETag"]
    adapter = s.get_adapter(server.url)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    for _ in range(3):
        assert s.get(server.url + "files/k.txt", headers={"If-None-Match": etag}).status_code == 304
    assert s.get(server.url + "files/k.txt").content == b"keep"


def test_short_and_full_paths_send_the_same_headers(inst: Instance, server: DavServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The equivalence of fastpath.fast_get and WsgiDAV's GET/HEAD, extended to headers and
    to the conditional answers (200, 304 either way, 412), for an inline and a download type."""
    for name in ("notes.txt", "Report.docx"):
        (inst.home.root / "data/files" / name).write_bytes(b"same bytes")
        s = session_for(inst)
        f = server.url + "files/" + name
        first = s.get(f)
        for headers in ({}, {"If-None-Match": first.headers["ETag"]},
                        {"If-Modified-Since": first.headers["Last-Modified"]}, {"If-Match": '"stale"'},
                        {"If-Unmodified-Since": OLD}, {"If-None-Match": '"other"'}):
            for method in ("GET", "HEAD"):
                fast = s.request(method, f, headers=headers)
                with wsgidav_only(monkeypatch):
                    full = s.request(method, f, headers=headers)
                assert fast.status_code == full.status_code, (name, method, headers)
                got = {k: v for k, v in fast.headers.items() if k != "Date"}
                want = {k: v for k, v in full.headers.items() if k != "Date"}
                assert got == want, (name, method, headers)
                assert fast.content == full.content
