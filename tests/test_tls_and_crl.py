"""TLS settings as a client sees them, and a CRL that never goes stale."""

from __future__ import annotations

import contextlib
import ssl
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from davserver.cli import main
from davserver.pki import load_crl_serials
from davserver.revocation import RevocationList
from davserver.server import DavServer

from .conftest import Instance, client_context


def handshake(inst: Instance, server: DavServer, ctx: ssl.SSLContext) -> ssl.SSLSocket | None:
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        tls = ctx.wrap_socket(sock, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        sock.close()
        return None
    return tls


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_versions_are_refused(inst: Instance, server: DavServer, version: str) -> None:
    ctx = client_context(inst, inst.clients["alice"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for old TLS is the point here
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert handshake(inst, server, ctx) is None


def test_tls12_offers_only_forward_secret_aead_suites(inst: Instance, server: DavServer) -> None:
    ctx = client_context(inst, inst.clients["alice"], tls12=True)
    ctx.set_ciphers("AES256-GCM-SHA384:AES128-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA")  # no ECDHE+AEAD
    assert handshake(inst, server, ctx) is None
    good = client_context(inst, inst.clients["alice"], tls12=True)
    tls = handshake(inst, server, good)
    assert tls is not None
    name, version, _bits = tls.cipher()  # type: ignore[misc]
    assert version == "TLSv1.2" and "ECDHE" in name and ("GCM" in name or "CHACHA20" in name)
    assert tls.compression() is None
    tls.close()
    modern = handshake(inst, server, client_context(inst, inst.clients["alice"]))
    assert modern is not None and modern.version() == "TLSv1.3"
    modern.close()


def test_crl_is_re_signed_before_it_falls_due(inst: Instance) -> None:
    crl = inst.home.certs_dir / "crl.pem"
    inst.ca.revoke(inst.clients["bob"].issued.serial)
    revocations = RevocationList(crl)
    assert revocations.keep_fresh(inst.home.certs_dir) == "fresh"
    _, due = load_crl_serials(crl)
    assert due is not None
    near = due - timedelta(days=5)
    assert revocations.keep_fresh(inst.home.certs_dir, now=near) == "renewed"
    serials, renewed_due = load_crl_serials(crl)
    assert renewed_due is not None and renewed_due > due
    assert inst.clients["bob"].issued.serial in serials, "revocations survive re-signing"


def test_a_foreign_crl_that_falls_due_is_reported(inst: Instance, tmp_path, caplog) -> None:
    foreign = tmp_path / "enterprise-crl.pem"
    foreign.write_bytes((inst.home.certs_dir / "crl.pem").read_bytes())
    revocations = RevocationList(foreign)
    assert revocations.keep_fresh(inst.home.certs_dir, now=datetime.now(UTC) + timedelta(days=60)) == "stale"
    assert "due for an update" in caplog.text


def test_cert_crl_command(inst: Instance) -> None:
    result = CliRunner().invoke(main, ["--home", str(inst.home.root), "cert", "crl", "--days", "7"])
    assert result.exit_code == 0, result.output
    _, due = load_crl_serials(inst.home.certs_dir / "crl.pem")
    assert due is not None and timedelta(days=6) < due - datetime.now(UTC) <= timedelta(days=7)
