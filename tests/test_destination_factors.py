"""Every resource a request touches needs its own share's factors: a COPY or MOVE is
signed in with the union of the source share's and the Destination share's ``require``
(access.required_factors), so a share that needs a TOTP code is never written, or read,
with the password alone through another share. Real TLS requests on a real server."""

from __future__ import annotations

import itertools
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from davserver.access import Refusal, required_factors
from davserver.config import ShareConfig
from davserver.server import DavServer
from davserver.target import parse_wsgi_path

from .conftest import Client, Instance, running, session_for
from .test_server_auth import audit_records
from .test_totp_live import PW, code, configure, enrol

#: Each test share and what it requires (test_totp_live.configure; files has defaults.require).
REQUIRE = {"open": (), "files": ("password",), "secure": ("password", "totp")}
METHODS = ("COPY", "MOVE")
CREDENTIALS = ("nothing", "password", "grant")  # grant: password, with a two-factor session open


@pytest.fixture
def live(inst: Instance) -> Iterator[tuple[Instance, DavServer, Client, pyotp.TOTP]]:
    """alice's usual certificate has no two-factor session; a second one of hers opens one
    (one inline code) and keeps it for the whole test."""
    configure(inst, throttle={"lock_after": 1000, "address_lock_after": 1000, "delay_after": 1000})
    totp = enrol(inst)
    granted = inst.issue("alice", name="alice-granted")
    with running(inst) as server:
        with session_for(inst, client=granted, password=PW + code(totp)) as s:
            assert s.get(server.url + "secure/").status_code == 200, "the step-up itself"
        yield inst, server, granted, totp


def _data(inst: Instance, share: str) -> Path:
    return inst.home.root / "data" / share


def _send(inst: Instance, server: DavServer, granted: Client, credentials: str, method: str, path: str,
          destination: str | None = None) -> int:
    if credentials == "grant":
        s = session_for(inst, client=granted, password=PW)
    else:
        s = session_for(inst, "alice", password=PW)
        if credentials == "nothing":
            s.auth = None
    headers = {} if destination is None else {"Destination": server.url + destination.lstrip("/"), "Overwrite": "T"}
    with s:
        return s.request(method, server.url + path.lstrip("/"), headers=headers).status_code


def _last(inst: Instance, method: str, path: str) -> dict:
    """The audit line of the newest request for (method, path); it follows the answer closely."""
    for _ in range(100):
        found = [r for r in audit_records(inst) if r["method"] == method and r["path"] == path]
        if found:
            return found[-1]
        time.sleep(0.02)
    raise AssertionError(f"no audit line for {method} {path}")


def _expected(credentials: str, needed: tuple[str, ...]) -> str:
    """The reason the loop expects: ok, or the factor missing."""
    if not needed or credentials == "grant":
        return "ok"
    if credentials == "nothing":
        return Refusal.NO_CREDENTIALS
    return Refusal.OTP_REQUIRED if "totp" in needed else "ok"


def test_copy_and_move_need_the_factors_of_both_shares(live) -> None:
    """COPY and MOVE × source share × destination share × credentials: the status, the
    files on disk (untouched on a refusal) and the audit reason with the destination."""
    inst, server, granted, _ = live
    cases = list(itertools.product(METHODS, REQUIRE, REQUIRE, CREDENTIALS))
    for n, (method, src, dst, credentials) in enumerate(cases):
        name = f"{method.lower()}-{src}-{dst}-{credentials}-{n}.txt"
        source, dest = _data(inst, src) / f"src-{name}", _data(inst, dst) / f"dst-{name}"
        source.write_bytes(b"new content " + name.encode())
        dest.write_bytes(b"old content, must stay unless allowed")
        needed = tuple(f for f in ("password", "totp") if f in REQUIRE[src] + REQUIRE[dst])
        status = _send(inst, server, granted, credentials, method, f"/{src}/src-{name}", f"/{dst}/dst-{name}")
        reason = _expected(credentials, needed)
        record = _last(inst, method, f"/{src}/src-{name}")
        case = (method, src, dst, credentials)
        assert record["reason"] == reason, case
        assert record["destination"] == f"/{dst}/dst-{name}", case
        if reason == "ok":
            assert status == 204, case
            assert record["decision"] == "allow", case
            assert dest.read_bytes() == b"new content " + name.encode(), case
            assert source.exists() == (method == "COPY"), case
        else:
            assert status == 401, case
            assert record["decision"] == "deny", case
            assert dest.read_bytes() == b"old content, must stay unless allowed", case
            assert source.read_bytes() == b"new content " + name.encode(), case


def test_the_reported_copy_and_move_into_secure_with_the_password_alone(live) -> None:
    """The report: GET /secure/plan.txt is 401 without a session, yet COPY and MOVE from
    /files/ into it with curl and the password only answered 204 and 201."""
    inst, server, _, _ = live
    (_data(inst, "secure") / "plan.txt").write_bytes(b"the plan\n")
    (_data(inst, "files") / "a.txt").write_bytes(b"attacker's text\n")
    (_data(inst, "files") / "b.txt").write_bytes(b"moved in\n")
    alice = inst.clients["alice"]

    def curl(*args: str) -> str:
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(inst.ca_file),
             "--cert", str(alice.crt), "--key", str(alice.key), "-u", f"alice:{PW}", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )
        return out.stdout

    assert curl(server.url + "secure/plan.txt") == "401"
    assert curl("-X", "COPY", "-H", f"Destination: {server.url}secure/plan.txt", "-H", "Overwrite: T",
                server.url + "files/a.txt") == "401"
    assert (_data(inst, "secure") / "plan.txt").read_bytes() == b"the plan\n"
    record = _last(inst, "COPY", "/files/a.txt")
    assert (record["decision"], record["reason"], record["destination"]) == ("deny", "otp_required", "/secure/plan.txt")
    assert curl("-X", "MOVE", "-H", f"Destination: {server.url}secure/new.txt", server.url + "files/b.txt") == "401"
    assert not (_data(inst, "secure") / "new.txt").exists()
    assert (_data(inst, "files") / "b.txt").read_bytes() == b"moved in\n"
    record = _last(inst, "MOVE", "/files/b.txt")
    assert (record["decision"], record["reason"], record["destination"]) == ("deny", "otp_required", "/secure/new.txt")


def test_twins_each_copy_works_with_the_factors_it_needs(live) -> None:
    """Within files with the password; from secure to files and into secure after a step-up."""
    inst, server, granted, totp = live
    (_data(inst, "files") / "a.txt").write_bytes(b"a\n")
    (_data(inst, "secure") / "plan.txt").write_bytes(b"the plan\n")
    assert _send(inst, server, granted, "password", "COPY", "/files/a.txt", "/files/a2.txt") == 201
    assert (_data(inst, "files") / "a2.txt").read_bytes() == b"a\n"
    assert _send(inst, server, granted, "grant", "COPY", "/secure/plan.txt", "/files/plan.txt") == 201
    assert (_data(inst, "files") / "plan.txt").read_bytes() == b"the plan\n"
    # alice's usual certificate: refused with the password, then a step-up, then the same COPY works
    assert _send(inst, server, granted, "password", "COPY", "/files/a.txt", "/secure/plan.txt") == 401
    assert (_data(inst, "secure") / "plan.txt").read_bytes() == b"the plan\n"
    with session_for(inst, "alice", password=PW + code(totp, 1)) as s:
        assert s.get(server.url + "secure/").status_code == 200, "step-up with a fresh code"
    assert _send(inst, server, granted, "password", "COPY", "/files/a.txt", "/secure/plan.txt") == 204
    assert (_data(inst, "secure") / "plan.txt").read_bytes() == b"a\n"


def test_reading_a_totp_share_into_a_password_share_needs_the_code(live) -> None:
    """The read side: COPY FROM secure into files is a read of secure; the source's factors apply."""
    inst, server, granted, _ = live
    (_data(inst, "secure") / "plan.txt").write_bytes(b"the plan\n")
    assert _send(inst, server, granted, "password", "COPY", "/secure/plan.txt", "/files/leak.txt") == 401
    assert not (_data(inst, "files") / "leak.txt").exists()
    record = _last(inst, "COPY", "/secure/plan.txt")
    assert (record["reason"], record["destination"]) == ("otp_required", "/files/leak.txt")
    assert _send(inst, server, granted, "grant", "COPY", "/secure/plan.txt", "/files/leak.txt") == 201, "twin"


def _share(name: str, require: tuple[str, ...]) -> ShareConfig:
    return ShareConfig(name=name, path=Path("/nonexistent") / name, require=require)


def test_required_factors_is_the_union_over_every_touched_resource() -> None:
    """Every method × target share × destination (a share, a name that is no share, the
    root): the union of the touched shares' factors, ``default_require`` for names outside
    every share; only COPY and MOVE touch a destination; OPTIONS needs none."""
    shares = {name: _share(name, req) for name, req in REQUIRE.items()}
    places = [*REQUIRE, "nosuch", None]
    methods = ("GET", "PUT", "PROPFIND", "LOCK", "UNLOCK", "DELETE", "MKCOL", "PROPPATCH", "COPY", "MOVE", "OPTIONS")
    for default in ((), ("password",), ("password", "totp")):
        for method, src, dst in itertools.product(methods, places, places):
            target = parse_wsgi_path(f"/{src}/a" if src else "/")
            dest = parse_wsgi_path(f"/{dst}/b" if dst else "/")
            got = required_factors(method, target, dest, shares, default)
            if method == "OPTIONS":
                assert got == (), (method, src)
                continue
            touched = [src] + ([dst] if method in ("COPY", "MOVE") else [])
            union = set().union(*(REQUIRE.get(p or "", default) for p in touched))
            assert got == tuple(f for f in ("password", "totp") if f in union), (default, method, src, dst)


def _modified(inst: Instance, server: DavServer, granted: Client, credentials: str, path: str = "/",
              depth: str = "1") -> dict[str, bool]:
    """Last name of each href -> whether the PROPFIND told its modification time."""
    s = session_for(inst, client=granted, password=PW) if credentials == "grant" else session_for(inst, "alice")
    with s:
        r = s.request("PROPFIND", server.url + path.lstrip("/"), headers={"Depth": depth})
    assert r.status_code == 207, r.status_code
    told = {}
    for response in ET.fromstring(r.content).iter("{DAV:}response"):  # noqa: S314 - our own server
        href = response.findtext("{DAV:}href", "").rstrip("/").rsplit("/", 1)[-1]
        told[href] = any(
            ps.findtext("{DAV:}status", "").split()[1] == "200"
            and ps.find("{DAV:}prop/{DAV:}getlastmodified") is not None
            for ps in response.iter("{DAV:}propstat")
        )
    return told


def test_the_root_listing_tells_a_shares_changes_only_with_its_factors(live) -> None:
    """PROPFIND / Depth 1 asks for defaults.require (the password) only: it names secure
    but never tells when secure last changed, even to a certificate with a two-factor
    session (the root asked for no code). PROPFIND /secure/ itself does, with the code."""
    inst, server, granted, _ = live
    for credentials in ("password", "grant"):
        told = _modified(inst, server, granted, credentials)
        assert (told["files"], told["open"], told["secure"]) == (True, True, False), credentials
    assert _modified(inst, server, granted, "grant", "/secure/", "0")["secure"] is True, "twin"
