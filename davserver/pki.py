"""Built-in certificate authority: CA, server certificate, client certificates and the CRL.

Everything lives in one folder so an operator can back it up, inspect it with openssl, or
replace it by hand. Keys never touch the disk with permissive modes, and every file is
replaced atomically so a crash cannot leave a half-written certificate behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic

__all__ = [
    "CertificateAuthority", "ClientPublicKey", "IssuedCert", "PKIError", "RevokedSerials", "certificate_fingerprint",
    "fingerprint_der", "load_crl_serials", "serial_hex",
]

_SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
#: Public keys a client certificate may carry (the CSR path checks sizes and curves first).
ClientPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_SKEW = timedelta(minutes=5)  # back-date notBefore/lastUpdate so slightly slow clocks still accept
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DNS_RE = re.compile(r"[A-Za-z0-9*_.-]{1,253}")
# OWASP 2023 figure for PBKDF2-HMAC-SHA256; costs ~0.3 s once per export.
_P12_KDF_ROUNDS = 600_000
# OpenSSL's own `-legacy` default; old Keychain / Windows importers are known to accept it.
_P12_LEGACY_ROUNDS = 2048


class PKIError(Exception):
    """Key-manager failure with a message fit for the user (what, and how to fix)."""


@dataclass(frozen=True)
class IssuedCert:
    """One client certificate as seen by the inventory (``issued/``) and the CRL."""

    serial: str
    account: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    email: str | None
    status: str
    paths: dict[str, str] = field(default_factory=dict)


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a DER certificate as lower-case hex, the form used for pinning and logs."""
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(path: Path) -> str:
    """fingerprint_der of a PEM certificate file, to match a file on disk against the inventory."""
    return fingerprint_der(_cert_der(_read_cert(path)))


def serial_hex(serial: int) -> str:
    """The one text form of a certificate serial (a positive int of up to 20 octets, RFC 5280
    §4.1.2.2): upper-case hex, no ``0x``, no leading zeros (``0x0A`` is ``"A"``). It is the
    serial of a presented certificate (auth/identity.py), of the CRL's entries
    (:class:`RevokedSerials`), of the file in ``issued/`` and of the CLI: revocation compares
    these strings, so each of them comes from here."""
    return format(serial, "X")


class RevokedSerials(frozenset[str]):
    """The serials (`serial_hex`) a CRL revokes, and ``issuer``: the CRL issuer's name
    (RFC 4514), the only CA whose certificates they stand for. A certificate is named
    by issuer *and* serial (RFC 5280 §5.1.2.3, §4.1.2.2): another CA trusted in
    tls.client_ca may well have issued the same serial number."""

    issuer: str | None = None

    def __new__(cls, serials: Iterable[str], issuer: str | None) -> RevokedSerials:  # noqa: D102
        self = super().__new__(cls, serials)
        self.issuer = issuer
        return self

    def revokes(self, serial: str, issuer: str) -> bool:
        """Whether the certificate ``serial`` (upper-case hex) of ``issuer`` (RFC 4514) is revoked."""
        return serial in self and (self.issuer is None or issuer == self.issuer)


def load_crl_serials(path: Path) -> tuple[RevokedSerials, datetime | None]:
    """Revoked serials, with the CRL's issuer, and next_update of a CRL file, for the
    server's per-connection check."""
    crl = _read_crl_file(path)
    serials = RevokedSerials((serial_hex(r.serial_number) for r in crl), crl.issuer.rfc4514_string())
    return serials, crl.next_update_utc


def _utc(now: datetime | None) -> datetime:
    """Injected or current time as aware UTC in whole seconds (X.509 precision)."""
    now = datetime.now(UTC) if now is None else now
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now.replace(microsecond=0)


def _read_crl_file(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"CRL {path} is missing; recreate it with the key manager") from None
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read CRL {path}: {exc}; restore it from a backup") from None


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """files.write_atomic with this folder's defaults: public files 0644, folders 0700."""
    write_atomic(path, data, mode, folder_mode=0o700)


def _key_pem(key: _SigningKey) -> bytes:
    enc = serialization.NoEncryption()  # protected by file mode 0600 instead
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read certificate {path}: {exc}; issue a new one") from None


def _cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _p12_bytes(
    name: str, key: _SigningKey, cert: x509.Certificate, ca: x509.Certificate, password: bytes,
    legacy: bool,
) -> bytes:
    """PKCS#12 with key, leaf and CA; legacy SHA1/3DES is all old Keychain/Windows accept."""
    if not password:
        raise PKIError("the PKCS#12 password must not be empty; choose a password")
    pbe, mac, rounds = (
        (pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC, hashes.SHA1(), _P12_LEGACY_ROUNDS)  # noqa: S303
        if legacy
        else (pkcs12.PBES.PBESv2SHA256AndAES256CBC, hashes.SHA256(), _P12_KDF_ROUNDS)
    )
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(rounds).key_cert_algorithm(pbe).hmac_hash(mac).build(password)
    )
    return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, [ca], enc)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: _SigningKey | ClientPublicKey, not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Fields every certificate here shares: random serial, validity, SubjectKeyIdentifier.
    ``key``: the subject's key pair, or only its public key (a CSR's)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _san_entries(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    """Turn host names into SAN entries: IP literals as IP SANs, the rest as DNS SANs."""
    out: list[x509.GeneralName] = []
    for raw in hostnames:
        name = raw.strip()
        if not name:
            continue
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            if not _DNS_RE.fullmatch(name):
                raise PKIError(
                    f"invalid host name {raw!r}; use ASCII letters, digits, '-' and '.' "
                    "(convert international names to punycode)"
                ) from None
            entry = x509.DNSName(name.lower())
        if entry not in out:
            out.append(entry)
    return out


class CertificateAuthority:
    """File-backed CA rooted at ``certs_dir``; constructing it does not touch the disk."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = Path(certs_dir)

    @property
    def ca_cert_path(self) -> Path:
        """``ca.crt``: the CA certificate (PEM, EC P-256), what clients and ``tls.client_ca`` trust."""
        return self.certs_dir / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        """``ca.key``: the CA's private key (PEM, unencrypted, mode 0600)."""
        return self.certs_dir / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        """``server.crt``: the server certificate the CA issued (PEM), see issue_server_cert."""
        return self.certs_dir / "server.crt"

    @property
    def server_key_path(self) -> Path:
        """``server.key``: the server certificate's private key (PEM, unencrypted, mode 0600)."""
        return self.certs_dir / "server.key"

    @property
    def crl_path(self) -> Path:
        """``crl.pem``: the CA's certificate revocation list (PEM, RFC 5280 §5), see write_crl."""
        return self.certs_dir / "crl.pem"

    @property
    def issued_dir(self) -> Path:
        """``issued/``: a copy of every client certificate issued, ``<serial_hex>.crt`` (PEM),
        the inventory that ``cert list`` and revocation read."""
        return self.certs_dir / "issued"

    def exists(self) -> bool:
        """True when both halves of the CA are present."""
        return self.ca_cert_path.is_file() and self.ca_key_path.is_file()

    def create(
        self, *, common_name: str = "davserver CA", days: int = 3650, force: bool = False
    ) -> None:
        """Create a fresh CA; ``force`` replaces an existing one and forgets every issued cert."""
        if (self.ca_cert_path.exists() or self.ca_key_path.exists()) and not force:
            raise PKIError(
                f"a CA already exists in {self.certs_dir}; use --force to replace it "
                "(every issued certificate stops working)"
            )
        if not 1 <= days <= 36500:
            raise PKIError(f"CA lifetime must be 1..36500 days, got {days}")
        now = _utc(None)
        key = ec.generate_private_key(ec.SECP256R1())
        name = _cn(common_name)
        cert = (
            _builder(name, name, key, now - _SKEW, now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if force and self.issued_dir.is_dir():
            for old in self.issued_dir.glob("*.crt"):
                old.unlink()
        self.crl_path.unlink(missing_ok=True)  # the old CRL belongs to the old key
        _atomic_write(self.ca_key_path, _key_pem(key), 0o600)
        _atomic_write(self.ca_cert_path, _cert_pem(cert))
        self.issued_dir.mkdir(exist_ok=True, mode=0o700)
        self.write_crl()

    def _load_ca(self) -> tuple[x509.Certificate, _SigningKey]:
        if not self.exists():
            raise PKIError(
                f"no CA in {self.certs_dir} (ca.crt / ca.key missing); create the CA first"
            )
        try:
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
        except (OSError, ValueError, TypeError) as exc:
            raise PKIError(
                f"cannot read the CA in {self.certs_dir}: {exc}; restore ca.crt/ca.key from a "
                "backup or recreate the CA with --force"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise PKIError(f"{self.ca_key_path} must hold an EC or RSA key")
        if key.public_key() != cert.public_key():
            raise PKIError(f"{self.ca_key_path} does not match {self.ca_cert_path}")
        return cert, key

    @staticmethod
    def _leaf_builder(
        ca: x509.Certificate, ca_key: _SigningKey, subject: str, key: _SigningKey | ClientPublicKey,
        not_before: datetime, not_after: datetime,
    ) -> x509.CertificateBuilder:
        """Common part of server and client certificates; a leaf never outlives its CA."""
        not_after = min(not_after, ca.not_valid_after_utc)
        return (
            _builder(_cn(subject), ca.subject, key, not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )

    def issue_server_cert(self, hostnames: Sequence[str] = (), *, days: int = 397) -> None:
        """(Re)issue server.crt/.key; localhost names are always included so local tests work."""
        if not 1 <= days <= 3650:
            raise PKIError(f"days must be 1..3650, got {days}")
        ca, ca_key = self._load_ca()
        given = _san_entries(hostnames)
        sans = _san_entries(["localhost", "127.0.0.1", "::1"])
        sans += [e for e in given if e not in sans]
        first = next((h.strip() for h in hostnames if h.strip()), "localhost")
        now = _utc(None)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf_builder(ca, ca_key, first if len(first) <= 64 else "localhost", key,
                               now - _SKEW, now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_key_usage(), critical=True)  # EC key: no keyEncipherment
            .sign(ca_key, hashes.SHA256())
        )
        _atomic_write(self.server_key_path, _key_pem(key), 0o600)
        _atomic_write(self.server_cert_path, _cert_pem(cert))

    def sign_client(
        self, account: str, public_key: ClientPublicKey, *, days: int = 365, email: str | None = None,
        now: datetime | None = None,
    ) -> tuple[x509.Certificate, IssuedCert]:
        """Sign a client certificate for ``public_key`` and record it in issued/ (so it can be
        revoked); subject CN = account, EKU clientAuth, optional SAN e-mail: what ``cert issue``
        makes. Touches no key file: the caller holds the private key, or never sees it (a CSR).
        Raises PKIError for an invalid account name, days outside 1..3650 or a bad e-mail."""
        if not _ACCOUNT_RE.fullmatch(account):
            raise PKIError(
                f"invalid account name {account!r}: use 1-64 characters from A-Z a-z 0-9 . _ @ -, "
                "starting with a letter or digit"
            )
        if not 1 <= days <= 3650:
            raise PKIError(f"days must be 1..3650, got {days}")
        if email is not None and not (email.isascii() and _EMAIL_RE.fullmatch(email)):
            raise PKIError(f"invalid e-mail address {email!r}; use an ASCII address like a@b.org")
        ca, ca_key = self._load_ca()
        now = _utc(now)
        builder = (
            self._leaf_builder(ca, ca_key, account, public_key, now - _SKEW, now + timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_key_usage(), critical=True)
        )
        if email:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        # Inventory first: every certificate that leaves this class can later be revoked.
        _atomic_write(self.issued_dir / f"{serial_hex(cert.serial_number)}.crt", _cert_pem(cert))
        return cert, _describe(cert, "valid", {})

    def client_identity(
        self, account: str, *, days: int = 365, email: str | None = None, now: datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, IssuedCert]:
        """A fresh P-256 key and its signed, recorded client certificate (see sign_client); the
        key is returned only, never written."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert, issued = self.sign_client(account, key.public_key(), days=days, email=email, now=now)
        return key, cert, issued

    def client_p12(
        self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cert: x509.Certificate, password: bytes,
        *, legacy: bool = False,
    ) -> bytes:
        """PKCS#12 bytes with key, certificate and this CA (friendly name: the CN), as ``cert issue``
        writes them: AES-256-CBC/PBKDF2-SHA256 with a SHA-256 MAC, or with ``legacy`` 3DES for key
        and certificate bags and a SHA-1 MAC. Raises PKIError for an empty password."""
        ca, _ = self._load_ca()
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return _p12_bytes(str(cns[0].value) if cns else "", key, cert, ca, password, legacy)

    def get_issued(self, serial: str, *, now: datetime | None = None) -> IssuedCert:
        """The inventory entry of ``serial`` (hex, pasted in any usual form); PKIError when unknown."""
        wanted = _parse_serial(serial)
        for item in self.list_issued(now=now):
            if item.serial == wanted:
                return item
        raise PKIError(
            f"no issued certificate with serial {wanted}; see `davserver cert list` for serials"
        )

    def list_expiring(self, days: float, *, now: datetime | None = None) -> list[IssuedCert]:
        """Valid (not revoked, not yet expired) certificates whose notAfter falls within ``days``
        days of ``now``, soonest first."""
        now = _utc(now)
        limit = now + timedelta(days=days)
        items = [c for c in self.list_issued(now=now) if c.status == "valid" and c.not_after <= limit]
        return sorted(items, key=lambda c: (c.not_after, c.serial))

    def issue_client_cert(
        self, account: str, *, out_prefix: Path, p12_password: bytes, days: int = 365,
        email: str | None = None, legacy_p12: bool = False, now: datetime | None = None,
    ) -> IssuedCert:
        """Issue a client cert and export PREFIX.p12 / .crt / .key; record it in issued/."""
        if not p12_password:
            raise PKIError("the PKCS#12 password must not be empty; choose a password")
        ca, _ = self._load_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        cert, _issued = self.sign_client(account, key.public_key(), days=days, email=email, now=now)
        p12 = _p12_bytes(account, key, cert, ca, p12_password, legacy_p12)
        prefix = Path(out_prefix)
        paths = {e: str(prefix.with_name(f"{prefix.name}.{e}")) for e in ("p12", "crt", "key")}
        prefix.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(Path(paths["key"]), _key_pem(key), 0o600)
        _atomic_write(Path(paths["p12"]), p12, 0o600)
        _atomic_write(Path(paths["crt"]), _cert_pem(cert))
        return _describe(cert, "valid", paths)

    def export_p12(
        self, crt: Path, key: Path, p12: Path, password: bytes, *, legacy_p12: bool = False
    ) -> None:
        """Re-export an issued cert/key pair as PKCS#12 under a new password (no new cert)."""
        ca, _ = self._load_ca()
        cert = _read_cert(crt)
        try:
            private = serialization.load_pem_private_key(key.read_bytes(), None)
        except (OSError, ValueError, TypeError) as exc:
            raise PKIError(f"cannot read key {key}: {exc}; issue a new certificate") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or (
            private.public_key() != cert.public_key()
        ):
            raise PKIError(f"{key} does not belong to {crt}; issue a new certificate")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIError(f"{crt} was not issued by the CA in {self.certs_dir}") from None
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else ""
        _atomic_write(p12, _p12_bytes(name, private, cert, ca, password, legacy_p12), 0o600)

    def _read_revoked(self, ca_key: _SigningKey) -> tuple[dict[int, datetime], int]:
        """Revoked serials with dates and the CRL number of the current CRL (empty if none)."""
        if not self.crl_path.exists():
            return {}, 0
        crl = _read_crl_file(self.crl_path)
        if not crl.is_signature_valid(ca_key.public_key()):
            raise PKIError(
                f"{self.crl_path} is not signed by the CA in {self.certs_dir}; "
                "restore the matching crl.pem from a backup"
            )
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
        return {r.serial_number: r.revocation_date_utc for r in crl}, number

    def write_crl(self, *, now: datetime | None = None, next_update_days: int = 30) -> None:
        """Re-sign crl.pem keeping every revoked serial; the server refuses a stale CRL."""
        self._sign_crl(now, next_update_days, ())

    def _sign_crl(self, now: datetime | None, next_update_days: int, add: Iterable[int]) -> None:
        if not 1 <= next_update_days <= 3650:
            raise PKIError(f"next_update_days must be 1..3650, got {next_update_days}")
        ca, ca_key = self._load_ca()
        now = _utc(now)
        revoked, number = self._read_revoked(ca_key)
        for serial in add:
            revoked.setdefault(serial, now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now - _SKEW)
            .next_update(now + timedelta(days=next_update_days))
            .add_extension(x509.CRLNumber(number + 1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        for serial, when in sorted(revoked.items()):
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(ca_key, hashes.SHA256())
        _atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))

    def list_issued(self, *, now: datetime | None = None) -> list[IssuedCert]:
        """Every client cert in the inventory with its status, oldest first."""
        ca, ca_key = self._load_ca()
        now = _utc(now)
        revoked, _ = self._read_revoked(ca_key)
        out = []
        for path in sorted(self.issued_dir.glob("*.crt")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                raise PKIError(f"cannot parse {path}; remove or restore that file") from None
            status = "expired" if now > cert.not_valid_after_utc else "valid"
            status = "revoked" if cert.serial_number in revoked else status
            out.append(_describe(cert, status, {}))
        return sorted(out, key=lambda c: (c.not_before, c.serial))

    def revoke(self, serial: str, *, now: datetime | None = None) -> IssuedCert:
        """Revoke one issued cert by serial; revoking twice is harmless."""
        wanted = _parse_serial(serial)
        for item in self.list_issued(now=now):
            if item.serial == wanted:
                if item.status == "revoked":
                    return item
                self._sign_crl(now, 30, [int(wanted, 16)])
                return dataclasses.replace(item, status="revoked")
        raise PKIError(
            f"no issued certificate with serial {wanted}; see `davserver cert list` for serials"
        )

    def revoke_account(self, account: str, *, now: datetime | None = None) -> list[IssuedCert]:
        """Revoke every still-valid cert of an account in one CRL update; [] if there is none."""
        targets = [
            c for c in self.list_issued(now=now) if c.account == account and c.status == "valid"
        ]
        if targets:
            self._sign_crl(now, 30, [int(c.serial, 16) for c in targets])
        return [dataclasses.replace(c, status="revoked") for c in targets]


def _key_usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    """CA: keyCertSign + cRLSign only; leaves (EC keys): digitalSignature only."""
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _parse_serial(text: str) -> str:
    """Accept hex serials the way people paste them: any case, 0x prefix, colons or spaces,
    and leading zeros however many (a viewer may pad to its own width); at most 40 hex
    digits after those (RFC 5280 §4.1.2.2: 20 octets). Returns `serial_hex`'s text;
    raises PKIError for anything else."""
    cleaned = text.strip().replace(":", "").replace(" ", "")
    cleaned = cleaned[2:] if cleaned.lower().startswith("0x") else cleaned
    cleaned = cleaned.lstrip("0") or ("0" if cleaned else "")
    if not re.fullmatch(r"[0-9A-Fa-f]{1,40}", cleaned):
        raise PKIError(f"{text!r} is not a hex serial; see `davserver cert list` for serials")
    return serial_hex(int(cleaned, 16))


def _describe(cert: x509.Certificate, status: str, paths: dict[str, str]) -> IssuedCert:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    email = None
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = san.get_values_for_type(x509.RFC822Name)
        email = emails[0] if emails else None
    return IssuedCert(
        serial=serial_hex(cert.serial_number),
        account=str(cns[0].value) if cns else "",
        fingerprint=fingerprint_der(_cert_der(cert)),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        email=email,
        status=status,
        paths=paths,
    )

