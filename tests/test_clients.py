"""Real external WebDAV clients (curl, rclone, litmus, requests) against a live server.

Every request needs the client certificate *and* the account's password; each
success test has a twin that leaves one of them out and must fail.

A missing tool skips its tests on a workstation but fails them in CI (CI=true),
so a broken CI image cannot turn the suite green by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from davserver.server import DavServer
from tests.conftest import Client, Instance, session_for

pytestmark = pytest.mark.client

TIMEOUT = 60  # seconds for one curl/rclone run
LITMUS_TIMEOUT = 300
LITMUS_SUITES = ("basic", "copymove", "props", "locks", "http")


def require_tool(name: str) -> str:
    """Path of an external tool; skip without it, but fail in CI where it must be installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (see .ci/run for the packages)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true, so a missing client is an error")
        pytest.skip(message)
    return path


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without proxies, tool settings or the user's dotfiles."""
    home = tmp_path / "tool-home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("RCLONE_", "CURL_"))
    }
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"), NO_PROXY="*", no_proxy="*", LC_ALL="C.UTF-8")
    env.update(extra)
    return env


def share_dir(inst: Instance, share: str) -> Path:
    return inst.home.root / "data" / share


# --- curl ----------------------------------------------------------------------------


def run_curl(
    inst: Instance,
    tmp_path: Path,
    *args: str,
    client: Client | None = None,
    password: str | None = None,
    cert: str = "pem",
) -> tuple[int, int, bytes, str]:
    """Run curl; returns (exit code, HTTP status or 0, body, stderr).

    cert: "pem" (crt + key), "p12" (the PKCS#12 file) or "none" (no client certificate).
    """
    curl = require_tool("curl")
    body = tmp_path / "curl-body"
    body.unlink(missing_ok=True)
    cmd = [curl, "-q", "-sS", "--noproxy", "*", "--max-time", str(TIMEOUT),
           "--cacert", str(inst.ca_file), "-o", str(body), "-w", "%{http_code}"]
    if client is not None:
        if cert == "pem":
            cmd += ["--cert", str(client.crt), "--key", str(client.key)]
        elif cert == "p12":
            cmd += ["--cert-type", "P12", "--cert", f"{client.p12}:{client.p12_password}"]
        else:
            assert cert == "none", cert
        pw = client.password if password is None else password
        cmd += ["-u", f"{client.account}:{pw}"]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT + 10,
                          env=clean_env(tmp_path), check=False)
    code = proc.stdout.strip()
    status = int(code) if code.isdigit() else 0
    data = body.read_bytes() if body.exists() else b""
    return proc.returncode, status, data, proc.stderr


def test_curl_get_file(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello from the share\n")
    rc, status, body, err = run_curl(inst, tmp_path, "--fail", f"{server.url}files/hello.txt",
                                     client=inst.clients["alice"])
    assert (rc, status) == (0, 200), err
    assert body == b"hello from the share\n"


def test_curl_put_then_get(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    alice = inst.clients["alice"]
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(200_000))
    url = f"{server.url}files/upload.bin"
    rc, status, _, err = run_curl(inst, tmp_path, "--fail", "-T", str(local), url, client=alice)
    assert (rc, status) == (0, 201), err
    assert (share_dir(inst, "files") / "upload.bin").read_bytes() == local.read_bytes()
    rc, status, body, err = run_curl(inst, tmp_path, "--fail", url, client=alice)
    assert (rc, status) == (0, 200), err
    assert body == local.read_bytes()


def test_curl_mkcol(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    rc, status, _, err = run_curl(inst, tmp_path, "--fail", "-X", "MKCOL",
                                  f"{server.url}files/newdir/", client=inst.clients["alice"])
    assert (rc, status) == (0, 201), err
    assert (share_dir(inst, "files") / "newdir").is_dir()


def test_curl_move(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    files = share_dir(inst, "files")
    (files / "old name.txt").write_bytes(b"moving\n")
    dest = f"{server.url}files/{quote('new name.txt')}"
    rc, status, _, err = run_curl(inst, tmp_path, "--fail", "-X", "MOVE",
                                  "-H", f"Destination: {dest}",
                                  f"{server.url}files/{quote('old name.txt')}",
                                  client=inst.clients["alice"])
    assert (rc, status) == (0, 201), err
    assert not (files / "old name.txt").exists()
    assert (files / "new name.txt").read_bytes() == b"moving\n"


def test_curl_delete(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    alice = inst.clients["alice"]
    target = share_dir(inst, "files") / "doomed.txt"
    target.write_bytes(b"bye\n")
    url = f"{server.url}files/doomed.txt"
    rc, status, _, err = run_curl(inst, tmp_path, "--fail", "-X", "DELETE", url, client=alice)
    assert (rc, status) == (0, 204), err
    assert not target.exists()
    rc, status, _, err = run_curl(inst, tmp_path, url, client=alice)
    assert (rc, status) == (0, 404), err


def test_curl_propfind_depth1_lists_file(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    files = share_dir(inst, "files")
    (files / "listed.txt").write_bytes(b"12345")
    (files / "sub").mkdir()
    rc, status, body, err = run_curl(inst, tmp_path, "--fail", "-X", "PROPFIND", "-H", "Depth: 1",
                                     f"{server.url}files/", client=inst.clients["alice"])
    assert (rc, status) == (0, 207), err
    root = ET.fromstring(body)  # noqa: S314 - our own test server's response
    ns = {"d": "DAV:"}
    paths = {unquote(urlsplit(h.text or "").path).rstrip("/")
             for h in root.findall("d:response/d:href", ns)}
    assert paths == {"/files", "/files/listed.txt", "/files/sub"}, body.decode()
    for response in root.findall("d:response", ns):
        if (response.findtext("d:href", "", ns)).endswith("listed.txt"):
            assert response.findtext(".//d:getcontentlength", "", ns) == "5"


def test_curl_without_client_cert_fails_at_tls(inst: Instance, server: DavServer,
                                               tmp_path: Path) -> None:
    (share_dir(inst, "files") / "secret.txt").write_bytes(b"secret\n")
    rc, status, body, err = run_curl(inst, tmp_path, f"{server.url}files/secret.txt",
                                     client=inst.clients["alice"], cert="none")
    assert rc != 0, f"curl without a client certificate succeeded (HTTP {status})"
    assert status == 0, f"got an HTTP response ({status}) without a client certificate"
    assert b"secret" not in body


def test_curl_wrong_password_gets_401(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    (share_dir(inst, "files") / "secret.txt").write_bytes(b"secret\n")
    headers = tmp_path / "headers"
    rc, status, body, err = run_curl(inst, tmp_path, "-D", str(headers),
                                     f"{server.url}files/secret.txt",
                                     client=inst.clients["alice"], password="not-the-password")
    assert (rc, status) == (0, 401), err
    assert b"secret" not in body
    assert re.search(r"(?im)^www-authenticate: basic ", headers.read_text()), headers.read_text()


def test_curl_p12_works(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"via pkcs12\n")
    rc, status, body, err = run_curl(inst, tmp_path, "--fail", f"{server.url}files/hello.txt",
                                     client=inst.clients["alice"], cert="p12")
    assert (rc, status) == (0, 200), err
    assert body == b"via pkcs12\n"


# --- rclone --------------------------------------------------------------------------


def rclone_remote(inst: Instance, server: DavServer, tmp_path: Path, name: str,
                  password: str) -> dict[str, str]:
    """Write a private rclone config with one remote; returns the environment to run rclone in."""
    rclone = require_tool("rclone")
    env = clean_env(tmp_path)
    obscured = subprocess.run([rclone, "obscure", "-"], input=password, capture_output=True,
                              text=True, env=env, timeout=TIMEOUT, check=True).stdout.strip()
    conf = tmp_path / "rclone.conf"
    old = conf.read_text() if conf.exists() else ""
    conf.write_text(
        old + f"[{name}]\ntype = webdav\nurl = {server.url}files/\nvendor = other\n"
        f"user = alice\npass = {obscured}\n\n"
    )
    conf.chmod(0o600)
    alice = inst.clients["alice"]
    env.update(RCLONE_CONFIG=str(conf), RCLONE_CA_CERT=str(inst.ca_file),
               RCLONE_CLIENT_CERT=str(alice.crt), RCLONE_CLIENT_KEY=str(alice.key))
    return env


def run_rclone(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("rclone"), *args], capture_output=True, text=True,
                          env=env, timeout=180, check=False)


def test_rclone_copy_and_check(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    unicode_name = "Grüße – résumé 日本語 ✓.txt"
    (src / "hello.txt").write_text("hello\n")
    (src / unicode_name).write_text("unicode content ✓\n", encoding="utf-8")
    (src / "random-5mb.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (src / "sub" / "nested.txt").write_text("nested\n")
    (src / "sub" / "deeper" / "leaf.md").write_text("# leaf\n")
    env = rclone_remote(inst, server, tmp_path, "dav", inst.clients["alice"].password)

    copy = run_rclone(env, "copy", str(src), "dav:")
    assert copy.returncode == 0, copy.stderr
    check = run_rclone(env, "check", "--download", str(src), "dav:")
    assert check.returncode == 0, check.stdout + check.stderr

    files = share_dir(inst, "files")
    for p in src.rglob("*"):
        if p.is_file():
            assert (files / p.relative_to(src)).read_bytes() == p.read_bytes(), p


def test_rclone_wrong_password_fails(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    env = rclone_remote(inst, server, tmp_path, "bad", "not-the-password")
    lsd = run_rclone(env, "lsd", "--low-level-retries", "1", "--retries", "1", "bad:")
    assert lsd.returncode != 0, f"rclone lsd succeeded with a wrong password:\n{lsd.stdout}"
    assert "401" in lsd.stderr, lsd.stderr


# --- litmus --------------------------------------------------------------------------

_SUMMARY = re.compile(r"summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed")


def run_litmus(inst: Instance, tmp_path: Path, url: str, account: str = "alice") -> str:
    """Run litmus's five suites against url as the account (its p12 and password).

    Fails the test on any failed or missing suite; returns the summary lines.
    """
    litmus = require_tool("litmus")
    client = inst.clients[account]
    # litmus decrypts the p12 with the HTTP password: conftest makes them equal.
    assert client.p12_password == client.password
    scratch = tmp_path / "litmus"
    scratch.mkdir(exist_ok=True)
    proc = subprocess.run(
        [litmus, "-k", "-c", str(client.p12), url, client.account, client.password],
        cwd=scratch, capture_output=True, text=True, env=clean_env(tmp_path),
        timeout=LITMUS_TIMEOUT, check=False,
    )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines() if "summary for" in line]
    summary = "\n".join(lines) or output[-3000:]
    results = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _SUMMARY.finditer(output)}
    missing = [s for s in LITMUS_SUITES if s not in results]
    assert not missing, f"litmus suites missing {missing}:\n{summary}"
    failed = {s: r for s, r in results.items() if r[2]}
    assert not failed, f"litmus failures:\n{summary}"
    # A suite that stops early still reports 0 failed; make sure each ran its tests.
    assert all(r[0] > 1 and r[0] == r[1] for r in results.values()), summary
    return summary


def test_litmus_all_suites_pass(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    print(run_litmus(inst, tmp_path, f"{server.url}files/"))


# --- Python requests -----------------------------------------------------------------


def test_requests_put_get_roundtrip(inst: Instance, server: DavServer) -> None:
    body = os.urandom(1024 * 1024)
    url = f"{server.url}files/requests-1mb.bin"
    with session_for(inst, "alice") as s:
        put = s.put(url, data=body, timeout=TIMEOUT)
        assert put.status_code == 201, put.text
        get = s.get(url, timeout=TIMEOUT)
        assert get.status_code == 200
        assert get.content == body
    assert (share_dir(inst, "files") / "requests-1mb.bin").read_bytes() == body


def test_requests_read_only_share_refuses_put(inst: Instance, server: DavServer) -> None:
    with session_for(inst, "alice") as s:
        put = s.put(f"{server.url}ro/new.txt", data=b"nope\n", timeout=TIMEOUT)
        assert put.status_code == 403, (put.status_code, put.text)
        get = s.get(f"{server.url}ro/readme.txt", timeout=TIMEOUT)
        assert (get.status_code, get.content) == (200, b"read only\n")
    assert not (share_dir(inst, "ro") / "new.txt").exists()
