"""One parse of the request target and the Destination header (target.py), one access
decision on what it names (access.py), and COPY/MOVE executed on exactly that.

Each attack has the exact input it was found with, the kind it belongs to as a
property test, and a twin that shows the legitimate request still works."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from davserver.fs import ShareProvider
from davserver.server import DavServer
from davserver.target import BadTarget, Target, parse_destination, parse_request_target

from .conftest import Instance, session_for

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Names a file may have: anything but "/", NUL, control characters (refused at creation)
#: and the dot segments. Includes the characters that URL parsers treat as delimiters.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
    min_size=1, max_size=24,
).filter(lambda n: n not in (".", "..") and n.strip() == n)
delimiter_names = st.sampled_from(["report?v2.txt", "Projects;old", "minutes;draft.txt", "a#b", "100%", "%41",
                                   "x%2Fy", "a&b=c", "semi;colon;", "q?", "#", ";", "@", "ä ö.txt", "日本語",
                                   "+plus+", "%", "%%25", "a;b?c#d"])


def audit(inst: Instance, at_least: int = 0) -> list[dict]:
    """The audit records, waiting briefly until there are ``at_least`` (a record is
    written just after the response's last byte, so it can trail the client)."""
    path = inst.home.state_dir / "audit.log"
    for _ in range(200):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(records) >= at_least:
            break
        time.sleep(0.01)
    return records


def encoded(*segments: str, safe: str = "") -> str:
    return "/" + "/".join(quote(s, safe=safe) for s in segments)


# --- the parser, for the whole kind ----------------------------------------------------


@given(segments=st.lists(names, min_size=1, max_size=4), slash=st.booleans(),
       safe=st.sampled_from(["", ";", ";@!$&'()*+,=:", "~"]))
def test_any_encoded_path_parses_back_to_its_names(segments: list[str], slash: bool, safe: str) -> None:
    segments[0] = segments[0].lower()
    raw = encoded(*segments, safe=safe) + ("/" if slash else "")
    target, query = parse_request_target(raw.encode())
    assert target.segments == tuple(segments) and target.trailing_slash == slash and query == b""
    dest = parse_destination("https://host:8443" + raw, host="HOST:8443")
    assert dest == target
    assert parse_destination(raw, host="x") == target


@given(segments=st.lists(names, min_size=1, max_size=3), query=st.text(max_size=10))
def test_the_query_is_split_before_decoding(segments: list[str], query: str) -> None:
    segments[0] = segments[0].lower()
    raw = encoded(*segments) + "?" + quote(query)
    target, q = parse_request_target(raw.encode())
    assert target.segments == tuple(segments)
    assert q == quote(query).encode()
    with pytest.raises(BadTarget) as exc:
        parse_destination(raw, host="x")
    assert exc.value.reason == "bad_destination" and exc.value.status == 400


@pytest.mark.parametrize("raw", [b"/files/%ff", b"/files/%c0%ae", b"/files/%e9t%e9.txt", b"/files/%zz",
                                 b"/files/%4", b"/files/a%", b"/files/..", b"/files/%2e%2e/team/x",
                                 b"/files/%2E/x", b"/files/a%2fb", b"/files/a%00b", b"/files/a b", b"/files/\x01",
                                 b"/files#frag", b"files/x", b"/files/\x7f"])
def test_ambiguous_or_invalid_targets_are_refused(raw: bytes) -> None:
    with pytest.raises(BadTarget) as exc:
        parse_request_target(raw)
    assert exc.value.status == 400 and exc.value.reason == "bad_path"


@pytest.mark.parametrize(("value", "status"), [
    ("/files#/../team/new.txt", 400),
    ("https://HOST/files#/../team/new.txt", 400),
    ("https://HOST/files/x?y", 400),
    ("https://other.example/files/x", 403),
    ("http://HOST/files/x", 403),
    ("https://user@HOST/files/x", 400),
    ("", 400),
    ("files/x", 400),
    ("/files/%ff", 400),
])
def test_ambiguous_destinations_are_refused(value: str, status: int) -> None:
    with pytest.raises(BadTarget) as exc:
        parse_destination(value, host="host")
    assert exc.value.status == status


def test_share_names_compare_without_case_and_default_ports_match() -> None:
    assert parse_request_target(b"/FILES/Doc.TXT")[0] == Target(("files", "Doc.TXT"))
    assert parse_destination("https://Host:443/Files/a", host="host") == Target(("files", "a"))
    assert parse_request_target(b"*")[0] == Target(())
    assert parse_request_target(b"https://host/files/a?b")[0] == Target(("files", "a"))
    assert parse_request_target(b"/files//a//")[0] == Target(("files", "a"), trailing_slash=True)


# --- the attacks, live ----------------------------------------------------------------------


def test_fragment_in_destination_cannot_write_into_a_read_only_share(inst: Instance, server: DavServer) -> None:
    """bob may read `team` and write `files`: a Destination that one parser reads as
    `files` and another as `team` must not write into `team`."""
    team = inst.home.root / "data/team"
    (team / "report.txt").write_text("team report\n")
    bob = session_for(inst, "bob")
    host = server.url.rstrip("/")
    for dest in ("/files#/../team/new.txt", f"{host}/files#/../team/new.txt", "/files%23/../team/new.txt"):
        for overwrite in ("T", "F"):
            r = bob.request("COPY", server.url + "team/report.txt", headers={"Destination": dest,
                                                                              "Overwrite": overwrite})
            assert r.status_code in (400, 403, 409), (dest, r.status_code)
            assert not (team / "new.txt").exists()
    refused = [r for r in audit(inst) if r["method"] == "COPY"]
    assert refused and all(r["decision"] == "deny" for r in refused), refused
    # the twin: a reader of team may still copy from it into a share it writes
    r = bob.request("COPY", server.url + "team/report.txt", headers={"Destination": f"{host}/files/copy.txt"})
    assert r.status_code == 201
    assert (inst.home.root / "data/files/copy.txt").read_text() == "team report\n"
    assert sorted(os.listdir(team)) == ["report.txt"]


def test_rename_to_an_encoded_question_mark_creates_exactly_that_name(inst: Instance, server: DavServer) -> None:
    files = inst.home.root / "data/files"
    (files / "report").write_text("unrelated\n")
    (files / "new.txt").write_text("new\n")
    s = session_for(inst)
    r = s.request("MOVE", server.url + "files/new.txt",
                  headers={"Destination": server.url + "files/report%3Fv2.txt"})
    assert r.status_code == 201
    assert (files / "report").read_text() == "unrelated\n"
    assert (files / "report?v2.txt").read_text() == "new\n"
    assert sorted(os.listdir(files)) == ["report", "report?v2.txt"]
    # a folder renamed to Projects%3Bold leaves the folder Projects alone
    (files / "Projects").mkdir()
    (files / "Projects" / "plan.txt").write_text("plan\n")
    (files / "Old").mkdir()
    r = s.request("MOVE", server.url + "files/Old/", headers={"Destination": server.url + "files/Projects%3Bold/"})
    assert r.status_code == 201
    assert (files / "Projects" / "plan.txt").read_text() == "plan\n"
    assert (files / "Projects;old").is_dir()
    # and the audit line names the destination as it was authorised
    moves = [r for r in audit(inst, 3) if r["method"] == "MOVE"]
    assert [m["destination"] for m in moves] == ["/files/report?v2.txt", "/files/Projects;old/"]


@SETTINGS
@given(name=st.one_of(delimiter_names, names), absolute=st.booleans(),
       safe=st.sampled_from(["", ";", ";@!$&'()*+,=:"]), method=st.sampled_from(["COPY", "MOVE"]))
def test_any_destination_lands_exactly_where_it_was_authorised(inst: Instance, server: DavServer, name: str,
                                                               absolute: bool, safe: str, method: str) -> None:
    """The path the guard authorised (audited) is the one the provider touched, and
    the file exists under exactly the name that was sent, and nowhere else."""
    assume(not name.startswith(".davserver-upload-") and name not in ("._", ".DS_Store"))
    files = inst.home.root / "data/files"
    for entry in files.iterdir():
        entry.unlink() if entry.is_file() else None
    (files / "src.bin").write_bytes(b"payload")
    touched: list[str] = []
    real = ShareProvider._loc_to_file_path

    def recording(self: ShareProvider, path: str, environ: dict | None = None) -> str:
        touched.append(path)
        return real(self, path, environ)

    ShareProvider._loc_to_file_path = recording  # type: ignore[method-assign]
    try:
        before = len(audit(inst))
        dest = ("https://" + server.url.split("//", 1)[1].rstrip("/") if absolute else "") + encoded("files", name,
                                                                                                     safe=safe)
        r = session_for(inst).request(method, server.url + "files/src.bin",
                                      headers={"Destination": dest.encode("utf-8")})
    finally:
        ShareProvider._loc_to_file_path = real  # type: ignore[method-assign]
    assert r.status_code in (201, 204), (name, r.status_code, r.text[:200])
    record = audit(inst, before + 1)[before:][-1]
    assert record["destination"] == f"/files/{name}"
    assert (files / name).read_bytes() == b"payload"
    expected = {name} | ({"src.bin"} if method == "COPY" else set())
    assert set(os.listdir(files)) == expected
    assert set(touched) <= {"/src.bin", f"/{name}", "/"}, touched


@SETTINGS
@given(dest=st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x0b\x0c\x00"),
               max_size=40).map(str.strip))
def test_no_destination_string_gives_a_server_error_or_an_unaudited_answer(inst: Instance, server: DavServer,
                                                                          dest: str) -> None:
    files = inst.home.root / "data/files"
    (files / "src.txt").write_text("x")
    before = len(audit(inst))
    r = session_for(inst).request("COPY", server.url + "files/src.txt", headers={"Destination": dest.encode()})
    assert r.status_code < 500, (dest, r.status_code)
    new = audit(inst, before + 1)[before:]
    assert len(new) == 1, new
    if r.status_code in (201, 204):
        assert (inst.home.root / "data" / new[0]["destination"].lstrip("/")).read_text() == "x"


@pytest.mark.parametrize("target", ["/files/%ff", "/files/%c0%ae", "/files/%e9t%e9.txt", "/files/a%2Fb",
                                    "/files/%2e%2e/team/x"])
@pytest.mark.parametrize("method", ["GET", "PUT", "PROPFIND", "DELETE"])
def test_invalid_encodings_are_answered_400_with_an_audit_line(inst: Instance, server: DavServer, method: str,
                                                               target: str) -> None:
    before = len(audit(inst))
    r = session_for(inst).request(method, server.url.rstrip("/") + target, data=b"x" if method == "PUT" else None)
    assert r.status_code == 400
    new = audit(inst, before + 1)[before:]
    assert len(new) == 1 and new[0]["decision"] == "deny" and new[0]["reason"] == "bad_path", new
    # twin: the same name, validly encoded, works
    r = session_for(inst).put(server.url + "files/%C3%A9t%C3%A9.txt", data=b"summer")
    assert r.status_code in (201, 204)
    assert (inst.home.root / "data/files/été.txt").read_bytes() == b"summer"


def test_options_answers_the_same_for_every_path_of_a_share(inst: Instance, server: DavServer) -> None:
    (inst.home.root / "data/files/exists.txt").write_text("x")
    (inst.home.root / "data/files/folder").mkdir()
    s = session_for(inst)
    s.auth = None  # the certificate only: no password, no code
    answers = set()
    for path in ("files/", "files/exists.txt", "files/missing", "files/folder/", "files/missing/deeper",
                 "files/.davserver-upload-x"):
        r = s.options(server.url + path)
        assert r.status_code == 200, path
        answers.add((r.headers["Allow"], r.headers["DAV"], r.headers.get("Content-Length")))
    assert len(answers) == 1, answers
    ro = {s.options(server.url + p).headers["Allow"] for p in ("ro/", "ro/readme.txt", "ro/missing")}
    assert ro == {"OPTIONS, HEAD, GET, PROPFIND"}
    assert s.options(server.url).headers["Allow"] == "OPTIONS, HEAD, GET, PROPFIND"
    # a share carol may not read and a share that does not exist answer alike
    carol = session_for(inst, "carol")
    carol.auth = None
    hidden = {(r.status_code, r.text) for r in (carol.options(server.url + p) for p in ("team/", "team/x", "nosuch/",
                                                                                        "nosuch/x"))}
    assert hidden == {(401, "invalid credentials\n")}
    carol.auth = ("carol", inst.clients["carol"].password)
    found = {carol.request("PROPFIND", server.url + p, headers={"Depth": "0"}).status_code
             for p in ("team/", "nosuch/")}
    assert found == {401}


def test_another_accounts_lock_token_is_audited_as_a_refusal(inst: Instance, server: DavServer) -> None:
    lockinfo = (b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
                b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>")
    (inst.home.root / "data/files/doc.txt").write_text("x")
    alice, carol = session_for(inst), session_for(inst, "carol")
    r = alice.request("LOCK", server.url + "files/doc.txt", data=lockinfo, headers={"Timeout": "Second-60"})
    token = r.headers["Lock-Token"].strip("<>")
    r = carol.request("LOCK", server.url + "files/doc.txt", headers={"If": f"(<{token}>)", "Timeout": "Second-60"})
    assert r.status_code == 403
    last = audit(inst, 2)[-1]
    assert (last["account"], last["decision"], last["reason"]) == ("carol", "deny", "lock_token_owner")
    # the twin: alice refreshes her own lock
    r = alice.request("LOCK", server.url + "files/doc.txt", headers={"If": f"(<{token}>)", "Timeout": "Second-60"})
    assert r.status_code == 200
    assert audit(inst, 3)[-1]["decision"] == "allow"


@pytest.mark.client
def test_rclone_moveto_a_name_with_a_semicolon(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    import shutil

    if shutil.which("rclone") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rclone is not installed")
        pytest.skip("rclone is not installed")
    files = inst.home.root / "data/files"
    (files / "minutes").write_text("older minutes\n")
    (files / "draft.txt").write_text("draft\n")
    alice = inst.clients["alice"]
    obscured = subprocess.run(["rclone", "obscure", alice.password], capture_output=True, text=True,
                              check=True).stdout.strip()
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[dav]\ntype = webdav\nurl = {server.url}files/\nvendor = other\nuser = alice\n"
                    f"pass = {obscured}\n")
    env = dict(os.environ, RCLONE_CONFIG=str(conf), RCLONE_CA_CERT=str(inst.ca_file),
               RCLONE_CLIENT_CERT=str(alice.crt), RCLONE_CLIENT_KEY=str(alice.key))
    proc = subprocess.run(["rclone", "moveto", "dav:draft.txt", "dav:minutes;draft.txt"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (files / "minutes;draft.txt").read_text() == "draft\n"
    assert (files / "minutes").read_text() == "older minutes\n"
    assert not (files / "draft.txt").exists()


def test_reader_cannot_move_out_of_or_into_a_share_it_only_reads(inst: Instance, server: DavServer) -> None:
    team = inst.home.root / "data/team"
    (team / "report.txt").write_text("team\n")
    bob = session_for(inst, "bob")
    r = bob.request("MOVE", server.url + "team/report.txt", headers={"Destination": server.url + "files/r.txt"})
    assert r.status_code == 403 and (team / "report.txt").exists()
    r = bob.put(server.url + "files/x.txt", data=b"x")
    assert r.status_code == 201
    r = bob.request("COPY", server.url + "files/x.txt", headers={"Destination": server.url + "team/x.txt"})
    assert r.status_code == 403 and not (team / "x.txt").exists()
    assert audit(inst, 3)[-1]["reason"] == "dest_write_denied"
    # the twin: alice (staff) writes team
    r = session_for(inst).request("COPY", server.url + "files/x.txt",
                                  headers={"Destination": server.url + "team/x.txt"})
    assert r.status_code == 201 and (team / "x.txt").read_bytes() == b"x"


@pytest.mark.parametrize("method", ["DELETE", "MOVE"])
@pytest.mark.parametrize("path", ["files", "files/"])
def test_a_share_root_cannot_be_deleted_or_moved(inst: Instance, server: DavServer, method: str, path: str) -> None:
    (inst.home.root / "data/files/keep.txt").write_text("keep")
    r = session_for(inst).request(method, server.url + path, headers={"Destination": server.url + "files/sub/"})
    assert r.status_code == 403
    assert audit(inst, 1)[-1]["reason"] == "share_root"
    assert (inst.home.root / "data/files/keep.txt").read_text() == "keep"


def test_raw_delimiters_and_utf8_left_unencoded_are_read_as_data(inst: Instance, server: DavServer) -> None:
    (inst.home.root / "data/files/semi;colon ä.txt").write_text("s")
    r = session_for(inst).get(server.url + "files/semi;colon ä.txt")  # requests sends ";" raw
    assert r.status_code == 200 and r.text == "s"


def test_the_upstream_copy_move_still_reads_the_two_replaced_names() -> None:
    """copymove.py runs WsgiDAV's _copy_or_move with `unquote` and `urlparse` replaced:
    an upgrade that stops using them (or reads the header elsewhere) must fail here."""
    import wsgidav
    from wsgidav.request_server import RequestServer

    code = RequestServer._copy_or_move.__code__
    assert {"unquote", "urlparse"} <= set(code.co_names)
    assert not code.co_freevars
    assert wsgidav.__version__.startswith("4.4.")
    assert "HTTP_DESTINATION" in code.co_consts


def test_copy_and_move_across_shares(inst: Instance, server: DavServer) -> None:
    """alice writes both `files` and `team`: a tree copies across with its dead
    properties, Overwrite and WebDAV locks hold, and a MOVE leaves nothing behind."""
    files, team = inst.home.root / "data/files", inst.home.root / "data/team"
    (files / "tree/sub").mkdir(parents=True)
    (files / "tree/a.txt").write_text("a")
    (files / "tree/sub/b.txt").write_text("b")
    s = session_for(inst)
    proppatch = (b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
                 b"<Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>")
    assert s.request("PROPPATCH", server.url + "files/tree/sub/b.txt", data=proppatch).status_code == 207
    r = s.request("COPY", server.url + "files/tree/", headers={"Destination": server.url + "team/tree/"})
    assert r.status_code == 201
    assert (team / "tree/a.txt").read_text() == "a" and (team / "tree/sub/b.txt").read_text() == "b"
    r = s.request("PROPFIND", server.url + "team/tree/sub/b.txt", headers={"Depth": "0"},
                  data=b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>')
    assert "blue" in r.text
    r = s.request("COPY", server.url + "files/tree/a.txt",
                  headers={"Destination": server.url + "team/tree/a.txt", "Overwrite": "F"})
    assert r.status_code == 412
    lockinfo = (b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
                b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>")
    r = s.request("LOCK", server.url + "team/tree/a.txt", data=lockinfo, headers={"Timeout": "Second-60"})
    token = r.headers["Lock-Token"]
    (files / "tree/a.txt").write_text("A2")
    r = s.request("COPY", server.url + "files/tree/a.txt", headers={"Destination": server.url + "team/tree/a.txt"})
    assert r.status_code == 423 and (team / "tree/a.txt").read_text() == "a"
    r = s.request("COPY", server.url + "files/tree/a.txt",
                  headers={"Destination": server.url + "team/tree/a.txt",
                           "If": f"<{server.url}team/tree/a.txt> ({token})"})
    assert r.status_code == 204 and (team / "tree/a.txt").read_text() == "A2"
    r = s.request("MOVE", server.url + "files/tree/", headers={"Destination": server.url + "team/moved/"})
    assert r.status_code == 201
    assert not (files / "tree").exists() and (team / "moved/sub/b.txt").read_text() == "b"
    r = s.request("PROPFIND", server.url + "team/moved/sub/b.txt", headers={"Depth": "0"},
                  data=b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>')
    assert "blue" in r.text


@pytest.mark.parametrize("name", ["line\u2028sep.txt", "para\u2029sep.txt", "next\u0085line.txt"])
def test_a_name_with_a_unicode_line_break_stays_one_audit_record(inst: Instance, server: DavServer,
                                                                  name: str) -> None:
    before = len(audit(inst))
    r = session_for(inst).put(server.url + "files/" + quote(name), data=b"x")
    assert r.status_code in (201, 400)  # U+0085 is a C1 control: refused as a new name
    audit(inst, before + 1)
    text = (inst.home.state_dir / "audit.log").read_text()
    records = [json.loads(line) for line in text.splitlines()]  # splits on U+2028/U+2029/U+0085 too
    assert len(records) == before + 1
    assert records[-1]["path"] == "/files/" + name


@pytest.mark.parametrize("tail", [b"\xa0", b"\x85", b"\xc2\xa0"])
def test_only_space_and_tab_are_trimmed_from_a_destination(inst: Instance, server: DavServer, tail: bytes) -> None:
    """0x85 and 0xA0 are not white space around a field value (RFC 9110 §5.6.3): trimmed as
    str.strip() does, a MOVE to `victim.txt\\xa0` overwrote `victim.txt`."""
    files = inst.home.root / "data/files"
    (files / "victim.txt").write_text("victim\n")
    (files / "new.txt").write_text("new\n")
    s = session_for(inst)
    for dest in (b"/files/victim.txt" + tail, tail + b"/files/victim.txt"):
        (files / "new.txt").write_text("new\n")
        r = s.request("MOVE", server.url + "files/new.txt", headers={"Destination": dest})
        assert r.status_code in (400, 201), (dest, r.status_code)  # 201: a name ending in U+00A0
        assert (files / "victim.txt").read_text() == "victim\n"
    (files / "new.txt").write_text("new\n")
    # the twins: raw UTF-8 names whose last byte is 0xA0 or 0x85, and real white space around
    for name in ("voilà.txt", "Å.txt"):
        r = s.request("MOVE", server.url + "files/new.txt", headers={"Destination": f"/files/{name}".encode()})
        assert r.status_code in (201, 204) and (files / name).read_text() == "new\n", name
        os.rename(files / name, files / "new.txt")
    r = s.request("MOVE", server.url + "files/new.txt", headers={"Destination": b"/files/moved.txt \t"})
    assert r.status_code == 201 and (files / "moved.txt").read_text() == "new\n"


def test_a_cancelled_download_leaves_no_traceback(inst: Instance, server: DavServer,
                                                 capfd: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """cheroot writes errors it does not know to be routine to standard error, with a traceback."""
    import socket
    import ssl

    from .conftest import client_context

    (inst.home.root / "data/files/big.bin").write_bytes(b"x" * (8 << 20))
    import base64
    auth = base64.b64encode(f"alice:{inst.clients['alice'].password}".encode()).decode()
    ctx: ssl.SSLContext = client_context(inst, inst.clients["alice"])
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
        assert tls.recv(100)
    before = len(audit(inst))
    record = audit(inst, before + 1)[-1] if before == 0 else None
    for _ in range(200):
        records = audit(inst)
        if records and records[-1]["path"] == "/files/big.bin":
            record = records[-1]
            break
        time.sleep(0.02)
    assert record is not None and record["reason"] == "aborted"
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    time.sleep(0.2)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "socket.error" not in err, err[-2000:]
    assert session_for(inst).get(server.url + "files/big.bin", stream=True).status_code == 200  # still serving


def test_a_refused_name_says_what_is_wrong_with_it(inst: Instance, server: DavServer) -> None:
    r = session_for(inst).put(server.url + "files/a%2Fb.txt", data=b"x")
    assert r.status_code == 400 and r.text == "bad request: a name cannot contain a slash (%2F)\n"
    r = session_for(inst).get(server.url + "files/%ff")
    assert r.status_code == 400 and r.text == "bad request: a name is not valid UTF-8\n"
