"""The server certificate over its life: replaced on disk and served without a restart
(a bad pair never), re-issued from the built-in CA before it lapses (never one from
another CA), and warned about before it, the CA or the CRL's signer lapse.

Real TLS sockets, certificates from the project's own key manager (pki.py)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from base64 import b64encode
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from davserver.cert_lifecycle import REISSUE_DAYS, check_expiry, reissue_server_certificate
from davserver.config import ConfigError, TLSConfig, load_config
from davserver.errors import StartupError
from davserver.pki import CertificateAuthority
from davserver.server import DavServer
from davserver.server_certificate import ServerCertificate
from davserver.tls import create_ssl_context
from tests.conftest import Instance, running


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _pem_fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return _fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _client(inst: Instance) -> ssl.SSLContext:
    """Presents alice's certificate and accepts any server certificate (a foreign one too)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    alice = inst.clients["alice"]
    ctx.load_cert_chain(str(alice.crt), str(alice.key))
    return ctx


def served(srv: DavServer, inst: Instance) -> str:
    """SHA-256 of the certificate the server presents to a new connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            _client(inst).wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return _fingerprint(der)


def new_pair(
    tmp: Path, ca_dir: Path, names: tuple[str, ...] = ("dav.example.org",), days: int = 397
) -> tuple[bytes, bytes]:
    """A fresh server certificate and key from the CA in `ca_dir`, made to the side."""
    folder = tmp / f"pair-{os.urandom(4).hex()}"
    folder.mkdir(mode=0o700)
    shutil.copy(ca_dir / "ca.crt", folder / "ca.crt")
    shutil.copy(ca_dir / "ca.key", folder / "ca.key")
    ca = CertificateAuthority(folder)
    ca.issue_server_cert(list(names), days=days)
    return ca.server_cert_path.read_bytes(), ca.server_key_path.read_bytes()


def write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write in place, as an editor or a copying deploy hook does."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def install(inst: Instance, crt: bytes, key: bytes) -> None:
    certs = inst.home.certs_dir
    write(certs / "server.key", key)  # certbot and our re-issue write the key first
    write(certs / "server.crt", crt, 0o644)


def set_tls(inst: Instance, text: str) -> None:
    with inst.home.config_file.open("a") as fh:
        fh.write(f"tls: {{{text}}}\n")


def wait_for(predicate: Callable[[], object], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


# --- hot reload ----------------------------------------------------------------------


def test_replaced_pair_is_served_to_new_connections_and_kept_alive_ones_go_on(
    inst: Instance, tmp_path: Path
) -> None:
    set_tls(inst, "reload_seconds: 1")
    crt, key = new_pair(tmp_path, inst.home.certs_dir)
    with running(inst) as srv:
        before = served(srv, inst)
        alice = inst.clients["alice"]
        auth = "Basic " + b64encode(f"alice:{alice.password}".encode()).decode()
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=_client(inst), timeout=10)
        try:
            conn.request("GET", "/files/", headers={"Authorization": auth})
            first = conn.getresponse()
            first.read()
            assert first.status == 200
            sock = conn.sock
            install(inst, crt, key)
            # the maintenance loop, no call of ours: within tls.reload_seconds (+ one round)
            assert wait_for(lambda: served(srv, inst) != before), "the new certificate was never served"
            assert served(srv, inst) == _pem_fingerprint(crt)
            assert srv.server_certificate.reloads >= 1
            conn.request("GET", "/files/", headers={"Authorization": auth})
            second = conn.getresponse()
            second.read()
            assert second.status == 200
            assert conn.sock is sock, "the kept-alive connection was dropped"
            der = sock.getpeercert(binary_form=True)
            assert der is not None and _fingerprint(der) == before
        finally:
            conn.close()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _encrypted(key: bytes) -> bytes:
    private = serialization.load_pem_private_key(key, None)
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


BAD_PAIRS = {
    # variant: (what to install given the new pair and the old key, words of the warning)
    "mismatched (certbot wrote the certificate, not yet the key)": (lambda c, k, old: (c, old), "is not the key of"),
    "half-written certificate": (lambda c, k, old: (_half(c), k), "half written"),
    "empty certificate (an editor truncated it)": (lambda c, k, old: (b"", k), "half written"),
    "half-written key": (lambda c, k, old: (c, _half(k)), "half written"),
    "encrypted key": (lambda c, k, old: (c, _encrypted(k)), "is encrypted"),
}


@pytest.mark.parametrize("variant", list(BAD_PAIRS))
def test_a_bad_pair_is_never_served_and_the_fixed_one_is(
    inst: Instance, tmp_path: Path, caplog: pytest.LogCaptureFixture, variant: str
) -> None:
    make, words = BAD_PAIRS[variant]
    crt, key = new_pair(tmp_path, inst.home.certs_dir)
    old_key = (inst.home.certs_dir / "server.key").read_bytes()
    with running(inst) as srv, caplog.at_level(logging.WARNING, logger="davserver.tls"):
        before = served(srv, inst)
        install(inst, *make(crt, key, old_key))
        assert srv.server_certificate.check() is False
        assert srv.server_certificate.check() is False  # retried, and warned about once
        assert served(srv, inst) == before
        warnings = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert words in warnings[0], warnings
        install(inst, crt, key)  # the twin: the same files, whole and matching
        assert srv.server_certificate.check() is True
        assert served(srv, inst) == _pem_fingerprint(crt)


def test_an_unreadable_key_or_one_others_may_read_is_not_served(
    inst: Instance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crt, key = new_pair(tmp_path, inst.home.certs_dir)
    certs = inst.home.certs_dir
    with running(inst) as srv, caplog.at_level(logging.WARNING, logger="davserver.tls"):
        before = served(srv, inst)
        # certbot's live/ link pointing at an archive file that is not there (yet)
        (certs / "server.key").unlink()
        (certs / "server.key").symlink_to(certs / "missing-privkey.pem")
        write(certs / "server.crt", crt, 0o644)
        assert srv.server_certificate.check() is False
        assert served(srv, inst) == before
        (certs / "server.key").unlink()
        write(certs / "server.key", key, 0o644)
        assert srv.server_certificate.check() is False
        assert served(srv, inst) == before
        text = " | ".join(r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage())
        assert "cannot read" in text and "readable by other users" in text, text
        os.chmod(certs / "server.key", 0o600)  # the fix the warning names
        assert srv.server_certificate.check() is True
        assert served(srv, inst) == _pem_fingerprint(crt)


def test_unchanged_files_are_not_read_again(inst: Instance) -> None:
    holder = ServerCertificate(load_config(inst.home).tls)
    assert holder.check() is False
    assert holder.reloads == 0


def test_every_attached_listener_switches_or_none_does(inst: Instance, tmp_path: Path) -> None:
    tls = load_config(inst.home).tls
    holder = ServerCertificate(tls)
    main, second = SimpleNamespace(context=None), SimpleNamespace(context=None)
    holder.attach(main)
    failing = {"on": True}

    def enrolment(t: TLSConfig) -> ssl.SSLContext:
        if failing["on"]:
            raise StartupError("tls.certificate: the second listener cannot load it")
        return create_ssl_context(t)

    failing["on"] = False
    holder.attach(second, enrolment)
    first = (main.context, second.context)
    assert all(isinstance(c, ssl.SSLContext) for c in first)
    install(inst, *new_pair(tmp_path, inst.home.certs_dir))
    failing["on"] = True
    assert holder.check() is False
    assert (main.context, second.context) == first  # neither switched
    failing["on"] = False
    assert holder.check() is True
    assert main.context is not first[0] and second.context is not first[1]


def test_a_bad_pair_at_start_is_refused(inst: Instance, tmp_path: Path) -> None:
    crt, _ = new_pair(tmp_path, inst.home.certs_dir)
    write(inst.home.certs_dir / "server.crt", crt, 0o644)
    with pytest.raises(StartupError, match="is not the key of"):
        DavServer(load_config(inst.home), port=0).start()


# --- re-issue from the built-in CA ------------------------------------------------


def _names(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(cn), [str(e.value) for e in san]


def _server_cert(inst: Instance) -> x509.Certificate:
    return x509.load_pem_x509_certificate((inst.home.certs_dir / "server.crt").read_bytes())


def test_a_server_certificate_near_expiry_is_reissued_with_the_same_names_and_served(
    inst: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    inst.ca.issue_server_cert(["dav.example.org", "10.1.2.3", "files.example.org"], days=10)
    old = _server_cert(inst)
    old_fp = _fingerprint(old.public_bytes(serialization.Encoding.DER))
    with caplog.at_level(logging.INFO), running(inst) as srv:
        # at start the maintenance loop re-issues it and the reload serves it
        assert wait_for(lambda: served(srv, inst) != old_fp), "the re-issued certificate was never served"
        new = _server_cert(inst)
        assert served(srv, inst) == _fingerprint(new.public_bytes(serialization.Encoding.DER))
    assert _names(new) == _names(old) == ("dav.example.org",
                                          ["localhost", "127.0.0.1", "::1", "dav.example.org", "10.1.2.3",
                                           "files.example.org"])
    assert new.not_valid_after_utc - new.not_valid_before_utc > timedelta(days=REISSUE_DAYS - 1)
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(inst.ca_file.read_bytes()))
    assert any("re-issued" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("days_left", "expected"), [(29, "reissued"), (30, "reissued"), (31, "fresh"), (300, "fresh")])
def test_reissue_only_within_reissue_days(inst: Instance, days_left: int, expected: str) -> None:
    config = load_config(inst.home)
    before = (inst.home.certs_dir / "server.crt").read_bytes()
    now = _server_cert(inst).not_valid_after_utc - timedelta(days=days_left)
    assert reissue_server_certificate(config, now=now) == expected
    assert ((inst.home.certs_dir / "server.crt").read_bytes() != before) == (expected == "reissued")


def test_reissue_days_zero_turns_it_off(inst: Instance) -> None:
    set_tls(inst, "reissue_days: 0")
    config = load_config(inst.home)
    assert reissue_server_certificate(config, now=_server_cert(inst).not_valid_after_utc) == "off"


def test_a_certificate_from_another_ca_is_never_reissued(inst: Instance, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "acme")
    other.create(common_name="Some ACME CA")
    other.issue_server_cert(["dav.example.org"], days=5)
    install(inst, other.server_cert_path.read_bytes(), other.server_key_path.read_bytes())
    config = load_config(inst.home)
    before = (inst.home.certs_dir / "server.crt").read_bytes()
    now = _server_cert(inst).not_valid_after_utc
    assert reissue_server_certificate(config, now=now) == "foreign"
    # nor one of ours kept elsewhere (tls.certificate pointed at certbot's live/ folder, say)
    live = tmp_path / "live"
    live.mkdir()
    crt, key = new_pair(tmp_path, inst.home.certs_dir, days=5)
    write(live / "fullchain.pem", crt, 0o644)
    write(live / "privkey.pem", key)
    set_tls(inst, f"certificate: {live / 'fullchain.pem'}, private_key: {live / 'privkey.pem'}")
    assert reissue_server_certificate(load_config(inst.home), now=now) == "foreign"
    assert (live / "fullchain.pem").read_bytes() == crt
    assert (inst.home.certs_dir / "server.crt").read_bytes() == before


def test_reissue_takes_a_lock_two_nodes_do_not_fight(inst: Instance) -> None:
    config = load_config(inst.home)
    now = _server_cert(inst).not_valid_after_utc - timedelta(days=1)
    lock = inst.home.certs_dir / "server.crt.reissue.lock"
    lock.write_text("other-node 1 now\n")  # another node is re-issuing right now
    assert reissue_server_certificate(config, now=now) == "busy"
    old = time.time() - 3600
    os.utime(lock, (old, old))  # that node crashed an hour ago
    assert reissue_server_certificate(config, now=now) == "reissued"
    assert not lock.exists()

    # two nodes at once (threads here; os.link is as atomic on a shared folder): one wins
    again = _server_cert(inst).not_valid_after_utc - timedelta(days=1)
    results: list[str] = []
    start = threading.Barrier(4)

    def node() -> None:
        start.wait()
        results.append(reissue_server_certificate(config, now=again))

    threads = [threading.Thread(target=node) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("reissued") == 1, results
    assert set(results) <= {"reissued", "busy", "fresh"}, results
    pair = ServerCertificate(config.tls)  # the pair on disk matches (raises otherwise)
    assert pair.not_after > again


# --- expiry warnings -------------------------------------------------------------------


def test_expiry_warnings_name_the_file_the_date_and_the_fix(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(inst.home)
    server = _server_cert(inst)
    ca = x509.load_pem_x509_certificate(inst.ca_file.read_bytes())
    with caplog.at_level(logging.WARNING, logger="davserver.lifecycle"):
        # the server certificate within 60 days: one warning; 61 days: none (the twin)
        soon = check_expiry(config, now=server.not_valid_after_utc - timedelta(days=59))
        assert [(n.setting, n.level) for n in soon] == [("tls.certificate", logging.WARNING)]
        assert check_expiry(config, now=server.not_valid_after_utc - timedelta(days=61)) == []
        lapsed = check_expiry(config, now=server.not_valid_after_utc + timedelta(days=1))
        assert [(n.setting, n.level) for n in lapsed] == [("tls.certificate", logging.ERROR)]
        # the CA (and so the CRL's signer) within 60 days
        ca_soon = check_expiry(config, now=ca.not_valid_after_utc - timedelta(days=30))
        assert {n.setting for n in ca_soon} == {"tls.certificate", "tls.client_ca", "tls.crl"}
        assert {n.level for n in ca_soon if n.setting != "tls.certificate"} == {logging.WARNING}
    lines = [r.getMessage() for r in caplog.records]
    date = server.not_valid_after_utc.strftime("%Y-%m-%d")
    assert any(str(config.tls.certificate) in m and date in m and "in 59 days" in m and "re-issues" in m
               for m in lines), lines
    assert any(f"{inst.ca_file} " in m and "docs/certificates.md#renewing-the-ca" in m for m in lines), lines
    assert any(m.startswith("tls.crl: ") and "signer" in m for m in lines), lines
    assert any("expired on" in m for m in lines), lines


def test_a_short_lived_ca_is_warned_about_at_start(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    inst.ca.create(force=True, days=40)
    inst.ca.issue_server_cert(["dav.example.org"])  # capped at the CA's 40 days
    with caplog.at_level(logging.WARNING, logger="davserver.lifecycle"), running(inst):
        assert wait_for(lambda: sum("expires on" in r.getMessage() for r in caplog.records) >= 3, 10)
    settings = {r.getMessage().split(":")[0] for r in caplog.records if "expires on" in r.getMessage()}
    assert settings == {"tls.certificate", "tls.client_ca", "tls.crl"}


def test_no_warning_far_from_expiry_nor_when_off(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="davserver.lifecycle"), running(inst):
        time.sleep(1)
    assert not [r for r in caplog.records if r.name == "davserver.lifecycle"]
    set_tls(inst, "expiry_warning_days: 0")
    config = load_config(inst.home)
    assert check_expiry(config, now=_server_cert(inst).not_valid_after_utc) == []


def test_a_foreign_server_certificate_is_told_to_renew_with_its_acme_client(inst: Instance, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "acme")
    other.create(common_name="Some ACME CA")
    other.issue_server_cert(["dav.example.org"], days=20)
    install(inst, other.server_cert_path.read_bytes(), other.server_key_path.read_bytes())
    [notice] = check_expiry(load_config(inst.home))
    assert notice.setting == "tls.certificate" and "certbot renew" in notice.fix


@pytest.mark.parametrize(("text", "key"), [
    ("reload_seconds: 0", "tls.reload_seconds"),
    ("reissue_days: -1", "tls.reissue_days"),
    ("reissue_days: 181", "tls.reissue_days"),
    ("expiry_warning_days: 4000", "tls.expiry_warning_days"),
])
def test_lifecycle_settings_are_bounded(inst: Instance, text: str, key: str) -> None:
    set_tls(inst, text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(inst.home)


def _tls12_session_round(srv: DavServer, inst: Instance, ctx: ssl.SSLContext,
                         session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool | None, str]:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der
        return tls.session, tls.session_reused, _fingerprint(der)


def test_sessions_resume_until_a_reload_then_one_full_handshake_gets_the_new_certificate(
    inst: Instance, tmp_path: Path
) -> None:
    ctx = _client(inst)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is there right after the handshake
    crt, key = new_pair(tmp_path, inst.home.certs_dir)
    with running(inst) as srv:
        session, reused, before = _tls12_session_round(srv, inst, ctx, None)
        assert not reused
        session, reused, fp = _tls12_session_round(srv, inst, ctx, session)
        assert reused and fp == before  # resumption works (the twin)
        install(inst, crt, key)
        assert srv.server_certificate.check() is True
        session, reused, fp = _tls12_session_round(srv, inst, ctx, session)
        assert not reused, "a session of the old context resumed under the new certificate"
        assert fp == _pem_fingerprint(crt)
        _, reused, fp = _tls12_session_round(srv, inst, ctx, session)
        assert reused and fp == _pem_fingerprint(crt)


def test_a_certificate_from_the_previous_ca_in_the_bundle_is_reissued_from_the_current_one(
    inst: Instance, tmp_path: Path
) -> None:
    certs = inst.home.certs_dir
    inst.ca.issue_server_cert(["dav.example.org"], days=10)  # from the CA about to become the previous one
    old_ca = certs.joinpath("ca.crt").read_bytes()
    fresh = CertificateAuthority(tmp_path / "new-ca")
    fresh.create(common_name="davserver CA 2")
    certs.joinpath("ca.crt").write_bytes(fresh.ca_cert_path.read_bytes() + old_ca)  # docs/certificates.md, way B
    write(certs / "ca.key", fresh.ca_key_path.read_bytes())
    shutil.copy(fresh.crl_path, certs / "crl.pem")
    config = load_config(inst.home)
    assert reissue_server_certificate(config) == "reissued"
    new = _server_cert(inst)
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(fresh.ca_cert_path.read_bytes()))
    assert _names(new)[0] == "dav.example.org"
    # the twin: a CA that is not in the bundle at all is someone else's
    certs.joinpath("ca.crt").write_bytes(old_ca)
    write(certs / "ca.key", (tmp_path / "new-ca" / "ca.key").read_bytes())
    assert reissue_server_certificate(config, now=new.not_valid_after_utc) == "foreign"


def test_no_prefix_of_a_new_pair_is_ever_served(inst: Instance, tmp_path: Path) -> None:
    """An editor or a copy writes in place: whatever length the new file has reached when
    the server looks, only the old pair or the whole new one is served, and every
    handshake succeeds."""
    certs = inst.home.certs_dir
    with running(inst) as srv:
        current = served(srv, inst)
        for round_ in range(3):
            crt, key = new_pair(tmp_path, certs)
            write(certs / "server.key", key)
            for cut in sorted({1, 27, 28, 64, len(crt) // 3, len(crt) // 2, len(crt) - 30, len(crt) - 27}):
                with (certs / "server.crt").open("r+b") as fh:
                    fh.truncate(0)
                    fh.write(crt[:cut])
                assert srv.server_certificate.check() is False, (round_, cut)
                assert served(srv, inst) == current, (round_, cut)
            write(certs / "server.crt", crt, 0o644)
            assert srv.server_certificate.check() is True
            current = served(srv, inst)
            assert current == _pem_fingerprint(crt)


def test_a_certificate_and_key_kept_in_one_file_are_served(inst: Instance, tmp_path: Path) -> None:
    crt, key = new_pair(tmp_path, inst.home.certs_dir)
    both = inst.home.certs_dir / "both.pem"
    write(both, crt + key)
    set_tls(inst, f"certificate: {both}, private_key: {both}")
    with running(inst) as srv:
        assert served(srv, inst) == _pem_fingerprint(crt)
        crt2, key2 = new_pair(tmp_path, inst.home.certs_dir)
        write(both, key2 + crt2)
        assert srv.server_certificate.check() is True
        assert served(srv, inst) == _pem_fingerprint(crt2)


@pytest.mark.parametrize("variant", ["half written", "a client certificate in the bundle"])
def test_a_broken_client_ca_bundle_keeps_the_old_trust(
    inst: Instance, tmp_path: Path, caplog: pytest.LogCaptureFixture, variant: str
) -> None:
    bundle = inst.ca_file
    good = bundle.read_bytes()
    bad = good[: len(good) // 2] if variant == "half written" else good + inst.clients["bob"].crt.read_bytes()
    with running(inst) as srv, caplog.at_level(logging.WARNING, logger="davserver.tls"):
        context = srv._server.ssl_adapter.context
        write(bundle, bad, 0o644)
        assert srv.server_certificate.check() is False
        assert srv._server.ssl_adapter.context is context
        assert any("not reloaded" in r.getMessage() and "tls.client_ca" in r.getMessage() for r in caplog.records)
        served(srv, inst)  # still handshakes with the old trust
        write(bundle, good, 0o644)  # the twin: the bundle restored
        assert srv.server_certificate.check() is True
        assert srv._server.ssl_adapter.context is not context
        served(srv, inst)


def test_lifecycle_settings_at_their_bounds_load(inst: Instance) -> None:
    set_tls(inst, "reload_seconds: 1, reissue_days: 180, expiry_warning_days: 3650")
    tls = load_config(inst.home).tls
    assert (tls.reload_seconds, tls.reissue_days, tls.expiry_warning_days) == (1.0, 180, 3650)


def test_no_reissue_that_cannot_outlive_a_lapsing_ca(inst: Instance, caplog: pytest.LogCaptureFixture) -> None:
    inst.ca.create(force=True, days=20)
    inst.ca.issue_server_cert(["dav.example.org"])  # capped at the CA's 20 days
    config = load_config(inst.home)
    before = (inst.home.certs_dir / "server.crt").read_bytes()
    with caplog.at_level(logging.ERROR, logger="davserver.lifecycle"):
        assert reissue_server_certificate(config) == "ca-lapses"
    assert (inst.home.certs_dir / "server.crt").read_bytes() == before
    assert any("renew the CA first" in r.getMessage() for r in caplog.records)
    # the twin: a certificate the re-issue can still extend (5 days left, the CA 20) is
    # re-issued, up to the CA's end
    inst.ca.issue_server_cert(["dav.example.org"], days=5)
    assert reissue_server_certificate(load_config(inst.home)) == "reissued"
    ca = x509.load_pem_x509_certificate(inst.ca_file.read_bytes())
    assert _server_cert(inst).not_valid_after_utc == ca.not_valid_after_utc
