"""GNOME's gvfs (`gio`, GNOME Files) against a live server: what docs/clients.md says of it.

gvfs's WebDAV backend presents no client certificate (daemon/gvfsbackenddav.c sets none
and does not answer libsoup 3's `request-certificate`; libsoup then lets the handshake go
on without one, libsoup/soup-connection.c `soup_connection_request_tls_certificate`), so
`gio mount davs://…` is refused in the handshake. With the local stunnel tunnel the page
describes, the same gvfs mounts `dav://127.0.0.1:…`, uploads and reads.

Each run is one script in private mount and PID namespaces (`unshare -m -p -f`): our CA is
bind-mounted over the system bundle (glib-networking trusts only that file), the D-Bus
session (`dbus-run-session`), gvfsd and its backends, and stunnel live and die inside it,
so nothing is left running and the host's trust store is never touched. Root is needed
(skip on a workstation without it, fail in CI, like a missing tool).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from davserver.server import DavServer
from tests.conftest import Instance
from tests.test_clients import clean_env, require_tool, share_dir
from tests.test_clients_doc import Place, doc_blocks, doc_section, shell_lines, write_doc_files
from tests.test_os_clients import require_root_namespace
from tests.test_server_auth import audit_records

pytestmark = pytest.mark.client

GIO_TIMEOUT = 120  # seconds for one namespace script (D-Bus session, gvfsd, mounts)
SECTION = "Linux: GNOME Files (Nautilus) and KDE Dolphin"
WRONG_PASSWORD = "not-the-password"

#: Run in `unshare -m -p -f --mount-proc`: trust our CA, then the test's $BODY in a D-Bus
#: session. Every process started here ends with the namespace.
NAMESPACE_SCRIPT = r"""
set -eu
mount --bind "$BUNDLE" /etc/ssl/certs/ca-certificates.crt
if [ -n "${CERTS_DIR:-}" ]; then mount --bind "$CERTS_DIR" /etc/ssl/certs; fi
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
exec dbus-run-session -- bash -c "$BODY"
"""

#: Shell functions for bodies that use the page's tunnel: $SETUP is the page's shell block,
#: `start_tunnel` runs the page's `stunnel ~/.dav/stunnel.conf` and waits for its port.
TUNNEL_PRELUDE = r"""
set -eu
eval "$SETUP"
start_tunnel() {
    eval "$START_TUNNEL" >"$SCRATCH/stunnel.log" 2>&1 &
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$TUNNEL_PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "stunnel did not listen on $TUNNEL_PORT" >&2; cat "$SCRATCH/stunnel.log" >&2; return 1
}
"""


def free_port() -> int:
    """A loopback port nothing listens on now (for the tunnel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ca_bundle(inst: Instance, tmp_path: Path) -> Path:
    """The system CA bundle plus our CA, to bind-mount over the system's."""
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + b"\n" + inst.ca_file.read_bytes())
    return bundle


def run_in_session(tmp_path: Path, body: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run `body` (bash) in a D-Bus session inside private mount and PID namespaces."""
    require_tool("unshare")
    require_tool("dbus-run-session")
    require_root_namespace("gvfs")
    run = tmp_path / "runtime"
    environ = clean_env(tmp_path, XDG_RUNTIME_DIR=str(run), BODY=body, **env)
    environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
    environ.pop("DISPLAY", None)
    return subprocess.run(
        ["unshare", "-m", "-p", "-f", "--kill-child", "--mount-proc", "--propagation", "private",
         "bash", "-c", NAMESPACE_SCRIPT],
        input=stdin, capture_output=True, text=True, env=environ, cwd=tmp_path,
        timeout=GIO_TIMEOUT, check=False,
    )


def tunnel_env(inst: Instance, server: DavServer, tmp_path: Path) -> tuple[Place, dict[str, str]]:
    """The page's tunnel, as a user would set it up: NAME.crt, NAME.key and ca.crt in the
    working folder, the page's shell block and `~/.dav/stunnel.conf` (connect =
    localhost:port of the test server, accept = a free loopback port)."""
    require_tool("stunnel")
    alice = inst.clients["alice"]
    for src, name in ((alice.crt, "alice.crt"), (alice.key, "alice.key"), (inst.ca_file, "ca.crt")):
        shutil.copyfile(src, tmp_path / name)
    home = tmp_path / "user-home"
    home.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    place = Place(home=home, port=server.port, password=alice.password, tunnel_port=free_port())
    section = doc_section(SECTION)
    blocks = doc_blocks(section)
    assert [b.file for b in blocks if b.file] == ["~/.dav/stunnel.conf"]
    write_doc_files(blocks, place)
    start = "stunnel ~/.dav/stunnel.conf"
    assert f"Start it with `{start}`" in section
    setup = [b for b in blocks if b.lang == "sh"][0]
    return place, {
        "SETUP": place.fill("\n".join(shell_lines(setup))),
        "START_TUNNEL": place.fill(start),
        "TUNNEL_PORT": str(place.tunnel_port),
        "SCRATCH": str(scratch),
        "HOME_DIR": str(home),
    }


def records(inst: Instance) -> list[dict]:
    """The audit log's records ([] before the first request)."""
    path = inst.home.state_dir / "audit.log"
    return audit_records(inst) if path.exists() else []


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "davserver.handshake" and "TLS handshake with" in r.getMessage()]


# --- davs:// straight to the server: refused in the handshake ----------------------------


def test_gio_mount_davs_presents_no_certificate(inst: Instance, server: DavServer, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """gvfs sends no certificate; the server ends the handshake (TLS 1.3
    certificate_required) and gio reports it. Our CA is trusted, so that is the only fault."""
    require_tool("gio")
    caplog.set_level(logging.INFO, logger="davserver.handshake")
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello\n")
    assert ("`gio mount davs://dav.example.org:8443/files/` fails with `Peer sent fatal TLS alert: "
            "Certificate is required` or `Server required TLS certificate`") in " ".join(doc_section(SECTION).split())

    proc = run_in_session(
        tmp_path,
        f'gio mount davs://localhost:{server.port}/files/ </dev/null; echo "mount-rc=$?"\n'
        f"gio cat davs://localhost:{server.port}/files/hello.txt; echo \"cat-rc=$?\"",
        stdin=f"alice\n{inst.clients['alice'].password}\n", BUNDLE=str(ca_bundle(inst, tmp_path)),
    )

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "mount-rc=2" in out and "cat-rc=2" in out, out
    assert "hello.txt: The specified location is not mounted" in out, out
    # glib-networking words it by when the alert arrives: in the handshake, or on the first read.
    assert re.search(rf"davs://localhost:{server.port}/files: (Peer sent fatal TLS alert: Certificate is required"
                     r"|Server required TLS certificate)\n", out), out
    assert "Identity Verification Failed" not in out, out  # the server's certificate was trusted
    assert "hello" not in out.replace("hello.txt", ""), out
    counters = server.handshakes.counters()
    assert counters.failed >= 1 and counters.completed == 0, counters
    assert any("peer did not return a certificate" in m.lower() for m in handshake_failures(caplog)), caplog.text
    # no HTTP request ever reached the server; the refused handshakes are audited as no_cert
    assert [r for r in records(inst) if r.get("event") != "tls_handshake"] == [], records(inst)
    assert {r["reason"] for r in records(inst)} == {"no_cert"}, records(inst)


# --- through the page's stunnel tunnel: mounts, uploads, reads -------------------------------


def test_gio_through_doc_tunnel_mounts_uploads_reads(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """Twin: the same gvfs through the tunnel docs/clients.md describes presents alice's
    certificate (stunnel does), signs in with her password and writes to the share."""
    require_tool("gio")
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello from the server\n")
    (tmp_path / "upload.txt").write_bytes(b"uploaded through gvfs\n")
    place, env = tunnel_env(inst, server, tmp_path)
    url = f"dav://127.0.0.1:{place.tunnel_port}/files"
    assert "`gio mount dav://127.0.0.1:8808/files/`" in doc_section(SECTION)

    proc = run_in_session(
        tmp_path,
        TUNNEL_PRELUDE + f"""
start_tunnel
gio mount {url}/
gio list {url}/
gio cat {url}/hello.txt
gio copy upload.txt {url}/upload.txt
gio mount -u {url}/
echo done
""",
        stdin=f"alice\n{place.password}\n", BUNDLE=str(ca_bundle(inst, tmp_path)), **env,
    )

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "done" in out, out
    assert "hello from the server" in out, out
    assert "hello.txt" in out, out
    assert (share_dir(inst, "files") / "upload.txt").read_bytes() == b"uploaded through gvfs\n"
    assert server.handshakes.counters().failed == 0
    puts = [(r["account"], r["status"], r["decision"]) for r in records(inst) if r["method"] == "PUT"]
    assert ("alice", 201, "allow") in puts, records(inst)


def test_gio_through_doc_tunnel_wrong_password_writes_nothing(inst: Instance, server: DavServer,
                                                              tmp_path: Path) -> None:
    """Twin: the tunnel presents the certificate, but the password still decides."""
    require_tool("gio")
    (tmp_path / "upload.txt").write_bytes(b"must not arrive\n")
    place, env = tunnel_env(inst, server, tmp_path)
    url = f"dav://127.0.0.1:{place.tunnel_port}/files"

    proc = run_in_session(
        tmp_path,
        TUNNEL_PRELUDE + f"""
start_tunnel
gio mount {url}/ && echo mounted
gio copy upload.txt {url}/upload.txt && echo copied
echo done
""",
        stdin=f"alice\n{WRONG_PASSWORD}\n", BUNDLE=str(ca_bundle(inst, tmp_path)), **env,
    )

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "done" in out, out
    assert "mounted" not in out.split("\n") and "copied" not in out.split("\n"), out
    assert not (share_dir(inst, "files") / "upload.txt").exists()
    assert server.handshakes.counters().failed == 0  # TLS was fine: the password was not
    assert any(r["account"] == "alice" and r["decision"] == "deny" for r in records(inst)), records(inst)
    assert not any(r["method"] == "PUT" and r["decision"] == "allow" for r in records(inst)), records(inst)
