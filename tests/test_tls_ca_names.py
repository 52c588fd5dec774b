"""The server's CertificateRequest names the CAs of ``tls.client_ca`` (tls_ca_names.py):
the ``certificate_authorities`` list of TLS 1.2 (RFC 5246 §7.4.4) and extension of TLS
1.3 (RFC 8446 §4.2.4), read by a real ``openssl s_client`` from a running server.

Twins: the same context without the call sends no names (the check can fail), and a
client certificate still signs in as before, with one CA and with a bundle of two.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from davserver.config import load_config
from davserver.pki import CertificateAuthority
from davserver.tls import create_ssl_context
from davserver.tls_ca_names import CANamesUnavailable, send_client_ca_names

from .conftest import PASSWORDS, Instance, client_context, running

VERSIONS = ["tls1_2", "tls1_3"]
SECOND_CA = "Example Corp Issuing CA"


def _openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is not installed (apt-get install openssl)")
        pytest.skip("openssl is not installed")
    return exe


def ca_names(port: int, version: str) -> list[str]:
    """The CA names ``openssl s_client`` reports from the server's CertificateRequest
    ([] for "No client certificate CA names sent"), in the order sent."""
    out = subprocess.run(
        [_openssl(), "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-servername", "localhost"],
        input=b"", capture_output=True, timeout=30,
    ).stdout.decode("utf-8", "replace")
    lines = out.splitlines()
    if "No client certificate CA names sent" in lines:
        return []
    assert "Acceptable client certificate CA names" in lines, out[-2000:]
    names = []
    for line in lines[lines.index("Acceptable client certificate CA names") + 1 :]:
        if ":" in line:  # "Client Certificate Types: ...", "Requested Signature Algorithms: ..."
            break
        names.append(line.strip())
    return names


@contextmanager
def bare_tls_server(context: ssl.SSLContext) -> Iterator[int]:
    """A TLS listener on a free port that handshakes with whoever connects (failures
    ignored) until the block ends; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _bundle_of_two(inst: Instance) -> Path:
    """tls.client_ca made a bundle: the instance CA and a second (a company's) CA."""
    other = CertificateAuthority(inst.home.root / "corp")
    other.create(common_name=SECOND_CA)
    bundle = inst.home.certs_dir / "client-cas.crt"
    bundle.write_bytes(inst.ca_file.read_bytes() + other.ca_cert_path.read_bytes())
    with inst.home.config_file.open("a") as f:
        f.write("tls: {client_ca: certs/client-cas.crt}\n")
    return bundle


@pytest.mark.parametrize("version", VERSIONS)
def test_certificate_request_names_the_client_ca(inst: Instance, version: str) -> None:
    """The exact check of the field case: ``openssl s_client -tls1_2/-tls1_3``."""
    with running(inst) as srv:
        assert ca_names(srv.port, version) == ["CN = davserver CA"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_bundle_of_two_cas_names_both(inst: Instance, version: str) -> None:
    _bundle_of_two(inst)
    with running(inst) as srv:
        assert ca_names(srv.port, version) == ["CN = davserver CA", f"CN = {SECOND_CA}"]


@pytest.mark.parametrize("version", VERSIONS)
def test_without_the_call_no_names_are_sent(inst: Instance, version: str) -> None:
    """Twin: Python's ssl alone sends none (what the server did before), and the same
    context names the CA once send_client_ca_names ran on it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(inst.home.certs_dir / "server.crt"), str(inst.home.certs_dir / "server.key"))
    context.load_verify_locations(cafile=str(inst.ca_file))
    with bare_tls_server(context) as port:
        assert ca_names(port, version) == []
    assert send_client_ca_names(context, inst.ca_file) == ["CN=davserver CA"]
    with bare_tls_server(context) as port:
        assert ca_names(port, version) == ["CN = davserver CA"]


def test_the_checks_leave_the_context_as_it_was(inst: Instance) -> None:
    """The sentinel is put back, the options and verify mode are untouched."""
    context = create_ssl_context(load_config(inst.home).tls)
    before = (context.num_tickets, context.options, context.verify_mode, context.verify_flags)
    assert send_client_ca_names(context, inst.ca_file) == ["CN=davserver CA"]
    assert (context.num_tickets, context.options, context.verify_mode, context.verify_flags) == before


def test_a_file_without_certificates_is_refused_and_changes_nothing(inst: Instance, tmp_path: Path) -> None:
    """Nothing readable: CANamesUnavailable, no stale OpenSSL error for the next ssl call,
    and the context keeps the names it had."""
    context = create_ssl_context(load_config(inst.home).tls)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(CANamesUnavailable, match="read no CA name"):
        send_client_ca_names(context, empty)
    context.load_verify_locations(cafile=str(inst.ca_file))  # no leftover error surfaces here
    with bare_tls_server(context) as port:
        assert ca_names(port, "tls1_3") == ["CN = davserver CA"]


def test_only_an_ssl_context_is_accepted() -> None:
    with pytest.raises(CANamesUnavailable, match="not an ssl.SSLContext"):
        send_client_ca_names(object(), Path("/nonexistent"))  # type: ignore[arg-type]


def _get_status(inst: Instance, port: int, *, tls12: bool, with_cert: bool) -> tuple[str, int]:
    """(TLS version, HTTP status) of alice's GET /files/; status 0 when the handshake or
    the first read fails."""
    ctx = client_context(inst, inst.clients["alice"] if with_cert else None, tls12=tls12)
    auth = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="localhost") as s:
            s.sendall(f"GET /files/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n"
                      "Connection: close\r\n\r\n".encode())
            head = s.recv(100)
            return str(s.version()), int(head.split(b" ", 2)[1])
    except (ssl.SSLError, OSError):
        return "", 0


@pytest.mark.parametrize("tls12", [True, False], ids=["TLS 1.2", "TLS 1.3"])
@pytest.mark.parametrize("two_cas", [False, True], ids=["one CA", "two CAs"])
def test_client_certificate_sign_in_still_works(inst: Instance, tls12: bool, two_cas: bool) -> None:
    """Twin: with the names sent, alice's certificate signs in as before (200), and a
    client without one is still refused at the handshake."""
    if two_cas:
        _bundle_of_two(inst)
    with running(inst) as srv:
        assert _get_status(inst, srv.port, tls12=tls12, with_cert=True) == ("TLSv1.2" if tls12 else "TLSv1.3", 200)
        assert _get_status(inst, srv.port, tls12=tls12, with_cert=False)[1] == 0


def test_a_failed_check_starts_the_server_without_names(
    inst: Instance, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the SSL_CTX cannot be verified (another Python build), nothing is written: the
    server starts, logs a warning naming the check, sends no names and still signs in.
    The failing check is injected: this machine's build passes them all."""
    from davserver import tls_ca_names

    def refuse(context: ssl.SSLContext, lib: object) -> int:
        raise CANamesUnavailable("SSL_CTX_get_options differs from SSLContext.options")

    monkeypatch.setattr(tls_ca_names, "_ssl_ctx_pointer", refuse)
    with caplog.at_level("WARNING", logger="davserver.tls"), running(inst) as srv:
        assert ca_names(srv.port, "tls1_3") == []
        assert _get_status(inst, srv.port, tls12=False, with_cert=True) == ("TLSv1.3", 200)
    assert any("names no CA (SSL_CTX_get_options differs" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("setting", "expected"), [
    ("0", []),                                         # never
    ("20", []),                                        # one name takes more than 20 bytes: none sent
    ("32256", ["CN = davserver CA", f"CN = {SECOND_CA}"]),  # the default: both
])
def test_tls_max_ca_names_bytes_bounds_the_names(inst: Instance, setting: str, expected: list[str]) -> None:
    """`tls.max_ca_names_bytes` is the bound of tls_ca_names.MAX_NAMES_BYTES as a setting:
    over it no name is sent (a cut list would leave the omitted CAs' users with nothing
    to choose), and sign-in works either way."""
    _bundle_of_two(inst)
    text = inst.home.config_file.read_text().replace(
        "tls: {client_ca: certs/client-cas.crt}",
        f"tls: {{client_ca: certs/client-cas.crt, max_ca_names_bytes: {setting}}}")
    inst.home.config_file.write_text(text)
    with running(inst) as srv:
        assert ca_names(srv.port, "tls1_2") == expected
        assert _get_status(inst, srv.port, tls12=False, with_cert=True)[1] == 200
