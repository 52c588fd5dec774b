"""Request sequences of the clients that cannot run here, replayed as they send them:
Windows' WebDAV mini-redirector, macOS Finder (WebDAVFS) and Cyberduck. Each step asserts
the status the real client needs to carry on."""

from __future__ import annotations

import base64
import re
import socket
import ssl

import requests

from davserver.server import DavServer

from .conftest import Instance, client_context, session_for

WINDOWS = "Microsoft-WebDAV-MiniRedir/10.0.19045"
FINDER = "WebDAVFS/3.0.0 (03008000) Darwin/22.1.0 (x86_64)"
CYBERDUCK = "Cyberduck/8.7.0.40629 (Mac OS X/13.0) (x86_64)"

LOCKINFO = (b'<?xml version="1.0" encoding="utf-8" ?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner><D:href>{owner}</D:href></D:owner>"
            b"</D:lockinfo>")
WIN32_PROPS = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" '
    b'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    b"<Z:Win32CreationTime>Fri, 27 Nov 2026 10:00:00 GMT</Z:Win32CreationTime>"
    b"<Z:Win32LastAccessTime>Fri, 27 Nov 2026 10:00:00 GMT</Z:Win32LastAccessTime>"
    b"<Z:Win32LastModifiedTime>Fri, 27 Nov 2026 10:00:00 GMT</Z:Win32LastModifiedTime>"
    b"<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
    b"</D:prop></D:set></D:propertyupdate>"
)


def client(inst: Instance, agent: str, *, credentials: bool = True) -> requests.Session:
    s = session_for(inst)
    if not credentials:
        s.auth = None
    s.headers["User-Agent"] = agent
    return s


def test_windows_mini_redirector_maps_a_drive_and_saves_a_file(inst: Instance, server: DavServer) -> None:
    url = server.url
    anon = client(inst, WINDOWS, credentials=False)
    r = anon.options(url)  # Windows probes before it has credentials and gives up on a 401 here
    assert r.status_code == 200 and r.headers["MS-Author-Via"] == "DAV" and "1" in r.headers["DAV"]
    r = anon.options(url + "files/")
    assert r.status_code == 200 and r.headers["DAV"].replace(" ", "").startswith("1,2")
    r = anon.request("PROPFIND", url, headers={"Depth": "0"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    win = client(inst, WINDOWS)
    assert win.request("PROPFIND", url, headers={"Depth": "0"}).status_code == 207
    r = win.request("PROPFIND", url, headers={"Depth": "1"})
    assert r.status_code == 207 and "/files/" in r.text
    assert win.request("PROPFIND", url + "files", headers={"Depth": "1"}).status_code == 207
    doc = url + "files/Report.docx"
    r = win.request("LOCK", doc, data=LOCKINFO.replace(b"{owner}", b"DOMAIN\\alice"),
                    headers={"Depth": "0", "Timeout": "Second-3600", "Content-Type": "text/xml"})
    assert r.status_code in (200, 201), r.text
    token = r.headers["Lock-Token"].strip("<>")
    assert win.put(doc, data=b"").status_code == 423, "locked against writers without the token"
    r = win.put(doc, data=b"PK\x03\x04 document", headers={"If": f"(<{token}>)"})
    assert r.status_code in (200, 201, 204)
    r = win.request("PROPPATCH", doc, data=WIN32_PROPS, headers={"If": f"(<{token}>)", "Content-Type": "text/xml"})
    assert r.status_code == 207 and "200 OK" in r.text and "403" not in r.text and "409" not in r.text
    assert win.request("UNLOCK", doc, headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert win.get(doc).content == b"PK\x03\x04 document"
    r = win.request("MOVE", doc, headers={"Destination": url + "files/Final.docx", "Overwrite": "F"})
    assert r.status_code in (201, 204)
    assert win.delete(url + "files/Final.docx").status_code == 204


def test_finder_mounts_read_write_and_writes_chunked(inst: Instance, server: DavServer) -> None:
    url = server.url
    finder = client(inst, FINDER)
    r = finder.options(url + "files/")
    assert "2" in r.headers["DAV"], "Finder mounts read-only without class 2"
    assert finder.request("PROPFIND", url + "files/", headers={"Depth": "1"}).status_code == 207
    target = url + "files/Notes.txt"
    r = finder.request("LOCK", target, data=LOCKINFO.replace(b"{owner}", b"http://www.apple.com/webdav_fs/"),
                       headers={"Depth": "0", "Timeout": "Second-600", "Content-Type": "text/xml"})
    assert r.status_code in (200, 201)
    token = r.headers["Lock-Token"].strip("<>")
    body = [b"first line\n", b"x" * 100_000, b"\nlast line\n"]
    r = finder.put(target, data=iter(body), headers={"If": f"(<{token}>)"})  # iterator: chunked encoding
    assert r.status_code in (200, 201, 204)
    assert (inst.home.root / "data/files/Notes.txt").read_bytes() == b"".join(body)
    for junk in ("._Notes.txt", ".DS_Store"):
        assert finder.put(url + "files/" + junk, data=b"\0\5\26\7").status_code in (201, 204)
    r = finder.request("LOCK", target, headers={"If": f"(<{token}>)", "Timeout": "Second-600"})
    assert r.status_code == 200, "lock refresh"
    assert finder.request("UNLOCK", target, headers={"Lock-Token": f"<{token}>"}).status_code == 204
    empty = finder.put(url + "files/empty.txt", data=b"", headers={"Content-Length": "0"})
    assert empty.status_code in (201, 204) and (inst.home.root / "data/files/empty.txt").read_bytes() == b""


def test_finder_empty_put_without_length(inst: Instance, server: DavServer) -> None:
    """Finder sends PUTs for empty files with neither Content-Length nor a chunked body."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = client_context(inst, inst.clients["alice"]).wrap_socket(sock, server_hostname="localhost")
    token = base64.b64encode(b"alice:alice-secret-pw").decode()
    tls.sendall(f"PUT /files/new-empty HTTP/1.1\r\nHost: x\r\nUser-Agent: {FINDER}\r\n"
                f"Authorization: Basic {token}\r\n\r\n".encode())
    head = tls.recv(4096)
    tls.close()
    assert re.match(rb"HTTP/1.1 20[14]", head), head[:80]
    assert (inst.home.root / "data/files/new-empty").read_bytes() == b""


def test_cyberduck_upload_resume_and_organise(inst: Instance, server: DavServer) -> None:
    url = server.url + "files/"
    duck = client(inst, CYBERDUCK)
    assert duck.request("PROPFIND", url, headers={"Depth": "1"}).status_code == 207
    assert duck.request("MKCOL", url + "Photos").status_code == 201
    data = bytes(range(256)) * 4000
    r = duck.put(url + "Photos/img.raw", data=data, headers={"Expect": "100-continue"})
    assert r.status_code in (200, 201, 204)
    r = duck.get(url + "Photos/img.raw", headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert duck.head(url + "Photos/img.raw").headers["Content-Length"] == str(len(data))
    r = duck.request("COPY", url + "Photos/img.raw", headers={"Destination": url + "Photos/copy.raw"})
    assert r.status_code == 201
    r = duck.request("MOVE", url + "Photos", headers={"Destination": url + "Archive"})
    assert r.status_code == 201
    assert duck.get(url + "Archive/copy.raw").content == data
    assert duck.delete(url + "Archive").status_code == 204
    assert not (inst.home.root / "data/files/Archive").exists()


def test_replays_without_a_certificate_get_no_http_at_all(inst: Instance, server: DavServer) -> None:
    s = session_for(inst, None)
    s.headers["User-Agent"] = WINDOWS
    try:
        s.options(server.url)
    except (requests.exceptions.SSLError, requests.exceptions.ConnectionError, ssl.SSLError):
        pass
    else:
        raise AssertionError("the handshake should have failed without a client certificate")


def test_finder_clutter_can_be_hidden_or_refused_per_share(inst: Instance) -> None:
    import yaml

    from .conftest import running

    raw = yaml.safe_load(inst.home.config_file.read_text())
    for name, mode in (("hidden", "hide"), ("strict", "refuse")):
        raw["shares"][name] = {"path": f"data/{name}", "writers": ["*"], "macos_clutter": mode}
        (inst.home.root / "data" / name).mkdir()
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    with running(inst) as server:
        finder = client(inst, FINDER)
        for share in ("files", "hidden"):
            for junk in ("._Notes.txt", ".DS_Store"):
                assert finder.put(server.url + f"{share}/{junk}", data=b"meta").status_code in (201, 204)
        assert finder.put(server.url + "hidden/Notes.txt", data=b"text").status_code in (201, 204)
        listing = finder.request("PROPFIND", server.url + "hidden/", headers={"Depth": "1"}).text
        assert "Notes.txt" in listing and "._Notes.txt" not in listing and ".DS_Store" not in listing
        assert finder.get(server.url + "hidden/._Notes.txt").content == b"meta", "hidden, still there"
        assert "._Notes.txt" in finder.request("PROPFIND", server.url + "files/", headers={"Depth": "1"}).text
        assert finder.put(server.url + "strict/._Notes.txt", data=b"meta").status_code == 403
        assert finder.put(server.url + "strict/.DS_Store", data=b"meta").status_code == 403
        assert finder.put(server.url + "strict/Notes.txt", data=b"text").status_code in (201, 204)
        r = finder.request("COPY", server.url + "files/._Notes.txt", headers={"Destination": server.url + "strict/._x"})
        assert r.status_code == 403
        assert not (inst.home.root / "data/strict/._Notes.txt").exists()
