"""The service files in contrib/ and the reload they rely on.

- contrib/systemd/davserver.service passes ``systemd-analyze verify`` exactly as
  shipped (in a private mount namespace where /opt/davserver/bin/davserver exists),
  keeps the sandbox settings docs/install.md promises, and its
  ``MemoryDenyWriteExecute=yes`` is proven harmless: a real ``davserver serve`` runs
  under the kernel's own W^X switch (``prctl(PR_SET_MDWE)``, what systemd applies)
  and answers password logins (argon2-cffi) over TLS (cryptography).
- SIGHUP (``ExecReload=/bin/kill -HUP $MAINPID``) re-opens the audit log: a real
  server process, the file renamed under it while requests keep coming, then SIGHUP:
  every request is in exactly one of the two files, the later ones in the new file.
  Before, SIGHUP stopped the server.
- contrib/logrotate/davserver, byte for byte, run by ``logrotate --force`` against a
  live server (the paths of the file made real by bind mounts in a private
  namespace; ``systemctl`` stands in as a script that sends the SIGHUP systemd would).
- docs/install.md shows the shipped files verbatim and its commands exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from davserver.audit import AuditLog
from tests.conftest import Instance, session_for
from tests.test_clients import require_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "davserver.service"
LOGROTATE = ROOT / "contrib" / "logrotate" / "davserver"
INSTALL = ROOT / "docs" / "install.md"
INSTANCE = "/var/lib/davserver"
VENV = "/opt/davserver"
START_TIMEOUT = 30  # seconds for `davserver serve` to print its URL
PR_SET_MDWE = 65  # linux/prctl.h (Linux 6.3+)
PR_MDWE_REFUSE_EXEC_GAIN = 1


def unit_settings(text: str) -> dict[str, list[str]]:
    """key -> values of a unit file ([Section] lines and comments skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def need_namespace() -> None:
    """The checks that mount things run in a private mount namespace: root needed.
    Skipped without (a workstation), failed in CI like a missing tool."""
    require_tool("unshare")
    if os.geteuid() != 0:
        message = "needs root for a private mount namespace"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true, so this is an error")
        pytest.skip(message)


def require_systemd_analyze() -> str:
    """systemd-analyze, or a skip -- also in CI: a CI runner without systemd (a slim
    container) cannot verify units, and the unit's content is still checked by
    test_unit_keeps_the_sandbox; only this one check depends on the tool."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def analyze(args: list[str], unit: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze ARGS UNIT where the unit's ExecStart binary exists: /opt is a
    tmpfs holding an executable /opt/davserver/bin/davserver, in a private namespace."""
    script = (
        "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/davserver/bin; "
        "printf '#!/bin/sh\\n' >/opt/davserver/bin/davserver; chmod 755 /opt/davserver/bin/davserver; "
        'exec systemd-analyze "$@"'
    )
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args, str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)


# --- the unit ------------------------------------------------------------------------


def test_unit_keeps_the_sandbox() -> None:
    s = unit_settings(UNIT.read_text())
    expected = {
        "User": ["davserver"], "Group": ["davserver"],
        "ExecStart": [f"{VENV}/bin/davserver serve"],
        "Environment": [f"DAVSERVER_HOME={INSTANCE}"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "ProtectSystem": ["strict"], "ReadWritePaths": [INSTANCE], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "SystemCallFilter": ["@system-service"], "MemoryDenyWriteExecute": ["yes"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    # No capability is needed because the default port is not privileged: the unit's
    # comment says how to add CAP_NET_BIND_SERVICE for 443.
    default = yaml.safe_load((ROOT / "davserver" / "default_config.yaml").read_text())
    assert default["server"]["port"] >= 1024
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in UNIT.read_text()


def test_unit_verifies_as_shipped() -> None:
    require_systemd_analyze()
    need_namespace()
    proc = analyze(["verify"], UNIT)
    # verify exits 0 on settings it ignores, so the output must be empty too.
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@pytest.mark.parametrize(("good", "bad", "complaint"), [
    ("ProtectSystem=strict", "ProtectSystem=strcit", "protect system"),
    ("SystemCallFilter=@system-service", "SystemCallFilter=@system-servic", "system call group"),
    ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key"),
    ("ExecStart=/opt/davserver/bin/davserver serve", "ExecStart=/opt/davserver/davserver serve", "not executable"),
])
def test_verify_catches_a_broken_unit(tmp_path: Path, good: str, bad: str, complaint: str) -> None:
    """The twin of test_unit_verifies_as_shipped: the same check flags each mistake."""
    require_systemd_analyze()
    need_namespace()
    text = UNIT.read_text()
    assert good in text
    broken = tmp_path / "davserver.service"
    broken.write_text(text.replace(good, bad))
    proc = analyze(["verify"], broken)
    assert complaint.lower() in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def test_unit_exposure_is_low() -> None:
    """systemd's own score of the sandbox (0 = locked down, 10 = none): 1.6 measured."""
    require_systemd_analyze()
    need_namespace()
    proc = analyze(["security", "--offline=yes", "--threshold=20", "--no-pager"], UNIT)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout


# --- a real server process ----------------------------------------------------------


#: Runs argv[1:] with the kernel's W^X switch on (inherited across execve).
MDWE_WRAPPER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE errno " + str(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


@contextmanager
def serve(inst: Instance, tmp_path: Path,
          wrapper: list[str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`davserver serve` as its own process; yields it, its URL and its log file."""
    log = tmp_path / "serve.log"
    cmd = [*(wrapper or []), sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root),
           "serve", "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = ""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not url and proc.poll() is None:
            if m := re.search(r"serving (https://127\.0\.0\.1:\d+/)", log.read_text(errors="replace")):
                url = m.group(1)
            time.sleep(0.05)
        assert url, "the server did not start: " + log.read_text(errors="replace")[-2000:]
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def mdwe_supported() -> bool:
    probe = subprocess.run([sys.executable, "-c", MDWE_WRAPPER, "/bin/true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_memory_deny_write_execute_keeps_logins_working(inst: Instance, tmp_path: Path) -> None:
    """Under the kernel's W^X switch (what MemoryDenyWriteExecute=yes applies) a real
    server still answers a TLS + password login (argon2-cffi, cryptography)."""
    if not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+); systemd enforces it with seccomp instead")
    wrapper = [sys.executable, "-c", MDWE_WRAPPER]
    # The switch is on: writable+executable memory is refused in a wrapped process ...
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    refused = subprocess.run([*wrapper, sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0  # ... and only there
    with serve(inst, tmp_path, wrapper) as (proc, url, _log):
        s = session_for(inst, "alice")
        assert s.get(url + "files/", timeout=30).status_code == 200
        assert session_for(inst, "alice", password="wrong-password").get(url + "files/", timeout=30).status_code == 401
        assert proc.poll() is None


def audit_paths(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["path"] for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def rotation_traffic(inst: Instance, url: str, rotate: object) -> tuple[list[str], list[str]]:
    """Requests before, during and after `rotate()` (a rename + SIGHUP), one of them on
    a second thread all along. Returns (paths requested before rotate() returned,
    paths requested after). Each path is unique, so a lost or doubled line shows."""
    s = session_for(inst, "alice")
    before = [f"/files/before-{i}" for i in range(5)]
    for p in before:
        assert s.get(url.rstrip("/") + p, timeout=30).status_code == 404
    stop = threading.Event()
    background: list[str] = []

    def hammer() -> None:
        t = session_for(inst, "alice")
        i = 0
        while not stop.is_set():
            p = f"/files/during-{i}"
            t.get(url.rstrip("/") + p, timeout=30)
            background.append(p)
            i += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.3)
        rotate()  # type: ignore[operator]
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=60)
    after = [f"/files/after-{i}" for i in range(5)]
    for p in after:
        assert s.get(url.rstrip("/") + p, timeout=30).status_code == 404
    return before + background, after


def test_sighup_reopens_the_audit_log(inst: Instance, tmp_path: Path) -> None:
    audit = inst.home.state_dir / "audit.log"
    rotated = audit.with_name("audit.log.1")
    with serve(inst, tmp_path) as (proc, url, log):
        def rotate() -> None:
            audit.rename(rotated)
            proc.send_signal(signal.SIGHUP)
            assert wait_for(audit.exists), "SIGHUP did not re-open the audit log"

        early, late = rotation_traffic(inst, url, rotate)
        assert wait_for(lambda: set(late) <= set(audit_paths(audit)))
        assert proc.poll() is None, "SIGHUP stopped the server"
        assert "reloaded on request: audit=yes" in log.read_text()
    old, new = audit_paths(rotated), audit_paths(audit)
    assert set(old).isdisjoint(new)
    assert sorted(old + new) == sorted(early + late)  # every request exactly once
    assert set(late) <= set(new) and early[0] in old


def test_sighup_without_rotation_keeps_writing_the_same_file(inst: Instance, tmp_path: Path) -> None:
    """The twin: a reload with nothing renamed loses nothing and doubles nothing."""
    audit = inst.home.state_dir / "audit.log"
    with serve(inst, tmp_path) as (proc, url, log):
        def reload() -> None:
            proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "reloaded on request" in log.read_text())

        early, late = rotation_traffic(inst, url, reload)
        assert wait_for(lambda: set(late) <= set(audit_paths(audit)))
    assert sorted(audit_paths(audit)) == sorted(early + late)


def test_reopen_failure_keeps_the_old_file(tmp_path: Path) -> None:
    """When the new file cannot be opened, writers stay on the old one (logged)."""
    folder = tmp_path / "logs"
    log = AuditLog(folder / "audit.log")
    try:
        log.write({"path": "/one"})
        (folder / "audit.log").rename(tmp_path / "audit.log.1")
        folder.rmdir()
        folder.write_text("not a folder")  # the new file cannot be created
        assert log.reopen() is False
        log.write({"path": "/two"})
        assert audit_paths(tmp_path / "audit.log.1") == ["/one", "/two"]
        folder.unlink()
        assert log.reopen() is True
        log.write({"path": "/three"})
        assert audit_paths(folder / "audit.log") == ["/three"]
    finally:
        log.close()
    assert AuditLog(None).reopen() is False  # standard error: nothing to re-open


# --- logrotate -----------------------------------------------------------------------

SERVICE_UID = 64123  # the `davserver` user inside the test's namespace (unused on the host)

LOGROTATE_SCRIPT = r"""
set -eu
# /etc/passwd and /etc/group with the service user, seen only in this namespace
cp /etc/passwd "$WORK/passwd"; cp /etc/group "$WORK/group"
echo "davserver:x:$SERVICE_UID:$SERVICE_UID::$INSTANCE_DIR:/usr/sbin/nologin" >>"$WORK/passwd"
echo "davserver:x:$SERVICE_UID:" >>"$WORK/group"
mount --bind "$WORK/passwd" /etc/passwd
mount --bind "$WORK/group" /etc/group
mkdir -p /var/lib/davserver
mount --bind "$HOME_DIR" /var/lib/davserver
exec logrotate --force --verbose --state "$WORK/status" "$CONF"
"""


def test_logrotate_example_rotates_without_loss(inst: Instance, tmp_path: Path) -> None:
    logrotate = require_tool("logrotate")
    need_namespace()
    audit = inst.home.state_dir / "audit.log"
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    conf = work / "davserver"
    shutil.copyfile(LOGROTATE, conf)  # byte for byte; logrotate wants it root-owned, not writable by others
    conf.chmod(0o644)
    os.chown(inst.home.state_dir, SERVICE_UID, SERVICE_UID)  # as under the unit: the service user's folder
    with serve(inst, tmp_path) as (proc, url, log):
        # what `systemctl reload davserver` does under systemd: ExecReload, kill -HUP $MAINPID
        systemctl = work / "bin" / "systemctl"
        systemctl.write_text(f'#!/bin/sh\n[ "$*" = "reload davserver" ] || exit 1\nexec /bin/kill -HUP {proc.pid}\n')
        systemctl.chmod(0o755)
        env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}", "WORK": str(work),
               "SERVICE_UID": str(SERVICE_UID), "INSTANCE_DIR": INSTANCE, "HOME_DIR": str(inst.home.root),
               "CONF": str(conf)}
        results: list[subprocess.CompletedProcess[str]] = []

        def rotate() -> None:
            results.append(subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", LOGROTATE_SCRIPT],
                capture_output=True, text=True, env=env, timeout=60, check=False))
            assert wait_for(lambda: "reloaded on request: audit=yes" in log.read_text()), results[0].stderr

        early, late = rotation_traffic(inst, url, rotate)
        assert wait_for(lambda: set(late) <= set(audit_paths(audit)))
    out = results[0].stdout + results[0].stderr
    assert results[0].returncode == 0, out
    assert shutil.which("logrotate") == logrotate
    rotated = audit.with_name("audit.log.1")  # delaycompress: the newest rotation stays plain
    assert rotated.exists(), out
    stat = audit.stat()
    assert (stat.st_uid, stat.st_mode & 0o777) == (SERVICE_UID, 0o600)  # `create 0600 davserver davserver`
    old, new = audit_paths(rotated), audit_paths(audit)
    assert sorted(old + new) == sorted(early + late)
    assert set(late) <= set(new)


# --- docs/install.md -----------------------------------------------------------------


def fenced(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\S*)\n(.*?)^```$", text, re.M | re.S)]


def test_install_guide_shows_the_shipped_files() -> None:
    blocks = [body for _, body in fenced(INSTALL.read_text())]
    assert UNIT.read_text() in blocks
    assert LOGROTATE.read_text() in blocks
    readme = (ROOT / "README.md").read_text()
    assert "docs/install.md" in readme and "Run as a service" in readme


def guide_commands() -> list[list[str]]:
    """The words of every command in the guide's ``sh`` blocks (comments dropped,
    ``runuser -u davserver --`` removed)."""
    out = []
    for info, body in fenced(INSTALL.read_text()):
        if info != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|\|\||;|\|", line):
                words = part.split()
                if words[:4] == ["runuser", "-u", "davserver", "--"]:
                    words = words[4:]
                if words:
                    out.append(words)
    return out


def test_install_guide_commands_exist() -> None:
    """Every program the guide runs exists on Debian 12 here (or is the guide's venv);
    every `davserver` subcommand it uses exists in the CLI."""
    from click.testing import CliRunner

    import davserver.cli

    commands = guide_commands()
    assert len(commands) >= 10, commands
    runner = CliRunner()
    for words in commands:
        name = words[0]
        if name == f"{VENV}/bin/davserver":
            args = [w for w in words[1:] if not w.startswith("-") and w != INSTANCE]
            group = args[:2] if args and args[0] in ("user", "cert", "share") else args[:1]
            result = runner.invoke(davserver.cli.main, [*group, "--help"])
            assert result.exit_code == 0, f"davserver {group}: {result.output}"
            continue
        if name.startswith(f"{VENV}/bin/"):
            assert name.removeprefix(f"{VENV}/bin/") in ("pip", "python", "python3"), name
            continue
        if name in ("cd", "export"):
            continue  # shell builtins
        if name in ("ufw", "nft"):
            continue  # firewall front ends: one or the other, not installed in every image
        assert shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"), f"{name}: not a command here"


def test_install_guide_instance_steps_run(tmp_path: Path) -> None:
    """The guide's instance steps as written, with /var/lib/davserver and
    /opt/davserver pointed at temporary folders, `runuser -u davserver --` dropped (the
    test is that user) and the password given on stdin instead of typed; then the
    unit's ExecStart with its Environment serves the instance and survives its
    ExecReload (SIGHUP)."""
    text = INSTALL.read_text()
    block = next(body for info, body in fenced(text) if info == "sh" and "davserver init" in body)
    home = tmp_path / "instance"
    home.mkdir()
    davserver = str(Path(sys.executable).parent / "davserver")
    script = (block.replace(f"{VENV}/bin/davserver", davserver).replace(INSTANCE, str(home))
              .replace("runuser -u davserver -- ", "").replace("user add alice", "user add alice --password-stdin"))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, input="a-long-test-password\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PKCS#12 password" in proc.stdout
    assert (home / "certs" / "clients" / "alice.p12").exists()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((home / "certs" / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "dav.example.org" in names

    unit = unit_settings(UNIT.read_text())
    env = dict(os.environ)
    for assignment in unit["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace(INSTANCE, str(home))
    argv = unit["ExecStart"][0].replace(f"{VENV}/bin/davserver", davserver).split() + ["--port", "0"]
    log = tmp_path / "unit.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home)
    try:
        assert wait_for(lambda: "serving https://" in log.read_text(), START_TIMEOUT), log.read_text()
        server.send_signal(signal.SIGHUP)  # ExecReload
        assert wait_for(lambda: "reloaded on request" in log.read_text()), log.read_text()
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=15)


def served_serial(url: str, inst: Instance) -> int:
    """The serial of the certificate the server presents to a new connection."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    from cryptography import x509

    from tests.conftest import client_context

    parts = urlsplit(url)
    ctx: ssl.SSLContext = client_context(inst, inst.clients["alice"])
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_serves_a_replaced_server_certificate_at_once(inst: Instance, tmp_path: Path) -> None:
    """`systemctl reload` after replacing the server certificate: served from the next
    connection on, without waiting for tls.reload_seconds (60 s by default, here
    in force). The twin: without SIGHUP the old one is still served."""
    with serve(inst, tmp_path) as (proc, url, log):
        before = served_serial(url, inst)
        inst.ca.issue_server_cert(["localhost", "127.0.0.1"])
        assert served_serial(url, inst) == before  # no reload yet: the old certificate
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "certificate=yes" in log.read_text()), log.read_text()[-2000:]
        after = served_serial(url, inst)
        assert after != before
        assert session_for(inst, "alice").get(url + "files/", timeout=30).status_code == 200
