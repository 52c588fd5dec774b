"""KDE's KIO (`kioclient5`, Dolphin) against a live server: what docs/clients.md says of it.

KIO 5's TLS code (src/core/tcpslavebase.cpp, `TCPSlaveBase`) never sets a local
certificate or key on its QSslSocket, so `webdavs://` sends no client certificate. Over
TLS 1.3 the client considers the handshake done before the server has checked it; the
server's certificate_required alert then ends the connection under the first request,
which kioclient5 reports as "Connection to host … is broken". Through the page's stunnel
tunnel the same KIO signs in and reads over `webdav://127.0.0.1:…`.

Runs like tests/test_gvfs.py: one script in private mount and PID namespaces with a
D-Bus session (kiod5 and kded5 end with it); Qt reads the system CA *folder*, so a copy
of /etc/ssl/certs with our CA added (and rehashed) is bind-mounted over it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from davserver.server import DavServer
from tests.conftest import Instance
from tests.test_clients import require_tool, share_dir
from tests.test_clients_doc import doc_section
from tests.test_gvfs import (
    SECTION,
    TUNNEL_PRELUDE,
    WRONG_PASSWORD,
    ca_bundle,
    handshake_failures,
    records,
    run_in_session,
    tunnel_env,
)

pytestmark = pytest.mark.client


def kio_env(inst: Instance, tmp_path: Path) -> dict[str, str]:
    """Environment for run_in_session: headless Qt, the CA bundle and a CA folder that
    trusts our CA."""
    require_tool("kioclient5")
    openssl = require_tool("openssl")
    certs = tmp_path / "etc-ssl-certs"
    shutil.copytree("/etc/ssl/certs", certs, symlinks=True)
    shutil.copyfile(inst.ca_file, certs / "davserver-ca.pem")
    rehash = subprocess.run([openssl, "rehash", str(certs)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert any(p.is_symlink() and p.resolve() == (certs / "davserver-ca.pem").resolve() for p in certs.iterdir()), \
        rehash.stderr
    return {"QT_QPA_PLATFORM": "offscreen", "BUNDLE": str(ca_bundle(inst, tmp_path)), "CERTS_DIR": str(certs)}


def test_kioclient_webdavs_presents_no_certificate(inst: Instance, server: DavServer, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """KIO sends no certificate: nothing is read, kioclient5 fails, the server logs why."""
    caplog.set_level(logging.INFO, logger="davserver.handshake")
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello from the server\n")
    assert "`kioclient5 cat webdavs://…` fails with `Connection to host … is broken`" \
        in " ".join(doc_section(SECTION).split())
    url = f"webdavs://alice:{inst.clients['alice'].password}@localhost:{server.port}/files/hello.txt"

    proc = run_in_session(tmp_path, f'kioclient5 --noninteractive cat "{url}"; echo "cat-rc=$?"',
                          **kio_env(inst, tmp_path))

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cat-rc=1" in out, out
    assert "kioclient5: Connection to host localhost is broken." in out, out
    assert "hello from the server" not in out, out
    counters = server.handshakes.counters()
    assert counters.failed >= 1 and counters.completed == 0, counters
    assert any("peer did not return a certificate" in m.lower() for m in handshake_failures(caplog)), caplog.text
    # no HTTP request ever reached the server; the refused handshakes are audited as no_cert
    assert [r for r in records(inst) if r.get("event") != "tls_handshake"] == [], records(inst)
    assert {r["reason"] for r in records(inst)} == {"no_cert"}, records(inst)


def test_kioclient_through_doc_tunnel_reads(inst: Instance, server: DavServer, tmp_path: Path) -> None:
    """Twin: the same KIO through the tunnel docs/clients.md describes signs in and reads.

    Reading only: for an upload KIO sends the PUT without credentials first and, on its
    401, asks kpasswdserver again, which waits for a password dialog that a headless run
    cannot show (kioclient5 --noninteractive does not stop it)."""
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello from the server\n")
    place, env = tunnel_env(inst, server, tmp_path)
    assert "`webdav://ACCOUNT@127.0.0.1:8808/files/`" in doc_section(SECTION)
    url = f"webdav://alice:{place.password}@127.0.0.1:{place.tunnel_port}/files"

    proc = run_in_session(tmp_path, TUNNEL_PRELUDE + f"""
start_tunnel
kioclient5 --noninteractive cat "{url}/hello.txt"; echo "cat-rc=$?"
""", **env, **kio_env(inst, tmp_path))

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cat-rc=0" in out, out
    assert "hello from the server" in out, out
    assert server.handshakes.counters().failed == 0
    gets = [(r["account"], r["status"], r["decision"]) for r in records(inst) if r["method"] == "GET"]
    assert ("alice", 200, "allow") in gets, records(inst)


def test_kioclient_through_doc_tunnel_wrong_password_reads_nothing(inst: Instance, server: DavServer,
                                                                   tmp_path: Path) -> None:
    """Twin: the tunnel presents the certificate, but the password still decides."""
    (share_dir(inst, "files") / "hello.txt").write_bytes(b"hello from the server\n")
    place, env = tunnel_env(inst, server, tmp_path)
    url = f"webdav://alice:{WRONG_PASSWORD}@127.0.0.1:{place.tunnel_port}/files"

    proc = run_in_session(tmp_path, TUNNEL_PRELUDE + f"""
start_tunnel
kioclient5 --noninteractive cat "{url}/hello.txt"; echo "cat-rc=$?"
""", **env, **kio_env(inst, tmp_path))

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # kioclient5 prints the 401 answer's body and exits 0 (it gives up asking for another
    # password without a dialog): the server's refusal, not the file. KIO is also
    # Konqueror's HTTP engine and asks for HTML first (Accept: text/html, text/*;q=0.9, …),
    # so the refusal is the browser page (browser_pages.wants_html), not the short text.
    assert "<title>Sign-in needed</title>" in out and "</html>cat-rc=0" in out, out
    assert "hello from the server" not in out, out
    assert server.handshakes.counters().failed == 0  # TLS was fine: the password was not
    assert any(r["account"] == "alice" and r["decision"] == "deny" for r in records(inst)), records(inst)
