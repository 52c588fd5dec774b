"""Setting up and editing an instance folder: the steps behind `init`, `share add`
and `quickstart`. Returns data; the CLI does the talking.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML

from .accounts import Account, Accounts, BoundCert, load_accounts, save_accounts
from .auth.passwords import hash_password
from .config import SHARE_NAME_RE, ConfigError, Home, load_config, parse_config
from .files import write_atomic
from .pki import CertificateAuthority, IssuedCert, certificate_fingerprint

__all__ = [
    "add_share",
    "bind_certificate",
    "default_config_text",
    "ensure_demo_instance",
    "generate_password",
    "init_instance",
    "next_client_prefix",
    "remove_account",
    "remove_share",
    "reset_demo",
]

#: No look-alikes (0/O, 1/l/I): these passwords are read off a screen and typed.
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def generate_password(groups: int = 4, size: int = 5) -> str:
    """About 117 bits, in dash-separated groups that are easy to type."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(size)) for _ in range(groups))


def default_config_text() -> str:
    """The shipped ``davserver.yaml`` (davserver/default_config.yaml, UTF-8 text with the
    admin's comments), as ``init`` writes it to a new instance."""
    return resources.files("davserver").joinpath("default_config.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class InitResult:
    """What ``init_instance`` made: the CA (always, new or replaced with ``force``), and
    whether the configuration and the accounts file were new (False: the existing one
    was kept)."""

    created_ca: bool
    created_config: bool
    created_accounts: bool


def init_instance(home: Home, hostnames: tuple[str, ...] = (), *, force: bool = False) -> InitResult:
    """CA, server certificate, empty CRL, default config and accounts file, folders.

    An existing configuration or accounts file is kept (it is the admin's);
    only the key material is replaced, and only with force.
    """
    ca = CertificateAuthority(home.certs_dir)
    ca.create(force=force)
    ca.issue_server_cert(hostnames)
    created_config = not home.config_file.exists()
    if created_config:
        write_atomic(home.config_file, default_config_text().encode("utf-8"), 0o644)
    created_accounts = not home.accounts_file.exists()
    if created_accounts:
        save_accounts(home.accounts_file, Accounts({}))
    elif force:
        # Certificates of the old CA can no longer connect; drop their bindings.
        accounts = load_accounts(home.accounts_file)
        for name in list(accounts):
            accounts = accounts.edit(name, certificates=())
        save_accounts(home.accounts_file, accounts)
    home.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = load_config(home)
    for share in config.shares.values():
        share.path.mkdir(parents=True, exist_ok=True)
    return InitResult(created_ca=True, created_config=created_config, created_accounts=created_accounts)


def next_client_prefix(home: Home, account: str) -> Path:
    """certs/clients/ACCOUNT, or ACCOUNT-2, -3 … so an earlier key is never overwritten."""
    folder = home.certs_dir / "clients"
    candidate = folder / account
    n = 1
    while any(candidate.with_name(f"{candidate.name}.{ext}").exists() for ext in ("p12", "crt", "key")):
        n += 1
        candidate = folder / f"{account}-{n}"
    return candidate


@contextlib.contextmanager
def _accounts_lock(home: Home) -> Iterator[None]:
    """One binding change at a time (load, edit, save), across threads and processes: two
    enrolments, or an enrolment and `cert revoke`, must not lose each other's edit."""
    path = home.accounts_file.with_name(f".{home.accounts_file.name}.lock")
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def bind_certificate(home: Home, issued: IssuedCert) -> None:
    """Add the certificate ``issued`` (its SHA-256 fingerprint and hex serial) to the
    certificates of its account in the accounts file, under the accounts lock (one
    binding change at a time, across processes). Raises KeyError when the account no
    longer exists, ConfigError for an unreadable file, OSError for the disk."""
    with _accounts_lock(home):
        accounts = load_accounts(home.accounts_file)
        account = accounts[issued.account]
        bound = (*account.certificates, BoundCert(fingerprint=issued.fingerprint, serial=issued.serial))
        save_accounts(home.accounts_file, accounts.edit(account.name, certificates=bound))


def unbind_certificates(home: Home, revoked: list[IssuedCert]) -> None:
    """Revocation also removes the binding: a certificate stops mapping to its account
    even where no CRL is configured."""
    gone = {c.fingerprint for c in revoked}
    with _accounts_lock(home):
        accounts = load_accounts(home.accounts_file)
        for name, account in list(accounts.items()):
            kept = tuple(c for c in account.certificates if c.fingerprint not in gone)
            if kept != account.certificates:
                accounts = accounts.edit(name, certificates=kept)
        save_accounts(home.accounts_file, accounts)


def add_account(home: Home, account: Account) -> None:
    """Add ``account`` to the accounts file (under the accounts lock).
    Raises ConfigError when the name exists."""
    with _accounts_lock(home):
        accounts = load_accounts(home.accounts_file)
        if account.name in accounts:
            raise ConfigError(f"accounts.{account.name}", "already exists", "pick another name or edit it")
        save_accounts(home.accounts_file, accounts.with_account(account))


def edit_account(home: Home, name: str, **changes: Any) -> bool:
    """Change fields of account ``name`` (``Accounts.edit`` keywords) under the accounts
    lock, so an edit from the CLI and an enrolment binding a certificate at the same
    moment both survive. False (nothing written) when there is no such account."""
    with _accounts_lock(home):
        accounts = load_accounts(home.accounts_file)
        if name not in accounts:
            return False
        save_accounts(home.accounts_file, accounts.edit(name, **changes))
        return True


def add_share(
    home: Home,
    name: str,
    path: str,
    *,
    read_only: bool,
    readers: tuple[str, ...],
    writers: tuple[str, ...],
    require: tuple[str, ...] | None = None,
    create: bool = False,
) -> Path:
    """Add a share to davserver.yaml, keeping the admin's comments and order; returns the
    folder (absolute). The folder is made only with ``create`` (a typo in PATH must not
    leave a stray folder); anything in the way is refused before the file is written.

    Raises ConfigError (``shares.NAME`` / ``shares.NAME.path``) for a bad name, a name
    in use, a PATH that is a file, or a folder that cannot be made; nothing is changed then.
    """
    if not SHARE_NAME_RE.match(name):
        raise ConfigError(f"shares.{name}", "is not a valid share name", "lower-case letters, digits, '.', '_', '-'")
    config = load_config(home)  # refuse to edit a file that is already broken
    if name in config.shares:
        raise ConfigError(f"shares.{name}", "already exists", "pick another name or edit davserver.yaml")
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(home.config_file.read_text(encoding="utf-8"))
    if doc.get("shares") is None:
        doc["shares"] = {}
    spec: dict[str, object] = {"path": path}
    if read_only:
        spec["read_only"] = True
    if readers:
        spec["readers"] = list(readers)
    if writers:
        spec["writers"] = list(writers)
    if require is not None:
        spec["require"] = list(require)
    doc["shares"][name] = spec
    out = io.StringIO()
    yaml.dump(doc, out)
    text = out.getvalue()
    parse_config(pyyaml.safe_load(text), home)  # validate before it replaces the file
    target = home.resolve(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"shares.{name}.path", f"{target} is not a folder", "give the path of a folder")
    if create:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"shares.{name}.path", f"cannot create {target}: {exc.strerror}",
                              "fix the path or create the folder first") from None
    write_atomic(home.config_file, text.encode("utf-8"), 0o644)
    return target


def remove_share(home: Home, name: str) -> Path:
    """Remove share ``name`` from davserver.yaml (comments and order kept); its folder and
    files stay. Returns the folder. Raises ConfigError when there is no such share."""
    config = load_config(home)
    if name not in config.shares:
        known = ", ".join(sorted(config.shares)) or "none"
        raise ConfigError(f"shares.{name}", "no such share", f"shares: {known}; see `davserver share list`")
    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(home.config_file.read_text(encoding="utf-8"))
    del doc["shares"][name]
    out = io.StringIO()
    yaml.dump(doc, out)
    text = out.getvalue()
    parse_config(pyyaml.safe_load(text), home)  # validate before it replaces the file
    write_atomic(home.config_file, text.encode("utf-8"), 0o644)
    return config.shares[name].path


def remove_account(home: Home, name: str) -> Account:
    """Remove account ``name`` from the accounts file (under the accounts lock) and return
    it. Its certificates must be revoked first (the CLI does). Raises ConfigError when
    there is no such account."""
    with _accounts_lock(home):
        accounts = load_accounts(home.accounts_file)
        if name not in accounts:
            raise ConfigError(f"accounts.{name}", "no such account", "see `davserver user list`")
        gone = accounts[name]
        save_accounts(home.accounts_file, Accounts({n: a for n, a in accounts.items() if n != name}))
        return gone


@dataclass(frozen=True)
class Demo:
    """The ``quickstart`` demo as prepare_demo left it: the account, its new password (in
    clear, shown once), the share's name, and the client files by kind (``"p12"``,
    ``"crt"``, ``"key"`` -> path as str)."""

    account: str
    password: str
    share: str
    paths: dict[str, str]


DEMO_ACCOUNT = "demo"


def prepare_demo(home: Home) -> Demo:
    """Everything `quickstart` needs, created once and reused: CA, account, certificate, share.

    The demo password is new on every run (only its hash is stored), and the
    PKCS#12 file is re-exported with it, so no secret sits on disk in clear.
    """
    ensure_demo_instance(home)
    return reset_demo(home)


def ensure_demo_instance(home: Home) -> None:
    """The instance around the demo, made when missing (CA, config, a share): no
    secret changes, so `quickstart` can do this, then bind its port, and only then
    give the demo account a new password (reset_demo)."""
    ca = CertificateAuthority(home.certs_dir)
    if not ca.exists():
        init_instance(home)
    elif not home.config_file.exists():
        write_atomic(home.config_file, default_config_text().encode("utf-8"), 0o644)
    config = load_config(home)
    if not config.shares:
        add_share(home, "files", "data/files", read_only=False, readers=(), writers=("*",), create=True)


def reset_demo(home: Home) -> Demo:
    """A new password for the demo account (created if missing), its certificate issued
    or its PKCS#12 file re-exported with that password. Needs ensure_demo_instance."""
    ca = CertificateAuthority(home.certs_dir)
    config = load_config(home)
    share = "files" if "files" in config.shares else sorted(config.shares)[0]
    share_path = config.shares[share].path
    share_path.mkdir(parents=True, exist_ok=True)
    welcome = share_path / "welcome.txt"
    if not any(share_path.iterdir()):
        welcome.write_text("Hello from davserver. This file is served over WebDAV with TLS client certificates.\n")
    home.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    password = generate_password()
    accounts = load_accounts(home.accounts_file)
    hashed = hash_password(password)
    if DEMO_ACCOUNT in accounts:
        accounts = accounts.edit(DEMO_ACCOUNT, password_hash=hashed, enabled=True)
    else:
        accounts = accounts.with_account(Account(name=DEMO_ACCOUNT, password_hash=hashed))
    save_accounts(home.accounts_file, accounts)

    prefix = home.certs_dir / "clients" / DEMO_ACCOUNT
    paths = {ext: str(prefix.with_name(f"{prefix.name}.{ext}")) for ext in ("p12", "crt", "key")}
    bound = {c.fingerprint for c in accounts[DEMO_ACCOUNT].certificates}
    current = {c.fingerprint: c for c in ca.list_issued() if c.status == "valid"}
    usable = False
    if Path(paths["crt"]).exists() and Path(paths["key"]).exists():
        fp = certificate_fingerprint(Path(paths["crt"]))
        usable = fp in bound and fp in current
    if usable:
        ca.export_p12(Path(paths["crt"]), Path(paths["key"]), Path(paths["p12"]), password.encode("utf-8"))
    else:
        issued = ca.issue_client_cert(DEMO_ACCOUNT, out_prefix=prefix, p12_password=password.encode("utf-8"))
        bind_certificate(home, issued)
    return Demo(account=DEMO_ACCOUNT, password=password, share=share, paths=paths)
