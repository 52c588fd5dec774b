"""The short paths for GET and PROPFIND answer exactly what WsgiDAV's full path answers."""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager

import pytest
from defusedxml import ElementTree

from davserver.server import DavServer
from davserver.store.sqlite import SQLiteStore

from .conftest import Instance, session_for
from .conftest import wsgidav_only as conftest_wsgidav_only

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


def wsgidav_only(monkeypatch: pytest.MonkeyPatch) -> AbstractContextManager[None]:
    """WsgiDAV's own PROPFIND (the short GET path stays on)."""
    return conftest_wsgidav_only(monkeypatch, get=False)


def test_propfind_fast_path_matches_the_full_path(inst: Instance, server: DavServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = inst.home.root / "data/files/mix"
    (root / "sub dir").mkdir(parents=True)
    (root / "ä b.txt").write_bytes(b"hello")
    (root / "data.bin").write_bytes(os.urandom(3000))
    (root / ".davserver-upload-x").write_bytes(b"temp")
    os.symlink("/etc/passwd", root / "link")
    os.mkfifo(root / "fifo")
    s = session_for(inst)
    fast = s.request("PROPFIND", server.url + "files/mix/", headers={"Depth": "1"}, data=props_body(LIVE))
    with wsgidav_only(monkeypatch):
        full = s.request("PROPFIND", server.url + "files/mix/", headers={"Depth": "1"})
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
    assert props["/files/big.bin"]["getetag"][1] == r.headers["ETag"]  # getetag is the quoted entity-tag
    assert s.get(server.url + "files/big.bin", headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert s.get(server.url + "files/big.bin", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert s.get(server.url + "files/nope.bin").status_code == 404
    assert s.get(server.url + "files/.davserver-upload-x").status_code in (403, 404)
    os.symlink("/etc/hostname", inst.home.root / "data/files/host")
    assert s.get(server.url + "files/host").status_code in (403, 404)


def test_propfind_answers_follow_changes_on_disk(inst: Instance, server: DavServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
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
        with wsgidav_only(monkeypatch):
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


WIN32_PATCH = (
    '<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:">'
    "<D:set><D:prop><Z:Win32CreationTime>Wed, 25 Nov 2026 10:00:00 GMT</Z:Win32CreationTime>"
    "<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes></D:prop></D:set></D:propertyupdate>"
)


def _both(s, monkeypatch, url: str, depth: str, body: bytes | None) -> tuple[str, str]:
    fast = s.request("PROPFIND", url, headers={"Depth": depth}, data=body)
    with wsgidav_only(monkeypatch):
        full = s.request("PROPFIND", url, headers={"Depth": depth}, data=body)
    assert fast.status_code == full.status_code == 207, (fast.status_code, full.status_code, url)
    return fast.text, full.text


def _assert_same(fast: str, full: str) -> None:
    """Equal, except that disk usage may move between the two answers (other writers)."""

    def steady(answer: dict[str, dict[str, tuple[str, str]]]) -> dict[str, dict[str, tuple[str, str]]]:
        for props in answer.values():
            for name in ("quota-used-bytes", "quota-available-bytes"):
                if name in props and props[name][1].isdigit():
                    props[name] = (props[name][0], "<a number>")
        return answer

    got, want = steady(parse(fast)), steady(parse(full))
    assert set(got) == set(want)
    diffs = [(href, name, got[href].get(name), want[href].get(name))
             for href in got for name in set(got[href]) | set(want[href])
             if got[href].get(name) != want[href].get(name)]
    # One deliberate difference: RFC 4331 quota properties belong to collections. WsgiDAV
    # answers them for a file as present and empty (200), which a client cannot parse as a
    # number; the short path says they are not there (404).
    assert [d for d in diffs if not (d[1].startswith("quota-") and d[2] == ("404", "") and d[3] == ("200", ""))] == []


def test_allprop_and_foreign_properties_match_wsgidav(inst: Instance, server: DavServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What Windows Explorer (allprop, Win32 dead properties), davfs2 (a foreign live property)
    and others ask for: the short path answers exactly what WsgiDAV answers."""
    root = inst.home.root / "data/files/win"
    (root / "sub (1)").mkdir(parents=True)
    (root / "ä b.txt").write_bytes(b"hello")
    (root / "report(final).docx").write_bytes(os.urandom(100))
    (root / "plain.bin").write_bytes(b"")
    s = session_for(inst)
    u = server.url + "files/win/"
    for target in ("report(final).docx", "sub%20(1)/"):
        assert s.request("PROPPATCH", u + target, data=WIN32_PATCH.encode()).status_code == 207
    bodies: list[bytes | None] = [
        None,
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:"><D:prop>'
        b"<D:getlastmodified/><D:getcontentlength/><D:resourcetype/><Z:Win32CreationTime/>"
        b"<Z:Win32FileAttributes/><D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>",
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><D:getcontentlength/>'
        b'<D:resourcetype/><D:getlastmodified/><E:executable xmlns:E="http://apache.org/dav/props/"/>'
        b"<D:lockdiscovery/><D:supportedlock/><D:nosuchprop/></D:prop></D:propfind>",
    ]
    for body in bodies:
        for url, depth in ((u, "1"), (u, "0"), (u + "report(final).docx", "0"), (server.url + "files/", "1"),
                           (server.url + "files/", "0")):
            fast, full = _both(s, monkeypatch, url, depth, body)
            _assert_same(fast, full)
    fast, _ = _both(s, monkeypatch, u, "1", None)
    assert "<D:multistatus" in fast  # the short path's own serialisation: it did answer
    props = parse(fast)
    assert props["/files/win/report(final).docx"]["Win32FileAttributes"] == ("200", "00000020")
    assert "/files/win/sub%20(1)/" in props and "quota-available-bytes" in props["/files/win/sub%20(1)/"]


def test_a_lock_makes_wsgidav_render_lockdiscovery(inst: Instance, server: DavServer) -> None:
    root = inst.home.root / "data/files/locked"
    root.mkdir(parents=True)
    (root / "doc.txt").write_bytes(b"x")
    s = session_for(inst)
    u = server.url + "files/locked/"
    before = parse(s.request("PROPFIND", u, headers={"Depth": "1"}).text)
    assert before["/files/locked/doc.txt"]["lockdiscovery"] == ("200", "")
    lock = s.request("LOCK", u + "doc.txt", headers={"Timeout": "Second-600"}, data=(
        b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        b"<D:locktype><D:write/></D:locktype></D:lockinfo>"))
    assert lock.status_code == 200
    for url, depth in ((u, "1"), (u + "doc.txt", "0")):
        after = parse(s.request("PROPFIND", url, headers={"Depth": depth}).text)
        assert after["/files/locked/doc.txt"]["lockdiscovery"] == ("200", "{DAV:}activelock")
    assert s.request("UNLOCK", u + "doc.txt", headers={"Lock-Token": lock.headers["Lock-Token"]}).status_code == 204
    again = parse(s.request("PROPFIND", u, headers={"Depth": "1"}).text)
    assert again["/files/locked/doc.txt"]["lockdiscovery"] == ("200", "")


def test_a_broken_stored_property_leaves_the_answer_to_wsgidav(inst: Instance, server: DavServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = inst.home.root / "data/files/odd"
    root.mkdir(parents=True)
    (root / "a.txt").write_bytes(b"x")
    s = session_for(inst)
    assert s.request("PROPPATCH", server.url + "files/odd/a.txt", data=WIN32_PATCH.encode()).status_code == 207
    assert isinstance(server.store, SQLiteStore)
    server.store.connection().execute("UPDATE dav_props SET value = ? WHERE url LIKE '/files/odd/%'",
                                      (b"<not-xml",))
    fast, full = _both(s, monkeypatch, server.url + "files/odd/", "1", None)
    assert "<ns0:multistatus" in fast  # WsgiDAV's serialisation: the short path stood aside
    _assert_same(fast, full)


def test_a_large_folder_is_streamed_and_still_matches_wsgidav(inst: Instance, server: DavServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """More than one batch of members: the answer is sent chunked as it is rendered."""
    root = inst.home.root / "data/files/large"
    (root / "zdir").mkdir(parents=True)
    for i in range(2300):
        (root / f"f{i:05}.txt").write_bytes(b"x" * (i % 7))
    s = session_for(inst)
    u = server.url + "files/large/"
    for target in ("f02299.txt", "zdir/", "f00001.txt"):
        assert s.request("PROPPATCH", u + target, data=WIN32_PATCH.encode()).status_code == 207
    for body in (None, props_body(LIVE)):
        r = s.request("PROPFIND", u, headers={"Depth": "1"}, data=body)
        assert r.status_code == 207
        assert "Content-Length" not in r.headers and r.headers.get("Transfer-Encoding") == "chunked"
        with wsgidav_only(monkeypatch):
            full = s.request("PROPFIND", u, headers={"Depth": "1"}, data=body)
        assert len(parse(r.text)) == 2302
        _assert_same(r.text, full.text)
    got = parse(s.request("PROPFIND", u, headers={"Depth": "1"}).text)
    assert got["/files/large/f02299.txt"]["Win32FileAttributes"] == ("200", "00000020")
    assert got["/files/large/zdir/"]["Win32FileAttributes"] == ("200", "00000020")
    small = s.request("PROPFIND", u + "zdir/", headers={"Depth": "1"})
    assert small.headers.get("Content-Length") == str(len(small.content))  # one batch: a plain answer
    thousand = inst.home.root / "data/files/thousand"
    thousand.mkdir()
    for i in range(1000):
        (thousand / f"t{i}").write_bytes(b"")
    r = s.request("PROPFIND", server.url + "files/thousand/", headers={"Depth": "1"}, data=props_body(LIVE))
    assert r.headers.get("Content-Length") == str(len(r.content)) and len(parse(r.text)) == 1001


def test_a_broken_property_late_in_a_streamed_answer_is_reported_missing(inst: Instance, server: DavServer) -> None:
    root = inst.home.root / "data/files/late"
    root.mkdir(parents=True)
    for i in range(1500):
        (root / f"f{i:05}.txt").write_bytes(b"x")
    s = session_for(inst)
    u = server.url + "files/late/"
    names = [e.name for e in os.scandir(root)]
    late = names[-1]  # rendered in the second batch
    assert s.request("PROPPATCH", u + late, data=WIN32_PATCH.encode()).status_code == 207
    assert isinstance(server.store, SQLiteStore)
    server.store.connection().execute("UPDATE dav_props SET value = ? WHERE url LIKE '/files/late/%'",
                                      (b"<not-xml",))
    r = s.request("PROPFIND", u, headers={"Depth": "1"})
    assert r.status_code == 207 and r.headers.get("Transfer-Encoding") == "chunked"
    got = parse(r.text)  # still well-formed
    assert len(got) == 1501
    assert got["/files/late/" + late]["getcontentlength"] == ("200", "1")
    assert "Win32FileAttributes" not in got["/files/late/" + late] or got["/files/late/" + late][
        "Win32FileAttributes"][0] == "404"


def test_a_stalled_streamed_listing_does_not_hold_up_other_listings(inst: Instance, server: DavServer) -> None:
    """Listings render one at a time, but a client that stops reading its (streamed)
    answer must not keep the others waiting: rendering is done before each piece is sent."""
    import base64
    import socket
    import threading

    from .conftest import PASSWORDS, client_context

    root = inst.home.root / "data/files/slow"
    root.mkdir(parents=True)
    for i in range(20000):  # an answer of about 9 MB: far more than the socket buffers below hold
        (root / f"f{i:05}.txt").write_bytes(b"x")
    (inst.home.root / "data/files/other").mkdir()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the stalled client's window stays small
    raw.connect(("127.0.0.1", server.port))
    stalled = client_context(inst, inst.clients["alice"]).wrap_socket(raw, server_hostname="127.0.0.1")
    auth = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    stalled.sendall(f"PROPFIND /files/slow/ HTTP/1.1\r\nHost: 127.0.0.1\r\nDepth: 1\r\n"
                    f"Authorization: Basic {auth}\r\nContent-Length: 0\r\n\r\n".encode())
    first = stalled.recv(4096)
    assert first.startswith(b"HTTP/1.1 207") and b"chunked" in first.lower()
    time.sleep(1)  # the server fills the window and blocks sending: the client reads nothing more

    results: list[int] = []

    def listing() -> None:
        s = session_for(inst)
        r = s.request("PROPFIND", server.url + "files/other/", headers={"Depth": "1"}, timeout=10)
        results.append(r.status_code)

    try:
        threads = [threading.Thread(target=listing) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert results == [207] * 4
        stalled.settimeout(30)
        answer = first
        while not answer.endswith(b"0\r\n\r\n"):  # the stalled answer still completes
            chunk = stalled.recv(1 << 16)
            if not chunk:
                break
            answer += chunk
        assert b"</D:multistatus>" in answer[-64:]
    finally:
        stalled.close()
