"""The short paths for GET and PROPFIND answer exactly what WsgiDAV's full path answers."""

from __future__ import annotations

import os

from defusedxml import ElementTree

from davserver.server import DavServer

from .conftest import Instance, session_for

LIVE = ["resourcetype", "getcontentlength", "getlastmodified", "getetag", "creationdate", "displayname",
        "getcontenttype"]


def props_body(names: list[str]) -> bytes:
    inner = "".join(f"<D:{n}/>" for n in names)
    return f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>{inner}</D:prop></D:propfind>'.encode()


def parse(xml: str) -> dict[str, dict[str, tuple[str, str]]]:
    """href -> {prop: (status, serialised value)}"""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for response in ElementTree.fromstring(xml).iter("{DAV:}response"):
        href = response.findtext("{DAV:}href") or ""
        props = out.setdefault(href, {})
        for propstat in response.iter("{DAV:}propstat"):
            status = (propstat.findtext("{DAV:}status") or "").split(" ")[1]
            for prop in propstat.find("{DAV:}prop") or []:
                name = prop.tag.split("}")[1]
                value = (prop.text or "") + "".join(child.tag for child in prop)
                props[name] = (status, value)
    return out


def test_propfind_fast_path_matches_the_full_path(inst: Instance, server: DavServer) -> None:
    root = inst.home.root / "data/files/mix"
    (root / "sub dir").mkdir(parents=True)
    (root / "ä b.txt").write_bytes(b"hello")
    (root / "data.bin").write_bytes(os.urandom(3000))
    (root / ".davserver-upload-x").write_bytes(b"temp")
    os.symlink("/etc/passwd", root / "link")
    os.mkfifo(root / "fifo")
    s = session_for(inst)
    fast = s.request("PROPFIND", server.url + "files/mix/", headers={"Depth": "1"}, data=props_body(LIVE))
    full = s.request("PROPFIND", server.url + "files/mix/", headers={"Depth": "1"})  # allprop: WsgiDAV's path
    assert fast.status_code == full.status_code == 207
    got, want = parse(fast.text), parse(full.text)
    assert set(got) == set(want) == {"/files/mix/", "/files/mix/sub%20dir/", "/files/mix/%C3%A4%20b.txt",
                                     "/files/mix/data.bin"}
    for href, props in got.items():
        for name in LIVE:
            if name in want[href]:
                assert props[name] == want[href][name], (href, name)
            else:
                assert props[name][0] == "404", (href, name)
    depth0 = parse(s.request("PROPFIND", server.url + "files/mix/data.bin", headers={"Depth": "0"},
                             data=props_body(["getetag", "getcontentlength"])).text)
    assert depth0 == {"/files/mix/data.bin": {k: got["/files/mix/data.bin"][k] for k in ("getetag",
                                                                                          "getcontentlength")}}


def test_get_fast_path_matches_headers_and_leaves_the_rest_to_wsgidav(inst: Instance, server: DavServer) -> None:
    data = os.urandom(700_000)
    (inst.home.root / "data/files/big.bin").write_bytes(data)
    s = session_for(inst)
    r = s.get(server.url + "files/big.bin")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data)) and r.headers["Accept-Ranges"] == "bytes"
    head = s.head(server.url + "files/big.bin")
    assert head.headers["ETag"] == r.headers["ETag"] and head.headers["Last-Modified"] == r.headers["Last-Modified"]
    props = parse(s.request("PROPFIND", server.url + "files/big.bin", headers={"Depth": "0"},
                            data=props_body(["getetag"])).text)
    assert f'"{props["/files/big.bin"]["getetag"][1]}"' == r.headers["ETag"]
    assert s.get(server.url + "files/big.bin", headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert s.get(server.url + "files/big.bin", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert s.get(server.url + "files/nope.bin").status_code == 404
    assert s.get(server.url + "files/.davserver-upload-x").status_code in (403, 404)
    os.symlink("/etc/hostname", inst.home.root / "data/files/host")
    assert s.get(server.url + "files/host").status_code in (403, 404)


def test_propfind_answers_follow_changes_on_disk(inst: Instance, server: DavServer) -> None:
    """Rendered members are reused only while the file is unchanged (same inode, times, size, mode)."""
    root = inst.home.root / "data/files/cached"
    root.mkdir(parents=True)
    for i in range(20):
        (root / f"f{i}.txt").write_bytes(b"x" * i)
    s = session_for(inst)

    def listing() -> dict[str, dict[str, tuple[str, str]]]:
        r = s.request("PROPFIND", server.url + "files/cached/", headers={"Depth": "1"}, data=props_body(LIVE))
        assert r.status_code == 207
        return parse(r.text)

    def allprop() -> dict[str, dict[str, tuple[str, str]]]:
        return parse(s.request("PROPFIND", server.url + "files/cached/", headers={"Depth": "1"}).text)

    first = listing()
    assert listing() == first  # the second answer comes from rendered fragments
    (root / "f3.txt").write_bytes(b"changed content")  # new size and times
    (root / "f4.txt").write_bytes(b"yyyy")  # same size, new content: new mtime/ctime
    os.chmod(root / "f5.txt", 0o600)  # metadata only: new ctime
    (root / "f6.txt").rename(root / "renamed.txt")
    (root / "f7.txt").unlink()
    (root / "new.txt").write_bytes(b"new")
    second = listing()
    want = allprop()
    assert set(second) == set(want)
    assert "/files/cached/renamed.txt" in second and "/files/cached/f6.txt" not in second
    assert "/files/cached/f7.txt" not in second and "/files/cached/new.txt" in second
    for href, props in second.items():
        for name in ("getcontentlength", "getetag", "getlastmodified", "creationdate", "displayname"):
            if name in want[href]:
                assert props[name] == want[href][name], (href, name)
    assert second["/files/cached/f3.txt"]["getcontentlength"] == ("200", "15")
    assert second["/files/cached/f4.txt"]["getetag"] != first["/files/cached/f4.txt"]["getetag"]
    assert second["/files/cached/f0.txt"] == first["/files/cached/f0.txt"]


def test_fragment_cache_stays_within_its_budget() -> None:
    from davserver.fastpath import _FragmentCache

    cache = _FragmentCache(1000)
    for i in range(1000):
        cache.put((i,), b"x" * 10)
        assert sum(map(len, cache._current.values())) + sum(map(len, cache._old.values())) <= 1000
    assert cache.get((999,)) == b"x" * 10
    assert cache.get((0,)) is None
