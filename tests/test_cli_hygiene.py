"""The CLI never tracebacks and never half-writes: every failure is one line on standard
error and exit status 2, and a command that fails leaves the instance as it was."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from davserver import instance
from davserver.accounts import load_accounts
from davserver.cli import _serving, main
from davserver.config import Home, load_config
from davserver.pki import CertificateAuthority, load_crl_serials
from davserver.store import open_store
from davserver.store.base import Grant
from tests.conftest import Instance

README = Path(__file__).resolve().parent.parent / "README.md"


def run(home: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], input=input)


def one_line_error(r: Result) -> str:
    """The failure's single stderr line (asserted: exit 2, no traceback)."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def digest(*paths: Path) -> dict[str, str]:
    """Bytes of files (and of every file under folders), to prove nothing changed."""
    out: dict[str, str] = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_unreachable_redis(home: Path) -> None:
    cfg = home / "config/davserver.yaml"
    cfg.write_text(cfg.read_text() + f"state: {{backend: redis, url: 'redis://127.0.0.1:{closed_port()}/0'}}\n")


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield int(busy.getsockname()[1])


# --- quickstart --------------------------------------------------------------------


def test_quickstart_with_the_port_taken_keeps_the_demo_password_and_p12(tmp_path: Path) -> None:
    home = Home(tmp_path)
    demo = instance.prepare_demo(home)
    p12, accounts = Path(demo.paths["p12"]), home.accounts_file
    before = digest(p12, accounts, home.certs_dir)
    with taken_port() as port:
        line = one_line_error(run(tmp_path, "quickstart", "--port", str(port)))
    assert f"127.0.0.1:{port} is already in use" in line
    assert digest(p12, accounts, home.certs_dir) == before
    # the demo password printed last time still opens the .p12 and signs in
    out = subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-nokeys", "-passin", f"pass:{demo.password}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from davserver.auth.passwords import verify_password

    assert verify_password(load_accounts(accounts)["demo"].password_hash or "", demo.password)


def test_quickstart_with_the_port_taken_creates_nothing_in_an_empty_folder(tmp_path: Path) -> None:
    with taken_port() as port:
        one_line_error(run(tmp_path, "quickstart", "--port", str(port)))
    assert list(tmp_path.iterdir()) == []


# --- shares ----------------------------------------------------------------------


def test_share_add_refuses_what_is_in_the_way_in_one_line_and_changes_nothing(inst: Instance) -> None:
    root = inst.home.root
    (root / "afile").write_text("x")
    (root / "alink").symlink_to(root / "afile")
    before = digest(inst.home.config_file)
    for path, create in [("afile", False), ("./afile", True), (str(root / "alink"), False),
                         ("afile/sub", True), ("/proc/nope", True), (str(README), False)]:
        r = run(root, "share", "add", "x", path, *(["--create"] if create else []))
        line = one_line_error(r)
        assert "shares.x.path" in line, line
        assert digest(inst.home.config_file) == before
    assert not Path("/proc/nope").exists()
    inst.home.accounts_file.write_text("accounts:\n  alice:\n    password: plain\n")  # read for the warning
    assert "accounts.alice.password" in one_line_error(run(root, "share", "add", "x", "data/x", "--readers", "bob"))
    assert digest(inst.home.config_file) == before


def test_share_path_not_there_yet_is_warned_and_made_only_with_create(inst: Instance) -> None:
    root = inst.home.root
    r = run(root, "share", "add", "later", "data/later")
    assert r.exit_code == 0 and "does not exist yet" in r.stderr and "--create" in r.stderr
    assert not (root / "data/later").exists() and "later" in load_config(inst.home).shares
    r = run(root, "share", "add", "nope", "/proc/nope")  # accepted, warned, nothing made
    assert r.exit_code == 0 and "/proc/nope does not exist yet" in r.stderr
    r = run(root, "share", "add", "now", "data/now/deep", "--create")
    assert r.exit_code == 0 and (root / "data/now/deep").is_dir() and "does not exist" not in r.stderr


def test_unknown_readers_and_writers_are_named(inst: Instance) -> None:
    r = run(inst.home.root, "share", "add", "x", "data/x", "--create", "--readers", "ghost,@nogroup",
            "--writers", "alice,@staff,spectre")
    assert r.exit_code == 0
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: ghost")]
    assert warning and all(n in warning[0] for n in ("ghost", "@nogroup", "spectre"))
    assert "alice" not in warning[0] and "@staff" not in warning[0]
    twin = run(inst.home.root, "share", "add", "y", "data/y", "--create", "--readers", "bob,*", "--writers", "@staff")
    assert twin.exit_code == 0 and "warning" not in twin.stderr


def test_share_remove_keeps_the_folder_and_the_comments(inst: Instance) -> None:
    root = inst.home.root
    run(root, "share", "add", "docs", "data/docs", "--create")
    (root / "config/davserver.yaml").write_text("# the admin's note\n" + (root / "config/davserver.yaml").read_text())
    (root / "data/docs/keep.txt").write_text("mine")
    r = run(root, "share", "remove", "docs")
    assert r.exit_code == 0, r.output
    assert "docs" not in load_config(inst.home).shares and "team" in load_config(inst.home).shares
    assert (root / "data/docs/keep.txt").read_text() == "mine"
    assert (root / "config/davserver.yaml").read_text().startswith("# the admin's note\n")
    before = digest(inst.home.config_file)
    assert "shares.docs" in one_line_error(run(root, "share", "remove", "docs"))
    assert digest(inst.home.config_file) == before


# --- the state store unreachable ---------------------------------------------------

STORE_COMMANDS = [
    (["user", "unlock", "alice"], None),
    (["user", "passwd", "alice", "--password-stdin"], "a-new-password-1\n"),
    (["user", "disable", "alice"], None),
    (["user", "totp", "enable", "alice"], None),
    (["user", "totp", "disable", "alice"], None),
    (["user", "remove", "alice"], None),
]


@pytest.mark.parametrize(("args", "stdin"), STORE_COMMANDS, ids=[" ".join(a[:3]) for a, _ in STORE_COMMANDS])
def test_store_unreachable_is_one_line_and_changes_nothing(inst: Instance, args: list[str], stdin: str | None) -> None:
    root = inst.home.root
    use_unreachable_redis(root)
    before = digest(inst.home.accounts_file, inst.home.certs_dir)
    line = one_line_error(run(root, *args, input=stdin))
    assert "redis" in line and "state.url" in line
    assert digest(inst.home.accounts_file, inst.home.certs_dir) == before


def test_the_same_edits_work_when_the_store_answers(inst: Instance) -> None:
    root = inst.home.root
    before = inst.home.accounts_file.read_bytes()
    assert run(root, "user", "disable", "alice").exit_code == 0
    assert inst.home.accounts_file.read_bytes() != before
    assert not load_accounts(inst.home.accounts_file)["alice"].enabled
    assert run(root, "user", "passwd", "bob", "--password-stdin", input="a-new-password-1\n").exit_code == 0


# --- accounts and certificates ---------------------------------------------------------


def test_user_add_outside_an_instance_is_refused_and_creates_nothing(tmp_path: Path, inst: Instance) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(run(empty, "user", "add", "bob", "--password-stdin", input="a-good-password\n"))
    assert "no davserver instance" in line and "--home" in line
    assert list(empty.iterdir()) == []
    twin = run(inst.home.root, "user", "add", "dave", "--password-stdin", input="a-good-password\n")
    assert twin.exit_code == 0 and "dave" in load_accounts(inst.home.accounts_file)


def test_revoke_is_honest_about_what_it_did(inst: Instance) -> None:
    root = inst.home.root
    assert "'ghost'" in one_line_error(run(root, "cert", "revoke", "--account", "ghost"))
    serial = inst.clients["bob"].issued.serial
    first = run(root, "cert", "revoke", serial)
    assert first.exit_code == 0 and f"revoked {serial}" in first.output
    crl = digest(inst.ca.crl_path)
    assert "already revoked" in one_line_error(run(root, "cert", "revoke", serial))
    assert "no valid certificate" in one_line_error(run(root, "cert", "revoke", "--account", "bob"))
    assert digest(inst.ca.crl_path) == crl
    ok = run(root, "cert", "revoke", "--account", "carol")
    assert ok.exit_code == 0 and inst.clients["carol"].issued.serial in ok.output


def test_user_remove_revokes_unbinds_and_ends_grants(inst: Instance) -> None:
    root = inst.home.root
    extra = inst.issue("alice", name="alice-2")
    store = open_store(load_config(inst.home).state)
    now = time.time()
    try:
        store.open_grant(Grant("alice", extra.issued.fingerprint, "e", now, now, now + 600, now + 3600))
        store.open_grant(Grant("bob", inst.clients["bob"].issued.fingerprint, "e", now, now, now + 600, now + 3600))
    finally:
        store.close()
    r = run(root, "user", "remove", "alice")
    assert r.exit_code == 0, r.output
    assert "2 certificates revoked" in r.output
    assert "shares.team" not in r.stderr  # alice is in team only through @staff
    accounts = load_accounts(inst.home.accounts_file)
    assert "alice" not in accounts and {"bob", "carol"} <= set(accounts)
    revoked, _ = load_crl_serials(inst.ca.crl_path)
    assert inst.clients["alice"].issued.serial in revoked and extra.issued.serial in revoked
    assert inst.clients["bob"].issued.serial not in revoked
    store = open_store(load_config(inst.home).state)
    try:
        assert store.get_grant("alice", extra.issued.fingerprint) is None
        assert store.get_grant("bob", inst.clients["bob"].issued.fingerprint) is not None
    finally:
        store.close()
    assert "'alice'" in one_line_error(run(root, "user", "remove", "alice"))
    r = run(root, "user", "remove", "bob")
    assert r.exit_code == 0 and "shares.team still names bob" in r.stderr


def test_totp_enable_prints_the_real_address(inst: Instance) -> None:
    root = inst.home.root
    CertificateAuthority(inst.home.certs_dir).issue_server_cert(("dav.example.org",))
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text().replace("port: 0", "port: 9443"))
    out = run(root, "user", "totp", "enable", "alice").output
    assert "https://dav.example.org:9443/_davserver/" in out and "HOST" not in out


# --- tables --------------------------------------------------------------------------


def assert_aligned(text: str) -> None:
    """Every row's cells start where the header's do."""
    header, *rows = text.splitlines()
    starts = [m.start() for m in re.finditer(r"(?<!\S)(?=\S)", header.replace("NOT AFTER", "NOT_AFTER"))]
    assert rows
    for row in rows:
        for s in starts[1:]:
            assert row[s - 1] == " " and row[s] != " ", (text, s)


def test_tables_line_up(inst: Instance) -> None:
    root = inst.home.root
    long_name = "a-very-long-account-name-of-40-characters"[:40]
    run(root, "user", "add", long_name, "--password-stdin", "--groups", "staff", input="a-good-password\n")
    assert run(root, "cert", "issue", long_name).exit_code == 0
    run(root, "share", "add", "a-rather-long-share-name", "data/long", "--create", "--readers", long_name)
    for args in (["cert", "list"], ["share", "list"], ["user", "list"]):
        r = run(root, *args)
        assert r.exit_code == 0
        assert_aligned(r.output)


# --- serve, config, version, README -------------------------------------------------------


def test_serve_line_names_every_address_of_a_wildcard() -> None:
    assert _serving("127.0.0.1", 8443) == "https://127.0.0.1:8443/"
    assert _serving("::1", 8443) == "https://[::1]:8443/"
    wildcard = "0.0.0.0"  # noqa: S104 - only a string here: nothing is bound
    line = _serving(wildcard, 8443)
    listed = set(re.findall(r"https://([^/\[\]]+):8443/", line))
    ip = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    ours = set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", ip))
    assert "127.0.0.1" in listed and ours <= listed and len(ours) >= 1 and wildcard in line
    assert "https://[::1]:8443/" in _serving("::", 8443)


DUPLICATES = [
    ("server:\n  bind: 127.0.0.1\n  port: 0\n  bind: 0.0.0.0\n", "server.bind", (2, 4)),
    ("state:\n  backend: redis\n  backend: sqlite\n", "state.backend", (2, 3)),
    ("server: {port: 0}\nserver: {bind: 0.0.0.0}\n", "server", (1, 2)),
    ("shares:\n  files: {path: data/files, path: /}\n", "shares.files.path", (2, 2)),
    ("shares:\n  files: {path: data/files}\n  files: {path: /}\n", "shares.files", (2, 3)),
]


@pytest.mark.parametrize(("extra", "key", "lines"), DUPLICATES, ids=[k for _, k, _ in DUPLICATES])
def test_a_key_written_twice_is_refused_naming_it(tmp_path: Path, extra: str, key: str,
                                                  lines: tuple[int, int]) -> None:
    home = Home(tmp_path)
    (tmp_path / "config").mkdir()
    home.config_file.write_text(extra)
    line = one_line_error(run(tmp_path, "serve", "--port", "0"))
    assert f"{key}: is written twice (lines {lines[0]} and {lines[1]})" in line


def test_the_same_keys_once_and_yaml_merges_still_load(tmp_path: Path) -> None:
    home = Home(tmp_path)
    (tmp_path / "config").mkdir()
    home.config_file.write_text("server:\n  bind: 127.0.0.1\n  port: 0\nstate:\n  backend: sqlite\n"
                                "shares:\n  a: &ro {path: data/a, read_only: true}\n  b: {<<: *ro, path: data/b}\n")
    config = load_config(home)
    assert config.server.bind == "127.0.0.1" and config.shares["b"].read_only


def test_version_is_the_package_version() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"davserver {importlib.metadata.version('davserver')}"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_is_in_the_readme_table() -> None:
    table = "\n".join(line for line in README.read_text().splitlines() if line.startswith("| `davserver "))
    missing = [" ".join(c) for c in _commands(main) if not re.search(rf"`(davserver )?{' '.join(c)}\b", table)]
    assert missing == []
    assert "`davserver cert crl" in table and "`davserver --version`" in table


# --- the guard: every command with bad input ---------------------------------------------

def test_a_bug_is_one_line_too_and_debug_shows_its_traceback(inst: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(instance, "remove_share", broken)  # stands for any bug the layers below may have
    line = one_line_error(run(inst.home.root, "share", "remove", "files"))
    assert "unexpected ValueError: a bug" in line and "DAVSERVER_DEBUG=1" in line
    monkeypatch.setenv("DAVSERVER_DEBUG", "1")
    r = run(inst.home.root, "share", "remove", "files")
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)


USAGE_ERRORS = [["frobnicate"], ["user", "add"], ["cert", "issue", "alice", "--days", "0"], ["user", "nope"],
                ["share", "add", "x"], ["cert", "list", "--expiring", "soon"], ["serve", "--port", "70000"],
                ["check", "--timeout", "0"]]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a) for a in USAGE_ERRORS])
def test_usage_errors_are_one_line(inst: Instance, args: list[str]) -> None:
    line = one_line_error(run(inst.home.root, *args))
    assert "--help" in line

#: Commands that rightly succeed on an instance whatever names are unknown (and the store down,
#: but for cert invites, which reads it).
NEEDS_NOTHING = {("cert", "list"), ("cert", "crl"), ("user", "list"), ("share", "list"), ("check",)}


def _bad_invocations(port: int) -> list[tuple[list[str], str | None]]:
    ghost_serial = "DEADBEEF"
    return [
        (["check"], None),
        (["cert", "issue", "ghost"], None),
        (["cert", "revoke", ghost_serial], None),
        (["cert", "revoke", "--account", "ghost"], None),
        (["cert", "list"], None),
        (["cert", "crl"], None),
        (["cert", "renew", ghost_serial], None),
        (["cert", "sign", "ghost", "--csr", "/nonexistent.csr"], None),
        (["cert", "invite", "ghost"], None),
        (["cert", "invite", "--revoke", "ghost"], None),
        (["cert", "invites"], None),
        (["user", "add", "ghost/x", "--password-stdin"], "a-good-password\n"),
        (["user", "passwd", "ghost", "--password-stdin"], "a-good-password\n"),
        (["user", "disable", "ghost"], None),
        (["user", "enable", "ghost"], None),
        (["user", "remove", "ghost"], None),
        (["user", "unlock", "ghost"], None),
        (["user", "totp", "enable", "ghost"], None),
        (["user", "totp", "disable", "ghost"], None),
        (["user", "list"], None),
        (["share", "add", "x", "/proc/nope/x", "--create"], None),
        (["share", "remove", "ghost"], None),
        (["share", "list"], None),
        (["serve", "--port", str(port)], None),
        (["serve", "--workers", "0"], None),
        (["quickstart", "--port", str(port)], None),
    ]


@pytest.mark.parametrize("condition", ["no instance", "store unreachable", "nonexistent names"])
def test_no_command_ever_tracebacks(condition: str, tmp_path: Path, inst: Instance) -> None:
    root = tmp_path / "empty" if condition == "no instance" else inst.home.root
    root.mkdir(exist_ok=True)
    if condition == "store unreachable":
        use_unreachable_redis(root)
    with taken_port() as port:
        for args, stdin in _bad_invocations(port):
            before = digest(root)
            r = run(root, *args, input=stdin)
            assert "Traceback" not in r.output, (args, r.output)
            assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
            key = tuple(args[:2]) if args[0] in ("cert", "user", "share") else (args[0],)
            legit = (key in NEEDS_NOTHING and condition != "no instance"
                     or key == ("cert", "invites") and condition == "nonexistent names")
            if args[0] == "check" and condition == "store unreachable":
                assert r.exit_code == 1 and "state.url" in r.output, r.output
            elif legit or (args[0] == "check" and condition == "nonexistent names"):
                assert r.exit_code == 0, (args, r.output)
            else:
                one_line_error(r)
                # the audit log and the SQLite file's bytes (opening it may checkpoint) aside
                changed = {k for k, v in digest(root).items() if before.get(k) != v
                           and not re.search(r"/state/(audit\.log|state\.db.*)$", k)}
                assert changed == set(), (args, changed)
    if condition == "no instance":
        assert list(root.iterdir()) == []
    # every command of the CLI is in the loop (a new one must be added here)
    every = set(_commands(main)) - {("init",)}
    tried = {tuple(a for a in args[: len(c)]) for args, _ in _bad_invocations(0) for c in every}
    assert every <= tried, every - tried
