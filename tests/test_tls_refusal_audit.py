"""A client refused at the TLS handshake leaves one audit line with its reason
(tls_refusals.py): no certificate, a certificate of another CA, an expired one, one
without the clientAuth EKU, bytes that are not TLS. Each with its twin: a good
certificate signs in and leaves no such line. The rate limit (audit.tls_refusals_per_second)
keeps a flood to a bounded number of lines plus a summary of what it left out.

Real TLS sockets and certificates from the project CA (or another CA made the same way)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from davserver.access import Refusal
from davserver.audit import AuditLog
from davserver.config import load_config
from davserver.pki import CertificateAuthority
from davserver.tls_refusals import EVENT, SUPPRESSED_EVENT, TLSRefusals, classify

from .conftest import Instance, client_context, running, session_for


def _audit(inst: Instance) -> list[dict[str, object]]:
    path = inst.home.root / "state" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tls_lines(inst: Instance) -> list[dict[str, object]]:
    return [r for r in _audit(inst) if r.get("event") == EVENT]


def _wait_for(inst: Instance, count: int, event: str = EVENT, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [r for r in _audit(inst) if r.get("event") == event]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _set_rate(inst: Instance, per_second: int) -> None:
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text().replace(
        "audit: {file: state/audit.log}", f"audit: {{file: state/audit.log, tls_refusals_per_second: {per_second}}}"
    ))
    assert load_config(inst.home).audit.tls_refusals_per_second == per_second


def _handshake(port: int, ctx: ssl.SSLContext) -> BaseException | None:
    """A TLS handshake plus one request; the error the client saw, or None when answered."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = s.recv(4096)
            if not data:
                return ConnectionResetError("closed")
            return None
    except (ssl.SSLError, OSError) as exc:
        return exc


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def _server_auth_only(inst: Instance, folder: Path) -> tuple[Path, Path]:
    """A certificate of our own CA for alice whose EKU is serverAuth only (no clientAuth)."""
    ca = CertificateAuthority(inst.home.certs_dir)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key_path.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _write_pair(folder, "server-auth-only", cert, key)


def _ctx(inst: Instance, pair: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = client_context(inst, None)
    if pair is not None:
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    return ctx


def test_each_refused_handshake_is_one_audit_line_with_its_reason(inst: Instance, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other-ca")
    other.create()  # the same name as ours, another key
    foreign = other.issue_client_cert("alice", out_prefix=tmp_path / "foreign", p12_password=b"pw")
    expired = inst.issue("alice", name="alice-expired", days=1, now=datetime.now(UTC) - timedelta(days=30))
    cases: dict[str, tuple[Path, Path] | None] = {
        "no_cert": None,
        "unknown_ca": (Path(foreign.paths["crt"]), Path(foreign.paths["key"])),
        "cert_expired": (expired.crt, expired.key),
        "bad_eku": _server_auth_only(inst, tmp_path),
    }
    _set_rate(inst, 100)  # every line of this test is written (the limit is the next test's)
    with running(inst) as srv:
        for n, (reason, pair) in enumerate(cases.items(), start=1):
            assert _handshake(srv.port, _ctx(inst, pair)) is not None, reason
            lines = _wait_for(inst, n)
            assert len(lines) == n, (reason, lines)
            line = lines[-1]
            assert line["reason"] == reason, line
            assert line["decision"] == "deny" and line["peer"] == "127.0.0.1" and line["status"] == 0
            assert line["detail"], line
            # The twin: the good certificate of the same account signs in, and is no refusal.
            s = session_for(inst, "alice")
            assert s.request("PROPFIND", f"{srv.url}files/", headers={"Depth": "0"}).status_code == 207
            s.close()
            assert len(_tls_lines(inst)) == n
        # Not TLS, or broken TLS: tls_error.
        not_tls = (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP to the TLS port
            b"SSH-2.0-OpenSSH_9.2\r\n",  # another protocol
            b"\x16\x03\x01\x00\x08" + b"\xff" * 8,  # a handshake record holding garbage
        )
        for n, payload in enumerate(not_tls, start=len(cases) + 1):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
                raw.sendall(payload)
                raw.settimeout(5)
                try:
                    while raw.recv(4096):
                        pass
                except OSError:
                    pass
            lines = _wait_for(inst, n)
            assert len(lines) == n and lines[-1]["reason"] == "tls_error", (payload, lines)
    requests_ok = [r for r in _audit(inst) if r.get("method") == "PROPFIND" and r["decision"] == "allow"]
    assert len(requests_ok) == len(cases)
    assert len(_tls_lines(inst)) == len(cases) + len(not_tls)


def test_a_connection_closed_silently_and_a_good_client_are_not_refusals(inst: Instance) -> None:
    """A TCP check that connects and closes, and a client that completes its handshake,
    leave no tls_handshake line (the twin of every case above)."""
    with running(inst) as srv:
        for _ in range(5):
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        assert _handshake(srv.port, client_context(inst, inst.clients["bob"])) is None
        time.sleep(0.3)
    assert _tls_lines(inst) == []
    assert any(r.get("method") == "OPTIONS" for r in _audit(inst))


def test_the_rate_limit_bounds_the_lines_and_a_summary_counts_the_rest(inst: Instance) -> None:
    """audit.tls_refusals_per_second: 3 → a flood of 40 clients without a certificate
    leaves at most 3 lines per second from 127.0.0.1 and a summary with the rest."""
    flood = 40
    _set_rate(inst, 3)
    ctx = client_context(inst, None)
    started = time.monotonic()
    with running(inst) as srv:
        for _ in range(flood):
            assert _handshake(srv.port, ctx) is not None
        elapsed = time.monotonic() - started
        summaries = _wait_for(inst, 1, SUPPRESSED_EVENT, timeout=5)
    lines = _tls_lines(inst)
    assert lines and all(r["reason"] == "no_cert" for r in lines)
    assert len(lines) <= 3 * (int(elapsed) + 2), (len(lines), elapsed)
    assert summaries, "no summary line"
    suppressed = sum(int(s["suppressed"]) for s in _audit(inst) if s.get("event") == SUPPRESSED_EVENT)  # type: ignore[call-overload]
    assert len(lines) + suppressed == flood
    assert "audit.tls_refusals_per_second" in str(summaries[0]["detail"])


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("per_address", "total"), [(1, 100), (5, 100), (5, 7), (100, 3)])
def test_the_bounds_hold_for_each_address_and_in_total(tmp_path: Path, per_address: int, total: int) -> None:
    """Four addresses × 20 refusals in one second: each address gets at most
    `per_address` lines, all of them at most `total`; the next second's first refusal
    writes the summary with the exact rest; and the next second starts afresh."""
    audit = AuditLog(tmp_path / "audit.log")
    clock = _Clock()
    counted: list[str] = []
    refusals = TLSRefusals(audit, per_address=per_address, total=total, counter=counted.append, clock=clock)
    exc = ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate")
    exc.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    peers = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]  # the last two: one /64
    for _ in range(20):
        for peer in peers:
            assert refusals.refused(exc, peer) == Refusal.NO_CERT
    clock.now += 1.0
    refusals.refused(exc, "192.0.2.9")
    refusals.close()
    audit.close()
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    lines = [r for r in records if r["event"] == EVENT]
    first = lines[:-1]
    keys = ["192.0.2.1", "192.0.2.2", "2001:db8::/64"]
    per_key = {k: sum(1 for r in first if (r["peer"] if ":" not in str(r["peer"]) else "2001:db8::/64") == k)
               for k in keys}
    assert all(v <= per_address for v in per_key.values()), per_key
    expected = min(total, per_address * len(keys))
    assert len(first) == expected
    summary = [r for r in records if r["event"] == SUPPRESSED_EVENT]
    assert len(summary) == 1 and summary[0]["suppressed"] == 80 - expected
    assert summary[0]["reasons"] == {"no_cert": 80 - expected}
    assert lines[-1]["peer"] == "192.0.2.9"
    assert len(counted) == 81  # the metrics see every one


def test_classify_maps_openssl_errors_to_the_five_reasons() -> None:
    def verify(code: int) -> ssl.SSLCertVerificationError:
        e = ssl.SSLCertVerificationError(1, "certificate verify failed")
        e.verify_code = code
        return e

    assert classify(verify(10)) == Refusal.CERT_EXPIRED
    assert classify(verify(9)) == Refusal.CERT_EXPIRED
    for code in (2, 7, 18, 19, 20, 21, 24, 30):
        assert classify(verify(code)) == Refusal.UNKNOWN_CA, code
    assert classify(verify(26)) == Refusal.BAD_EKU
    assert classify(verify(50)) == Refusal.TLS_ERROR
    wrong = ssl.SSLError(1, "wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert classify(wrong) == Refusal.TLS_ERROR
    assert classify(ssl.SSLEOFError(8, "EOF")) is None
    assert classify(ConnectionResetError()) is None
    assert classify(ValueError("bad certificate")) == Refusal.TLS_ERROR
    for reason in ("no_cert", "unknown_ca", "cert_expired", "bad_eku", "tls_error"):
        assert reason in {r.value for r in Refusal}


@settings(max_examples=60, deadline=None)
@given(
    per_address=st.integers(1, 6),
    total=st.integers(1, 12),
    events=st.lists(st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::9", "198.51.100.7"]),
                              st.floats(0, 0.7)), max_size=80),
)
def test_no_second_ever_exceeds_the_bounds_and_nothing_is_lost(
    tmp_path_factory: pytest.TempPathFactory, per_address: int, total: int, events: list[tuple[str, float]]
) -> None:
    """Any sequence of refusals and pauses: in every one-second window at most
    `per_address` lines per address key and `total` in all; every refusal is either a
    line or counted in a summary; the metrics count all of them."""
    folder = tmp_path_factory.mktemp("rate")
    audit = AuditLog(folder / "audit.log")
    clock = _Clock()
    counted: list[str] = []
    refusals = TLSRefusals(audit, per_address=per_address, total=total, counter=counted.append, clock=clock)
    exc = ssl.SSLError(1, "wrong version number")
    written_at: list[tuple[int, str]] = []
    for peer, pause in events:
        clock.now += pause
        before = (folder / "audit.log").read_text().count(f'"event":"{EVENT}"')
        refusals.refused(exc, peer)
        if (folder / "audit.log").read_text().count(f'"event":"{EVENT}"') > before:
            written_at.append((int(clock.now), "2001:db8::/64" if ":" in peer else peer))
    refusals.close()
    audit.close()
    records = [json.loads(x) for x in (folder / "audit.log").read_text().splitlines()]
    suppressed = sum(r["suppressed"] for r in records if r["event"] == SUPPRESSED_EVENT)
    assert len(written_at) + suppressed == len(events) == len(counted)
    for second in {s for s, _ in written_at}:
        keys = [k for s, k in written_at if s == second]
        assert len(keys) <= total
        assert all(keys.count(k) <= per_address for k in keys)


def test_metrics_labels_stay_bounded_whatever_the_record_says() -> None:
    """Method and reason labels come from fixed lists whatever a record holds."""
    from davserver.metrics import METHODS, Metrics

    @settings(max_examples=200, deadline=None)
    @given(method=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(sorted(METHODS))),
           reason=st.one_of(st.none(), st.text(max_size=12), st.sampled_from([r.value for r in Refusal])),
           status=st.one_of(st.none(), st.integers(-5, 2000), st.text(max_size=3)))
    def check(method: object, reason: object, status: object) -> None:
        metrics = Metrics()
        metrics.observe({"method": method, "status": status, "decision": "deny", "reason": reason,
                         "duration_ms": 1.0, "bytes_in": 0, "bytes_out": 0})
        metrics.count_tls_failure(str(reason))
        for family in metrics.registry.collect():
            for sample in family.samples:
                labels = sample.labels
                assert labels.get("method", "GET") in METHODS | {"other"}
                assert labels.get("reason", "ok") in {r.value for r in Refusal} | {"other", "ok"}
                assert str(labels.get("status", "200")).isdigit() and len(labels.get("status", "200")) <= 3

    check()


@pytest.mark.parametrize(
    ("setting", "value", "ok"),
    [("tls_refusals_per_second", 0, False), ("tls_refusals_per_second", 1, True),
     ("tls_refusals_per_second", 10_000, True), ("tls_refusals_per_second", 10_001, False),
     ("tls_refusals_total_per_second", 0, False), ("tls_refusals_total_per_second", 100_000, True),
     ("tls_refusals_per_second", "5", False)],
)
def test_the_rate_settings_are_checked(inst: Instance, setting: str, value: object, ok: bool) -> None:
    from davserver.config import ConfigError

    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text().replace(
        "audit: {file: state/audit.log}", f"audit: {{file: state/audit.log, {setting}: {value!r}}}"
    ))
    if ok:
        assert getattr(load_config(inst.home).audit, setting) == value
    else:
        with pytest.raises(ConfigError, match=f"audit.{setting}"):
            load_config(inst.home)


def test_the_defaults_are_documented_values() -> None:
    from davserver.config import AuditConfig

    assert AuditConfig(file=None).tls_refusals_per_second == 5
    assert AuditConfig(file=None).tls_refusals_total_per_second == 20
