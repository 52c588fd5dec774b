"""PROPFIND without Depth, or with Depth: infinity (RFC 4918 §9.1): refused with 403
propfind-finite-depth on collections only; on a regular file it is Depth 0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import requests

from davserver.server import DavServer

from .conftest import Instance, session_for
from .conftest import wsgidav_only as conftest_wsgidav_only

#: cases/20-propfind-infinity-on-file.py's body (Kodi's existence check)
BODY = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/>'
        b"</D:prop></D:propfind>")
INFINITE = [None, "infinity", "Infinity", "INFINITY"]


def wsgidav_only(monkeypatch: pytest.MonkeyPatch) -> AbstractContextManager[None]:
    """WsgiDAV's own PROPFIND (the short GET path stays on)."""
    return conftest_wsgidav_only(monkeypatch, get=False)


def propfind(s: requests.Session, url: str, depth: str | None) -> requests.Response:
    headers = {"Content-Type": "application/xml", "User-Agent": "Kodi/12.0"}
    if depth is not None:
        headers["Depth"] = depth
    return s.request("PROPFIND", url, data=BODY, headers=headers)


def refused(r: requests.Response) -> bool:
    return r.status_code == 403 and "propfind-finite-depth" in r.text


@pytest.mark.parametrize("path", ["short", "wsgidav"])
def test_infinity_on_a_file_is_depth_0(inst: Instance, server: DavServer, monkeypatch: pytest.MonkeyPatch,
                                       path: str) -> None:
    (inst.home.root / "data/files/sub").mkdir()
    (inst.home.root / "data/files/sub/movie.mkv").write_bytes(b"\x1aE\xdf\xa3")
    s = session_for(inst)
    url = server.url + "files/sub/movie.mkv"
    with wsgidav_only(monkeypatch) if path == "wsgidav" else _nothing():
        depth0 = propfind(s, url, "0")
        assert depth0.status_code == 207 and "getcontentlength>4<" in depth0.text
        for depth in INFINITE:
            r = propfind(s, url, depth)
            assert r.status_code == 207 and "getcontentlength>4<" in r.text, (depth, r.status_code)
            assert r.text == depth0.text, depth
        r = propfind(s, server.url + "ro/readme.txt", None)  # a read-only share too
        assert r.status_code == 207


def test_infinity_on_a_collection_is_still_refused(inst: Instance, server: DavServer) -> None:
    (inst.home.root / "data/files/sub").mkdir()
    (inst.home.root / "data/files/sub/a.txt").write_bytes(b"a")
    s = session_for(inst)
    for target in ("files/sub/", "files/sub", "files/", ""):
        for depth in INFINITE:
            assert refused(propfind(s, server.url + target, depth)), (target, depth)
        assert propfind(s, server.url + target, "1").status_code == 207, target  # the twin


def test_only_a_regular_file_inside_the_share_counts_as_a_file(inst: Instance, server: DavServer) -> None:
    """A symlink (to a file inside the share or outside it), a file reached through a
    symlinked folder, a missing name and a FIFO are not looked at as files: refused as
    before, and nothing outside the share is read."""
    files = inst.home.root / "data/files"
    (files / "real.txt").write_bytes(b"1")
    (files / "dir").mkdir()
    (files / "dir/in.txt").write_bytes(b"2")
    os.symlink(files / "real.txt", files / "link.txt")
    os.symlink("/etc/hostname", files / "out.txt")
    os.symlink(files / "dir", files / "dirlink")
    os.mkfifo(files / "fifo")
    s = session_for(inst)
    for target in ("link.txt", "out.txt", "dirlink/in.txt", "missing.txt", "fifo", "real.txt/x"):
        r = propfind(s, server.url + "files/" + target, None)
        assert r.status_code in (403, 404) and "/etc" not in r.text, (target, r.status_code)
        assert r.status_code != 207
    for target in ("real.txt", "dir/in.txt"):  # the twins
        assert propfind(s, server.url + "files/" + target, None).status_code == 207, target


@contextmanager
def _nothing() -> Iterator[None]:
    yield
