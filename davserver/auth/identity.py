"""What a client certificate says about its holder, parsed once per connection."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ..pki import serial_hex

__all__ = ["CertIdentity", "parse_certificate"]

#: Microsoft's User Principal Name, carried as an otherName in the SAN.
_UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@dataclass(frozen=True)
class CertIdentity:
    """The facts of one client certificate the auth core decides on: fingerprint, serial
    (upper-case hex, the form CRL serials are compared in), subject and issuer names
    (RFC 4514 strings), common name, SAN e-mails, UPNs and URIs, validity (aware
    datetimes, UTC) and whether its EKU allows TLS client authentication (RFC 5280
    §4.2.1.12). Immutable; built by parse_certificate."""

    fingerprint: str  # SHA-256 of the DER, lower-case hex
    serial: str  # upper-case hex, pki.serial_hex (the CRL's and issued/'s form)
    subject: str  # RFC 4514
    issuer: str
    common_name: str | None
    emails: tuple[str, ...]
    upns: tuple[str, ...]
    uris: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    client_auth: bool  # EKU allows TLS client authentication
    #: The certificate as presented (DER), for checks that need more than these facts
    #: (auth/issuers.py: which CA's key signed it).
    der: bytes = field(default=b"", repr=False, compare=False)

    def is_current(self, now: datetime) -> bool:
        """Whether ``now`` (an aware datetime) lies within notBefore..notAfter, both ends included
        (RFC 5280 §4.1.2.5)."""
        return self.not_before <= now <= self.not_after


def _upn(value: bytes) -> str | None:
    """Decode the UTF8String inside an otherName value (DER: tag 0x0c, short length)."""
    if len(value) >= 2 and value[0] == 0x0C and value[1] < 0x80:
        try:
            return value[2 : 2 + value[1]].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


@functools.lru_cache(maxsize=1024)
def parse_certificate(der: bytes) -> CertIdentity:
    """The facts of a DER certificate; cached by its exact bytes (the result is
    immutable), because every new connection of a client presents the same one."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    emails: list[str] = []
    upns: list[str] = []
    uris: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = list(san.get_values_for_type(x509.RFC822Name))
        uris = list(san.get_values_for_type(x509.UniformResourceIdentifier))
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id == _UPN_OID and (upn := _upn(other.value)):
                upns.append(upn)
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    except x509.ExtensionNotFound:
        client_auth = True  # no EKU means no restriction (RFC 5280 §4.2.1.12)
    cn = cns[0].value if cns else None
    return CertIdentity(
        fingerprint=hashlib.sha256(der).hexdigest(),
        serial=serial_hex(cert.serial_number),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=cn if isinstance(cn, str) else None,
        emails=tuple(emails),
        upns=tuple(upns),
        uris=tuple(uris),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        client_auth=client_auth,
        der=der,
    )
