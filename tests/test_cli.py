"""The key manager and admin CLI, driven as users' scripts drive it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from davserver.accounts import load_accounts
from davserver.cli import main
from davserver.config import Home, load_config


def run(home: Path, *args: str, input: str | None = None, ok: bool = True):
    result = CliRunner().invoke(main, ["--home", str(home), *args], input=input)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def home(tmp_path: Path) -> Path:
    run(tmp_path, "init", "--hostname", "dav.example.org", "--hostname", "10.1.2.3")
    return tmp_path


def test_init_creates_an_instance_and_refuses_to_replace_the_ca(home: Path) -> None:
    for rel in ("certs/ca.crt", "certs/ca.key", "certs/server.crt", "certs/server.key", "certs/crl.pem",
                "config/davserver.yaml", "config/accounts.yaml", "data/files"):
        assert (home / rel).exists(), rel
    assert oct((home / "certs/ca.key").stat().st_mode & 0o777) == "0o600"
    again = run(home, "init", ok=False)
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    before = (home / "certs/ca.crt").read_bytes()
    run(home, "init", "--force")
    assert (home / "certs/ca.crt").read_bytes() != before


def test_user_lifecycle(home: Path) -> None:
    run(home, "user", "add", "alice", "--password-stdin", "--groups", "staff,admins", input="s3cret-password\n")
    acc = load_accounts(home / "config/accounts.yaml")["alice"]
    assert acc.groups == {"staff", "admins"} and acc.password_hash and acc.password_hash.startswith("$argon2id$")
    assert "s3cret-password" not in (home / "config/accounts.yaml").read_text()
    assert oct((home / "config/accounts.yaml").stat().st_mode & 0o777) == "0o600"
    dup = run(home, "user", "add", "alice", "--password-stdin", input="another-password\n", ok=False)
    assert dup.exit_code == 2
    short = run(home, "user", "add", "bob", "--password-stdin", input="short\n", ok=False)
    assert short.exit_code == 2 and "at least 8" in short.output
    run(home, "user", "disable", "alice")
    assert not load_accounts(home / "config/accounts.yaml")["alice"].enabled
    run(home, "user", "enable", "alice")
    old = acc.password_hash
    run(home, "user", "passwd", "alice", "--password-stdin", input="n3w-password!\n")
    assert load_accounts(home / "config/accounts.yaml")["alice"].password_hash != old
    rows = json.loads(run(home, "user", "list", "--json").output)
    assert rows == [{"name": "alice", "enabled": True, "groups": ["admins", "staff"], "password": True,
                     "totp": False, "certificates": []}]
    missing = run(home, "user", "disable", "nobody", ok=False)
    assert missing.exit_code == 2 and "nobody" in missing.output


def test_cert_issue_list_revoke(home: Path) -> None:
    run(home, "user", "add", "alice", "--password-stdin", input="s3cret-password\n")
    out = json.loads(run(home, "cert", "issue", "alice", "--email", "alice@example.org", "--json").output)
    assert set(out) >= {"serial", "fingerprint", "not_after", "paths", "p12_password"}
    assert Path(out["paths"]["p12"]).exists() and Path(out["paths"]["crt"]).exists()
    assert oct(Path(out["paths"]["key"]).stat().st_mode & 0o777) == "0o600"
    bound = load_accounts(home / "config/accounts.yaml")["alice"].certificates
    assert [c.fingerprint for c in bound] == [out["fingerprint"]]
    check = subprocess.run(["openssl", "pkcs12", "-in", out["paths"]["p12"], "-nokeys", "-passin",
                            "pass:" + out["p12_password"]], capture_output=True, text=True)
    assert check.returncode == 0 and "CN=alice" in check.stdout.replace(" = ", "=")
    second = json.loads(run(home, "cert", "issue", "alice", "--p12-password-stdin", "--legacy-p12", "--json",
                            input="my-p12-password\n").output)
    assert "p12_password" not in second
    assert second["paths"]["p12"].endswith("alice-2.p12"), "an earlier key is never overwritten"
    listed = {c["serial"]: c for c in json.loads(run(home, "cert", "list", "--json").output)}
    assert {listed[out["serial"]]["status"], listed[second["serial"]]["status"]} == {"valid"}
    run(home, "cert", "revoke", out["serial"])
    listed = {c["serial"]: c for c in json.loads(run(home, "cert", "list", "--json").output)}
    assert listed[out["serial"]]["status"] == "revoked" and listed[second["serial"]]["status"] == "valid"
    run(home, "cert", "revoke", "--account", "alice")
    assert all(c["status"] == "revoked" for c in json.loads(run(home, "cert", "list", "--json").output))
    assert load_accounts(home / "config/accounts.yaml")["alice"].certificates == ()
    unknown = run(home, "cert", "revoke", "ABCDEF", ok=False)
    assert unknown.exit_code == 2 and "cert list" in unknown.output
    nouser = run(home, "cert", "issue", "ghost", ok=False)
    assert nouser.exit_code == 2 and "user add ghost" in nouser.output


def test_share_add_keeps_comments_and_validates(home: Path) -> None:
    cfg = home / "config/davserver.yaml"
    run(home, "share", "add", "docs", "data/docs", "--readers", "bob", "--writers", "@staff", "--create")
    run(home, "share", "add", "pub", str(home / "public"), "--read-only", "--create")
    text = cfg.read_text()
    assert "# Worker threads" in text, "the admin's comments survive"
    shares = load_config(Home(home)).shares
    assert shares["docs"].readers == ("bob",) and shares["docs"].writers == ("@staff",)
    assert shares["pub"].read_only and shares["pub"].readers == ("*",)
    assert (home / "data/docs").is_dir() and (home / "public").is_dir()
    rows = json.loads(run(home, "share", "list", "--json").output)
    assert {r["name"] for r in rows} == {"files", "docs", "pub"}
    bad = run(home, "share", "add", "Docs", "x", ok=False)
    assert bad.exit_code == 2 and "lower-case" in bad.output
    assert cfg.read_text() == text


def test_bad_config_is_one_line_and_exit_2(home: Path) -> None:
    (home / "config/davserver.yaml").write_text("server:\n  port: lots\n")
    result = run(home, "serve", ok=False)
    assert result.exit_code == 2
    assert "server.port" in result.output and "'lots'" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_accounts_file_names_the_key(home: Path) -> None:
    (home / "config/accounts.yaml").write_text("accounts:\n  alice:\n    password: plain\n")
    result = run(home, "serve", "--port", "0", ok=False)
    assert result.exit_code == 2 and "accounts.alice.password" in result.output and "user passwd" in result.output


def test_startup_problems_are_one_line(home: Path) -> None:
    os.chmod(home / "certs/server.key", 0o644)
    r = run(home, "serve", "--port", "0", ok=False)
    assert r.exit_code == 2 and "chmod 600" in r.output
    os.chmod(home / "certs/server.key", 0o600)
    (home / "certs/ca.crt").rename(home / "certs/ca.moved")
    r = run(home, "serve", "--port", "0", ok=False)
    assert r.exit_code == 2 and "tls.client_ca" in r.output and "does not exist" in r.output
    (home / "certs/ca.moved").rename(home / "certs/ca.crt")
    shutil.rmtree(home / "data/files")
    r = run(home, "serve", "--port", "0", ok=False)
    assert r.exit_code == 2 and "shares.files.path" in r.output
    (home / "data/files").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run(home, "serve", "--port", str(busy.getsockname()[1]), ok=False)
    assert r.exit_code == 2 and "already in use" in r.output and "Traceback" not in r.output


def test_quickstart_serves_what_it_prints(tmp_path: Path) -> None:
    """The README's promise: the printed curl command reaches the demo share."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "davserver.cli", "--home", str(tmp_path), "quickstart", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.strip().startswith("curl "):
                break
        curl = next(line for line in lines if line.strip().startswith("curl "))
        text = "".join(lines)
        assert re.search(r"password\s+\S+", text) and "demo.p12" in "".join(lines + [proc.stdout.readline()
                                                                                    for _ in range(3)])
        out = subprocess.run([*shlex.split(curl), "-sS", "--fail", "--max-time", "10"], cwd=tmp_path,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "welcome.txt" in out.stdout
        wrong = subprocess.run([*shlex.split(curl.replace("-u demo:", "-u demo:x")), "-s", "-o", "/dev/null",
                                "-w", "%{http_code}", "--max-time", "10"], cwd=tmp_path, capture_output=True,
                               text=True)
        assert wrong.stdout == "401"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0


def test_totp_enrolment_and_share_policy(home: Path) -> None:
    run(home, "user", "add", "alice", "--password-stdin", input="s3cret-password\n")
    out = json.loads(run(home, "user", "totp", "enable", "alice", "--json").output)
    assert out["uri"].startswith("otpauth://totp/") and "issuer=davserver" in out["uri"]
    assert load_accounts(home / "config/accounts.yaml")["alice"].totp_secret == out["secret"]
    shown = run(home, "user", "totp", "enable", "alice", "--required").output
    assert "█" in shown or "▀" in shown or "▄" in shown, "a QR code is drawn in the terminal"
    acc = load_accounts(home / "config/accounts.yaml")["alice"]
    assert acc.totp_required and acc.totp_secret != out["secret"], "re-enrolling replaces the secret"
    run(home, "user", "totp", "disable", "alice")
    acc = load_accounts(home / "config/accounts.yaml")["alice"]
    assert acc.totp_secret is None and not acc.totp_required
    run(home, "share", "add", "vault", "data/vault", "--require", "password,totp")
    run(home, "share", "add", "drop", "data/drop", "--require", "none")
    shares = load_config(Home(home)).shares
    assert shares["vault"].require == ("password", "totp") and shares["drop"].require == ()
    bad = run(home, "share", "add", "x", "data/x", "--require", "totp", ok=False)
    assert bad.exit_code == 2 and "password, totp" in bad.output
    assert "unlocked" in run(home, "user", "unlock", "alice").output
