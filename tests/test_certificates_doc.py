"""docs/certificates.md as written: the certbot deploy hook, the check with openssl, and
the three ways to renew the CA, each run block by block against a live server.

The blocks are taken from the page itself (its fenced ``sh`` blocks), with the page's
placeholders replaced: ``/srv/davserver`` by the test instance, ``dav.example.org`` by
``localhost`` and port 8443 by the server's, ``/etc/davserver/tls`` and
``/etc/letsencrypt`` by scratch folders, the ``davserver`` user by the one running the
tests. A second CA of the project's key manager stands in for Let's Encrypt. Only
``certbot certonly`` is not run (it needs a public name and port 80). A changed page
changes what runs; a page that no longer works fails here.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from davserver.cert_lifecycle import check_expiry
from davserver.config import load_config
from davserver.pki import CertificateAuthority
from davserver.server import DavServer
from tests.conftest import Client, Instance, running, session_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "certificates.md"
VENV_BIN = Path(sys.executable).parent


def section(heading: str) -> str:
    """The text under `heading` (a ## or ### heading) to the next heading of its level or
    above (lines inside fenced blocks, such as a script's comments, are no headings)."""
    level = len(heading.split(" ")[0])
    out: list[str] = []
    inside = fenced = False
    for line in DOC.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            if inside and len(line.split(" ")[0]) <= level:
                break
            if line.rstrip("\n") == heading:
                inside = True
                continue
        if inside:
            out.append(line)
    assert inside, f"docs/certificates.md has no heading {heading!r}"
    return "".join(out)


def blocks(text: str, lang: str = "sh") -> list[str]:
    return [m.group(2) for m in re.finditer(r"(?ms)^```(\w*)\n(.*?)^```\n", text) if m.group(1) == lang]


class Page:
    """The page's placeholders for one test."""

    def __init__(self, inst: Instance, tmp: Path) -> None:
        self.inst = inst
        self.tmp = tmp
        self.port = 0
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        self.subs = [
            ("/srv/davserver", str(inst.home.root)),
            ("/etc/davserver/tls", str(tmp / "etc-davserver-tls")),
            ("/etc/letsencrypt", str(tmp / "letsencrypt")),
            ("-o davserver -g davserver", f"-o {user} -g {group}"),
        ]

    def fill(self, text: str) -> str:
        for old, new in self.subs:
            text = text.replace(old, new)
        text = text.replace("dav.example.org:8443", f"localhost:{self.port}")
        return text.replace("dav.example.org", "localhost")

    def run(self, block: str, cwd: Path | None = None) -> str:
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", HOME=str(self.tmp))
        env.pop("DAVSERVER_HOME", None)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", self.fill(block)], cwd=cwd or self.tmp, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{self.fill(block)}\n---\n{done.stdout}\n{done.stderr}"
        return done.stdout


def served(srv: DavServer) -> str:
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return hashlib.sha256(der).hexdigest()


def fingerprint(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def wait_for(predicate: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def can_list(inst: Instance, srv: DavServer, client: Client) -> bool:
    with session_for(inst, client=client) as s:
        s.verify = False
        try:
            return s.request("PROPFIND", f"{srv.url}files/", headers={"Depth": "1"}).status_code == 207
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
            return False


def set_tls(inst: Instance, text: str) -> None:
    with inst.home.config_file.open("a") as fh:
        fh.write(text)


pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def test_the_certbot_deploy_hook_installs_each_renewal_and_the_server_serves_it(inst: Instance, tmp_path: Path) -> None:
    page = Page(inst, tmp_path)
    text = section("## A server certificate from Let's Encrypt (certbot)")
    sh = blocks(text)
    assert [b for b in sh if "certbot certonly" in b] == [sh[0]]  # the one block not run
    hook_text, first_copy, check = sh[1], sh[2], sh[3]
    assert hook_text.startswith("#!/bin/sh")
    # Let's Encrypt, played by another CA: certbot's live/ folder with a pair for the name
    acme = CertificateAuthority(tmp_path / "acme-ca")
    acme.create(common_name="Pretend Encrypt R3")
    lineage = tmp_path / "letsencrypt" / "live" / "localhost"
    lineage.mkdir(parents=True)

    def renew() -> bytes:
        acme.issue_server_cert(["localhost"], days=90)
        crt = acme.server_cert_path.read_bytes()
        (lineage / "fullchain.pem").write_bytes(crt + acme.ca_cert_path.read_bytes())
        (lineage / "privkey.pem").write_bytes(acme.server_key_path.read_bytes())
        return crt

    first = renew()
    hook = Path(page.fill("/etc/letsencrypt/renewal-hooks/deploy/davserver"))
    hook.parent.mkdir(parents=True)
    hook.write_text(page.fill(hook_text))
    hook.chmod(0o755)
    page.run(first_copy)
    [yaml_block] = blocks(text, "yaml")
    set_tls(inst, page.fill(yaml_block) + "  reload_seconds: 1\n")
    alice = inst.clients["alice"]
    (tmp_path / "alice.crt").write_bytes(alice.crt.read_bytes())
    (tmp_path / "alice.key").write_bytes(alice.key.read_bytes())
    with running(inst) as srv:
        page.port = srv.port
        out = page.run(check)
        assert "subject=CN = localhost" in out and "notAfter=" in out, out
        assert fingerprint(first).upper() in out.replace(":", ""), out
        assert can_list(inst, srv, alice)
        second = renew()
        env_block = first_copy  # certbot runs the hook with the same variable
        page.run(env_block)
        assert wait_for(lambda: served(srv) == fingerprint(second)), "the renewed certificate was never served"
        assert fingerprint(second).upper() in page.run(check).replace(":", "")
        assert can_list(inst, srv, alice)
    assert oct((tmp_path / "etc-davserver-tls" / "privkey.pem").stat().st_mode & 0o777) == "0o600"


def _ca(inst: Instance) -> x509.Certificate:
    return x509.load_pem_x509_certificate(inst.ca_file.read_bytes())


def test_renewing_the_ca_with_its_own_key_keeps_every_certificate(inst: Instance, tmp_path: Path) -> None:
    page = Page(inst, tmp_path)
    inst.ca.create(force=True, days=40)
    inst.ca.issue_server_cert(["localhost"])
    alice = inst.issue("alice", name="alice-40")
    set_tls(inst, "tls: {reload_seconds: 1}\n")
    before = {n.setting for n in check_expiry(load_config(inst.home))}
    assert {"tls.client_ca", "tls.crl"} <= before
    with running(inst) as srv:
        reloads = srv.server_certificate.reloads
        [block] = blocks(section("### A. Extend the CA certificate, same key (recommended)"))
        out = page.run(block)
        assert "certs/server.crt: OK" in out, out
        assert wait_for(lambda: srv.server_certificate.reloads > reloads)
        assert can_list(inst, srv, alice)
    after = {n.setting for n in check_expiry(load_config(inst.home))}
    assert not after & {"tls.client_ca", "tls.crl"}, after
    ca = _ca(inst)
    assert ca.not_valid_after_utc.year - ca.not_valid_before_utc.year >= 9
    x509.load_pem_x509_certificate(alice.crt.read_bytes()).verify_directly_issued_by(ca)


def test_a_new_ca_beside_the_old_one_then_the_old_one_dropped(inst: Instance, tmp_path: Path) -> None:
    page = Page(inst, tmp_path)
    set_tls(inst, "tls: {reload_seconds: 1}\n")
    old = inst.clients["alice"]
    [switch, drop] = blocks(section("### B. A new CA beside the old one, while clients move over"))
    with running(inst) as srv:
        reloads = srv.server_certificate.reloads
        page.run(switch)
        assert wait_for(lambda: srv.server_certificate.reloads > reloads)
        new = inst.issue("alice", name="alice-new-ca")
        issuer = x509.load_pem_x509_certificate(new.crt.read_bytes()).issuer.rfc4514_string()
        assert issuer == "CN=davserver CA 2"
        assert can_list(inst, srv, old), "the old CA's certificate stopped working during the overlap"
        assert can_list(inst, srv, new)
        assert len(x509.load_pem_x509_certificates(inst.ca_file.read_bytes())) == 2
        reloads = srv.server_certificate.reloads
        page.run(drop)
        assert wait_for(lambda: srv.server_certificate.reloads > reloads)
        assert not can_list(inst, srv, old), "the old CA is still trusted after it was dropped"
        assert can_list(inst, srv, new)


def test_starting_over_locks_out_old_certificates_until_new_ones_are_issued(inst: Instance, tmp_path: Path) -> None:
    page = Page(inst, tmp_path)
    set_tls(inst, "tls: {reload_seconds: 1}\n")
    old = inst.clients["alice"]
    [block] = blocks(section("### C. Start over: a new CA and new certificates for everyone"))
    with running(inst) as srv:
        first = served(srv)
        assert can_list(inst, srv, old)
        page.run(block)
        assert wait_for(lambda: served(srv) != first), "the new server certificate was never served"
        assert wait_for(lambda: not can_list(inst, srv, old)), "the old CA's certificate still works"
        new = inst.issue("alice", name="alice-after-init")
        assert can_list(inst, srv, new)


def test_the_sample_warnings_are_what_the_server_logs(inst: Instance, tmp_path: Path) -> None:
    """The page's sample lines, with this instance's paths and dates, are the lines
    check_expiry logs for a CA and a server certificate that lapse (the same words)."""
    [sample] = blocks(section("## Expiry warnings"), "")
    shown = [line.split(": ", 1)[1] for line in sample.splitlines()]  # without time, level and logger
    inst.ca.create(force=True, days=100)
    acme = CertificateAuthority(tmp_path / "acme-ca")  # a server certificate from a public CA, lapsed
    acme.create(common_name="Pretend Encrypt R3")
    acme.issue_server_cert(["dav.example.org"], days=1)
    (inst.home.certs_dir / "server.crt").write_bytes(acme.server_cert_path.read_bytes())
    config = load_config(inst.home)
    ca = _ca(inst)
    now = ca.not_valid_after_utc - timedelta(days=59, hours=1)
    got = {n.setting: n.message(now) for n in check_expiry(config, now=now)}
    home = str(inst.home.root)

    def generic(line: str) -> str:
        line = line.replace(home, "/srv/davserver")
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", line)

    assert {generic(m) for m in got.values()} == {generic(m) for m in shown}
