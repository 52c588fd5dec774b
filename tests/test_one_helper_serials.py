"""A certificate serial has one text form (pki.serial_hex): the identity of a presented
certificate (auth/identity.py), the CRL's entries (pki.load_crl_serials), the file in
``issued/`` and what the CLI accepts all agree for any serial, also one whose hex has an odd
number of digits or whose DER has a leading zero byte; and such a certificate, once revoked,
is refused on a real TLS request."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver.auth.identity import parse_certificate
from davserver.pki import CertificateAuthority, PKIError, _parse_serial, load_crl_serials, serial_hex
from davserver.server import DavServer

from .conftest import Instance, running, session_for
from .test_server_auth import last_reason

PACKAGE = Path(__file__).resolve().parent.parent / "davserver"

def _with_serial(monkeypatch: pytest.MonkeyPatch, serial: int) -> None:
    """The next certificate the project CA signs gets ``serial`` (pki.py draws it from
    ``x509.random_serial_number``)."""
    monkeypatch.setattr(x509, "random_serial_number", lambda: serial)


def test_serial_hex_is_the_only_serial_formatting() -> None:
    """No module but pki.py turns a ``serial_number`` into text itself (an f-string,
    ``format()``, ``hex()``, ``str()``)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "pki.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = ast.unparse(node) if isinstance(node, ast.FormattedValue | ast.Call) else ""
            if "serial_number" not in text or "serial_hex(" in text:
                continue
            if isinstance(node, ast.FormattedValue):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("format", "hex", "str"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(serial=st.integers(min_value=1, max_value=2**159 - 1))
@example(serial=1)
@example(serial=0xA)
@example(serial=0xABC)
@example(serial=0x80)
@example(serial=0x8000)
@example(serial=0x0ABCDE)
@example(serial=2**159 - 1)
def test_identity_crl_inventory_and_cli_agree_on_every_serial(inst: Instance, monkeypatch: pytest.MonkeyPatch,
                                                              serial: int) -> None:
    ca = CertificateAuthority(inst.home.certs_dir)
    if (ca.issued_dir / f"{serial_hex(serial)}.crt").exists():
        return  # an example drawn twice: already shown
    with monkeypatch.context() as m:
        _with_serial(m, serial)
        _key, cert, issued = ca.client_identity("alice")
    assert cert.serial_number == serial
    ident = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
    # The CLI takes a serial pasted with leading zeros, 0x, colons or lower case.
    pasted = ":".join(f"{serial:040x}"[i:i + 2] for i in range(0, 40, 2))
    ca.revoke(pasted)
    revoked, _ = load_crl_serials(ca.crl_path)
    assert ident.serial == issued.serial == serial_hex(serial) == format(serial, "X")
    assert (ca.issued_dir / f"{ident.serial}.crt").is_file()
    assert ident.serial in revoked and revoked.revokes(ident.serial, ident.issuer)


@pytest.mark.parametrize("serial", [0x80FF, 0xABC], ids=["leading-zero-byte", "odd-hex-digits"])
def test_a_revoked_certificate_with_an_awkward_serial_is_refused(inst: Instance, monkeypatch: pytest.MonkeyPatch,
                                                                 serial: int) -> None:
    """0x80FF is ``00 80 FF`` in DER (the high bit asks for a zero byte); 0xABC has three hex
    digits. Issued through the project's own path, bound to alice, accepted, then revoked
    with the CRL only (the binding stays, so the CRL check is what refuses it)."""
    with monkeypatch.context() as m:
        _with_serial(m, serial)
        client = inst.issue("alice", name="awkward")
    der = x509.load_pem_x509_certificate(client.crt.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert x509.load_der_x509_certificate(der).serial_number == serial
    server: DavServer
    with running(inst) as server:
        s = session_for(inst, client=client)
        assert s.get(server.url + "files/").status_code == 200
        inst.ca.revoke("0x" + f"{serial:06x}")  # as an operator might paste it, leading zeros and all
        refused = session_for(inst, client=client).get(server.url + "files/")
        assert refused.status_code == 401
        assert last_reason(inst, "revoked") == "revoked"
        assert session_for(inst, "bob").get(server.url + "ro/").status_code == 200


@pytest.mark.parametrize("pasted", [
    "1DA7", "0x1da7", "00:1D:A7", "1d a7", "0" * 40 + "1DA7", "0x" + "0" * 60 + "1da7", " 001DA7 ",
])
def test_a_serial_is_taken_however_it_is_padded(pasted: str) -> None:
    assert _parse_serial(pasted) == "1DA7"


@pytest.mark.parametrize("pasted", ["", "0x", "::", "1" * 41, "0" + "F" * 41, "1DA7G", "-1DA7", "１DA7"])
def test_a_serial_that_is_no_serial_is_refused(pasted: str) -> None:
    """Above 40 significant hex digits (20 octets, RFC 5280 §4.1.2.2), empty, or not hex."""
    with pytest.raises(PKIError):
        _parse_serial(pasted)
