"""The enrolment commands as administrators' scripts drive them: cert invite / invites /
invite --revoke, cert renew, cert sign --csr, cert list --expiring. Every refusal is one
line on standard error with exit status 2, changes nothing, and has a twin that works."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from davserver import instance
from davserver.accounts import Account, load_accounts
from davserver.cli import main
from davserver.config import Home

CERT_KEYS = {"serial", "account", "fingerprint", "not_before", "not_after", "email", "status"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def run(home: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], input=input)


def ok(home: Path, *args: str, input: str | None = None) -> Result:
    result = run(home, *args, input=input)
    assert result.exit_code == 0, result.output
    return result


def refused(home: Path, *args: str, match: str, input: str | None = None) -> str:
    """The command exits 2 with exactly one line, `error: ...`, that matches `match`."""
    result = run(home, *args, input=input)
    assert result.exit_code == 2, result.output
    text = result.stderr if result.stderr else result.output
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in result.output
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def set_enrolment(home: Path, enabled: bool) -> None:
    """Flip enrolment.enabled in place (comments kept); other sections' `enabled` keys
    (e.g. metrics.enabled) are left alone."""
    cfg = home / "config" / "davserver.yaml"
    text = cfg.read_text()
    start = text.index("\nenrolment:\n")
    section, n = re.subn(r"(?m)^  enabled: (true|false)$", f"  enabled: {'true' if enabled else 'false'}",
                         text[start:], count=1)
    assert n == 1
    cfg.write_text(text[:start] + section)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ok(tmp_path, "init", "--hostname", "dav.example.org")
    ok(tmp_path, "user", "add", "alice", "--password-stdin", input="alice-password\n")
    ok(tmp_path, "user", "add", "bob", "--password-stdin", input="bob-password1\n")
    set_enrolment(tmp_path, True)
    return tmp_path


def invites(home: Path) -> list[dict[str, object]]:
    data = json.loads(ok(home, "cert", "invites", "--json").stdout)
    assert isinstance(data, list)
    return data


def issued(home: Path) -> set[str]:
    return {p.name for p in (home / "certs" / "issued").glob("*.crt")}


def test_invite_json_shape_and_the_link(home: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    data = json.loads(ok(home, "cert", "invite", "alice", "--json").stdout)
    assert set(data) == {"account", "url", "expires", "server_fingerprint"} and data["account"] == "alice"
    m = re.fullmatch(r"https://dav\.example\.org:8444/enrol/([A-Za-z0-9_-]{43})", data["url"])
    assert m, data["url"]
    assert ISO.fullmatch(data["expires"])
    expires = datetime.fromisoformat(data["expires"].replace("Z", "+00:00"))
    assert timedelta(hours=72) <= expires - before <= timedelta(hours=72, seconds=5)
    listed = invites(home)
    assert listed == [{"account": "alice", "created": listed[0]["created"], "expires": data["expires"], "failures": 0}]
    assert m.group(1) not in ok(home, "cert", "invites", "--json").stdout
    assert m.group(1) not in ok(home, "cert", "invites").stdout


def test_invite_text_shows_the_url_and_a_qr_code(home: Path) -> None:
    out = ok(home, "cert", "invite", "alice").stdout
    urls = re.findall(r"https://dav\.example\.org:8444/enrol/[A-Za-z0-9_-]{43}", out)
    assert len(urls) == 1
    qr_rows = [line for line in out.splitlines() if re.search("[█▀▄]", line)]
    assert len(qr_rows) >= 10, out


def test_invite_refused_when_enrolment_is_disabled(home: Path) -> None:
    set_enrolment(home, False)
    refused(home, "cert", "invite", "alice",
            match=r"enrolment is disabled: set enrolment\.enabled: true in .*davserver\.yaml")
    refused(home, "cert", "invite", "alice", "--json", match="enrolment is disabled")
    set_enrolment(home, True)
    assert invites(home) == []
    ok(home, "cert", "invite", "alice")  # twin
    assert len(invites(home)) == 1


def test_invite_refused_for_accounts_nobody_could_enrol(home: Path) -> None:
    refused(home, "cert", "invite", "nobody",
            match=r"no account 'nobody': create it first with `davserver user add nobody`")
    refused(home, "cert", "invite", "Alice", match="no account 'Alice'")
    ok(home, "user", "disable", "bob")
    refused(home, "cert", "invite", "bob", match=r"disabled: enable it first with `davserver user enable bob`")
    instance.add_account(Home(home), Account(name="carol", password_hash=None))
    refused(home, "cert", "invite", "carol", match=r"no password .*`davserver user passwd carol`")
    assert invites(home) == []
    ok(home, "user", "enable", "bob")
    ok(home, "cert", "invite", "bob")  # twins
    ok(home, "cert", "invite", "alice")
    assert sorted(str(i["account"]) for i in invites(home)) == ["alice", "bob"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("45m", 2700), ("72h", 259200), ("3d", 259200), ("1w", 604800), ("1d12h", 129600), ("2H", 7200),
])
def test_valid_for_durations(home: Path, text: str, seconds: int) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    data = json.loads(ok(home, "cert", "invite", "alice", "--valid-for", text, "--json").stdout)
    expires = datetime.fromisoformat(data["expires"].replace("Z", "+00:00"))
    assert timedelta(seconds=seconds) <= expires - before <= timedelta(seconds=seconds + 5)


@pytest.mark.parametrize("text", ["3x", "", "-5m", "5 m", "h", "59", "366d", "1.5.3h", "nan", "inf"])
def test_valid_for_refusals(home: Path, text: str) -> None:
    refused(home, "cert", "invite", "alice", "--valid-for", text, match="--valid-for")
    assert invites(home) == []


def test_invite_revoke(home: Path) -> None:
    urls = [json.loads(ok(home, "cert", "invite", "alice", "--json").stdout)["url"] for _ in range(2)]
    ok(home, "cert", "invite", "bob")
    assert len(set(urls)) == 2
    data = json.loads(ok(home, "cert", "invite", "--revoke", "alice", "--json").stdout)
    assert data == {"account": "alice", "revoked": 2}
    assert [i["account"] for i in invites(home)] == ["bob"], "twin: bob's invitation stays"
    assert ok(home, "cert", "invite", "--revoke", "alice").stdout.strip() == "0 invitations of alice withdrawn"
    refused(home, "cert", "invite", "--revoke", "bob", "--valid-for", "1h", match="one of the two")
    assert [i["account"] for i in invites(home)] == ["bob"]
    # withdrawing works while enrolment is off (it only closes links)
    set_enrolment(home, False)
    assert ok(home, "cert", "invite", "--revoke", "bob").stdout.strip() == "1 invitation of bob withdrawn"


def test_the_max_open_invitations_bound(home: Path) -> None:
    cfg = home / "config" / "davserver.yaml"
    cfg.write_text(cfg.read_text().replace("  max_open_invitations: 1000\n", "  max_open_invitations: 2\n", 1))
    ok(home, "cert", "invite", "alice")
    ok(home, "cert", "invite", "bob")
    refused(home, "cert", "invite", "alice", match=r"2 invitations are open \(enrolment\.max_open_invitations\)")
    assert len(invites(home)) == 2
    ok(home, "cert", "invite", "--revoke", "bob")
    ok(home, "cert", "invite", "alice")  # twin: withdrawing made room


def test_invitations_on_redis_and_an_unreachable_store(home: Path, redis_url: str) -> None:
    cfg = home / "config" / "davserver.yaml"
    sqlite_state = "state:\n"
    text = cfg.read_text()
    assert text.count(sqlite_state) == 1
    cfg.write_text(text.replace(sqlite_state, f"state:\n  url: {redis_url}\n  prefix: 'cli-test:'\n")
                   .replace("  backend: sqlite\n", "  backend: redis\n"))
    ok(home, "cert", "invite", "alice")
    assert [i["account"] for i in invites(home)] == ["alice"]
    cfg.write_text(cfg.read_text().replace(redis_url, "redis://127.0.0.1:9/0"))
    refused(home, "cert", "invite", "alice", match=r"redis.*unavailable.*check state\.url")
    refused(home, "cert", "invites", match=r"check state\.url")


def test_list_expiring(home: Path) -> None:
    ok(home, "cert", "issue", "alice", "--days", "10")
    ok(home, "cert", "issue", "bob")
    everything = json.loads(ok(home, "cert", "list", "--json").stdout)
    soon = json.loads(ok(home, "cert", "list", "--expiring", "30", "--json").stdout)
    assert len(everything) == 2 and len(soon) == 1
    assert set(soon[0]) == CERT_KEYS and soon[0]["account"] == "alice" and soon[0]["status"] == "valid"
    assert json.loads(ok(home, "cert", "list", "--expiring", "9", "--json").stdout) == []
    assert len(json.loads(ok(home, "cert", "list", "--expiring", "366", "--json").stdout)) == 2
    text = ok(home, "cert", "list", "--expiring", "30").stdout
    bobs = next(c["serial"] for c in everything if c["account"] == "bob")
    assert soon[0]["serial"] in text and bobs not in text
    assert run(home, "cert", "list", "--expiring", "-1").exit_code == 2
    assert run(home, "cert", "list", "--expiring", "soon").exit_code == 2


def test_renew(home: Path) -> None:
    old = json.loads(ok(home, "cert", "issue", "alice", "--email", "alice@example.org", "--json").stdout)
    data = json.loads(ok(home, "cert", "renew", old["serial"].lower(), "--json").stdout)
    assert set(data) == CERT_KEYS | {"renews", "paths", "p12_password"}
    assert data["renews"] == old["serial"] and data["account"] == "alice" and data["email"] == "alice@example.org"
    assert set(data["paths"]) == {"p12", "crt"} and data["serial"] != old["serial"]
    p12 = Path(data["paths"]["p12"]).read_bytes()
    _, leaf, _ = pkcs12.load_key_and_certificates(p12, data["p12_password"].encode())
    assert leaf == x509.load_pem_x509_certificate(Path(data["paths"]["crt"]).read_bytes())
    fingerprints = {c.fingerprint for c in load_accounts(home / "config/accounts.yaml")["alice"].certificates}
    assert {old["fingerprint"], data["fingerprint"]} <= fingerprints
    statuses = {c["serial"]: c["status"] for c in json.loads(ok(home, "cert", "list", "--json").stdout)}
    assert statuses[old["serial"]] == statuses[data["serial"]] == "valid"
    text = ok(home, "cert", "renew", old["serial"], "--out", str(home / "r"), "--p12-password-stdin",
              "--legacy-p12", input="chosen-password\n").stdout
    assert f"renewed {old['serial']} as " in text and "shown once" not in text
    info = subprocess.run(["openssl", "pkcs12", "-in", str(home / "r.p12"), "-info", "-noout", "-passin",
                           "pass:chosen-password"], capture_output=True, text=True, check=False)
    assert info.returncode == 0 and "TripleDES" in info.stderr + info.stdout


def test_renew_refusals_change_nothing(home: Path) -> None:
    old = json.loads(ok(home, "cert", "issue", "alice", "--json").stdout)
    before = issued(home), (home / "config/accounts.yaml").read_bytes()
    refused(home, "cert", "renew", "ABCDEF", match="no issued certificate with serial ABCDEF.*`davserver cert list`")
    refused(home, "cert", "renew", "zz-top", match="is not a hex serial")
    refused(home, "cert", "renew", old["serial"], "--p12-password-stdin", input="\n", match="no PKCS#12 password")
    a_file = home / "config" / "davserver.yaml"
    refused(home, "cert", "renew", old["serial"], "--out", str(a_file / "r"), match="cannot create")
    assert (issued(home), (home / "config/accounts.yaml").read_bytes()) == before
    ok(home, "cert", "revoke", old["serial"])
    before = issued(home), (home / "config/accounts.yaml").read_bytes()
    refused(home, "cert", "renew", old["serial"],
            match=r"is revoked: issue a new one with `davserver cert issue alice`")
    assert (issued(home), (home / "config/accounts.yaml").read_bytes()) == before


def _csr(tmp_path: Path, newkey: str = "ec") -> Path:
    args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if newkey == "ec" else ["-newkey", newkey]
    out = tmp_path / f"req-{newkey.replace(':', '')}.csr"
    made = subprocess.run(["openssl", "req", "-new", *args, "-nodes", "-keyout", str(tmp_path / "outside.key"),
                           "-subj", "/CN=root", "-out", str(out)], capture_output=True, check=False)
    assert made.returncode == 0, made.stderr
    return out


def test_sign(home: Path, tmp_path: Path) -> None:
    csr = _csr(tmp_path)
    data = json.loads(ok(home, "cert", "sign", "alice", "--csr", str(csr), "--out", str(tmp_path / "card"),
                         "--json").stdout)
    assert set(data) == CERT_KEYS | {"paths"} and data["paths"] == {"crt": str(tmp_path / "card.crt")}
    cert = x509.load_pem_x509_certificate((tmp_path / "card.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=alice" and data["account"] == "alice"
    bound = load_accounts(home / "config/accounts.yaml")["alice"].certificates
    assert data["fingerprint"] in {c.fingerprint for c in bound}
    text = ok(home, "cert", "sign", "bob", "--csr", str(csr)).stdout
    assert "signed certificate" in text and (home / "certs/clients/bob.crt").is_file()
    assert not (home / "certs/clients/bob.key").exists() and not (home / "certs/clients/bob.p12").exists()


def test_sign_refusals_change_nothing(home: Path, tmp_path: Path) -> None:
    good = _csr(tmp_path)
    weak = _csr(tmp_path, "rsa:1024")
    garbage = tmp_path / "garbage.csr"
    garbage.write_text("hello\n")
    before = issued(home), (home / "config/accounts.yaml").read_bytes()
    refused(home, "cert", "sign", "alice", "--csr", str(weak), match=r"--csr .*: the CSR's RSA key has 1024 bits")
    refused(home, "cert", "sign", "alice", "--csr", str(garbage), match="not a PEM certificate signing request")
    refused(home, "cert", "sign", "nobody", "--csr", str(good), match="no account 'nobody'")
    refused(home, "cert", "sign", "alice", "--csr", str(tmp_path / "missing.csr"), match="cannot read")
    assert (issued(home), (home / "config/accounts.yaml").read_bytes()) == before
    refused(home, "cert", "sign", "alice", "--csr", str(good), "--out", str(good / "card"), match="cannot create")
    assert (issued(home), (home / "config/accounts.yaml").read_bytes()) == before
    assert not list((home / "certs").glob("clients/*.crt"))
    ok(home, "cert", "sign", "alice", "--csr", str(good))  # twin
    assert len(issued(home)) == len(before[0]) + 1


@pytest.mark.parametrize(("section", "key"), [
    ({"enabled": "yes"}, "enrolment.enabled"),
    ({"port": 70000}, "enrolment.port"),
    ({"bind": "dav.example.org"}, "enrolment.bind"),
    ({"url": "http://dav.example.org:8444"}, "enrolment.url"),
    ({"url": "https://dav example.org"}, "enrolment.url"),
    ({"invite_seconds": 59}, "enrolment.invite_seconds"),
    ({"invite_seconds": 31_536_001}, "enrolment.invite_seconds"),
    ({"invite_max_failures": 0}, "enrolment.invite_max_failures"),
    ({"max_open_invitations": 0}, "enrolment.max_open_invitations"),
    ({"renew_before_days": -1}, "enrolment.renew_before_days"),
    ({"revoke_renewed": 1}, "enrolment.revoke_renewed"),
    ({"invite_hours": 3}, "enrolment.invite_hours"),
])
def test_enrolment_settings_are_checked(tmp_path: Path, section: dict[str, object], key: str) -> None:
    from davserver.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"enrolment": section}, Home(tmp_path))
    assert err.value.key == key
    # twin: defaults, and every key set to a value in range
    assert parse_config({}, Home(tmp_path)).enrolment.bind == "127.0.0.1"
    cfg = parse_config({"server": {"bind": "192.0.2.10"}, "enrolment": {
        "enabled": True, "port": 9444, "url": "https://dav.example.org:9444/", "invite_seconds": 60,
        "invite_max_failures": 1, "max_open_invitations": 1, "renew_before_days": 0, "revoke_renewed": True,
    }}, Home(tmp_path)).enrolment
    assert (cfg.bind, cfg.url, cfg.invite_seconds, cfg.revoke_renewed) == (
        "192.0.2.10", "https://dav.example.org:9444", 60.0, True), "bind defaults to server.bind; no trailing /"
    assert parse_config({"enrolment": {"bind": "::1", "invite_seconds": 31_536_000}},
                        Home(tmp_path)).enrolment.bind == "::1"
