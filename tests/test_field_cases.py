"""The field cases (`../shared/cases/NN-*.py`: replays of public bug reports) as suite tests.

Map (case NN -> file::test):

01 -> test_field_cases.py::test_case_01_a_literal_percent_is_decoded_once
02 -> test_field_cases.py::test_case_02_plus_and_tilde_are_ordinary_path_characters
03 -> test_hrefs.py::test_case_03_names_get_the_same_valid_hrefs_on_every_path (hrefs on every path, GET of each)
03 -> test_hrefs.py::test_listed_names_have_valid_hrefs_on_both_paths (the kind, property test)
03 -> test_field_cases.py::test_case_03_uploaded_names_list_plain_displaynames_and_java_parses_the_hrefs
      (names uploaded over HTTP, plain displaynames, java.net.URI)
04 -> test_field_cases.py::test_case_04_hrefs_of_names_with_parentheses_match_the_request
05 -> test_field_cases.py::test_case_05_explorer_folder_renames_to_names_with_space_amp_percent_hash
06 -> test_request_target.py::test_rename_to_an_encoded_question_mark_creates_exactly_that_name
      (report%3Fv2.txt beside 'report', a folder to Projects%3Bold)
06 -> test_field_cases.py::test_case_06_encoded_question_mark_and_semicolon_in_destination
      (folder MOVE to dir%3F1, COPY to what%3F.txt, MOVE to minutes%3B%20draft.txt)
08 -> test_ranges.py::test_the_case_08_ranges_on_both_paths (every range of the case, HEAD with Range)
08 -> test_ranges.py::test_ranges_on_one_connection_reassemble_the_file (Finder's parallel ranges)
08 -> test_field_cases.py::test_case_08_an_empty_file_is_200_with_length_0
09 -> test_field_cases.py::test_case_09_if_range_compares_strongly_and_by_exact_date
10 -> test_conditionals.py::test_case_10_a_304_carries_the_validators_and_if_modified_since_equal_is_not_modified
11 -> test_conditionals.py::test_case_11_conditional_puts_on_an_existing_file
11 -> test_conditionals.py::test_case_11_if_match_star_or_an_unknown_token_on_a_missing_name_creates_nothing
12 -> test_conditionals.py::test_case_12_getetag_equals_the_etag_header_on_both_paths
13 -> test_field_cases.py::test_case_13_lock_of_an_unmapped_name_creates_an_empty_locked_file
14 -> test_field_cases.py::test_case_14_a_lock_is_passed_only_in_the_if_header
15 -> test_framing.py::test_live_framing_variants_are_refused_closed_and_audited (variants A-E and more)
15 -> test_framing.py::test_live_well_formed_twins_are_served_on_one_connection (the twins)
16 -> test_field_cases.py::test_case_16_chunked_upload_variants_arrive_intact
17 -> test_early_body.py::test_http_client_receives_the_401_of_a_refused_8_mib_upload (http.client)
17 -> test_early_body.py::test_no_100_continue_for_a_refused_upload (what is answered to Expect)
17 -> test_field_cases.py::test_case_17_curl_sees_the_401_of_a_refused_upload (curl)
18 -> test_field_cases.py::test_case_18_a_5_gib_file_has_exact_lengths_and_ranges (sparse file)
18 -> test_field_cases.py::test_case_18_a_5_gb_upload_is_accepted_up_front (100 Continue, nothing streamed)
19 -> test_early_body.py::test_every_early_answer_leaves_the_body_unread
      (409, 423, 412, OPTIONS and GET with a body; memory)
19 -> test_field_cases.py::test_case_19_a_request_after_a_cut_off_upload_is_answered_promptly
20 -> test_propfind_depth.py::test_infinity_on_a_file_is_depth_0
20 -> test_propfind_depth.py::test_infinity_on_a_collection_is_still_refused
21 -> test_field_cases.py::test_case_21_hostile_names_are_escaped_in_the_listing
21 -> test_field_cases.py::test_case_21_a_name_cannot_contain_an_encoded_slash
      (the case's two names with '/' are refused 400 by design)
23 -> test_field_cases.py::test_case_23_getlastmodified_is_protected_and_win32_times_are_kept
24 -> test_field_cases.py::test_case_24_relative_and_case_varied_destinations_work_foreign_ones_do_not
25 -> test_field_cases.py::test_case_25_names_over_255_bytes_are_refused_with_a_clear_4xx
26 -> test_field_cases.py::test_case_26_head_get_and_propfind_agree_on_length_and_type

(There are no cases 07 and 22.) Each case is asserted with the right value and a twin for the
normal case. Where another test file already asserts checks of a case, the map points there and
this file adds only what was missing. The case scripts stay out of the repository: they are
evidence, not the suite.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import requests
from defusedxml import ElementTree

from davserver.server import DavServer

from .conftest import PROMPT_SECONDS, Instance, client_context, session_for

LOCKINFO = (b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
            b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner><D:href>office-user</D:href></D:owner>"
            b"</D:lockinfo>")
PROPNAME = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


def q(name: str) -> str:
    """One path segment percent-encoded as a careful client does (the cases' `q`)."""
    return quote(name, safe="")


def work(inst: Instance, server: DavServer, name: str = "w") -> tuple[requests.Session, str, Path]:
    """alice's session, the URL of a fresh folder in `files` (with its slash) and the folder on disk."""
    disk = inst.home.root / "data/files" / name
    disk.mkdir()
    return session_for(inst), server.url + f"files/{name}/", disk


def responses(xml: bytes) -> dict[str, dict[str, str | None]]:
    """href -> {displayname, getcontentlength, getcontenttype, getetag} of a multistatus."""
    out: dict[str, dict[str, str | None]] = {}
    for resp in ElementTree.fromstring(xml).iter("{DAV:}response"):
        out[resp.findtext("{DAV:}href") or ""] = {
            p: resp.findtext(f".//{{DAV:}}{p}")
            for p in ("displayname", "getcontentlength", "getcontenttype", "getetag")
        }
    return out


def tls_to(inst: Instance, server: DavServer, timeout: float = 10) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return client_context(inst, inst.clients["alice"]).wrap_socket(sock, server_hostname="127.0.0.1")


def basic(inst: Instance, password: str | None = None) -> str:
    import base64

    pw = inst.clients["alice"].password if password is None else password
    return "Basic " + base64.b64encode(f"alice:{pw}".encode()).decode()


# --- 01 ---------------------------------------------------------------------------------


def test_case_01_a_literal_percent_is_decoded_once(inst: Instance, server: DavServer) -> None:
    """Case 01 (owncloud/core#17771: "%25" in a name stored as "%"): a name is decoded once,
    stored under its exact name, listed with the href that encodes it again, and fetched."""
    s, u, disk = work(inst, server)
    names = ["chart_%25_of_GDP.png", "100% sure.txt", "%41%.txt", "plain.txt"]  # the last: the twin
    for i, name in enumerate(names):
        assert s.put(u + q(name), data=f"content {i}\n".encode()).status_code == 201, name
    assert sorted(os.listdir(disk)) == sorted(names)
    listed = responses(s.request("PROPFIND", u, headers={"Depth": "1"}).content)
    assert sorted(listed) == sorted(["/files/w/"] + ["/files/w/" + q(n) for n in names])
    for i, name in enumerate(names):
        r = s.get(server.url.rstrip("/") + "/files/w/" + q(name))
        assert (r.status_code, r.content) == (200, f"content {i}\n".encode()), name
    assert s.get(u + "%41.txt").status_code == 404  # "%2541" is not "%41" decoded twice ("A")


# --- 02 ---------------------------------------------------------------------------------


def test_case_02_plus_and_tilde_are_ordinary_path_characters(inst: Instance, server: DavServer) -> None:
    """Case 02 (sabre-io/dav#230, #274; saguiitay/WebDAVClient#18): '+' in a path is not a space;
    raw and %2B name the same file, in request paths and in MOVE/COPY Destination."""
    s, u, disk = work(inst, server)
    host = server.url.rstrip("/")
    assert s.put(u + "Test%20+%20Test.txt", data=b"plus raw\n").status_code == 201
    assert s.put(u + "a%2Bb.txt", data=b"plus encoded\n").status_code == 201
    assert sorted(os.listdir(disk)) == ["Test + Test.txt", "a+b.txt"]
    assert s.get(u + "a+b.txt").content == b"plus encoded\n"
    assert s.get(u + "Test%20%2B%20Test.txt").content == b"plus raw\n"
    assert s.get(u + "Test%20%20%20Test.txt").status_code == 404  # the twin: a space is another name
    assert s.put(u + "x+y~z.txt", data=b"move me\n").status_code == 201
    r = s.request("MOVE", u + "x+y~z.txt", headers={"Destination": f"{host}/files/w/moved+1~.txt", "Overwrite": "F"})
    assert r.status_code == 201
    assert (disk / "moved+1~.txt").read_bytes() == b"move me\n" and not (disk / "x+y~z.txt").exists()
    r = s.request("COPY", u + q("moved+1~.txt"), headers={"Destination": f"{host}/files/w/copy%2B2.txt"})
    assert r.status_code == 201 and (disk / "copy+2.txt").read_bytes() == b"move me\n"
    listed = responses(s.request("PROPFIND", u, headers={"Depth": "1"}).content)
    hrefs = ["/files/w/Test%20%2B%20Test.txt", "/files/w/a%2Bb.txt", "/files/w/copy%2B2.txt", "/files/w/moved%2B1~.txt"]
    assert sorted(listed) == ["/files/w/"] + hrefs
    for href in hrefs:
        assert s.get(host + href).status_code == 200, href


# --- 03 ---------------------------------------------------------------------------------

CASE_03 = ["t #:?3.txt", "a&b <c> 'd' \"e\".txt", "semi;colon=eq,comma@at$.txt", "Grüße №5 日本.txt",
           "[brackets] {braces} ^caret` |pipe\\.txt", "plain-name.txt"]  # the last: the twin
URI_ILLEGAL = set(' #?"<>\\^`{|}[]') | {chr(i) for i in range(0x20)} | {chr(0x7F)}


def test_case_03_uploaded_names_list_plain_displaynames_and_java_parses_the_hrefs(
        inst: Instance, server: DavServer) -> None:
    """Case 03 (arut/nginx-dav-ext-module#6, #14, #44; iterate-ch/cyberduck#13864;
    opencb/opencga#716): names uploaded over HTTP come back in every PROPFIND form with a
    percent-encoded href (RFC 4918 §8.3.1) that fetches the file, and a plain-text
    displayname (§15.2); java.net.URI (Cyberduck, sardine) accepts every href."""
    s, u, _ = work(inst, server)
    for name in CASE_03:
        assert s.put(u + q(name), data=name.encode()).status_code == 201, name
    every: list[str] = []
    for body in (None, ALLPROP, PROPNAME):
        r = s.request("PROPFIND", u, headers={"Depth": "1"}, data=body)
        assert r.status_code == 207
        listed = responses(r.content)
        every += listed
        by_name = {unquote(h.rsplit("/", 1)[-1]): (h, p) for h, p in listed.items() if not h.endswith("/")}
        assert sorted(by_name) == sorted(CASE_03), body
        for name, (href, props) in by_name.items():
            assert not {ch for ch in href if ch in URI_ILLEGAL or ord(ch) > 0x7E}, href
            if body is not PROPNAME:
                assert props["displayname"] == name
            g = s.get(server.url.rstrip("/") + href)
            assert (g.status_code, g.content) == (200, name.encode()), href
    java = shutil.which("java")
    if java is None:
        if os.environ.get("CI") == "true":
            pytest.fail("java is not installed (CI installs a JDK)")
        return
    src = inst.home.root / "U.java"
    src.write_text(
        "public class U { public static void main(String[] a) throws Exception {"
        " java.io.BufferedReader r = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));"
        " String l; while ((l = r.readLine()) != null) { try { new java.net.URI(l); System.out.println(\"ok\"); }"
        " catch (java.net.URISyntaxException e) { System.out.println(\"bad \" + e.getMessage()); } } } }")
    lines = [f"https://127.0.0.1{h}" for h in every] + ["https://127.0.0.1/files/w/a|b.txt"]  # the twin: raw '|'
    out = subprocess.run([java, str(src)], input="\n".join(lines), capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[:-1] == ["ok"] * len(every), out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("bad Illegal character in path")


# --- 04 ---------------------------------------------------------------------------------

GVFS_PROPS = (b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop><D:creationdate/>'
              b"<D:displayname/><D:getcontentlength/><D:getcontenttype/><D:getetag/><D:getlastmodified/>"
              b"<D:resourcetype/></D:prop></D:propfind>")


def test_case_04_hrefs_of_names_with_parentheses_match_the_request(inst: Instance, server: DavServer) -> None:
    """Case 04 (sabre-io/dav#56: gvfs could not open "...Specification(2).pdf"): gvfs matches
    the href of a Depth 0 answer, and the folder's own entry in Depth 1, against the path it
    asked for; raw and encoded parentheses name the same resource (RFC 3986 §6.2.2.2)."""
    s, u, disk = work(inst, server)
    gvfs = {"User-Agent": "gvfs/1.50.2", "Content-Type": "application/xml"}
    assert s.request("MKCOL", u + "Docs%20(old)/").status_code == 201
    assert s.put(u + "Docs%20(old)/Spec(2).pdf", data=b"%PDF-1.4\n").status_code == 201
    assert (disk / "Docs (old)" / "Spec(2).pdf").read_bytes() == b"%PDF-1.4\n"
    for path in ("/files/w/Docs%20(old)/Spec(2).pdf", "/files/w/Docs%20%28old%29/Spec%282%29.pdf"):
        r = s.request("PROPFIND", server.url.rstrip("/") + path, headers=dict(gvfs, Depth="0"), data=GVFS_PROPS)
        assert r.status_code == 207
        assert list(responses(r.content)) == ["/files/w/Docs%20(old)/Spec(2).pdf"], path
    for path in ("/files/w/Docs%20(old)/", "/files/w/Docs%20%28old%29/"):
        r = s.request("PROPFIND", server.url.rstrip("/") + path, headers=dict(gvfs, Depth="1"), data=GVFS_PROPS)
        assert r.status_code == 207
        assert sorted(responses(r.content)) == ["/files/w/Docs%20(old)/", "/files/w/Docs%20(old)/Spec(2).pdf"], path


# --- 05 ---------------------------------------------------------------------------------


def test_case_05_explorer_folder_renames_to_names_with_space_amp_percent_hash(inst: Instance,
                                                                               server: DavServer) -> None:
    """Case 05 (mar10/wsgidav#18): Windows' mini-redirector renames a folder with MOVE, an
    absolute percent-encoded Destination without the trailing slash, Overwrite: F; each step
    is 201 and the folder keeps its member (RFC 4918 §9.9)."""
    s, u, disk = work(inst, server)
    win = {"User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045", "Translate": "f", "Overwrite": "F"}
    assert s.request("MKCOL", u + "New%20folder", headers=win).status_code == 201
    assert s.put(u + "New%20folder/inside.txt", data=b"x").status_code == 201
    steps = [("New%20folder", "abc%20def", "abc def"), ("abc%20def", "hello%20world", "hello world"),
             ("hello%20world", "test%26", "test&"), ("test%26", "50%25%20%23off", "50% #off")]
    for src, dst, on_disk in steps:
        r = s.request("MOVE", u + src, headers=dict(win, Destination=u + dst))
        assert r.status_code == 201, dst
        assert os.listdir(disk) == [on_disk] and (disk / on_disk / "inside.txt").read_bytes() == b"x"
    # the twin of Overwrite: F: onto an existing folder the rename is refused, nothing moves
    (disk / "taken").mkdir()
    r = s.request("MOVE", u + "50%25%20%23off", headers=dict(win, Destination=u + "taken"))
    assert r.status_code == 412 and (disk / "50% #off" / "inside.txt").exists()


# --- 06 ---------------------------------------------------------------------------------


def test_case_06_encoded_question_mark_and_semicolon_in_destination(inst: Instance, server: DavServer) -> None:
    """Case 06 (mar10/wsgidav#139: "dir1" renamed to "dir%3F1" became "dir"): %3F and %3B in
    a Destination are data (RFC 3986 §3.3), for a folder MOVE, a file COPY and a file MOVE."""
    s, u, disk = work(inst, server)
    assert s.request("MKCOL", u + "dir1").status_code == 201
    assert s.put(u + "dir1/a.txt", data=b"a").status_code == 201
    r = s.request("MOVE", u + "dir1", headers={"Destination": u + "dir%3F1"})
    assert r.status_code == 201 and os.listdir(disk) == ["dir?1"] and (disk / "dir?1/a.txt").exists()
    assert s.put(u + "f.txt", data=b"f").status_code == 201
    r = s.request("COPY", u + "f.txt", headers={"Destination": u + "what%3F.txt"})
    assert r.status_code == 201 and (disk / "what?.txt").read_bytes() == b"f"
    assert s.put(u + "minutes.txt", data=b"m").status_code == 201
    r = s.request("MOVE", u + "minutes.txt", headers={"Destination": u + "minutes%3B%20draft.txt", "Overwrite": "F"})
    assert r.status_code == 201
    assert sorted(os.listdir(disk)) == ["dir?1", "f.txt", "minutes; draft.txt", "what?.txt"]
    # the twin: a literal '?' in a Destination starts a query, which a Destination may not have
    r = s.request("COPY", u + "f.txt", headers={"Destination": u + "what?.txt"})
    assert r.status_code == 400 and sorted(os.listdir(disk)) == ["dir?1", "f.txt", "minutes; draft.txt", "what?.txt"]


# --- 08 ---------------------------------------------------------------------------------


def test_case_08_an_empty_file_is_200_with_length_0(inst: Instance, server: DavServer) -> None:
    """Case 08 (httpwg/http-core#395): GET of an empty file is 200 with Content-Length 0, and
    a range on it is never a 206 (there are no bytes to give); the twin: a 1-byte file."""
    s, u, _ = work(inst, server)
    assert s.put(u + "empty.bin", data=b"").status_code == 201
    r = s.get(u + "empty.bin")
    assert (r.status_code, r.content, r.headers["Content-Length"]) == (200, b"", "0")
    r = s.get(u + "empty.bin", headers={"Range": "bytes=0-"})
    assert (r.status_code, r.content) == (200, b"")
    assert s.put(u + "one.bin", data=b"1").status_code == 201
    r = s.get(u + "one.bin", headers={"Range": "bytes=0-"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"1", "bytes 0-0/1")


# --- 09 ---------------------------------------------------------------------------------


def test_case_09_if_range_compares_strongly_and_by_exact_date(inst: Instance, server: DavServer) -> None:
    """Case 09 (ramondeklein/nwebdav#82, sibidharan/zealphp#362): If-Range with the current
    strong ETag or the exact Last-Modified -> 206; another or a weak ETag, an older date, or
    the ETag of a replaced version -> the Range is ignored, 200 with the whole file
    (RFC 9110 §13.1.5, §13.2.2)."""
    s, u, _ = work(inst, server)
    data = b"0123456789" * 100
    assert s.put(u + "f.txt", data=data).status_code == 201
    head = s.head(u + "f.txt")
    etag, lm = head.headers["ETag"], head.headers["Last-Modified"]

    def get(if_range: str) -> requests.Response:
        return s.get(u + "f.txt", headers={"Range": "bytes=100-199", "If-Range": if_range})

    for value in (etag, lm):
        r = get(value)
        assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data[100:200], "bytes 100-199/1000")
    for value in ('"not-the-etag"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        r = get(value)
        assert (r.status_code, r.content, r.headers.get("Content-Range")) == (200, data, None), value
    assert s.put(u + "f.txt", data=data[::-1]).status_code == 204
    r = get(etag)
    assert (r.status_code, r.content) == (200, data[::-1])


# --- 13 ---------------------------------------------------------------------------------


def test_case_13_lock_of_an_unmapped_name_creates_an_empty_locked_file(inst: Instance, server: DavServer) -> None:
    """Case 13 (owncloud/core#33380, #39952; redmine_dmsf#1495): LOCK of an unmapped URL is
    201 with a Lock-Token and an empty file (RFC 4918 §7.3, §9.10.4); only the token holder
    writes it; after UNLOCK it deletes; LOCK+UNLOCK without a write leaves no undeletable
    "zombie"; below a missing folder LOCK is 409 and creates nothing."""
    s, u, disk = work(inst, server)
    lock_headers = {"Depth": "0", "Timeout": "Second-180", "Content-Type": "text/xml"}
    r = s.request("LOCK", u + "~$Budget.xlsx", data=LOCKINFO, headers=lock_headers)
    token = r.headers.get("Lock-Token", "").strip("<>")
    assert r.status_code == 201 and token.startswith("opaquelocktoken:"), token
    assert (disk / "~$Budget.xlsx").stat().st_size == 0
    g = s.get(u + "~$Budget.xlsx")
    assert (g.status_code, g.content) == (200, b"")
    listing = s.request("PROPFIND", u, headers={"Depth": "1"})
    entry = next(e for e in ElementTree.fromstring(listing.content).iter("{DAV:}response")
                 if e.findtext("{DAV:}href") == "/files/w/~$Budget.xlsx")
    assert entry.findtext(".//{DAV:}lockdiscovery/{DAV:}activelock/{DAV:}locktoken/{DAV:}href") == token
    assert s.put(u + "~$Budget.xlsx", data=b"intruder").status_code == 423  # no token
    assert s.put(u + "~$Budget.xlsx", data=b"data", headers={"If": f"(<{token}>)"}).status_code == 204
    assert (disk / "~$Budget.xlsx").read_bytes() == b"data"
    assert s.delete(u + "~$Budget.xlsx").status_code == 423  # still locked
    assert s.request("UNLOCK", u + "~$Budget.xlsx", headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert s.delete(u + "~$Budget.xlsx").status_code == 204 and not (disk / "~$Budget.xlsx").exists()
    r = s.request("LOCK", u + "._Budget.xlsx", data=LOCKINFO, headers=lock_headers)
    assert r.status_code == 201
    assert s.request("UNLOCK", u + "._Budget.xlsx", headers={"Lock-Token": r.headers["Lock-Token"]}).status_code == 204
    assert s.delete(u + "._Budget.xlsx").status_code == 204
    r = s.request("LOCK", u + "no-such-folder/x.docx", data=LOCKINFO,
                  headers={"Depth": "0", "Content-Type": "text/xml"})
    assert r.status_code == 409 and os.listdir(disk) == []


# --- 14 ---------------------------------------------------------------------------------


def test_case_14_a_lock_is_passed_only_in_the_if_header(inst: Instance, server: DavServer) -> None:
    """Case 14 (sabre-io/dav#980: Word 2016 sent the token in Lock-Token on PUT): Lock-Token
    on a PUT means nothing (RFC 4918 §10.4, §7.5), so 423 and the file unchanged; Office's
    tagged If list, with the absolute URI or the path, is accepted (§10.4.2)."""
    s, u, disk = work(inst, server)
    office = {"User-Agent": "Microsoft Office Word 2014", "X-Office-Major-Version": "16"}
    f = u + "Plan.docx"
    assert s.put(f, data=b"PK\x03\x04 original").status_code == 201
    lockinfo = LOCKINFO.replace(b"office-user", b"WORKGROUP\\user")
    r = s.request("LOCK", f, data=lockinfo, headers=dict(office, Depth="0", Timeout="Second-3600",
                                                        **{"Content-Type": "text/xml"}))
    token = r.headers["Lock-Token"].strip("<>")
    assert r.status_code == 200 and token
    r = s.put(f, data=b"PK\x03\x04 saved with Lock-Token", headers=dict(office, **{"Lock-Token": f"<{token}>"}))
    assert r.status_code == 423 and (disk / "Plan.docx").read_bytes() == b"PK\x03\x04 original"
    r = s.put(f, data=b"PK\x03\x04 saved tagged", headers=dict(office, If=f"<{f}> (<{token}>)"))
    assert r.status_code == 204 and (disk / "Plan.docx").read_bytes() == b"PK\x03\x04 saved tagged"
    r = s.put(f, data=b"PK\x03\x04 saved tagged path", headers=dict(office, If=f"</files/w/Plan.docx> (<{token}>)"))
    assert r.status_code == 204 and (disk / "Plan.docx").read_bytes() == b"PK\x03\x04 saved tagged path"
    assert s.request("UNLOCK", f, headers={"Lock-Token": f"<{token}>"}).status_code == 204


# --- 16 ---------------------------------------------------------------------------------


def _chunked_put(inst: Instance, server: DavServer, path: str, data: bytes, te: str, chunk: int, size_fmt: str,
                 trailer: bytes = b"", extra: str = "") -> bytes:
    tls = tls_to(inst, server, timeout=30)
    try:
        head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(inst)}\r\n"
                f"User-Agent: WebDAVFS/3.0.0 (03008000) Darwin/23.4.0 (arm64)\r\nTransfer-Encoding: {te}\r\n"
                f"X-Expected-Entity-Length: {len(data)}\r\nAccept: */*\r\n{extra}\r\n")
        tls.sendall(head.encode())
        for i in range(0, len(data), chunk):
            piece = data[i:i + chunk]
            tls.sendall(size_fmt.format(len(piece)).encode() + b"\r\n" + piece + b"\r\n")
        tls.sendall(b"0\r\n" + trailer + b"\r\n")
        return tls.recv(200)
    finally:
        tls.close()


def test_case_16_chunked_upload_variants_arrive_intact(inst: Instance, server: DavServer) -> None:
    """Case 16 (Pylons/waitress PR#43 "Chunked"; mar10/wsgidav#15; nextcloud/all-in-one#4582,
    sabre-io/dav#55 0-byte Finder uploads; kd2org/picodav#6 "TE: trailers"): transfer-coding
    names are case-insensitive, chunk sizes hex of any case with leading zeros and extensions,
    a trailer may follow (RFC 9112 §7, §7.1.1, §7.1.2); every variant stores the exact bytes."""
    _, _, disk = work(inst, server)
    data = os.urandom(4 * 1024 * 1024 + 123)
    digest = hashlib.sha256(data).hexdigest()
    variants = [
        ("capital-Chunked.bin", "Chunked", 65536, "{:x}", b"", ""),
        ("upper-hex.bin", "chunked", 32768, "{:X}", b"", ""),
        ("leading-zeros.bin", "chunked", 8192, "{:08x}", b"", ""),
        ("chunk-ext.bin", "chunked", 100000, "{:x};name=value", b"", ""),
        ("trailer.bin", "chunked", 65536, "{:x}", b"X-Checksum: abc\r\n", "TE: trailers\r\nConnection: close, TE\r\n"),
    ]
    for name, te, chunk, fmt, trailer, extra in variants:
        got = _chunked_put(inst, server, f"/files/w/{name}", data, te, chunk, fmt, trailer, extra)
        assert got.startswith(b"HTTP/1.1 201 "), (name, got[:40])
        assert hashlib.sha256((disk / name).read_bytes()).hexdigest() == digest, name
    # the twin of the kind: a chunk size that is not hex is refused and nothing is stored
    got = _chunked_put(inst, server, "/files/w/bad.bin", b"x" * 10, "chunked", 10, "{:d}z")
    assert got.startswith(b"HTTP/1.1 400 "), got[:40]
    assert not (disk / "bad.bin").exists()


# --- 17 ---------------------------------------------------------------------------------


def test_case_17_curl_sees_the_401_of_a_refused_upload(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """Case 17 (haiwen/seafile#1229): curl uploading 8 MiB with Expect: 100-continue and a
    wrong password reads the 401 (RFC 9110 §10.1.1) and never sends the body; the twin with
    the right password uploads it."""
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed")
        pytest.skip("curl is not installed")
    alice = inst.clients["alice"]
    body = tmp_path / "big.bin"
    body.write_bytes(os.urandom(8 << 20))
    for password, want in (("WRONG-pw", "401 0"), (alice.password, f"201 {8 << 20}")):
        out = subprocess.run([curl, "-sS", "--cacert", str(inst.ca_file), "--cert", str(alice.crt), "--key",
                              str(alice.key), "-u", f"alice:{password}", "-T", str(body),
                              server.url + "files/refused.bin", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout == want, (out.stdout, out.stderr)
    assert (inst.home.root / "data/files/refused.bin").read_bytes() == body.read_bytes()


# --- 18 ---------------------------------------------------------------------------------

SIZE_5G = 5 * 1024**3 + 1
MARK = 4 * 1024**3 - 8  # 16 bytes that span the 2^32 boundary


def test_case_18_a_5_gib_file_has_exact_lengths_and_ranges(inst: Instance, server: DavServer) -> None:
    """Case 18 (kopia/kopia#4235; saguiitay/WebDAVClient PR#15 32-bit getcontentlength;
    haiwen/seafdav#19): a 5 GiB file (sparse, made with truncate) reports its exact length in
    HEAD, GET, and PROPFIND Depth 0 and 1 (RFC 9110 §8.6, RFC 4918 §15.4), and serves ranges
    past 4 GiB byte-exact (RFC 9110 §14); the twin: a small file beside it."""
    s, u, disk = work(inst, server)
    with open(disk / "disk.img", "wb") as fh:
        fh.truncate(SIZE_5G)
        fh.seek(MARK)
        fh.write(b"ACROSS-4GiB-MARK")
        fh.seek(SIZE_5G - 16)
        fh.write(b"END-OF-5GiB-FILE")
    (disk / "small.txt").write_bytes(b"small")
    f = u + "disk.img"
    assert s.head(f).headers["Content-Length"] == str(SIZE_5G)
    with s.get(f, stream=True) as r:
        assert (r.status_code, r.headers["Content-Length"]) == (200, str(SIZE_5G))
    zero = responses(s.request("PROPFIND", f, headers={"Depth": "0"}).content)
    assert zero["/files/w/disk.img"]["getcontentlength"] == str(SIZE_5G)
    one = responses(s.request("PROPFIND", u, headers={"Depth": "1"}).content)
    assert one["/files/w/disk.img"]["getcontentlength"] == str(SIZE_5G)
    assert one["/files/w/small.txt"]["getcontentlength"] == "5"
    r = s.get(f, headers={"Range": f"bytes={MARK}-{MARK + 15}"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (
        206, b"ACROSS-4GiB-MARK", f"bytes {MARK}-{MARK + 15}/{SIZE_5G}")
    r = s.get(f, headers={"Range": "bytes=-16"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (
        206, b"END-OF-5GiB-FILE", f"bytes {SIZE_5G - 16}-{SIZE_5G - 1}/{SIZE_5G}")
    r = s.get(f, headers={"Range": f"bytes={SIZE_5G}-"})
    assert (r.status_code, r.headers["Content-Range"]) == (416, f"bytes */{SIZE_5G}")


def test_case_18_a_5_gb_upload_is_accepted_up_front(inst: Instance, server: DavServer) -> None:
    """Case 18 (redmine_dmsf#459: uploads over 2 GiB refused at once with 500): a PUT
    announcing 5,000,000,000 bytes with Expect: 100-continue gets 100 Continue (not
    413/400/500) without sending the body; the client then walks away and nothing is left."""
    _, _, disk = work(inst, server)
    tls = tls_to(inst, server)
    try:
        tls.sendall((f"PUT /files/w/big-upload.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(inst)}\r\n"
                     "Content-Length: 5000000000\r\nExpect: 100-continue\r\n\r\n").encode())
        assert tls.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        tls.sendall(b"x" * 65536)
    finally:
        tls.close()
    deadline = time.monotonic() + 5
    time.sleep(0.5)
    while os.listdir(disk) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(disk) == []
    # the twin: the same announcement of 5 bytes, sent, is stored
    tls = tls_to(inst, server)
    try:
        tls.sendall((f"PUT /files/w/small.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(inst)}\r\n"
                     "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n").encode())
        assert tls.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        tls.sendall(b"hello")
        assert tls.recv(100).startswith(b"HTTP/1.1 201 ")
    finally:
        tls.close()
    assert (disk / "small.bin").read_bytes() == b"hello"


# --- 19 ---------------------------------------------------------------------------------


def test_case_19_a_request_after_a_cut_off_upload_is_answered_promptly(inst: Instance, server: DavServer) -> None:
    """Case 19 (actix/actix-web#2357): a client announces 256 MiB, sends 64 KiB and goes
    away; the upload is not stored, and the next request is answered at once (the twin: a
    complete upload is stored)."""
    s, u, disk = work(inst, server)
    tls = tls_to(inst, server)
    tls.sendall((f"PUT /files/w/cut.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(inst)}\r\n"
                 f"Content-Length: {256 << 20}\r\n\r\n").encode() + b"x" * 65536)
    time.sleep(0.3)
    tls.close()
    started = time.monotonic()
    r = s.get(u)
    assert r.status_code == 200 and time.monotonic() - started < PROMPT_SECONDS
    assert s.put(u + "whole.bin", data=b"x" * 65536).status_code == 201
    time.sleep(0.3)
    assert os.listdir(disk) == ["whole.bin"]


# --- 21 ---------------------------------------------------------------------------------

HOSTILE = ['"><img src=x onerror=alert(1)>.txt', "<script>alert(2)<script>.txt", "' onmouseover='alert(3)'.txt",
           "javascript:alert(4)", "&lt;b&gt;pre-escaped&lt;b&gt;.txt"]
HOSTILE_FOLDER = "<svg onload=alert(5)>"
PAGE_ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "p", "b", "a", "table", "thead", "tbody",
                 "tr", "th", "td", "em",
                 # the who-bar and the write controls of a writable listing, and its own scripts
                 "div", "details", "summary", "time", "label", "input", "button", "span", "script"}


class _Elements(HTMLParser):
    """The elements, attributes and text a browser builds from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []
        self.text: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in PAGE_ELEMENTS:
            self.bad.append(f"<{tag}>")
        for k, v in attrs:
            if k.startswith("on"):
                self.bad.append(f"{tag}@{k}")
            if k == "href":
                self.hrefs.append(v or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_case_21_hostile_names_are_escaped_in_the_listing(inst: Instance, server: DavServer) -> None:
    """Case 21 (vert-x3/vertx-web#2819 CVE-2025-11966; monkey/monkey#91; cherokee/webserver#1015;
    prasathmani/tinyfilemanager#1098): every name is shown as text, never markup (also in
    <title>/<h1> of a hostile folder), hrefs are percent-encoded paths, and the page carries a
    CSP that forbids script; a pre-escaped name shows literally ("&lt;" stays "&lt;")."""
    s, u, _ = work(inst, server)
    for name in HOSTILE:
        assert s.put(u + q(name), data=b"x").status_code == 201, name
    assert s.request("MKCOL", u + q(HOSTILE_FOLDER) + "/").status_code == 201
    assert s.put(u + q(HOSTILE_FOLDER) + "/inner.txt", data=b"y").status_code == 201
    for path, shown in ((u, HOSTILE + [HOSTILE_FOLDER]), (u + q(HOSTILE_FOLDER) + "/", ["inner.txt"])):
        r = s.get(path, headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        page = _Elements()
        page.feed(r.text)
        assert page.bad == []
        text = "".join(page.text)
        for name in shown:
            assert name in text, name  # shown as the literal name
        bad = [h for h in page.hrefs if h.lower().startswith("javascript:") or any(c in h for c in "<>\"' ")]
        assert bad == [] and any(h.endswith(q(shown[0])) for h in page.hrefs)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        # The only scripts are the page's own two, each allowed by its hash alone.
        scripts = re.findall(r"<script>(.*?)</script>", r.text, re.S)
        assert len(scripts) == r.text.count("<script") == 2, r.text.count("<script")
        for script in scripts:
            assert "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0] and "'self'" not in csp.split(
            "script-src")[1].split(";")[0]
    page_of_folder = s.get(u + q(HOSTILE_FOLDER) + "/").text
    for tag in ("title", "h1"):
        inner = re.search(rf"<{tag}>(.*?)</{tag}>", page_of_folder, re.S)
        assert inner and "<svg" not in inner.group(1) and HOSTILE_FOLDER in html.unescape(inner.group(1)), tag
    assert "&amp;lt;b&amp;gt;pre-escaped&amp;lt;b&amp;gt;.txt" in s.get(u).text


def test_case_21_a_name_cannot_contain_an_encoded_slash(inst: Instance, server: DavServer) -> None:
    """Case 21's names "&lt;b&gt;pre-escaped&lt;/b&gt;.txt" and "<script>alert(2)</script>.txt"
    hold a '/': a name cannot contain a slash, so %2F in a name is refused 400 with a body
    that says why, for PUT and MKCOL, and nothing is created (the case's script did not look
    at those PUTs' statuses); the twins without the slash are stored."""
    s, u, disk = work(inst, server)
    for name in ("&lt;b&gt;pre-escaped&lt;/b&gt;.txt", "<script>alert(2)</script>.txt"):
        for method in ("PUT", "MKCOL"):
            r = s.request(method, u + q(name), data=b"x" if method == "PUT" else None)
            assert (r.status_code, r.text) == (400, "bad request: a name cannot contain a slash (%2F)\n"), method
    assert os.listdir(disk) == []
    for name in ("&lt;b&gt;pre-escaped&lt;b&gt;.txt", "<script>alert(2)<script>.txt"):
        assert s.put(u + q(name), data=b"x").status_code == 201
    assert sorted(os.listdir(disk)) == ["&lt;b&gt;pre-escaped&lt;b&gt;.txt", "<script>alert(2)<script>.txt"]


# --- 23 ---------------------------------------------------------------------------------


def _patch(prop: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><D:propertyupdate xmlns:D="DAV:" '
            f'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>{prop}</D:prop></D:set></D:propertyupdate>').encode()


GET_LM = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getlastmodified/></D:prop></D:propfind>'
GET_WIN = (b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:"><D:prop>'
           b"<Z:Win32LastModifiedTime/></D:prop></D:propfind>")
WIN_DATE = "Tue, 06 Nov 2018 11:07:03 GMT"


def test_case_23_getlastmodified_is_protected_and_win32_times_are_kept(inst: Instance, server: DavServer) -> None:
    """Case 23 (owncloud/core#33502; dCache/dcache#7801; 9001/copyparty#910): a PROPPATCH of
    DAV:getlastmodified is refused 403 in its propstat (RFC 4918 §15.7, §9.2.1) and the date is
    unchanged; Windows Explorer's
    Win32LastModifiedTime is 200 and reads back as set."""
    s, u, _ = work(inst, server)
    f = u + "photo.jpg"
    assert s.put(f, data=b"\xff\xd8\xff").status_code == 201

    def read(body: bytes, tag: str) -> str | None:
        r = s.request("PROPFIND", f, headers={"Depth": "0"}, data=body)
        return ElementTree.fromstring(r.content).findtext(f".//{tag}")

    before = read(GET_LM, "{DAV:}getlastmodified")
    assert before and before != WIN_DATE
    r = s.request("PROPPATCH", f, data=_patch(f"<D:getlastmodified>{WIN_DATE}</D:getlastmodified>"),
                  headers={"Content-Type": "text/xml"})
    assert r.status_code == 207
    assert re.findall(r"HTTP/1\.1 (\d{3})", r.text) == ["403"]
    assert read(GET_LM, "{DAV:}getlastmodified") == before
    r = s.request("PROPPATCH", f, data=_patch(f"<Z:Win32LastModifiedTime>{WIN_DATE}</Z:Win32LastModifiedTime>"),
                  headers={"Content-Type": "text/xml", "User-Agent": "Microsoft-WebDAV-MiniRedir/10.0.19045"})
    assert r.status_code == 207 and re.findall(r"HTTP/1\.1 (\d{3})", r.text) == ["200"]
    assert read(GET_WIN, "{urn:schemas-microsoft-com:}Win32LastModifiedTime") == WIN_DATE


# --- 24 ---------------------------------------------------------------------------------


def test_case_24_relative_and_case_varied_destinations_work_foreign_ones_do_not(inst: Instance,
                                                                              server: DavServer) -> None:
    """Case 24 (thephpleague/flysystem-webdav#40; keeweb/keeweb#1154; mar10/wsgidav#82;
    dgraziotin/docker-nginx-webdav-nononsense#8): Destination is absolute-URI or
    path-absolute (RFC 4918 §10.3); scheme and host compare without case (RFC 3986 §6.2.2.1);
    another scheme or host is refused and nothing is written."""
    s, u, disk = work(inst, server)
    assert s.put(u + "a.txt", data=b"a").status_code == 201
    assert s.request("MOVE", u + "a.txt", headers={"Destination": "/files/w/b.txt"}).status_code == 201
    assert s.request("COPY", u + "b.txt", headers={"Destination": "/files/w/c.txt"}).status_code == 201
    upper = f"HTTPS://127.0.0.1:{server.port}/files/w/d.txt"
    assert s.request("MOVE", u + "c.txt", headers={"Destination": upper}).status_code == 201
    assert sorted(os.listdir(disk)) == ["b.txt", "d.txt"]
    for dest in (f"http://127.0.0.1:{server.port}/files/w/f.txt", f"https://other.example:{server.port}/files/w/g.txt"):
        r = s.request("COPY", u + "d.txt", headers={"Destination": dest})
        assert r.status_code == 403, dest
    assert sorted(os.listdir(disk)) == ["b.txt", "d.txt"]


# --- 25 ---------------------------------------------------------------------------------


def test_case_25_names_over_255_bytes_are_refused_with_a_clear_4xx(inst: Instance, server: DavServer) -> None:
    """Case 25 (gildas-lormeau/SingleFile#1136: 404 made the client retry MKCOL forever;
    ramondeklein/nwebdav#54: COPY "succeeded"; nextcloud/server#18102: 500): a name up to
    255 bytes works; a longer one (ASCII or UTF-8) is 414 (the name is longer than the server
    interprets, RFC 9110 §15.5.15) for PUT, MKCOL, COPY, GET and PROPFIND: not 404/409 (which
    send clients to create the parent), not 5xx, not a success; and nothing is left."""
    s, u, disk = work(inst, server)
    ok255 = "a" * 251 + ".txt"
    assert s.put(u + q(ok255), data=b"x").status_code == 201
    for name in ("b" * 252 + ".txt", "文" * 100 + ".txt"):
        assert len(name.encode()) > 255
        for method, headers in (("PUT", {}), ("MKCOL", {}), ("GET", {}), ("PROPFIND", {"Depth": "0"})):
            r = s.request(method, u + q(name), headers=headers, data=b"x" if method == "PUT" else None)
            assert r.status_code == 414, (method, r.status_code)
            assert r.reason == "URI Too Long", (method, r.reason)  # RFC 9110 §15.5.15, not "Status"
        r = s.request("COPY", u + q(ok255), headers={"Destination": u + q(name)})
        assert r.status_code == 414
    assert os.listdir(disk) == [ok255]
    assert s.get(u + q(ok255)).content == b"x"


# --- 26 ---------------------------------------------------------------------------------


def test_case_26_head_get_and_propfind_agree_on_length_and_type(inst: Instance, server: DavServer) -> None:
    """Case 26 (microsoft/vscode#221973): HEAD has GET's header fields (RFC 9110 §9.3.2),
    getcontentlength/getcontenttype equal GET's Content-Length/Content-Type (RFC 4918 §15.4,
    §15.5), an unknown type is application/octet-stream (RFC 9110 §8.3); HEAD of a missing
    file is 404 without a body."""
    s, u, _ = work(inst, server)
    files = {"notes.txt": b"plain text\n", "Report.docx": b"PK\x03\x04docx", "blob.qzx9": b"\x00\x01\x02",
             "README": b"no extension\n"}
    for name, body in files.items():
        assert s.put(u + name, data=body).status_code == 201
    listed = responses(s.request("PROPFIND", u, headers={"Depth": "1"}).content)
    for name, body in files.items():
        g, h = s.get(u + name), s.head(u + name)
        assert g.status_code == h.status_code == 200 and h.content == b""
        for k in ("Content-Length", "Content-Type", "ETag", "Last-Modified"):
            assert g.headers[k] == h.headers[k], (name, k)
        props = listed["/files/w/" + name]
        assert props["getcontentlength"] == g.headers["Content-Length"] == str(len(body))
        assert props["getcontenttype"] == g.headers["Content-Type"]
    assert s.get(u + "blob.qzx9").headers["Content-Type"] == "application/octet-stream"
    assert s.get(u + "notes.txt").headers["Content-Type"].startswith("text/plain")  # the twin: a known type
    m = s.head(u + "missing.txt")
    assert (m.status_code, m.content) == (404, b"")


def test_every_error_status_goes_out_with_its_reason_phrase() -> None:
    """WsgiDAV's status table (dav_error.py:294) lacked 413, 414, 416, 503, 507 ...: they
    went out as "507 Status", in status lines and in 207 bodies. Every status line now has
    the RFC 9110 phrase; the ones WsgiDAV had stay as they were (its 423 "Locked")."""
    import http

    from wsgidav.dav_error import get_http_status_string

    import davserver.error_pages  # noqa: F401 - completes the table on import

    for status in http.HTTPStatus:
        line = get_http_status_string(status.value)
        assert line.startswith(f"{status.value} ") and not line.endswith(" Status"), line
    assert get_http_status_string(507) == "507 Insufficient Storage"
    assert get_http_status_string(413) == "413 Content Too Large"
    assert get_http_status_string(423) == "423 Locked"
