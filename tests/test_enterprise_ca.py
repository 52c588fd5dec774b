"""Enterprise CAs (cases2/09): a sub-CA alone as the trust anchor, subject rules bound to
the issuing CA, and what an attacker can and cannot make of either.

A real PKI built with ``cryptography`` (EC P-256):

    Example Corp Root CA ─┬─ User CA (pathlen 0) ─── eve, eve-mail, eve-same-serial
                          │                      └── Sub CA (a CA it may not issue) ── eve
                          ├─ Partner CA (pathlen 0) ── eve
                          └─ "User CA" look-alike (the User CA's DN, its own key) ── eve

and real TLS connections to a running server whose account ``eve`` has no certificate
bound: only a subject rule can make a certificate hers.
"""

from __future__ import annotations

import base64
import gc
import http.client
import itertools
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from davserver import instance
from davserver.accounts import Account
from davserver.auth.identity import parse_certificate
from davserver.auth.issuers import SubjectRules, check_trust_anchors
from davserver.auth.passwords import hash_password
from davserver.config import ConfigError, Home, SubjectRule, load_config, parse_config
from davserver.errors import StartupError
from davserver.server import DavServer

from .conftest import Instance, running

EVE_PW = "eve-secret-pw-1"
NOW = datetime.now(UTC)

# --- the PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make(cn: str, issuer: Cert | None, *, ca: bool, pathlen: int | None = None, email: str | None = None,
         serial: int | None = None, key: ec.EllipticCurvePrivateKey | None = None,
         issuer_name: x509.Name | None = None, signer: ec.EllipticCurvePrivateKey | None = None) -> Cert:
    """A certificate for ``cn`` signed by ``issuer`` (self-signed when None). ``issuer_name``
    and ``signer`` override what the certificate claims and which key signs it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn)
    signing_key = signer or (issuer.key if issuer else key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or (issuer.cert.subject if issuer else subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return Cert(b.sign(signing_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class PKI:
    root: Cert
    users: Cert
    partner: Cert
    lookalike: Cert  # under the root, with the User CA's name
    sub: Cert  # a CA under the User CA, whose pathlen 0 forbids it
    eve: Cert  # User CA
    eve_mail: Cert  # User CA, CN=Eve Example, SAN eve
    eve_partner: Cert
    eve_lookalike: Cert
    eve_sub: Cert
    eve_root: Cert  # issued by the root itself


@pytest.fixture(scope="module")
def pki() -> PKI:
    root = make("Example Corp Root CA", None, ca=True)
    users = make("Example Corp User CA", root, ca=True, pathlen=0)
    partner = make("Example Corp Partner CA", root, ca=True, pathlen=0)
    lookalike = make("Example Corp User CA", root, ca=True, pathlen=0)
    sub = make("Example Corp Sub CA", users, ca=True, pathlen=0)
    return PKI(
        root, users, partner, lookalike, sub,
        eve=make("eve", users, ca=False),
        eve_mail=make("Eve Example", users, ca=False, email="eve"),
        eve_partner=make("eve", partner, ca=False),
        eve_lookalike=make("eve", lookalike, ca=False),
        eve_sub=make("eve", sub, ca=False),
        eve_root=make("eve", root, ca=False),
    )


# --- an instance that trusts what a test says ------------------------------------------


def configure(inst: Instance, anchors: list[Cert], rules: list[tuple[Cert | None, str]], *,
              own_ca: bool = True) -> None:
    """tls.client_ca = our CA (unless ``own_ca`` is False) + ``anchors``; one subject rule
    per (issuing CA, match), the plain form (``- cn``) for a None CA; account eve with no
    certificate bound."""
    certs = inst.home.certs_dir
    own = inst.ca_file.read_bytes() if own_ca else b""
    (certs / "client-bundle.pem").write_bytes(own + b"".join(a.pem for a in anchors))
    raw = yaml.safe_load(inst.home.config_file.read_text()) or {}
    raw.setdefault("tls", {})["client_ca"] = "certs/client-bundle.pem"
    entries: list[object] = []
    for n, (issuer, match) in enumerate(rules):
        if issuer is None:
            entries.append(match)
            continue
        (certs / f"rule-{n}.pem").write_bytes(issuer.pem)
        entries.append({"issuer": f"certs/rule-{n}.pem", "match": match})
    raw.setdefault("identity", {})["subject_rules"] = entries
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    if "eve" not in inst.home.accounts_file.read_text():
        instance.add_account(inst.home, Account(name="eve", password_hash=hash_password(EVE_PW)))


def client_files(tmp: Path, leaf: Cert, chain: list[Cert]) -> tuple[Path, Path]:
    crt = tmp / f"client-{leaf.cert.serial_number:x}-{len(chain)}.crt"
    key = crt.with_suffix(".key")
    crt.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key.write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return crt, key


def attempt(inst: Instance, server: DavServer, leaf: Cert, chain: list[Cert], *, user: str = "eve",
            password: str = EVE_PW, tls12: bool = False) -> int | str:
    """PROPFIND /files/ over a fresh TLS connection presenting ``leaf`` + ``chain``: the
    status, or "refused" when the handshake is refused (under TLS 1.3 that surfaces on
    the first read)."""
    crt, key = client_files(inst.home.root.parent, leaf, chain)
    ctx = ssl.create_default_context(cafile=str(inst.ca_file))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(crt), str(key))
    return request(server, ctx, user, password)


def request(server: DavServer, ctx: ssl.SSLContext, user: str, password: str) -> int | str:
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("PROPFIND", "/files/", headers={"Depth": "0", "Authorization": auth})
        r = conn.getresponse()
        r.read()
        return r.status
    except (ssl.SSLError, ConnectionError, OSError):
        return "refused"
    finally:
        conn.close()


def last_reason(inst: Instance, expected: str) -> str:
    """The newest audit record's reason, waiting briefly for ``expected`` (the record is
    written just after the answer's last byte)."""
    path = inst.home.state_dir / "audit.log"
    reason = None
    for _ in range(100):
        lines = path.read_text().splitlines() if path.exists() else []
        reason = json.loads(lines[-1])["reason"] if lines else None
        if reason == expected:
            break
        time.sleep(0.02)
    return str(reason)


@pytest.fixture
def serve(inst: Instance) -> Iterator[object]:
    """``serve(anchors, rules)`` configures the instance and yields a running server."""
    servers: list[object] = []

    def start(anchors: list[Cert], rules: list[tuple[Cert | None, str]], **kw: bool) -> DavServer:
        configure(inst, anchors, rules, **kw)
        cm = running(inst)
        srv = cm.__enter__()
        servers.append(cm)
        return srv

    yield start
    for cm in servers:
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


# --- case 09, A to E ---------------------------------------------------------------------


def test_case09_root_trusted_rule_for_the_user_ca(inst: Instance, serve, pki: PKI) -> None:
    """A, B and E: the root in the bundle, subject rule [{issuer: User CA, match: cn}]."""
    server = serve([pki.root], [(pki.users, "cn")])
    assert attempt(inst, server, pki.eve, [pki.users]) == 207  # A: leaf + intermediate
    assert last_reason(inst, "ok") == "ok"
    assert attempt(inst, server, pki.eve, []) == "refused"  # B: nothing to build the path from
    # E: the partner sub-CA's CN=eve chains to the trusted root, but is not eve.
    assert attempt(inst, server, pki.eve_partner, [pki.partner]) == 401
    assert last_reason(inst, "unknown_cert") == "unknown_cert"
    # ... nor is a sub-CA that copied the User CA's name (the rule is bound to the key).
    assert attempt(inst, server, pki.eve_lookalike, [pki.lookalike]) == 401
    assert last_reason(inst, "unknown_cert") == "unknown_cert"
    assert attempt(inst, server, pki.eve_root, []) == 401  # the root itself is not the rule's issuer
    assert attempt(inst, server, pki.eve, [pki.users]) == 207  # the twin, still eve afterwards


def test_case09_c_intermediate_in_the_bundle_admits_the_leaf_alone(inst: Instance, serve, pki: PKI) -> None:
    server = serve([pki.root, pki.users], [(pki.users, "cn")])
    assert attempt(inst, server, pki.eve, []) == 207
    assert attempt(inst, server, pki.eve, [pki.users]) == 207


def test_case09_d_a_sub_ca_alone_is_a_trust_anchor(inst: Instance, serve, pki: PKI) -> None:
    """D: the admin trusts the User CA only, not the root above it."""
    server = serve([pki.users], [(pki.users, "cn")])
    assert attempt(inst, server, pki.eve, [pki.users]) == 207
    assert attempt(inst, server, pki.eve, []) == 207
    assert attempt(inst, server, pki.eve, [pki.users], tls12=True) == 207
    # Everything else under the same root stays out, at the handshake.
    assert attempt(inst, server, pki.eve_partner, [pki.partner]) == "refused"
    assert attempt(inst, server, pki.eve_partner, [pki.partner, pki.root]) == "refused"
    assert attempt(inst, server, pki.eve_lookalike, [pki.lookalike]) == "refused"
    assert attempt(inst, server, pki.eve_root, [pki.root]) == "refused"
    # Our own CA still admits our own certificates.
    alice = inst.clients["alice"]
    ctx = ssl.create_default_context(cafile=str(inst.ca_file))
    ctx.load_cert_chain(str(alice.crt), str(alice.key))
    assert request(server, ctx, "alice", alice.password) == 207


def test_case09_e_a_rule_for_the_partner_ca_maps_the_partners_eve_only(inst: Instance, serve, pki: PKI) -> None:
    server = serve([pki.root], [(pki.partner, "cn")])
    assert attempt(inst, server, pki.eve_partner, [pki.partner]) == 207
    assert attempt(inst, server, pki.eve, [pki.users]) == 401


def test_pathlen_of_a_sub_ca_anchor_still_applies(inst: Instance, serve, pki: PKI) -> None:
    """The User CA (pathlen 0) alone as anchor: a CA it issued cannot issue in turn."""
    server = serve([pki.users], [(pki.users, "cn"), (pki.sub, "cn")])
    assert attempt(inst, server, pki.eve_sub, [pki.sub]) == "refused"
    assert attempt(inst, server, pki.eve_sub, [pki.sub, pki.users]) == "refused"
    assert attempt(inst, server, pki.eve, []) == 207  # the twin
    # The Sub CA's own certificate is a CA, nobody's account, even with its key in hand.
    assert attempt(inst, server, pki.sub, []) in (401, "refused")


def test_session_resumption_keeps_the_sub_ca_anchor(inst: Instance, serve, pki: PKI) -> None:
    """cases2/07 with a sub-CA anchor: a resumed TLS 1.2 session is the same certificate,
    mapped by the same rule."""
    server = serve([pki.users], [(pki.users, "cn")])
    crt, key = client_files(inst.home.root.parent, pki.eve, [])
    ctx = ssl.create_default_context(cafile=str(inst.ca_file))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(crt), str(key))
    session = None
    statuses = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            reused = tls.session_reused
            tls.sendall(b"PROPFIND /files/ HTTP/1.1\r\nHost: localhost\r\nDepth: 0\r\nConnection: close\r\n"
                        b"Authorization: Basic " + base64.b64encode(f"eve:{EVE_PW}".encode()) + b"\r\n\r\n")
            statuses.append(tls.recv(12))
            session = tls.session
    assert statuses == [b"HTTP/1.1 207"] * 2
    assert reused


# --- an end-entity certificate is never an anchor or an issuer ----------------------------


def test_our_own_leaf_cannot_issue_certificates(inst: Instance, serve, pki: PKI) -> None:
    """alice's key signs a CN=eve certificate naming alice as its issuer: alice is CA:FALSE."""
    alice = inst.clients["alice"]
    alice_cert = x509.load_pem_x509_certificate(alice.crt.read_bytes())
    alice_key = serialization.load_pem_private_key(alice.key.read_bytes(), None)
    assert isinstance(alice_key, ec.EllipticCurvePrivateKey)
    alice_as_ca = Cert(alice_cert, alice_key)
    forged = make("eve", alice_as_ca, ca=False)
    server = serve([], [(pki.users, "cn")])
    assert attempt(inst, server, forged, [alice_as_ca]) == "refused"
    assert attempt(inst, server, alice_as_ca, [], user="alice", password=alice.password) == 207  # the twin


def test_self_signed_look_alikes_are_refused(inst: Instance, serve, pki: PKI) -> None:
    server = serve([pki.users], [(pki.users, "cn")])
    selfmade = make("eve", None, ca=False)
    fake_ca = make("Example Corp User CA", None, ca=True)
    assert attempt(inst, server, selfmade, []) == "refused"
    assert attempt(inst, server, make("eve", fake_ca, ca=False), [fake_ca]) == "refused"
    # The User CA's name and key id, signed with another key: the signature gives it away.
    forged = make("eve", None, ca=False, issuer_name=pki.users.cert.subject, signer=fake_ca.key)
    assert attempt(inst, server, forged, [pki.users]) == "refused"
    assert attempt(inst, server, pki.eve, []) == 207


@pytest.mark.parametrize("kind", ["leaf", "self-signed leaf", "ca without keyCertSign"])
def test_a_bundle_with_an_end_entity_certificate_does_not_start(inst: Instance, pki: PKI, kind: str) -> None:
    if kind == "leaf":
        intruder = x509.load_pem_x509_certificate(inst.clients["alice"].crt.read_bytes())
    elif kind == "self-signed leaf":
        intruder = make("eve", None, ca=False).cert
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        intruder = (
            x509.CertificateBuilder().subject_name(_name("odd CA")).issuer_name(_name("odd CA"))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
    configure(inst, [pki.users], [])
    bundle = inst.home.certs_dir / "client-bundle.pem"
    assert check_trust_anchors(bundle) == 2  # the twin: CAs only
    bundle.write_bytes(bundle.read_bytes() + intruder.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(StartupError) as err:
        DavServer(load_config(inst.home), port=0).start()
    assert "tls.client_ca" in str(err.value) and intruder.subject.rfc4514_string() in str(err.value)


def test_a_rule_must_name_one_ca_certificate(tmp_path: Path, pki: PKI) -> None:
    """What the server start reports (auth/core.py builds these when the guard is made)."""
    path = tmp_path / "issuer.pem"

    def load() -> SubjectRules:
        return SubjectRules([SubjectRule(path, "cn")])

    path.write_bytes(pki.eve.pem)
    with pytest.raises(StartupError, match=r"identity.subject_rules\[0\].issuer: .* is not a CA certificate"):
        load()
    path.write_bytes(pki.users.pem + pki.partner.pem)
    with pytest.raises(StartupError, match=r"subject_rules\[0\].issuer: .* holds 2 certificates"):
        load()
    path.write_bytes(b"not a certificate")
    with pytest.raises(StartupError, match=r"subject_rules\[0\].issuer: .* holds no certificate"):
        load()
    path.unlink()
    with pytest.raises(StartupError, match=r"subject_rules\[0\].issuer: cannot read"):
        load()
    path.write_bytes(pki.users.cert.public_bytes(serialization.Encoding.DER))  # the twin: one CA, DER too
    issuer = load().issuers[0]
    assert issuer is not None and issuer.cert == pki.users.cert
    path.write_bytes(pki.users.pem)
    issuer = load().issuers[0]
    assert issuer is not None and issuer.cert == pki.users.cert


def test_a_server_refusing_a_bad_issuer_file_leaves_nothing_open(inst: Instance, pki: PKI) -> None:
    """The start fails with the key named, and the audit log and state store opened before
    the rules were read are closed (pytest turns a leaked file into an error here)."""
    configure(inst, [pki.root], [(pki.users, "cn")])
    (inst.home.certs_dir / "rule-0.pem").write_bytes(pki.eve.pem)  # a leaf, not a CA
    for _ in range(3):
        with pytest.raises(StartupError, match=r"identity.subject_rules\[0\].issuer: .* is not a CA certificate"):
            DavServer(load_config(inst.home), port=0).start()
        gc.collect()
    (inst.home.certs_dir / "rule-0.pem").write_bytes(pki.users.pem)  # the twin: it starts
    with running(inst) as server:
        assert attempt(inst, server, pki.eve, [pki.users]) == 207


# --- revocation ----------------------------------------------------------------------------


def test_our_crl_does_not_refuse_enterprise_certificates(inst: Instance, serve, pki: PKI) -> None:
    """Our CRL lists our CA's serials; a User CA certificate is not refused for lacking a
    CRL, nor for sharing a serial number with one of ours that is revoked."""
    bob = inst.clients["bob"]
    inst.ca.revoke(bob.issued.serial)
    same_serial = make("eve", pki.users, ca=False, serial=int(bob.issued.serial, 16))
    server = serve([pki.root], [(pki.users, "cn")])
    assert attempt(inst, server, same_serial, [pki.users]) == 207
    assert attempt(inst, server, pki.eve, [pki.users]) == 207
    # ... while our revoked certificate is still refused.
    assert attempt(inst, server, Cert(x509.load_pem_x509_certificate(bob.crt.read_bytes()),
                                      serialization.load_pem_private_key(bob.key.read_bytes(), None)),  # type: ignore[arg-type]
                   [], user="bob", password=bob.password) == 401
    assert last_reason(inst, "revoked") == "revoked"


# --- identity.subject_rules in the configuration --------------------------------------------


@pytest.mark.parametrize(("plain", "matches"), [("[cn]", ("cn",)), ("[san_email]", ("san_email",)),
                                               ("[cn, san_email]", ("cn", "san_email"))])
def test_the_plain_form_keeps_its_meaning_any_trusted_issuer(tmp_path: Path, plain: str,
                                                             matches: tuple[str, ...]) -> None:
    """Existing configurations start as before: a plain rule has no issuer (any CA that
    tls.client_ca trusts); the issuer form sits beside it in the same list."""
    cfg = parse_config(yaml.safe_load(f"identity: {{subject_rules: {plain}}}"), Home(tmp_path))
    assert cfg.identity.subject_rules == tuple(SubjectRule(None, m) for m in matches)
    mixed = "identity: {subject_rules: [cn, {issuer: certs/u.crt, match: san_email}]}"
    assert parse_config(yaml.safe_load(mixed), Home(tmp_path)).identity.subject_rules == (
        SubjectRule(None, "cn"), SubjectRule(tmp_path / "certs/u.crt", "san_email"))


def test_a_plain_rule_maps_any_trusted_issuer_and_warns_at_start(inst: Instance, serve, pki: PKI,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Case 09 as written (root trusted, ``subject_rules: [cn]``): eve from the User CA
    signs in (A), and so does the partner's CN=eve, which is what the plain form says;
    the start log names the rule and the two ways to narrow it. The twins: the issuer
    form refuses the partner (test_case09_root_trusted_rule_for_the_user_ca), and so does
    a bundle narrowed to the User CA with the same plain rule."""
    with caplog.at_level(logging.WARNING, logger="davserver.auth"):
        server = serve([pki.root], [(None, "cn")])
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "davserver.auth")
    assert "identity.subject_rules[0] (cn) names no issuing CA" in warning
    assert "{issuer: certs/users-ca.crt, match: cn}" in warning and "only the user sub-CA" in warning
    assert attempt(inst, server, pki.eve, [pki.users]) == 207
    assert attempt(inst, server, pki.eve_partner, [pki.partner]) == 207


def test_a_plain_rule_with_the_bundle_narrowed_to_the_user_ca(inst: Instance, serve, pki: PKI) -> None:
    """Case 09 D with the plain rule: only the User CA trusted, so only its CN=eve maps."""
    server = serve([pki.users], [(None, "cn")])
    assert attempt(inst, server, pki.eve, [pki.users]) == 207
    assert attempt(inst, server, pki.eve, []) == 207
    assert attempt(inst, server, pki.eve_partner, [pki.partner]) == "refused"


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("cn", "identity.subject_rules"),
        ("[dn]", "identity.subject_rules"),
        ("[{match: cn}]", "identity.subject_rules[0].issuer"),
        ("[{issuer: ''}]", "identity.subject_rules[0].issuer"),
        ("[{issuer: certs/u.crt}]", "identity.subject_rules[0].match"),
        ("[{issuer: certs/u.crt, match: dn}]", "identity.subject_rules[0].match"),
        ("[{issuer: certs/u.crt, match: cn, ca: x}]", "identity.subject_rules[0].ca"),
        ("[{issuer: certs/u.crt, match: cn}, 7]", "identity.subject_rules[1]"),
    ],
)
def test_malformed_rules_name_their_key(tmp_path: Path, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_load(f"identity: {{subject_rules: {value}}}"), Home(tmp_path))
    assert err.value.key == key


def test_rules_parse_in_order_relative_to_the_home(tmp_path: Path) -> None:
    text = "identity: {subject_rules: [{issuer: certs/u.crt, match: cn}, {issuer: /etc/p.crt, match: san_email}]}"
    cfg = parse_config(yaml.safe_load(text), Home(tmp_path))
    assert cfg.identity.subject_rules == (
        SubjectRule(tmp_path / "certs/u.crt", "cn"), SubjectRule(Path("/etc/p.crt"), "san_email")
    )
    assert parse_config({}, Home(tmp_path)).identity.subject_rules == ()


# --- every rule variant against every certificate --------------------------------------------


def test_rules_map_only_what_their_issuer_signed(tmp_path: Path, pki: PKI) -> None:
    """Each combination of up to two rules (issuer x match) against every certificate: the
    names offered are exactly those of the rules whose CA (by key) signed it, in order."""
    signed_by = {  # the truth, from how the PKI was built
        "eve": "users", "eve_mail": "users", "eve_partner": "partner", "eve_lookalike": "lookalike",
        "eve_sub": "sub", "eve_root": "root", "sub": "users", "users": "root",
    }
    cas = {n: getattr(pki, n) for n in ("root", "users", "partner", "lookalike", "sub")}
    for n, ca in cas.items():
        (tmp_path / f"{n}.pem").write_bytes(ca.pem)
    variants = [(ca, match) for ca in cas for match in ("cn", "san_email")]
    checked = 0
    for size in (1, 2):
        for combo in itertools.permutations(variants, size):
            rules = SubjectRules([SubjectRule(tmp_path / f"{ca}.pem", match) for ca, match in combo])
            for name, issuer in signed_by.items():
                cert: Cert = getattr(pki, name)
                ident = parse_certificate(cert.cert.public_bytes(serialization.Encoding.DER))
                expected: list[str] = []
                if not ident.common_name or "CA" not in ident.common_name:  # a CA certificate maps to nobody
                    for ca, match in combo:
                        if ca == issuer:
                            expected += [ident.common_name or ""] if match == "cn" else list(ident.emails)
                assert list(rules.names(ident)) == expected, (combo, name)
                checked += 1
    assert checked == (10 + 10 * 9) * len(signed_by)
