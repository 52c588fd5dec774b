"""Names: every name the server writes into a PROPFIND answer (both paths) or the
HTML listing is well-formed, whatever is on disk; names with control characters
cannot be created over WebDAV (400, audit reason ``bad_name``); ordinary names
with ``&``, spaces, accents, ``|``, ``;``, ``?`` can."""

from __future__ import annotations

import html.parser
import itertools
import json
import os
import uuid
from urllib.parse import quote, unquote

import pytest
from defusedxml import ElementTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davserver.names import display_name, is_listable, refused_name
from davserver.server import DavServer

from .conftest import Instance, session_for
from .test_fastpath import wsgidav_only
from .test_fs_safety import wait_for

LIVE = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Characters that XML 1.0 cannot carry, or that a name may not be created with.
CONTROLS = [chr(c) for c in (*range(0x01, 0x20), 0x7F, 0x80, 0x85, 0x9F)]
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
NON_XML = ["\ufffe", "\uffff"]
#: Lone surrogates as os.scandir gives names that are not UTF-8 (surrogateescape).
ESCAPED_BYTES = [chr(0xDC80 + b) for b in range(0x80)]
SPECIAL = list("&<>\"'|;?#%[] =:\\*éü日😀\u00a0\u200f\ufffd")

name_chars = st.one_of(st.sampled_from(CONTROLS + BIDI + NON_XML + ESCAPED_BYTES + SPECIAL),
                       st.characters(blacklist_categories=["Cs"]))
disk_names = st.text(name_chars, min_size=1, max_size=12)


def on_disk(name: str) -> bytes | None:
    """The bytes a generated name has on disk, or None when it cannot be a file name."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        return None
    if not raw or b"/" in raw or b"\x00" in raw or raw in (b".", b"..") or len(raw) > 255:
        return None
    if raw.startswith((b".davserver-upload-", b"._")) or raw == b".DS_Store":
        return None
    return raw


# --- the rules, without a server ------------------------------------------------------


def xml_char(c: str) -> bool:
    """XML 1.0 §2.2 Char."""
    o = ord(c)
    return o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or 0x10000 <= o <= 0x10FFFF


@settings(max_examples=500, deadline=None)
@given(name=st.text(st.one_of(st.sampled_from(CONTROLS + BIDI + NON_XML + SPECIAL + ["\ud800", "\udcff"]),
                              st.characters())))
def test_display_name_is_always_xml_and_free_of_controls(name: str) -> None:
    shown = display_name(name)
    assert all(xml_char(c) for c in shown)
    assert not any(c in shown for c in CONTROLS + BIDI + NON_XML + ["\t", "\n", "\r"])
    assert len(shown) == len(name)  # one U+FFFD per refused character: nothing else changes
    assert all(a == b or b == "\ufffd" for a, b in zip(name, shown, strict=True))
    if name.strip():  # a blank name is refused whatever its characters (tested below)
        assert refused_name(shown) is None
        assert (refused_name(name) is None) == (shown == name)


@pytest.mark.parametrize("name", ["", " ", "\r", "\n", "\t", "  \u3000", "\x1c", "\x85", "\u2028"])
def test_a_blank_name_is_refused(name: str) -> None:
    assert refused_name(name) is not None
    assert refused_name(name + "x") is None or not (name + "x").isprintable()


def test_refused_and_hidden_characters() -> None:
    for c in CONTROLS + BIDI + NON_XML + ["\x00", "\ud800", "\udcff"]:
        assert refused_name(f"a{c}b") is not None, repr(c)
        assert display_name(f"a{c}b") == "a\ufffdb"
    for c in SPECIAL:
        assert refused_name(f"a{c}b") is None, repr(c)
        assert display_name(f"a{c}b") == f"a{c}b"
    assert refused_name("a\x01b") == "The name contains the character U+0001, which names may not contain."
    assert not is_listable("bad\udcff") and not is_listable(os.fsdecode(b"caf\xe9"))
    assert is_listable("café") and is_listable("a\x01b") and is_listable("plain")


# --- what the server emits ------------------------------------------------------------


#: Elements that have no end tag (WHATWG HTML §13.1.2 "void elements").
_VOID_ELEMENTS = frozenset(
    ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr")
)


class _Links(html.parser.HTMLParser):
    """Collects (href, text) of the listing's links; any parse problem fails the test."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text = ""
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _VOID_ELEMENTS:
            self.stack.append(tag)
        if tag == "a":
            self._href, self._text = dict(attrs).get("href") or "", ""

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data


def parse_listing(text: str) -> dict[str, str]:
    """href → shown text of every link, from a strictly nested document."""
    parser = _Links()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], parser.stack  # every element closed: the names broke nothing
    assert not any(c in text for c in CONTROLS + NON_XML if c not in "\t\n\r"), "a control character in the HTML"
    return dict(parser.links)


def propfind_names(xml: str) -> dict[str, str]:
    """href → displayname of every response, read by a real XML parser."""
    out = {}
    for response in ElementTree.fromstring(xml).iter("{DAV:}response"):
        href = response.findtext("{DAV:}href") or ""
        out[href] = response.findtext(".//{DAV:}displayname") or ""
    return out


def expected(folder_href: str, raws: set[bytes]) -> dict[str, str]:
    """href → displayname the folder's members must have: names that are not UTF-8 are hidden."""
    out = {}
    for raw in raws:
        name = os.fsdecode(raw)
        if is_listable(name):
            out[folder_href + quote(name, safe="/!*'(),$-_.")] = display_name(name)
    return out


def test_names_on_disk_give_well_formed_answers_on_every_path(inst: Instance, server: DavServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever names another program made: both PROPFIND paths and the listing parse,
    list exactly the UTF-8 names, with the exact name in the href and U+FFFD for controls."""
    s = session_for(inst)
    data = inst.home.root / "data/files"

    @LIVE
    @given(names=st.lists(disk_names, min_size=1, max_size=6), as_folder=st.lists(st.booleans(), max_size=6))
    def check(names: list[str], as_folder: list[bool]) -> None:
        folder = "n" + uuid.uuid4().hex[:8]
        (data / folder).mkdir()
        made: dict[bytes, bool] = {}  # raw name -> is a folder
        for name, is_dir in zip(names, itertools.chain(as_folder, itertools.repeat(False)), strict=False):
            raw = on_disk(name)
            if raw is None or raw in made:
                continue
            made[raw] = is_dir
            path = os.path.join(os.fsencode(data / folder), raw)
            if is_dir:
                os.mkdir(path)
            else:
                with open(path, "wb") as f:
                    f.write(b"x")
        base = f"/files/{folder}/"
        want = expected(base, {r for r, d in made.items() if not d})
        want.update({href + "/": shown for href, shown in expected(base, {r for r, d in made.items() if d}).items()})
        want[base] = folder
        fast = s.request("PROPFIND", server.url + base[1:], headers={"Depth": "1"})
        with wsgidav_only(monkeypatch):
            full = s.request("PROPFIND", server.url + base[1:], headers={"Depth": "1"})
        assert fast.status_code == full.status_code == 207, (fast.text[:300], full.text[:300])
        assert propfind_names(fast.text) == want
        assert propfind_names(full.text) == want
        page = s.get(server.url + base[1:])
        assert page.status_code == 200
        links = parse_listing(page.text)
        links.pop("/files/")
        assert {unquote(h): t for h, t in links.items()} == {
            unquote(h): (t + "/" if h.endswith("/") else t) for h, t in want.items() if h != base}
        for href in want:  # every listed name can be fetched by its href
            if href != base and not href.endswith("/"):
                assert s.get(server.url + href[1:]).content == b"x"

    check()


def test_exact_input_u0001_in_a_folder(inst: Instance, server: DavServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's input: a file named with U+0001 made the Depth 1 answer unparsable."""
    folder = inst.home.root / "data/files/shared"
    folder.mkdir()
    (folder / "a\x01b.txt").write_bytes(b"one")
    (folder / "ok & fine.txt").write_bytes(b"two")
    s = session_for(inst, "bob")  # another account than the one who would have made it
    for fast in (True, False):
        if fast:
            r = s.request("PROPFIND", server.url + "files/shared/", headers={"Depth": "1"})
        else:
            with wsgidav_only(monkeypatch):
                r = s.request("PROPFIND", server.url + "files/shared/", headers={"Depth": "1"})
        assert r.status_code == 207
        assert propfind_names(r.text) == {"/files/shared/": "shared", "/files/shared/a%01b.txt": "a\ufffdb.txt",
                                          "/files/shared/ok%20%26%20fine.txt": "ok & fine.txt"}
    links = parse_listing(s.get(server.url + "files/shared/").text)
    assert links == {"/files/": "../", "/files/shared/a%01b.txt": "a\ufffdb.txt",
                     "/files/shared/ok%20%26%20fine.txt": "ok & fine.txt"}
    # A folder with such a name: its own listing shows the name in its title, replaced too.
    (folder / "sub\x01dir").mkdir()
    page = s.get(server.url + "files/shared/sub%01dir/")
    assert page.status_code == 200 and "\x01" not in page.text
    assert "<title>/files/shared/sub\ufffddir/</title>" in page.text
    assert parse_listing(page.text) == {"/files/shared/": "../"}
    # The odd name can still be read and renamed away.
    assert s.get(server.url + "files/shared/a%01b.txt").content == b"one"
    r = s.request("MOVE", server.url + "files/shared/a%01b.txt", headers={"Destination": "/files/shared/ab.txt"})
    assert r.status_code == 201 and (folder / "ab.txt").read_bytes() == b"one"


def test_names_that_are_not_utf8_are_hidden(inst: Instance, server: DavServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A Latin-1 name on disk (``caf\\xe9``) was a 500 on all three paths; now it is not
    listed, its folder still lists, and it goes with its folder on DELETE."""
    folder = inst.home.root / "data/files/old"
    folder.mkdir()
    (folder / "café.txt").write_bytes(b"utf-8")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1")
    os.mkdir(os.path.join(os.fsencode(folder), b"dir\xff"))
    s = session_for(inst)
    want = {"/files/old/": "old", "/files/old/caf%C3%A9.txt": "café.txt"}
    assert propfind_names(s.request("PROPFIND", server.url + "files/old/", headers={"Depth": "1"}).text) == want
    with wsgidav_only(monkeypatch):
        full = s.request("PROPFIND", server.url + "files/old/", headers={"Depth": "1"})
    assert propfind_names(full.text) == want
    assert parse_listing(s.get(server.url + "files/old/").text) == {"/files/": "../",
                                                                    "/files/old/caf%C3%A9.txt": "café.txt"}
    r = s.request("COPY", server.url + "files/old/", headers={"Destination": "/files/copy/"})
    assert r.status_code == 201 and os.listdir(inst.home.root / "data/files/copy") == ["café.txt"]
    r = s.request("COPY", server.url + "files/old/", headers={"Destination": "/team/copy/"})  # another share
    assert r.status_code == 201 and os.listdir(inst.home.root / "data/team/copy") == ["café.txt"]
    assert s.delete(server.url + "files/old/").status_code == 204 and not folder.exists()


# --- creation ------------------------------------------------------------------------


def audit_records(inst: Instance) -> list[dict]:
    """The audit log's records, split on LF only (a name may hold U+0085 or U+2028, which
    ``str.splitlines`` would also split on)."""
    path = inst.home.state_dir / "audit.log"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _refused(inst: Instance, method: str, path: str) -> None:
    assert wait_for(lambda: any(r["method"] == method and r["path"] == path and r["reason"] == "bad_name"
                                and r["decision"] == "deny" for r in audit_records(inst))), (method, path)


@pytest.mark.parametrize("char", CONTROLS + BIDI + NON_XML)
def test_names_with_controls_cannot_be_created(inst: Instance, server: DavServer, char: str) -> None:
    """PUT, MKCOL, LOCK on an unmapped URL, COPY and MOVE destinations: 400, nothing created."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    (data / "src.txt").write_bytes(b"source")
    (data / "dir").mkdir()
    name = f"bad{char}name"
    url = quote(name)
    before = sorted(os.listdir(data))
    r = s.put(server.url + "files/" + url, data=b"x")
    assert r.status_code == 400, r.text
    _refused(inst, "PUT", "/files/" + name)
    assert s.request("MKCOL", server.url + "files/dir/" + url).status_code == 400
    _refused(inst, "MKCOL", "/files/dir/" + name)
    lock = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype></D:lockinfo>")
    assert s.request("LOCK", server.url + "files/" + url, data=lock).status_code == 400
    for method in ("COPY", "MOVE"):
        r = s.request(method, server.url + "files/src.txt", headers={"Destination": "/files/dir/" + url})
        assert r.status_code == 400, (method, r.status_code)
        r = s.request(method, server.url + "files/dir/", headers={"Destination": "/files/" + url + "/"})
        assert r.status_code == 400, (method, r.status_code)
    team = inst.home.root / "data/team"
    (team / "t.txt").write_bytes(b"team")
    for method in ("COPY", "MOVE"):  # from another share (copymove._across_shares)
        r = s.request(method, server.url + "team/t.txt", headers={"Destination": "/files/dir/" + url})
        assert r.status_code == 400, (method, r.status_code)
        _refused(inst, method, "/team/t.txt")
    assert sorted(os.listdir(data)) == before and os.listdir(data / "dir") == []
    assert (data / "src.txt").read_bytes() == b"source" and (team / "t.txt").read_bytes() == b"team"


@pytest.mark.parametrize("name", ["a & b.txt", "Été déjà.txt", "x|y.txt", "minutes;draft.txt", "report?v2.txt",
                                  "hash#1.txt", "100% sure.txt", "<tag> 'q' \"d\".txt", "]]>.txt", "日本語.txt",
                                  "\u200fhebrew\u05d0.txt"])
def test_ordinary_names_are_created_and_listed_exactly(inst: Instance, server: DavServer, name: str) -> None:
    """The twin: names with XML/URL specials work on every creating method and are listed as they are."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    url = quote(name)
    assert s.put(server.url + "files/" + url, data=b"body").status_code == 201
    assert (data / name).read_bytes() == b"body"
    assert s.request("MKCOL", server.url + "files/" + quote("dir " + name)).status_code == 201
    assert (data / ("dir " + name)).is_dir()
    r = s.request("COPY", server.url + "files/" + url, headers={"Destination": "/files/" + quote("copy " + name)})
    assert r.status_code == 201 and (data / ("copy " + name)).read_bytes() == b"body"
    r = s.request("MOVE", server.url + "files/" + quote("copy " + name),
                  headers={"Destination": "/files/" + quote("moved " + name)})
    assert r.status_code == 201 and (data / ("moved " + name)).exists() and not (data / ("copy " + name)).exists()
    listing = propfind_names(s.request("PROPFIND", server.url + "files/", headers={"Depth": "1"}).text)
    assert {"/files/" + name, "/files/dir " + name + "/", "/files/moved " + name} <= {unquote(h) for h in listing}
    assert listing["/files/" + quote(name, safe="/!*'(),$-_.")] == name
    links = parse_listing(s.get(server.url + "files/").text)
    assert links["/files/" + quote(name)] == name


def test_creating_names_matches_the_rule(inst: Instance, server: DavServer) -> None:
    """For any name: PUT creates exactly it when names.refused_name allows it, else 400 and nothing."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    chars = st.one_of(st.sampled_from(CONTROLS + BIDI + NON_XML + SPECIAL), st.characters(
        blacklist_categories=["Cs"], blacklist_characters="/\x00"))

    @LIVE
    @given(name=st.text(chars, min_size=1, max_size=10))
    def check(name: str) -> None:
        if name in (".", "..") or name.startswith(("._", ".davserver-upload-")) or name == ".DS_Store" \
                or len(name.encode()) > 200 or (data / name).exists():
            return
        r = s.put(server.url + "files/" + quote(name), data=b"v")
        if refused_name(name) is None:
            assert r.status_code == 201, (name, r.status_code)
            assert (data / name).read_bytes() == b"v"
            os.unlink(data / name)
        else:
            assert r.status_code == 400, (name, r.status_code)
            assert not os.path.lexists(data / name)

    check()


@pytest.mark.parametrize("encoded", ["%0D", "%0A", "%20", "%20%20", "%E3%80%80", "%09"])
def test_a_blank_name_is_refused_live(inst: Instance, server: DavServer, encoded: str) -> None:
    s = session_for(inst)
    for method in ("PUT", "MKCOL"):
        r = s.request(method, server.url + "files/" + encoded, data=b"v" if method == "PUT" else None)
        assert r.status_code == 400, (method, encoded, r.status_code)
    assert sorted(os.listdir(inst.home.root / "data/files")) == []
    assert s.put(server.url + "files/a%20b", data=b"v").status_code == 201  # the twin: spaces inside a name
