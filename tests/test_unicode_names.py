"""Names are found in any Unicode canonical normalisation form, and never twinned by one.

A file Windows or Linux created as ``café.txt`` (NFC) was 404 when a Mac asked for
``cafe%CC%81.txt`` (NFD), and a Mac saving it made a second, look-alike file. Names
stay on disk as they were created; the href is the on-disk form; names that differ
by more than canonical normalisation (compatibility forms, case, accents) stay apart.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davserver import fs
from davserver.hrefs import quote_href
from davserver.server import DavServer

from .conftest import Instance, session_for
from .test_fastpath import parse, props_body
from .test_fs_safety import wait_for
from .test_tree_limits import audit_records

NFC_CAFE = unicodedata.normalize("NFC", "café.txt")
NFD_CAFE = unicodedata.normalize("NFD", "café.txt")
#: Decomposable characters: accented Latin, Hangul syllables, kana with voicing marks.
DECOMPOSABLE = "éèêëáàâäåãçñóòôöõúùûüýÿÉÅÇÑÖÜŠžčřőű" + "가각한글힣뷁" + "がぎぐげござじばぱぴヴガパポ"
PATHS = ["short", "wsgidav"]


def url(server: DavServer, *names: str) -> str:
    return server.url + "/".join(quote(n, safe="") for n in names)


@contextmanager
def path_of(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The short paths as they are, or both switched off so WsgiDAV answers GET and PROPFIND."""
    with monkeypatch.context() as m:
        if kind == "wsgidav":
            m.setattr(fs, "fast_get", lambda *args: None)
            m.setattr(fs, "fast_propfind", lambda *args: None)
        yield


def listing(s, server: DavServer, folder: str) -> set[str]:
    r = s.request("PROPFIND", server.url + folder, headers={"Depth": "1"}, data=props_body(["resourcetype"]))
    assert r.status_code == 207
    return set(parse(r.text))


@pytest.mark.parametrize("kind", PATHS)
def test_nfd_request_finds_the_nfc_file_of_the_issue(inst: Instance, server: DavServer, kind: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (inst.home.root / "data/files" / NFC_CAFE).write_bytes(b"windows made me")
    s = session_for(inst)
    with path_of(kind, monkeypatch):
        r = s.get(server.url + "cafe%CC%81.txt".join(["files/", ""]))
        assert r.status_code == 200 and r.content == b"windows made me"
        assert s.get(server.url + "files/caf%C3%A9.txt").content == b"windows made me"  # the twin: exact name
        p = s.request("PROPFIND", server.url + "files/cafe%CC%81.txt", headers={"Depth": "0"},
                      data=props_body(["getcontentlength"]))
        assert p.status_code == 207
        assert parse(p.text) == {"/files/caf%C3%A9.txt": {"getcontentlength": ("200", "15")}}  # on-disk form
        assert s.get(server.url + "files/cafe.txt").status_code == 404  # no accent: another name


@pytest.mark.parametrize("kind", PATHS)
def test_nfc_request_finds_a_file_a_mac_created_in_nfd(inst: Instance, server: DavServer, kind: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = inst.home.root / "data/files" / unicodedata.normalize("NFD", "Résumé")
    folder.mkdir()
    (folder / NFD_CAFE).write_bytes(b"a mac made me")
    s = session_for(inst)
    with path_of(kind, monkeypatch):
        r = s.get(url(server, "files", "Résumé", NFC_CAFE))
        assert r.status_code == 200 and r.content == b"a mac made me"
        hrefs = listing(s, server, "files/" + quote("Résumé") + "/")
    base = "/files/" + quote_href(unicodedata.normalize("NFD", "Résumé")) + "/"
    assert hrefs == {base, base + quote_href(NFD_CAFE)}  # listed as on disk


def test_put_on_the_nfd_form_overwrites_the_nfc_file(inst: Instance, server: DavServer) -> None:
    share = inst.home.root / "data/files"
    (share / NFC_CAFE).write_bytes(b"old")
    s = session_for(inst)
    r = s.put(url(server, "files", NFD_CAFE), data=b"saved by a mac")
    assert r.status_code == 204, r.text  # replaced, not created
    assert sorted(os.listdir(share)) == [NFC_CAFE]
    assert (share / NFC_CAFE).read_bytes() == b"saved by a mac"
    # MKCOL of the other form of an existing folder: it exists (RFC 4918 §9.3.1), no twin
    (share / "Ordner-ä").mkdir()
    assert s.request("MKCOL", url(server, "files", unicodedata.normalize("NFD", "Ordner-ä"))).status_code == 405
    assert s.request("MKCOL", url(server, "files", "Ordner-ö")).status_code == 201  # the twin: a new name
    # a new file in a folder named in the other form goes into the folder on disk
    nfd_folder = unicodedata.normalize("NFD", "Ordner-ä")
    assert s.put(url(server, "files", nfd_folder, "neu.txt"), data=b"n").status_code == 201
    assert os.listdir(share / "Ordner-ä") == ["neu.txt"]
    assert sorted(os.listdir(share)) == sorted([NFC_CAFE, "Ordner-ä", "Ordner-ö"])


def test_move_and_copy_onto_the_other_form_replace_instead_of_twinning(inst: Instance, server: DavServer) -> None:
    share = inst.home.root / "data/files"
    (share / NFC_CAFE).write_bytes(b"old")
    (share / "new.txt").write_bytes(b"new")
    s = session_for(inst)
    dest = {"Destination": url(server, "files", NFD_CAFE)}
    assert s.request("COPY", server.url + "files/new.txt", headers={**dest, "Overwrite": "F"}).status_code == 412
    assert s.request("MOVE", server.url + "files/new.txt", headers={**dest, "Overwrite": "F"}).status_code == 412
    assert (share / NFC_CAFE).read_bytes() == b"old"
    assert s.request("COPY", server.url + "files/new.txt", headers=dest).status_code == 204
    assert sorted(os.listdir(share)) == sorted([NFC_CAFE, "new.txt"])
    assert (share / NFC_CAFE).read_bytes() == b"new"
    (share / "newer.txt").write_bytes(b"newer")
    assert s.request("MOVE", server.url + "files/newer.txt", headers=dest).status_code == 204
    assert sorted(os.listdir(share)) == sorted([NFC_CAFE, "new.txt"])
    assert (share / NFC_CAFE).read_bytes() == b"newer"
    # the twin: a destination that is another name is created
    other = {"Destination": url(server, "files", "cafe.txt")}
    assert s.request("COPY", server.url + "files/new.txt", headers=other).status_code == 201


def test_names_differing_by_more_than_normalisation_stay_apart(inst: Instance, server: DavServer) -> None:
    """Compatibility forms (NFKC), case and other accents are other names: both exist."""
    share = inst.home.root / "data/files"
    s = session_for(inst)
    pairs = [("file.txt", "\ufb01le.txt"),  # U+FB01 LATIN SMALL LIGATURE FI: NFKC, not NFC, equals "fi"
             ("x2.txt", "x\u00b2.txt"),  # superscript two
             ("café.txt", "CAFÉ.txt"), ("café.txt", "cafè.txt"), ("café.txt", "cafe.txt"),
             ("\u30ac.txt", "\uff76\uff9e.txt")]  # ガ and its half-width form
    for i, (a, b) in enumerate(pairs):
        folder = f"p{i}"
        (share / folder).mkdir()
        (share / folder / a).write_bytes(b"a")
        assert s.get(url(server, "files", folder, b)).status_code == 404
        assert s.put(url(server, "files", folder, b), data=b"b").status_code == 201, (a, b)
        assert sorted(os.listdir(share / folder)) == sorted([a, b])
        assert (share / folder / a).read_bytes() == b"a"


def test_a_request_matching_several_on_disk_twins_is_refused_not_guessed(inst: Instance, server: DavServer) -> None:
    """Two canonically equivalent names made on disk: a third form names neither (404) and
    cannot be created beside them (409 name_collision); each exact name still works."""
    nfc = unicodedata.normalize("NFC", "\u1ec7.txt")  # ệ
    nfd = unicodedata.normalize("NFD", nfc)  # e + dot below + circumflex
    third = "\u00ea\u0323.txt"  # ê + dot below: canonically equivalent, neither NFC nor NFD
    assert unicodedata.normalize("NFC", third) == nfc and len({nfc, nfd, third}) == 3
    share = inst.home.root / "data/files"
    (share / nfc).write_bytes(b"c")
    (share / nfd).write_bytes(b"d")
    s = session_for(inst)
    assert s.get(url(server, "files", third)).status_code == 404
    r = s.put(url(server, "files", third), data=b"x")
    assert r.status_code == 409, r.text
    assert wait_for(lambda: any(rec["reason"] == "name_collision" and rec["method"] == "PUT"
                                for rec in audit_records(inst)))
    assert s.request("MKCOL", url(server, "files", third)).status_code == 409
    assert sorted(os.listdir(share)) == sorted([nfc, nfd])
    assert s.get(url(server, "files", nfc)).content == b"c"  # the twins: exact names are served
    assert s.get(url(server, "files", nfd)).content == b"d"
    assert s.put(url(server, "files", nfd), data=b"D").status_code == 204


_names = st.lists(st.sampled_from(DECOMPOSABLE) | st.sampled_from("abcXYZ09-_ "), min_size=1, max_size=12).map(
    "".join).filter(lambda n: n.strip() == n and unicodedata.normalize("NFD", n) != unicodedata.normalize("NFC", n))
_counter = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_names, folder_name=_names, kind=st.sampled_from(PATHS))
def test_any_decomposable_name_is_found_in_its_nfd_form(inst: Instance, server: DavServer,
                                                        monkeypatch: pytest.MonkeyPatch, name: str,
                                                        folder_name: str, kind: str) -> None:
    """NFC on disk, NFD asked for (folder and file): GET, PROPFIND and PUT reach the NFC
    names on both paths, hrefs show the on-disk form, and nothing is twinned."""
    nfc_dir, nfc = unicodedata.normalize("NFC", folder_name), unicodedata.normalize("NFC", name) + ".txt"
    nfd_dir, nfd = unicodedata.normalize("NFD", folder_name), unicodedata.normalize("NFD", name) + ".txt"
    top = f"h{next(_counter)}"
    folder = inst.home.root / "data/files" / top / nfc_dir
    folder.mkdir(parents=True)
    (folder / nfc).write_bytes(nfc.encode())
    s = session_for(inst)
    with path_of(kind, monkeypatch):
        r = s.get(url(server, "files", top, nfd_dir, nfd))
        assert r.status_code == 200 and r.content == nfc.encode()
        p = s.request("PROPFIND", url(server, "files", top, nfd_dir) + "/", headers={"Depth": "1"},
                      data=props_body(["getcontentlength"]))
        assert p.status_code == 207
        base = f"/files/{top}/{quote_href(nfc_dir)}/"
        assert set(parse(p.text)) == {base, base + quote_href(nfc)}
    assert s.put(url(server, "files", top, nfd_dir, nfd), data=b"over").status_code == 204
    assert os.listdir(folder) == [nfc] and (folder / nfc).read_bytes() == b"over"


def test_exact_names_cost_no_folder_scan_and_a_miss_one(inst: Instance, server: DavServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The match across forms is paid for only on a miss: an exact hit lists no folder, and an
    NFD request for an NFC file lists only the folder whose member it did not find."""
    deep = inst.home.root / "data/files/ä/ö"
    deep.mkdir(parents=True)
    (deep / NFC_CAFE).write_bytes(b"x")
    scanned: list[str] = []
    real_scandir = os.scandir

    def counting(path: str) -> object:
        scanned.append(os.fsdecode(path))
        return real_scandir(path)

    s = session_for(inst)
    monkeypatch.setattr(os, "scandir", counting)
    assert s.get(url(server, "files", "ä", "ö", NFC_CAFE)).status_code == 200
    assert scanned == []
    assert s.get(url(server, "files", "ä", "ö", NFD_CAFE)).status_code == 200
    assert scanned == [str(deep)]
    scanned.clear()  # a new non-ASCII name: its folder is scanned once for twins, however often looked up
    assert s.put(url(server, "files", "ä", "ö", "neu-ü.txt"), data=b"n").status_code == 201
    assert scanned == [str(deep)]
    scanned.clear()
    assert s.put(url(server, "files", "ä", "ö", "new.txt"), data=b"n").status_code == 201  # ASCII: none
    assert scanned == []


def test_locks_and_properties_are_shared_by_both_forms(inst: Instance, server: DavServer) -> None:
    """The request path is rewritten to the on-disk name, so a lock taken on one form holds
    against a write through the other (423), and the lock's holder still writes (twin)."""
    (inst.home.root / "data/files" / NFC_CAFE).write_bytes(b"old")
    s = session_for(inst)
    body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype></D:lockinfo>")
    r = s.request("LOCK", url(server, "files", NFC_CAFE), data=body, headers={"Timeout": "Second-60"})
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    assert s.put(url(server, "files", NFD_CAFE), data=b"sneaky").status_code == 423
    assert (inst.home.root / "data/files" / NFC_CAFE).read_bytes() == b"old"
    assert s.put(url(server, "files", NFD_CAFE), data=b"mine", headers={"If": f"({token})"}).status_code == 204
    assert (inst.home.root / "data/files" / NFC_CAFE).read_bytes() == b"mine"
