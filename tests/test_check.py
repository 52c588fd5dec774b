"""`davserver check`: every problem the server would stop on (or that weakens it) is found
without serving, each with where, what and the fix; exit 0 / 1 / 2."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from davserver.check import check_instance
from davserver.cli import main
from davserver.pki import CertificateAuthority
from tests.conftest import Instance


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), "check", *args])


def findings(inst: Instance, *args: str) -> tuple[int, list[dict[str, Any]]]:
    r = run(inst.home.root, "--json", *args)
    assert "Traceback" not in r.output
    data = json.loads(r.stdout)
    assert data["ok"] is (r.exit_code == 0) and data["ok"] is (data["findings"] == [])
    for f in data["findings"]:
        assert f["level"] in ("error", "warning") and f["message"] and f["fix"]
        assert set(f) in ({"level", "setting", "message", "fix"}, {"level", "file", "message", "fix"}), f
    return r.exit_code, data["findings"]


def where(f: dict[str, Any]) -> str:
    return str(f.get("setting") or f.get("file"))


def append_config(inst: Instance, text: str) -> None:
    inst.home.config_file.write_text(inst.home.config_file.read_text() + text)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_sound_instance_is_all_well_and_check_writes_nothing(inst: Instance) -> None:
    before = tree_digest(inst.home.root)
    code, found = findings(inst)
    assert (code, found) == (0, [])
    r = run(inst.home.root)
    assert r.exit_code == 0 and "all is well" in r.output
    assert tree_digest(inst.home.root) == before


MODES = [("certs/ca.key", 0o644), ("certs/ca.key", 0o640), ("certs/server.key", 0o604),
         ("config/accounts.yaml", 0o644), ("state/state.db", 0o640), ("state", 0o755), ("state", 0o750)]


@pytest.mark.parametrize(("rel", "mode"), MODES, ids=[f"{r}-{m:o}" for r, m in MODES])
def test_keys_accounts_and_state_open_to_others_are_findings(inst: Instance, rel: str, mode: int) -> None:
    path = inst.home.root / rel
    if not path.exists():  # the SQLite file is made at the first start
        path.write_bytes(b"")
        path.chmod(0o600)
        assert findings(inst)[0] == 0
    good = path.stat().st_mode & 0o777
    path.chmod(mode)
    code, found = findings(inst)
    assert code == 1
    [f] = found
    assert f["level"] == "error" and f["file"] == rel and f"{mode:04o}" in f["message"]
    assert f["fix"] == f"chmod {'700' if path.is_dir() else '600'} {path}"
    path.chmod(good)
    assert findings(inst) == (0, [])


def test_certificate_and_crl_dates_come_from_the_servers_own_check(inst: Instance) -> None:
    ca = CertificateAuthority(inst.home.certs_dir)
    ca.issue_server_cert((), days=10)
    code, found = findings(inst)
    assert code == 1 and [(f["level"], where(f)) for f in found] == [("warning", "tls.certificate")]
    assert "expires on" in found[0]["message"] and "tls.reissue_days" in found[0]["fix"]
    ca.issue_server_cert((), days=397)
    assert findings(inst) == (0, [])
    # later: the server certificate has lapsed, and the CRL is past its nextUpdate
    later = datetime.now(UTC) + timedelta(days=400)
    lapsed = {(f.level, f.setting) for f in check_instance(inst.home, now=later)}
    assert {("error", "tls.certificate"), ("error", "tls.crl")} <= lapsed
    soon = datetime.now(UTC) + timedelta(days=31)
    assert ("error", "tls.crl") in {(f.level, f.setting) for f in check_instance(inst.home, now=soon)}
    assert check_instance(inst.home, now=datetime.now(UTC)) == []


def test_missing_certificate_files_are_findings(inst: Instance) -> None:
    (inst.home.certs_dir / "server.crt").rename(inst.home.certs_dir / "server.moved")
    code, found = findings(inst)
    assert code == 1 and "tls.certificate" in {where(f) for f in found}


def test_share_folders(inst: Instance) -> None:
    root = inst.home.root
    (root / "data/ro/readme.txt").unlink()
    (root / "data/ro").rmdir()
    (root / "data/team").rmdir()
    (root / "data/team").write_text("a file")
    code, found = findings(inst)
    assert code == 1
    by = {where(f): f for f in found}
    assert "does not exist" in by["shares.ro.path"]["message"] and "mkdir -p" in by["shares.ro.path"]["fix"]
    assert "not a folder" in by["shares.team.path"]["message"]
    assert "shares.files.path" not in by


def test_readers_and_writers_that_name_nobody(inst: Instance) -> None:
    text = inst.home.config_file.read_text().replace("readers: [bob], writers: [\"@staff\"]",
                                                     "readers: [bob, ghost], writers: [\"@staff\", \"@nogroup\"]")
    inst.home.config_file.write_text(text)
    code, found = findings(inst)
    assert code == 1 and [(f["level"], where(f)) for f in found] == [("warning", "shares.team")]
    assert "ghost, @nogroup" in found[0]["message"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_state_store_unreachable_is_a_finding_within_the_timeout(inst: Instance) -> None:
    append_config(inst, f"state: {{backend: redis, url: 'redis://127.0.0.1:{closed_port()}/0'}}\n")
    start = time.monotonic()
    code, found = findings(inst, "--timeout", "1")
    assert time.monotonic() - start < 10
    assert code == 1 and [(f["level"], where(f)) for f in found] == [("error", "state.url")]
    assert "(timeout 1 s)" in found[0]["message"]


def test_state_store_answering(inst: Instance, redis_url: str) -> None:
    append_config(inst, f"state: {{backend: redis, url: '{redis_url}'}}\n")
    assert findings(inst) == (0, [])


def test_a_damaged_sqlite_file(inst: Instance) -> None:
    db = inst.home.state_dir / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    db.chmod(0o600)
    code, found = findings(inst)
    assert code == 1 and [where(f) for f in found] == ["state.path"]


def test_plain_subject_rules_are_warned_as_the_server_warns(inst: Instance) -> None:
    append_config(inst, "identity: {subject_rules: [cn]}\n")
    code, found = findings(inst)
    assert code == 1 and [(f["level"], where(f)) for f in found] == [("warning", "identity.subject_rules[0]")]
    assert "issuer" in found[0]["fix"]


def test_subject_rules_with_an_issuer(inst: Instance) -> None:
    text = inst.home.config_file.read_text()
    inst.home.config_file.write_text(text + "identity: {subject_rules: [{issuer: certs/ca.crt, match: cn}]}\n")
    assert findings(inst) == (0, [])
    inst.home.config_file.write_text(text + "identity: {subject_rules: [{issuer: certs/nope.crt, match: cn}]}\n")
    code, found = findings(inst)
    assert code == 1 and [where(f) for f in found] == ["identity.subject_rules[0].issuer"]


def test_enrolment_listener_settings(inst: Instance) -> None:
    text = inst.home.config_file.read_text().replace("port: 0", "port: 8443")
    inst.home.config_file.write_text(text + "enrolment: {enabled: true, port: 8443}\n")
    code, found = findings(inst)
    assert code == 1 and {where(f) for f in found} == {"enrolment.port", "enrolment.url"}
    inst.home.config_file.write_text(text + "enrolment: {enabled: true, port: 8444, url: 'https://dav.example.org:8444'}\n")
    assert findings(inst) == (0, [])


def test_a_broken_accounts_file_is_a_finding(inst: Instance) -> None:
    inst.home.accounts_file.write_text("accounts:\n  alice:\n    password: plain\n")
    code, found = findings(inst)
    assert code == 1 and [where(f) for f in found] == ["config/accounts.yaml"]
    assert "accounts.alice.password" in found[0]["message"]


@pytest.mark.parametrize(("text", "key"), [
    ("server:\n  port: lots\n", "server.port"),
    ("server:\n  bind: 127.0.0.1\n  bind: 0.0.0.0\n", "server.bind"),
    ("srever:\n  port: 1\n", "srever"),
])
def test_a_config_error_is_one_line_and_exit_2(inst: Instance, text: str, key: str) -> None:
    inst.home.config_file.write_text(text)
    for args in ((), ("--json",)):
        r = run(inst.home.root, *args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and f"{key}:" in lines[0] and r.stdout == ""


def test_no_instance_is_exit_2(tmp_path: Path) -> None:
    r = run(tmp_path)
    assert r.exit_code == 2 and "no davserver instance" in r.stderr and list(tmp_path.iterdir()) == []


def test_text_output_is_one_line_per_finding(inst: Instance) -> None:
    os.chmod(inst.home.certs_dir / "ca.key", 0o644)
    append_config(inst, "identity: {subject_rules: [cn]}\n")
    r = run(inst.home.root)
    assert r.exit_code == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: certs/ca.key: readable by group or others (mode 0644) (fix: chmod 600 ")
    assert lines[1].startswith("warning: identity.subject_rules[0]: ")
