"""Every DAV:href is a valid URI reference (RFC 3986 §2, RFC 4918 §8.3) that decodes back
to the name, written identically by the short PROPFIND path and by WsgiDAV's."""

from __future__ import annotations

import re
import shutil
import string
from contextlib import AbstractContextManager
from urllib.parse import unquote, urlsplit

import pytest
import requests
from defusedxml import ElementTree
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver import fs
from davserver.config import is_macos_clutter
from davserver.hrefs import quote_href
from davserver.names import refused_name
from davserver.server import DavServer

from .conftest import Instance, session_for
from .conftest import wsgidav_only as conftest_wsgidav_only

#: RFC 3986 §3.3 path-absolute, character by character: pchar = unreserved / pct-encoded /
#: sub-delims / ":" / "@", and "/" between segments.
URI_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")

PROPNAME = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
PROP = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:displayname/><D:getetag/>'
        b"</D:prop></D:propfind>")


def wsgidav_only(monkeypatch: pytest.MonkeyPatch) -> AbstractContextManager[None]:
    """WsgiDAV's own PROPFIND (the short GET path stays on)."""
    return conftest_wsgidav_only(monkeypatch, get=False)


def hrefs(s: requests.Session, url: str, body: bytes | None) -> list[str]:
    r = s.request("PROPFIND", url, headers={"Depth": "1"}, data=body)
    assert r.status_code == 207, (r.status_code, r.text[:200])
    return [resp.findtext("{DAV:}href") or "" for resp in ElementTree.fromstring(r.content).iter("{DAV:}response")]


def answers(s: requests.Session, url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The hrefs of a Depth 1 listing from each path that writes them."""
    out = {"short allprop": hrefs(s, url, None), "short prop": hrefs(s, url, PROP),
           "wsgidav propname": hrefs(s, url, PROPNAME)}
    with wsgidav_only(monkeypatch):
        out["wsgidav allprop"] = hrefs(s, url, None)
        out["wsgidav prop"] = hrefs(s, url, PROP)
    return out


def assert_valid(href: str) -> None:
    assert URI_PATH.fullmatch(href), href
    parts = urlsplit(href)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment, parts.path) == ("", "", "", "", href)


CASE_03 = {
    # cases/03-href-encoding.py's names, and the href each must have
    "t #:?3.txt": "t%20%23%3A%3F3.txt",
    "a&b <c> 'd' \"e\".txt": "a%26b%20%3Cc%3E%20'd'%20%22e%22.txt",
    "semi;colon=eq,comma@at$.txt": "semi%3Bcolon%3Deq,comma%40at$.txt",
    "Grüße №5 日本.txt": "Gr%C3%BC%C3%9Fe%20%E2%84%965%20%E6%97%A5%E6%9C%AC.txt",
    "[brackets] {braces} ^caret` |pipe\\.txt": "%5Bbrackets%5D%20%7Bbraces%7D%20%5Ecaret%60%20%7Cpipe%5C.txt",
    "a|b.txt": "a%7Cb.txt",  # java.net.URI refused the raw '|' (opencb/opencga#716)
    # the twins: names that need nothing, and the sub-delims kept raw (Nautilus and '(')
    "plain-name_1.2~x.txt": "plain-name_1.2~x.txt",
    "report(final)!*'$,.docx": "report(final)!*'$,.docx",
}


def test_case_03_names_get_the_same_valid_hrefs_on_every_path(inst: Instance, server: DavServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = inst.home.root / "data/files/d"
    folder.mkdir()
    for name in CASE_03:
        (folder / name).write_bytes(name.encode())
    (folder / "sub|dir").mkdir()
    s = session_for(inst)
    want = sorted(["/files/d/", "/files/d/sub%7Cdir/"] + ["/files/d/" + h for h in CASE_03.values()])
    for path, got in answers(s, server.url + "files/d/", monkeypatch).items():
        assert sorted(got) == want, path
        for href in got:
            assert_valid(href)
    for name, href in CASE_03.items():  # each href fetches its file
        r = s.get(server.url.rstrip("/") + "/files/d/" + href)
        assert r.status_code == 200 and r.content == name.encode(), name


def test_the_href_of_a_resource_itself_is_quoted_the_same(inst: Instance, server: DavServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Depth 0 of a file and of a folder with '|' in their own names, on both paths."""
    (inst.home.root / "data/files/x|y").mkdir()
    (inst.home.root / "data/files/x|y/f|g.txt").write_bytes(b"1")
    s = session_for(inst)
    for url, want in (("files/x%7Cy/", "/files/x%7Cy/"), ("files/x%7Cy/f%7Cg.txt", "/files/x%7Cy/f%7Cg.txt")):
        fast = s.request("PROPFIND", server.url + url, headers={"Depth": "0"})
        with wsgidav_only(monkeypatch):
            full = s.request("PROPFIND", server.url + url, headers={"Depth": "0"})
        for r in (fast, full):
            assert r.status_code == 207
            assert [e.text for e in ElementTree.fromstring(r.content).iter("{DAV:}href")] == [want]


# --- names: every character a name may hold ----------------------------------------

_chars = st.one_of(
    st.sampled_from(list(string.printable.replace("/", "").replace("\x0b", "").replace("\x0c", "")
                         .replace("\r", "").replace("\n", "").replace("\t", "")) + list("|^`{}[]\\ %#?\"<>")),
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
)
names = st.text(_chars, min_size=1, max_size=24).filter(
    lambda n: refused_name(n) is None and n not in (".", "..") and not fs.is_temp_name(n)
    and not is_macos_clutter(n) and len(n.encode()) <= 200
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(names, min_size=1, max_size=3))
@example(["a|b"])
def test_quote_href_gives_a_uri_path_that_decodes_back(segments: list[str]) -> None:
    path = "/files/" + "/".join(segments)
    href = quote_href(path)
    assert_valid(href)
    assert unquote(href, errors="strict") == path
    assert quote_href(path + "/") == href + "/"  # a folder's href is its path's plus "/"


def test_listed_names_have_valid_hrefs_on_both_paths(inst: Instance, server: DavServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = session_for(inst)
    folder = inst.home.root / "data/files/h"

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(names, min_size=1, max_size=6, unique=True), st.booleans())
    @example(["a|b", "[x]", "{y}", "^`\\ z"], False)
    def check(listed: list[str], as_folders: bool) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name in listed:
            if as_folders:
                (folder / name).mkdir()
            else:
                (folder / name).write_bytes(b"x")
        got = answers(s, server.url + "files/h/", monkeypatch)
        first = next(iter(got.values()))
        for path, found in got.items():
            assert sorted(found) == sorted(first), path  # identical hrefs
        decoded = set()
        for href in first:
            assert_valid(href)
            assert href.startswith("/files/h/")
            rest = unquote(href[len("/files/h/"):], errors="strict")
            if rest:
                assert rest.endswith("/") == as_folders, href
                decoded.add(rest.rstrip("/"))
        assert decoded == set(listed)

    check()
