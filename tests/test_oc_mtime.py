"""X-OC-Mtime on PUT, oc:checksums and OC-Checksum (oc_compat.py), over real TLS.

What rclone's owncloud vendor relies on (backend/webdav/webdav.go, api/types.go):
a PUT sets the modification time it names and says ``X-OC-MTime: accepted``; the
ETag and Last-Modified of the answer and of both PROPFIND paths describe the file
with that time; ``oc:checksums`` carries ``SHA1:<hex> MD5:<hex>`` of the bytes held,
and nothing once the file changed by other means.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from email.utils import formatdate
from pathlib import Path

import pytest
from defusedxml import ElementTree
from hypothesis import given, settings
from hypothesis import strategies as st

from davserver.oc_compat import MAX_MTIME, read_mtime
from davserver.request_context import request_context
from davserver.server import DavServer
from tests.conftest import Instance, running, session_for
from tests.test_fastpath import _assert_same, _both

OC = "http://owncloud.org/ns"
#: The PROPFIND body rclone's owncloud vendor sends (webdav.go ``owncloudProps``, master:763).
RCLONE_PROPS = b"""<?xml version="1.0"?>
<d:propfind  xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns" xmlns:nc="http://nextcloud.org/ns">
 <d:prop>
  <d:displayname />
  <d:getlastmodified />
  <d:getcontentlength />
  <d:resourcetype />
  <oc:checksums />
  <oc:permissions />
 </d:prop>
</d:propfind>
"""
ISSUE_BODY = b"Invoice total: 1000 EUR\n"
EDITED_BODY = b"Invoice total: 9000 EUR\n"  # the same size: only mtime or checksum tell them apart
MTIME = 1_700_000_000


def files(inst: Instance) -> Path:
    return inst.home.root / "data" / "files"


def sha1(body: bytes) -> str:
    return hashlib.sha1(body, usedforsecurity=False).hexdigest()


def md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def sums(body: bytes) -> str:
    return f"SHA1:{sha1(body)} MD5:{md5(body)}"


def etag_of(path: Path) -> str:
    st_ = os.stat(path)
    return f'"{st_.st_ino:x}-{st_.st_mtime_ns:x}-{st_.st_size:x}"'


def entries(xml: str) -> dict[str, dict[str, tuple[str, str]]]:
    """href -> {local name: (status, text)}; oc:checksums' text is its oc:checksum's. Also
    checks what rclone 1.60.1 needs: a resource's first propstat is the 200 one
    (api/types.go v1.60.1 ``StatusOK`` reads the first status only)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for response in ElementTree.fromstring(xml).iter("{DAV:}response"):
        href = response.findtext("{DAV:}href") or ""
        props = out.setdefault(href, {})
        statuses = []
        for propstat in response.iter("{DAV:}propstat"):
            status = (propstat.findtext("{DAV:}status") or "").split(" ")[1]
            statuses.append(status)
            for prop in propstat.find("{DAV:}prop") or []:
                name = prop.tag.split("}")[1]
                text = prop.findtext(f"{{{OC}}}checksum") if prop.tag == f"{{{OC}}}checksums" else prop.text
                props[name] = (status, text or "")
        assert statuses[0] == "200", (href, statuses)
    return out


def both_paths(s, monkeypatch: pytest.MonkeyPatch, url: str, depth: str = "0",
               body: bytes = RCLONE_PROPS) -> dict[str, dict[str, tuple[str, str]]]:
    """The short path's answer, after checking WsgiDAV's is the same (hrefs, statuses, values)."""
    fast, full = _both(s, monkeypatch, url, depth, body)
    assert entries(fast) == entries(full)
    _assert_same(fast, full)
    return entries(fast)


def audit(inst: Instance, method: str, count: int) -> list[dict[str, object]]:
    """The audit records of ``method``, once there are ``count`` (each is written when its
    request is done, which may be just after the client has its answer)."""
    path = inst.home.root / "state" / "audit.log"
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        found = [rec for rec in records if rec["method"] == method]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --- X-OC-Mtime ----------------------------------------------------------------------


def test_put_sets_the_named_mtime_and_every_validator_agrees(inst: Instance, server: DavServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's file, created and then edited to the same size, each with its X-OC-Mtime."""
    s = session_for(inst)
    url = server.url + "files/invoice.txt"
    target = files(inst) / "invoice.txt"
    for body, mtime, status in ((ISSUE_BODY, MTIME, 201), (EDITED_BODY, MTIME + 60, 204)):
        r = s.put(url, data=body, headers={"X-OC-Mtime": str(mtime)})
        assert r.status_code == status, r.text
        assert r.headers.get("X-OC-MTime") == "accepted"
        assert os.stat(target).st_mtime_ns == mtime * 1_000_000_000
        assert r.headers["ETag"] == etag_of(target)  # computed after the time was set
        head = s.head(url)
        assert (head.headers["ETag"], head.headers["Last-Modified"]) == (r.headers["ETag"],
                                                                           formatdate(mtime, usegmt=True))
        props = both_paths(s, monkeypatch, url, body=RCLONE_PROPS.replace(
            b"<d:displayname />", b"<d:displayname /><d:getetag />"))["/files/invoice.txt"]
        assert props["getlastmodified"] == ("200", formatdate(mtime, usegmt=True))
        assert props["getetag"] == ("200", r.headers["ETag"])
        assert props["checksums"] == ("200", sums(body))
        assert props["permissions"][0] == "404"
    assert target.read_bytes() == EDITED_BODY


def test_put_without_x_oc_mtime_gets_the_time_of_the_upload(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    r = s.put(server.url + "files/plain.txt", data=b"plain")
    assert r.status_code == 201
    assert "X-OC-MTime" not in r.headers
    assert abs(os.stat(files(inst) / "plain.txt").st_mtime - time.time()) < 60


REFUSED = ["-1", "-1700000000", "1.5", "1700000000.0", "1700000000.999", "+1700000000", "abc", "1e9", "0x10",
           "", "253402300800", "99999999999999999999", "1700000000, 1700000001", "17 00", "0001700000000"]
ACCEPTED = ["0", "1", "001700000000", "1700000000", "4102444800", str(MAX_MTIME)]


def test_bad_x_oc_mtime_refuses_the_put_and_keeps_the_old_file(inst: Instance, server: DavServer) -> None:
    """Negative, fractional, signed, non-numeric, non-ASCII digits, lists, past 9999: 400
    before the body is read, the old file byte for byte and with its time, reason bad_mtime."""
    s = session_for(inst)
    target = files(inst) / "keep.txt"
    target.write_bytes(ISSUE_BODY)
    os.utime(target, (MTIME, MTIME))
    before = os.stat(target)
    url = server.url + "files/keep.txt"
    # with Arabic-Indic digits and a superscript two, which str.isdigit() takes for digits
    values: list[str | bytes] = [*REFUSED, "\u0661\u0662\u0663".encode(), "\u00b2".encode()]
    for value in values:
        r = s.put(url, data=EDITED_BODY, headers={"X-OC-Mtime": value})
        assert r.status_code == 400, (value, r.status_code)
        assert "X-OC-MTime" not in r.headers
        after = os.stat(target)
        assert target.read_bytes() == ISSUE_BODY, value
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), value
        r = s.put(server.url + "files/new-bad.txt", data=b"x", headers={"X-OC-Mtime": value})
        assert r.status_code == 400 and not (files(inst) / "new-bad.txt").exists(), value
    puts = audit(inst, "PUT", 2 * len(values))
    assert len(puts) == 2 * len(values)
    assert {(rec["status"], rec["reason"]) for rec in puts} == {(400, "bad_mtime")}


def test_every_valid_x_oc_mtime_is_accepted_as_stored(inst: Instance, server: DavServer) -> None:
    """The twin of the refusals: each valid value stores the file. ``accepted`` is said
    exactly when the filesystem holds that time (ext4 clamps past 2446)."""
    s = session_for(inst)
    for i, value in enumerate(ACCEPTED):
        url = server.url + f"files/ok{i}.txt"
        r = s.put(url, data=b"body", headers={"X-OC-Mtime": value})
        assert r.status_code == 201, (value, r.text)
        held = os.stat(files(inst) / f"ok{i}.txt").st_mtime_ns
        wanted = int(value.strip()) * 1_000_000_000
        assert (r.headers.get("X-OC-MTime") == "accepted") == (held == wanted), (value, held)
        assert r.headers["ETag"] == etag_of(files(inst) / f"ok{i}.txt")
        if int(value.strip()) < 4102444800:  # before 2100: every Linux filesystem holds it
            assert held == wanted, value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=16) | st.integers(min_value=-(10**13), max_value=10**13).map(str))
def test_x_oc_mtime_reading_is_exactly_digits_up_to_year_9999(value: str) -> None:
    """Reference reading: OWS-trimmed, 1-12 ASCII digits, at most MAX_MTIME; else DAVError 400."""
    from wsgidav.dav_error import DAVError

    text = value.strip(" \t")
    valid = 1 <= len(text) <= 12 and all(c in "0123456789" for c in text) and int(text) <= MAX_MTIME
    environ: dict[str, object] = {"HTTP_X_OC_MTIME": value}
    if valid:
        assert read_mtime(environ) == int(text)
    else:
        with pytest.raises(DAVError) as err:
            read_mtime(environ)
        assert err.value.value == 400 and request_context(environ).refusal == "bad_mtime"
    assert read_mtime({}) is None


# --- checksums -------------------------------------------------------------------------


def test_checksums_after_put_on_both_paths_and_in_a_listing(inst: Instance, server: DavServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s = session_for(inst)
    (files(inst) / "dir").mkdir()
    bodies = {"a.txt": ISSUE_BODY, "big.bin": os.urandom(3 << 20), "empty": b""}
    for name, body in bodies.items():
        assert s.put(server.url + f"files/dir/{name}", data=body).status_code == 201
    (files(inst) / "dir" / "on-disk.txt").write_bytes(b"made on disk")  # never uploaded: no checksum
    listing = both_paths(s, monkeypatch, server.url + "files/dir/", "1")
    for name, body in bodies.items():
        assert listing[f"/files/dir/{name}"]["checksums"] == ("200", sums(body)), name
    assert listing["/files/dir/on-disk.txt"]["checksums"][0] == "404"
    assert listing["/files/dir/"]["checksums"][0] == "404"  # a folder has none
    # allprop does not carry it (ownCloud lists it only when asked), on either path
    allprop = both_paths(s, monkeypatch, server.url + "files/dir/", "1", b"")
    assert all("checksums" not in props for props in allprop.values())


def test_a_file_changed_on_disk_has_no_checksum_until_uploaded_again(inst: Instance, server: DavServer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The stamp (size, mtime_ns, inode) catches an in-place same-size edit, and a replacement
    by rename that even restores the old size and mtime (a new inode)."""
    s = session_for(inst)
    target = files(inst) / "doc.txt"
    url = server.url + "files/doc.txt"
    assert s.put(url, data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 201
    assert both_paths(s, monkeypatch, url)["/files/doc.txt"]["checksums"] == ("200", sums(ISSUE_BODY))
    with open(target, "r+b") as f:  # in place, same size
        f.write(b"X")
    assert both_paths(s, monkeypatch, url)["/files/doc.txt"]["checksums"][0] == "404"

    assert s.put(url, data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 204
    assert both_paths(s, monkeypatch, url)["/files/doc.txt"]["checksums"] == ("200", sums(ISSUE_BODY))
    twin = target.with_name("twin.tmp")
    twin.write_bytes(EDITED_BODY)
    os.setxattr(twin, "user.davserver.checksums", os.getxattr(target, "user.davserver.checksums"))  # cp -a
    os.utime(twin, ns=(MTIME * 10**9, MTIME * 10**9))
    os.replace(twin, target)  # same size, same mtime, the old xattr: only the inode differs
    assert both_paths(s, monkeypatch, url)["/files/doc.txt"]["checksums"][0] == "404"
    # also a stamp from elsewhere with the right numbers is only believed as written by us
    os.setxattr(target, "user.davserver.checksums", b"garbage")
    assert both_paths(s, monkeypatch, url)["/files/doc.txt"]["checksums"][0] == "404"


def test_copy_computes_fresh_checksums_and_move_keeps_them(inst: Instance, server: DavServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s = session_for(inst)
    u = server.url + "files/"
    assert s.put(u + "src.txt", data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 201
    assert s.put(u + "old.txt", data=b"an older, longer file").status_code == 201
    for dest in ("copy.txt", "old.txt"):  # a new name (WsgiDAV's copy) and over a file (ours)
        r = s.request("COPY", u + "src.txt", headers={"Destination": u + dest})
        assert r.status_code in (201, 204), r.text
        assert os.stat(files(inst) / dest).st_mtime_ns == MTIME * 10**9
        assert both_paths(s, monkeypatch, u + dest)[f"/files/{dest}"]["checksums"] == ("200", sums(ISSUE_BODY))
    (files(inst) / "d").mkdir()
    assert s.request("COPY", u + "src.txt", headers={"Destination": u + "d/in.txt"}).status_code == 201
    assert s.request("COPY", u + "d/", headers={"Destination": u + "d2/"}).status_code == 201  # a folder's copy
    assert s.request("MOVE", u + "copy.txt", headers={"Destination": u + "d/moved.txt"}).status_code == 201
    listing = both_paths(s, monkeypatch, u + "d/", "1")
    assert listing["/files/d/moved.txt"]["checksums"] == ("200", sums(ISSUE_BODY))
    assert both_paths(s, monkeypatch, u + "d2/in.txt")["/files/d2/in.txt"]["checksums"] == ("200", sums(ISSUE_BODY))


#: rclone's PROPPATCH bodies (webdav.go ``owncloudPropset`` and ``owncloudPropsetWithChecksum``,
#: master:1448-1469), sent by ``SetModTime`` since 1.61.
RCLONE_PROPSET = """<?xml version="1.0" encoding="utf-8" ?>
<D:propertyupdate xmlns:D="DAV:">
 <D:set>
  <D:prop>
   <lastmodified xmlns="DAV:">%s</lastmodified>
  </D:prop>
 </D:set>
</D:propertyupdate>
"""
RCLONE_PROPSET_WITH_CHECKSUM = """<?xml version="1.0" encoding="utf-8" ?>
<D:propertyupdate xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns">
 <D:set>
  <D:prop>
   <lastmodified xmlns="DAV:">%s</lastmodified>
   <oc:checksums>
\t<oc:checksum>%s</oc:checksum>
   </oc:checksums>
  </D:prop>
 </D:set>
</D:propertyupdate>
"""


def statuses(xml: str) -> dict[str, str]:
    """PROPPATCH answer: property local name -> status code."""
    out = {}
    for propstat in ElementTree.fromstring(xml).iter("{DAV:}propstat"):
        code = (propstat.findtext("{DAV:}status") or "").split(" ")[1]
        for prop in propstat.find("{DAV:}prop") or []:
            out[prop.tag.split("}")[1]] = code
    return out


def test_rclone_proppatch_sets_the_time_and_keeps_the_checksums(inst: Instance, server: DavServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """rclone ≥ 1.61 after ``touch``: the time is set, the checksums carried over to it."""
    s = session_for(inst)
    url = server.url + "files/p.txt"
    target = files(inst) / "p.txt"
    assert s.put(url, data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 201
    props = RCLONE_PROPS.replace(b"<d:displayname />", b"<d:getetag />")
    for when, body in ((MTIME + 100, RCLONE_PROPSET_WITH_CHECKSUM % (MTIME + 100, "SHA1:" + sha1(ISSUE_BODY))),
                       (MTIME + 200, RCLONE_PROPSET % (MTIME + 200)),
                       (MTIME + 300, RCLONE_PROPSET_WITH_CHECKSUM % (MTIME + 300, "MD5:" + md5(ISSUE_BODY)))):
        r = s.request("PROPPATCH", url, data=body.encode())
        assert r.status_code == 207 and set(statuses(r.text).values()) == {"200"}, r.text
        assert os.stat(target).st_mtime_ns == when * 10**9
        got = both_paths(s, monkeypatch, url, body=props)["/files/p.txt"]
        assert got["getlastmodified"] == ("200", formatdate(when, usegmt=True))
        assert got["getetag"] == ("200", etag_of(target))
        assert got["checksums"] == ("200", sums(ISSUE_BODY))

    before = os.stat(target).st_mtime_ns
    wrong = RCLONE_PROPSET_WITH_CHECKSUM % (MTIME, "SHA1:" + sha1(EDITED_BODY))
    r = s.request("PROPPATCH", url, data=wrong.encode())
    assert statuses(r.text) == {"lastmodified": "424", "checksums": "409"}, r.text
    for bad in ("-5", "1.5", "abc", "", "253402300800"):
        r = s.request("PROPPATCH", url, data=(RCLONE_PROPSET % bad).encode())
        assert statuses(r.text) == {"lastmodified": "409"}, (bad, r.text)
    assert os.stat(target).st_mtime_ns == before
    remove = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns">'
              b"<D:remove><D:prop><oc:checksums/></D:prop></D:remove></D:propertyupdate>")
    assert statuses(s.request("PROPPATCH", url, data=remove).text) == {"checksums": "403"}
    assert entries(s.request("PROPFIND", url, headers={"Depth": "0"}, data=RCLONE_PROPS).text)[
        "/files/p.txt"]["checksums"] == ("200", sums(ISSUE_BODY))
    # the twin: a dead property of another name is stored and answered as usual
    other = wrong.replace("oc:checksums", "oc:other").replace(f'<lastmodified xmlns="DAV:">{MTIME}</lastmodified>',
                                                              "")
    assert statuses(s.request("PROPPATCH", url, data=other.encode()).text) == {"other": "200"}
    # a file changed on disk: its checksums cannot be checked, so the PROPPATCH goes through
    # and none are carried over
    target.write_bytes(EDITED_BODY)
    r = s.request("PROPPATCH", url, data=wrong.encode())
    assert set(statuses(r.text).values()) == {"200"}, r.text
    assert os.stat(target).st_mtime_ns == MTIME * 10**9
    assert both_paths(s, monkeypatch, url)["/files/p.txt"]["checksums"][0] == "404"


# --- OC-Checksum ---------------------------------------------------------------------


def test_oc_checksum_mismatch_refuses_the_upload_and_keeps_the_old_file(inst: Instance, server: DavServer) -> None:
    s = session_for(inst)
    url = server.url + "files/v.txt"
    target = files(inst) / "v.txt"
    assert s.put(url, data=ISSUE_BODY).status_code == 201
    before = os.stat(target)
    wrong = {
        "SHA1": sha1(ISSUE_BODY),  # the old body's, not this one's
        "MD5": md5(ISSUE_BODY),
        "ADLER32": f"{zlib.adler32(ISSUE_BODY):08x}",
        "sha1": "zz",
    }
    for kind, digest in wrong.items():
        r = s.put(url, data=EDITED_BODY, headers={"OC-Checksum": f"{kind}:{digest}",
                                                  "X-OC-Mtime": str(MTIME)})
        assert r.status_code == 400, (kind, r.status_code)
        assert target.read_bytes() == ISSUE_BODY and os.stat(target).st_ino == before.st_ino
        assert not [p for p in files(inst).iterdir() if p.name.startswith(".davserver-upload-")]
        r = s.put(server.url + "files/v-new.txt", data=EDITED_BODY, headers={"OC-Checksum": f"{kind}:{digest}"})
        assert r.status_code == 400 and not (files(inst) / "v-new.txt").exists()
    puts = audit(inst, "PUT", 9)
    assert [(rec["status"], rec["reason"]) for rec in puts[1:]] == [(400, "checksum_mismatch")] * 8
    right = {
        "SHA1": sha1(EDITED_BODY).upper(),
        "MD5": md5(EDITED_BODY),
        "ADLER32": f"{zlib.adler32(EDITED_BODY):08x}",
        "CRC32": "deadbeef",  # a type we do not compute: ignored
    }
    for kind, digest in right.items():
        r = s.put(url, data=EDITED_BODY, headers={"OC-Checksum": f"{kind}:{digest}"})
        assert r.status_code == 204, (kind, r.text)
        assert target.read_bytes() == EDITED_BODY
    chunked = s.put(url, data=iter([EDITED_BODY[:5], EDITED_BODY[5:]]),
                    headers={"OC-Checksum": "SHA1:" + sha1(EDITED_BODY)})
    assert chunked.status_code == 204


def test_checksums_off_hashes_nothing_and_answers_none(inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """``properties.checksums: false``: no xattr, oc:checksums 404 on both paths; OC-Checksum
    is still verified (it costs only the client's one algorithm)."""
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + "properties: {checksums: false}\n")
    with running(inst) as srv:
        s = session_for(inst)
        url = srv.url + "files/off.txt"
        assert s.put(url, data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 201
        with pytest.raises(OSError):
            os.getxattr(files(inst) / "off.txt", "user.davserver.checksums")
        assert both_paths(s, monkeypatch, url)["/files/off.txt"]["checksums"][0] == "404"
        r = s.put(url, data=EDITED_BODY, headers={"OC-Checksum": "SHA1:" + sha1(ISSUE_BODY)})
        assert r.status_code == 400
        r = s.put(url, data=EDITED_BODY, headers={"OC-Checksum": "SHA1:" + sha1(EDITED_BODY)})
        assert r.status_code == 204


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200_000), max_size=12), st.binary(min_size=1, max_size=64))
def test_digests_of_any_split_are_the_whole_bodys(sizes: list[int], seed: bytes) -> None:
    """Blocks small and large (MD5 of those over 64 KiB is computed on another thread), in
    any order of sizes: the digests are those of the whole body, and OC-Checksum of each
    type is checked against them."""
    from davserver.oc_compat import Digests, Expected

    body = (seed * (sum(sizes) // len(seed) + 1))[: sum(sizes)]
    blocks, at = [], 0
    for n in sizes:
        blocks.append(body[at:at + n])
        at += n
    for expected in (None, Expected("md5", md5(body)), Expected("sha1", sha1(body)),
                     Expected("adler32", f"{zlib.adler32(body):08x}")):
        d = Digests(keep=expected is None, expected=expected)
        for block in blocks:
            d.update(block)
        d.check(None)
        if expected is None:
            assert d.value() == sums(body)
    wrong = Digests(keep=True, expected=Expected("md5", md5(body + b"x")))
    for block in blocks:
        wrong.update(block)
    with pytest.raises(Exception, match="checksum"):
        wrong.check(None)
