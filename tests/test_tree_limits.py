"""Share roots and deep trees: no request on a share root or on a tree of any
depth ends in a 500. A share root cannot be replaced, deleted, moved or copied
into itself (clear 4xx with a reason); trees are bounded by
``limits.max_tree_depth``: nothing is created deeper, and COPY, MOVE and DELETE
of a folder reaching deeper (made on disk) are refused before anything walks it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from davserver.copymove import _walk
from davserver.fs import tree_height_exceeds
from davserver.request_context import request_context
from davserver.server import DavServer

from .conftest import Instance, running, session_for
from .test_fs_safety import wait_for

LOCKINFO = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype></D:lockinfo>")
PROPPATCH = ('<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
             "<Z:note>x</Z:note></D:prop></D:set></D:propertyupdate>")
METHODS = ["OPTIONS", "GET", "HEAD", "PROPFIND", "PROPPATCH", "MKCOL", "PUT", "DELETE", "COPY", "MOVE", "LOCK",
           "UNLOCK", "POST"]


def audit_records(inst: Instance) -> list[dict]:
    path = inst.home.state_dir / "audit.log"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def reason_of(inst: Instance, method: str, path: str, count: int = 1) -> str:
    """The reason of the newest audit record of `method` on `path`, once there are `count` of them
    (a record is written just after its answer, so the newest can still be on its way)."""
    found: list[str] = []

    def look() -> bool:
        found[:] = [r["reason"] for r in audit_records(inst) if r["method"] == method and r["path"] == path]
        return len(found) >= count

    assert wait_for(look), (method, path)
    return found[-1]


_MADE: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_deep_trees() -> Iterator[None]:
    """Each test's deep trees go when it ends, deepest first and without recursion: Python
    3.11's shutil.rmtree recurses per level, so pytest's own clean-up of old temporary
    folders (at the end of a later session) would stop with a RecursionError."""
    yield
    while _MADE:
        base = _MADE.pop()
        if base.exists():
            for rel, is_dir in reversed(_walk(str(base), listed_only=False)):
                full = os.path.join(base, rel)
                os.rmdir(full) if is_dir else os.unlink(full)


def make_tree(base: Path, levels: int) -> Path:
    """``levels`` nested folders ``d/d/…`` below ``base`` (os.makedirs recurses per missing
    level, so it is called for 100 at a time); returns the deepest. Removed when the test ends."""
    _MADE.append(base)
    path = str(base)
    done = 0
    while done < levels:
        step = min(100, levels - done)
        path = os.path.join(path, *["d"] * step)
        os.makedirs(path, exist_ok=True)
        done += step
    return Path(path)


# --- share roots ------------------------------------------------------------------------


def _request(s: requests.Session, url: str, method: str, dest: str) -> int:
    headers = {"Depth": "0", "Destination": dest, "Lock-Token": "<opaquelocktoken:x>", "Timeout": "Second-60"}
    body = {"LOCK": LOCKINFO, "PROPPATCH": PROPPATCH, "PUT": "replacement"}.get(method)
    return s.request(method, url, headers=headers, data=body).status_code


@pytest.mark.parametrize("dest", ["/files/inside/", "/files/", "/files", "/team/copied/", "/ro/x/", "/"])
def test_no_method_on_a_share_root_or_the_server_root_is_a_server_error(inst: Instance, server: DavServer,
                                                                        dest: str) -> None:
    """Every method × /files, /files/, /team/, / × destinations in and out of the share."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    (data / "keep.txt").write_bytes(b"kept")
    for path in ("files", "files/", "team/", "", "ro"):
        for method in METHODS:
            status = _request(s, server.url + path, method, dest)
            assert status < 500, (method, "/" + path, dest, status)
    assert (data / "keep.txt").read_bytes() == b"kept" and data.is_dir()


def test_share_root_refusals_have_the_rfc_status_and_a_reason(inst: Instance, server: DavServer) -> None:
    """The exact inputs of the issue: PUT, DELETE, MOVE, COPY on /files and /files/ (were 500)."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    (data / "a.txt").write_bytes(b"a")
    for path in ("/files", "/files/"):
        r = s.put(server.url + path[1:], data=b"x")
        assert r.status_code == 405 and "PUT" not in r.headers["Allow"] and "PROPFIND" in r.headers["Allow"]
        assert reason_of(inst, "PUT", path) == "share_root"
        for method in ("DELETE", "MOVE", "COPY"):
            r = s.request(method, server.url + path[1:], headers={"Destination": "/files/sub/"})
            assert r.status_code == 403, (method, path, r.status_code)
            assert reason_of(inst, method, path) == "share_root"
    # Onto the share root: 403, the root (and what is in it) left alone.
    for method in ("COPY", "MOVE"):
        for dest in ("/files/", "/files"):
            r = s.request(method, server.url + "files/a.txt", headers={"Destination": dest})
            assert r.status_code == 403, (method, dest, r.status_code)
    assert sorted(os.listdir(data)) == ["a.txt"] and (data / "a.txt").read_bytes() == b"a"


def test_share_root_refusal_below_the_access_decision(inst: Instance) -> None:
    """The filesystem refuses by itself, whatever the layer above let through
    (ShareProvider.custom_request_handler, get_resource_inst(None))."""
    from wsgidav.dav_error import DAVError

    from davserver.config import load_config
    from davserver.fs import ShareProvider

    provider = ShareProvider(load_config(inst.home).shares["files"])
    for method, status in (("PUT", 405), ("DELETE", 403), ("MOVE", 403), ("COPY", 403)):
        for path in ("", "/"):
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
            with pytest.raises(DAVError) as err:
                provider.custom_request_handler(environ, None, None)
            assert err.value.value == status and request_context(environ).refusal == "share_root"
    environ = {"REQUEST_METHOD": "COPY", "PATH_INFO": "/a.txt"}
    with pytest.raises(DAVError) as err:
        provider.get_resource_inst(None, environ)  # the parent of a destination that is the root
    assert err.value.value == 403 and request_context(environ).refusal == "dest_share_root"
    assert provider.get_resource_inst(None, {"REQUEST_METHOD": "COPY", "PATH_INFO": "/"}) is None


def test_share_root_twin_content_is_still_writable(inst: Instance, server: DavServer) -> None:
    """The twin: inside the root everything works, and the root lists and takes properties."""
    s = session_for(inst)
    assert s.put(server.url + "files/a.txt", data=b"a").status_code == 201
    assert s.request("MKCOL", server.url + "files/sub").status_code == 201
    r = s.request("COPY", server.url + "files/a.txt", headers={"Destination": "/files/sub/b.txt"})
    assert r.status_code == 201
    r = s.request("MOVE", server.url + "files/sub/", headers={"Destination": "/files/moved/"})
    assert r.status_code == 201
    assert s.delete(server.url + "files/moved/").status_code == 204
    assert s.request("PROPPATCH", server.url + "files/", data=PROPPATCH).status_code == 207
    assert s.request("PROPFIND", server.url + "files/", headers={"Depth": "1"}).status_code == 207
    assert os.listdir(inst.home.root / "data/files") == ["a.txt"]


# --- deep trees ------------------------------------------------------------------------


@pytest.fixture
def shallow(inst: Instance) -> Iterator[tuple[Instance, DavServer]]:
    """The test instance with limits.max_tree_depth: 12."""
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + "limits: {max_tree_depth: 12}\n")
    with running(inst) as srv:
        yield inst, srv


def test_nothing_is_created_past_the_depth_limit(shallow: tuple[Instance, DavServer]) -> None:
    """MKCOL, PUT, LOCK, COPY and MOVE at level 13 of a 12-level limit: 403 tree_depth."""
    inst, server = shallow
    s = session_for(inst)
    data = inst.home.root / "data/files"
    deep = "files/" + "/".join(["d"] * 11) + "/"  # the folder at level 11
    for level in range(1, 12):
        assert s.request("MKCOL", server.url + "files/" + "/".join(["d"] * level)).status_code == 201
    assert s.request("MKCOL", server.url + deep + "twelve").status_code == 201  # level 12: the limit
    assert s.put(server.url + deep + "twelve.txt", data=b"ok").status_code == 201
    for method, url in (("MKCOL", deep + "twelve/x"), ("PUT", deep + "twelve/x.txt"), ("LOCK", deep + "twelve/y")):
        r = s.request(method, server.url + url, data=LOCKINFO if method == "LOCK" else b"")
        assert r.status_code == 403, (method, r.status_code)
        assert reason_of(inst, method, "/" + url) == "tree_depth"
    for method in ("COPY", "MOVE"):
        r = s.request(method, server.url + deep + "twelve.txt", headers={"Destination": "/" + deep + "twelve/z.txt"})
        assert r.status_code == 403, (method, r.status_code)
        assert reason_of(inst, method, "/" + deep + "twelve.txt") == "tree_depth"
    # A folder two levels high fits below level 10 (reaching 12) but not below level 11 (13).
    make_tree(data / "t", 2)  # t/d/d
    fits, too_deep = ("/" + "/".join(["files"] + ["d"] * n) + "/t/" for n in (9, 10))
    assert s.request("COPY", server.url + "files/t/", headers={"Destination": fits}).status_code == 201
    r = s.request("COPY", server.url + "files/t/", headers={"Destination": too_deep})
    assert r.status_code == 403 and reason_of(inst, "COPY", "/files/t/", count=2) == "tree_depth"
    r = s.request("MOVE", server.url + "files/t/", headers={"Destination": too_deep})
    assert r.status_code == 403 and (data / "t/d/d").is_dir()
    assert sorted(p.name for p in (data / "/".join(["d"] * 11) / "twelve").iterdir()) == []


def test_a_tree_deeper_than_the_limit_made_on_disk_is_refused_not_a_500(inst: Instance, server: DavServer) -> None:
    """The exact input of the issue: COPY, MOVE and DELETE of a 1,100-level tree (were 500,
    RecursionError) are 403 tree_depth with the default limit of 256; nothing is touched."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    deepest = make_tree(data / "deep", 1100)
    (deepest / "leaf.txt").write_bytes(b"leaf")
    for method, dest in (("COPY", "/files/copy/"), ("MOVE", "/files/moved/"), ("DELETE", ""),
                         ("COPY", "/team/copy/"), ("MOVE", "/team/moved/")):
        r = s.request(method, server.url + "files/deep/", headers={"Destination": dest} if dest else {})
        assert r.status_code == 403, (method, r.status_code, r.text[:200])
        assert reason_of(inst, method, "/files/deep/") == "tree_depth"
    assert (deepest / "leaf.txt").read_bytes() == b"leaf"
    assert sorted(os.listdir(data)) == ["deep"] and os.listdir(inst.home.root / "data/team") == []
    # Listing it level by level still works (PROPFIND is depth-limited).
    assert s.request("PROPFIND", server.url + "files/deep/", headers={"Depth": "1"}).status_code == 207


@pytest.mark.parametrize("levels", [10, 254])
def test_trees_within_the_limit_copy_move_and_delete(inst: Instance, server: DavServer, levels: int) -> None:
    """The twin: a 10-level tree, and one reaching exactly the limit (``t`` at level 1, 254
    folders below it, the file at level 256)."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    (make_tree(data / "t", levels) / "leaf.txt").write_bytes(b"leaf")
    assert s.request("COPY", server.url + "files/t/", headers={"Destination": "/files/c/"}).status_code == 201
    assert (data / "c" / "/".join(["d"] * levels) / "leaf.txt").read_bytes() == b"leaf"
    assert s.request("MOVE", server.url + "files/c/", headers={"Destination": "/files/m/"}).status_code == 201
    assert (data / "m" / "/".join(["d"] * levels) / "leaf.txt").read_bytes() == b"leaf"
    assert s.delete(server.url + "files/m/").status_code == 204
    r = s.request("COPY", server.url + "files/t/", headers={"Destination": "/team/t/"})  # another share
    assert r.status_code == 201
    assert (inst.home.root / "data/team/t" / "/".join(["d"] * levels) / "leaf.txt").read_bytes() == b"leaf"
    assert s.delete(server.url + "files/t/").status_code == 204
    assert s.delete(server.url + "team/t/").status_code == 204
    assert os.listdir(data) == []


def test_one_level_more_than_the_limit_is_refused(inst: Instance, server: DavServer) -> None:
    """The bound itself: a tree reaching level 257 (256 levels below /files/t) is refused."""
    s = session_for(inst)
    data = inst.home.root / "data/files"
    make_tree(data / "t", 256)
    assert s.request("COPY", server.url + "files/t/", headers={"Destination": "/files/c/"}).status_code == 403
    assert s.delete(server.url + "files/t/").status_code == 403
    assert not (data / "c").exists() and (data / "t").is_dir()


def test_tree_height_is_measured_without_recursion(tmp_path: Path) -> None:
    """tree_height_exceeds on a tree deeper than Python's recursion limit; files count as a level."""
    make_tree(tmp_path / "x", 1500)
    assert tree_height_exceeds(str(tmp_path / "x"), 1499)
    assert not tree_height_exceeds(str(tmp_path / "x"), 1500)
    (tmp_path / "y").mkdir()
    (tmp_path / "y/f").write_bytes(b"")
    assert tree_height_exceeds(str(tmp_path / "y"), 0) and not tree_height_exceeds(str(tmp_path / "y"), 1)
    assert tree_height_exceeds(str(tmp_path / "y"), -1)
    os.symlink("/", tmp_path / "y/link")  # never followed
    assert not tree_height_exceeds(str(tmp_path / "y"), 1)


def test_start_up_sweep_walks_deep_trees(tmp_path: Path) -> None:
    """sweep_temp_files (run at start) used os.walk, which recurses per level in Python 3.11."""
    from davserver.fs import TEMP_PREFIX, sweep_temp_files

    deepest = make_tree(tmp_path, 1200)
    (deepest / (TEMP_PREFIX + "abc")).write_bytes(b"partial")
    (deepest / "kept.txt").write_bytes(b"kept")
    assert sweep_temp_files(tmp_path, older_than=0) == 1
    assert os.listdir(deepest) == ["kept.txt"]
