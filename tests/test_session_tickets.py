"""TLS session tickets work across worker processes and nodes (tls_tickets.py).

Every context the server builds encrypts tickets with keys derived from the state store's
``period_secret("tls-session-tickets", period, ...)`` for the current period of
``tls.session_ticket_seconds``. Before, each worker had OpenSSL's random keys: the accept
turn-taking sent a reconnect to the other worker, which could not open the ticket, and the
client paid a full mutual-TLS handshake (TLS 1.3 PSK: reused=False every time).

Proved here with real TLS sockets and the project CA's certificates:
- ``davserver serve --workers 2``: a saved session (TLS 1.2 ticket, TLS 1.3 PSK) is
  resumed on every reconnect, and the reconnects land on both workers;
- two in-process servers on one store resume each other's sessions, as the same account;
- after a key rotation the old session is not resumed, the full handshake still works and
  the new session resumes (the twin);
- a resumed session carries the client certificate: once it is revoked, the resumed
  connection is refused (401, audited ``revoked``), where before it was served;
- a failed pointer check writes nothing, warns once, and the context keeps its own keys;
- the setting's bounds.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml

from davserver import tls_ca_names
from davserver.config import ConfigError, load_config
from davserver.pki import CertificateAuthority
from davserver.store import SQLiteStore
from davserver.tls_ca_names import CANamesUnavailable
from davserver.tls_tickets import (
    KEYS_LENGTH,
    SharedTicketKeys,
    TicketKeysUnavailable,
    derive_keys,
    set_ticket_keys,
    ticket_keys_of,
)
from tests.conftest import Client, Instance, client_context, running
from tests.test_enrolment_web import enable
from tests.workers import children, port_of, ready_workers, serve, wait_for, worker_of

VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def _context(inst: Instance, client: Client, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_context(inst, client)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def connect(port: int, ctx: ssl.SSLContext, client: Client, session: ssl.SSLSession | None = None,
            pids: list[int] | None = None) -> tuple[int, bool, ssl.SSLSession | None, int | None]:
    """One connection with `session` and one GET /files/: (status, resumed, the session to
    save, the PID of the worker among `pids` that held it)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        token = base64.b64encode(f"{client.account}:{client.password}".encode()).decode()
        sock.sendall(f"GET /files/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {token}\r\n\r\n".encode())
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        resp.read()
        worker = worker_of(pids, port, sock.getsockname()[1]) if pids else None
        return resp.status, bool(sock.session_reused), sock.session, worker
    finally:
        sock.close()


def _audit_reasons(inst: Instance) -> list[str]:
    path = inst.home.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line)["reason"] for line in path.read_text().splitlines() if line.strip()]


# --- the keys --------------------------------------------------------------------------

def test_keys_are_derived_per_period_and_set_on_the_ssl_ctx() -> None:
    secret = b"s" * 32
    keys = [derive_keys(secret, period) for period in range(50)]
    assert all(len(k) == KEYS_LENGTH for k in keys)
    assert len(set(keys)) == 50, "every period has keys of its own"
    assert derive_keys(secret, 7) == keys[7], "the same secret and period: the same keys in any process"
    assert derive_keys(b"t" * 32, 7) != keys[7]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    own = ticket_keys_of(ctx)
    assert own not in keys  # OpenSSL's random keys first
    set_ticket_keys(ctx, keys[3])
    assert ticket_keys_of(ctx) == keys[3]
    with pytest.raises(ValueError, match="80 bytes, not 79"):
        set_ticket_keys(ctx, keys[4][:79])
    assert ticket_keys_of(ctx) == keys[3], "a refused length writes nothing"


def test_a_failed_pointer_check_writes_nothing_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """What another Python build would meet (tls_ca_names.py's checks): the context keeps
    OpenSSL's per-process keys; the twin, with the checks passing, gets the shared ones."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    own = ticket_keys_of(ctx)
    store = SQLiteStore(tmp_path / "state.db")
    shared = SharedTicketKeys(store, 3600, clock=lambda: 3600.0)
    real = tls_ca_names._ssl_ctx_pointer

    def refuse(context: ssl.SSLContext, lib: object) -> int:
        raise CANamesUnavailable("SSL_CTX_get_options differs from SSLContext.options")

    monkeypatch.setattr("davserver.tls_tickets._ssl_ctx_pointer", refuse)
    caplog.set_level(logging.WARNING, logger="davserver.tls")
    with pytest.raises(TicketKeysUnavailable, match="SSL_CTX_get_options differs"):
        set_ticket_keys(ctx, derive_keys(b"k" * 32, 1))
    assert shared.apply(ctx, 1) is False
    assert shared.apply(ctx, 2) is False
    warnings = [r for r in caplog.records if "session tickets stay per process" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    monkeypatch.setattr("davserver.tls_tickets._ssl_ctx_pointer", real)
    assert ticket_keys_of(ctx) == own, "nothing was written"
    assert shared.apply(ctx, 1) is True
    assert ticket_keys_of(ctx) == derive_keys(shared.secret(1), 1)
    store.close()
    with pytest.raises(TicketKeysUnavailable, match="not an ssl.SSLContext"):
        set_ticket_keys(object(), derive_keys(b"k" * 32, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "ok"), [(59, False), (60, True), (3600, True), (86400, True), (86401, False)])
def test_the_period_setting_and_its_bounds(inst: Instance, value: int, ok: bool) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw.setdefault("tls", {})["session_ticket_seconds"] = value
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    if ok:
        assert load_config(inst.home).tls.session_ticket_seconds == value
    else:
        with pytest.raises(ConfigError, match=r"tls\.session_ticket_seconds"):
            load_config(inst.home)


# --- across worker processes -------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_two_workers_resume_every_saved_session(inst: Instance, tmp_path: Path, version: ssl.TLSVersion) -> None:
    """The reviewer's case: with 2 workers every reconnect with the saved session is
    resumed (before: TLS 1.3 never, TLS 1.2 only on the worker that issued the ticket),
    and the reconnects land on both workers."""
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, version)
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        pids, port = children(proc.pid), port_of(url)
        assert len(pids) == 2
        status, reused, session, first = connect(port, ctx, alice, pids=pids)
        assert (status, reused) == (200, False)
        assert session is not None and first in pids
        landed: dict[int, int] = {}
        for attempt in range(40):  # turn-taking alternates; a busy machine may keep one worker away a while
            status, reused, _, worker = connect(port, ctx, alice, session, pids=pids)
            assert (status, reused) == (200, True), (status, reused, worker, landed)
            assert worker is not None
            landed[worker] = landed.get(worker, 0) + 1
            if attempt >= 7 and len(landed) == 2:
                break
        assert set(landed) == set(pids), f"the reconnects did not reach both workers: {landed}"


# --- across nodes on one store, rotation, revocation ---------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_two_servers_on_one_store_resume_each_others_sessions(inst: Instance, version: ssl.TLSVersion) -> None:
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, version)
    with running(inst) as one, running(inst) as two:
        for first, second in ((one, two), (two, one)):
            status, reused, session, _ = connect(first.port, ctx, alice)
            assert (status, reused) == (200, False)
            for _ in range(3):
                assert connect(second.port, ctx, alice, session)[:2] == (200, True)
                assert connect(first.port, ctx, alice, session)[:2] == (200, True)
    assert "unknown_cert" not in _audit_reasons(inst)


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_after_a_rotation_the_old_session_makes_a_full_handshake(inst: Instance, version: ssl.TLSVersion) -> None:
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, version)
    with running(inst) as server:
        seconds = server.config.tls.session_ticket_seconds
        certificate = server.server_certificate
        status, reused, session, _ = connect(server.port, ctx, alice)
        assert (status, reused) == (200, False)
        assert connect(server.port, ctx, alice, session)[:2] == (200, True), "the twin: resumed before"
        assert certificate.rotate_ticket_keys() is False, "same period: nothing changes"
        assert certificate.rotate_ticket_keys(time.time() + seconds) is True
        status, reused, fresh, _ = connect(server.port, ctx, alice, session)
        assert (status, reused) == (200, False), "the old ticket no longer opens; the full handshake works"
        assert connect(server.port, ctx, alice, fresh)[:2] == (200, True), "the new session resumes"


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_revoked_certificates_resumed_session_is_refused(inst: Instance, version: ssl.TLSVersion) -> None:
    """A resumed session carries its certificate; the guard checks it against the CRL on
    every request, on the other server too."""
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, version)
    with running(inst) as one, running(inst) as two:
        status, _, session, _ = connect(one.port, ctx, alice)
        assert status == 200
        assert connect(two.port, ctx, alice, session)[:2] == (200, True), "the twin: served before revocation"
        inst.ca.revoke(alice.issued.serial)  # the CRL only: the binding stays, the CRL check must stop it
        for server in (two, one):
            status, reused, _, _ = connect(server.port, ctx, alice, session)
            assert (status, reused) == (401, True)
    assert _audit_reasons(inst)[-2:] == ["revoked", "revoked"]


def test_every_context_carries_the_shared_keys_bound_to_its_certificate_and_cas(
    inst: Instance, tmp_path: Path
) -> None:
    """The main and the enrolment listener's contexts hold keys from the store's secret
    (two servers on the store: the same keys), each bound to what it trusts
    (server_certificate.py ``_ticket_scope``): an enrolment session is not resumed on the
    main listener. A reload that changes nothing keeps the keys and sessions resume
    across it (the twin); one that changes the trusted CAs rebuilds the contexts with
    other keys: the old session makes a full handshake, as under a new server certificate
    (tests/test_cert_reload.py)."""
    enable(inst)
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, ssl.TLSVersion.TLSv1_3)
    with running(inst) as server, running(inst) as other:
        assert server.enrolment is not None and other.enrolment is not None
        adapters = (server._server.ssl_adapter, server.enrolment.adapter)
        keys = [ticket_keys_of(a.context) for a in adapters]
        assert keys == [ticket_keys_of(a.context) for a in (other._server.ssl_adapter, other.enrolment.adapter)]
        assert keys[0] != keys[1], "the enrolment listener's tickets are not the main listener's"
        period = int(time.time() // server.config.tls.session_ticket_seconds)
        secret = SharedTicketKeys(server.store, server.config.tls.session_ticket_seconds).secret(period)
        assert derive_keys(secret, period, b"") not in keys and len(set(keys)) == 2

        # an enrolment session (asked for no client certificate) on the main listener: a full handshake
        raw = socket.create_connection(("127.0.0.1", server.enrolment.port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            resp.read()
            enrolment_session = sock.session
        assert enrolment_session is not None
        assert connect(server.port, ctx, alice, enrolment_session)[:2] == (200, False)

        status, _, session, _ = connect(server.port, ctx, alice)
        crt = inst.home.certs_dir / "server.crt"
        stamp = crt.stat().st_mtime_ns + 2_000_000_000
        os.utime(crt, ns=(stamp, stamp))
        assert server.server_certificate.check() is True
        assert [ticket_keys_of(a.context) for a in adapters] == keys, "the same files: the same keys"
        assert connect(server.port, ctx, alice, session)[:2] == (200, True), "resumed across the reload"

        other_ca = CertificateAuthority(tmp_path / "other-ca")
        other_ca.create(common_name="another CA")
        bundle = inst.home.certs_dir / "ca.crt"
        bundle.write_bytes(bundle.read_bytes() + other_ca.ca_cert_path.read_bytes())
        assert server.server_certificate.check() is True
        assert ticket_keys_of(adapters[0].context) != keys[0], "other trusted CAs: other keys"
        assert ticket_keys_of(adapters[1].context) == keys[1], "the enrolment listener trusts no client CA"
        assert connect(server.port, ctx, alice, session)[:2] == (200, False)
