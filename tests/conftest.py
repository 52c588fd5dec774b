"""Shared fixtures: throwaway instances made by the project's own key manager,
and live TLS servers on free ports that are always stopped."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from davserver import instance
from davserver.accounts import Account
from davserver.auth.passwords import hash_password
from davserver.config import Home, load_config
from davserver.pki import CertificateAuthority, IssuedCert
from davserver.server import DavServer

#: Seconds within which a test's request counts as "served at once" while an attack is
#: under way. A served request takes milliseconds (0.5 s at worst seen on a busy 2-core CI
#: machine under coverage). A test that uses this bound arranges for the fault it guards
#: against to cost STALLED_SECONDS or more (a deadline of 10 s, or no answer at all), so the
#: bound tells served from stalled with a wide margin and never measures speed: speed
#: targets live in bench/.
PROMPT_SECONDS = 3.0
STALLED_SECONDS = 10.0

PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw1", "carol": "carol-secret-pw"}


@dataclass
class Client:
    account: str
    password: str
    crt: Path
    key: Path
    p12: Path
    p12_password: str
    issued: IssuedCert


@dataclass
class Instance:
    home: Home
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority(self.home.certs_dir)

    @property
    def ca_file(self) -> Path:
        return self.home.certs_dir / "ca.crt"

    def issue(self, account: str, *, name: str | None = None, p12_password: str | None = None, **kw: object) -> Client:
        prefix = self.home.certs_dir / "clients" / (name or account)
        pw = p12_password or PASSWORDS.get(account, "p12-password")
        issued = self.ca.issue_client_cert(account, out_prefix=prefix, p12_password=pw.encode(), **kw)  # type: ignore[arg-type]
        instance.bind_certificate(self.home, issued)
        client = Client(
            account=account,
            password=PASSWORDS.get(account, ""),
            crt=Path(issued.paths["crt"]),
            key=Path(issued.paths["key"]),
            p12=Path(issued.paths["p12"]),
            p12_password=pw,
            issued=issued,
        )
        if name is None:
            self.clients[account] = client
        return client


CONFIG = """
server: {bind: 127.0.0.1, port: 0, threads: 16, timeout: 10}
audit: {file: state/audit.log}
shares:
  files: {path: data/files, writers: ["*"]}
  ro: {path: data/ro, read_only: true, readers: ["*"]}
  team: {path: data/team, readers: [bob], writers: ["@staff"]}
"""


def make_instance(root: Path, config: str = CONFIG) -> Instance:
    home = Home(root)
    (root / "config").mkdir(parents=True)
    home.config_file.write_text(config)
    instance.init_instance(home)
    for account, pw in PASSWORDS.items():
        groups = frozenset({"staff"}) if account == "alice" else frozenset()
        instance.add_account(home, Account(name=account, password_hash=hash_password(pw), groups=groups))
    inst = Instance(home)
    for account in PASSWORDS:
        inst.issue(account)
    (root / "data" / "ro" / "readme.txt").write_text("read only\n")
    return inst


_TEMPLATE: dict[str, Path] = {}


@pytest.fixture
def inst(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Instance:
    """A fresh instance per test (copied from one built per session: keys are slow to make)."""
    if "root" not in _TEMPLATE:
        _TEMPLATE["root"] = tmp_path_factory.mktemp("template") / "home"
        _TEMPLATE["inst"] = make_instance(_TEMPLATE["root"])  # type: ignore[assignment]
    root = tmp_path / "home"
    shutil.copytree(_TEMPLATE["root"], root)
    template: Instance = _TEMPLATE["inst"]  # type: ignore[assignment]
    clone = Instance(Home(root))
    for account, c in template.clients.items():
        rebase = lambda p: root / p.relative_to(_TEMPLATE["root"])  # noqa: E731
        clone.clients[account] = Client(
            account, c.password, rebase(c.crt), rebase(c.key), rebase(c.p12), c.p12_password, c.issued
        )
    return clone


@contextmanager
def running(inst: Instance) -> Iterator[DavServer]:
    server = DavServer(load_config(inst.home), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(inst: Instance) -> Iterator[DavServer]:
    with running(inst) as srv:
        yield srv


def session_for(inst: Instance, account: str | None = "alice", *, password: str | None = None,
                client: Client | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(inst.ca_file)
    if client is None and account is not None:
        client = inst.clients[account]
    if client is not None:
        s.cert = (str(client.crt), str(client.key))
        s.auth = (client.account, password if password is not None else client.password)
    return s


def client_context(inst: Instance, client: Client | None, *, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(inst.ca_file))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        ctx.load_cert_chain(str(client.crt), str(client.key))
    return ctx


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the session. In CI a missing one fails."""
    import os
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def server_process(inst: Instance) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`davserver serve` in its own process (so it can be killed or signalled); yields it and its URL."""
    import re
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve",
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not url:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            if m := re.search(r"serving (https://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        assert url, "the server process did not start"
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def wsgidav_only(monkeypatch: pytest.MonkeyPatch, *, get: bool = True) -> Iterator[None]:
    """WsgiDAV's own answers, to compare the short paths with: fastpath's PROPFIND switched
    off, and with `get` its GET/HEAD too."""
    from davserver import fs

    with monkeypatch.context() as m:
        if get:
            m.setattr(fs, "fast_get", lambda *args: None)
        m.setattr(fs, "fast_propfind", lambda *args: None)
        yield


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The TMPDIR the server processes started by the test make their directories in."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp
