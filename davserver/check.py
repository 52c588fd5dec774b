"""`davserver check`: what would stop or weaken the server, found before it serves.

``check_instance`` reads the instance the way the server does (config.load_config,
accounts.load_accounts, the certificate files, the share folders, the state store)
and returns one Finding per problem instead of stopping at the first. A broken
davserver.yaml is not a finding: load_config's ConfigError (one line naming the key)
is raised, since nothing else can be checked without it. Nothing is written: a
missing SQLite file is not created, Redis is only pinged.

Expiry dates come from cert_lifecycle.check_expiry, the server's own daily check, so
`check` and the server's log always agree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .accounts import Accounts, load_accounts
from .cert_lifecycle import check_expiry
from .config import Config, ConfigError, Home, load_config
from .share_overlap import share_overlaps

__all__ = ["Finding", "check_instance", "unknown_principals"]

#: Default seconds `check` waits for the state store to answer (`--timeout`).
PING_SECONDS = 2.0


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` "error" (the server refuses to start, or a client is
    locked out) or "warning"; where (a ``setting`` such as ``shares.files.path``, or a
    ``file``); what is wrong (``message``) and how to put it right (``fix``)."""

    level: str
    message: str
    fix: str
    setting: str | None = None
    file: str | None = None

    def to_json(self) -> dict[str, str]:
        """``{"level", "setting" or "file", "message", "fix"}`` for `davserver check --json`."""
        where = {"setting": self.setting} if self.setting else {"file": self.file or ""}
        return {"level": self.level, **where, "message": self.message, "fix": self.fix}

    def line(self) -> str:
        """``error: certs/ca.key: ... (fix: ...)``: one line for the terminal."""
        return f"{self.level}: {self.setting or self.file}: {self.message} (fix: {self.fix})"


def unknown_principals(accounts: Accounts, principals: Iterable[str]) -> list[str]:
    """The readers/writers among ``principals`` that name no account (``NAME``) or no group
    any account is in (``@GROUP``); ``*`` is everybody. In order, each once."""
    groups = {g for a in accounts.values() for g in a.groups}
    return [p for p in dict.fromkeys(principals)
            if p != "*" and (p[1:] not in groups if p.startswith("@") else p not in accounts)]


def check_instance(home: Home, *, timeout: float = PING_SECONDS, now: datetime | None = None) -> list[Finding]:
    """Every finding for the instance at ``home``, errors and warnings in the order
    checked (config, accounts, file modes, certificates, shares, state store, identity,
    enrolment). ``timeout``: seconds the state store may take to answer a ping.

    Raises ConfigError when davserver.yaml is missing or invalid."""
    config = load_config(home)
    findings: list[Finding] = []
    accounts = _accounts(home, findings)
    _modes(config, findings)
    _certificates(config, findings, now or datetime.now(UTC))
    _shares(config, accounts, findings)
    _state(config, findings, timeout)
    _identity(config, findings)
    _enrolment(config, findings)
    _audit(config, findings)
    _listeners(config, findings)
    _workers(config, findings)
    return findings


def _workers(config: Config, findings: list[Finding]) -> None:
    """server.workers above the CPUs this process may use (supervisor.py): every worker
    is a whole interpreter's memory, and past one per CPU they only take turns."""
    from .supervisor import worker_count

    cpus = worker_count("auto")
    if config.server.workers != "auto" and worker_count(config.server.workers) > cpus:
        findings.append(Finding(
            "warning", f"{config.server.workers} worker processes on {cpus} usable CPU(s): more add memory "
            "(about 55 MiB each), not speed", f"set server.workers: auto or at most {cpus}",
            setting="server.workers"))


def _rel(home: Home, path: Path) -> str:
    try:
        return str(path.relative_to(home.root))
    except ValueError:
        return str(path)


def _accounts(home: Home, findings: list[Finding]) -> Accounts | None:
    if not home.accounts_file.is_file():
        findings.append(Finding("error", "the accounts file is missing: nobody can sign in",
                                "run `davserver init` (keeps davserver.yaml) or restore the file",
                                file=_rel(home, home.accounts_file)))
        return None
    try:
        accounts = load_accounts(home.accounts_file)
    except ConfigError as exc:
        findings.append(Finding("error", str(exc), "fix the entry named, or re-create it with `davserver user`",
                                file=_rel(home, home.accounts_file)))
        return None
    if not accounts:
        findings.append(Finding("warning", "no accounts: nobody can sign in",
                                "add one with `davserver user add NAME`", file=_rel(home, home.accounts_file)))
    return accounts


def _modes(config: Config, findings: list[Finding]) -> None:
    """Keys, the accounts file and the state folder must not be open to group or others."""
    home = config.home
    private = [home.certs_dir / "ca.key", config.tls.private_key, home.accounts_file]
    if config.state.password_file is not None:
        private.append(config.state.password_file)
    if config.state.backend == "sqlite" and config.state.path is not None:
        private.append(config.state.path)
    for path in private:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue  # missing files are reported where they matter
        except OSError as exc:
            findings.append(Finding("error", f"cannot read: {exc.strerror}", f"check the owner of {path}",
                                    file=_rel(home, path)))
            continue
        if mode & 0o077:
            findings.append(Finding("error", f"readable by group or others (mode {mode:04o})",
                                    f"chmod 600 {path}", file=_rel(home, path)))
    folder = config.state.path.parent if config.state.path is not None else home.state_dir
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        findings.append(Finding("error", f"the state folder is open to group or others (mode {mode:04o})",
                                f"chmod 700 {folder}", file=_rel(home, folder)))


def _certificates(config: Config, findings: list[Finding], now: datetime) -> None:
    from .pki import PKIError, load_crl_serials

    tls = config.tls
    for setting, path in (("tls.certificate", tls.certificate), ("tls.private_key", tls.private_key),
                          ("tls.client_ca", tls.client_ca)):
        if not path.is_file():
            findings.append(Finding("error", f"{path} does not exist: the server cannot start",
                                    "run `davserver init`, or fix the path", setting=setting))
    # The server's own expiry check; with warnings off (0) a lapsed file is still an error.
    probe = replace(config, tls=replace(tls, expiry_warning_days=max(1, tls.expiry_warning_days)))
    for notice in check_expiry(probe, now=now, quiet=True):
        when = notice.not_after.strftime("%Y-%m-%d %H:%M UTC")
        lapsed = notice.not_after <= now
        message = (f"{notice.path} ({notice.subject}) expired on {when}" if lapsed else
                   f"{notice.path} ({notice.subject}) expires on {when}, in {(notice.not_after - now).days} days")
        own = notice.setting.startswith("tls.")  # else "the built-in CA"
        findings.append(Finding("error" if lapsed else "warning", message, notice.fix,
                                setting=notice.setting if own else None,
                                file=None if own else _rel(config.home, notice.path)))
    if tls.crl is None:
        return
    try:
        _, next_update = load_crl_serials(tls.crl)
    except PKIError as exc:
        findings.append(Finding("error", str(exc), "re-sign it with `davserver cert crl`", setting="tls.crl"))
        return
    if next_update is not None and next_update <= now:
        findings.append(Finding(
            "error", f"{tls.crl} was due on {next_update:%Y-%m-%d %H:%M} UTC (nextUpdate passed)",
            "re-sign it with `davserver cert crl` (a running server with the CA key does it hourly)",
            setting="tls.crl"))


def _shares(config: Config, accounts: Accounts | None, findings: list[Finding]) -> None:
    if not config.shares:
        findings.append(Finding("warning", "no shares: there is nothing to serve",
                                "add one with `davserver share add NAME PATH --create`", setting="shares"))
    for name, share in config.shares.items():
        key = f"shares.{name}.path"
        if not share.path.exists():
            findings.append(Finding("error", f"{share.path} does not exist: the server refuses to start",
                                    f"mkdir -p {share.path}, or fix the path", setting=key))
            continue
        if not share.path.is_dir():
            findings.append(Finding("error", f"{share.path} is not a folder", "give the path of a folder",
                                    setting=key))
            continue
        if not os.access(share.path, os.R_OK | os.X_OK):
            findings.append(Finding("error", f"{share.path} is not readable by this user",
                                    f"chown or chmod {share.path} for the user the server runs as", setting=key))
        elif not share.read_only and share.writers and not os.access(share.path, os.W_OK):
            findings.append(Finding("error", f"{share.path} is not writable by this user, but the share has writers",
                                    f"chown or chmod {share.path}, or set shares.{name}.read_only: true",
                                    setting=key))
        if not share.readers and not share.writers:
            findings.append(Finding("warning", "no readers or writers: nobody can use it",
                                    f"set shares.{name}.readers or writers", setting=f"shares.{name}"))
        if accounts is not None:
            unknown = unknown_principals(accounts, (*share.readers, *share.writers))
            if unknown:
                findings.append(Finding("warning", f"{', '.join(unknown)}: no such account or group",
                                        "add the account (`davserver user add`, --groups) or fix the name",
                                        setting=f"shares.{name}"))
    for overlap in share_overlaps(config):  # the refusal server.py check_shares makes at start
        findings.append(Finding("error" if overlap.refused else "warning", overlap.message(), overlap.fix(),
                                setting=f"shares.{overlap.inner}.path"))


def _state(config: Config, findings: list[Finding], timeout: float) -> None:
    state = config.state
    if state.backend == "sqlite":
        assert state.path is not None
        if state.path.exists():
            _sqlite_ping(state.path, findings)
        else:
            folder = next((p for p in state.path.parents if p.exists()), Path("/"))
            if not os.access(folder, os.W_OK | os.X_OK):
                findings.append(Finding("error", f"{state.path} cannot be created: {folder} is not writable",
                                        f"chown {folder} to the user the server runs as", setting="state.path"))
        return
    try:
        password = state.password_file.read_text().strip() if state.password_file else None
    except OSError as exc:
        findings.append(Finding("error", f"cannot read {state.password_file}: {exc.strerror}",
                                "fix the path or the file's owner", setting="state.password_file"))
        return
    if state.sentinels:  # the master the sentinels name, as the server finds it (store/redis.py)
        from .store.base import StoreUnavailable
        from .store.redis import RedisStore

        store = RedisStore(state.url or "", prefix=state.prefix, password=password, sentinels=state.sentinels,
                           service=state.sentinel_service)
        try:
            store.ping()
        except StoreUnavailable as exc:
            findings.append(Finding("error", str(exc), "start the sentinels and Redis, or fix state.sentinels and "
                                    "state.sentinel_service (and state.password_file)", setting="state.sentinels"))
        finally:
            store.close()
        return
    import redis

    extra: dict[str, Any] = {"password": password} if password else {}
    assert state.url is not None
    try:
        client = redis.Redis.from_url(state.url, socket_timeout=timeout, socket_connect_timeout=timeout, **extra)
    except ValueError as exc:  # redis-py's URL parser (connection.py parse_url): a bad port, host or query
        # The URL itself is not repeated: it may carry the Redis password.
        findings.append(Finding("error", f"not a usable Redis URL: {exc}",
                                "write it as redis://HOST:PORT/DB or rediss://HOST:PORT/DB, the password in "
                                "state.password_file", setting="state.url"))
        return
    try:
        client.ping()
    except redis.RedisError as exc:
        findings.append(Finding("error", f"the Redis store gives no answer to a ping (timeout {timeout:g} s): {exc}",
                                "start Redis or fix state.url (and state.password_file)", setting="state.url"))
    finally:
        client.close()


def _sqlite_ping(path: Path, findings: list[Finding]) -> None:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        findings.append(Finding("error", f"{path} cannot be read: {exc}",
                                "restore it, or move it away (the server starts a new one)", setting="state.path"))
        return
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        findings.append(Finding("error", f"{path} or its folder is not writable by this user",
                                "chown them to the user the server runs as", setting="state.path"))


def _identity(config: Config, findings: list[Finding]) -> None:
    for n, rule in enumerate(config.identity.subject_rules):
        key = f"identity.subject_rules[{n}]"
        if rule.issuer is None:
            findings.append(Finding(
                "warning", f"the plain form ({rule.match}) maps a certificate from any CA in tls.client_ca "
                "to the account its name gives", f"write it as {{issuer: certs/users-ca.crt, match: {rule.match}}}"
                " (README: Enterprise CAs)", setting=key))
        elif not rule.issuer.is_file():
            findings.append(Finding("error", f"{rule.issuer} does not exist: the server cannot start",
                                    "fix the issuer path", setting=f"{key}.issuer"))


def _enrolment(config: Config, findings: list[Finding]) -> None:
    e = config.enrolment
    if not e.enabled:
        return
    if e.port == config.server.port and e.port != 0:
        findings.append(Finding("error", f"port {e.port} is server.port too", "pick another enrolment.port",
                                setting="enrolment.port"))
    if not (config.home.certs_dir / "ca.key").is_file():
        findings.append(Finding("error", "the built-in CA's key certs/ca.key is missing: enrolment cannot issue",
                                "set enrolment.enabled: false, or restore the key", setting="enrolment.enabled"))
    if e.url is None:
        from .invitations import InvitationError, default_base_url

        try:
            base = default_base_url(config)
        except InvitationError:
            return  # tls.certificate is reported above
        if "//localhost:" in base:
            findings.append(Finding(
                "warning", f"invitation links would point to {base}: the server certificate has no other name",
                "set enrolment.url to the address users reach, e.g. https://dav.example.org:8444",
                setting="enrolment.url"))


def _audit(config: Config, findings: list[Finding]) -> None:
    path = config.audit.file
    if path is None:
        return
    target = path if path.exists() else path.parent
    if not target.exists() or not os.access(target, os.W_OK):
        findings.append(Finding("error", f"{path} cannot be written: the server cannot start",
                                f"create {path.parent} writable by the server's user, or fix the path",
                                setting="audit.file"))


def _listeners(config: Config, findings: list[Finding]) -> None:
    """server.bind / metrics.bind that this host cannot listen on at all: not one of its
    addresses, or a port below 1024 for this user. A port in use is no finding: it is
    the running server's own."""
    import errno

    from .server import bind_errno, bind_refusal

    listeners = [("server", config.server.bind, config.server.port)]
    if config.metrics.enabled:
        listeners.append(("metrics", config.metrics.bind, config.metrics.port))
    for section, host, port in listeners:
        err = bind_errno(host, port)
        if err in (errno.EADDRNOTAVAIL, errno.EACCES):
            key, message, fix = bind_refusal(section, host, port, err, f"change {section}.port")
            findings.append(Finding("error", message, fix, setting=key))
