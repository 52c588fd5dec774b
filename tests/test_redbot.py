"""REDbot, an HTTP linter we do not write ourselves, on a file, a folder and the listing
pages of a live server, on the short GET path and on WsgiDAV's.

REDbot (PyPI ``redbot``) fetches a URL and probes it again with ``If-None-Match``,
``If-Modified-Since``, a ``Range`` and ``Accept-Encoding: gzip``: validators, conditional
requests (conditions.py), ranges (ranges.py), caching headers and content negotiation.
It cannot present a client certificate, so it speaks plain HTTP to a local ``stunnel``
in client mode, which presents alice's certificate to davserver over TLS (checking the
server's certificate against the instance CA); the share's password goes in the
``Authorization`` header REDbot sends on every probe (tests/redbot_lint.py). davserver
reads neither the Host nor the port of the request for a GET, so the tunnel's address
in the URL is harmless.

A note of level ``bad`` fails the test. So does a note this project fixed (:data:`FIXED`),
so that it cannot come back. Every warning is printed to the terminal (also when the
test passes) with what was done about it; :data:`EXPLAINED` holds the ones that do not
apply to a file server, and why.

In CI (``CI=true``) a missing stunnel or redbot fails instead of skipping.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import Instance, running, session_for, wsgidav_only

LINT = Path(__file__).with_name("redbot_lint.py")
#: Ports tried for the tunnel's plain-HTTP side.
TUNNEL_PORTS = range(18800, 18900)
#: Seconds for one REDbot check (main fetch and its four probes) on a loaded 2-core machine.
LINT_SECONDS = 150.0

#: REDbot notes that davserver used to get and no longer does (note class name -> the fix).
FIXED = {
    "FRESHNESS_HEURISTIC": "a file's answers carry Cache-Control: private, no-cache (content_safety.py); "
                           "without it caches picked their own lifetime from Last-Modified",
    "FRESHNESS_NO_CACHE_NO_VALIDATOR": "answers without validators (errors, the folder redirect) "
                                       "carry Cache-Control: no-store instead",
    "MISSING_HDRS_304": "a 304 carries the headers of its 200 (Cache-Control among them)",
    "MISSING_HDRS_206": "a 206 carries the headers of its 200 (Cache-Control among them)",
    "REQUEST_HDR_IN_RESPONSE": "the step-up page no longer sends Pragma, a request field (RFC 9111 §5.4); "
                               "its Cache-Control: no-store is what caches obey",
}
#: What REDbot finds wrong with HSTS only because it sees the tunnel's plain HTTP: RFC 6797
#: §8.1 says a policy received over insecure transport is ignored (``HSTS_OVER_HTTP``), so
#: it calls the header invalid (``HSTS_INVALID``, level bad). Over the real TLS connection
#: the same header is valid; test_cache_policy_of_every_get_answer checks it is sent there.
TUNNEL_ONLY = {"HSTS_OVER_HTTP"}
#: REDbot warnings that do not apply to a file server (note class name -> why).
EXPLAINED = {
    "HSTS_INVALID": "the tunnel's plain HTTP (see TUNNEL_ONLY); over TLS the header is valid",
    "HSTS_NO_SUBDOMAINS": "includeSubDomains would bind every name below the server's host name to HTTPS: "
                          "not a file server's call to make for its admin",
    "RANGE_CL_FULL": "REDbot's range probe asks for bytes 0-96 or so of a sample; for a file of 97 bytes or "
                     "fewer that is the whole file, and a 206 of all of it is what RFC 9110 §14.1.2 says "
                     "(last-pos clamped to the end), as Apache and nginx answer",
}


def _require(found: bool, what: str) -> None:
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is not installed")
        pytest.skip(f"{what} is not installed")


@pytest.fixture
def stunnel() -> str:
    """The stunnel binary (Debian: stunnel4); the redbot package must be importable too."""
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    _require(exe is not None, "stunnel (apt-get install stunnel4)")
    _require(importlib.util.find_spec("redbot") is not None, "redbot (pip install -e '.[test]')")
    assert exe is not None
    return exe


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def tunnel(exe: str, inst: Instance, server_port: int, folder: Path) -> Iterator[int]:
    """stunnel in client mode: plain HTTP on a free loopback port (yielded), TLS with
    alice's certificate to ``server_port``, the server checked against the instance CA
    and its IP address. Stopped (its PID only) when the block ends."""
    client = inst.clients["alice"]
    log = folder / "stunnel.log"
    for port in TUNNEL_PORTS:
        if not _port_is_free(port):
            continue
        conf = folder / f"stunnel-{port}.conf"
        conf.write_text(
            "foreground = yes\npid =\nsyslog = no\ndebug = 5\n"
            f"output = {log}\n"
            "[dav]\nclient = yes\n"
            f"accept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{server_port}\n"
            f"cert = {client.crt}\nkey = {client.key}\nCAfile = {inst.ca_file}\n"
            "verifyChain = yes\ncheckIP = 127.0.0.1\n"
        )
        proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline and not _accepts(port):
                time.sleep(0.1)
            if proc.poll() is not None:
                continue  # the port was taken between the look and the bind: the next one
            assert _accepts(port), f"stunnel did not listen on {port}:\n{_tail(log)}"
            yield port
            return
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    pytest.fail(f"no free port for stunnel in {TUNNEL_PORTS}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def lint(url: str, *, password: str | None = None, method: str = "GET") -> dict[str, Any]:
    """REDbot's report on a ``method`` request for ``url`` (see tests/redbot_lint.py), with
    alice's Basic credentials."""
    args = [sys.executable, str(LINT), url, "--method", method, "--timeout", str(LINT_SECONDS)]
    if password is not None:
        token = base64.b64encode(f"alice:{password}".encode()).decode()
        args += ["--header", f"Authorization: Basic {token}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=LINT_SECONDS + 60, check=False)
    assert done.returncode == 0, f"REDbot on {url} did not finish ({done.returncode}):\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def header(report: dict[str, Any], name: str, check: str | None = None) -> str | None:
    """A header of the main response (or of the probe ``check``), without its leading space."""
    headers = report["headers"] if check is None else report["subrequests"][check]["headers"]
    return next((v.strip() for k, v in headers if k.lower() == name.lower()), None)


def judge(reports: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], title: str) -> None:
    """Print every warning with what was done about it; fail on a ``bad`` note or a fixed one."""
    lines = [f"REDbot warnings ({title}):"]
    failures = []
    for report in reports:
        assert report["fetch_error"] is None, report
        for note in report["notes"]:
            where = f"/{report['url'].split('/', 3)[-1]} [{note['check']}] {note['name']}: {note['summary']}"
            if note["subnotes"]:
                where += f" ({', '.join(note['subnotes'])})"
            # HSTS_INVALID for the tunnel's plain HTTP alone (its other children are advice).
            children = set(note["subnotes"])
            artefact = (note["name"] == "HSTS_INVALID" and bool(children & TUNNEL_ONLY)
                        and children <= TUNNEL_ONLY | {"HSTS_NO_SUBDOMAINS", "HSTS_NO_PRELOAD"})
            if note["level"] == "bad" and not artefact:
                failures.append(f"error: {where}")
            elif note["name"] in FIXED:
                failures.append(f"fixed, back again: {where} ({FIXED[note['name']]})")
            elif note["level"] == "warning" or artefact:
                why = EXPLAINED.get(note["name"], "not yet looked at: fix it or explain it in EXPLAINED")
                lines.append(f"  {where}\n      -> {why}")
    if len(lines) == 1:
        lines.append("  none")
    with capsys.disabled():
        print("\n" + "\n".join(lines + failures))
    assert not failures, "\n".join(failures)


@pytest.fixture
def tree(inst: Instance) -> Instance:
    files = inst.home.root / "data" / "files"
    (files / "docs").mkdir()
    (files / "docs" / "report.txt").write_text("the quarterly figures\n" * 120)  # inline text, 2,640 bytes
    (files / "page.html").write_text("<p>hi</p>\n")  # an attachment, smaller than REDbot's range probe
    (files / "data.bin").write_bytes(os.urandom(300_000))
    return inst


FILE_URLS = ("files/docs/report.txt", "files/page.html", "files/data.bin", "files/missing.txt")


@pytest.mark.client
@pytest.mark.parametrize("path", ["short", "wsgidav"])
def test_redbot_files(path: str, stunnel: str, tree: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """Files (text, an attachment, a big binary, a missing one; a HEAD too) on each GET path: no errors,
    the fixed warnings stay fixed, and REDbot's probes got what RFC 9110 wants."""
    pw = tree.clients["alice"].password
    with running(tree) as srv, tunnel(stunnel, tree, srv.port, tmp_path) as port:
        base = f"http://127.0.0.1:{port}/"
        if path == "wsgidav":
            with wsgidav_only(monkeypatch):
                reports = [lint(base + u, password=pw) for u in FILE_URLS]
                head = lint(base + FILE_URLS[0], password=pw, method="HEAD")
        else:
            reports = [lint(base + u, password=pw) for u in FILE_URLS]
            head = lint(base + FILE_URLS[0], password=pw, method="HEAD")
    text, page, big, missing = reports
    assert head["status"] == 200 and header(head, "Content-Length") == header(text, "Content-Length")
    assert header(head, "Cache-Control") == "private, no-cache" and header(head, "ETag") == header(text, "ETag")
    assert [r["status"] for r in reports] == [200, 200, 200, 404]
    for r in (text, page, big):
        assert header(r, "Cache-Control") == "private, no-cache"
        etag = header(r, "ETag")
        assert etag and etag.startswith('"')
        # REDbot's If-None-Match and If-Modified-Since probes: 304 with the 200's validators and policy.
        for check in ("etag_validate", "lm_validate"):
            assert r["subrequests"][check]["status"] == 304, (check, r["subrequests"])
            assert header(r, "ETag", check) == etag
            assert header(r, "Cache-Control", check) == "private, no-cache"
        assert r["subrequests"]["range"]["status"] == 206
        assert header(r, "Cache-Control", "range") == "private, no-cache"
        assert header(r, "Content-Encoding", "conneg") is None  # no gzip offered, so no Vary owed
    assert header(big, "Content-Range", "range").endswith("/300000")  # type: ignore[union-attr]
    assert header(missing, "Cache-Control") == "no-store"
    judge([*reports, head], capsys, f"files, {path} path")


@pytest.mark.client
def test_redbot_folder_and_listing(stunnel: str, tree: Instance, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A folder named without its slash (301), its listing page, the share list at / and
    the step-up page the listing links to."""
    pw = tree.clients["alice"].password
    with running(tree) as srv, tunnel(stunnel, tree, srv.port, tmp_path) as port:
        base = f"http://127.0.0.1:{port}/"
        reports = [lint(base + u, password=pw) for u in ("files/docs", "files/docs/", "", "_davserver/")]
    redirect, listing, root, stepup = reports
    assert redirect["status"] == 301 and header(redirect, "Location") == "/files/docs/"
    assert header(redirect, "Cache-Control") == "no-store"
    for r in (listing, root):
        assert r["status"] == 200 and header(r, "Content-Type") == "text/html; charset=utf-8"
        assert header(r, "Cache-Control") == "no-store"
    assert stepup["status"] == 200 and header(stepup, "Cache-Control") == "no-store"
    assert header(stepup, "Pragma") is None
    judge(reports, capsys, "folder and listings")


@pytest.mark.client
def test_redbot_through_the_tunnel_needs_the_password(stunnel: str, tree: Instance, tmp_path: Path) -> None:
    """Twin: the tunnel's certificate alone does not open the share, so the reports above
    are of the served file, not of a refusal."""
    with running(tree) as srv, tunnel(stunnel, tree, srv.port, tmp_path) as port:
        refused = lint(f"http://127.0.0.1:{port}/files/docs/report.txt")
        wrong = lint(f"http://127.0.0.1:{port}/files/docs/report.txt", password="not-her-password")
    assert refused["status"] == 401 and wrong["status"] == 401
    assert header(refused, "ETag") is None


@contextmanager
def plain_server(extra: list[tuple[str, str]]) -> Iterator[str]:
    """A plain HTTP server on a free loopback port answering every GET with 240 bytes
    and the ``extra`` headers (304 to ``If-None-Match: "v1"`` when they hold that ETag);
    yields its URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"twelve bytes" * 20
            if ("ETag", '"v1"') in extra and self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "text/plain")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/x"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


@pytest.mark.client
@pytest.mark.parametrize(("extra", "expected"), [
    ([("Cache-Control", "max-age=soon")], "error: "),        # a bad note fails the build
    ([("ETag", '"v1"')], "fixed, back again: "),              # no Cache-Control: the heuristic warning
    ([("Strict-Transport-Security", "includeSubDomains")], "error: .*HSTS_INVALID"),  # no max-age: not the tunnel
])
def test_the_gate_fails_on_errors_and_fixed_warnings(stunnel: str, extra: list[tuple[str, str]], expected: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Twin of the gate: a server that gets it wrong fails :func:`judge`; one that sends
    what davserver sends passes."""
    with plain_server(extra) as url:
        report = lint(url)
    with pytest.raises(AssertionError, match=expected):
        judge([report], capsys, "a server that gets it wrong")
    with plain_server([("ETag", '"v1"'), ("Cache-Control", "private, no-cache")]) as url:
        judge([lint(url)], capsys, "a server that gets it right")


@pytest.mark.parametrize("path", ["short", "wsgidav"])
def test_cache_policy_of_every_get_answer(path: str, tree: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix behind FRESHNESS_HEURISTIC, over real TLS on each GET path: every answer a
    file's GET or HEAD can get says ``private, no-cache``; answers without a validator
    (a missing file, the folder redirect, the listing) say ``no-store``. Twin: ``no-cache``
    costs nothing and hides nothing, as revalidation gives 304 while the file is unchanged
    and the new bytes once a client has changed it (same size, same second)."""
    url_file = "files/docs/report.txt"
    with running(tree) as srv:
        s = session_for(tree, "alice")
        if path == "wsgidav":
            monkeypatch.setattr("davserver.fs.fast_get", lambda *args: None)
        first = s.get(srv.url + url_file)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        variants = {
            "GET": s.get(srv.url + url_file),
            "HEAD": s.head(srv.url + url_file),
            "Range": s.get(srv.url + url_file, headers={"Range": "bytes=10-19"}),
            "If-None-Match": s.get(srv.url + url_file, headers={"If-None-Match": etag}),
            "If-Modified-Since": s.get(srv.url + url_file, headers={"If-Modified-Since": modified}),
        }
        assert [r.status_code for r in variants.values()] == [200, 200, 206, 304, 304]
        for name, r in variants.items():
            assert r.headers.get("Cache-Control") == "private, no-cache", name
            assert r.headers.get("ETag") == etag, name
        missing = s.get(srv.url + "files/docs/missing.txt")
        redirect = s.get(srv.url + "files/docs", allow_redirects=False)
        listing = s.get(srv.url + "files/docs/")
        stepup = s.get(srv.url + "_davserver/")
        assert (missing.status_code, redirect.status_code, listing.status_code, stepup.status_code) == (
            404, 301, 200, 200)
        for r in (missing, redirect, listing, stepup):
            assert r.headers.get("Cache-Control") == "no-store", r.url
        # The step-up page: no Pragma (a request field), and its HSTS, which REDbot sees over
        # the tunnel's plain HTTP only, is sent over TLS.
        assert "Pragma" not in stepup.headers
        assert stepup.headers["Strict-Transport-Security"] == "max-age=31536000"
        # The twin: a cache that revalidates sees an edit that keeps the size.
        edited = first.content.replace(b"quarterly", b"QUARTERLY", 1)
        assert len(edited) == len(first.content)
        assert s.put(srv.url + url_file, data=edited).status_code == 204
        again = s.get(srv.url + url_file, headers={"If-None-Match": etag})
        assert again.status_code == 200 and again.content == edited
        assert again.headers["ETag"] != etag and again.headers["Cache-Control"] == "private, no-cache"
        unchanged = s.get(srv.url + url_file, headers={"If-None-Match": again.headers["ETag"]})
        assert unchanged.status_code == 304 and unchanged.content == b""
