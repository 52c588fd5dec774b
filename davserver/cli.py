"""The `davserver` command: the only module that prints, prompts or exits.

Library code raises ConfigError, StartupError or PKIError; they end here as a
one-line message on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import click
import segno

from . import instance
from .accounts import Account, load_accounts
from .addresses import canonical_address
from .auth import totp
from .auth.lockout import Lockouts
from .auth.passwords import hash_password
from .check import PING_SECONDS, unknown_principals
from .config import Config, ConfigError, Home, load_config, read_config
from .errors import StartupError
from .invitations import InvitationError, Invitations, default_base_url, server_fingerprint
from .issuance import IssuanceError
from .pki import CertificateAuthority, IssuedCert, PKIError, load_crl_serials
from .settings_schema import setting
from .stepup import PREFIX as STEPUP_PREFIX
from .store import StateStore, open_store
from .store.base import StoreUnavailable

__all__ = ["main"]

_MIN_PASSWORD = 8


class _Ctx:
    def __init__(self, home: Path) -> None:
        self.home = Home(home.resolve())


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _failure(exc: Exception) -> str:
    """The one line a command's failure ends as (exit status 2).

    The library's typed errors carry their own message; an OSError names the file and
    what the system said; anything else is a bug, said so in one line (the traceback with
    ``DAVSERVER_DEBUG=1``)."""
    if isinstance(exc, ConfigError | StartupError | PKIError | IssuanceError | InvitationError):
        return str(exc)
    if isinstance(exc, StoreUnavailable):
        return f"{exc} (check state.url in the configuration, or start the store)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return (f"unexpected {type(exc).__name__}: {exc} (a bug in davserver: please report it with the "
            "traceback that DAVSERVER_DEBUG=1 prints)")


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's typed errors into a one-line message and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StartupError, PKIError, IssuanceError, InvitationError, StoreUnavailable,
                PermissionError) as exc:
            _fail(_failure(exc))

    return wrapper


class _Main(click.Group):
    """The command group: whatever a command meets ends as one line on standard error
    and exit status 2, never a traceback (click's own usage errors and exits pass)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The group's own options (--home, an unknown option) are parsed before invoke.
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `davserver` alone: the help, as click shows it
        except click.UsageError as exc:
            _fail(f"{exc.format_message()} (see `{ctx.command_path} --help`)")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `davserver share` alone: its help, as click shows it
        except click.UsageError as exc:  # click prints usage, a hint and the error: three lines
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            _fail(f"{exc.format_message()} (see `{where} --help`)")
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("DAVSERVER_DEBUG"):
                raise
            _fail(_failure(exc))


def _home(ctx: click.Context, *, instance: bool = True) -> Home:
    """The instance folder; with ``instance`` (every command but init and quickstart) a
    folder without config/davserver.yaml is refused before anything is written there."""
    obj: _Ctx = ctx.find_object(_Ctx)  # type: ignore[assignment]
    home = obj.home
    if instance and not home.config_file.is_file():
        _fail(f"{home.root} is no davserver instance (no config/davserver.yaml): pass --home or set "
              "DAVSERVER_HOME to the instance folder, or run `davserver init` there")
    return home


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A text table: every column as wide as its widest cell, two spaces apart; the last
    column is not padded (a path or a list may be long)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _read_secret_stdin(what: str) -> str:
    line = sys.stdin.readline()
    value = line.rstrip("\r\n")
    if not value:
        _fail(f"no {what} on standard input")
    return value


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        password = _read_secret_stdin("password")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        _fail("no terminal to ask for the password: pass it with --password-stdin")
    if len(password) < _MIN_PASSWORD:
        _fail(f"the password must have at least {_MIN_PASSWORD} characters")
    return password


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="davserver", prog_name="davserver", message="%(prog)s %(version)s")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DAVSERVER_HOME",
    default=".",
    show_default="current folder, or $DAVSERVER_HOME",
    help="Instance folder holding config/, certs/, state/ and data/.",
)
@click.pass_context
def main(ctx: click.Context, home: Path) -> None:
    """davserver: WebDAV over TLS with client certificates, passwords and TOTP."""
    ctx.obj = _Ctx(home)


# --- init -------------------------------------------------------------------------


@main.command()
@click.option("--hostname", "hostnames", multiple=True, help="Extra DNS name or IP for the server certificate.")
@click.option("--force", is_flag=True, help="Replace an existing CA (every issued certificate stops working).")
@click.pass_context
@_handled
def init(ctx: click.Context, hostnames: tuple[str, ...], force: bool) -> None:
    """Create the CA, server certificate, CRL, default config and accounts file."""
    home = _home(ctx, instance=False)
    result = instance.init_instance(home, hostnames, force=force)
    click.echo(f"CA and server certificate written to {home.certs_dir}")
    click.echo(f"configuration: {home.config_file}" + (" (created)" if result.created_config else " (kept)"))
    click.echo(f"accounts:      {home.accounts_file}" + (" (created)" if result.created_accounts else " (kept)"))
    click.echo("next: davserver user add NAME, then davserver cert issue NAME")


# --- check ------------------------------------------------------------------------


class _Seconds(click.FloatRange):
    """click's FloatRange lets nan through (every comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


@main.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "findings": [...]} as JSON.')
@click.option("--timeout", type=_Seconds(0.1, 60.0), default=PING_SECONDS, show_default=True, metavar="SECONDS",
              help="How long the state store may take to answer.")
@click.pass_context
@_handled
def check(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Check the instance without serving: configuration, accounts, file modes, certificate
    and CRL dates, share folders, the state store. Exit 0 when all is well, 1 with findings,
    2 when davserver.yaml itself is wrong."""
    from .check import check_instance

    findings = check_instance(_home(ctx), timeout=timeout)
    if as_json:
        click.echo(json.dumps({"ok": not findings, "findings": [f.to_json() for f in findings]}, indent=2))
    else:
        for f in findings:
            click.echo(f.line())
        if not findings:
            click.echo("all is well: configuration, accounts, file modes, certificates, shares and state store")
    if findings:
        sys.exit(1)


# --- certificates -----------------------------------------------------------------


@main.group()
def cert() -> None:
    """Issue, revoke and list client certificates."""


def _cert_json(c: IssuedCert) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "account": c.account,
        "fingerprint": c.fingerprint,
        "not_before": _iso(c.not_before),
        "not_after": _iso(c.not_after),
        "email": c.email,
        "status": c.status,
    }


@cert.command("issue")
@click.argument("account")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--email", help="E-mail address for the certificate's subject alternative name.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Path prefix: writes PREFIX.p12, PREFIX.crt, PREFIX.key [default: certs/clients/ACCOUNT].")
@click.option("--p12-password-stdin", is_flag=True, help="Read the PKCS#12 password from standard input.")
@click.option("--legacy-p12", is_flag=True,
              help="3DES/SHA-1 PKCS#12 for Android 13 and older, iOS and older macOS and Windows importers.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def cert_issue(ctx: click.Context, account: str, days: int, email: str | None, out: Path | None,
               p12_password_stdin: bool, legacy_p12: bool, as_json: bool) -> None:
    """Issue a client certificate for ACCOUNT and bind it to the account."""
    home = _home(ctx)
    accounts = load_accounts(home.accounts_file)
    if account not in accounts:
        _fail(f"no account {account!r}: create it first with `davserver user add {account}`")
    generated = not p12_password_stdin
    password = instance.generate_password() if generated else _read_secret_stdin("PKCS#12 password")
    prefix = out if out is not None else instance.next_client_prefix(home, account)
    issued = CertificateAuthority(home.certs_dir).issue_client_cert(
        account, out_prefix=prefix, p12_password=password.encode("utf-8"), days=days, email=email,
        legacy_p12=legacy_p12,
    )
    instance.bind_certificate(home, issued)
    if as_json:
        data = {**_cert_json(issued), "paths": issued.paths}
        if generated:
            data["p12_password"] = password
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"issued certificate {issued.serial} for {account}, valid until {_iso(issued.not_after)}")
    click.echo(f"  fingerprint: {issued.fingerprint}")
    for kind, path in issued.paths.items():
        click.echo(f"  {kind:4} {path}")
    if generated:
        click.echo(f"  PKCS#12 password (shown once): {password}")


@cert.command("revoke")
@click.argument("serial", required=False)
@click.option("--account", help="Revoke every valid certificate of this account.")
@click.pass_context
@_handled
def cert_revoke(ctx: click.Context, serial: str | None, account: str | None) -> None:
    """Revoke a certificate by SERIAL, or all of an account's with --account."""
    if bool(serial) == bool(account):
        _fail("give either a SERIAL or --account NAME")
    home = _home(ctx)
    ca = CertificateAuthority(home.certs_dir)
    if account:
        revoked = ca.revoke_account(account)
        if not revoked:
            if account in load_accounts(home.accounts_file) or any(c.account == account for c in ca.list_issued()):
                _fail(f"{account} has no valid certificate to revoke (see `davserver cert list`)")
            _fail(f"no account {account!r} and no certificate issued to it (see `davserver user list`)")
    else:
        current = ca.get_issued(serial or "")
        if current.status == "revoked":
            _fail(f"certificate {current.serial} ({current.account}) is already revoked")
        revoked = [ca.revoke(current.serial)]
    instance.unbind_certificates(home, revoked)
    for c in revoked:
        click.echo(f"revoked {c.serial} ({c.account})")


@cert.command("crl")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Days until the CRL's nextUpdate.")
@click.pass_context
@_handled
def cert_crl(ctx: click.Context, days: int) -> None:
    """Re-sign the CRL now (running servers also do it before it falls due)."""
    ca = CertificateAuthority(_home(ctx).certs_dir)
    ca.write_crl(next_update_days=days)
    revoked, next_update = load_crl_serials(ca.crl_path)
    click.echo(f"CRL re-signed: {len(revoked)} revoked, next update {_iso(next_update) if next_update else '-'}")


@cert.command("list")
@click.option("--expiring", "expiring", type=click.IntRange(0, 36500), metavar="DAYS",
              help="Only valid certificates that expire within DAYS days, soonest first.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handled
def cert_list(ctx: click.Context, expiring: int | None, as_json: bool) -> None:
    """List issued client certificates with their status."""
    ca = CertificateAuthority(_home(ctx).certs_dir)
    items = ca.list_issued() if expiring is None else ca.list_expiring(expiring)
    if as_json:
        click.echo(json.dumps([_cert_json(c) for c in items], indent=2))
        return
    click.echo(_table(("SERIAL", "ACCOUNT", "STATUS", "NOT AFTER", "FINGERPRINT"),
                      [(c.serial, c.account, c.status, _iso(c.not_after), f"{c.fingerprint[:16]}…") for c in items]))


# --- enrolment ----------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
#: ``cli invite --valid-for`` takes what ``enrolment.invite_seconds`` may be (seconds).
_MIN_INVITE_SECONDS = float(setting("enrolment.invite_seconds").lo or 0)
_MAX_INVITE_SECONDS = float(setting("enrolment.invite_seconds").hi or 0)


def _duration(text: str) -> float:
    """``90`` (seconds), ``45m``, ``72h``, ``3d``, ``1w``, or a sum such as ``1d12h``."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        return float(cleaned)
    parts = _DURATION_RE.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(text)
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _enrolment_account(home: Home, account: str) -> None:
    """Refuse (exit 2, one line) an invitation nobody could use."""
    config = load_config(home)
    if not config.enrolment.enabled:
        _fail(f"enrolment is disabled: set enrolment.enabled: true in {home.config_file} and restart the server")
    accounts = load_accounts(home.accounts_file)
    if account not in accounts:
        _fail(f"no account {account!r}: create it first with `davserver user add {account}`")
    if not accounts[account].enabled:
        _fail(f"account {account!r} is disabled: enable it first with `davserver user enable {account}`")
    if accounts[account].password_hash is None:
        _fail(f"account {account!r} has no password to sign in with: set one with `davserver user passwd {account}`")


@contextlib.contextmanager
def _invitations(home: Home, *, with_url: bool = False) -> Iterator[Invitations]:
    """The instance's invitations on the state store, reachable (:func:`_reachable_store`)
    and closed after; ``with_url`` works out the link's base (enrolment.url, else the server
    certificate's name) before the store is opened, so nothing is stored when it fails."""
    config = load_config(home)
    base = default_base_url(config) if with_url else None
    with _reachable_store(home) as store:
        yield Invitations(store, config.enrolment, base_url=base)


@cert.command("invite")
@click.argument("account")
@click.option("--valid-for", "valid_for", metavar="DURATION",
              help="How long the link works: 90 (seconds), 45m, 72h, 3d, 1w, 1d12h "
                   "[default: enrolment.invite_seconds].")
@click.option("--revoke", is_flag=True, help="Withdraw every open invitation of ACCOUNT instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def cert_invite(ctx: click.Context, account: str, valid_for: str | None, revoke: bool, as_json: bool) -> None:
    """Make a one-time enrolment link for ACCOUNT (shown as a QR code), or --revoke its links.

    Whoever opens the link signs in with the account's password (and TOTP code) and
    receives a certificate bound to the account, as `davserver cert issue` makes it.
    """
    home = _home(ctx)
    if revoke:
        if valid_for is not None:
            _fail("--valid-for makes a link; --revoke withdraws them: give one of the two")
        if account not in load_accounts(home.accounts_file):
            _fail(f"no account {account!r} (see `davserver user list`)")
        with _invitations(home) as invitations:
            n = invitations.revoke(account)
        click.echo(json.dumps({"account": account, "revoked": n}, indent=2) if as_json
                   else f"{n} invitation{'s' if n != 1 else ''} of {account} withdrawn")
        return
    seconds: float | None = None
    if valid_for is not None:
        try:
            seconds = _duration(valid_for)
        except ValueError:
            _fail(f"--valid-for: {valid_for!r} is not a duration (e.g. 90, 45m, 72h, 3d, 1w)")
        if not _MIN_INVITE_SECONDS <= seconds <= _MAX_INVITE_SECONDS:
            _fail(f"--valid-for: {valid_for!r} is not between 1 minute and 365 days")
    _enrolment_account(home, account)
    with _invitations(home, with_url=True) as invitations:
        token, invitation = invitations.create(account, valid_for=seconds)
    url = invitations.url(token)
    fingerprint = server_fingerprint(load_config(home))
    if as_json:
        click.echo(json.dumps({"account": account, "url": url, "expires": _iso(invitation.expires),
                               "server_fingerprint": fingerprint}, indent=2))
        return
    qr = io.StringIO()
    segno.make(url, error="m").terminal(out=qr, compact=True)
    click.echo(qr.getvalue())
    click.echo(f"Enrolment link for {account} (works once, until {_iso(invitation.expires)}):")
    click.echo(f"  {url}")
    click.echo("Send it to the user; the page asks for the account's password (and TOTP code).")
    if fingerprint:
        click.echo("Server certificate SHA-256 fingerprint (send it by another way, e.g. read it out; the user "
                   "compares it in the browser before typing a password, docs/clients.md):")
        click.echo(f"  {fingerprint}")


@cert.command("invites")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def cert_invites(ctx: click.Context, as_json: bool) -> None:
    """List open enrolment invitations (never their links: those are shown once).

    An invitation of a disabled or removed account is not listed: its link answers 410
    (withdrawn) as long as the account is disabled."""
    home = _home(ctx)
    with _invitations(home) as invitations:
        items = invitations.open()
    accounts = load_accounts(home.accounts_file)
    items = [i for i in items if i.account in accounts and accounts[i.account].enabled]
    rows = [{"account": i.account, "created": _iso(i.created), "expires": _iso(i.expires), "failures": i.failures}
            for i in items]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(("ACCOUNT", "CREATED", "EXPIRES", "FAILURES"),
                      [(str(r["account"]), str(r["created"]), str(r["expires"]), str(r["failures"]))
                       for r in rows]))


def _writable_prefix(prefix: Path) -> Path:
    """Check, before anything is issued, that PREFIX.* can be written (a failed command changes nothing)."""
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--out: cannot create {prefix.parent}: {exc.strerror}")
    if not os.access(prefix.parent, os.W_OK | os.X_OK):
        _fail(f"--out: {prefix.parent} is not writable (choose another --out PREFIX)")
    return prefix


def _write_delivery(prefix: Path, files: dict[str, tuple[bytes, int]]) -> dict[str, str]:
    from .files import write_atomic

    paths: dict[str, str] = {}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for ext, (data, mode) in files.items():
        path = prefix.with_name(f"{prefix.name}.{ext}")
        write_atomic(path, data, mode)
        paths[ext] = str(path)
    return paths


@cert.command("renew")
@click.argument("serial")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Path prefix: writes PREFIX.p12 and PREFIX.crt [default: certs/clients/ACCOUNT-N].")
@click.option("--p12-password-stdin", is_flag=True, help="Read the PKCS#12 password from standard input.")
@click.option("--legacy-p12", is_flag=True,
              help="3DES/SHA-1 PKCS#12: for Android 13 and older, iOS, older macOS and Windows importers.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def cert_renew(ctx: click.Context, serial: str, out: Path | None, p12_password_stdin: bool, legacy_p12: bool,
               as_json: bool) -> None:
    """Issue a new certificate for the account of certificate SERIAL and bind it; the old one
    stays valid until it expires (revoke it with `davserver cert revoke SERIAL`), or, with
    enrolment.revoke_renewed, until the new one is first used."""
    from .renewal import renew_serial

    home = _home(ctx)
    revoke_renewed = load_config(home).enrolment.revoke_renewed
    old = CertificateAuthority(home.certs_dir).get_issued(serial)
    if old.status == "revoked":
        _fail(f"certificate {old.serial} is revoked: issue a new one with `davserver cert issue {old.account}`")
    if old.account not in load_accounts(home.accounts_file):
        _fail(f"no account {old.account!r} any more: create it with `davserver user add {old.account}`")
    generated = not p12_password_stdin
    password = instance.generate_password() if generated else _read_secret_stdin("PKCS#12 password")
    prefix = _writable_prefix(out if out is not None else instance.next_client_prefix(home, old.account))
    # the same path as a holder's renewal (renewal.renew_serial), revoke_renewed included;
    # the store answers first, so its outage issues nothing
    with _reachable_store(home) if revoke_renewed else contextlib.nullcontext() as store:
        delivery = renew_serial(home, store, old.serial, p12_password=password)
    p12 = delivery.legacy_p12 if legacy_p12 else delivery.p12
    assert p12 is not None
    paths = _write_delivery(prefix, {"p12": (p12, 0o600), "crt": (delivery.certificate_pem, 0o644)})
    issued = delivery.issued
    if as_json:
        data = {**_cert_json(issued), "renews": old.serial, "paths": paths}
        if generated:
            data["p12_password"] = password
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"renewed {old.serial} as {issued.serial} for {issued.account}, valid until {_iso(issued.not_after)}")
    click.echo(f"  fingerprint: {issued.fingerprint}")
    for kind, path in paths.items():
        click.echo(f"  {kind:4} {path}")
    if generated:
        click.echo(f"  PKCS#12 password (shown once): {password}")
    if revoke_renewed:
        click.echo(f"  {old.serial} is revoked at the first request made with {issued.serial} "
                   "(enrolment.revoke_renewed)")
    else:
        click.echo(f"  {old.serial} stays valid until {_iso(old.not_after)}")


@cert.command("sign")
@click.argument("account")
@click.option("--csr", "csr", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate signing request (the key stays where it was made).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Path prefix: writes PREFIX.crt [default: certs/clients/ACCOUNT-N].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def cert_sign(ctx: click.Context, account: str, csr: Path, out: Path | None, as_json: bool) -> None:
    """Sign a CSR for ACCOUNT and bind the certificate: subject and extensions are those of
    `davserver cert issue` (what the CSR asks for is ignored); its key must be RSA >= 2048
    bits, EC P-256/384/521 or Ed25519."""
    from .issuance import check_csr, csr_limit, deliver

    home = _home(ctx)
    if account not in load_accounts(home.accounts_file):
        _fail(f"no account {account!r}: create it first with `davserver user add {account}`")
    try:
        csr_pem = csr.read_bytes()
    except OSError as exc:
        _fail(f"--csr: cannot read {csr}: {exc.strerror}")
    try:
        check_csr(csr_pem, max_bytes=csr_limit(home))
    except IssuanceError as exc:
        _fail(f"--csr {csr}: {exc}")
    prefix = _writable_prefix(out if out is not None else instance.next_client_prefix(home, account))
    delivery = deliver(home, account, csr_pem=csr_pem)
    paths = _write_delivery(prefix, {"crt": (delivery.certificate_pem, 0o644)})
    issued = delivery.issued
    if as_json:
        click.echo(json.dumps({**_cert_json(issued), "paths": paths}, indent=2))
        return
    click.echo(f"signed certificate {issued.serial} for {account}, valid until {_iso(issued.not_after)}")
    click.echo(f"  fingerprint: {issued.fingerprint}")
    click.echo(f"  crt  {paths['crt']}")


# --- users -----------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage accounts (config/accounts.yaml)."""


@user.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--groups", default="", help="Comma-separated groups, e.g. staff,admins.")
@click.pass_context
@_handled
def user_add(ctx: click.Context, name: str, password_stdin: bool, groups: str) -> None:
    """Create an account with a password (hashed with argon2id)."""
    home = _home(ctx)
    group_set = frozenset(g.strip() for g in groups.split(",") if g.strip())
    if name in load_accounts(home.accounts_file):
        _fail(f"account {name!r} already exists (use `davserver user passwd {name}`)")
    password = _new_password(password_stdin)
    from .accounts import ACCOUNT_NAME_RE

    if not ACCOUNT_NAME_RE.match(name):
        _fail(f"{name!r} is not a valid account name (letters, digits, '.', '_', '@', '-'; at most 64)")
    instance.add_account(home, Account(name=name, password_hash=hash_password(password), groups=group_set))
    click.echo(f"account {name} created; issue its certificate with `davserver cert issue {name}`")


def _edit_account(ctx: click.Context, name: str, **changes: Any) -> None:
    if not instance.edit_account(_home(ctx), name, **changes):
        _fail(f"no account {name!r} (see `davserver user list`)")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.pass_context
@_handled
def user_passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a new password (ends cached logins of this account)."""
    home = _home(ctx)
    if name not in load_accounts(home.accounts_file):
        _fail(f"no account {name!r} (see `davserver user list`)")
    hashed = hash_password(_new_password(password_stdin))
    with _reachable_store(home) as store:
        _edit_account(ctx, name, password_hash=hashed)
        store.end_grants(name)
    click.echo(f"password of {name} changed")


def _store(home: Home) -> StateStore:
    state = load_config(home).state
    try:
        return open_store(state)
    except OSError as exc:
        _fail(f"state.password_file: cannot read {state.password_file}: {exc.strerror}")


@contextlib.contextmanager
def _reachable_store(home: Home) -> Iterator[StateStore]:
    """The state store, answered a ping before the caller writes anything: an account
    edit that must also end grants is not half done when the store is down (StoreUnavailable)."""
    store = _store(home)
    try:
        store.ping()
        yield store
    finally:
        store.close()


@user.group("totp")
def user_totp() -> None:
    """Enrol or remove an account's TOTP authenticator."""


@user_totp.command("enable")
@click.argument("name")
@click.option("--required", is_flag=True, help="Demand TOTP for this account on every share.")
@click.option("--json", "as_json", is_flag=True, help="Print secret and otpauth:// URI as JSON.")
@click.pass_context
@_handled
def user_totp_enable(ctx: click.Context, name: str, required: bool, as_json: bool) -> None:
    """Create a new TOTP secret (replacing any old one) and show it as a QR code."""
    home = _home(ctx)
    config = load_config(home)
    stepup_url = f"{_server_url(config)}/{STEPUP_PREFIX}/"
    secret = totp.new_secret()
    with _reachable_store(home) as store:
        _edit_account(ctx, name, totp_secret=secret, totp_required=required)
        store.end_grants(name)
    uri = totp.provisioning_uri(secret, name, config.totp.issuer)
    if as_json:
        click.echo(json.dumps({"account": name, "secret": secret, "uri": uri, "required": required}, indent=2))
        return
    qr = io.StringIO()
    segno.make(uri, error="m").terminal(out=qr, compact=True)
    click.echo(qr.getvalue())
    click.echo(f"Scan this with an authenticator app, or enter the secret by hand: {secret}")
    click.echo(f"URI: {uri}")
    click.echo("Sign in with the password followed by the 6-digit code (e.g. mypassword123456),")
    click.echo(f"or open {stepup_url} in a browser that holds the certificate.")


def _server_url(config: Config) -> str:
    """``https://NAME:server.port``, NAME picked from the server certificate as an
    invitation's link picks it (invitations.default_base_url: the first name that is not a
    loopback name); ``https://localhost:PORT`` when the certificate cannot be read."""
    probe = dataclasses.replace(config, enrolment=dataclasses.replace(config.enrolment, url=None,
                                                                        port=config.server.port))
    try:
        return default_base_url(probe)
    except InvitationError:
        return f"https://localhost:{config.server.port}"


@user_totp.command("disable")
@click.argument("name")
@click.pass_context
@_handled
def user_totp_disable(ctx: click.Context, name: str) -> None:
    """Remove the account's TOTP secret (shares that require TOTP then refuse it)."""
    with _reachable_store(_home(ctx)) as store:
        _edit_account(ctx, name, totp_secret=None, totp_required=False)
        store.end_grants(name)
    click.echo(f"TOTP removed from {name}")


@user.command("unlock")
@click.argument("name", required=False)
@click.option("--address", metavar="ADDR", help="Lift the lockout of this peer address (IPv4 or IPv6) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handled
def user_unlock(ctx: click.Context, name: str | None, address: str | None, as_json: bool) -> None:
    """Lift the sign-in lockout that failures put on account NAME (all its certificates)
    or, with --address, on a peer address (everyone behind it)."""
    if (name is None) == (address is None):
        _fail("give an account NAME or --address ADDR, one of the two")
    home = _home(ctx)
    if name is not None:
        accounts = load_accounts(home.accounts_file)
        if name not in accounts:
            similar = sorted(a for a in accounts if a.casefold() == name.casefold())
            hint = (f"account names are case-sensitive: did you mean {similar[0]!r}?" if similar
                    else "see `davserver user list`")
            _fail(f"no account {name!r} ({hint})")
        with _reachable_store(home) as store:  # down: one line and status 2 (_handled)
            n = Lockouts(store.lockouts).unlock_account(name)
        result: dict[str, Any] = {"account": name, "lifted": n}
        message = f"{name} unlocked ({n} lockout{'s' if n != 1 else ''} lifted)"
    else:
        assert address is not None
        try:
            canonical = canonical_address(address)
        except ValueError:
            _fail(f"--address: {address!r} is not an IPv4 or IPv6 address (e.g. 192.0.2.7 or 2001:db8::7)")
        with _reachable_store(home) as store:
            n = Lockouts(store.lockouts).unlock_address(canonical)
        result = {"address": canonical, "lifted": n}
        message = f"address {canonical} unlocked ({n} lockout{'s' if n != 1 else ''} lifted)"
    click.echo(json.dumps(result, indent=2) if as_json else message)


@user.command("disable")
@click.argument("name")
@click.pass_context
@_handled
def user_disable(ctx: click.Context, name: str) -> None:
    """Refuse every request of this account until it is enabled again."""
    with _reachable_store(_home(ctx)) as store:
        _edit_account(ctx, name, enabled=False)
        store.end_grants(name)
    click.echo(f"account {name} disabled")


@user.command("remove")
@click.argument("name")
@click.pass_context
@_handled
def user_remove(ctx: click.Context, name: str) -> None:
    """Remove account NAME: its certificates are revoked (the CRL is re-signed), and its
    bindings, sign-in grants, lockouts and open invitations end."""
    home = _home(ctx)
    config = load_config(home)
    if name not in load_accounts(home.accounts_file):
        _fail(f"no account {name!r} (see `davserver user list`)")
    ca = CertificateAuthority(home.certs_dir)
    ca.list_issued()  # the CA and its inventory are readable before anything changes
    with _reachable_store(home) as store:
        revoked = ca.revoke_account(name)
        instance.unbind_certificates(home, revoked)
        instance.remove_account(home, name)
        store.end_grants(name)
        Lockouts(store.lockouts).unlock_account(name)
        withdrawn = Invitations(store, config.enrolment).revoke(name)
    click.echo(f"account {name} removed; {len(revoked)} certificate{'s' if len(revoked) != 1 else ''} revoked"
               + (f", {withdrawn} invitation{'s' if withdrawn != 1 else ''} withdrawn" if withdrawn else ""))
    for c in revoked:
        click.echo(f"  revoked {c.serial}")
    for share_name, s in sorted(config.shares.items()):
        if name in s.readers or name in s.writers:
            _warn(f"shares.{share_name} still names {name} (edit {home.config_file}, "
                  "or a new account of that name gets its access)")


@user.command("enable")
@click.argument("name")
@click.pass_context
@_handled
def user_enable(ctx: click.Context, name: str) -> None:
    """Allow a disabled account again."""
    _edit_account(ctx, name, enabled=True)
    click.echo(f"account {name} enabled")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handled
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List accounts, their groups and certificates.

    With --json: one object per account with name, enabled, groups, password and totp
    (whether one is set) and certificates (their SHA-256 fingerprints)."""
    accounts = load_accounts(_home(ctx).accounts_file)
    rows: list[dict[str, Any]] = [
        {
            "name": a.name,
            "enabled": a.enabled,
            "groups": sorted(a.groups),
            "password": a.password_hash is not None,
            "totp": a.totp_secret is not None,
            "certificates": [c.fingerprint for c in a.certificates],
        }
        for a in accounts.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(("NAME", "ENABLED", "CERTS", "GROUPS"),
                      [(r["name"], "yes" if r["enabled"] else "no", str(len(r["certificates"])),
                        ",".join(r["groups"]) or "-") for r in rows]))


# --- shares ----------------------------------------------------------------------


@main.group()
def share() -> None:
    """Manage shares (config/davserver.yaml)."""


def _principal_list(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


@share.command("add")
@click.argument("name")
@click.argument("path")
@click.option("--read-only", is_flag=True, help="Refuse every write to this share.")
@click.option("--readers", default="", help="Accounts or @groups that may read, comma-separated (* = all).")
@click.option("--writers", default="", help="Accounts or @groups that may read and write (* = all).")
@click.option("--require", "require", default=None, metavar="none|password|password,totp",
              help="Factors beyond the certificate [default: defaults.require].")
@click.option("--create", is_flag=True, help="Create the folder PATH when it does not exist.")
@click.pass_context
@_handled
def share_add(ctx: click.Context, name: str, path: str, read_only: bool, readers: str, writers: str,
              require: str | None, create: bool) -> None:
    """Add share NAME serving folder PATH (made only with --create).

    Without --readers/--writers every account may use it (read-only with --read-only).
    """
    home = _home(ctx)
    readers_t, writers_t = _principal_list(readers), _principal_list(writers)
    if not readers_t and not writers_t:
        if read_only:
            readers_t = ("*",)
        else:
            writers_t = ("*",)
    factors: tuple[str, ...] | None = None
    if require is not None:
        factors = () if require.strip() == "none" else tuple(f.strip() for f in require.split(",") if f.strip())
    existed = home.resolve(path).is_dir()
    unknown = unknown_principals(load_accounts(home.accounts_file), readers_t + writers_t)  # before any write
    target = instance.add_share(
        home, name, path, read_only=read_only, readers=readers_t, writers=writers_t, require=factors, create=create
    )
    click.echo(f"share {name} -> {target} added; restart the server to serve it")
    if create and not existed:
        click.echo(f"  created {target}")
    elif not target.is_dir():
        _warn(f"{target} does not exist yet: the server refuses to start until it does "
              f"(mkdir -p {target}, or add the share with --create)")
    if unknown:  # they give nobody access (until an account or group of that name is made)
        _warn(f"{', '.join(unknown)}: no such account or group yet, so nobody gets access through "
              f"{'them' if len(unknown) > 1 else 'it'} (see `davserver user list`; groups come from "
              "`davserver user add --groups`)")


@share.command("remove")
@click.argument("name")
@click.pass_context
@_handled
def share_remove(ctx: click.Context, name: str) -> None:
    """Stop serving share NAME (removed from davserver.yaml; its folder and files stay)."""
    folder = instance.remove_share(_home(ctx), name)
    click.echo(f"share {name} removed; its folder {folder} and files are kept; restart the server")


@share.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_handled
def share_list(ctx: click.Context, as_json: bool) -> None:
    """List shares: mode, factors, readers, writers.

    With --json: one object per share with name, path, read_only, readers, writers and
    require (the factors asked beyond the certificate)."""
    config = load_config(_home(ctx))
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "path": str(s.path),
            "read_only": s.read_only,
            "readers": list(s.readers),
            "writers": list(s.writers),
            "require": list(s.require),
        }
        for s in config.shares.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(("NAME", "MODE", "REQUIRE", "READERS", "WRITERS", "PATH"),
                      [(r["name"], "read-only" if r["read_only"] else "read-write",
                        ",".join(r["require"]) or "none", ",".join(r["readers"]) or "-",
                        ",".join(r["writers"]) or "-", r["path"]) for r in rows]))


# --- serving ----------------------------------------------------------------------


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DAVSERVER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("wsgidav", "cheroot"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run(server: Any) -> None:
    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _reload(signum: int, frame: Any) -> None:
        # On its own thread: the handler interrupts the main thread anywhere, and the
        # reload takes the audit log's and the certificate's locks.
        threading.Thread(target=server.reload, name="davserver-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _reload)  # systemctl reload / logrotate: docs/install.md
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopping", err=True)


def _bind_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--bind takes what server.bind takes (config.py): an IP address or localhost."""
    if value is None or value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address (e.g. 0.0.0.0, :: or 127.0.0.1)") from None
    return value


def _workers_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """--workers takes what server.workers takes (config.py): a whole number or auto."""
    if value is None:
        return None
    from .config import _workers

    try:
        return _workers(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not a whole number from 1 to 256 or auto") from None


@main.command()
@click.option("--bind", callback=_bind_option, help="Address to listen on [default: server.bind].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: server.port].")
@click.option("--workers", callback=_workers_option, metavar="N|auto",
              help="Worker processes [default: server.workers].")
@click.pass_context
@_handled
def serve(ctx: click.Context, bind: str | None, port: int | None, workers: int | str | None) -> None:
    """Run the server in the foreground."""
    from .server import DavServer, tune_allocator
    from .supervisor import Supervisor, worker_count

    _setup_logging()
    config, config_text = read_config(_home(ctx))
    count = worker_count(config.server.workers if workers is None else workers)
    if count > 1:  # a supervisor and `count` worker processes (supervisor.py)
        supervisor = Supervisor(config, workers=count, bind=bind, port=port, config_text=config_text)
        try:
            supervisor.start()
        except KeyboardInterrupt:  # SIGTERM/SIGINT while the workers started: they are stopped
            click.echo("stopping", err=True)
            return
        click.echo(f"davserver serving {_serving(supervisor.bind, supervisor.port)}", err=True)
        _run(supervisor)
        return
    tune_allocator()
    server = DavServer(config, bind=bind, port=port)
    server.prepare()
    click.echo(f"davserver serving {_serving(server.bind, server.port)}", err=True)
    _run(server)


_WILDCARDS = ("0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0")  # noqa: S104 - naming the wildcard


def _serving(bind: str, port: int) -> str:
    """What the serve line says: the URL of the address bound, or for a wildcard
    (``0.0.0.0``; ``::``, which cheroot binds dual-stack) the URL of every local address
    it reaches and the wildcard itself."""
    if bind not in _WILDCARDS:
        return f"https://{f'[{bind}]' if ':' in bind else bind}:{port}/"
    addresses = _local_addresses(ipv6=bind != "0.0.0.0")  # noqa: S104
    urls = [f"https://{f'[{a}]' if ':' in a else a}:{port}/" for a in addresses]
    return f"{' '.join(urls)} (every local address: bound to {bind} port {port})"


_SIOCGIFADDR = 0x8915  # <linux/sockios.h>


def _local_addresses(*, ipv6: bool) -> list[str]:
    """The host's IPv4 addresses (SIOCGIFADDR on each interface, loopback first), and with
    ``ipv6`` its global and loopback IPv6 ones (/proc/net/if_inet6; link-local ones need a
    zone and are left out). Linux; elsewhere only the loopback addresses."""
    v4: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, ifname in socket.if_nameindex():
            with contextlib.suppress(OSError):
                req = struct.pack("256s", ifname.encode()[:15])
                v4.append(socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24]))
    v6: list[str] = []
    if ipv6:
        with contextlib.suppress(OSError), open("/proc/net/if_inet6") as fh:
            for line in fh:
                address = ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))
                if not address.is_link_local:
                    v6.append(str(address))
    found = list(dict.fromkeys(v4 or ["127.0.0.1"])) + list(dict.fromkeys(v6 or (["::1"] if ipv6 else [])))
    return sorted(found, key=lambda a: (":" in a, not ipaddress.ip_address(a).is_loopback))


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True)
@click.pass_context
@_handled
def quickstart(ctx: click.Context, port: int) -> None:
    """Create a demo instance if needed (CA, account `demo`, its certificate, a share) and serve it."""
    from .server import DavServer, port_is_free, tune_allocator

    home = _home(ctx, instance=False)
    if port and not port_is_free("127.0.0.1", port):
        _fail(f"--port: 127.0.0.1:{port} is already in use (stop the other server or pick another --port); "
              "nothing was changed")
    instance.ensure_demo_instance(home)
    _setup_logging()
    tune_allocator()
    server = DavServer(load_config(home), bind="127.0.0.1", port=port)
    server.prepare()  # listening: only now does the demo account get a new password
    try:
        demo = instance.reset_demo(home)
    except BaseException:
        with contextlib.suppress(Exception):
            server.stop()
        raise
    url = server.url
    share_url = f"{url}{demo.share}/"
    rel = {k: os.path.relpath(v) for k, v in demo.paths.items()}
    ca = os.path.relpath(home.certs_dir / "ca.crt")
    click.echo(f"""
davserver is running at {url}

  account   {demo.account}
  password  {demo.password}    (also the password of the .p12 file)
  share     {share_url}

Try it with curl:
  curl --cacert {ca} --cert {rel['crt']} --key {rel['key']} -u {demo.account}:{demo.password} {share_url}

In a browser: import {rel['p12']} (password above) into the browser's or the
system's certificate store, trust {ca} as a certificate authority (or accept
the warning), then open {url} and sign in as {demo.account}.

Re-running `davserver quickstart` reuses this instance with a fresh demo password.
Stop with Ctrl-C.
""")
    _run(server)


if __name__ == "__main__":  # pragma: no cover
    main()
