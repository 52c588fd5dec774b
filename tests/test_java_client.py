"""A Java client holding two client identities presents the one davserver accepts,
because the CertificateRequest names the CAs of ``tls.client_ca`` (tls_ca_names.py).

JSSE's default key manager (SunX509) takes, among the key store's identities of the
right key type, the first whose chain holds a certificate issued by one of the CA names
the server sent; with no names it takes the first of all, in the key store's own order.
The client (``tests/java/ChooseIdentity.java``) holds a foreign identity for the same
user (a company CA's certificate) and the davserver-issued one, and reports the names it
received, its choice, the choice its key manager would make without names, and the HTTP
status. Both orders of the two identities are tried: without names one of them must pick
the foreign identity (so the right choice depends on the names), with names both pick
davserver's and sign in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from davserver.pki import CertificateAuthority

from .conftest import Instance

JAVA_SOURCE = Path(__file__).parent / "java" / "ChooseIdentity.java"
FOREIGN_CA = "Example Corp Issuing CA"


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (apt-get install default-jdk-headless)")
        pytest.skip(f"{name} is not installed")
    return exe


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ChooseIdentity compiled once for the module."""
    javac = _tool("javac")
    out = tmp_path_factory.mktemp("java")
    subprocess.run([javac, "-d", str(out), str(JAVA_SOURCE)], check=True, timeout=120)
    yield out


def _foreign_identity(inst: Instance, folder: Path) -> tuple[Path, str]:
    """alice's certificate from another CA (a company's), as a .p12 with its password."""
    other = CertificateAuthority(folder / "corp")
    other.create(common_name=FOREIGN_CA)
    issued = other.issue_client_cert("alice", out_prefix=folder / "corp-alice", p12_password=b"corp-pass")
    return Path(issued.paths["p12"]), "corp-pass"


def _run(
    classes: Path, inst: Instance, port: int, protocol: str, identities: list[tuple[str, Path, str]]
) -> dict[str, str]:
    java = _tool("java")
    alice = inst.clients["alice"]
    args = [java, "-cp", str(classes), "ChooseIdentity", protocol, str(inst.ca_file), str(port), "/files/",
            "alice", alice.password] + [f"{alias}={p12}:{pw}" for alias, p12, pw in identities]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    found = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert "STATUS" in found, out.stdout + out.stderr
    return found


@pytest.mark.parametrize("protocol", ["TLSv1.2", "TLSv1.3"])
def test_java_client_picks_the_davserver_identity_by_the_ca_names(
    java_classes: Path, inst: Instance, server: object, tmp_path: Path, protocol: str
) -> None:
    """Both orders of the two identities: the CA names lead to davserver's (200); without
    them the same key manager takes the foreign one in at least one order."""
    foreign_p12, foreign_pw = _foreign_identity(inst, tmp_path)
    alice = inst.clients["alice"]
    ours = (alice.p12, alice.p12_password)
    theirs = (foreign_p12, foreign_pw)
    port = server.port  # type: ignore[attr-defined]
    # The same two aliases both ways round: a choice made without the names is the same
    # alias each time, so it holds the foreign identity in one of the two runs.
    holds_foreign = []
    for first, second in ((theirs, ours), (ours, theirs)):
        identities = [("id-a", *first), ("id-b", *second)]
        result = _run(java_classes, inst, port, protocol, identities)
        ours_alias = "id-a" if first is ours else "id-b"
        assert result["ISSUERS"] == "CN=davserver CA", result
        assert result["CHOSEN"] == ours_alias, result
        assert result["STATUS"] == "200", result
        holds_foreign.append(result["WITHOUT_NAMES"] != ours_alias)
    assert holds_foreign.count(True) == 1, holds_foreign


def test_java_client_with_only_the_foreign_identity_is_refused(
    java_classes: Path, inst: Instance, server: object, tmp_path: Path
) -> None:
    """Twin: the foreign identity alone matches none of the names; presented all the same
    (or not at all), it never signs in."""
    foreign_p12, foreign_pw = _foreign_identity(inst, tmp_path)
    result = _run(java_classes, inst, server.port, "TLSv1.3", [("corporate", foreign_p12, foreign_pw)])  # type: ignore[attr-defined]
    assert result["ISSUERS"] == "CN=davserver CA", result
    assert result["CHOSEN"] == "null", result  # SunX509 offers nothing that no named CA issued
    assert result["STATUS"].startswith("error"), result
