"""What a failed system call tells the client, by errno and by method (sharefs.py).

RFC 4918 and RFC 9110 give one status per situation, and the situation depends on
the method: a missing path (ENOENT, ENOTDIR: a file on the way) is 404 for the
resource a request acts on but 409 where something is being created there (PUT,
MKCOL, LOCK, the Destination of COPY/MOVE: §9.7.1, §9.3.1, §9.8.5, §9.9.4); an
existing name (EEXIST) is 405 for MKCOL (§9.3.1), 412 for COPY/MOVE with
``Overwrite: F`` (§9.8.5, §9.9.4) and 409 otherwise. fs.py used to answer 409 for
every ENOTDIR and 405 for every EEXIST; error_pages.py 404 and 412.

The server, its TLS sockets, certificates and filesystem are real. Races (a folder
becoming a file, a name appearing between WsgiDAV's check and the system call)
cannot be timed from outside, so the errno is injected at the one system call the
request makes on one path; everything around it runs as in production. GET and
PROPFIND are asked of the short path and of WsgiDAV's, which must agree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from davserver.server import DavServer
from davserver.sharefs import os_error_status

from .conftest import Instance, session_for, wsgidav_only

#: Errnos the model gives a status (plus EIO, which is the server's fault: 500).
ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOTEMPTY, errno.EACCES, errno.EPERM,
          errno.EROFS, errno.ELOOP, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.EILSEQ,
          errno.EIO)

#: The errnos whose status does not depend on the method, as the RFCs give them.
FIXED = {errno.EISDIR: 409, errno.ENOTEMPTY: 409, errno.EACCES: 403, errno.EPERM: 403, errno.EROFS: 403,
         errno.ELOOP: 403, errno.ENOSPC: 507, errno.EDQUOT: 507, errno.EFBIG: 413, errno.ENAMETOOLONG: 414,
         errno.EILSEQ: 400, errno.EIO: 500}


def expected(code: int, method: str, *, creating: bool, overwrite: bool = True) -> int:
    """The status RFC 4918 / RFC 9110 give (written out here, apart from sharefs.py)."""
    if code in (errno.ENOENT, errno.ENOTDIR):
        return 409 if creating else 404  # no parent collection (RFC 4918 §9.7.1 ...) / not found
    if code == errno.EEXIST:
        if method == "MKCOL":
            return 405  # RFC 4918 §9.3.1: MKCOL on a mapped URL
        if method in ("COPY", "MOVE") and not overwrite:
            return 412  # RFC 4918 §9.8.5, §9.9.4: Overwrite F and the destination is mapped
        return 409
    return FIXED[code]


@contextmanager
def failing(name: str, path: str, code: int, *, arg: int = 0) -> Iterator[None]:
    """``os.<name>`` raises OSError(``code``) when its argument number ``arg`` is ``path``;
    every other call goes through. (Not monkeypatch: the server thread calls it.)"""
    real: Callable[..., Any] = getattr(os, name)

    def fake(*args: Any, **kwargs: Any) -> Any:
        if len(args) > arg and isinstance(args[arg], str | Path) and os.fspath(args[arg]) == path:
            raise OSError(code, os.strerror(code), path)
        return real(*args, **kwargs)

    setattr(os, name, fake)
    try:
        yield
    finally:
        setattr(os, name, real)


LOCK_BODY = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
             b"<D:locktype><D:write/></D:locktype></D:lockinfo>")
PROPS = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>'


@pytest.fixture
def share(inst: Instance) -> Path:
    root = Path(os.path.realpath(inst.home.root / "data/files"))
    (root / "d").mkdir()
    (root / "d" / "inner.txt").write_bytes(b"inner")
    (root / "f.txt").write_bytes(b"hello")
    return root


def _cases(root: Path) -> list[tuple[str, str, str, dict[str, str], bytes, str, str, int, bool]]:
    """(label, method, path, headers, body, os function, its path, argument number, creating)."""
    dest = {"Destination": "/files/"}
    team = Path(os.path.realpath(root.parent / "team"))
    return [
        ("MKCOL", "MKCOL", "new/", {}, b"", "mkdir", str(root / "new"), 0, True),
        ("PUT", "PUT", "new.txt", {}, b"data", "replace", str(root / "new.txt"), 1, True),
        ("LOCK unmapped", "LOCK", "locked.txt", {}, LOCK_BODY, "open", str(root / "locked.txt"), 0, True),
        ("DELETE file", "DELETE", "f.txt", {}, b"", "unlink", str(root / "f.txt"), 0, False),
        ("COPY file", "COPY", "f.txt", {**dest, "Destination": "/files/c.txt"}, b"", "replace",
         str(root / "c.txt"), 1, True),
        ("COPY folder", "COPY", "d/", {**dest, "Destination": "/files/d2/"}, b"", "mkdir", str(root / "d2"), 0,
         True),
        ("MOVE file", "MOVE", "f.txt", {**dest, "Destination": "/files/m.txt"}, b"", "rename",
         str(root / "m.txt"), 1, True),
        # Across shares (copymove.py's own walk, not WsgiDAV's).
        ("COPY file across", "COPY", "f.txt", {"Destination": "/team/c.txt"}, b"", "replace",
         str(team / "c.txt"), 1, True),
        ("COPY folder across", "COPY", "d/", {"Destination": "/team/d2/"}, b"", "mkdir", str(team / "d2"), 0, True),
        ("MOVE file across", "MOVE", "f.txt", {"Destination": "/team/m.txt"}, b"", "rename", str(team / "m.txt"), 1,
         True),
    ]


def test_every_errno_of_every_method_answers_the_rfc_status(inst: Instance, share: Path, server: DavServer) -> None:
    s = session_for(inst)
    wrong = []
    for label, method, path, headers, body, func, target, arg, creating in _cases(share):
        for overwrite in (("T", "F") if method in ("COPY", "MOVE") else ("T",)):
            h = dict(headers)
            if "Destination" in h:
                h["Destination"] = server.url.rstrip("/") + h["Destination"]
                h["Overwrite"] = overwrite
            for code in ERRNOS:
                with failing(func, target, code, arg=arg):
                    r = s.request(method, server.url + "files/" + path, headers=h, data=body)
                want = expected(code, method, creating=creating, overwrite=overwrite == "T")
                if r.status_code != want:
                    wrong.append(f"{label} Overwrite={overwrite} {errno.errorcode[code]}: {r.status_code}, want {want}")
                assert not os.path.lexists(target) or label == "DELETE file", (label, code)
                assert str(share) not in r.text  # no server path in the answer
                assert sorted(p.name for p in share.iterdir()) == ["d", "f.txt"], (label, code)
                assert not any((share.parent / "team").iterdir()), (label, code)
    assert not wrong, "\n".join(wrong)


def _both_paths(monkeypatch: pytest.MonkeyPatch, call: Callable[[], requests.Response]) -> tuple[int, int]:
    fast = call().status_code
    with wsgidav_only(monkeypatch):
        full = call().status_code
    return fast, full


def test_get_and_propfind_answer_the_same_on_the_short_path_and_wsgidavs(
        inst: Instance, share: Path, server: DavServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET whose open fails, a PROPFIND Depth 1 whose folder cannot be listed and a
    PROPFIND Depth 0 whose lstat fails: each errno answers one status on both paths, the
    RFC's for a resource that is read (ENOTDIR is 404 here, not 409)."""
    s = session_for(inst)
    cases: list[tuple[str, Callable[[], requests.Response], str, str, set[int]]] = [
        ("GET file", lambda: s.get(server.url + "files/f.txt"), "open", str(share / "f.txt"), set()),
        ("PROPFIND Depth 1", lambda: s.request("PROPFIND", server.url + "files/d/", headers={"Depth": "1"},
                                               data=PROPS), "scandir", str(share / "d"), set()),
        # A failing lstat of the resource itself: a missing one is 404 on both paths.
        ("PROPFIND Depth 0", lambda: s.request("PROPFIND", server.url + "files/f.txt", headers={"Depth": "0"},
                                               data=PROPS), "lstat", str(share / "f.txt"), set()),
    ]
    wrong = []
    for label, call, func, target, _ in cases:
        for code in ERRNOS:
            with failing(func, target, code):
                fast, full = _both_paths(monkeypatch, call)
            want = expected(code, "GET" if label.startswith("GET") else "PROPFIND", creating=False)
            if not fast == full == want:
                wrong.append(f"{label} {errno.errorcode[code]}: short path {fast}, WsgiDAV {full}, want {want}")
    assert not wrong, "\n".join(wrong)
    # The twin: without a failure both paths serve.
    assert _both_paths(monkeypatch, cases[0][1]) == (200, 200)
    assert _both_paths(monkeypatch, cases[1][1]) == (207, 207)


def test_a_path_below_a_file_is_404_to_read_and_409_to_create(inst: Instance, share: Path,
                                                              server: DavServer) -> None:
    """No injection: ``/files/f.txt/x`` names nothing (a file is on the way). Reading it is
    404 (RFC 9110 §15.5.5); creating it is 409 (RFC 4918 §9.7.1 PUT, §9.3.1 MKCOL, §9.8.5
    COPY, §9.9.4 MOVE, LOCK of an unmapped URL), and nothing is created."""
    s = session_for(inst)
    url = server.url + "files/f.txt/x"
    below = {"Destination": url}
    answers = {
        "GET": s.get(url).status_code,
        "HEAD": s.head(url).status_code,
        "PROPFIND": s.request("PROPFIND", url, headers={"Depth": "0"}).status_code,
        "DELETE": s.delete(url).status_code,
        "PUT": s.put(url, data=b"x").status_code,
        "MKCOL": s.request("MKCOL", url).status_code,
        "LOCK": s.request("LOCK", url, data=LOCK_BODY).status_code,
        "COPY": s.request("COPY", server.url + "files/d/inner.txt", headers=below).status_code,
        "MOVE": s.request("MOVE", server.url + "files/d/inner.txt", headers=below).status_code,
    }
    assert answers == {"GET": 404, "HEAD": 404, "PROPFIND": 404, "DELETE": 404, "PUT": 409, "MKCOL": 409,
                       "LOCK": 409, "COPY": 409, "MOVE": 409}
    assert (share / "f.txt").read_bytes() == b"hello" and (share / "d" / "inner.txt").exists()
    # The twins: the same requests where the parent is a folder succeed.
    assert s.put(server.url + "files/d/x", data=b"x").status_code == 201
    assert s.request("MKCOL", server.url + "files/d/y").status_code == 201


def test_an_existing_name_is_405_for_mkcol_and_412_for_copy_and_move_without_overwrite(
        inst: Instance, share: Path, server: DavServer) -> None:
    """No injection: MKCOL on a folder is 405 (RFC 4918 §9.3.1); COPY and MOVE onto an
    existing file with ``Overwrite: F`` are 412 (§9.8.5, §9.9.4), within a share and
    across shares (copymove.py); with ``Overwrite: T`` they replace it (204)."""
    (inst.home.root / "data/team/t.txt").write_bytes(b"team")
    s = session_for(inst)
    assert s.request("MKCOL", server.url + "files/d/").status_code == 405
    for dest in ("files/d/inner.txt", "team/t.txt"):
        for method in ("COPY", "MOVE"):
            r = s.request(method, server.url + "files/f.txt",
                          headers={"Destination": server.url + dest, "Overwrite": "F"})
            assert r.status_code == 412, (method, dest)
    assert (share / "d" / "inner.txt").read_bytes() == b"inner" and (share / "f.txt").exists()
    r = s.request("COPY", server.url + "files/f.txt",
                  headers={"Destination": server.url + "files/d/inner.txt", "Overwrite": "T"})
    assert r.status_code == 204 and (share / "d" / "inner.txt").read_bytes() == b"hello"


def test_the_model_gives_each_errno_and_method_its_status() -> None:
    """sharefs.os_error_status for every errno × method × creating × Overwrite, against the
    RFC table above; an errno a client cannot cause is None (the server's 500)."""
    methods = ("GET", "HEAD", "PROPFIND", "PROPPATCH", "DELETE", "PUT", "MKCOL", "LOCK", "COPY", "MOVE")
    for code in ERRNOS:
        for method in methods:
            for creating in (False, True):
                for overwrite in (False, True):
                    got = os_error_status(code, method, creating=creating, overwrite=overwrite)
                    want = expected(code, method, creating=creating, overwrite=overwrite)
                    assert (got[0] if got else 500) == want, (errno.errorcode[code], method, creating, overwrite)
        # Without ``creating`` the method decides: PUT, MKCOL and LOCK create.
        for method in methods:
            got = os_error_status(code, method)
            want = expected(code, method, creating=method in ("PUT", "MKCOL", "LOCK"))
            assert (got[0] if got else 500) == want


#: Every method WsgiDAV dispatches to a share (request_server.py ``do_<METHOD>``); OPTIONS
#: is answered before (it touches no file).
DISPATCHED = ("GET", "HEAD", "PROPFIND", "PROPPATCH", "MKCOL", "DELETE", "PUT", "COPY", "MOVE", "LOCK", "UNLOCK")


def test_an_os_error_escaping_wsgidav_answers_the_same_status_as_one_fs_py_maps(
        inst: Instance, share: Path, server: DavServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError that no provider call turned into a DAVError (raised by WsgiDAV's own
    ``do_<METHOD>``, request_server.py, as conditions.PreconditionServer runs it; or by
    copymove.py for COPY and MOVE) reaches error_pages.py, which answers it from the
    same table (sharefs.os_error_status): per errno, method and ``Overwrite``. It used to
    have its own (ENOTDIR 404 for PUT, EEXIST 412 for MKCOL, EROFS and ELOOP a 500)."""
    from davserver import fs
    from davserver.conditions import PreconditionServer

    s = session_for(inst)
    url = server.url + "files/f.txt"
    wrong = []
    with wsgidav_only(monkeypatch):
        for method in DISPATCHED:
            for overwrite in (("T", "F") if method in ("COPY", "MOVE") else ("T",)):
                headers = {"Destination": server.url + "files/c.txt", "Overwrite": overwrite}
                for code in ERRNOS:
                    def fail(*args: Any, code: int = code, **kwargs: Any) -> Any:
                        raise OSError(code, os.strerror(code), str(share / "f.txt"))

                    fail.__name__ = f"do_{method}"  # fs.py dispatches by the handler's name
                    with monkeypatch.context() as m:
                        if method in ("COPY", "MOVE"):  # fs.py hands them to copymove.py, not WsgiDAV
                            m.setattr(fs, "copy_or_move", fail)
                        else:
                            m.setattr(PreconditionServer, f"do_{method}", fail)
                        r = s.request(method, url, headers=headers, data=b"")
                    want = expected(code, method, creating=method in ("PUT", "MKCOL", "LOCK"),
                                    overwrite=overwrite == "T")
                    if r.status_code != want:
                        wrong.append(f"{method} Overwrite={overwrite} {errno.errorcode[code]}: {r.status_code}, "
                                     f"want {want}")
                    assert str(share) not in r.text and os.strerror(code) not in r.text
        assert not wrong, "\n".join(wrong)
        assert (share / "f.txt").read_bytes() == b"hello", "a failed request changed the file"
        # The twin: nothing raised, each method answers as usual.
        assert s.get(url).status_code == 200 and s.head(url).status_code == 200
        assert s.request("PROPFIND", url, headers={"Depth": "0"}).status_code == 207
        assert s.request("COPY", url, headers={"Destination": server.url + "files/c.txt"}).status_code == 201
    assert (share / "f.txt").read_bytes() == b"hello" and (share / "c.txt").read_bytes() == b"hello"
