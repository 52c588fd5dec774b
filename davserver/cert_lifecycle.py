"""No surprise expiry: the server re-issues its own certificate from the built-in CA
before it lapses, and warns about everything else that lapses.

On the day the CA, the server certificate or the CRL's signer expires, every client
is locked out. ``check_expiry`` (at start and once a day) logs one line per file that
lapses within ``tls.expiry_warning_days``, naming the file, the date (UTC) and the fix:
a warning before, an error once lapsed. ``reissue_server_certificate`` (the same
rounds) replaces a server certificate that the built-in CA (``certs/ca.crt``) issued
when fewer than ``tls.reissue_days`` are left, with the same names, and
server_certificate.py then serves the new pair without a restart. A certificate from
anyone else (an ACME client's) is never touched: its own client renews it.

Two nodes sharing the instance folder must not both re-issue (each writes the key,
then the certificate: interleaved, the pair on disk would not match). The one that
creates ``server.crt.reissue.lock`` (``os.link``: atomic, also on NFS) re-issues; the
other skips, and after taking the lock a node reads the certificate again, so one
that was just re-issued is left alone. A lock older than ``_STALE_LOCK`` (a crash) is
renamed away, and only the node whose rename moved the very lock it saw proceeds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from .config import Config
from .pki import CertificateAuthority, PKIError

__all__ = ["ExpiryNotice", "check_expiry", "reissue_server_certificate"]

log = logging.getLogger("davserver.lifecycle")

#: Lifetime of a re-issued server certificate: `davserver init`'s (pki.issue_server_cert),
#: within the 398 days browsers accept.
REISSUE_DAYS = 397
#: A re-issue lock older than this was left by a crash (a re-issue takes well under a second).
_STALE_LOCK = timedelta(minutes=10)
_DOC = "docs/certificates.md"


@dataclass(frozen=True)
class ExpiryNotice:
    """One file that lapses soon (``level`` logging.WARNING) or has lapsed (logging.ERROR)."""

    level: int
    setting: str
    path: Path
    subject: str
    not_after: datetime
    fix: str

    def message(self, now: datetime) -> str:
        """One line: the setting, file, subject, date (UTC) and fix."""
        when = self.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if self.level >= logging.ERROR:
            return f"{self.setting}: {self.path} ({self.subject}) expired on {when}: {self.fix}"
        days = (self.not_after - now).days
        return f"{self.setting}: {self.path} ({self.subject}) expires on {when}, in {days} days: {self.fix}"


def _utc(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


def _certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "no subject"


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _own_server_certificate(config: Config) -> tuple[CertificateAuthority, x509.Certificate] | None:
    """The built-in CA and the served certificate, when that certificate is the CA's own
    ``server.crt`` (same files as ``tls.certificate``/``tls.private_key``) and was signed
    by a CA in ``ca.crt`` (its first, current CA, or a previous one kept after it during
    a CA renewal: docs/certificates.md); None for any other (ACME, enterprise)."""
    ca = CertificateAuthority(config.home.certs_dir)
    tls = config.tls
    try:
        same = (tls.certificate.resolve() == ca.server_cert_path.resolve()
                and tls.private_key.resolve() == ca.server_key_path.resolve())
    except OSError:
        return None
    if not same or not ca.exists():
        return None
    leaf = _certificates(tls.certificate)
    roots = _certificates(ca.ca_cert_path)
    if not leaf or not any(_issued_by(leaf[0], root) for root in roots):
        return None
    return ca, leaf[0]


def check_expiry(config: Config, *, now: datetime | None = None, quiet: bool = False) -> list[ExpiryNotice]:
    """Log (and return) one notice per certificate that lapses within
    ``tls.expiry_warning_days`` (0: none): every CA in ``tls.client_ca`` and the
    built-in CA, the server certificate (``tls.certificate``, its leaf) and the CRL's
    signer (the CA in those files whose key signed ``tls.crl``). The CRL's own
    nextUpdate is watched by revocation.py ``keep_fresh`` (re-signed, or warned about).
    ``quiet``: return the notices without logging them (`davserver check` prints its own)."""
    now = _utc(now)
    days = config.tls.expiry_warning_days
    if days <= 0:
        return []
    horizon = now + timedelta(days=days)
    builtin = CertificateAuthority(config.home.certs_dir)
    notices: list[ExpiryNotice] = []
    seen: set[tuple[bytes, Path]] = set()

    def note(setting: str, path: Path, cert: x509.Certificate, fix: str) -> None:
        key = (cert.fingerprint(hashes.SHA256()), path.resolve())  # tls.client_ca is often the built-in CA
        if key in seen or cert.not_valid_after_utc > horizon:
            return
        seen.add(key)
        level = logging.ERROR if cert.not_valid_after_utc <= now else logging.WARNING
        notices.append(ExpiryNotice(level, setting, path, _name(cert), cert.not_valid_after_utc, fix))

    own = _own_server_certificate(config)
    server = _certificates(config.tls.certificate)
    if server:
        fix = (
            f"the server re-issues it from the built-in CA {config.tls.reissue_days} days before (tls.reissue_days); "
            f"see {_DOC}" if own is not None and config.tls.reissue_days > 0
            else f"renew it (e.g. `certbot renew`); the server picks up the new pair without a restart ({_DOC})"
        )
        note("tls.certificate", config.tls.certificate, server[0], fix)
    cas: list[tuple[str, Path, x509.Certificate]] = []
    cas += [("tls.client_ca", config.tls.client_ca, c) for c in _certificates(config.tls.client_ca)]
    if builtin.ca_cert_path.is_file():
        cas += [("the built-in CA", builtin.ca_cert_path, c) for c in _certificates(builtin.ca_cert_path)[:1]]
    if config.tls.crl is not None:
        with contextlib.suppress(OSError, ValueError):
            crl = x509.load_pem_x509_crl(config.tls.crl.read_bytes())
            for _, path, ca in cas:
                if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                    note("tls.crl", config.tls.crl, ca,
                         f"the CRL's signer {path} must be renewed before then: see {_DOC}#renewing-the-ca")
    for setting, path, ca in cas:
        note(setting, path, ca, f"renew the CA before then: see {_DOC}#renewing-the-ca")
    for n in notices if not quiet else ():
        log.log(n.level, "%s", n.message(now))
    return notices


def _lock(path: Path) -> bool:
    """Create the lock file `path` (compare-and-create: ``os.link`` of a unique temp
    file fails when it exists). Take over a stale one (by the wall clock) only by
    renaming the very inode seen as stale. True when this process holds the lock."""
    now = datetime.now(UTC)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    tmp.write_text(f"{socket.gethostname()} {os.getpid()} {now.isoformat()}\n")
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                pass
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if now - datetime.fromtimestamp(st.st_mtime, UTC) < _STALE_LOCK:
                return False
            aside = path.with_name(f".{path.name}.stale-{secrets.token_hex(6)}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = os.stat(aside).st_ino == st.st_ino
            aside.unlink()
            if not moved:
                return False  # another node had just taken it over: it holds the lock
            log.warning("removed a stale re-issue lock %s", path)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _server_names(cert: x509.Certificate) -> list[str]:
    """The names to re-issue with: the common name first (pki makes it the CN), then
    every DNS and IP name of the SAN, in order."""
    names: list[str] = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)][:1]
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for entry in san:
            if isinstance(entry, x509.DNSName | x509.IPAddress):
                names.append(str(entry.value))
    return list(dict.fromkeys(names))


def reissue_server_certificate(config: Config, *, now: datetime | None = None) -> str:
    """Re-issue the server certificate from the built-in CA when fewer than
    ``tls.reissue_days`` are left, with the same common name and SAN names, for
    ``REISSUE_DAYS``; the reload (server_certificate.py) then serves it.

    Returns what was done: "off" (tls.reissue_days 0), "foreign" (not the built-in
    CA's own ``server.crt``, or not signed by it: never touched), "fresh", "ca-lapses"
    (a new certificate could not outlive the current one, as none outlives its CA:
    logged, the CA must be renewed), "busy" (another node holds the lock), "reissued"
    or "failed" (logged; tried again at the next daily round).
    """
    now = _utc(now)
    if config.tls.reissue_days <= 0:
        return "off"
    own = _own_server_certificate(config)
    if own is None:
        return "foreign"
    ca, cert = own
    if cert.not_valid_after_utc - now > timedelta(days=config.tls.reissue_days):
        return "fresh"
    current = _certificates(ca.ca_cert_path)[0]
    if current.not_valid_after_utc <= cert.not_valid_after_utc:
        log.error(
            "tls.certificate: %s cannot be re-issued to last longer: the CA %s expires on %s; "
            "renew the CA first: see %s#renewing-the-ca", ca.server_cert_path, ca.ca_cert_path,
            current.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"), _DOC,
        )
        return "ca-lapses"
    lock = ca.server_cert_path.with_name(ca.server_cert_path.name + ".reissue.lock")
    try:
        if not _lock(lock):
            return "busy"
    except OSError as exc:
        log.error("tls.certificate: cannot re-issue %s: cannot create %s (%s)", ca.server_cert_path, lock, exc)
        return "failed"
    try:
        again = _own_server_certificate(config)  # another node may have just re-issued it
        if again is None or again[1].not_valid_after_utc - now > timedelta(days=config.tls.reissue_days):
            return "fresh"
        names = _server_names(again[1])
        ca.issue_server_cert(names, days=REISSUE_DAYS)
    except (PKIError, OSError) as exc:
        log.error("tls.certificate: could not re-issue %s from the built-in CA: %s", ca.server_cert_path, exc)
        return "failed"
    finally:
        lock.unlink(missing_ok=True)
    log.warning(
        "tls.certificate: re-issued %s from the built-in CA (it was to expire on %s) for %s, names %s",
        ca.server_cert_path, cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
        f"{REISSUE_DAYS} days", ", ".join(names),
    )
    return "reissued"
