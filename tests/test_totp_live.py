"""TOTP, grants and throttling through the real TLS server, as clients that only
know a user name and a password experience them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pyotp
import pytest
import yaml
from click.testing import CliRunner

from davserver import instance
from davserver.accounts import load_accounts, save_accounts
from davserver.auth.passwords import hash_password
from davserver.cli import main
from davserver.server import DavServer

from .conftest import Instance, running, session_for
from .test_server_auth import last_reason

PW = "alice-secret-pw"


def configure(inst: Instance, **sections: object) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw.update(sections)
    raw["shares"]["secure"] = {"path": "data/secure", "writers": ["*"], "require": ["password", "totp"]}
    raw["shares"]["open"] = {"path": "data/open", "writers": ["*"], "require": []}
    for name in ("secure", "open"):
        (inst.home.root / "data" / name).mkdir(exist_ok=True)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def enrol(inst: Instance, account: str = "alice") -> pyotp.TOTP:
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "totp", "enable", account, "--json"])
    assert out.exit_code == 0, out.output
    return pyotp.TOTP(json.loads(out.output)["secret"])


def code(totp: pyotp.TOTP, steps: int = 0) -> str:
    return totp.at(time.time() + 30 * steps)


def get(inst: Instance, url: str, password: str | None, client: str = "alice") -> int:
    s = session_for(inst, client, password=password)
    if password is None:
        s.auth = None
    with s:
        return s.get(url).status_code


@pytest.fixture
def live(inst: Instance) -> Iterator[tuple[Instance, DavServer, pyotp.TOTP]]:
    configure(inst, totp={"grant_idle_seconds": 3, "grant_absolute_seconds": 6},
              throttle={"lock_after": 4, "address_lock_after": 40, "delay_after": 10})
    totp = enrol(inst)
    with running(inst) as server:
        yield inst, server, totp


def test_inline_code_opens_a_grant_for_that_certificate_only(live) -> None:
    inst, server, totp = live
    url = server.url + "secure/"
    assert get(inst, url, PW) == 401, "password alone before any step-up"
    c = code(totp)
    assert get(inst, url, PW + c) == 200
    assert get(inst, url, PW) == 200, "password alone during the grant"
    assert get(inst, url, PW + c) == 200, "the stale code clients keep sending"
    second = inst.issue("alice", name="alice-laptop")
    s = session_for(inst, client=second, password=PW + c)
    assert s.get(url).status_code == 401, "another certificate cannot replay the code"
    s.auth = ("alice", PW)
    assert s.get(url).status_code == 401, "and has no grant"
    s.auth = ("alice", PW + code(totp, 1))
    assert s.get(url).status_code == 200, "its own step-up with a fresh code"
    s.close()


def test_a_used_code_is_refused_after_the_grant_ends(live) -> None:
    inst, server, totp = live
    url = server.url + "secure/"
    c = code(totp)
    assert get(inst, url, PW + c) == 200
    time.sleep(3.2)  # idle limit
    assert get(inst, url, PW) == 401
    assert get(inst, url, PW + c) == 401, "one code, one use"


def test_grant_has_an_absolute_end_even_when_busy(live) -> None:
    inst, server, totp = live
    url = server.url + "secure/"
    assert get(inst, url, PW + code(totp)) == 200
    started = time.monotonic()
    while time.monotonic() - started < 5.0:
        assert get(inst, url, PW) == 200
        time.sleep(1.0)
    time.sleep(max(0.0, 6.2 - (time.monotonic() - started)))
    assert get(inst, url, PW) == 401


def test_revocation_and_password_change_end_the_grant(live) -> None:
    inst, server, totp = live
    url = server.url + "secure/"
    assert get(inst, url, PW + code(totp)) == 200
    path = inst.home.accounts_file
    save_accounts(path, load_accounts(path).edit("alice", password_hash=hash_password(PW)))  # same password
    assert get(inst, url, PW) == 401, "a password change ends the grant"
    assert get(inst, url, PW + code(totp, 1)) == 200
    revoked = inst.ca.revoke_account("alice")
    instance.unbind_certificates(inst.home, revoked)
    assert get(inst, url, PW) == 401


def test_lock_after_failures_and_unlock_with_the_cli(live) -> None:
    inst, server, totp = live
    url = server.url + "files/"
    for i in range(4):  # distinct guesses: a repeat counts once (throttle.count_repeats)
        assert get(inst, url, f"wrong-password-{i}!") == 401
    assert get(inst, url, PW) == 401, "locked: the right password does not help"
    assert last_reason(inst, "locked") == "locked"
    assert get(inst, url, "bob-secret-pw1", client="bob") == 200, "the lock is alice's, not the address's"
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "unlock", "alice"])
    assert out.exit_code == 0 and "unlocked (1 lockout lifted)" in out.output
    assert get(inst, url, PW) == 200


def test_an_address_that_keeps_failing_is_locked(inst: Instance) -> None:
    # The address counts distinct accounts locked out from it (auth/lockout.py, tests/test_lockout.py).
    configure(inst, throttle={"lock_after": 1, "address_lock_after": 3, "delay_after": 10})
    bobs_other = inst.issue("bob", name="bob-other")
    with running(inst) as server:
        for account in ("alice", "bob", "carol"):
            assert get(inst, server.url + "files/", "wrong-password!", client=account) == 401
        with session_for(inst, client=bobs_other, password="bob-secret-pw1") as s:
            assert s.get(server.url + "files/").status_code == 401, "bob's other certificate: the address"
        assert last_reason(inst, "locked") == "locked"


def test_certificate_only_share_needs_no_password(live) -> None:
    inst, server, _ = live
    assert get(inst, server.url + "open/", None) == 200
    assert get(inst, server.url + "files/", None) == 401
    s = session_for(inst, None)  # no certificate at all
    with pytest.raises(Exception):  # noqa: B017 - the TLS layer refuses; the exact error type varies
        s.get(server.url + "open/")
    s.close()


def test_totp_required_account_needs_a_code_everywhere(live) -> None:
    inst, server, totp = live
    path = inst.home.accounts_file
    save_accounts(path, load_accounts(path).edit("alice", totp_required=True))
    assert get(inst, server.url + "files/", PW) == 401
    assert get(inst, server.url + "files/", PW + code(totp)) == 200


def test_unenrolled_account_is_refused_on_a_totp_share(live) -> None:
    inst, server, _ = live
    assert get(inst, server.url + "secure/", "bob-secret-pw1" + "123456", client="bob") == 401
    assert get(inst, server.url + "files/", "bob-secret-pw1", client="bob") == 200
