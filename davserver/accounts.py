"""The accounts file: who exists, their password hash, groups and bound certificates.

The CLI edits it (always through an atomic replace, mode 0600 since it holds
hashes) and the running server reloads it when it changes. A broken edit never
takes the server down: the last good version stays in force and the reason is
logged.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError
from .files import FileWatch, file_stamp, write_atomic

__all__ = [
    "ACCOUNT_NAME_RE",
    "Account",
    "Accounts",
    "AccountsWatcher",
    "BoundCert",
    "load_accounts",
    "parse_accounts",
    "save_accounts",
]

log = logging.getLogger("davserver.accounts")

ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BoundCert:
    """A client certificate bound to an account: ``fingerprint`` is the SHA-256 of its DER
    as 64 lower-case hex digits (pki.fingerprint_der), ``serial`` its serial number as
    upper-case hex (pki.serial_hex; empty when unknown, e.g. a hand-written binding)."""

    fingerprint: str
    serial: str = ""


@dataclass(frozen=True)
class Account:
    """One entry of the accounts file: its name (``ACCOUNT_NAME_RE``), argon2 PHC password
    hash (None: no password set), whether it may sign in, its groups, its bound certificates,
    its base32 TOTP secret (None: not enrolled) and whether TOTP is required of it everywhere."""

    name: str
    password_hash: str | None = None
    enabled: bool = True
    groups: frozenset[str] = frozenset()
    certificates: tuple[BoundCert, ...] = ()
    totp_secret: str | None = None
    totp_required: bool = False

    def to_yaml(self) -> dict[str, Any]:
        """The account as its mapping in the accounts file (the inverse of parsing it):
        keys ``enabled``, and only when set ``password``, ``groups`` (sorted),
        ``certificates`` (a list of ``{fingerprint, serial}``), ``totp_secret``, ``totp``."""
        data: dict[str, Any] = {"enabled": self.enabled}
        if self.password_hash:
            data["password"] = self.password_hash
        if self.groups:
            data["groups"] = sorted(self.groups)
        if self.certificates:
            data["certificates"] = [
                {"fingerprint": c.fingerprint, **({"serial": c.serial} if c.serial else {})}
                for c in self.certificates
            ]
        if self.totp_secret:
            data["totp_secret"] = self.totp_secret
        if self.totp_required:
            data["totp"] = "required"
        return data


@dataclass(frozen=True)
class Accounts(Mapping[str, Account]):
    """An immutable snapshot; edits return a new snapshot."""

    by_name: Mapping[str, Account] = field(default_factory=dict)
    #: Certificate fingerprint → account name, built by __post_init__ (not an argument, not
    #: compared, not shown).
    _by_fingerprint: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        index: dict[str, str] = {}
        for account in self.by_name.values():
            for cert in account.certificates:
                owner = index.setdefault(cert.fingerprint, account.name)
                if owner != account.name:
                    raise ConfigError(
                        f"accounts.{account.name}.certificates",
                        f"fingerprint {cert.fingerprint[:16]}… is also bound to {owner!r}",
                        "a certificate belongs to exactly one account",
                    )
        object.__setattr__(self, "_by_fingerprint", index)

    def __getitem__(self, name: str) -> Account:
        return self.by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def owner_of(self, fingerprint: str) -> str | None:
        """The name of the account the certificate ``fingerprint`` (64 lower-case hex digits)
        is bound to, None when it is bound to none."""
        return self._by_fingerprint.get(fingerprint)

    def with_account(self, account: Account) -> Accounts:
        """A new snapshot with ``account`` added or replacing the one of its name.

        Raises ConfigError when one of its certificates is bound to another account."""
        return Accounts({**self.by_name, account.name: account})

    def edit(self, name: str, **changes: Any) -> Accounts:
        """A new snapshot where the account ``name`` has the given fields (``Account``
        field names) changed. Raises KeyError for an unknown ``name``, TypeError for an
        unknown field, ConfigError for a certificate bound elsewhere."""
        return self.with_account(replace(self.by_name[name], **changes))

    def to_yaml(self) -> dict[str, Any]:
        """The whole file's content: ``{"accounts": {name: Account.to_yaml(), ...}}``, by name."""
        return {"accounts": {name: acc.to_yaml() for name, acc in sorted(self.by_name.items())}}


def _parse_account(name: Any, spec: Any) -> Account:
    key = f"accounts.{name}"
    if not isinstance(name, str) or not ACCOUNT_NAME_RE.match(name):
        raise ConfigError(key, "is not a valid account name", "letters, digits, '.', '_', '@', '-'; at most 64")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(key, f"expected a mapping, found {spec!r}")
    allowed = ("password", "enabled", "groups", "certificates", "totp_secret", "totp")
    for k in spec:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", "unknown key", f"known keys: {', '.join(allowed)}")
    password = spec.get("password")
    if password is not None and (not isinstance(password, str) or not password.startswith("$argon2")):
        raise ConfigError(
            f"{key}.password", "is not an argon2 hash", f"set it with `davserver user passwd {name}`"
        )
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled", f"{enabled!r} is not true or false")
    groups = spec.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and _GROUP_RE.match(g) for g in groups):
        raise ConfigError(f"{key}.groups", f"{groups!r} is not a list of group names")
    certs: list[BoundCert] = []
    for i, c in enumerate(spec.get("certificates") or []):
        ckey = f"{key}.certificates[{i}]"
        fp = c.get("fingerprint") if isinstance(c, Mapping) else c
        if not isinstance(fp, str):
            raise ConfigError(ckey, f"{c!r} has no fingerprint")
        fp = fp.replace(":", "").lower()
        if not _FINGERPRINT_RE.match(fp):
            raise ConfigError(ckey, f"{fp!r} is not a SHA-256 fingerprint", "64 hex digits")
        serial = str(c.get("serial", "")) if isinstance(c, Mapping) else ""
        certs.append(BoundCert(fingerprint=fp, serial=serial))
    totp_secret = spec.get("totp_secret")
    if totp_secret is not None and not isinstance(totp_secret, str):
        raise ConfigError(f"{key}.totp_secret", "is not a base32 string")
    totp = spec.get("totp", "optional")
    if totp not in ("optional", "required"):
        raise ConfigError(f"{key}.totp", f"{totp!r} is not valid", "use optional or required")
    return Account(
        name=name,
        password_hash=password,
        enabled=enabled,
        groups=frozenset(groups),
        certificates=tuple(certs),
        totp_secret=totp_secret,
        totp_required=totp == "required",
    )


def parse_accounts(raw: Any) -> Accounts:
    """Check and convert the YAML-loaded accounts file (``{"accounts": {name: spec}}``;
    None for an empty file) into a snapshot. Fingerprints may be written with colons and in
    upper case; they are stored as 64 lower-case hex digits.

    Raises ConfigError naming the key (``accounts.NAME.password`` …), the value and a fix."""
    if raw is None:
        return Accounts({})
    if not isinstance(raw, Mapping) or set(raw) - {"accounts"}:
        raise ConfigError("", "the file must hold one key, 'accounts', mapping names to accounts")
    section = raw.get("accounts") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("accounts", f"expected a mapping of account names, found {section!r}")
    return Accounts({str(name): _parse_account(name, spec) for name, spec in section.items()})


def load_accounts(path: Path) -> Accounts:
    """Read the accounts file at `path`; a missing file is an instance with no accounts
    yet. Raises ConfigError (naming the file, and the account and key at fault) for a
    file that cannot be read, is not YAML, or holds an invalid account."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Accounts({})
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"not valid YAML{where}", "fix the file or restore it", source=str(path)) from None
    try:
        return parse_accounts(raw)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.message, exc.hint, source=str(path)) from None


_HEADER = (
    "# davserver accounts. Edited by `davserver user ...` and `davserver cert issue`;\n"
    "# hand edits are fine, the server reloads this file when it changes.\n"
)


def save_accounts(path: Path, accounts: Accounts) -> None:
    """Write ``accounts`` to ``path`` as YAML under a short header comment, atomically and
    with mode 0600 (the file holds password hashes and TOTP secrets); raises OSError."""
    text = _HEADER + yaml.safe_dump(accounts.to_yaml(), sort_keys=False, allow_unicode=True)
    write_atomic(path, text.encode("utf-8"), 0o600)


class AccountsWatcher:
    """The server's view of the accounts file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Stamped before the first load: a change during it is seen at the next look.
        self._watch = FileWatch(path, seen=file_stamp(path))
        self._current = load_accounts(path)  # the first load must succeed: fail closed at start

    def current(self) -> Accounts:
        """The accounts in force: re-read when the file changed since the last look
        (files.FileWatch: another inode, size, modification or change time). A file that
        no longer parses is logged and the last good snapshot kept; a missing file means
        no accounts. Thread-safe; never raises ConfigError after construction."""
        changed, stamp = self._watch.look()
        if not changed:
            return self._current
        with self._lock:
            if stamp != self._watch.seen:
                try:
                    self._current = load_accounts(self.path)
                    log.info("accounts reloaded from %s (%d accounts)", self.path, len(self._current))
                except ConfigError as exc:
                    log.error("accounts file not reloaded, keeping the last good version: %s", exc)
                self._watch.seen = stamp
            return self._current
