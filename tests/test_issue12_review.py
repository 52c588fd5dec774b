"""Faults found by trying the CA names, oc:checksums and rclone support as an attacker
and a new user would, each with the exact input and a twin for the legitimate case.

* A ``tls.client_ca`` bundle of 215 CAs made a 34,528-byte CertificateRequest that a
  Java client refuses (``SSLProtocolException``: over ``jdk.tls.maxHandshakeMessageSize``,
  32768), where without names it had signed in: a list over
  ``tls_ca_names.MAX_NAMES_BYTES`` is now not sent. Twin: 200 CAs (a 32,117-byte
  message) are all named and Java signs in.
* A PROPPATCH of ``oc:checksums`` on a folder was stored as a dead property and then
  answered as the folder's checksums: now 403, as removing a file's is. Twin: another
  dead property on the same folder is stored.
* ``OC-Checksum: ADLER32:<hex>`` as the ownCloud and Nextcloud desktop clients write it
  (no leading zeros: ``hello`` is ``62c0215``) was refused 400 against the server's
  eight digits: now compared by value. Twin: a wrong ADLER32 is still refused.
* The limit of the checksum stamp (docs/clients.md, rclone): an in-place same-size edit
  that sets the old mtime back keeps the old checksums; the same edit without the
  mtime restored drops them.
"""

from __future__ import annotations

import datetime
import os
import random
import ssl
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from davserver.oc_compat import Digests, Expected
from davserver.server import DavServer
from davserver.tls_ca_names import MAX_NAMES_BYTES, CANamesUnavailable, encoded_names_size, send_client_ca_names

from .conftest import Instance, running, session_for
from .test_java_client import _run, java_classes  # noqa: F401 - java_classes is a fixture
from .test_oc_mtime import ISSUE_BODY, MTIME, RCLONE_PROPS, entries, files, sums
from .test_tls_ca_names import bare_tls_server, ca_names


def _company_cas(count: int) -> bytes:
    """``count`` self-signed CA certificates (PEM) with names as long as a company's
    (C, O, OU, CN: about 160 bytes of DER subject each)."""
    out = []
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Example Corporation Department {i:03d} GmbH"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Public Key Infrastructure Services"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Example Corporation Issuing CA {i:03d} G2"),
        ])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(i + 1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def _bundle(inst: Instance, total: int) -> Path:
    """tls.client_ca made the instance CA plus ``total - 1`` company CAs."""
    bundle = inst.home.certs_dir / f"client-cas-{total}.crt"
    bundle.write_bytes(inst.ca_file.read_bytes() + _company_cas(total - 1))
    with inst.home.config_file.open("a") as f:
        f.write(f"tls: {{client_ca: certs/{bundle.name}}}\n")
    return bundle


@pytest.mark.parametrize(("total", "named"), [(215, False), (200, True)])
def test_a_java_client_signs_in_whatever_the_size_of_the_ca_bundle(
    java_classes: Path, inst: Instance, total: int, named: bool  # noqa: F811 - the fixture
) -> None:
    """215 CAs: over the bound, no names are sent (openssl sees none) and Java signs in
    (it failed on the 34,528-byte request). Twin, 200 CAs: every name is sent, in a
    request Java still takes, and it signs in."""
    bundle = _bundle(inst, total)
    alice = inst.clients["alice"]
    with running(inst) as srv:
        for protocol in ("TLSv1.3", "TLSv1.2"):
            result = _run(java_classes, inst, srv.port, protocol, [("alice", alice.p12, alice.p12_password)])
            assert result["STATUS"] == "200", result
        assert len(ca_names(srv.port, "tls1_3")) == (total if named else 0)
    assert (encoded_names_size(bundle) > MAX_NAMES_BYTES) is not named


def test_the_bound_is_on_the_encoded_list(inst: Instance) -> None:
    """At exactly its size the list is sent; one byte less and nothing is written."""
    size = encoded_names_size(inst.ca_file)
    assert size == 2 + 2 + len(x509.load_pem_x509_certificate(inst.ca_file.read_bytes()).subject.public_bytes())
    over = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    over.load_cert_chain(inst.home.certs_dir / "server.crt", inst.home.certs_dir / "server.key")
    over.verify_mode = ssl.CERT_OPTIONAL
    with pytest.raises(CANamesUnavailable, match=f"take {size} bytes, more than {size - 1}"):
        send_client_ca_names(over, inst.ca_file, max_bytes=size - 1)
    with bare_tls_server(over) as port:
        assert ca_names(port, "tls1_3") == []
    assert send_client_ca_names(over, inst.ca_file, max_bytes=size) == ["CN=davserver CA"]
    with bare_tls_server(over) as port:
        assert ca_names(port, "tls1_3") == ["CN = davserver CA"]


FOLDER_PROPPATCH = """<?xml version="1.0"?>
<d:propertyupdate xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns" xmlns:x="urn:example">
 <d:set><d:prop>%s</d:prop></d:set>
</d:propertyupdate>"""


def _status(xml: str) -> str:
    return xml.split("<ns0:status>HTTP/1.1 ", 1)[1][:3]


def test_a_folder_takes_no_planted_checksums(inst: Instance, server: DavServer) -> None:
    """``SHA1:bad`` PROPPATCHed on a folder: 403, and PROPFIND answers no checksums (it
    answered the planted value). Twin: a dead property of another name is stored."""
    s = session_for(inst)
    url = server.url + "files/dd/"
    assert s.request("MKCOL", url).status_code == 201
    planted = FOLDER_PROPPATCH % "<oc:checksums><oc:checksum>SHA1:bad</oc:checksum></oc:checksums>"
    r = s.request("PROPPATCH", url, data=planted.encode())
    assert r.status_code == 207 and _status(r.text) == "403", r.text
    found = entries(s.request("PROPFIND", url, headers={"Depth": "0"}, data=RCLONE_PROPS).text)
    assert found["/files/dd/"]["checksums"][0] == "404"
    other = FOLDER_PROPPATCH % "<x:colour>blue</x:colour>"
    r = s.request("PROPPATCH", url, data=other.encode())
    assert r.status_code == 207 and _status(r.text) == "200", r.text
    body = (b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><x:colour xmlns:x="urn:example"/>'
            b"</d:prop></d:propfind>")
    assert "blue" in s.request("PROPFIND", url, headers={"Depth": "0"}, data=body).text


@pytest.mark.parametrize("restore_mtime", [True, False])
def test_the_documented_limit_of_the_checksum_stamp(inst: Instance, server: DavServer, restore_mtime: bool) -> None:
    """An in-place same-size edit with the old mtime set back (``os.utime``) still answers
    the old checksums, as docs/clients.md says; without the mtime set back it answers none."""
    s = session_for(inst)
    url = server.url + "files/doc.txt"
    assert s.put(url, data=ISSUE_BODY, headers={"X-OC-Mtime": str(MTIME)}).status_code == 201
    target = files(inst) / "doc.txt"
    before = os.stat(target)
    with open(target, "r+b") as f:
        f.write(b"X")
    if restore_mtime:
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    found = entries(s.request("PROPFIND", url, headers={"Depth": "0"}, data=RCLONE_PROPS).text)
    assert found["/files/doc.txt"]["checksums"] == (("200", sums(ISSUE_BODY)) if restore_mtime else ("404", ""))
    docs = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    assert "puts the old modification time back" in " ".join(docs.split())


#: Bodies whose ADLER32 has leading zero digits: the desktop clients' form is shorter.
SHORT_ADLER_BODIES = [b"hello", b"hi", b"", b"abc", b"a"]


def _client_adler(body: bytes) -> str:
    """ADLER32 as the ownCloud and Nextcloud desktop clients write it (no leading zeros)."""
    return format(zlib.adler32(body), "x")


def test_the_desktop_clients_adler32_is_accepted(inst: Instance, server: DavServer) -> None:
    """``OC-Checksum: ADLER32:62c0215`` for ``hello`` was refused 400; now 201 and stored,
    as is the eight-digit form. Twin: a wrong ADLER32, in either form, is still 400 and
    the old file stays."""
    s = session_for(inst)
    url = server.url + "files/a.txt"
    target = files(inst) / "a.txt"
    assert _client_adler(b"hello") == "62c0215"
    for body in SHORT_ADLER_BODIES:
        assert len(_client_adler(body)) < 8
        for form in (_client_adler(body), f"{zlib.adler32(body):08x}", _client_adler(body).upper()):
            r = s.put(url, data=body, headers={"OC-Checksum": f"ADLER32:{form}"})
            assert r.status_code in (201, 204), (body, form, r.status_code)
            assert target.read_bytes() == body
    kept = target.read_bytes()
    for body in SHORT_ADLER_BODIES:
        wrong = zlib.adler32(body) ^ 1
        for form in (format(wrong, "x"), f"{wrong:08x}", "0" + f"{wrong:08x}", "", "-1", "62c0215g"):
            r = s.put(url, data=body + b"!", headers={"OC-Checksum": f"ADLER32:{form}"})
            assert r.status_code == 400, (body, form, r.status_code)
            assert target.read_bytes() == kept


def test_adler32_is_compared_by_value_for_any_body() -> None:
    """Every body, split anywhere: both forms match, a neighbour value matches in neither."""
    rng = random.Random(12)
    for _ in range(300):
        body = rng.randbytes(rng.choice([0, 1, 5, 100, 70_000]))
        value = zlib.adler32(body)
        for form, ok in ((format(value, "x"), True), (f"{value:08x}", True), (format(value + 1, "x"), False)):
            d = Digests(keep=False, expected=Expected("adler32", form))
            cut = rng.randint(0, len(body))
            d.update(body[:cut])
            d.update(body[cut:])
            assert d.matches() is ok, (body[:20], form)
