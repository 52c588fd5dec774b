"""Which CA issued a client certificate, and which certificates may be trust anchors.

With ``tls.client_ca`` holding a company root, every sub-CA under it is trusted: a
partner's sub-CA can issue ``CN=eve`` as easily as the user CA. A subject rule
therefore names the CA whose certificates it maps (``identity.subject_rules``:
``{issuer: PATH, match: cn|san_email}``), and "issued by" is decided on that CA's
key, not on a distinguished name that any CA can copy into its own certificate.

Python 3.11's ``SSLSocket`` does not expose the verified chain
(``get_verified_chain`` arrived in 3.13), and the chain a client sends is not the
one OpenSSL built. None is needed: the handshake has already verified the leaf
up to a trust anchor, so if the leaf's signature verifies under the configured
CA's public key (and its issuer name is that CA's subject, as RFC 5280 §6.1.3
(a)(4) requires of a path), that key issued it. A renewed CA certificate with the
same key and name keeps matching; a re-keyed CA needs its new certificate.

``tls.client_ca`` may hold a sub-CA alone (tls.py sets OpenSSL's
X509_V_FLAG_PARTIAL_CHAIN), which makes *every* certificate in that file an
anchor. `check_trust_anchors` keeps end-entity certificates out of it, so a
leaf can never vouch for itself or for a certificate its key signed (OpenSSL
also refuses a CA:FALSE issuer: ``check_chain_extensions`` in
``crypto/x509/x509_vfy.c``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..config import SubjectRule
from ..errors import StartupError
from .identity import CertIdentity

__all__ = ["IssuingCA", "SubjectRules", "check_trust_anchors", "is_ca_certificate"]

log = logging.getLogger("davserver.auth")

#: Certificates whose issuer check is remembered (by DER); each check is one signature verification.
_CACHE_SIZE = 1024


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """True for a certificate that may sign others: basicConstraints CA:TRUE and, when
    keyUsage is present, keyCertSign (RFC 5280 §4.2.1.9, §4.2.1.3). A version 1
    self-signed certificate (no extensions at all) counts as a CA, as OpenSSL's
    ``check_ca`` treats such old roots; any other certificate without
    basicConstraints does not."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1 and cert.issuer == cert.subject


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def check_trust_anchors(path: Path) -> int:
    """Refuse a ``tls.client_ca`` bundle (PEM) that holds an end-entity certificate.

    With partial-chain verification every certificate in the bundle is a trust
    anchor; a CA:FALSE certificate there would admit itself without any CA having
    vouched for it. Returns how many certificates the bundle holds; raises
    `StartupError` naming the key, the file and the offending subject.
    """
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise StartupError(f"tls.client_ca: {path} holds no usable CA certificate ({exc})") from None
    for cert in certs:
        if not is_ca_certificate(cert):
            raise StartupError(
                f"tls.client_ca: {path} holds {_describe(cert)}, which is not a CA certificate "
                "(basicConstraints CA:TRUE with keyCertSign): every certificate in this file is a trust "
                "anchor, so remove it and list only the CAs whose certificates may connect"
            )
    return len(certs)


@dataclass(frozen=True)
class IssuingCA:
    """A CA certificate named by a subject rule: the issuer a client certificate must have."""

    path: Path
    cert: x509.Certificate
    #: subjectKeyIdentifier, when the CA certificate has one.
    key_id: bytes | None

    @classmethod
    def load(cls, path: Path, key: str) -> IssuingCA:
        """Read one CA certificate (PEM or DER) from ``path``. Raises `StartupError`
        naming ``key`` when the file is missing, holds no or several certificates, or
        holds a certificate that is not a CA."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StartupError(f"{key}: cannot read the CA certificate {path} ({exc.strerror})") from None
        try:
            certs = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [
                x509.load_der_x509_certificate(data)
            ]
        except ValueError as exc:
            raise StartupError(f"{key}: {path} holds no certificate in PEM or DER ({exc})") from None
        if len(certs) != 1:
            raise StartupError(f"{key}: {path} holds {len(certs)} certificates; name one CA certificate per rule")
        cert = certs[0]
        if not is_ca_certificate(cert):
            raise StartupError(
                f"{key}: {path} ({_describe(cert)}) is not a CA certificate: an end-entity certificate issues "
                "nothing, name the CA that signed the client certificates"
            )
        try:
            key_id: bytes | None = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            key_id = None
        return cls(path, cert, key_id)

    def issued(self, leaf: x509.Certificate) -> bool:
        """True when this CA's key signed ``leaf`` and the leaf names this CA's subject as
        its issuer (and, when both carry one, its authorityKeyIdentifier is this CA's
        subjectKeyIdentifier, as OpenSSL requires when it builds the path)."""
        if leaf.issuer != self.cert.subject:
            return False
        if self.key_id is not None:
            try:
                aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            except x509.ExtensionNotFound:
                aki = None
            if aki is not None and aki != self.key_id:
                return False
        try:
            leaf.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


class SubjectRules:
    """``identity.subject_rules``, loaded: names a client certificate offers for an account.

    Built once at start; raises `StartupError` for a rule whose issuer file is not one
    readable CA certificate. Thread-safe (the cache is ``functools.lru_cache``).
    """

    def __init__(self, rules: Sequence[SubjectRule]) -> None:
        self.rules = tuple(rules)
        self.issuers = tuple(
            None if rule.issuer is None else IssuingCA.load(rule.issuer, f"identity.subject_rules[{n}].issuer")
            for n, rule in enumerate(self.rules)
        )
        self._issued_by = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute_issued_by)
        for n, rule in enumerate(self.rules):
            if rule.issuer is None:
                log.warning("identity.subject_rules[%d] (%s) names no issuing CA: a certificate from any CA that "
                            "tls.client_ca trusts maps by its %s, including a partner sub-CA under a trusted root; "
                            "write {issuer: certs/users-ca.crt, match: %s} or put only the user sub-CA in "
                            "tls.client_ca", n, rule.match, rule.match, rule.match)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _compute_issued_by(self, der: bytes) -> tuple[bool, ...]:
        leaf = x509.load_der_x509_certificate(der)
        try:
            if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                # A CA certificate presented as a client certificate is nobody's account.
                return tuple(False for _ in self.issuers)
        except x509.ExtensionNotFound:
            pass
        # No issuer (the plain form): any CA the handshake trusted.
        return tuple(ca is None or ca.issued(leaf) for ca in self.issuers)

    def names(self, cert: CertIdentity) -> Iterator[str]:
        """Candidate account names for ``cert``, rule by rule in the configured order: its
        common name (``match: cn``) or its SAN e-mail addresses (``match: san_email``),
        only from the rules whose issuing CA signed it. Nothing for a certificate
        without its DER (``cert.der``) or one that is itself a CA."""
        if not self.rules or not cert.der:
            return
        for rule, issued in zip(self.rules, self._issued_by(cert.der), strict=True):
            if not issued:
                continue
            if rule.match == "cn":
                if cert.common_name:
                    yield cert.common_name
            else:
                yield from cert.emails
