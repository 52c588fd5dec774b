"""The enrolment listener's bounds as settings (enrolment.threads, handshakes_total,
header_bytes, keep_alive_limit, form_bytes, csr_bytes), each hit on a live listener with
the twin at the limit that still works; and a failed issuance that leaves the link usable
(the CA key gone, the accounts file's lock unusable: real faults, no mocks)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from davserver.accounts import load_accounts
from davserver.cli import main
from davserver.config import ConfigError, EnrolmentConfig, Home, load_config, parse_config
from davserver.enrolment_listener import HANDSHAKES_TOTAL, HEADER_BYTES, KEEP_ALIVE, THREADS
from davserver.enrolment_pages import MAX_FORM_BYTES
from davserver.invitations import InvitationGone, Invitations
from davserver.issuance import MAX_CSR_BYTES, IssuanceError, check_csr
from davserver.server import DavServer
from davserver.store.sqlite import SQLiteStore
from tests.conftest import PASSWORDS, Instance, running
from tests.test_enrolment_web import (
    enrol_url,
    invite,
    issued_count,
    post,
)

ALICE_PW = PASSWORDS["alice"]
P12_PW = "file-password-1"
DEFAULTS = Path(__file__).resolve().parent.parent / "davserver" / "default_config.yaml"

#: key -> (default, lowest, highest) as documented in the YAML and README.
BOUNDS = {
    "threads": (THREADS, 1, 64),
    "handshakes_total": (HANDSHAKES_TOTAL, 1, 100_000),
    "header_bytes": (HEADER_BYTES, 4096, 1 << 20),
    "keep_alive_limit": (KEEP_ALIVE, 0, 100_000),
    "form_bytes": (MAX_FORM_BYTES, 1024, 1 << 20),
    "csr_bytes": (MAX_CSR_BYTES, 1024, 1 << 20),
}


def configure(inst: Instance, *, limits: dict[str, object] | None = None, **enrolment: object) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["enrolment"] = {"enabled": True, "port": 0, **enrolment}
    if limits:
        raw.setdefault("limits", {}).update(limits)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


@contextmanager
def serving(inst: Instance, **enrolment: Any) -> Iterator[DavServer]:
    configure(inst, **enrolment)
    with running(inst) as server:
        assert server.enrolment is not None
        yield server


def tls_to(inst: Instance, server: DavServer, timeout: float = 10, source: str | None = None) -> ssl.SSLSocket:
    assert server.enrolment is not None
    ctx = ssl.create_default_context(cafile=str(inst.ca_file))
    raw = socket.create_connection(("127.0.0.1", server.enrolment.port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def head_of(tls: ssl.SSLSocket) -> bytes:
    """The status line and headers of one answer (read up to the blank line)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


# --- the settings ------------------------------------------------------------------------


def test_defaults_match_the_constants_and_the_yaml() -> None:
    shipped = yaml.safe_load(DEFAULTS.read_text())["enrolment"]
    plain = EnrolmentConfig()
    for key, (default, _lo, _hi) in BOUNDS.items():
        assert shipped[key] == default, key
        assert getattr(plain, key) == default, key


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_each_bound_refused_past_its_range_with_the_key_named(key: str, tmp_path: Path) -> None:
    _default, lo, hi = BOUNDS[key]
    home = Home(tmp_path)
    for good in (lo, hi):
        assert getattr(parse_config({"enrolment": {key: good}}, home).enrolment, key) == good
    for bad in (lo - 1, hi + 1, "8", True, 2.5):
        with pytest.raises(ConfigError) as err:
            parse_config({"enrolment": {key: bad}}, home)
        assert err.value.key == f"enrolment.{key}"
        assert f"from {lo} to {hi}" in str(err.value)


# --- each bound on a live listener ----------------------------------------------------------


def test_form_bytes_and_csr_bytes(inst: Instance, tmp_path: Path) -> None:
    # csr_bytes is at least 1024: an RSA-3072 CSR is above that; the limit is its own length
    # (the form strips the trailing newline), and one byte less refuses it
    csr = rsa_csr(tmp_path)
    limit = len(csr.strip())
    assert limit > 1024
    with serving(inst, form_bytes=4096, csr_bytes=limit) as server:
        token = invite(server)
        fixed = f"password={ALICE_PW}&p12_password={P12_PW}&pad="
        over = {"password": ALICE_PW, "p12_password": P12_PW, "pad": "x" * (4096 + 1 - len(fixed))}
        assert post(inst, enrol_url(server, token), over).status_code == 413
        at = {**over, "pad": over["pad"][:-1]}
        r = post(inst, enrol_url(server, token), at)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-pkcs12"
    # csr_bytes: a CSR one byte over the limit is refused before the link is spent
    with serving(inst, form_bytes=8192, csr_bytes=limit - 1) as server:
        token = invite(server)
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "csr": csr})
        assert r.status_code == 400 and "enrolment.csr_bytes" in r.text, r.text
        Invitations(server.store, server.config.enrolment).peek(token)  # still open
    with serving(inst, form_bytes=8192, csr_bytes=limit) as server:
        r = post(inst, enrol_url(server, token), {"password": ALICE_PW, "csr": csr})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-pem-file"


def rsa_csr(folder: Path) -> str:
    out = folder / "rsa.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:3072", "-nodes", "-keyout", str(folder / "rsa.key"),
         "-out", str(out), "-subj", "/CN=ignored"], check=True, capture_output=True)
    return out.read_text()


def test_csr_bytes_bounds_cert_sign(inst: Instance, tmp_path: Path) -> None:
    csr = rsa_csr(tmp_path).encode()
    csr_file = tmp_path / "rsa.csr"
    home = str(inst.home.root)
    configure(inst, csr_bytes=len(csr) - 1)
    over = CliRunner().invoke(main, ["--home", home, "cert", "sign", "alice", "--csr", str(csr_file)])
    assert over.exit_code == 2 and "enrolment.csr_bytes" in over.output, over.output
    with pytest.raises(IssuanceError, match="enrolment.csr_bytes"):
        check_csr(csr, max_bytes=len(csr) - 1)
    configure(inst, csr_bytes=len(csr))
    at = CliRunner().invoke(main, ["--home", home, "cert", "sign", "alice", "--csr", str(csr_file),
                                   "--out", str(tmp_path / "signed"), "--json"])
    assert at.exit_code == 0, at.output
    assert json.loads(at.output)["account"] == "alice"


def test_header_bytes(inst: Instance) -> None:
    limit = 4096
    with serving(inst, header_bytes=limit) as server:
        def ask(total: int, *, in_path: bool) -> bytes:
            if in_path:
                head = "GET /enrol/{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                request = head.format("a" * (total - len(head) + 2))
            else:
                head = "GET /enrol/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Pad: {}\r\n\r\n"
                request = head.format("p" * (total - len(head) + 2))
            assert len(request) == total
            with tls_to(inst, server) as tls:
                tls.sendall(request.encode())
                return head_of(tls).split(b"\r\n", 1)[0]

        assert ask(limit, in_path=False).startswith(b"HTTP/1.1 404")
        assert ask(limit + 1, in_path=False).startswith(b"HTTP/1.1 413")
        assert ask(limit, in_path=True).startswith(b"HTTP/1.1 404")
        assert ask(limit + 1, in_path=True).startswith(b"HTTP/1.1 413")
        with tls_to(inst, server) as tls:  # a request line alone past the limit: 414
            line = "GET /enrol/{} HTTP/1.1\r\n"
            tls.sendall(line.format("a" * (limit + 1 - len(line) + 2)).encode())
            assert head_of(tls).startswith(b"HTTP/1.1 414")


def test_keep_alive_limit(inst: Instance) -> None:
    request = b"GET /enrol/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with serving(inst, keep_alive_limit=1) as server:
        # open connections waiting for a request count (cheroot connections.py
        # ConnectionManager._num_connections): `first` alone is within the limit of 1
        first = tls_to(inst, server)
        second: ssl.SSLSocket | None = None
        try:
            first.sendall(request)
            kept = head_of(first)
            assert kept.startswith(b"HTTP/1.1 404") and b"connection: close" not in kept.lower()
            time.sleep(0.3)  # `first` is back with the connection manager: the one kept-alive slot
            second = tls_to(inst, server)
            second.sendall(request)
            closed = head_of(second)
            assert closed.startswith(b"HTTP/1.1 404") and b"connection: close" in closed.lower()
            first.sendall(request)  # the kept connection still serves
            assert head_of(first).startswith(b"HTTP/1.1 404")
        finally:
            first.close()
            if second is not None:
                second.close()


def test_threads(inst: Instance) -> None:
    """Two workers: one POST whose body never comes leaves a worker free; two (from two
    addresses: one address alone may hold at most threads - 1, see
    enrolment.header_phase_per_address) leave none, and a third request waits until one
    of them goes."""
    with serving(inst, threads=2) as server:
        token = invite(server)
        held: list[ssl.SSLSocket] = []

        def hold(source: str) -> None:
            tls = tls_to(inst, server, timeout=30, source=source)
            tls.sendall(f"POST /enrol/{token} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n"
                        "Content-Type: application/x-www-form-urlencoded\r\n\r\npassword=".encode())
            held.append(tls)

        def probe(timeout: float) -> bytes:
            with tls_to(inst, server, timeout=timeout) as tls:
                tls.sendall(b"GET /enrol/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                try:
                    return head_of(tls)
                except TimeoutError:
                    return b""

        try:
            hold("127.0.0.2")
            time.sleep(0.5)
            assert probe(5).startswith(b"HTTP/1.1 404")  # at the limit: one worker left
            hold("127.0.0.3")
            time.sleep(0.5)
            waiting = tls_to(inst, server, timeout=30)
            waiting.sendall(b"GET /enrol/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            waiting.settimeout(1.5)
            with pytest.raises(TimeoutError):
                waiting.recv(100)  # over it: no worker for it
            held.pop(0).close()  # a worker comes free: the waiting request is answered
            waiting.settimeout(10)
            assert head_of(waiting).startswith(b"HTTP/1.1 404")
            waiting.close()
        finally:
            for tls in held:
                tls.close()
        Invitations(server.store, server.config.enrolment).peek(token)  # never spent


def test_handshakes_total(inst: Instance) -> None:
    """Three pending handshakes fit; a fourth closes the oldest (the busiest address's)."""
    with serving(inst, handshakes_total=3) as server:
        assert server.enrolment is not None
        port = server.enrolment.port

        def silent() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            time.sleep(0.1)
            return s

        def closed(s: socket.socket) -> bool:
            s.settimeout(1.0)
            try:
                return s.recv(1) == b""
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True

        pending = [silent() for _ in range(3)]
        try:
            assert not closed(pending[0])  # at the limit: all three wait for their ClientHello
            pending.append(silent())
            time.sleep(0.3)
            assert closed(pending[0])  # over it: the oldest is closed
            assert not closed(pending[3])
            assert server.enrolment.handshakes.counters().evicted_total + \
                server.enrolment.handshakes.counters().evicted_per_address >= 1
        finally:
            for s in pending:
                s.close()
        # and a real visitor still gets through
        assert post(inst, enrol_url(server, invite(server)), {"password": ALICE_PW, "p12_password": P12_PW}
                    ).status_code == 200


# --- a failed issuance leaves the link usable --------------------------------------------------


def bound_serials(inst: Instance) -> list[str]:
    return [c.serial for c in load_accounts(inst.home.accounts_file)["alice"].certificates]


@pytest.mark.parametrize("fault", ["ca_key_gone", "accounts_lock_unusable"])
def test_failed_issuance_keeps_the_link(inst: Instance, fault: str) -> None:
    ca_key = inst.home.certs_dir / "ca.key"
    lock = inst.home.accounts_file.with_name(f".{inst.home.accounts_file.name}.lock")
    with serving(inst) as server:
        token = invite(server)
        before_issued, before_bound = issued_count(inst), bound_serials(inst)
        if fault == "ca_key_gone":  # root reads any mode: move the key away instead of chmod 000
            ca_key.rename(ca_key.with_suffix(".away"))
        else:  # binding fails after the certificate was signed and recorded
            lock.unlink(missing_ok=True)
            lock.mkdir()
        fields = {"password": ALICE_PW, "p12_password": P12_PW}
        r = post(inst, enrol_url(server, token), fields)
        assert r.status_code == 503, r.text
        assert "link still works" in r.text
        if fault == "ca_key_gone":
            ca_key.with_suffix(".away").rename(ca_key)
        else:
            shutil.rmtree(lock)
        assert issued_count(inst) == before_issued, "nothing recorded"
        assert bound_serials(inst) == before_bound, "nothing bound"
        invitation = Invitations(server.store, server.config.enrolment).peek(token)
        assert invitation.failures == 0
        # the twin: the same link, once the fault is fixed, issues once
        r = post(inst, enrol_url(server, token), fields)
        assert r.status_code == 200, r.text
        assert issued_count(inst) == before_issued + 1
        assert len(bound_serials(inst)) == len(before_bound) + 1
        assert post(inst, enrol_url(server, token), fields).status_code == 410
    audit = [json.loads(line) for line in (inst.home.root / "state" / "audit.log").read_text().splitlines()]
    mine = [a for a in audit if a.get("listener") == "enrolment" and a.get("method") == "POST"]
    assert [(a["status"], a["reason"]) for a in mine] == [(503, "issue_failed"), (200, "enrolled"),
                                                           (410, "invitation_spent")]
    assert mine[0]["invitation_restored"] is True


def test_unspend_only_undoes_a_spend(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    try:
        inv = Invitations(store, EnrolmentConfig(url="https://x:8444"))
        token, _ = inv.create("alice", now=1000.0)
        assert inv.unspend(token, now=1001.0) is False  # open: nothing to undo
        inv.spend(token, now=1002.0)
        with pytest.raises(InvitationGone):
            inv.spend(token, now=1003.0)
        assert inv.unspend(token, now=1004.0) is True
        inv.spend(token, now=1005.0)  # usable again, once
        # expired meanwhile: stays gone
        token2, invitation = inv.create("alice", now=2000.0, valid_for=60)
        inv.spend(token2, now=2001.0)
        assert inv.unspend(token2, now=2061.0) is False
        with pytest.raises(InvitationGone):
            inv.peek(token2, now=2062.0)
        # burned or withdrawn: never reopened
        token3, _ = inv.create("alice", now=3000.0)
        inv.revoke("alice", now=3001.0)
        assert inv.unspend(token3, now=3002.0) is False
    finally:
        store.close()


def test_unspend_on_redis(redis_url: str) -> None:
    from davserver.store.redis import RedisStore

    store = RedisStore(redis_url, prefix=f"t{time.monotonic_ns()}:")
    try:
        inv = Invitations(store, EnrolmentConfig(url="https://x:8444"))
        token, _ = inv.create("alice")
        assert inv.unspend(token) is False
        inv.spend(token)
        assert inv.unspend(token) is True
        inv.spend(token)
        with pytest.raises(InvitationGone):
            inv.spend(token)
    finally:
        store.close()


def test_config_file_with_every_bound_loads(inst: Instance) -> None:
    configure(inst, threads=1, handshakes_total=1, header_bytes=4096, keep_alive_limit=0, form_bytes=1024,
              csr_bytes=1024)
    e = load_config(inst.home).enrolment
    assert (e.threads, e.handshakes_total, e.header_bytes, e.keep_alive_limit, e.form_bytes, e.csr_bytes) == (
        1, 1, 4096, 0, 1024, 1024)


def test_form_bytes_bounds_the_renewal_form_too(inst: Instance) -> None:
    from tests.test_enrolment_web import alice_cert, renew

    with serving(inst, renew_before_days=400, form_bytes=1024) as server:
        fixed = f"password={ALICE_PW}&p12_password={P12_PW}&pad="
        over = {"password": ALICE_PW, "p12_password": P12_PW, "pad": "x" * (1024 + 1 - len(fixed))}
        before = issued_count(inst)
        assert renew(inst, server, over, alice_cert(inst)).status_code == 413
        assert issued_count(inst) == before
        at = {**over, "pad": over["pad"][:-1]}
        r = renew(inst, server, at, alice_cert(inst))
        assert r.status_code == 200, r.text
        assert issued_count(inst) == before + 1
