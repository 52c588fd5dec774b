"""Certificates handed to users: by an enrolment link, by renewal, or by ``davserver cert sign``.

Every certificate made here is the one ``davserver cert issue`` makes for the account (the CA's
``sign_client``: CN = account, EKU clientAuth, recorded in ``issued/``) and is bound to the account
the same way (``instance.bind_certificate``). Two ways in:

- a PKCS#12 password: a fresh P-256 key is made, and lives only inside the returned PKCS#12
  bytes and Apple profile; nothing here writes it anywhere;
- a CSR (PEM, PKCS#10) for a key that stays on a smartcard, TPM or token: its self-signature
  is checked, its key must be RSA >= 2048 bits, EC P-256/P-384/P-521 or Ed25519, and everything
  else it asks for (subject, extensions) is ignored.
"""

from __future__ import annotations

import contextlib
import plistlib
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import instance
from .accounts import load_accounts
from .config import ConfigError, Home, load_config
from .pki import CertificateAuthority, ClientPublicKey, IssuedCert, PKIError
from .settings_schema import setting

__all__ = [
    "Delivery", "IssuanceError", "MAX_CSR_BYTES", "MIN_RSA_BITS", "check_csr", "csr_limit", "deliver", "mobileconfig",
    "renew",
]

#: Smallest RSA modulus accepted in a CSR (NIST SP 800-131A: 2048 bits since 2014).
MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
#: Default of ``enrolment.csr_bytes``: largest CSR accepted, in bytes (an RSA-16384 CSR in
#: PEM is ~5 KB).
MAX_CSR_BYTES: int = setting("enrolment.csr_bytes").default
DEFAULT_DAYS = 365  # `davserver cert issue --days` default


class IssuanceError(ValueError):
    """A request that cannot be served as asked: a CSR that does not parse, has a bad signature
    or a weak key; no account of that name; a revoked certificate to renew. Says why."""


@dataclass(frozen=True)
class Delivery:
    """What a user receives. ``issued`` is already recorded and bound to the account.

    ``p12``/``legacy_p12``/``mobileconfig`` are None when a CSR was signed (the key is the user's).
    """

    issued: IssuedCert
    certificate_pem: bytes
    ca_pem: bytes
    p12: bytes | None  # AES-256-CBC, PBKDF2-SHA256, SHA-256 MAC
    legacy_p12: bytes | None  # 3DES bags, SHA-1 MAC: older macOS/Windows, Android <= 13
    mobileconfig: bytes | None  # Apple configuration profile (unsigned): identity + CA


def csr_limit(home: Home) -> int:
    """``enrolment.csr_bytes`` of the instance at `home`; :data:`MAX_CSR_BYTES` when its
    configuration cannot be read."""
    try:
        return load_config(home).enrolment.csr_bytes
    except ConfigError:
        return MAX_CSR_BYTES


def check_csr(csr_pem: bytes, *, max_bytes: int = MAX_CSR_BYTES) -> ClientPublicKey:
    """The public key of a PEM CSR of at most `max_bytes` bytes (``enrolment.csr_bytes``)
    whose self-signature holds and whose key is strong enough.

    Raises IssuanceError naming the fault: too large, not a CSR, a signature that does not
    verify, RSA under MIN_RSA_BITS, an EC curve other than P-256/384/521, or another key type.
    """
    if len(csr_pem) > max_bytes:
        raise IssuanceError(
            f"the CSR is larger than {max_bytes} bytes (enrolment.csr_bytes); make a smaller one "
            "(no extra attributes) or ask the administrator to raise enrolment.csr_bytes"
        )
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise IssuanceError(
            "not a PEM certificate signing request (expected -----BEGIN CERTIFICATE REQUEST-----, "
            "e.g. from `openssl req -new`)"
        ) from None
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise IssuanceError(f"the CSR's public key cannot be read: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise IssuanceError(f"the CSR's RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise IssuanceError(f"the CSR's EC key is on {key.curve.name}; use P-256, P-384 or P-521")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise IssuanceError(f"the CSR's key type ({type(key).__name__}) is not accepted; use RSA, EC or Ed25519")
    try:
        valid = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - an unsupported signature algorithm is a refusal like any other
        valid = False
    if not valid:
        raise IssuanceError("the CSR's signature does not verify: it was altered or signed with another key")
    return key


def mobileconfig(*, p12: bytes, p12_password: str | None, ca_der: bytes, account: str, server_name: str) -> bytes:
    """An Apple configuration profile (XML plist) that installs the identity and the CA in one
    step on iOS, iPadOS and macOS: a ``com.apple.security.pkcs12`` payload with the PKCS#12
    bytes and a ``com.apple.security.root`` payload with the CA in DER.

    The profile is **unsigned**: the device shows it as "Unverified" (signing it would need a
    code-signing certificate the device already trusts). ``p12_password``, when given, is
    embedded so the import asks for nothing; None makes the device ask for it. PayloadUUIDs
    are fresh random UUIDs; PayloadIdentifiers are under the reverse-DNS of ``server_name``.
    """
    labels = [part for part in server_name.strip("[]").replace(":", ".").split(".") if part]
    base = ".".join(reversed(labels)) if labels else "localhost"
    base = f"{base}.davserver.{account}"
    identity: dict[str, object] = {
        "PayloadType": "com.apple.security.pkcs12",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.identity",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"{account} (davserver client certificate)",
        "PayloadContent": p12,
        "PayloadCertificateFileName": f"{account}.p12",
    }
    if p12_password is not None:
        identity["Password"] = p12_password
    root = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.ca",
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": "davserver CA",
        "PayloadContent": ca_der,
        "PayloadCertificateFileName": "ca.crt",
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": base,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": f"{server_name}: {account}",
        "PayloadDescription": f"Client certificate of {account} for {server_name}, and the CA that issued it.",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [identity, root],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def _server_name(home: Home) -> str:
    """Host of the enrolment URL (enrolment.url, else the server certificate's name)."""
    from urllib.parse import urlsplit

    from .invitations import InvitationError, default_base_url

    try:
        return urlsplit(default_base_url(load_config(home))).hostname or "localhost"
    except (InvitationError, ConfigError):
        return "localhost"


def _bind_or_forget(home: Home, ca: CertificateAuthority, issued: IssuedCert) -> None:
    """Bind `issued` to its account; when that fails (the accounts file or its lock cannot be
    written, the disk is full) remove its inventory record and re-raise: the certificate
    never left this process, so a failed issuance leaves no trace and can simply be retried."""
    try:
        instance.bind_certificate(home, issued)
    except BaseException:
        with contextlib.suppress(OSError):
            (ca.issued_dir / f"{issued.serial}.crt").unlink()
        raise


def _issue(home: Home, account: str, *, email: str | None, p12_password: str | None,
           csr_pem: bytes | None, days: int) -> Delivery:
    if (p12_password is None) == (csr_pem is None):
        raise IssuanceError("give either a PKCS#12 password or a CSR, one of the two")
    if account not in load_accounts(home.accounts_file):
        raise IssuanceError(f"no account {account!r}: create it first with `davserver user add {account}`")
    ca = CertificateAuthority(home.certs_dir)
    ca_pem = ca.ca_cert_path.read_bytes() if ca.exists() else b""
    p12 = legacy = profile = None
    if csr_pem is not None:
        public = check_csr(csr_pem, max_bytes=csr_limit(home))
        cert, issued = ca.sign_client(account, public, days=days, email=email)
        _bind_or_forget(home, ca, issued)
    else:
        assert p12_password is not None
        if not p12_password:
            raise PKIError("the PKCS#12 password must not be empty; choose a password")
        key, cert, issued = ca.client_identity(account, days=days, email=email)
        _bind_or_forget(home, ca, issued)
        secret = p12_password.encode("utf-8")
        p12 = ca.client_p12(key, cert, secret)
        legacy = ca.client_p12(key, cert, secret, legacy=True)
        ca_der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
        # the legacy file: iOS/macOS profile installers accept it on every version; the password
        # is not embedded, so a leaked profile is no more than a leaked .p12
        profile = mobileconfig(p12=legacy, p12_password=None, ca_der=ca_der, account=account,
                               server_name=_server_name(home))
        del key
    return Delivery(issued=issued, certificate_pem=cert.public_bytes(serialization.Encoding.PEM), ca_pem=ca_pem,
                    p12=p12, legacy_p12=legacy, mobileconfig=profile)


def deliver(home: Home, account: str, *, p12_password: str | None = None, csr_pem: bytes | None = None,
            days: int = DEFAULT_DAYS) -> Delivery:
    """Issue and bind a certificate for ``account``, as ``davserver cert issue ACCOUNT`` would.

    Exactly one of ``p12_password`` (a fresh key, returned only inside the PKCS#12 files and
    the profile) or ``csr_pem`` (sign the CSR's key). Raises IssuanceError (bad CSR, unknown
    account, neither or both given) or PKIError (the CA cannot be read, empty password).
    """
    return _issue(home, account, email=None, p12_password=p12_password, csr_pem=csr_pem, days=days)


def renew(home: Home, serial: str, *, p12_password: str | None = None, csr_pem: bytes | None = None,
          days: int = DEFAULT_DAYS) -> Delivery:
    """A new certificate for the account of certificate ``serial``, with the same e-mail SAN,
    bound beside the old one (which stays valid until it expires or is revoked).

    Raises IssuanceError for a revoked certificate, PKIError for an unknown serial, and what
    deliver() raises.
    """
    old = CertificateAuthority(home.certs_dir).get_issued(serial)
    if old.status == "revoked":
        raise IssuanceError(f"certificate {old.serial} is revoked; issue a new one with `davserver cert issue`")
    return _issue(home, old.account, email=old.email, p12_password=p12_password, csr_pem=csr_pem, days=days)

