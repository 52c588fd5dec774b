"""Filesystem safety against the live server: atomic PUT and COPY, full disks and
size limits, hidden temp files, ETags, symlink and path-traversal confinement.
Every refusal has a passing twin."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import queue
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from davserver.config import load_config
from davserver.fs import TEMP_PREFIX, ShareProvider, sweep_temp_files

from .conftest import Client, Instance, client_context, session_for

SERVER_PATH_MARKERS = ("/tmp/", "/etc/", "/home/", "/root/", "/proc/")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(path.read_bytes())


def files_dir(inst: Instance) -> Path:
    return inst.home.root / "data" / "files"


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(TEMP_PREFIX + "*"))


def auth_header(client: Client) -> str:
    return "Basic " + base64.b64encode(f"{client.account}:{client.password}".encode()).decode()


def audit_records(inst: Instance) -> list[dict]:
    path = inst.home.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def put_statuses(inst: Instance, path: str) -> list[int]:
    return [r["status"] for r in audit_records(inst) if r.get("method") == "PUT" and r.get("path") == path]


@contextmanager
def tls_socket(inst: Instance, port: int, client: Client) -> Iterator[ssl.SSLSocket]:
    """A raw TLS connection, for requests a client library would not send (cut-off bodies)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    tls = client_context(inst, client).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        yield tls
    finally:
        tls.close()


def read_response(tls: ssl.SSLSocket) -> bytes:
    out = b""
    while not _complete(out):
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert m, raw[:200]
    return int(m.group(1))


def put_head(client: Client, path: str, extra: str) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth_header(client)}\r\n{extra}\r\n"
    ).encode()


def https(inst: Instance, port: int, client: Client | None = None) -> http.client.HTTPSConnection:
    ctx = client_context(inst, client if client is not None else inst.clients["alice"])
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)


def raw_request(inst: Instance, port: int, method: str, path: str, client: Client | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    """A request whose path goes on the wire exactly as written (no client-side normalisation)."""
    client = client if client is not None else inst.clients["alice"]
    conn = https(inst, port, client)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Authorization", auth_header(client))
        conn.putheader("Connection", "close")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        try:
            return r.status, r.read()
        except http.client.IncompleteRead as exc:
            # WsgiDAV answers a path that climbs above "/" with a 400 whose body it drops
            # (wsgidav_app.py:449 returns a body from inside a generator)
            return r.status, exc.partial
    finally:
        conn.close()


def no_server_path(text: str | bytes, *extra: str) -> bool:
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return not any(m in s for m in (*SERVER_PATH_MARKERS, *extra))


def propfind_names(s: requests.Session, url: str) -> list[str]:
    r = s.request("PROPFIND", url, headers={"Depth": "1"})
    assert r.status_code == 207, r.status_code
    return re.findall(r"<(?:\w+:)?href>([^<]*)</(?:\w+:)?href>", r.text)


# --- atomic PUT ----------------------------------------------------------------------


def last_put_status(inst: Instance, path: str, count: int) -> int:
    """The status the server gave the `count`-th PUT of `path` (from the audit log: a client
    that broke off cannot read the answer, and TLS cannot deliver it after an unclean EOF)."""
    assert wait_for(lambda: len(put_statuses(inst, path)) >= count), put_statuses(inst, path)
    return put_statuses(inst, path)[count - 1]


def test_put_cut_off_after_half_the_body_keeps_the_old_file(inst: Instance, server) -> None:
    folder = files_dir(inst)
    old = os.urandom(300_000)
    (folder / "doc.bin").write_bytes(old)
    new = os.urandom(1 << 20)
    alice = inst.clients["alice"]

    # the client sends headers and half the body, then drops the connection
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/doc.bin", f"Content-Length: {len(new)}\r\n") + new[: len(new) // 2])
    assert last_put_status(inst, "/files/doc.bin", 1) == 400
    assert file_sha(folder / "doc.bin") == sha(old)
    assert temp_files(folder) == []

    # a new file cut off never appears, not even empty
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/fresh.bin", f"Content-Length: {len(new)}\r\n") + new[:1000])
    assert last_put_status(inst, "/files/fresh.bin", 1) == 400
    assert not (folder / "fresh.bin").exists() and temp_files(folder) == []

    # twin: the same raw request, complete, replaces the file
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/doc.bin", f"Content-Length: {len(new)}\r\n") + new)
        assert status_of(read_response(tls)) == 204
    assert file_sha(folder / "doc.bin") == sha(new)
    # and a normal client afterwards
    r = session_for(inst).put(server.url + "files/doc.bin", data=b"after")
    assert r.status_code == 204 and (folder / "doc.bin").read_bytes() == b"after"
    assert temp_files(folder) == []


def test_chunked_put_cut_off_keeps_the_old_file(inst: Instance, server) -> None:
    folder = files_dir(inst)
    (folder / "c.txt").write_bytes(b"old content")
    alice = inst.clients["alice"]
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/c.txt", "Transfer-Encoding: chunked\r\n")
                    + b"10\r\n" + b"x" * 16 + b"\r\n5\r\nyy")
    assert 400 <= last_put_status(inst, "/files/c.txt", 1) < 500
    assert (folder / "c.txt").read_bytes() == b"old content" and temp_files(folder) == []

    # twin: a complete chunked body is stored (no length to check)
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/c.txt", "Transfer-Encoding: chunked\r\n")
                    + b"10\r\n" + b"x" * 16 + b"\r\n2\r\nyy\r\n0\r\n\r\n")
        assert status_of(read_response(tls)) == 204
    assert (folder / "c.txt").read_bytes() == b"x" * 16 + b"yy"


def test_put_without_length_or_chunking_is_an_empty_upload(inst: Instance, server) -> None:
    """RFC 9112 §6.3: no Content-Length and no Transfer-Encoding means an empty body (Finder sends these)."""
    folder = files_dir(inst)
    (folder / "full.txt").write_bytes(b"something")
    conn = https(inst, server.port)
    for path, expected in (("/files/empty.txt", 201), ("/files/full.txt", 204)):
        conn.putrequest("PUT", path, skip_accept_encoding=True)
        conn.putheader("Authorization", auth_header(inst.clients["alice"]))
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        assert r.status == expected, path
    conn.close()
    assert (folder / "empty.txt").read_bytes() == b"" and (folder / "full.txt").read_bytes() == b""
    # twin: with a body, the body is stored
    put = session_for(inst).put(server.url + "files/full.txt", data=b"back")
    assert put.status_code == 204 and (folder / "full.txt").read_bytes() == b"back"


def test_put_gives_normal_file_modes(inst: Instance, server) -> None:
    folder = files_dir(inst)
    s = session_for(inst)
    assert s.put(server.url + "files/new.txt", data=b"new").status_code == 201
    umask = os.umask(0o022)
    os.umask(umask)
    assert (folder / "new.txt").stat().st_mode & 0o7777 == 0o666 & ~umask
    (folder / "private.txt").write_bytes(b"p")
    os.chmod(folder / "private.txt", 0o640)
    assert s.put(server.url + "files/private.txt", data=b"still private").status_code == 204
    assert (folder / "private.txt").stat().st_mode & 0o7777 == 0o640
    assert (folder / "private.txt").read_bytes() == b"still private"


def test_concurrent_puts_leave_exactly_one_body(inst: Instance, server) -> None:
    folder = files_dir(inst)
    old = os.urandom(8 << 20)
    (folder / "race.bin").write_bytes(old)
    bodies = [os.urandom(8 << 20), os.urandom(8 << 20)]
    allowed = {sha(old), *(sha(b) for b in bodies)}
    results: list[int] = []
    seen: list[str] = []
    stop = threading.Event()

    def writer(body: bytes) -> None:
        results.append(session_for(inst).put(server.url + "files/race.bin", data=body).status_code)

    def reader() -> None:  # a reader sees the old file or one new file, whole
        s = session_for(inst)
        while not stop.is_set():
            seen.append(sha(s.get(server.url + "files/race.bin").content))

    threads = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    watch = threading.Thread(target=reader)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    watch.join(60)
    assert results == [204, 204]
    assert file_sha(folder / "race.bin") in {sha(b) for b in bodies}
    assert seen and set(seen) <= allowed
    assert temp_files(folder) == []


def test_get_body_matches_its_headers_when_the_file_is_replaced_meanwhile(inst: Instance) -> None:
    """The GET target is opened before its length and ETag are taken: a PUT landing between
    the headers and the body cannot mix the old headers with the new body (provider level:
    the window is too short to hit reliably over the network)."""
    provider = ShareProvider(load_config(inst.home).shares["files"])
    folder = files_dir(inst)
    (folder / "snap.txt").write_bytes(b"old body")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/snap.txt", "wsgidav.provider": provider}
    res = provider.get_resource_inst("/snap.txt", environ)
    length, etag = res.get_content_length(), res.get_etag()
    (folder / "replacement").write_bytes(b"a different, longer body")
    os.replace(folder / "replacement", folder / "snap.txt")
    with res.get_content() as f:
        assert f.read() == b"old body" and length == len(b"old body")
    # twin: a fresh request sees the new file, with a new ETag
    fresh = provider.get_resource_inst("/snap.txt", environ)
    with fresh.get_content() as f:
        assert f.read() == b"a different, longer body"
    assert fresh.get_etag() != etag and fresh.get_content_length() == len(b"a different, longer body")


# --- ETags ------------------------------------------------------------------------------


def test_etag_changes_on_every_write_even_within_one_second(inst: Instance, server) -> None:
    folder = files_dir(inst)
    s = session_for(inst)
    url = server.url + "files/e.txt"
    first = s.put(url, data=b"aaaa")
    second = s.put(url, data=b"bbbb")  # same size, same second
    assert first.headers["ETag"] != second.headers["ETag"]
    assert s.head(url).headers["ETag"] == second.headers["ETag"]
    # two in-place edits of the same inode, same size, within one second
    path = folder / "e.txt"
    tags = []
    for data in (b"cccc", b"dddd"):
        with open(path, "r+b") as f:
            f.write(data)
        tags.append(s.head(url).headers["ETag"])
    assert tags[0] != tags[1]
    assert s.put(url, data=b"eeee", headers={"If-Match": tags[0]}).status_code == 412
    # twin: an unchanged file keeps its ETag, and a matching If-Match writes
    assert s.head(url).headers["ETag"] == tags[1] == s.get(url).headers["ETag"]
    assert s.put(url, data=b"eeee", headers={"If-Match": tags[1]}).status_code == 204


# --- COPY / MOVE -------------------------------------------------------------------------


def test_copy_and_move_replace_whole_files(inst: Instance, server) -> None:
    folder = files_dir(inst)
    src = os.urandom(3 << 20)
    (folder / "src.bin").write_bytes(src)
    os.chmod(folder / "src.bin", 0o640)
    (folder / "dest.bin").write_bytes(b"old dest")
    s = session_for(inst)
    r = s.request("COPY", server.url + "files/src.bin", headers={"Destination": server.url + "files/dest.bin"})
    assert r.status_code == 204
    assert file_sha(folder / "dest.bin") == sha(src) and (folder / "dest.bin").stat().st_mode & 0o777 == 0o640
    r = s.request("COPY", server.url + "files/src.bin", headers={"Destination": server.url + "files/copy.bin"})
    assert r.status_code == 201 and file_sha(folder / "copy.bin") == sha(src)
    r = s.request("MOVE", server.url + "files/copy.bin", headers={"Destination": server.url + "files/dest.bin"})
    assert r.status_code == 204 and file_sha(folder / "dest.bin") == sha(src) and not (folder / "copy.bin").exists()
    # Overwrite: F keeps the target
    r = s.request("COPY", server.url + "files/src.bin",
                  headers={"Destination": server.url + "files/dest.bin", "Overwrite": "F"})
    assert r.status_code == 412
    assert temp_files(folder) == []


# --- temp files ---------------------------------------------------------------------------


def test_temp_files_never_show_and_are_swept(inst: Instance, server) -> None:
    folder = files_dir(inst)
    (folder / "sub").mkdir()
    (folder / "visible.txt").write_bytes(b"v")
    stale = folder / (TEMP_PREFIX + "stale1")
    fresh = folder / "sub" / (TEMP_PREFIX + "fresh1")
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"upload in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    s = session_for(inst)

    names = propfind_names(s, server.url + "files/") + propfind_names(s, server.url + "files/sub/")
    assert not any(TEMP_PREFIX in n for n in names)
    assert "/files/visible.txt" in names  # twin
    page = s.get(server.url + "files/").text
    assert TEMP_PREFIX not in page and "visible.txt" in page
    for method in ("GET", "PROPFIND", "DELETE", "HEAD", "PROPPATCH"):
        r = s.request(method, server.url + "files/" + stale.name, headers={"Depth": "0"})
        assert r.status_code == 404, method
    for method, extra in (("PUT", {}), ("MKCOL", {}),
                          ("COPY", {"Destination": server.url + "files/x.txt"}),
                          ("MOVE", {"Destination": server.url + "files/x.txt"})):
        r = s.request(method, server.url + "files/" + stale.name, headers=extra, data=b"z" if method == "PUT" else None)
        assert 400 <= r.status_code < 500, method
    for method in ("COPY", "MOVE"):
        r = s.request(method, server.url + "files/visible.txt",
                      headers={"Destination": server.url + "files/sub/" + TEMP_PREFIX + "new"})
        assert 400 <= r.status_code < 500, method
    assert stale.read_bytes() == b"half an upload" and (folder / "visible.txt").read_bytes() == b"v"
    assert not (folder / "sub" / (TEMP_PREFIX + "new")).exists()

    assert sweep_temp_files(folder) == 1  # only the stale one
    assert not stale.exists() and fresh.exists()
    assert sweep_temp_files(folder, older_than=0) == 1  # start-up: all of them
    assert temp_files(folder) == [] and (folder / "visible.txt").exists()


def test_upload_in_progress_is_invisible_and_survives_the_sweep(inst: Instance, server) -> None:
    folder = files_dir(inst)
    (folder / "big.bin").write_bytes(b"old")
    body = os.urandom(1 << 20)
    alice = inst.clients["alice"]
    with tls_socket(inst, server.port, alice) as tls:
        tls.sendall(put_head(alice, "/files/big.bin", f"Content-Length: {len(body)}\r\n") + body[: len(body) // 2])
        assert wait_for(lambda: temp_files(folder))
        s = session_for(inst)
        assert s.get(server.url + "files/big.bin").content == b"old"
        assert not any(TEMP_PREFIX in n for n in propfind_names(s, server.url + "files/"))
        assert sweep_temp_files(folder) == 0 and temp_files(folder)
        tls.sendall(body[len(body) // 2 :])
        assert status_of(read_response(tls)) == 204
    assert file_sha(folder / "big.bin") == sha(body) and temp_files(folder) == []


# --- confinement ------------------------------------------------------------------------------


@pytest.fixture
def escapes(inst: Instance, tmp_path: Path) -> dict[str, Path]:
    folder = files_dir(inst)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET outside the share\n")
    os.symlink("/etc", folder / "escape")
    os.symlink("/etc/passwd", folder / "passwd")
    os.symlink(outside, folder / "out")
    os.symlink(outside / "secret.txt", folder / "outfile")
    (folder / "normal.txt").write_text("normal\n")
    return {"outside": outside, "folder": folder}


def _snapshot(outside: Path) -> dict[str, str]:
    return {p.name: file_sha(p) for p in outside.iterdir()}


def test_symlinks_out_of_the_share_are_refused(inst: Instance, server, escapes: dict[str, Path]) -> None:
    outside, folder = escapes["outside"], escapes["folder"]
    before = _snapshot(outside)
    passwd_before = file_sha(Path("/etc/passwd"))
    s = session_for(inst)
    u = server.url + "files/"
    attempts = [
        ("GET", "passwd", {}), ("GET", "escape/passwd", {}), ("GET", "out/secret.txt", {}), ("GET", "outfile", {}),
        ("HEAD", "outfile", {}), ("GET", "escape/", {}),
        ("PROPFIND", "escape/", {"Depth": "1"}), ("PROPFIND", "out/", {"Depth": "1"}),
        ("PROPFIND", "outfile", {"Depth": "0"}),
        # writes go through symlinks into our own outside folder only, never /etc
        ("PUT", "outfile", {}), ("PUT", "out/secret.txt", {}), ("PUT", "out/new.txt", {}),
        ("MKCOL", "out/newdir", {}), ("LOCK", "out/locknull.txt", {}),
        ("PROPPATCH", "outfile", {}),
        ("COPY", "passwd", {"Destination": u + "copied.txt"}),
        ("COPY", "out/secret.txt", {"Destination": u + "copied.txt"}),
        ("COPY", "escape/", {"Destination": u + "etc-copy/"}),
        ("COPY", "normal.txt", {"Destination": u + "out/copied.txt"}),
        ("COPY", "normal.txt", {"Destination": u + "outfile"}),
        ("MOVE", "normal.txt", {"Destination": u + "out/moved.txt"}),
        ("MOVE", "normal.txt", {"Destination": u + "outfile"}),
        ("MOVE", "out/secret.txt", {"Destination": u + "stolen.txt"}),
        ("MOVE", "outfile", {"Destination": u + "stolen.txt"}),
        ("DELETE", "outfile", {}), ("DELETE", "out/secret.txt", {}), ("DELETE", "out", {}), ("DELETE", "passwd", {}),
    ]
    lock_body = (b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
                 b"<D:locktype><D:write/></D:locktype></D:lockinfo>")
    for method, path, headers in attempts:
        data = b"PWNED" if method == "PUT" else lock_body if method == "LOCK" else None
        if method == "HEAD":  # a HEAD error answer may carry a body: keep it off the shared connection
            headers = {**headers, "Connection": "close"}
        r = s.request(method, u + path, headers=headers, data=data)
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
        assert no_server_path(r.content, str(outside)), (method, path, r.text[:300])
        assert b"SECRET" not in r.content and b"root:" not in r.content
    assert _snapshot(outside) == before and sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert file_sha(Path("/etc/passwd")) == passwd_before
    for link in ("escape", "passwd", "out", "outfile"):
        assert (folder / link).is_symlink()
    assert not (folder / "copied.txt").exists() and not (folder / "stolen.txt").exists()
    assert not (folder / "etc-copy").exists()
    names = propfind_names(s, u)
    assert not any(n.rstrip("/").rsplit("/", 1)[-1] in ("escape", "passwd", "out", "outfile") for n in names)

    # twin: the normal file next to them works for every method
    assert s.get(u + "normal.txt").text == "normal\n"
    assert "/files/normal.txt" in names
    assert s.put(u + "normal.txt", data=b"changed").status_code == 204
    assert s.request("COPY", u + "normal.txt", headers={"Destination": u + "copied.txt"}).status_code == 201
    assert s.request("MOVE", u + "copied.txt", headers={"Destination": u + "moved.txt"}).status_code == 201
    assert s.delete(u + "moved.txt").status_code == 204
    assert (folder / "normal.txt").read_bytes() == b"changed"


def test_symlink_inside_the_share_is_not_served_either(inst: Instance, server) -> None:
    folder = files_dir(inst)
    (folder / "real.txt").write_text("real")
    os.symlink("real.txt", folder / "alias.txt")
    s = session_for(inst)
    r = s.get(server.url + "files/alias.txt")
    assert r.status_code == 403 and no_server_path(r.content)
    assert s.get(server.url + "files/real.txt").text == "real"  # twin


TRAVERSALS = [
    "/files/../ro/readme.txt",
    "/files/%2e%2e/ro/readme.txt",
    "/files/%2E%2E/team/t.txt",
    "/files/../team/t.txt",
    "/files/a%00b",
    "/files/%00",
    "/files/%2fetc%2fpasswd",
    "/files/..%2f..%2fetc%2fpasswd",
    "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/files/../../etc/passwd",
    "/files/./../ro/readme.txt",
]


@pytest.mark.parametrize("account", ["alice", "carol"])
def test_traversal_is_refused_never_500(inst: Instance, server, account: str) -> None:
    (inst.home.root / "data" / "team").mkdir(exist_ok=True)
    (inst.home.root / "data" / "team" / "t.txt").write_text("team only\n")
    client = inst.clients[account]
    folder = files_dir(inst)
    before = set(folder.iterdir())
    for path in TRAVERSALS:
        for method in ("GET", "PROPFIND", "PUT", "DELETE"):
            status, body = raw_request(inst, server.port, method, path, client,
                                       headers={"Depth": "0"} if method == "PROPFIND" else None,
                                       body=b"PWNED" if method == "PUT" else None)
            if method == "PUT" and status in (201, 204):
                # cheroot keeps an encoded slash as the literal text "%2F": one odd file name in the share
                assert "%2f" in path.lower(), (account, path, status)
                created = sorted(set(folder.iterdir()) - before)
                assert len(created) == 1 and "%2F" in created[0].name, (path, created)
                assert created[0].read_bytes() == b"PWNED"
                created[0].unlink()
                continue
            assert 400 <= status < 500, (account, method, path, status)
            assert b"team only" not in body and b"read only" not in body and b"root:" not in body
            assert no_server_path(body, str(inst.home.root)), (method, path, body[:300])
    assert (inst.home.root / "data" / "team" / "t.txt").read_text() == "team only\n"
    assert (inst.home.root / "data" / "ro" / "readme.txt").read_text() == "read only\n"
    assert sorted(p.name for p in (inst.home.root / "data" / "team").iterdir()) == ["t.txt"]
    # twins: the straight paths
    status, body = raw_request(inst, server.port, "GET", "/ro/readme.txt", client)
    assert (status, body) == (200, b"read only\n")
    (files_dir(inst) / "a b.txt").write_text("spaced")
    assert raw_request(inst, server.port, "GET", "/files/a%20b.txt", client) == (200, b"spaced")


def test_carol_cannot_write_into_a_share_through_dot_segments(inst: Instance, server) -> None:
    team = inst.home.root / "data" / "team"
    team.mkdir(exist_ok=True)
    carol = inst.clients["carol"]
    status, _ = raw_request(inst, server.port, "PUT", "/files/../team/planted.txt", carol, body=b"x")
    assert 400 <= status < 500 and not (team / "planted.txt").exists()
    # twin: alice (a writer of team) can, on the straight path
    status, _ = raw_request(inst, server.port, "PUT", "/team/planted.txt", inst.clients["alice"], body=b"x")
    assert status == 201 and (team / "planted.txt").read_bytes() == b"x"


# --- full disk and file size limit (a server in its own process) --------------------------------


@contextmanager
def server_process(inst: Instance, argv_prefix: list[str] | None = None,
                   preexec: Callable[[], None] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    cmd = [*(argv_prefix or []), sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root),
           "serve", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    url = None
    seen = []
    deadline = time.monotonic() + 60
    try:
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            m = re.search(r"davserver serving (https://\S+)", line)
            if m:
                url = m.group(1)
        if url is None:
            pytest.fail("server process did not start: " + "".join(seen)[-2000:])
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        pumper.join(10)
        assert proc.stderr is not None
        proc.stderr.close()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_file_size_limit_gives_413_and_keeps_the_old_file(inst: Instance) -> None:
    folder = files_dir(inst)
    old = os.urandom(100_000)
    (folder / "limit.bin").write_bytes(old)
    with server_process(inst, preexec=_limit_file_size) as (_proc, url):
        s = session_for(inst)
        r = s.put(url + "files/limit.bin", data=os.urandom(2 << 20))
        assert r.status_code == 413 and no_server_path(r.content)
        assert file_sha(folder / "limit.bin") == sha(old) and temp_files(folder) == []
        r = s.put(url + "files/new-limit.bin", data=os.urandom(2 << 20))
        assert r.status_code == 413 and not (folder / "new-limit.bin").exists() and temp_files(folder) == []
        # twin: below the limit
        small = os.urandom(512 << 10)
        assert s.put(url + "files/limit.bin", data=small).status_code == 204
        assert file_sha(folder / "limit.bin") == sha(small)


def _can_mount_tmpfs() -> str | None:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs in a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount tmpfs here: {probe.stderr.strip()}"
    return None


def test_full_disk_gives_507_and_keeps_the_old_file(inst: Instance) -> None:
    """The share is a 2 MiB tmpfs mounted only inside the server's own mount namespace;
    the test looks at it through /proc/PID/root."""
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    share = files_dir(inst)
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=2m,mode=0755 tmpfs "$0" && exec "$@"', str(share)]
    with server_process(inst, argv_prefix=wrap) as (proc, url):
        folder = Path(f"/proc/{proc.pid}/root") / share.relative_to("/")
        s = session_for(inst)
        old = os.urandom(256 << 10)
        assert s.put(url + "files/old.bin", data=old).status_code == 201
        big = os.urandom(1200 << 10)
        assert s.put(url + "files/big.bin", data=big).status_code == 201

        r = s.put(url + "files/old.bin", data=os.urandom(3 << 20))
        assert r.status_code == 507 and no_server_path(r.content)
        assert file_sha(folder / "old.bin") == sha(old) and temp_files(folder) == []
        r = s.put(url + "files/new.bin", data=os.urandom(1 << 20))
        assert r.status_code == 507 and not (folder / "new.bin").exists() and temp_files(folder) == []
        # COPY onto an existing file and onto a new name: no half target, old target kept
        r = s.request("COPY", url + "files/big.bin", headers={"Destination": url + "files/old.bin"})
        assert r.status_code == 507 and file_sha(folder / "old.bin") == sha(old)
        r = s.request("COPY", url + "files/big.bin", headers={"Destination": url + "files/copy.bin"})
        assert r.status_code == 507 and not (folder / "copy.bin").exists()
        assert temp_files(folder) == []
        assert s.get(url + "files/old.bin").content == old

        # twin: once there is room again, the same writes work
        assert s.delete(url + "files/big.bin").status_code == 204
        new = os.urandom(1 << 20)
        assert s.put(url + "files/old.bin", data=new).status_code == 204
        assert file_sha(folder / "old.bin") == sha(new)


def test_server_start_sweeps_unfinished_uploads(inst) -> None:
    from .conftest import running

    leftover = inst.home.root / "data/files/sub/.davserver-upload-abc123"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an upload")
    keep = inst.home.root / "data/files/sub/real.txt"
    keep.write_bytes(b"kept")
    with running(inst):
        assert not leftover.exists()
        assert keep.read_bytes() == b"kept"


def test_path_resolution_confines_every_kind_of_symlink(tmp_path: Path) -> None:
    """The provider's own resolution, directly: links that stay inside resolve, links out are refused."""
    from wsgidav.dav_error import DAVError

    from davserver.config import ShareConfig
    from davserver.fs import ShareProvider

    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    root = tmp_path / "share"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("x")
    os.symlink("a/b", root / "inner")  # stays inside
    os.symlink(outside, root / "out")
    os.symlink("../../out", root / "a" / "b" / "chain")  # inside link to an outside link
    os.symlink("/nonexistent-davserver/dir", root / "dangling")
    os.symlink(tmp_path / "share-sibling", root / "sibling")  # a name that starts like the root
    (tmp_path / "share-sibling").mkdir()
    link_root = tmp_path / "via-link"
    os.symlink(root, link_root)  # the share configured through a symlink
    provider = ShareProvider(ShareConfig("s", link_root))

    real = os.path.realpath(root)
    assert provider._loc_to_file_path("/") == real
    assert provider._loc_to_file_path("/a/b/f.txt") == os.path.join(real, "a/b/f.txt")
    assert provider._loc_to_file_path("//a//b/") == os.path.join(real, "a/b")
    assert provider._loc_to_file_path("/inner/f.txt") == os.path.join(real, "inner/f.txt")
    assert provider._loc_to_file_path("/missing/deeper/x") == os.path.join(real, "missing/deeper/x")
    for path in ("/out", "/out/deep", "/out/new.txt", "/a/b/chain/deep", "/inner/chain/x", "/dangling/x",
                 "/sibling/x"):
        with pytest.raises(DAVError) as refused:
            provider._loc_to_file_path(path)
        assert refused.value.value == 403, path
        assert str(outside) not in str(refused.value.context_info or ""), path
    for path in ("/a/../out", "/./a", "/a/\x00b", "/a/.davserver-upload-x"):
        with pytest.raises(DAVError) as bad:
            provider._loc_to_file_path(path)
        assert bad.value.value in (400, 403), path
