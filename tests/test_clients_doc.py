"""docs/clients.md as written: the cadaver section run command by command against a live
server, and the PKCS#12 guide checked against the CLI and the files it writes.

The snippets are taken from the page itself (fenced blocks of its sections), with the
page's placeholders replaced: `dav.example.org` by `localhost` (the test server's
certificate names it), its port by the server's, `/home/you` and `~` by a scratch home,
NAME by the account, ACCOUNT / PASSWORD / P12-PASSWORD by real values. `sudo` is dropped
(the tests run as root inside a private mount namespace, so `update-ca-certificates`
writes to copies of the system folders, never to the host). A changed page changes what
runs; a page that no longer works fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import davserver.cli
from davserver.server import DavServer
from tests.conftest import Instance, running
from tests.test_clients import clean_env, require_tool, share_dir
from tests.test_os_clients import issue_p12, require_root_namespace, run_tool

pytestmark = pytest.mark.client

DOC = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
CADAVER_TIMEOUT = 120  # seconds for one namespace script (update-ca-certificates, cadaver)
P12_PASSWORD = "p12-Pass-7x"  # differs from the account password: each must go to its place
WRONG_PASSWORD = "not-the-password"


# --- reading the page ------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of the page: its info string ("sh" or ""), the paragraph before it
    and its text."""

    lang: str
    intro: str
    text: str

    @property
    def file(self) -> str | None:
        """The file a non-shell block is the content of: the last `~/…` path named in the
        paragraph before it (e.g. "`~/.netrc` (mode 0600 …):"), or None."""
        names = re.findall(r"`(~/[^`\s]+)`", self.intro)
        return names[-1] if names and self.lang != "sh" else None


def doc_section(heading: str) -> str:
    """The text of the `## heading` section of docs/clients.md (to the next `## `)."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"(?ms)^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text)
    assert match, f"docs/clients.md has no section '## {heading}'"
    return match.group(1)


def doc_blocks(section: str) -> list[Block]:
    """The fenced blocks of a section, in order."""
    blocks = []
    for match in re.finditer(r"(?ms)^```(\w*)\n(.*?)^```\n", section):
        before = section[: match.start()].rstrip("\n")
        intro = before.split("\n\n")[-1]
        blocks.append(Block(match.group(1), intro, match.group(2)))
    return blocks


@dataclass(frozen=True)
class Place:
    """What the page's placeholders stand for in a test."""

    home: Path
    port: int
    account: str = "alice"
    password: str = ""
    p12_password: str = ""
    name: str = "alice"
    tunnel_port: int = 0

    def fill(self, text: str) -> str:
        """The page's text with its placeholders replaced."""
        for value in (self.password, self.p12_password):
            assert not re.search(r"['\"\\$`\s]", value), value  # used inside '…' in the page
        text = text.replace("dav.example.org:8443", f"localhost:{self.port}")
        text = text.replace("dav.example.org", "localhost")
        if self.tunnel_port:
            text = text.replace("127.0.0.1:8808", f"127.0.0.1:{self.tunnel_port}")
        text = text.replace("/home/you", str(self.home))
        text = re.sub(r"(?<![\w/])~/", f"{self.home}/", text)
        text = re.sub(r"\bP12-PASSWORD\b", self.p12_password, text)
        text = re.sub(r"\bPASSWORD\b", self.password, text)
        text = re.sub(r"\bACCOUNT\b", self.account, text)
        return re.sub(r"\bNAME\b", self.name, text)


def shell_lines(block: Block) -> list[str]:
    """The commands of a ```sh block as a script can run them: `sudo apt-get install`
    lines become a check that the tools are there (the suite installs nothing), `sudo `
    is dropped (root already)."""
    lines = []
    for line in block.text.splitlines():
        install = re.match(r"sudo apt-get install (.*)", line)
        if install:
            for package in install.group(1).split():
                require_tool({"stunnel4": "stunnel"}.get(package, package))
            continue
        lines.append(re.sub(r"^sudo ", "", line))
    return lines


def write_doc_files(blocks: list[Block], place: Place) -> dict[str, Path]:
    """Write every file block (`~/.netrc`, …) where the page says, mode 0600; returns
    the page's name -> the path written."""
    written = {}
    for block in blocks:
        if block.file is None:
            continue
        path = Path(place.fill(block.file))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(place.fill(block.text))
        path.chmod(0o600)
        written[block.file] = path
    return written


# --- cadaver as written ------------------------------------------------------------------

#: Runs in a private mount namespace: copies of the system CA folders are bind-mounted
#: over the real ones, so the page's `update-ca-certificates` changes only the copies.
#: $SETUP is the page's first shell block; then $RUN (a test's own cadaver call).
CADAVER_SCRIPT = r"""
set -eu
cp -a /etc/ssl/certs "$SCRATCH/etc-ssl-certs"
mkdir -p "$SCRATCH/local-cas"
mount --bind "$SCRATCH/etc-ssl-certs" /etc/ssl/certs
mount --bind "$SCRATCH/local-cas" /usr/local/share/ca-certificates
eval "$SETUP" >"$SCRATCH/setup.log" 2>&1
eval "$RUN"
"""


def cadaver_place(inst: Instance, server: DavServer, tmp_path: Path) -> tuple[Place, Path]:
    """A user's home and working folder as the page assumes them: `ca.crt` and NAME.p12
    (a certificate of alice's with its own PKCS#12 password, see `cadaver_inst`)."""
    require_tool("cadaver")
    require_tool("update-ca-certificates")
    require_tool("unshare")
    require_root_namespace("cadaver")
    client = inst.clients["alice-cadaver"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(inst.ca_file, work / "ca.crt")
    shutil.copyfile(client.p12, work / "alice.p12")
    (work / "report.pdf").write_bytes(b"%PDF-1.4 report\n" + os.urandom(4096))
    home = tmp_path / "user-home"
    home.mkdir()
    place = Place(home=home, port=server.port, password=inst.clients["alice"].password,
                  p12_password=P12_PASSWORD)
    return place, work


@pytest.fixture
def cadaver_inst(inst: Instance) -> Iterator[tuple[Instance, DavServer]]:
    """The test instance with a second certificate of alice's whose PKCS#12 password is not
    her account password (issued before the server starts), and the server."""
    inst.clients["alice-cadaver"] = inst.issue("alice", name="alice-cadaver", p12_password=P12_PASSWORD)
    with running(inst) as server:
        yield inst, server


def run_cadaver_doc(place: Place, work: Path, run: str, stdin: str = "") -> str:
    """The page's setup block, then `run`, in a private namespace; returns the output."""
    blocks = doc_blocks(doc_section("Linux: cadaver (command line)"))
    write_doc_files(blocks, place)
    setup = [b for b in blocks if b.lang == "sh"][0]
    scratch = work.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    env = clean_env(work.parent, HOME=str(place.home), SCRATCH=str(scratch),
                    SETUP=place.fill("\n".join(shell_lines(setup))), RUN=run)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", CADAVER_SCRIPT],
                          input=stdin, capture_output=True, text=True, cwd=work, env=env,
                          timeout=CADAVER_TIMEOUT, check=False)
    setup_log = (scratch / "setup.log").read_text() if (scratch / "setup.log").exists() else ""
    assert proc.returncode == 0, setup_log + proc.stdout + proc.stderr  # cadaver itself always exits 0
    assert re.search(r"1 added", setup_log), setup_log  # update-ca-certificates took ca.crt
    return proc.stdout + proc.stderr


def test_cadaver_doc_script_uploads(cadaver_inst: tuple[Instance, DavServer], tmp_path: Path) -> None:
    """The page's scripted run: upload.rc with `-r`, the PKCS#12 password from the file
    the page writes, the account password from ~/.netrc."""
    inst, server = cadaver_inst
    place, work = cadaver_place(inst, server, tmp_path)
    blocks = doc_blocks(doc_section("Linux: cadaver (command line)"))
    assert [b.file for b in blocks if b.file] == ["~/.netrc", "~/.cadaverrc", "~/.dav/upload.rc"]
    script = [b for b in blocks if b.lang == "sh"][1]

    out = run_cadaver_doc(place, work, place.fill("\n".join(shell_lines(script))))

    assert re.search(r"(?m)^Client certificate `.*' is encrypted\.$", out), out
    assert "Password incorrect" not in out, out
    assert "Using client certificate." in out, out
    assert re.search(r"(?m)^Uploading report\.pdf to `/files/report\.pdf':.*succeeded\.$", out), out
    assert re.search(r"(?m)^Listing collection `/files/': succeeded\.\n\s+report\.pdf\s+\d+ ", out), out
    assert (share_dir(inst, "files") / "report.pdf").read_bytes() == (work / "report.pdf").read_bytes()


def test_cadaver_doc_interactive(cadaver_inst: tuple[Instance, DavServer], tmp_path: Path) -> None:
    """`cadaver` with no arguments runs ~/.cadaverrc: it sets the certificate, asks for its
    password and opens the share, then waits for commands. (The password comes from a pipe
    here: cadaver reads it with buffered stdio, so commands typed after it on the same
    pipe are lost; the scripted run above covers commands.)"""
    inst, server = cadaver_inst
    place, work = cadaver_place(inst, server, tmp_path)
    assert "Run `cadaver`: it asks `Decryption password:`" in doc_section("Linux: cadaver (command line)")

    out = run_cadaver_doc(place, work, "cadaver", stdin=f"{P12_PASSWORD}\n")

    assert re.search(r"(?m)^Client certificate `.*' is encrypted\.$", out), out
    assert "Using client certificate." in out, out
    assert "dav:/files/> " in out, out  # the share is open, at its prompt
    assert "Could not open collection" not in out, out
    assert server.handshakes.counters().failed == 0


def test_cadaver_doc_wrong_p12_password_writes_nothing(cadaver_inst: tuple[Instance, DavServer],
                                                       tmp_path: Path) -> None:
    """Twin: the same script with a wrong PKCS#12 password presents no certificate."""
    inst, server = cadaver_inst
    place, work = cadaver_place(inst, server, tmp_path)
    wrong = Place(home=place.home, port=place.port, password=place.password, p12_password=WRONG_PASSWORD)
    script = [b for b in doc_blocks(doc_section("Linux: cadaver (command line)")) if b.lang == "sh"][1]

    out = run_cadaver_doc(wrong, work, wrong.fill("\n".join(shell_lines(script))))

    assert "Password incorrect, try again." in out, out
    assert "Using client certificate." not in out, out
    assert "succeeded" not in out, out
    assert not (share_dir(inst, "files") / "report.pdf").exists()


def test_cadaver_doc_url_on_command_line_connects_without_certificate(
    cadaver_inst: tuple[Instance, DavServer], tmp_path: Path
) -> None:
    """Why the page says to give no URL on the command line: cadaver opens it before it
    reads ~/.cadaverrc, so that handshake has no certificate and fails."""
    inst, server = cadaver_inst
    place, work = cadaver_place(inst, server, tmp_path)
    assert "give no URL on the command line" in doc_section("Linux: cadaver (command line)")

    out = run_cadaver_doc(place, work, f"cadaver https://localhost:{server.port}/files/",
                          stdin=f"{P12_PASSWORD}\n")

    # The command line's URL first, without a certificate; then ~/.cadaverrc opens it again.
    first_try, _, rc_file = out.partition("The server has requested a client certificate.")
    assert "Could not open collection:" in first_try, out
    assert "Using client certificate." in rc_file, out
    assert server.handshakes.counters().failed == 1


# --- which PKCS#12 file to ask for (case 11) -------------------------------------------------


def test_pkcs12_guide_names_the_cli_flag_for_android_and_ios() -> None:
    """The guide's heading exists; Android and iOS are sent to the legacy file, by the
    flag the CLI really has; the default file is the one the tested importers read."""
    section = doc_section("Which PKCS#12 file to ask for")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| system")}
    flags = set(re.findall(r"(?<![-\w])--[a-z][a-z0-9-]*", section))
    assert flags == {"--legacy-p12"}, flags
    help_text = CliRunner().invoke(davserver.cli.main, ["cert", "issue", "--help"]).output
    assert all(flag in help_text for flag in flags), help_text
    legacy = [system for system, file in rows.items() if file == "`--legacy-p12`"]
    assert any(s.startswith("**Android**") for s in legacy), rows
    assert any(s.startswith("**iOS") for s in legacy), rows
    default = next(system for system, file in rows.items() if file.startswith("default"))
    for importer in ("OpenSSL", "NSS", "keytool", "curl", "davfs2", "cadaver"):
        assert importer in default, (importer, default)
    assert "davserver cert issue NAME\n--legacy-p12" in section or "davserver cert issue NAME --legacy-p12" in section


def keytool_list(tmp_path: Path, p12: Path, password: str) -> subprocess.CompletedProcess[str]:
    """`keytool -list -v` of a PKCS#12 file, the store password from the environment."""
    keytool = require_tool("keytool")
    return run_tool(keytool, "-list", "-v", "-storetype", "PKCS12", "-keystore", str(p12),
                    "-storepass:env", "P12_PASSWORD", env=clean_env(tmp_path, P12_PASSWORD=password))


@pytest.mark.parametrize("legacy", [False, True], ids=["aes256-pbkdf2", "legacy-3des"])
def test_p12_keytool_reads_key_and_chain(inst: Instance, tmp_path: Path, legacy: bool) -> None:
    """Java's importer (what Java WebDAV clients and Android's tooling use) reads both
    files: one private-key entry with alice's certificate and the CA above it."""
    data = issue_p12(inst, legacy=legacy)
    paths = data["paths"]
    assert isinstance(paths, dict)

    proc = keytool_list(tmp_path, Path(paths["p12"]), str(data["p12_password"]))

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Your keystore contains 1 entry" in out, out
    assert "Entry type: PrivateKeyEntry" in out, out
    assert "Certificate chain length: 2" in out, out
    assert re.search(r"Owner: CN=alice\b", out), out
    assert re.search(r"Owner: CN=davserver CA\b", out), out


@pytest.mark.parametrize("legacy", [False, True], ids=["aes256-pbkdf2", "legacy-3des"])
def test_p12_keytool_wrong_password(inst: Instance, tmp_path: Path, legacy: bool) -> None:
    data = issue_p12(inst, legacy=legacy)
    paths = data["paths"]
    assert isinstance(paths, dict)

    proc = keytool_list(tmp_path, Path(paths["p12"]), WRONG_PASSWORD)

    assert proc.returncode != 0
    assert re.search(r"password was incorrect|keystore password", proc.stdout + proc.stderr), proc.stdout
