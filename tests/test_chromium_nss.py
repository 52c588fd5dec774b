"""Chromium's own TLS stack (NSS) with a PKCS#12 issued by ``davserver cert issue``.

Unlike tests/test_browser.py, where Playwright presents the certificate through its
own TLS proxy, here Chromium itself does the handshake: the p12 is imported with
pk12util into a fresh NSS database under a scratch $HOME/.pki/nssdb, our CA is
trusted there with certutil, and an AutoSelectCertificateForUrls managed policy
picks the certificate (without it headless Chromium waits for a certificate choice
until it times out). The policy goes into a copy of /etc/chromium that is
bind-mounted over the real one inside a private mount namespace, so the system is
left alone.

The target share needs the certificate only (require: []), since headless Chromium
cannot answer a Basic-auth prompt. A missing tool skips these tests on a
workstation but fails them in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import davserver.cli
from davserver.server import DavServer
from tests.conftest import Instance, running
from tests.test_clients import clean_env, require_tool

pytestmark = pytest.mark.client

CHROMIUM_TIMEOUT = 60  # seconds for one headless chromium run
P12_PASSWORD = "nss-import-pw"
FILE_NAME = "report-for-nss.txt"
OPEN_SHARE = """
  open: {path: data/open, readers: ["*"], require: []}
"""

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)

# Positional arguments: $1 chromium, $2 nss db, $3 CA file, $4 p12 ("" for none),
# $5 p12 password file, $6 policy file, $7 /etc/chromium copy, $8 profile dir, $9 URL,
# ${10} timeout (seconds); the chromium flags follow from ${11}.
# Runs inside `unshare -m --propagation private`: the bind mount ends with it.
SCRIPT = r"""
set -euo pipefail
chromium=$1 nssdir=$2 db=sql:$2 ca=$3 p12=$4 pwfile=$5 policy=$6 etc=$7 profile=$8 url=$9 limit=${10}
shift 10
mkdir -p "$nssdir"
certutil -N -d "$db" --empty-password
if [ -n "$p12" ]; then
    pk12util -i "$p12" -d "$db" -w "$pwfile" -K "" >&2
fi
# (pk12util has already stored the CA from the p12, untrusted: this sets its trust.)
certutil -A -d "$db" -n davserver-ca -t "C,," -i "$ca"
echo "--- nss db" >&2
certutil -L -d "$db" >&2
cp -a /etc/chromium/. "$etc"/
mkdir -p "$etc/policies/managed"
cp "$policy" "$etc/policies/managed/davserver-test.json"
mount --bind "$etc" /etc/chromium
echo "--- chromium" >&2
exec timeout -k 5 "$limit" "$chromium" "$@" --user-data-dir="$profile" --dump-dom "$url"
"""


def issue_p12_with_cli(inst: Instance) -> dict[str, Any]:
    """`davserver cert issue alice --json --p12-password-stdin`, in-process."""
    result = CliRunner().invoke(
        davserver.cli.main,
        ["--home", str(inst.home.root), "cert", "issue", "alice", "--json", "--p12-password-stdin"],
        input=f"{P12_PASSWORD}\n",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(result.stdout)
    assert data["account"] == "alice", data
    assert Path(data["paths"]["p12"]).is_file(), data
    return data


def add_open_share(inst: Instance) -> Path:
    """A share that needs the client certificate only; one file in it."""
    folder = inst.home.root / "data" / "open"
    folder.mkdir(parents=True)
    (folder / FILE_NAME).write_text("fetched by chromium through NSS\n")
    with inst.home.config_file.open("a") as f:
        f.write(OPEN_SHARE)
    return folder


def run_chromium_nss(inst: Instance, server: DavServer, tmp_path: Path, url: str,
                     p12: Path | None) -> tuple[int, str, str]:
    """Headless chromium with a scratch NSS db (p12 imported if given) and the policy;
    returns (exit code, dumped DOM, stderr)."""
    chromium = require_tool("chromium")
    for tool in ("pk12util", "certutil", "unshare", "mount", "timeout"):
        require_tool(tool)
    if not Path("/etc/chromium").is_dir():
        pytest.fail("/etc/chromium is missing: the chromium package should provide it")
    env = clean_env(tmp_path)
    home = Path(env["HOME"])
    pwfile = tmp_path / "p12-password"
    pwfile.write_text(P12_PASSWORD)
    pwfile.chmod(0o600)
    origin = server.url.rstrip("/")
    policy = tmp_path / "policy.json"
    rule = json.dumps({"pattern": origin, "filter": {}})
    policy.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
    etc = tmp_path / "etc-chromium"
    etc.mkdir()
    profile = tmp_path / "profile"
    unshare = ["unshare", "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    cmd = [*unshare, "bash", "-c", SCRIPT, "chromium-nss",
           chromium, str(home / ".pki" / "nssdb"), str(inst.ca_file), str(p12 or ""), str(pwfile),
           str(policy), str(etc), str(profile), url, str(CHROMIUM_TIMEOUT), *CHROMIUM_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own session: chromium and its helpers
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT + 30} s\n{err[-4000:]}")
    return proc.returncode, out, err


def served_paths(inst: Instance) -> list[str]:
    audit = inst.home.root / "state" / "audit.log"
    if not audit.exists():
        return []
    # refused handshakes are audited too (with an `event`, no path): they were not served
    return [r["path"] for r in map(json.loads, filter(str.strip, audit.read_text().splitlines()))
            if r.get("event") is None]


def test_chromium_nss_p12_from_cli_lists_open_share(inst: Instance, tmp_path: Path) -> None:
    issued = issue_p12_with_cli(inst)
    add_open_share(inst)
    with running(inst) as server:
        url = f"{server.url}open/"
        rc, dom, err = run_chromium_nss(inst, server, tmp_path, url, Path(issued["paths"]["p12"]))
    assert rc == 0, f"chromium exited {rc}\n{err[-4000:]}"
    assert "Page load failed" not in err, err[-4000:]
    assert "Address: /open/" in dom, f"{dom[:3000]}\n--- stderr\n{err[-4000:]}"
    assert f">{FILE_NAME}</a>" in dom, dom
    assert "Signed in as <b>alice</b>" in dom, dom
    # The certificate Chromium chose is the one just issued by the CLI, not an older one.
    assert f"serial number {issued['serial']}" in dom, (issued["serial"], dom)
    assert "/open/" in served_paths(inst)


def test_chromium_nss_without_p12_gets_no_listing(inst: Instance, tmp_path: Path) -> None:
    add_open_share(inst)
    with running(inst) as server:
        url = f"{server.url}open/"
        rc, dom, err = run_chromium_nss(inst, server, tmp_path, url, None)
    assert "--- chromium" in err, f"the NSS setup failed\n{err[-4000:]}"
    assert rc != 124, f"chromium waited for a certificate until the timeout\n{err[-4000:]}"
    assert FILE_NAME not in dom, dom
    assert "Signed in as" not in dom, dom
    assert "Address: /" not in dom, dom
    assert served_paths(inst) == [], "the server handled a request without a client certificate"
    # A failed handshake (ERR_BAD_SSL_CLIENT_AUTH_CERT or, over TLS 1.3, often
    # ERR_SOCKET_NOT_CONNECTED), not a distrusted server certificate (ERR_CERT_*).
    failure = re.search(r"Page load failed: net::(ERR_\w+)", err)
    assert failure, f"no page-load error from chromium\n{err[-4000:]}"
    assert not failure[1].startswith("ERR_CERT_"), failure[0]
