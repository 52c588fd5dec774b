"""Forward secrecy of the TLS session-ticket keys (tls_tickets.py, StateStore.period_secret).

Before, every period's ticket keys were HKDF of one stored secret that was never rotated
(``shared_secret("tls-session-tickets")``), the period number and a public scope: whoever
later read state.db, a backup or a Redis RDB/AOF/replica re-derived any past period's
keys, opened recorded TLS 1.2 tickets and read their master keys, and with them the
recorded sessions (passwords, TOTP codes, files).

Now each period's secret is random and the store deletes it at the end of the period after
it. Proved here:
- the store contract on both backends: one value per (name, period) for every caller and
  opening, another for every other period; a period already over gets bytes stored
  nowhere; the secret of period n is gone once period n+2 is asked for (SQLite) or its
  time is up (Redis expiry), while the grace period's stays (the twin);
- SQLite, over many periods: a deleted secret's bytes are in neither state.db nor its WAL
  (``secure_delete`` and a truncating checkpoint), while the live ones are (the twin:
  the byte search finds what is there), and the never-rotated secret of earlier
  releases is deleted the same way;
- the reviewer's probe end to end: a real TLS 1.2 ticket from ``openssl s_client``,
  opened with a key derived from the store file while its period is live (the master
  key is inside: the probe works), and no longer derivable from anything in the file
  once the period and its grace are over;
- two servers on one Redis store still resume each other's sessions.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from davserver.store import SQLiteStore, StateStore
from davserver.store.redis import RedisStore
from davserver.tls_tickets import SECRET_BYTES, SECRET_NAME, SharedTicketKeys, derive_keys, ticket_keys_of
from tests.conftest import Instance, running
from tests.test_check import append_config
from tests.test_session_tickets import VERSIONS, _context, connect
from tests.test_store_secrets import open_at

NAME = "tls-session-tickets"


@pytest.fixture(params=["sqlite", "redis"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    """(backend, location, prefix) of a store both backends open (test_store_secrets.py)."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}:"
    return "sqlite", str(tmp_path / "state" / "state.db"), ""


@pytest.fixture
def store(where: tuple[str, str, str]) -> Iterator[StateStore]:
    opened = open_at(*where)
    yield opened
    opened.close()


def _file_bytes(path: Path) -> bytes:
    """The SQLite file and its WAL (and rollback journal), as they are on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists())


# --- the store contract -----------------------------------------------------------------


def test_one_value_per_name_and_period_for_every_caller(store: StateStore, where: tuple[str, str, str]) -> None:
    first = store.period_secret(NAME, 1000, 32, 60)
    assert len(first) == 32 and store.period_secret(NAME, 1000, 32, 60) == first
    other = open_at(*where)
    try:
        assert other.period_secret(NAME, 1000, 32, 60) == first, "another process or node: the same bytes"
        assert other.period_secret(NAME, 1001, 32, 60) not in (first, b"")
        assert other.period_secret("another-name", 1000, 32, 60) not in (first, b"")
    finally:
        other.close()
    with pytest.raises(ValueError, match="too short"):
        store.period_secret(NAME, 1000, 15, 60)
    with pytest.raises(ValueError, match="needs a name"):
        store.period_secret("", 1000, 32, 60)


def test_a_period_already_over_gets_bytes_stored_nowhere(store: StateStore) -> None:
    over = {store.period_secret(NAME, 2000, 32, keep) for keep in (0, -1, -3600)}
    assert len(over) == 3, "fresh random bytes each time"
    kept = store.period_secret(NAME, 2000, 32, 60)
    assert kept not in over and store.period_secret(NAME, 2000, 32, 60) == kept, "the twin: stored"


def test_sqlite_deletes_a_period_once_its_grace_is_over(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "state.db")
    try:
        secrets = {n: db.period_secret(NAME, n, 32, 86400) for n in (10, 11)}
        assert db.period_secret(NAME, 12, 32, 86400) not in secrets.values()
        assert db.period_secret(NAME, 11, 32, 86400) == secrets[11], "the grace period stays"
        again = db.period_secret(NAME, 10, 32, 86400)
        assert again != secrets[10], "period 10 is gone: it cannot come back"
        assert db.period_secret(NAME, 10, 32, 86400) != again, "and is not stored again"
        rows = db.connection().execute("SELECT period FROM period_secrets WHERE name = ?", (NAME,)).fetchall()
        assert sorted(p for (p,) in rows) == [11, 12]
    finally:
        db.close()


def test_sqlite_deletes_an_expired_secret(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "state.db")
    try:
        short = db.period_secret(NAME, 5, 32, 0.2)
        assert db.period_secret(NAME, 5, 32, 0.2) == short, "the twin: kept while its time runs"
        time.sleep(0.3)
        assert db.period_secret(NAME, 5, 32, 60) != short
    finally:
        db.close()


def test_redis_expires_a_period_and_keeps_the_grace(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    db = RedisStore(redis_url, prefix=prefix)
    try:
        legacy = db.shared_secret(NAME)
        short = db.period_secret(NAME, 7, 32, 0.3)
        grace = db.period_secret(NAME, 8, 32, 60)
        assert db.client.get(f"{prefix}secret:{NAME}") is None, "the never-rotated secret of earlier releases is gone"
        assert legacy not in (short, grace)
        assert db.period_secret(NAME, 7, 32, 0.3) == short, "the twin: kept while its time runs"
        assert 0 < int(db.client.pttl(f"{prefix}period-secret:{NAME}:7")) <= 300
        time.sleep(0.5)
        assert db.client.exists(f"{prefix}period-secret:{NAME}:7") == 0
        assert db.period_secret(NAME, 7, 32, 60) != short
        assert db.period_secret(NAME, 8, 32, 60) == grace
    finally:
        db.client.delete(*db.client.keys(f"{prefix}*"))
        db.close()


# --- the bytes on disk ------------------------------------------------------------------


def test_sqlite_file_and_wal_keep_no_deleted_secret(tmp_path: Path) -> None:
    """Over many rotations, with another connection open (another worker): each period's
    secret is in the files while it lives and in neither file once two later periods were
    asked for."""
    path = tmp_path / "state.db"
    db, reader = SQLiteStore(path), SQLiteStore(path)
    try:
        legacy = db.shared_secret(NAME)
        assert legacy in _file_bytes(path), "the twin: the byte search finds a stored secret"
        made: dict[int, bytes] = {}
        for n in range(100, 120):
            made[n] = db.period_secret(NAME, n, 32, 86400)
            assert reader.period_secret(NAME, n, 32, 86400) == made[n]
            on_disk = _file_bytes(path)
            assert legacy not in on_disk
            assert made[n] in on_disk and (n - 1 not in made or made[n - 1] in on_disk), "the live ones are there"
            for old in range(100, n - 1):
                assert made[old] not in on_disk, f"period {old}'s secret is still in the file at period {n}"
    finally:
        reader.close()
        db.close()


# --- the reviewer's probe, end to end ---------------------------------------------------


def _tls12_ticket(inst: Instance, port: int, tmp_path: Path) -> tuple[bytes, bytes]:
    """(the master key the client saw, the session ticket the server sent) of one TLS 1.2
    connection by ``openssl s_client`` with alice's certificate."""
    clients = inst.home.root / "certs" / "clients"
    sess = tmp_path / "sess.pem"
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cert", str(clients / "alice.crt"),
         "-key", str(clients / "alice.key"), "-CAfile", str(inst.ca_file), "-sess_out", str(sess), "-ign_eof"],
        input=b"GET /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", capture_output=True, timeout=60,
        check=False).stdout.decode()
    found = re.search(r"Master-Key: ([0-9A-F]+)", out)
    assert found is not None, out
    text = subprocess.run(["openssl", "sess_id", "-in", str(sess), "-text", "-noout"], capture_output=True,
                          check=True).stdout.decode()
    block = text.split("TLS session ticket:")[1].split("\n\n")[0]
    hexes = "".join(re.findall(r"^\s*[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){1,16})", block, re.M))
    return bytes.fromhex(found.group(1)), bytes.fromhex(hexes.replace("-", " ").replace(" ", ""))


def _opens(ticket: bytes, keys: bytes, master: bytes) -> bool:
    """Whether `keys` (80 bytes: name, HMAC, AES) name `ticket` and decrypt it to a state
    holding `master` (OpenSSL's ticket: key name 16, IV 16, AES-256-CBC data, HMAC 32)."""
    if ticket[:16] != keys[:16]:
        return False
    decryptor = Cipher(algorithms.AES(keys[48:80]), modes.CBC(ticket[16:32])).decryptor()
    return master in decryptor.update(ticket[32:-32]) + decryptor.finalize()


def _scope(inst: Instance) -> bytes:
    """server_certificate.py ``_ticket_scope`` of the main listener, from public files."""
    leaf = x509.load_pem_x509_certificate((inst.home.certs_dir / "server.crt").read_bytes())
    return hashlib.sha256(b"\0".join((leaf.fingerprint(hashes.SHA256()), (inst.home.certs_dir / "ca.crt").read_bytes(),
                                      b"2"))).digest()


def _stored(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT period, value FROM period_secrets WHERE name = ?", (SECRET_NAME,)).fetchall()
        legacy = db.execute("SELECT value FROM shared_secrets WHERE name = ?", (SECRET_NAME,)).fetchall()
    db.close()
    assert legacy == [], "no never-rotated ticket secret"
    return [(int(p), bytes(v)) for p, v in rows]


def test_a_recorded_ticket_cannot_be_opened_from_the_store_after_its_period(inst: Instance, tmp_path: Path) -> None:
    path = inst.home.state_dir / "state.db"
    with running(inst) as server:
        seconds = server.config.tls.session_ticket_seconds
        period = int(time.time() // seconds)
        master, ticket = _tls12_ticket(inst, server.port, tmp_path)
        assert _opens(ticket, ticket_keys_of(server._server.ssl_adapter.context), master), "the probe works"
        # the twin: while its period lives, a reader of the store file opens the ticket
        live = dict(_stored(path))
        assert _opens(ticket, derive_keys(live[period], period, _scope(inst)), master)
        secret = live[period]
        # the period and its grace pass (what the maintenance loop does at that time)
        assert server.server_certificate.rotate_ticket_keys(time.time() + 2 * seconds) is True
    stored = _stored(path)
    assert period not in dict(stored) and stored, "the old period's row is gone, the new one is there"
    for n in range(period - 2, period + 4):
        for _, value in stored:
            assert not _opens(ticket, derive_keys(value, n, _scope(inst)), master)
    assert secret not in _file_bytes(path), "the deleted secret is in neither state.db nor its WAL"
    assert len(secret) == SECRET_BYTES


# --- resumption still works on Redis -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=["tls1.2", "tls1.3"])
def test_two_servers_on_one_redis_resume_each_others_sessions(
    inst: Instance, redis_url: str, version: ssl.TLSVersion
) -> None:
    prefix = f"fs-{uuid.uuid4().hex}:"
    append_config(inst, f"state: {{backend: redis, url: '{redis_url}', prefix: '{prefix}'}}\n")
    alice = inst.clients["alice"]
    ctx = _context(inst, alice, version)
    with running(inst) as first, running(inst) as second:
        status, reused, session, _ = connect(first.port, ctx, alice)
        assert (status, reused) == (200, False)
        assert connect(second.port, ctx, alice, session)[:2] == (200, True)
        assert connect(first.port, ctx, alice, session)[:2] == (200, True)
        keys = SharedTicketKeys(first.store, first.config.tls.session_ticket_seconds)
        period = keys.period()
        expected = derive_keys(keys.secret(period), period, _scope(inst))
        assert ticket_keys_of(first._server.ssl_adapter.context) == expected, "the keys come from the Redis secret"
