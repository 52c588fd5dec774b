"""The authentication and access rules, tested against a live TLS server from the attacker's side.
Every refusal has a twin that shows the same request works when it should."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from davserver import instance
from davserver.accounts import Account, load_accounts, save_accounts
from davserver.auth.passwords import hash_password
from davserver.pki import CertificateAuthority

from .conftest import PROMPT_SECONDS, Client, Instance, client_context, running, session_for


def audit_records(inst: Instance) -> list[dict]:
    path = inst.home.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_reason(inst: Instance, expected: str) -> str:
    """The newest record's reason, waiting briefly for `expected`: a record is written
    just after the response's last byte, so it can trail the client by a moment."""
    reason = None
    for _ in range(100):
        records = audit_records(inst)
        reason = records[-1]["reason"] if records else None
        if reason == expected:
            break
        time.sleep(0.02)
    return str(reason)


def tls_fails(inst: Instance, port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server refuses the handshake (over TLS 1.3 the refusal may surface on first read)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /files/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(100) == b""
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def test_certificate_and_password_get_in(inst: Instance, server) -> None:
    r = session_for(inst).get(server.url + "files/")
    assert r.status_code == 200
    assert last_reason(inst, "ok") == "ok"


def test_no_client_certificate_fails_handshake(inst: Instance, server) -> None:
    assert tls_fails(inst, server.port, client_context(inst, None))
    assert not tls_fails(inst, server.port, client_context(inst, inst.clients["alice"]))


@pytest.mark.parametrize("tls12", [True, False])
def test_certificate_from_another_ca_is_refused(inst: Instance, server, tmp_path: Path, tls12: bool) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.create()
    issued = other.issue_client_cert("alice", out_prefix=tmp_path / "mallory", p12_password=b"x" * 12)
    forged = Client("alice", "alice-secret-pw", Path(issued.paths["crt"]), Path(issued.paths["key"]),
                    Path(issued.paths["p12"]), "x", issued)
    assert tls_fails(inst, server.port, client_context(inst, forged, tls12=tls12))
    assert not tls_fails(inst, server.port, client_context(inst, inst.clients["alice"], tls12=tls12))


def test_expired_certificate_is_refused(inst: Instance, server) -> None:
    past = datetime.now(UTC) - timedelta(days=10)
    old = inst.issue("alice", name="alice-old", now=past, days=2)
    assert tls_fails(inst, server.port, client_context(inst, old, tls12=True))
    fresh = inst.issue("alice", name="alice-new")
    assert not tls_fails(inst, server.port, client_context(inst, fresh, tls12=True))


def test_server_auth_only_certificate_is_refused(inst: Instance, server) -> None:
    certs = inst.home.certs_dir
    server_as_client = Client("alice", "alice-secret-pw", certs / "server.crt", certs / "server.key",
                              certs / "server.crt", "", inst.clients["alice"].issued)
    assert tls_fails(inst, server.port, client_context(inst, server_as_client, tls12=True))


def test_revocation_applies_at_once_on_a_kept_alive_connection(inst: Instance, server) -> None:
    alice = inst.clients["alice"]
    auth = "Basic " + base64.b64encode(b"alice:alice-secret-pw").decode()
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context(inst, alice))
    conn.request("GET", "/files/", headers={"Authorization": auth, "Host": "localhost"})
    first = conn.getresponse()
    first.read()
    assert first.status == 200
    sock_before = conn.sock
    inst.ca.revoke(alice.issued.serial)  # the CRL only: the binding is left, so the CRL check is what stops it
    conn.request("GET", "/files/", headers={"Authorization": auth, "Host": "localhost"})
    second = conn.getresponse()
    second.read()
    assert conn.sock is sock_before, "the same TLS connection was used"
    conn.close()
    assert second.status == 401
    assert last_reason(inst, "revoked") == "revoked"
    # the twin: bob's certificate, not revoked, still works
    assert session_for(inst, "bob").get(server.url + "ro/").status_code == 200


def test_basic_user_must_match_the_certificate(inst: Instance, server) -> None:
    s = session_for(inst, "alice")
    s.auth = ("bob", "bob-secret-pw1")  # bob's real password, alice's certificate
    assert s.get(server.url + "files/").status_code == 401
    assert last_reason(inst, "user_mismatch") == "user_mismatch"


def test_wrong_password_is_refused_with_a_plain_401(inst: Instance, server) -> None:
    r = session_for(inst, password="not-the-password").get(server.url + "files/")
    assert r.status_code == 401
    assert r.text == "invalid credentials\n"
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert last_reason(inst, "bad_password") == "bad_password"


def test_missing_credentials_are_challenged(inst: Instance, server) -> None:
    s = session_for(inst)
    s.auth = None
    r = s.get(server.url + "files/")
    assert r.status_code == 401
    assert last_reason(inst, "no_credentials") == "no_credentials"


@pytest.mark.parametrize(
    "header", ["Basic", "Basic !!!notbase64", "Basic " + "YWxpY2U=", "Bearer abc", "Basic /w==", "Basic  "]
)
def test_malformed_authorization_gets_401_not_500(inst: Instance, server, header: str) -> None:
    s = session_for(inst)
    s.auth = None
    r = s.get(server.url + "files/", headers={"Authorization": header})
    assert r.status_code == 401


def test_disabled_account_is_refused_until_enabled(inst: Instance, server) -> None:
    path = inst.home.accounts_file
    save_accounts(path, load_accounts(path).edit("alice", enabled=False))
    assert session_for(inst).get(server.url + "files/").status_code == 401
    assert last_reason(inst, "disabled") == "disabled"
    save_accounts(path, load_accounts(path).edit("alice", enabled=True))
    assert session_for(inst).get(server.url + "files/").status_code == 200


def test_password_change_ends_the_cached_login(inst: Instance, server) -> None:
    s = session_for(inst)
    assert s.get(server.url + "files/").status_code == 200  # now cached
    path = inst.home.accounts_file
    save_accounts(path, load_accounts(path).edit("alice", password_hash=hash_password("a-new-password")))
    assert s.get(server.url + "files/").status_code == 401
    assert session_for(inst, password="a-new-password").get(server.url + "files/").status_code == 200


def test_read_only_share_refuses_writes(inst: Instance, server) -> None:
    s = session_for(inst)
    assert s.get(server.url + "ro/readme.txt").text == "read only\n"
    for method, data in [("PUT", b"x"), ("DELETE", None), ("MKCOL", None)]:
        target = server.url + ("ro/new" if method != "DELETE" else "ro/readme.txt")
        r = s.request(method, target, data=data)
        assert r.status_code == 403, method
    assert (inst.home.root / "data/ro/readme.txt").read_text() == "read only\n"
    assert not (inst.home.root / "data/ro/new").exists()
    assert s.put(server.url + "files/new", data=b"x").status_code in (201, 204)


def test_copy_into_a_read_only_share_is_refused(inst: Instance, server) -> None:
    s = session_for(inst)
    s.put(server.url + "files/a.txt", data=b"a")
    r = s.request("COPY", server.url + "files/a.txt", headers={"Destination": server.url + "ro/a.txt"})
    assert r.status_code == 403
    assert not (inst.home.root / "data/ro/a.txt").exists()
    r = s.request("COPY", server.url + "files/a.txt", headers={"Destination": server.url + "files/b.txt"})
    assert r.status_code == 201


def test_share_access_follows_readers_and_writers(inst: Instance, server) -> None:
    # team: readers [bob], writers [@staff] (alice is staff); carol is neither
    assert session_for(inst, "carol").get(server.url + "team/").status_code == 401
    assert last_reason(inst, "share_denied") == "share_denied"
    assert session_for(inst, "bob").get(server.url + "team/").status_code == 200
    assert session_for(inst, "bob").put(server.url + "team/x", data=b"1").status_code == 403
    assert last_reason(inst, "write_denied") == "write_denied"
    assert session_for(inst, "alice").put(server.url + "team/x", data=b"1").status_code in (201, 204)


def test_root_lists_only_the_shares_the_account_may_see(inst: Instance, server) -> None:
    def names(account: str) -> set[str]:
        r = session_for(inst, account).request("PROPFIND", server.url, headers={"Depth": "1"})
        assert r.status_code == 207
        return {h.strip("/") for h in re.findall(r"<[^>]*href>([^<]*)</", r.text)} - {""}

    assert names("carol") == {"files", "ro"}
    assert names("alice") == {"files", "ro", "team"}


def test_audit_log_has_the_facts_and_no_secret(inst: Instance, server) -> None:
    session_for(inst).put(server.url + "files/audit.txt", data=b"12345")
    session_for(inst, password="wrong-password-123").get(server.url + "files/")
    records = audit_records(inst)
    put = next(r for r in records if r["method"] == "PUT")
    assert put["account"] == "alice" and put["share"] == "files" and put["path"] == "/files/audit.txt"
    assert put["bytes_in"] == 5 and put["status"] in (201, 204) and put["decision"] == "allow"
    assert put["cert_fingerprint"] == inst.clients["alice"].issued.fingerprint
    assert put["cert_serial"] == inst.clients["alice"].issued.serial
    assert {"time", "peer", "cert_subject", "bytes_out", "duration_ms", "reason"} <= put.keys()
    text = (inst.home.state_dir / "audit.log").read_text()
    assert "alice-secret-pw" not in text and "wrong-password-123" not in text
    assert "Authorization" not in text


def test_broken_accounts_file_keeps_the_last_good_version(inst: Instance, server) -> None:
    s = session_for(inst)
    assert s.get(server.url + "files/").status_code == 200
    inst.home.accounts_file.write_text("accounts: [this is: not valid")
    assert s.get(server.url + "files/").status_code == 200
    assert session_for(inst, password="wrong-password").get(server.url + "files/").status_code == 401


def test_a_silent_connection_does_not_delay_others(inst: Instance, server) -> None:
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        started = time.monotonic()
        assert session_for(inst).get(server.url + "files/").status_code == 200
        assert time.monotonic() - started < PROMPT_SECONDS  # stalled: 10 s (server.timeout)
    finally:
        for s in silent:
            s.close()


def test_revoking_through_the_key_manager_unbinds_the_account(inst: Instance, server) -> None:
    alice = inst.clients["alice"]
    revoked = inst.ca.revoke_account("alice")
    instance.unbind_certificates(inst.home, revoked)
    assert [c.serial for c in revoked] == [alice.issued.serial]
    assert load_accounts(inst.home.accounts_file)["alice"].certificates == ()
    r = session_for(inst).get(server.url + "files/")
    assert r.status_code == 401
    assert last_reason(inst, "revoked") == "revoked"


def test_server_restart_is_not_needed_for_a_new_account(inst: Instance, server) -> None:
    instance.add_account(inst.home, Account(name="dave", password_hash=hash_password("dave-secret-pw")))
    dave = inst.issue("dave", p12_password="dave-p12-pw")
    s = session_for(inst, client=dave, password="dave-secret-pw")
    assert s.get(server.url + "files/").status_code == 200


def test_two_servers_can_run_side_by_side(inst: Instance) -> None:
    with running(inst) as a, running(inst) as b:
        assert a.port != b.port
        assert session_for(inst).get(b.url + "files/").status_code == 200


def test_options_needs_the_certificate_but_no_password(inst: Instance, server) -> None:
    s = session_for(inst)
    s.auth = None
    r = s.options(server.url + "files/")
    assert r.status_code == 200
    assert r.headers["DAV"].replace(" ", "").startswith("1,2")
    assert r.headers["MS-Author-Via"] == "DAV"
    assert s.options(server.url + "ro/").headers["DAV"].strip() == "1", "read-only shares offer no locking"
    assert s.options(server.url).status_code == 200
    assert s.request("PROPFIND", server.url + "files/", headers={"Depth": "0"}).status_code == 401
    assert session_for(inst, "carol").options(server.url + "team/").status_code == 401, "still per share"
    inst.ca.revoke(inst.clients["alice"].issued.serial)
    assert s.options(server.url + "files/").status_code == 401, "and still per certificate"


@pytest.mark.parametrize("path", ["/files/../team/secret.txt", "/files/%2e%2e/team/secret.txt",
                                  "/files/./../team/secret.txt", "/files/..%2fteam/secret.txt"])
def test_dot_segments_cannot_cross_into_another_share(inst: Instance, server, path: str) -> None:
    (inst.home.root / "data/team/secret.txt").write_text("team only\n")
    s = session_for(inst, "carol")  # carol may use `files` but not `team`
    r = s.get(server.url.rstrip("/") + path)
    assert r.status_code in (400, 401, 403, 404) and "team only" not in r.text
    assert session_for(inst, "bob").get(server.url + "team/secret.txt").text == "team only\n"
    r = s.request("COPY", server.url + "files/", headers={"Destination": server.url + "files/../team/x"})
    assert r.status_code in (400, 403)
