"""Every setting of davserver.yaml, written once: key, type, default, bounds, meaning.

The loader (config.py) takes each setting's default and bounds from here and derives
the keys each section accepts, so a default or a bound cannot differ between what is
parsed and what is documented. tests/test_settings_schema.py holds the shipped
``config/davserver.yaml`` (values) and the README's configuration table (key, default)
to this table, so neither can drift from the loader either.

A key is dotted: ``section.name``; per-share keys are ``shares.NAME.name``. Types:

- ``int``: a whole number from ``lo`` to ``hi`` (both included; YAML ``true`` is not one);
- ``float``: a finite number >= ``lo`` (and <= ``hi`` when set); a whole number is fine;
- ``bool``: ``true`` or ``false``;
- ``str``: a non-empty string; ``path``: the same, relative to the instance folder;
- ``enum``: one of ``choices``;
- ``list``: a YAML list (its items are checked by the section's own parser).

Adding a setting: add its entry here (the README wording as ``doc``), its field to the
section's dataclass in config.py with ``= _default("section.name")`` (a test holds any
other default there, and any module's own fallback copy, to the one here), read it with
``_setting(section_dict, "section.name")``, set and explain it in ``config/davserver.yaml``
(= ``davserver/default_config.yaml``), and paste ``python -m davserver.settings_schema``
over the README's table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SECTIONS", "SETTINGS", "Setting", "SettingType", "keys_of", "render_readme_table", "setting"]

SettingType = Literal["int", "float", "bool", "str", "path", "enum", "list"]


@dataclass(frozen=True)
class Setting:
    """One setting. ``default`` is the value an absent key takes (None: none, or
    derived at load, then ``shown`` says from what, as the README does); ``lo``/``hi``
    bound ``int`` and ``float`` settings, ``choices`` an ``enum``; ``doc`` is the
    README's description of it."""

    key: str
    type: SettingType
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    shown: str | None = None
    doc: str = ""

    @property
    def section(self) -> str:
        """The part before the last dot: ``server``, or ``shares.NAME``."""
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        """The part after the last dot, as written under its section."""
        return self.key.rpartition(".")[2]

    def default_text(self) -> str:
        """The default as the README's table writes it (``30`` for 30.0, ``[password]``,
        ``"1.2"`` for a string YAML would read as a number, ``—`` for none)."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if value is None:
            return "—"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        if isinstance(value, tuple):
            return "[" + ", ".join(value) + "]"
        if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):  # YAML: a number
            return f'"{value}"'
        return str(value)

    def __post_init__(self) -> None:
        if self.type in ("int", "float") and (self.lo is None or not isinstance(self.default, int | float)):
            raise ValueError(f"{self.key}: a number needs a default and lo")
        if self.type == "int" and self.hi is None:
            raise ValueError(f"{self.key}: a whole number needs hi")
        if self.type == "float" and not math.isfinite(float(self.default)):
            raise ValueError(f"{self.key}: default must be finite")
        if self.type == "enum" and self.default not in self.choices:
            raise ValueError(f"{self.key}: default not among {self.choices}")


#: In the order of the shipped davserver.yaml (and the README's table).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        'server.bind', 'str', '127.0.0.1',
        doc='address to listen on (`0.0.0.0` or `::` for the network)',
    ),
    Setting(
        'server.port', 'int', 8443, lo=0, hi=65535,
        doc='TCP port (0: any free port)',
    ),
    Setting(
        'server.threads', 'int', 32, lo=1, hi=1024,
        doc='requests served at the same time',
    ),
    Setting(
        'server.workers', 'str', 'auto',
        doc=('worker processes, each a full server on the one listening socket (a whole number from 1 to 256, '
             'or `auto`: one per usable CPU); past 1 a small supervisor starts them, restarts one that dies '
             'and runs the once-only maintenance; `server.threads` and the `handshakes_*` caps are per '
             'worker (docs/scaling.md)'),
    ),
    Setting(
        'server.worker_heartbeat_seconds', 'int', 30, lo=2, hi=3600,
        doc=('with `server.workers` past 1: seconds a worker may send no heartbeat (one a second, from a '
             'thread of its own) before the supervisor kills it (SIGKILL, logged) and starts another: a '
             'stopped or hung worker, not a busy one'),
    ),
    Setting(
        'server.timeout', 'float', 30.0, lo=1.0,
        doc='seconds a connection may idle or take for one read',
    ),
    Setting(
        'server.keep_alive_limit', 'int', 256, lo=1, hi=1_000_000,
        doc='idle keep-alive connections kept open (past it, each response closes its connection)',
    ),
    Setting(
        'server.shutdown_timeout', 'float', 30.0, lo=0.0,
        doc='on SIGTERM, seconds in-flight requests get to finish',
    ),
    Setting(
        'server.handshakes_per_address', 'int', 128, lo=1, hi=1_000_000,
        doc=('TLS handshakes in progress from one address (IPv6: per /64); a new connection from an address at '
             "the cap closes that address's oldest unfinished handshake (counted, logged)"),
    ),
    Setting(
        'server.handshakes_total', 'int', 1024, lo=1, hi=1_000_000,
        doc=('TLS handshakes in progress in all; at the cap a new connection closes the oldest unfinished '
             'handshake of the address that has the most'),
    ),
    Setting(
        'server.listen_backlog', 'int', 1024, lo=16, hi=65535,
        doc=('connections the kernel queues until accepted (capped by `net.core.somaxconn`); past it new SYNs '
             'are dropped and clients retry after a second'),
    ),
    Setting(
        'server.proxy_protocol', 'enum', 'off', choices=('off', 'v1', 'v2'),
        doc=('PROXY header from a TCP balancer in front: `off`, `v1` (HAProxy `send-proxy`) or `v2` '
             "(`send-proxy-v2`); its source address is the client's in the audit log, lockout, handshake caps "
             'and metrics (docs/scaling.md)'),
    ),
    Setting(
        'server.trusted_proxies', 'list', (),
        doc=('balancer addresses or networks: from them the PROXY header is required, from any other address a '
             'header is refused and the connection closed; must not be empty when `server.proxy_protocol` is '
             'not `off`'),
    ),
    Setting(
        'server.proxy_header_bytes', 'int', 4096, lo=232, hi=65_551,
        doc=('largest PROXY v2 header, TLVs included (232 to 65551); longer: refused (a v1 line is at most 107 '
             'bytes)'),
    ),
    Setting(
        'limits.xml_body_bytes', 'int', 1_048_576, lo=1024, hi=1_073_741_824,
        doc='largest XML request body (PROPFIND, PROPPATCH, LOCK …); larger: 413, not read',
    ),
    Setting(
        'limits.header_bytes', 'int', 65_536, lo=4096, hi=16_777_216,
        doc='largest request line + headers',
    ),
    Setting(
        'limits.header_seconds', 'float', 10.0, lo=1.0,
        doc=('the request headers must arrive within this once the TLS handshake is done (slow clients are cut '
             'off)'),
    ),
    Setting(
        'limits.header_phase_per_certificate', 'int', 4, lo=1, hi=1_000_000,
        doc=('connections of one client certificate that may wait on request workers for their headers at '
             'once; a new one at the cap closes the oldest (counted, logged), so tricklers cannot hold the '
             'workers while a whole request still gets through'),
    ),
    Setting(
        'limits.handshake_seconds', 'float', 10.0, lo=1.0,
        doc='the TLS handshake must complete within this after the connection is accepted',
    ),
    Setting(
        'limits.body_min_bytes_per_second', 'int', 1024, lo=0, hi=1_073_741_824,
        doc='a request body must average at least this rate …',
    ),
    Setting(
        'limits.body_grace_seconds', 'float', 30.0, lo=1.0,
        doc=('… once this many seconds have passed (0 rate: off); a slower body is answered 408 '
             '(reason `request_timeout`), never processed'),
    ),
    Setting(
        'limits.max_tree_depth', 'int', 256, lo=1, hi=400,
        doc=('deepest level below a share root where anything may be created (PUT, MKCOL, LOCK, COPY, MOVE: '
             '403 deeper), and the deepest tree COPY, MOVE and DELETE of a folder walk (403 for deeper trees '
             'made on disk); 1 to 400 (WsgiDAV and `shutil` walk trees by recursion)'),
    ),
    Setting(
        'limits.linger_bytes', 'int', 67_108_864, lo=0, hi=1_099_511_627_776,
        doc=('after an answer given before the request body was read (refusal, 409, 412 …) the connection '
             'closes; what the client still sends is read and dropped in the background, in 64 KiB blocks, so '
             'it receives the answer instead of a reset: at most this many bytes …'),
    ),
    Setting(
        'limits.linger_seconds', 'float', 10.0, lo=0.0,
        doc='… and this many seconds per connection (0: close at once) …',
    ),
    Setting(
        'limits.linger_connections', 'int', 64, lo=0, hi=65_536,
        doc='… for at most this many connections at a time; more are closed at once',
    ),
    Setting(
        'tls.certificate', 'path', 'certs/server.crt',
        doc='server certificate (PEM)',
    ),
    Setting(
        'tls.private_key', 'path', 'certs/server.key',
        doc='its key; must not be readable by other users',
    ),
    Setting(
        'tls.client_ca', 'path', 'certs/ca.crt',
        doc=('CA bundle client certificates must chain to; every CA in it is a trust anchor, a sub-CA alone '
             'too, so it may hold CA certificates only (see [Enterprise CAs](#enterprise-cas))'),
    ),
    Setting(
        'tls.crl', 'path', 'certs/crl.pem',
        doc='revocation list, checked on every request, re-read on change (empty: none)',
    ),
    Setting(
        'tls.min_version', 'enum', '1.2', choices=('1.2', '1.3'),
        doc='lowest TLS version (`"1.2"` or `"1.3"`); TLS 1.2 uses only ECDHE + AEAD suites',
    ),
    Setting(
        'tls.reload_seconds', 'float', 60.0, lo=1.0,
        doc=('how often `tls.certificate`, `tls.private_key` and `tls.client_ca` are checked for changes '
             '(certbot, a re-issue, a CA renewal): new connections get them without a restart, once the '
             'certificate and key form a matching pair; a bad pair is never served (the old one stays, with a '
             'warning) (see [docs/certificates.md](docs/certificates.md))'),
    ),
    Setting(
        'tls.reissue_days', 'int', 30, lo=0, hi=180,
        doc=('a server certificate issued by the built-in CA is re-issued, same names, for 397 days, this many '
             'days before it expires (checked at start and once a day; 0: never; at most 180); one from '
             'another CA is never touched'),
    ),
    Setting(
        'tls.expiry_warning_days', 'int', 60, lo=0, hi=3650,
        doc=('at start and daily, a warning when the CA, the server certificate or the CRL lapse within this '
             'many days, an error once lapsed (0: off)'),
    ),
    Setting(
        'tls.max_ca_names_bytes', 'int', 32256, lo=0, hi=16_777_216,
        doc=('the certificate request names the CAs of `tls.client_ca` (so a client with several certificates '
             'presents the right one); when their names take more bytes than this, none are sent and a warning '
             'says so (Java clients refuse handshake messages over 32 KiB); 0: never'),
    ),
    Setting(
        'tls.session_ticket_seconds', 'int', 3600, lo=60, hi=86400,
        doc=('every worker process and every node on the same state store encrypts TLS session tickets with '
             'one key, derived from a random secret the store keeps for each period of this many seconds '
             '(Unix time): a client resumes its session on any of them without a new certificate handshake; a '
             'ticket from the period before is not resumed (one full handshake). Forward secrecy: the store '
             'deletes a period\'s secret at the end of the period after it, so a reader of the store (or of a '
             'backup, replica or Redis RDB/AOF file taken during period n) can open the tickets of periods n-1 '
             'and n only, not older ones (see [docs/scaling.md](docs/scaling.md))'),
    ),
    Setting(
        'identity.subject_rules', 'list', (),
        doc=('for an enterprise CA: a list of `{issuer: PATH, match: cn\\|san_email}`; a certificate whose '
             "issuing CA is the one in `PATH` (relative to the instance home; matched on that CA's key) maps "
             'to the account named by its common name (`cn`) or a SAN e-mail (`san_email`), tried in order '
             'after the fingerprint binding. A plain rule (`cn`, `san_email`) names no issuer: it maps '
             'certificates of any CA that `tls.client_ca` trusts, and is logged as a warning at every start '
             '(see [Enterprise CAs](#enterprise-cas))'),
    ),
    Setting(
        'auth.credential_cache_seconds', 'float', 300.0, lo=0.0,
        doc='how long a verified (account, certificate, password) is remembered after its last use; 0: off',
    ),
    Setting(
        'auth.credential_cache_max_seconds', 'float', 3600.0, lo=0.0,
        doc=('a remembered password is verified again this long after its last verification, however busy the '
             'client'),
    ),
    Setting(
        'auth.strip_domain', 'bool', True,
        doc=("a Basic user `DOMAIN\\name` or `name@domain` (as Windows sends it) is the certificate's account "
             'when `name` is exactly its name; `false`: only the account name'),
    ),
    Setting(
        'auth.browser_token_seconds', 'int', 3600, lo=10, hi=604800,
        doc=('how long a page shown in a browser (the folder listing, the two-factor page) may send changes: '
             'its anti-forgery token is accepted this long after the page was loaded, 10–604800; a listing '
             'open longer asks the user to reload it'),
    ),
    Setting(
        'audit.file', 'path', 'state/audit.log',
        doc='the audit log (JSON lines); `-` for standard error',
    ),
    Setting(
        'audit.tls_refusals_per_second', 'int', 5, lo=1, hi=10000,
        doc=('audit lines for refused TLS handshakes (reasons `no_cert`, `unknown_ca`, `cert_expired`, '
             '`bad_eku`, `tls_error`) per second from one address (IPv6: its /64), 1–10000; past it one '
             'summary line per second says how many more were suppressed (the metrics count them all)'),
    ),
    Setting(
        'audit.tls_refusals_total_per_second', 'int', 20, lo=1, hi=100_000,
        doc=('the same over all addresses, 1–100000 (a line is about 340 bytes: 20 a second is at most 590 MB '
             'a day, for logrotate to keep)'),
    ),
    Setting(
        'defaults.require', 'list', ('password',),
        doc='factors beyond the certificate where a share does not say (and for the root listing)',
    ),
    Setting(
        'totp.issuer', 'str', 'davserver',
        doc='issuer name shown in authenticator apps',
    ),
    Setting(
        'totp.grant_idle_seconds', 'float', 1800.0, lo=1.0,
        doc='a TOTP grant ends after this long without a request',
    ),
    Setting(
        'totp.grant_absolute_seconds', 'float', 43_200.0, lo=1.0,
        doc='… and at the latest this long after the code was entered',
    ),
    Setting(
        'throttle.lock_after', 'int', 10, lo=1, hi=1_000_000,
        doc=('failed sign-ins of one factor (password, or TOTP code) within the window that lock out an '
             "account + certificate; a success of one factor never clears another's failures"),
    ),
    Setting(
        'throttle.max_consecutive_failures', 'int', 100, lo=0, hi=1_000_000,
        doc=('consecutive failures of one factor for an account, over all its certificates and windows, that '
             'lock the account out until `davserver user unlock NAME` (NIST SP 800-63B §5.2.2); a success of '
             'that factor restarts the count; `0` turns it off'),
    ),
    Setting(
        'throttle.address_lock_after', 'int', 5, lo=1, hi=1_000_000,
        doc=('distinct accounts locked out from one address within the window that lock out the address (one '
             'account counts once, whatever its certificates)'),
    ),
    Setting(
        'throttle.lock_seconds', 'float', 900.0, lo=0.0,
        doc='how long a lockout lasts (`davserver user unlock NAME` or `--address ADDR` lifts it early)',
    ),
    Setting(
        'throttle.window_seconds', 'float', 900.0, lo=1.0,
        doc='the window failures are counted in',
    ),
    Setting(
        'throttle.delay_after', 'int', 3, lo=0, hi=1_000_000,
        doc='failures answered at once; after that answers are held back …',
    ),
    Setting(
        'throttle.base_delay_seconds', 'float', 0.25, lo=0.0,
        doc='… by this much, doubling with each further failure …',
    ),
    Setting(
        'throttle.max_delay_seconds', 'float', 4.0, lo=0.0,
        doc='… up to this',
    ),
    Setting(
        'throttle.count_repeats', 'bool', False,
        doc=('`false`: a failure repeating one already counted within the window (same certificate, same user '
             "and password) counts once, so a client's retry burst does not lock its user out; wrong TOTP "
             'codes always count; `true`: every failure counts'),
    ),
    Setting(
        'state.backend', 'enum', 'sqlite', choices=('sqlite', 'redis'),
        doc=('where runtime state lives (used TOTP steps, grants, failure counters, sign-in lockouts, WebDAV '
             'locks and properties)'),
    ),
    Setting(
        'state.path', 'path', 'state/state.db',
        doc='the SQLite file (WAL mode; the CLI and the server may use it at the same time)',
    ),
    Setting(
        'state.busy_timeout_seconds', 'float', 10.0, lo=0.05, hi=300.0,
        doc=("with `backend: sqlite`: how long a write waits for another process's write lock on the file "
             "(a worker's, the CLI's); past it the request is refused with 503, never let through "
             '(docs/scaling.md, "What holds across workers")'),
    ),
    Setting(
        'state.sweep_seconds', 'float', 120.0, lo=1.0, hi=3600.0,
        doc=('how often the files of uploads cut off by a crash are swept while the server runs (besides at '
             'start and when a worker dies); a leftover goes within `state.sweep_age_seconds` plus this '
             '(docs/scaling.md, "The sweep of leftover uploads")'),
    ),
    Setting(
        'state.sweep_age_seconds', 'float', 300.0, lo=0.0, hi=86400.0,
        doc=('with `backend: redis`: a leftover upload file is swept only once untouched this long, so '
             "another node's upload on a network filesystem whose locks this machine cannot see stays "
             '(with `sqlite` the writer\'s lock alone decides)'),
    ),
    Setting(
        'state.url', 'str', 'redis://127.0.0.1:6379/0',
        doc='with `backend: redis`: the Redis server (`rediss://` for TLS)',
    ),
    Setting(
        'state.prefix', 'str', 'davserver:',
        doc='with `backend: redis`: the start of every key, one per deployment',
    ),
    Setting(
        'state.password_file', 'path', None,
        doc='with `backend: redis`: a file holding the Redis password',
    ),
    Setting(
        'state.sentinels', 'list', (),
        doc=('with `backend: redis`: Redis Sentinel addresses (`host:port`, IPv6 as `[addr]:port`); when set, '
             'the master is found through them and followed across a failover, `state.url` gives only the '
             'database number, and the password file serves the sentinels too (docs/scaling.md)'),
    ),
    Setting(
        'state.sentinel_service', 'str', 'mymaster',
        doc='with `state.sentinels`: the master name the sentinels monitor (`sentinel monitor NAME …`)',
    ),
    Setting(
        'state.wait_replicas', 'int', 1, lo=0, hi=16,
        doc=('with `state.sentinels`: replicas that must confirm a used TOTP step or a new WebDAV lock (Redis '
             '`WAIT`) before it counts, so a failover cannot lose it; fewer within `state.wait_seconds`: 503, '
             'the code or lock is not accepted (0: do not wait)'),
    ),
    Setting(
        'state.wait_seconds', 'float', 1.0, lo=0.01, hi=3.0,
        doc='with `state.sentinels`: how long such a write waits for the replicas (0.01 to 3)',
    ),
    Setting(
        'locks.max_timeout_seconds', 'int', 3600, lo=1, hi=2_592_000,
        doc=('longest a WebDAV lock is granted for ("Infinite" and longer requests get this); locks and dead '
             'properties are kept in the state file and survive a restart'),
    ),
    Setting(
        'locks.max_per_resource', 'int', 64, lo=1, hi=1_000_000,
        doc='live WebDAV locks on one resource (only shared locks can pile up); past it LOCK gets `507`',
    ),
    Setting(
        'locks.max_per_account', 'int', 1000, lo=1, hi=100_000_000,
        doc='live WebDAV locks one account holds on all resources; past it LOCK gets `507`',
    ),
    Setting(
        'locks.max_owner_bytes', 'int', 4096, lo=256, hi=1_048_576,
        doc=("bytes of one lock's `<D:owner>` (its XML); a LOCK with a larger one gets `507` (reason "
             '`lock_owner_too_large`)'),
    ),
    Setting(
        'locks.write_mark_seconds', 'float', 30.0, lo=1.0, hi=3600.0,
        doc=('with `state.backend: redis`: how long the mark of an upload in flight (a LOCK of that resource '
             'meanwhile gets `423` on every node) lasts unless its process renews it, every third of this; '
             'the longest a node killed mid-upload keeps refusing LOCKs of that resource, 1–3600'),
    ),
    Setting(
        'properties.max_value_bytes', 'int', 65_536, lo=1024, hi=1_073_741_824,
        doc=('largest dead property value (its XML); a PROPPATCH over any `properties` bound gets `507` for '
             'that property in its `207` and stores nothing (RFC 4918 §9.2.1)'),
    ),
    Setting(
        'properties.max_per_resource', 'int', 256, lo=1, hi=1_000_000,
        doc='dead properties on one resource',
    ),
    Setting(
        'properties.max_bytes_per_resource', 'int', 1_048_576, lo=1024, hi=17_179_869_184,
        doc='bytes of dead property names + values on one resource',
    ),
    Setting(
        'properties.max_propfind_bytes', 'int', 67_108_864, lo=65_536, hi=1_099_511_627_776,
        doc=('bytes one PROPFIND answer may carry, estimated before it is built as (members + 1) × (the names '
             'asked for + per-entry overhead) + dead property bytes + lockdiscovery; a larger one is refused '
             '(`507`, reason `answer_too_large`)'),
    ),
    Setting(
        'properties.max_propfind_names', 'int', 1000, lo=32, hi=1_000_000,
        doc=('property names one PROPFIND may ask for (clients ask for ≤ 30); more: `507` (reason '
             '`propfind_names_exceeded`)'),
    ),
    Setting(
        'properties.checksums', 'bool', True,
        doc=('SHA-1 and MD5 of every upload, computed while it streams, kept in an xattr stamped with the '
             "file's size, mtime and inode, and answered as `oc:checksums` (rclone `vendor=owncloud`); a file "
             'changed by other means has none until uploaded again, except an in-place edit that keeps the '
             'size and sets the old mtime back, which keeps the old ones (`rclone check --download` compares '
             'the bytes); `false`: no hashing'),
    ),
    Setting(
        'enrolment.enabled', 'bool', False,
        doc=("`true`: the enrolment listener runs and `davserver cert invite` makes links; an invitation's "
             "visitor signs in with the account's password (and TOTP code) and gets a certificate bound to the "
             'account, as `cert issue` makes it'),
    ),
    Setting(
        'enrolment.bind', 'str', None, shown='server.bind',
        doc=('address of the enrolment listener (HTTPS with the server certificate, no client certificate '
             'asked for; serves only `/enrol/` pages, 404 for everything else)'),
    ),
    Setting(
        'enrolment.port', 'int', 8444, lo=0, hi=65535,
        doc='its TCP port',
    ),
    Setting(
        'enrolment.url', 'str', None, shown='https://NAME:PORT',
        doc=('base URL printed in invitations; default: the first DNS name or IP in the server certificate and '
             '`enrolment.port`'),
    ),
    Setting(
        'enrolment.invite_seconds', 'float', 259_200.0, lo=60.0, hi=31_536_000.0,
        doc=('how long an invitation link stays valid (72 h; 60 s to one year); `cert invite --valid-for` '
             'overrides it per link'),
    ),
    Setting(
        'enrolment.invite_max_failures', 'int', 5, lo=1, hi=1000,
        doc='failed sign-ins on one invitation that burn it (then: 410, a new invitation is needed)',
    ),
    Setting(
        'enrolment.max_open_invitations', 'int', 1000, lo=1, hi=1_000_000,
        doc=('invitations kept at once (expired, spent and burned ones are pruned); `cert invite` past it is '
             'refused'),
    ),
    Setting(
        'enrolment.renew_before_days', 'int', 30, lo=0, hi=3650,
        doc='a client certificate this close to expiry is offered for renewal, with a banner in the listing',
    ),
    Setting(
        'enrolment.revoke_renewed', 'bool', False,
        doc=('`true`: the old certificate is revoked once its renewal has been used; `false`: it stays valid '
             'until it expires'),
    ),
    Setting(
        'enrolment.threads', 'int', 4, lo=1, hi=64,
        doc=('request workers of the enrolment listener (1–64), apart from `server.threads`; issuing costs '
             'about 0.4 s of CPU'),
    ),
    Setting(
        'enrolment.handshakes_total', 'int', 64, lo=1, hi=100_000,
        doc=('pending TLS handshakes on the enrolment listener, over all addresses (each address also at most '
             '`server.handshakes_per_address`)'),
    ),
    Setting(
        'enrolment.header_bytes', 'int', 16384, lo=4096, hi=1_048_576,
        doc=('largest request line + header section on the enrolment listener (4096 to 1048576); past it: 414 '
             '(a long request line) or 413 (long headers)'),
    ),
    Setting(
        'enrolment.keep_alive_limit', 'int', 32, lo=0, hi=100_000,
        doc=('kept-alive connections on the enrolment listener; past it answers close the connection (`0`: '
             'never kept alive)'),
    ),
    Setting(
        'enrolment.form_bytes', 'int', 16384, lo=1024, hi=1_048_576,
        doc=('largest enrolment or renewal form body, CSR included (1024 to 1048576); longer: 413, unread, and '
             'the connection closes'),
    ),
    Setting(
        'enrolment.csr_bytes', 'int', 65_536, lo=1024, hi=1_048_576,
        doc=('largest CSR (PEM) that the enrolment and renewal pages and `davserver cert sign` accept (1024 to '
             '1048576)'),
    ),
    Setting(
        'enrolment.header_phase_per_address', 'int', 2, lo=1, hi=64,
        doc=('connections of one address (IPv6: its /64) that may hold an enrolment worker while their request '
             'headers or form body arrive (1–64; at most `enrolment.threads` − 1 take effect); one more ends '
             'the oldest of them (408), so one address trickling bytes cannot keep other visitors waiting'),
    ),
    Setting(
        'metrics.enabled', 'bool', False,
        doc=('start the health and metrics listener: plain HTTP, `/healthz`, `/readyz`, `/metrics` '
             '(Prometheus; see [docs/metrics.md](docs/metrics.md)), 404 for anything else'),
    ),
    Setting(
        'metrics.bind', 'str', '127.0.0.1',
        doc='its address: loopback or a monitoring network only (no TLS, no authentication)',
    ),
    Setting(
        'metrics.port', 'int', 9180, lo=0, hi=65535,
        doc='its TCP port',
    ),
    Setting(
        'shares.NAME.path', 'path', None,
        doc='folder served at `/NAME/` (NAME: lower-case letters, digits, `.`, `_`, `-`)',
    ),
    Setting(
        'shares.NAME.read_only', 'bool', False,
        doc='refuse every write',
    ),
    Setting(
        'shares.NAME.readers', 'list', (),
        doc='accounts, `@groups` or `*` that may read',
    ),
    Setting(
        'shares.NAME.writers', 'list', (),
        doc='accounts, `@groups` or `*` that may read and write; a share with neither lets nobody in',
    ),
    Setting(
        'shares.NAME.macos_clutter', 'enum', 'allow', choices=('allow', 'hide', 'refuse'),
        doc=('macOS metadata files (`._*`, `.DS_Store`): `allow`, `hide` (stored, not listed) or `refuse` '
             '(403)'),
    ),
    Setting(
        'shares.NAME.require', 'list', None, shown='defaults.require',
        doc='`[]` (certificate only, no password prompt), `[password]` or `[password, totp]`',
    ),
)

_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}
if len(_BY_KEY) != len(SETTINGS):
    raise ValueError("a setting is listed twice")

#: The top-level sections of davserver.yaml, in file order.
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.key.partition(".")[0] for s in SETTINGS))


def setting(key: str) -> Setting:
    """The setting of the dotted ``key`` (``"server.port"``, ``"shares.NAME.path"``);
    KeyError for a key that is not one."""
    return _BY_KEY[key]


def keys_of(section: str) -> tuple[str, ...]:
    """The names a section accepts, in order: ``keys_of("server")`` → ``("bind", "port", …)``;
    ``keys_of("shares.NAME")`` for the keys of one share."""
    return tuple(s.name for s in SETTINGS if s.section == section)


def render_readme_table() -> str:
    """The README's configuration table, one row per setting in schema order:
    ``| `key` | `default` | doc |`` (Markdown; `python -m davserver.settings_schema`
    prints it to paste after a change here)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = s.default_text()
        lines.append(f"| `{s.key}` | {default if default == '—' else f'`{default}`'} | {s.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_readme_table(), end="")
