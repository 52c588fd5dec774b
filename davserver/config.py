"""The admin's declared configuration: typed, frozen, validated once at load.

Every error names the key, the value found and how to fix it, because the
person reading it is an admin with the YAML file open, not a developer.
No sockets and no framework imports here: this module is shared by the CLI,
the server and the auth core.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from davserver.settings_schema import SECTIONS, keys_of
from davserver.settings_schema import setting as _schema

__all__ = [
    "AuditConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "EnrolmentConfig",
    "Home",
    "IdentityConfig",
    "LimitsConfig",
    "LocksConfig",
    "PropertiesConfig",
    "ServerConfig",
    "ShareConfig",
    "StateConfig",
    "SubjectRule",
    "TLSConfig",
    "TOTPConfig",
    "ThrottleConfig",
    "FACTORS",
    "SHARE_NAME_RE",
    "is_macos_clutter",
    "load_config",
    "parse_config",
]

#: Lower-case only: WsgiDAV routes shares case-insensitively, so a mixed-case
#: name would be reachable under spellings our access checks never see.
SHARE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Factors a share can require beyond the client certificate.
FACTORS = ("password", "totp")
_PRINCIPAL_RE = re.compile(r"^(\*|@?[A-Za-z0-9][A-Za-z0-9._@-]{0,63})$")
_SUBJECT_RULES = ("cn", "san_email")


def _default(key: str) -> Any:
    """The schema's default of the dotted ``key`` (settings_schema.py): the one place a
    default is written, for the loader and for a section built without a config."""
    return _schema(key).default


class ConfigError(Exception):
    """A configuration value is wrong: says where, what, and how to fix it."""

    def __init__(self, key: str, message: str, hint: str = "", *, source: str = "") -> None:
        self.key = key
        self.message = message
        self.hint = hint
        self.source = source
        text = f"{key}: {message}" if key else message
        if hint:
            text += f" ({hint})"
        if source:
            text = f"{source}: {text}"
        super().__init__(text)


@dataclass(frozen=True)
class Home:
    """The one folder an instance lives in; every relative path is resolved against it."""

    root: Path

    @property
    def config_file(self) -> Path:
        """The server settings, ``<home>/config/davserver.yaml`` (parse_config reads it)."""
        return self.root / "config" / "davserver.yaml"

    @property
    def accounts_file(self) -> Path:
        """The accounts and their bound certificates, ``<home>/config/accounts.yaml`` (accounts.py)."""
        return self.root / "config" / "accounts.yaml"

    @property
    def certs_dir(self) -> Path:
        """The built-in CA's folder, ``<home>/certs``: CA and server key pairs, the CRL, issued certificates."""
        return self.root / "certs"

    @property
    def state_dir(self) -> Path:
        """Runtime state, ``<home>/state`` (mode 0700): by default the SQLite store and the audit log."""
        return self.root / "state"

    @property
    def data_dir(self) -> Path:
        """``<home>/data``, where the shipped configuration keeps its share folders (``data/files``)."""
        return self.root / "data"

    def resolve(self, value: str | Path) -> Path:
        """``value`` as an absolute path: ``~`` expanded, a relative path taken under the home
        (not the working directory, so a service and the CLI agree). Nothing is checked on disk."""
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else self.root / path


@dataclass(frozen=True)
class ServerConfig:
    """The ``server:`` section: the WebDAV listener (address, TCP port), request threads and
    worker processes, timeouts (seconds), handshake caps and the PROXY protocol.

    ``timeout`` is the seconds a connection may idle or take for one read, ``shutdown_timeout``
    the seconds in-flight requests get on SIGTERM, ``keep_alive_limit`` the idle keep-alive
    connections kept open (past it each response closes its connection), ``threads`` the
    requests served at once per worker."""

    bind: str = _default("server.bind")
    port: int = _default("server.port")
    threads: int = _default("server.threads")
    #: Worker processes: a whole number >= 1, or "auto" (supervisor.py ``worker_count``).
    workers: int | str = _default("server.workers")
    #: Seconds a worker may send no heartbeat before the supervisor kills and replaces it.
    worker_heartbeat_seconds: int = _default("server.worker_heartbeat_seconds")
    timeout: float = _default("server.timeout")
    keep_alive_limit: int = _default("server.keep_alive_limit")
    shutdown_timeout: float = _default("server.shutdown_timeout")
    #: TLS handshakes in progress from one address; a new one closes that address's oldest (handshake.py).
    handshakes_per_address: int = _default("server.handshakes_per_address")
    #: TLS handshakes in progress in all; a new one closes the oldest of the busiest address.
    handshakes_total: int = _default("server.handshakes_total")
    #: Connections the kernel holds for accept(); a burst beyond it loses SYNs (1 s retry).
    listen_backlog: int = _default("server.listen_backlog")
    #: PROXY header expected from a balancer in front: "off", "v1" or "v2" (proxy_protocol.py).
    proxy_protocol: str = _default("server.proxy_protocol")
    #: Addresses/networks (checked text) that must, and alone may, send the PROXY header.
    trusted_proxies: tuple[str, ...] = _default("server.trusted_proxies")
    #: Largest PROXY v2 header, TLVs included (bytes); v1 lines are at most 107 by the format.
    proxy_header_bytes: int = _default("server.proxy_header_bytes")


@dataclass(frozen=True)
class LimitsConfig:
    """The ``limits:`` section: sizes (bytes) and times (seconds) a request must keep to.

    ``xml_body_bytes`` is the largest XML request body (PROPFIND, PROPPATCH, LOCK; larger: 413
    unread), ``header_bytes`` the largest request line plus headers, ``body_grace_seconds`` the
    time before ``body_min_bytes_per_second`` is enforced (limits.py, guard.py)."""

    xml_body_bytes: int = _default("limits.xml_body_bytes")
    header_bytes: int = _default("limits.header_bytes")
    #: The request headers must arrive within this once a worker serves the connection.
    header_seconds: float = _default("limits.header_seconds")
    #: Connections of one client certificate that may wait on workers for their request
    #: headers at once; a new one at the cap closes the oldest (handshake.HeaderPhase).
    header_phase_per_certificate: int = _default("limits.header_phase_per_certificate")
    #: The TLS handshake must complete within this after the connection is accepted.
    handshake_seconds: float = _default("limits.handshake_seconds")
    #: A request body must average at least this rate once the grace time is over.
    body_min_bytes_per_second: int = _default("limits.body_min_bytes_per_second")
    body_grace_seconds: float = _default("limits.body_grace_seconds")
    #: Levels below a share root where anything may be created, and the deepest tree
    #: COPY, MOVE and DELETE walk (fs.py). At most 400: WsgiDAV's walk and shutil's
    #: copytree (a MOVE across filesystems) take up to two frames per level, and
    #: Python allows 1,000.
    max_tree_depth: int = _default("limits.max_tree_depth")
    #: After an answer given before the request body was read, what the client still
    #: sends is read and dropped in the background (http1.py), up to this many bytes ...
    linger_bytes: int = _default("limits.linger_bytes")
    #: ... and this many seconds, for at most this many connections at a time (0: close at once).
    linger_seconds: float = _default("limits.linger_seconds")
    linger_connections: int = _default("limits.linger_connections")


@dataclass(frozen=True)
class TLSConfig:
    """The ``tls:`` section: the server's certificate chain and key, the CA file client
    certificates must chain to and the CRL (absolute paths, resolved against the home; ``crl``
    None: no revocation list), ``min_version`` ``"1.2"`` or ``"1.3"``, reload and renewal
    times (seconds, days) and the CA-names and session-ticket bounds (tls.py)."""

    certificate: Path
    private_key: Path
    client_ca: Path
    crl: Path | None
    min_version: str = _default("tls.min_version")
    #: Seconds between checks of the certificate, key and client CA files for changes
    #: (server_certificate.py: served without a restart).
    reload_seconds: float = _default("tls.reload_seconds")
    #: The built-in CA re-issues its own server certificate this many days before it expires.
    reissue_days: int = _default("tls.reissue_days")
    #: Days ahead that the CA, the server certificate and the CRL are warned about.
    expiry_warning_days: int = _default("tls.expiry_warning_days")
    #: Bytes the CA names may take in the certificate request; over it none are sent
    #: (tls_ca_names.py: Java refuses handshake messages over 32 KiB).
    max_ca_names_bytes: int = _default("tls.max_ca_names_bytes")
    #: Seconds each set of shared TLS session-ticket keys serves (tls_tickets.py).
    session_ticket_seconds: int = _default("tls.session_ticket_seconds")


@dataclass(frozen=True)
class SubjectRule:
    """One ``identity.subject_rules`` entry: a certificate whose issuing CA is the one
    in the file ``issuer`` (an absolute path; the YAML value is relative to the
    instance home) maps to the account its ``match`` field names: ``"cn"`` (the
    subject's common name) or ``"san_email"`` (an e-mail address in the SAN).
    auth/issuers.py loads the file and decides "issued by" on the CA's key.

    ``issuer`` is None for the plain form (``[cn]``): any CA that ``tls.client_ca``
    trusts, the broad reading that form always had (logged as a warning at start)."""

    issuer: Path | None
    match: str


@dataclass(frozen=True)
class IdentityConfig:
    """How a certificate maps to an account.

    Certificates our CA issued are bound by fingerprint in the accounts file.
    ``subject_rules`` lets an enterprise CA's certificates map by CN or SAN
    email instead, each rule for the certificates of one named issuing CA;
    they are tried in order after the fingerprint binding.
    """

    subject_rules: tuple[SubjectRule, ...] = ()


@dataclass(frozen=True)
class AuthConfig:
    """The ``auth:`` section: how long a verified (account, certificate, password) is
    remembered after its last use (``credential_cache_seconds``, seconds; 0: off), Basic user
    names with a domain, and the lifetime of browser CSRF tokens (auth/core.py, csrf.py)."""

    credential_cache_seconds: float = _default("auth.credential_cache_seconds")
    #: However busy the client, a verified password is checked again after this long.
    credential_cache_max_seconds: float = _default("auth.credential_cache_max_seconds")
    #: Basic user ``DOMAIN\\name`` or ``name@domain`` is the certificate's account ``name``.
    strip_domain: bool = _default("auth.strip_domain")
    #: Seconds a browser page's CSRF token (csrf.py) is accepted after the page was shown.
    browser_token_seconds: int = _default("auth.browser_token_seconds")


@dataclass(frozen=True)
class TOTPConfig:
    """The ``totp:`` section: ``issuer`` (the label authenticator apps show next to the
    account, in the otpauth:// URI) and how long a grant from one entered code lasts
    (seconds, idle and absolute; auth/core.py)."""

    issuer: str = _default("totp.issuer")
    #: A grant ends after this long without a request (NIST SP 800-63B AAL2: 30 minutes) …
    grant_idle_seconds: float = _default("totp.grant_idle_seconds")
    #: … and at the latest this long after the code was entered (AAL2: 12 hours).
    grant_absolute_seconds: float = _default("totp.grant_absolute_seconds")


@dataclass(frozen=True)
class ThrottleConfig:
    """The ``throttle:`` section: the sign-in lockout (auth/lockout.py). Counts of failures,
    times in seconds: ``lock_after`` failures within ``window_seconds`` lock an (account,
    certificate) out for ``lock_seconds``; past ``delay_after`` failures each failed answer
    is held back ``base_delay_seconds``, doubling with every further one up to
    ``max_delay_seconds``."""

    # failures within window_seconds that lock an (account, certificate)
    lock_after: int = _default("throttle.lock_after")
    # distinct accounts locked out from one address within window_seconds that lock out the
    # address (one account counts once, however many certificates it uses): auth/lockout.py
    address_lock_after: int = _default("throttle.address_lock_after")
    # consecutive failures of one factor for an account, across all its certificates and
    # windows, that lock the account out until `davserver user unlock` (0: off); NIST SP
    # 800-63B §5.2.2 asks for no more than 100: auth/lockout.py
    max_consecutive_failures: int = _default("throttle.max_consecutive_failures")
    lock_seconds: float = _default("throttle.lock_seconds")
    window_seconds: float = _default("throttle.window_seconds")
    delay_after: int = _default("throttle.delay_after")  # failures answered at once before delays start
    base_delay_seconds: float = _default("throttle.base_delay_seconds")  # doubles with every further failure …
    max_delay_seconds: float = _default("throttle.max_delay_seconds")  # … up to this
    # count a failure that repeats one already counted within window_seconds (same account,
    # certificate, user and password; never a code): false counts it once, auth/lockout.py
    count_repeats: bool = _default("throttle.count_repeats")


@dataclass(frozen=True)
class StateConfig:
    """The ``state:`` section: where runtime state (TOTP steps used, grants, lockouts,
    invitations, WebDAV locks and properties) is kept: ``backend`` ``"sqlite"`` (``path``,
    a file, resolved against the home) or ``"redis"`` (``url``, ``prefix``, Sentinel and WAIT settings);
    times in seconds (store/)."""

    backend: str = _default("state.backend")
    path: Path | None = None  # sqlite
    url: str | None = None  # redis: redis://host:port/db or rediss:// for TLS
    prefix: str = _default("state.prefix")  # redis: every key starts with it (one per deployment)
    password_file: Path | None = _default("state.password_file")  # redis: keeps the password out of this file
    #: redis: Sentinel addresses as (host, port); non-empty: the master is found through them (store/redis.py)
    sentinels: tuple[tuple[str, int], ...] = _default("state.sentinels")
    sentinel_service: str = _default("state.sentinel_service")  # the master name the sentinels monitor
    #: with sentinels: replicas that must confirm a used TOTP step or a new WebDAV lock (Redis WAIT) …
    wait_replicas: int = _default("state.wait_replicas")
    wait_seconds: float = _default("state.wait_seconds")  # … within this many seconds, else StoreUnavailable
    #: sqlite: seconds a write waits for another process's write lock, else StoreUnavailable (store/sqlite.py)
    busy_timeout_seconds: float = _default("state.busy_timeout_seconds")
    #: seconds between sweeps of leftover upload files while running (maintenance.py)
    sweep_seconds: float = _default("state.sweep_seconds")
    #: redis: a leftover upload file is swept only once untouched this many seconds (maintenance.py)
    sweep_age_seconds: float = _default("state.sweep_age_seconds")


@dataclass(frozen=True)
class LocksConfig:
    """The ``locks:`` section: bounds of WebDAV locks (RFC 4918 §6, §9.10): their longest
    timeout (seconds), how many per resource and per account, the size of the owner (bytes);
    over one, LOCK gets 507 (store/davstate.py)."""

    #: WebDAV locks are granted for at most this long ("Infinite" included); clients refresh them.
    max_timeout_seconds: int = _default("locks.max_timeout_seconds")
    #: Live locks on one resource (only shared locks can pile up); past it LOCK gets 507.
    max_per_resource: int = _default("locks.max_per_resource")
    #: Live locks one account holds, on all resources; past it LOCK gets 507.
    max_per_account: int = _default("locks.max_per_account")
    #: Bytes of one lock's <D:owner> (its XML as stored); a LOCK with a larger one gets 507.
    max_owner_bytes: int = _default("locks.max_owner_bytes")
    #: Redis: seconds a mark of an upload in flight lasts unless renewed (redis_davstate.py).
    write_mark_seconds: float = _default("locks.write_mark_seconds")


@dataclass(frozen=True)
class PropertiesConfig:
    """Bounds of dead properties (store/davstate.py PropertyBounds); over one: 507."""

    #: Bytes of one property's value (its XML as stored).
    max_value_bytes: int = _default("properties.max_value_bytes")
    #: Properties on one resource.
    max_per_resource: int = _default("properties.max_per_resource")
    #: Bytes of names + values on one resource.
    max_bytes_per_resource: int = _default("properties.max_bytes_per_resource")
    #: Bytes of dead properties one PROPFIND answer may carry; a larger answer is refused before it is built.
    max_propfind_bytes: int = _default("properties.max_propfind_bytes")
    #: Property names one PROPFIND may ask for; more: 507 before anything is looked up.
    max_propfind_names: int = _default("properties.max_propfind_names")
    #: SHA-1 and MD5 of every upload, computed as it streams and answered as oc:checksums (oc_compat.py).
    checksums: bool = _default("properties.checksums")


@dataclass(frozen=True)
class EnrolmentConfig:
    """Self-service enrolment: invitation links, the enrolment listener, renewal."""

    enabled: bool = _default("enrolment.enabled")
    #: Address of the enrolment listener; parse_config fills in server.bind when unset.
    bind: str = "127.0.0.1"
    port: int = _default("enrolment.port")
    #: Base URL printed in invitations (no trailing slash); None: https://<first name in
    #: the server certificate>:<port>, see invitations.default_base_url().
    url: str | None = _default("enrolment.url")
    invite_seconds: float = _default("enrolment.invite_seconds")
    #: Failed sign-ins on one invitation that burn it.
    invite_max_failures: int = _default("enrolment.invite_max_failures")
    #: Invitations kept in the state store at once; creating one more is refused.
    max_open_invitations: int = _default("enrolment.max_open_invitations")
    renew_before_days: int = _default("enrolment.renew_before_days")
    #: Revoke the old certificate once its renewal has been used.
    revoke_renewed: bool = _default("enrolment.revoke_renewed")
    #: Request workers of the enrolment listener (cheroot numthreads).
    threads: int = _default("enrolment.threads")
    #: Pending TLS handshakes of the enrolment listener, over all addresses.
    handshakes_total: int = _default("enrolment.handshakes_total")
    #: Largest request line + header section on the enrolment listener (bytes).
    header_bytes: int = _default("enrolment.header_bytes")
    #: Kept-alive connections of the enrolment listener; past it answers close the connection.
    keep_alive_limit: int = _default("enrolment.keep_alive_limit")
    #: Largest enrolment or renewal form body (bytes); a longer one is refused 413 unread.
    form_bytes: int = _default("enrolment.form_bytes")
    #: Largest CSR accepted (bytes of PEM), by the pages and by `cert sign`.
    csr_bytes: int = _default("enrolment.csr_bytes")
    #: Connections of one address (IPv6: /64) in the header or form-body phase on the
    #: enrolment listener; never more than threads - 1 take effect.
    header_phase_per_address: int = _default("enrolment.header_phase_per_address")


@dataclass(frozen=True)
class AuditConfig:
    """The ``audit:`` section: the audit log file (an absolute path, None: standard error;
    one JSON object per line, audit.py) and the per-second caps on lines for refused TLS
    handshakes (tls_refusals.py)."""

    file: Path | None  # None: standard error
    #: Audit lines for refused TLS handshakes per second and source address (IPv6: /64); more: one summary line.
    tls_refusals_per_second: int = _default("audit.tls_refusals_per_second")
    #: Audit lines for refused TLS handshakes per second over all addresses.
    tls_refusals_total_per_second: int = _default("audit.tls_refusals_total_per_second")


@dataclass(frozen=True)
class MetricsConfig:
    """The health and metrics listener: plain HTTP, /healthz, /readyz, /metrics (metrics.py)."""

    enabled: bool = _default("metrics.enabled")
    bind: str = _default("metrics.bind")
    port: int = _default("metrics.port")


@dataclass(frozen=True)
class ShareConfig:
    """One entry of the ``shares:`` section: the share's URL name (``SHARE_NAME_RE``), its
    folder (an absolute path), who may read and write (account names, ``@group``, ``*``),
    the factors it requires beyond the certificate (``FACTORS``; default
    ``defaults.require``) and its macOS clutter policy."""

    name: str
    path: Path
    read_only: bool = _default("shares.NAME.read_only")
    readers: tuple[str, ...] = _default("shares.NAME.readers")
    writers: tuple[str, ...] = _default("shares.NAME.writers")
    require: tuple[str, ...] = ("password",)
    #: macOS metadata files (`._*`, `.DS_Store`): "allow", "hide" (kept, not listed) or "refuse" (403).
    macos_clutter: str = _default("shares.NAME.macos_clutter")

    def _matches(self, principals: tuple[str, ...], account: str, groups: frozenset[str]) -> bool:
        return any(p in ("*", account) or (p.startswith("@") and p[1:] in groups) for p in principals)

    def may_write(self, account: str, groups: frozenset[str]) -> bool:
        """True when the share is not read-only and ``account``, one of its ``groups`` (names
        without the ``@``) or ``*`` is among the writers."""
        return not self.read_only and self._matches(self.writers, account, groups)

    def may_read(self, account: str, groups: frozenset[str]) -> bool:
        """True when ``account``, one of its ``groups`` or ``*`` is among the readers or the
        writers (a writer may read, also of a read-only share)."""
        return self._matches(self.readers, account, groups) or self._matches(
            self.writers, account, groups
        )


@dataclass(frozen=True)
class Config:
    """The whole of ``davserver.yaml`` as parsed by parse_config: one frozen section object
    per top-level key, the shares by name, and the instance home every path was resolved
    against. ``default_require`` is the ``defaults.require`` list."""

    home: Home
    server: ServerConfig
    tls: TLSConfig
    identity: IdentityConfig
    auth: AuthConfig
    audit: AuditConfig
    shares: Mapping[str, ShareConfig] = field(default_factory=dict)
    totp: TOTPConfig = field(default_factory=TOTPConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    state: StateConfig = field(default_factory=StateConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    locks: LocksConfig = field(default_factory=LocksConfig)
    properties: PropertiesConfig = field(default_factory=PropertiesConfig)
    enrolment: EnrolmentConfig = field(default_factory=EnrolmentConfig)
    #: The health and metrics listener (metrics.py).
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: Factors asked for where no share decides (the root listing, unknown paths).
    default_require: tuple[str, ...] = _default("defaults.require")


# --- parsing -----------------------------------------------------------------


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, found {value!r}", "indent its keys under it")
    return value


def _check_keys(section: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    """Refuse a key ``allowed`` (from settings_schema.keys_of) does not hold, naming it,
    the likely meant one (a typo: ``threds`` → ``threads``) and every known key."""
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            raise ConfigError(
                f"{prefix}.{key}" if prefix else str(key),
                "unknown key",
                (f"did you mean {close[0]}? " if close else "") + f"known keys: {', '.join(allowed)}",
            )


def _int(section: Mapping[str, Any], prefix: str, key: str, default: int, lo: int, hi: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is not a whole number from {lo} to {hi}")
    return value


def _float(section: Mapping[str, Any], prefix: str, key: str, default: float, lo: float,
           hi: float | None = None) -> float:
    value = section.get(key, default)
    # NaN passes every comparison and .inf every lower bound: neither is a duration or a rate
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < lo:
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is not a number >= {lo}")
    if hi is not None and value > hi:
        most = int(hi) if float(hi).is_integer() else hi
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is more than {most}", f"use at most {most}")
    return float(value)


def _bool(section: Mapping[str, Any], prefix: str, key: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is not true or false")
    return value


def _str(section: Mapping[str, Any], prefix: str, key: str, default: str | None) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is not a non-empty string")
    return value


def _setting(section: Mapping[str, Any], key: str, prefix: str | None = None) -> Any:
    """Read the scalar setting ``key`` (dotted, as in settings_schema.py) from its
    section's mapping, with the schema's default and bounds; ``prefix`` names the section
    in errors where it differs from the schema's (``shares.files`` for ``shares.NAME``).
    Raises ConfigError naming the key; an ``enum`` or ``list`` is its parser's job."""
    s = _schema(key)
    where = s.section if prefix is None else prefix
    if s.type == "int":
        return _int(section, where, s.name, s.default, int(s.lo or 0), int(s.hi or 0))
    if s.type == "float":
        return _float(section, where, s.name, s.default, s.lo or 0.0, s.hi)
    if s.type == "bool":
        return _bool(section, where, s.name, s.default)
    if s.type in ("str", "path"):
        return _str(section, where, s.name, s.default)
    raise TypeError(f"{key} is a {s.type}: parsed by its section")


def _principals(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of accounts or @groups, found {value!r}")
    for item in value:
        if not isinstance(item, str) or not _PRINCIPAL_RE.match(item):
            raise ConfigError(key, f"{item!r} is not an account name, @group or *")
    return tuple(value)


def _require(value: Any, key: str) -> tuple[str, ...]:
    if value in (None, "none"):
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or any(v not in FACTORS for v in value):
        raise ConfigError(
            key, f"{value!r} is not a list of factors", "use [] (or none), [password] or [password, totp]"
        )
    if "totp" in value and "password" not in value:
        raise ConfigError(key, f"{value!r}: totp needs password", "use [password, totp]")
    return tuple(f for f in FACTORS if f in value)


def _parse_server(raw: Mapping[str, Any]) -> ServerConfig:
    s = _section(raw, "server")
    _check_keys(s, "server", keys_of("server"))
    bind = _setting(s, "server.bind")
    if bind not in ("localhost",):
        try:
            # canonical text: "0000::" is "::", so every later comparison (the serve line,
            # DavServer.url, enrolment.bind's default) sees one spelling
            bind = str(ipaddress.ip_address(bind))
        except ValueError:
            raise ConfigError("server.bind", f"{bind!r} is not an IP address", "e.g. 0.0.0.0 or 127.0.0.1") from None
    return ServerConfig(
        bind=bind,
        port=_setting(s, "server.port"),
        threads=_setting(s, "server.threads"),
        workers=_workers(s.get("workers", _default("server.workers"))),
        worker_heartbeat_seconds=_setting(s, "server.worker_heartbeat_seconds"),
        timeout=_setting(s, "server.timeout"),
        keep_alive_limit=_setting(s, "server.keep_alive_limit"),
        shutdown_timeout=_setting(s, "server.shutdown_timeout"),
        handshakes_per_address=_setting(s, "server.handshakes_per_address"),
        handshakes_total=_setting(s, "server.handshakes_total"),
        listen_backlog=_setting(s, "server.listen_backlog"),
        **_parse_proxy(s),
    )


#: The most worker processes server.workers takes.
MAX_WORKERS = 256


def _workers(value: Any) -> int | str:
    """server.workers: ``auto`` or a whole number from 1 to MAX_WORKERS (``"2"`` is 2)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ConfigError("server.workers", f"{value!r} is not a whole number from 1 to {MAX_WORKERS} or auto",
                      "e.g. workers: 2, or workers: auto for one per CPU")


def _parse_proxy(s: Mapping[str, Any]) -> dict[str, Any]:
    """server.proxy_protocol, server.trusted_proxies, server.proxy_header_bytes (proxy_protocol.py)."""
    mode = s.get("proxy_protocol", _default("server.proxy_protocol"))
    if mode is False:  # YAML 1.1 reads a bare off as false
        mode = "off"
    if mode not in _schema("server.proxy_protocol").choices:
        raise ConfigError("server.proxy_protocol", f"{mode!r} is not off, v1 or v2", "HAProxy send-proxy-v2: v2")
    raw = s.get("trusted_proxies") or []
    if not isinstance(raw, list):
        raise ConfigError("server.trusted_proxies", f"{raw!r} is not a list", "e.g. [10.0.0.5, 192.0.2.0/28]")
    trusted = []
    for i, item in enumerate(raw):
        try:
            trusted.append(str(ipaddress.ip_network(str(item).strip())))
        except ValueError:
            try:
                hint = f"did you mean {ipaddress.ip_network(str(item).strip(), strict=False)}?"
            except ValueError:
                hint = "an IP address or a network such as 10.0.0.0/24"
            raise ConfigError(f"server.trusted_proxies[{i}]", f"{item!r} is not an address or network", hint) from None
    if mode != "off" and not trusted:
        raise ConfigError(
            "server.proxy_protocol",
            f"is {mode} but server.trusted_proxies is empty",
            "list the balancer's addresses in server.trusted_proxies, or set server.proxy_protocol: off",
        )
    header_bytes = _setting(s, "server.proxy_header_bytes")
    return {"proxy_protocol": mode, "trusted_proxies": tuple(trusted), "proxy_header_bytes": header_bytes}


def _parse_limits(raw: Mapping[str, Any]) -> LimitsConfig:
    lim = _section(raw, "limits")
    _check_keys(lim, "limits", keys_of("limits"))
    return LimitsConfig(
        xml_body_bytes=_setting(lim, "limits.xml_body_bytes"),
        header_bytes=_setting(lim, "limits.header_bytes"),
        header_seconds=_setting(lim, "limits.header_seconds"),
        handshake_seconds=_setting(lim, "limits.handshake_seconds"),
        header_phase_per_certificate=_setting(lim, "limits.header_phase_per_certificate"),
        body_min_bytes_per_second=_setting(lim, "limits.body_min_bytes_per_second"),
        body_grace_seconds=_setting(lim, "limits.body_grace_seconds"),
        max_tree_depth=_setting(lim, "limits.max_tree_depth"),
        linger_bytes=_setting(lim, "limits.linger_bytes"),
        linger_seconds=_setting(lim, "limits.linger_seconds"),
        linger_connections=_setting(lim, "limits.linger_connections"),
    )


def _parse_tls(raw: Mapping[str, Any], home: Home) -> TLSConfig:
    t = _section(raw, "tls")
    _check_keys(t, "tls", keys_of("tls"))
    min_version = str(t.get("min_version", _default("tls.min_version")))
    if min_version not in _schema("tls.min_version").choices:
        raise ConfigError("tls.min_version", f"{min_version!r} is not supported", "use 1.2 or 1.3")
    crl = t.get("crl", _default("tls.crl"))
    return TLSConfig(
        certificate=home.resolve(_setting(t, "tls.certificate")),
        private_key=home.resolve(_setting(t, "tls.private_key")),
        client_ca=home.resolve(_setting(t, "tls.client_ca")),
        crl=home.resolve(crl) if crl else None,
        min_version=min_version,
        reload_seconds=_setting(t, "tls.reload_seconds"),
        # at most half the lifetime of a re-issued certificate (397 days): never re-issued daily
        reissue_days=_setting(t, "tls.reissue_days"),
        expiry_warning_days=_setting(t, "tls.expiry_warning_days"),
        max_ca_names_bytes=_setting(t, "tls.max_ca_names_bytes"),
        session_ticket_seconds=_setting(t, "tls.session_ticket_seconds"),
    )


#: How a subject rule is written; shown by every subject_rules error.
_SUBJECT_RULE_FORM = "write each rule as {issuer: certs/users-ca.crt, match: cn}; match: cn, san_email"


def _parse_identity(raw: Mapping[str, Any], home: Home) -> IdentityConfig:
    """``identity.subject_rules``: a list of ``{issuer: PATH, match: cn|san_email}``.

    The plain form (``[cn]``) keeps its meaning, so existing configurations start as
    before: a name from whichever CA in tls.client_ca signed it. With a company root
    trusted, that lets a partner sub-CA's ``CN=eve`` become account eve, so the server
    warns at every start (auth/core.py) and the README recommends the issuer form or a
    bundle narrowed to the user sub-CA."""
    i = _section(raw, "identity")
    _check_keys(i, "identity", keys_of("identity"))
    key = "identity.subject_rules"
    rules = i.get("subject_rules") or []
    if not isinstance(rules, list):
        raise ConfigError(key, f"{rules!r} is not a list of rules", _SUBJECT_RULE_FORM)
    parsed: list[SubjectRule] = []
    for n, rule in enumerate(rules):
        where = f"{key}[{n}]"
        if isinstance(rule, str):
            if rule not in _SUBJECT_RULES:
                raise ConfigError(key, f"{rule!r} is not a rule", _SUBJECT_RULE_FORM)
            parsed.append(SubjectRule(issuer=None, match=rule))
            continue
        if not isinstance(rule, Mapping):
            raise ConfigError(where, f"{rule!r} is not a rule", _SUBJECT_RULE_FORM)
        _check_keys(rule, where, ("issuer", "match"))
        issuer = rule.get("issuer")
        if not isinstance(issuer, str) or not issuer.strip():
            raise ConfigError(f"{where}.issuer", f"{issuer!r} is not a path to a CA certificate", _SUBJECT_RULE_FORM)
        match = rule.get("match")
        if match not in _SUBJECT_RULES:
            raise ConfigError(f"{where}.match", f"{match!r} is not a rule", f"allowed: {', '.join(_SUBJECT_RULES)}")
        parsed.append(SubjectRule(issuer=home.resolve(issuer), match=str(match)))
    return IdentityConfig(subject_rules=tuple(parsed))


def _parse_shares(raw: Mapping[str, Any], home: Home, default_require: tuple[str, ...]) -> dict[str, ShareConfig]:
    shares_raw = raw.get("shares") or {}
    if not isinstance(shares_raw, Mapping):
        raise ConfigError("shares", f"expected a mapping of share names, found {shares_raw!r}")
    shares: dict[str, ShareConfig] = {}
    for name, spec in shares_raw.items():
        key = f"shares.{name}"
        if not isinstance(name, str) or not SHARE_NAME_RE.match(name):
            raise ConfigError(
                key, "is not a valid share name", "use lower-case letters, digits, '.', '_' or '-', at most 64"
            )
        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(key, f"expected a mapping with at least 'path', found {spec!r}")
        _check_keys(spec, key, keys_of("shares.NAME"))
        clutter = spec.get("macos_clutter", _default("shares.NAME.macos_clutter"))
        if clutter not in _schema("shares.NAME.macos_clutter").choices:
            raise ConfigError(f"{key}.macos_clutter", f"{clutter!r} is not valid", "use allow, hide or refuse")
        path = home.resolve(_setting(spec, "shares.NAME.path", key))
        shares[name] = ShareConfig(
            name=name,
            path=path,
            read_only=_setting(spec, "shares.NAME.read_only", key),
            readers=_principals(spec.get("readers"), f"{key}.readers"),
            writers=_principals(spec.get("writers"), f"{key}.writers"),
            require=_require(spec["require"], f"{key}.require") if "require" in spec else default_require,
            macos_clutter=clutter,
        )
    return shares


def _parse_totp(raw: Mapping[str, Any]) -> TOTPConfig:
    t = _section(raw, "totp")
    _check_keys(t, "totp", keys_of("totp"))
    return TOTPConfig(
        issuer=_setting(t, "totp.issuer"),
        grant_idle_seconds=_setting(t, "totp.grant_idle_seconds"),
        grant_absolute_seconds=_setting(t, "totp.grant_absolute_seconds"),
    )


def _parse_throttle(raw: Mapping[str, Any]) -> ThrottleConfig:
    t = _section(raw, "throttle")
    _check_keys(t, "throttle", keys_of("throttle"))
    return ThrottleConfig(
        lock_after=_setting(t, "throttle.lock_after"),
        address_lock_after=_setting(t, "throttle.address_lock_after"),
        max_consecutive_failures=_setting(t, "throttle.max_consecutive_failures"),
        lock_seconds=_setting(t, "throttle.lock_seconds"),
        window_seconds=_setting(t, "throttle.window_seconds"),
        delay_after=_setting(t, "throttle.delay_after"),
        base_delay_seconds=_setting(t, "throttle.base_delay_seconds"),
        max_delay_seconds=_setting(t, "throttle.max_delay_seconds"),
        count_repeats=_setting(t, "throttle.count_repeats"),
    )


def _redacted_url(url: str) -> str:
    """``url`` with any password in its userinfo replaced by ``***``: config errors are
    printed and logged, and a Redis URL may carry the password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def _check_redis_url(url: str) -> None:
    """Refuse a ``state.url`` redis-py could not connect with (scheme, host, port, database
    number), at load rather than at the first store call. Raises ConfigError naming
    ``state.url``, with the password redacted."""
    hint = "e.g. redis://10.0.0.5:6379/0, rediss://…, or unix:///run/redis.sock"
    shown = _redacted_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise ConfigError("state.url", f"{shown!r} is not a usable Redis URL ({exc})", hint) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("state.url", f"{shown!r} is not a Redis URL", hint)
    from redis.connection import parse_url as redis_parse_url  # only Redis users pay for the import

    try:
        redis_parse_url(url)  # what redis-py itself will read: query options included
    except (ValueError, TypeError) as exc:
        raise ConfigError("state.url", f"{shown!r} is not a usable Redis URL ({exc})", hint) from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 and parts.scheme != "unix" and ":" in (parts.netloc.rpartition("@")[2].rpartition("]")[2]):
        raise ConfigError("state.url", f"{shown!r} has a port that is not a number from 1 to 65535", hint)
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("state.url", f"{shown!r} names no socket path", hint)
        return
    if not parts.hostname:
        raise ConfigError("state.url", f"{shown!r} names no host", hint)
    database = parts.path.lstrip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ConfigError("state.url", f"{shown!r}: the database after the last / must be a number", hint)


def _parse_state(raw: Mapping[str, Any], home: Home) -> StateConfig:
    s = _section(raw, "state")
    _check_keys(s, "state", keys_of("state"))
    backend = s.get("backend", _default("state.backend"))
    if backend not in _schema("state.backend").choices:
        raise ConfigError("state.backend", f"{backend!r} is not a known backend", "use sqlite or redis")
    path = home.resolve(_setting(s, "state.path"))
    # Checked whatever the backend, so a mistake shows before the switch to redis.
    sentinels = _parse_sentinels(s.get("sentinels"))
    sentinel = {
        "sentinels": sentinels,
        "sentinel_service": _setting(s, "state.sentinel_service"),
        "wait_replicas": _setting(s, "state.wait_replicas"),
        "wait_seconds": _setting(s, "state.wait_seconds"),
        "busy_timeout_seconds": _setting(s, "state.busy_timeout_seconds"),
        "sweep_seconds": _setting(s, "state.sweep_seconds"),
        "sweep_age_seconds": _setting(s, "state.sweep_age_seconds"),
    }
    if backend == "sqlite":
        return StateConfig(backend=backend, path=path, **sentinel)
    url = _setting(s, "state.url")
    _check_redis_url(url)
    if sentinels and not url.startswith("redis://"):
        raise ConfigError("state.url", f"{_redacted_url(url)!r}: with state.sentinels only redis:// is supported "
                          "(the sentinels name the host; TLS to a Sentinel-managed Redis is not)",
                          "write redis://any/DB (the database number is used) and keep Redis on a private network")
    password_file = s.get("password_file")
    return StateConfig(
        backend=backend,
        path=path,
        url=url,
        prefix=_setting(s, "state.prefix"),
        password_file=home.resolve(password_file) if password_file else None,
        **sentinel,
    )


def _parse_sentinels(raw: Any) -> tuple[tuple[str, int], ...]:
    """``state.sentinels``: a list of ``host:port`` (an IPv6 address in brackets:
    ``[2001:db8::5]:26379``) as (host, port) pairs in the order given. Raises ConfigError
    naming the item (``state.sentinels[1]``) and the form that works."""
    hint = "write host:port, e.g. [10.0.0.5:26379, 10.0.0.6:26379, '[2001:db8::7]:26379']"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("state.sentinels", f"{raw!r} is not a list", hint)
    out: list[tuple[str, int]] = []
    for i, item in enumerate(raw):
        key = f"state.sentinels[{i}]"
        text = item.strip() if isinstance(item, str) else ""
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ConfigError(key, f"{item!r}: {host!r} in brackets is not an IPv6 address", hint) from None
        elif ":" in host or "[" in host or "]" in host:
            raise ConfigError(key, f"{item!r} is not host:port", "write IPv6 in brackets: [2001:db8::7]:26379")
        if not sep or not host or any(ch.isspace() or ch in "/@?#" for ch in host):
            raise ConfigError(key, f"{item!r} is not host:port", hint)
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(key, f"{item!r}: the port is not a number from 1 to 65535", hint)
        pair = (host, int(port))
        if pair in out:
            raise ConfigError(key, f"{item!r} is listed twice", "list each sentinel once")
        out.append(pair)
    return tuple(out)


def _parse_locks(raw: Mapping[str, Any]) -> LocksConfig:
    lk = _section(raw, "locks")
    _check_keys(lk, "locks", keys_of("locks"))
    return LocksConfig(
        max_timeout_seconds=_setting(lk, "locks.max_timeout_seconds"),
        max_per_resource=_setting(lk, "locks.max_per_resource"),
        max_per_account=_setting(lk, "locks.max_per_account"),
        max_owner_bytes=_setting(lk, "locks.max_owner_bytes"),
        write_mark_seconds=_setting(lk, "locks.write_mark_seconds"),
    )


def _parse_properties(raw: Mapping[str, Any]) -> PropertiesConfig:
    pr = _section(raw, "properties")
    _check_keys(pr, "properties", keys_of("properties"))
    return PropertiesConfig(
        max_value_bytes=_setting(pr, "properties.max_value_bytes"),
        max_per_resource=_setting(pr, "properties.max_per_resource"),
        max_bytes_per_resource=_setting(pr, "properties.max_bytes_per_resource"),
        max_propfind_bytes=_setting(pr, "properties.max_propfind_bytes"),
        max_propfind_names=_setting(pr, "properties.max_propfind_names"),
        checksums=_setting(pr, "properties.checksums"),
    )


def _parse_enrolment(raw: Mapping[str, Any], server_bind: str) -> EnrolmentConfig:
    e = _section(raw, "enrolment")
    _check_keys(e, "enrolment", keys_of("enrolment"))
    bind = server_bind if e.get("bind") is None else _setting(e, "enrolment.bind")
    if bind != server_bind and bind != "localhost":
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise ConfigError("enrolment.bind", f"{bind!r} is not an IP address",
                              "e.g. 0.0.0.0, or leave it out to use server.bind") from None
    url = None if e.get("url") is None else _setting(e, "enrolment.url").rstrip("/")
    if url is not None and not re.fullmatch(r"https://[^\s/?#]+(/[^\s?#]*)?", url):
        raise ConfigError("enrolment.url", f"{url!r} is not an https:// URL",
                          "e.g. https://dav.example.org:8444, or leave it out")
    invite_seconds = _setting(e, "enrolment.invite_seconds")  # at most a year (settings_schema.py)
    return EnrolmentConfig(
        enabled=_setting(e, "enrolment.enabled"),
        bind=bind,
        port=_setting(e, "enrolment.port"),
        url=url,
        invite_seconds=invite_seconds,
        invite_max_failures=_setting(e, "enrolment.invite_max_failures"),
        max_open_invitations=_setting(e, "enrolment.max_open_invitations"),
        renew_before_days=_setting(e, "enrolment.renew_before_days"),
        revoke_renewed=_setting(e, "enrolment.revoke_renewed"),
        threads=_setting(e, "enrolment.threads"),
        handshakes_total=_setting(e, "enrolment.handshakes_total"),
        header_bytes=_setting(e, "enrolment.header_bytes"),
        keep_alive_limit=_setting(e, "enrolment.keep_alive_limit"),
        form_bytes=_setting(e, "enrolment.form_bytes"),
        csr_bytes=_setting(e, "enrolment.csr_bytes"),
        header_phase_per_address=_setting(e, "enrolment.header_phase_per_address"),
    )


def is_macos_clutter(name: str) -> bool:
    """AppleDouble files and Finder's folder settings."""
    return name.startswith("._") or name == ".DS_Store"


def parse_config(raw: Any, home: Home) -> Config:
    """Validate a parsed YAML document; raises ConfigError on the first problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the file must hold a mapping of sections, found {type(raw).__name__}")
    _check_keys(raw, "", SECTIONS)
    a = _section(raw, "auth")
    _check_keys(a, "auth", keys_of("auth"))
    au = _section(raw, "audit")
    _check_keys(au, "audit", keys_of("audit"))
    d = _section(raw, "defaults")
    _check_keys(d, "defaults", keys_of("defaults"))
    audit_file = au.get("file", _default("audit.file"))
    if audit_file is not None and not isinstance(audit_file, str):
        raise ConfigError("audit.file", f"{audit_file!r} is not a path", "use a path, or - for standard error")
    default_require = _require(d.get("require", list(_default("defaults.require"))), "defaults.require")
    server = _parse_server(raw)
    return Config(
        home=home,
        server=server,
        tls=_parse_tls(raw, home),
        identity=_parse_identity(raw, home),
        auth=AuthConfig(
            credential_cache_seconds=_setting(a, "auth.credential_cache_seconds"),
            credential_cache_max_seconds=_setting(a, "auth.credential_cache_max_seconds"),
            strip_domain=_setting(a, "auth.strip_domain"),
            browser_token_seconds=_setting(a, "auth.browser_token_seconds"),
        ),
        audit=AuditConfig(
            file=None if audit_file in (None, "-") else home.resolve(audit_file),
            tls_refusals_per_second=_setting(au, "audit.tls_refusals_per_second"),
            tls_refusals_total_per_second=_setting(au, "audit.tls_refusals_total_per_second"),
        ),
        shares=_parse_shares(raw, home, default_require),
        default_require=default_require,
        totp=_parse_totp(raw),
        throttle=_parse_throttle(raw),
        state=_parse_state(raw, home),
        limits=_parse_limits(raw),
        locks=_parse_locks(raw),
        properties=_parse_properties(raw),
        enrolment=_parse_enrolment(raw, server.bind),
        metrics=_parse_metrics(raw),
    )


def _parse_metrics(raw: Mapping[str, Any]) -> MetricsConfig:
    m = _section(raw, "metrics")
    _check_keys(m, "metrics", keys_of("metrics"))
    return MetricsConfig(
        enabled=_setting(m, "metrics.enabled"),
        bind=_setting(m, "metrics.bind"),
        port=_setting(m, "metrics.port"),
    )


class _DuplicateKey(Exception):
    def __init__(self, key: str, lines: tuple[int, int]) -> None:
        super().__init__(key)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key written twice in one mapping (PyYAML keeps the
    last one without a word: two ``bind:`` under ``server:`` served on the second)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicates(node, "", set())
        return super().construct_document(node)


def _refuse_duplicates(node: yaml.Node, where: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = f"{where}.{key_node.value}" if where else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _DuplicateKey(key, (first[key], line))
                first[key] = line
                _refuse_duplicates(value_node, key, seen)
            else:
                _refuse_duplicates(value_node, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            _refuse_duplicates(item, f"{where}[{n}]", seen)


def load_config(home: Home) -> Config:
    """Read and validate the instance's davserver.yaml."""
    return read_config(home)[0]


def read_config(home: Home) -> tuple[Config, str]:
    """Read and validate the instance's davserver.yaml: (the configuration, the exact text
    it was parsed from; the supervisor hands that text to its workers). Raises ConfigError."""
    path = home.config_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "", f"no configuration at {path}", "run `davserver init` or pass --home", source=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}", source=str(path)) from None
    return config_from_text(text, home, str(path)), text


def config_from_text(text: str, home: Home, source: str) -> Config:
    """Validate the davserver.yaml text `text` of instance `home` (relative paths resolve
    against it); `source` names it in errors. Raises ConfigError."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(exc.key, f"is written twice (lines {exc.lines[0]} and {exc.lines[1]}); the YAML "
                          "parser would silently keep the last", "keep one of them", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=source) from None
    try:
        return parse_config(raw, home)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, exc.hint, source=source) from None
