"""Sign-in lockout (auth/lockout.py): failures of each factor accumulate, a success of one
factor never clears another's, only ASCII digits make a code, lockout keys compare exactly,
and one account's certificates cannot lock out an address.

First the pure core with an injected clock on a real store, then the live server through TLS
with certificates from the instance's CA, on SQLite and on a real redis-server.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pyotp
import pytest
import requests
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver.accounts import Account, Accounts, BoundCert
from davserver.addresses import canonical_address
from davserver.auth import totp as totp_mod
from davserver.auth.core import FAILURES, Authenticator, Credentials, Decision
from davserver.auth.identity import CertIdentity
from davserver.auth.lockout import Lockouts, account_prefix, address_key
from davserver.auth.passwords import hash_password
from davserver.cli import main
from davserver.config import IdentityConfig, ShareConfig, ThrottleConfig, TOTPConfig
from davserver.store import SQLiteStore, StateStore
from davserver.store.redis import RedisStore

from .conftest import Client, Instance, running, session_for

T0 = datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a 30 s step
SECRET = pyotp.random_base32()
PW = "right-password"
TOTP_SHARE = ShareConfig("secure", Path("/s"), writers=("*",), require=("password", "totp"))
PW_SHARE = ShareConfig("files", Path("/f"), writers=("*",), require=("password",))
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_HASH = hash_password(PW)
_SETTINGS = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Arbitrary text, and text made mostly of digits of every script (where the old faults were).
CODES = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(categories=["Nd"]), min_size=6, max_size=6),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Zs"]), min_size=1, max_size=8),
)


def fp(n: int) -> str:
    return f"{n:064x}"


def cert_of(name: str, n: int) -> CertIdentity:
    return CertIdentity(fp(n), f"{n:X}", f"CN={name}", "CN=ca", name, (), (), (),
                        T0 - timedelta(days=1), T0 + timedelta(days=365), True)


def accounts_with(*names: str, certs: int = 1) -> Accounts:
    """Accounts with the same password and secret; account i owns certificates 100*i+1 … 100*i+certs."""
    return Accounts({
        name: Account(name, _HASH, certificates=tuple(BoundCert(fp(100 * i + k)) for k in range(1, certs + 1)),
                      totp_secret=SECRET)
        for i, name in enumerate(names, start=1)
    })


def code_at(at: datetime, steps: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(at + timedelta(seconds=30 * steps))


def wrong_code(at: datetime) -> str:
    """Six ASCII digits that are none of the codes accepted at `at` (one step of drift either way)."""
    valid = {code_at(at, s) for s in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in valid)


def make_auth(store: StateStore, *, cache: float = 300, **throttle: float) -> Authenticator:
    t = {"lock_after": 10, "address_lock_after": 5, "lock_seconds": 900, "window_seconds": 900,
         "delay_after": 1000, **throttle}
    return Authenticator(IdentityConfig(), cache_seconds=cache, store=store,
                         totp_config=TOTPConfig(grant_idle_seconds=600, grant_absolute_seconds=3600),
                         throttle=ThrottleConfig(**t))  # type: ignore[arg-type]


def ask(auth: Authenticator, accounts: Accounts, name: str, n: int, password: str | None, *,
        at: datetime = T0, share: ShareConfig = TOTP_SHARE, user: str | None = None,
        peer: str = "10.0.0.1") -> Decision:
    creds = None if password is None else Credentials(user or name, password)
    return auth.decide(cert=cert_of(name, n), credentials=creds, accounts=accounts, revoked=frozenset(),
                       share=share, require=share.require, write=False, now=at, peer=peer)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "redis":
        s: StateStore = RedisStore(request.getfixturevalue("redis_url"), prefix=f"test-{uuid.uuid4().hex}:")
    else:
        s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


# --- 1. factor failures accumulate -------------------------------------------------------------


def test_wrong_codes_after_the_right_password_lock_out_across_cache_expiries(store: StateStore) -> None:
    """The report: 27 wrong codes over 945 s with the right password, the credential cache (30 s)
    expiring before each, were never locked out. Now the 11th attempt is."""
    auth = make_auth(store, cache=30)
    accounts = accounts_with("alice")
    reasons = []
    for i in range(27):
        at = T0 + timedelta(seconds=35 * i)  # 27 attempts, 945 s; each one re-verifies the password
        reasons.append(ask(auth, accounts, "alice", 101, PW + wrong_code(at), at=at).reason)
    assert reasons == ["bad_otp"] * 10 + ["locked"] * 17
    at = T0 + timedelta(seconds=945)
    assert ask(auth, accounts, "alice", 101, PW + code_at(at), at=at).reason == "locked", "the right code too"
    later = T0 + timedelta(seconds=35 * 9 + 901)
    assert ask(auth, accounts, "alice", 101, PW + code_at(later), at=later).allowed, "the lockout ends by itself"


def test_right_passwords_in_between_do_not_forgive_wrong_codes(store: StateStore) -> None:
    auth = make_auth(store, cache=0, lock_after=5)  # no cache: every right password is a real verification
    accounts = accounts_with("alice")
    for i in range(5):
        at = T0 + timedelta(seconds=i)
        assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE, at=at).allowed
        assert ask(auth, accounts, "alice", 101, PW + wrong_code(at), at=at).reason == "bad_otp"
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE, at=T0 + timedelta(seconds=6)).reason == "locked"


def test_a_user_with_typos_still_gets_in_and_the_right_code_forgives_wrong_codes(store: StateStore) -> None:
    auth = make_auth(store, lock_after=5)
    accounts = accounts_with("alice")
    for _ in range(4):
        assert ask(auth, accounts, "alice", 101, PW + wrong_code(T0)).reason == "bad_otp"
    d = ask(auth, accounts, "alice", 101, PW + code_at(T0))
    assert d.allowed and d.factors == ("password", "totp"), "four typos, then the right code: in, with a grant"
    auth.end_grant(accounts["alice"], cert_of("alice", 101))
    at = T0 + timedelta(seconds=30)
    for _ in range(4):
        assert ask(auth, accounts, "alice", 101, PW + wrong_code(at), at=at).reason == "bad_otp"
    assert ask(auth, accounts, "alice", 101, PW + code_at(at), at=at).allowed, "4 + 4 wrong codes never made 5"
    for _ in range(4):  # wrong passwords, then the right one
        assert ask(auth, accounts, "alice", 101, "typo-typo", share=PW_SHARE).reason == "bad_password"
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE).allowed


def test_each_factor_is_cleared_only_by_its_own_success(any_store: StateStore) -> None:
    lockouts = Lockouts(any_store.lockouts, ThrottleConfig(lock_after=3, delay_after=1000))
    for other, factor in (("password", "totp"), ("totp", "password")):
        name = f"a-{factor}"
        lockouts.fail(name, "fp", factor, "", 0)  # type: ignore[arg-type]
        lockouts.fail(name, "fp", factor, "", 1)  # type: ignore[arg-type]
        lockouts.succeed(name, "fp", other)  # type: ignore[arg-type]
        assert not lockouts.is_locked_out(name, "fp", "", 2)
        lockouts.fail(name, "fp", factor, "", 2)  # type: ignore[arg-type]
        assert lockouts.is_locked_out(name, "fp", "", 3), f"a {other} success cleared {factor} failures"
    # twin: its own success does clear it
    lockouts.fail("b", "fp", "totp", "", 0)
    lockouts.fail("b", "fp", "totp", "", 1)
    lockouts.succeed("b", "fp", "totp")
    lockouts.fail("b", "fp", "totp", "", 2)
    assert not lockouts.is_locked_out("b", "fp", "", 3)


# --- 2. only ASCII digits make a code ----------------------------------------------------------


@pytest.mark.parametrize("script", [ARABIC_INDIC, FULLWIDTH], ids=["arabic-indic", "fullwidth"])
def test_the_right_code_in_other_digits_is_a_wrong_code_on_both_paths(
        store: StateStore, tmp_path: Path, script: dict) -> None:
    auth = make_auth(store, lock_after=4)
    accounts = accounts_with("alice")
    typed = code_at(T0).translate(script)
    assert typed != code_at(T0) and typed.isdigit()
    assert totp_mod.match_step(SECRET, typed, T0.timestamp()) is None
    assert ask(auth, accounts, "alice", 101, PW + typed).reason == "bad_otp", "inline"
    step_up = auth.step_up(account=accounts["alice"], cert=cert_of("alice", 101), password=PW, code=typed, now=T0)
    assert (step_up.allowed, step_up.reason) == (False, "bad_otp"), "step-up page"
    assert ask(auth, accounts, "alice", 101, PW + typed).reason == "bad_otp"
    assert ask(auth, accounts, "alice", 101, PW + typed).reason == "bad_otp"
    assert ask(auth, accounts, "alice", 101, PW + code_at(T0)).reason == "locked", "they were counted"
    twin_store = SQLiteStore(tmp_path / "twin.db")
    try:
        d = ask(make_auth(twin_store), accounts, "alice", 101, PW + code_at(T0))
        assert d.allowed and d.factors == ("password", "totp"), "the same code in ASCII digits opens a grant"
    finally:
        twin_store.close()


@_SETTINGS
@given(typed=CODES)
@example(typed="١٢٣٤٥٦")
@example(typed="")
@example(typed="12345６")
def test_any_text_as_inline_code_is_a_counted_failure_never_an_error(store: StateStore, typed: str) -> None:
    auth = make_auth(store, lock_after=10**6)
    accounts = accounts_with("alice")
    if typed in {code_at(T0, s) for s in (-1, 0, 1)}:
        return
    d = ask(auth, accounts, "alice", 101, PW + typed, peer="")
    assert not d.allowed
    if typed == "":
        assert d.reason == "otp_required", "no code is a challenge, not a failure"
    else:
        assert d.reason in FAILURES, (typed, d.reason)
        if len(typed) == 6 and typed.isdigit():
            assert d.reason == "bad_otp", "the right password and six digits of any script: a wrong code"


@_SETTINGS
@given(typed=CODES)
@example(typed="١٢٣٤٥٦")
def test_any_text_as_step_up_code_is_a_counted_failure_never_an_error(store: StateStore, typed: str) -> None:
    auth = make_auth(store, lock_after=10**6)
    accounts = accounts_with("alice")
    if typed.strip() in {code_at(T0, s) for s in (-1, 0, 1)}:
        return
    d = auth.step_up(account=accounts["alice"], cert=cert_of("alice", 101), password=PW, code=typed, now=T0)
    assert (d.allowed, d.reason) == (False, "bad_otp"), typed


def test_match_step_accepts_six_ascii_digits_only() -> None:
    now = T0.timestamp()
    assert totp_mod.match_step(SECRET, code_at(T0), now) == int(now) // 30
    for bad in (code_at(T0).translate(ARABIC_INDIC), code_at(T0) + "\n", " " + code_at(T0), code_at(T0)[:5],
                code_at(T0)[:5] + "\u0660", "¹²³⁴⁵⁶"):
        assert totp_mod.match_step(SECRET, bad, now) is None, repr(bad)


# --- 3. lockout keys are the canonical account, compared exactly -------------------------------


def test_keys_come_from_the_certificates_account_not_the_typed_user(store: StateStore) -> None:
    auth = make_auth(store, lock_after=3)
    accounts = accounts_with("alice", "Alice")  # two distinct accounts; alice owns cert 101, Alice 201
    for i in range(3):  # alice's certificate, the user typed as "Alice" (distinct tries: repeats count once)
        assert ask(auth, accounts, "alice", 101, f"{PW}{i}", share=PW_SHARE, user="Alice").reason == "user_mismatch"
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE).reason == "locked"
    assert ask(auth, accounts, "Alice", 201, PW, share=PW_SHARE).allowed, "the account Alice is not locked out"
    assert store.lockouts.clear_lockouts_by_prefix(account_prefix("Alice")) == 0
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE).reason == "locked"
    assert store.lockouts.clear_lockouts_by_prefix(account_prefix("alice")) == 1
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE).allowed


NAMES = st.text(alphabet="aAlLiIcCeE_%*?[]\\.-@", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=NAMES, b=NAMES)
@example(a="alice", b="Alice")
@example(a="Alice", b="alice")
@example(a="a_ice", b="alice")
@example(a="a%", b="abc")
@example(a="a*", b="ab")
@example(a="[a]", b="a")
@example(a="a\\", b="a\\b")
def test_unlock_lifts_exactly_one_accounts_lockouts(any_store: StateStore, a: str, b: str) -> None:
    tag = uuid.uuid4().hex[:8]  # one store for all examples: keys of this example only
    a, b = f"{tag}{a}", f"{tag}{b}"
    for name in (a, b):
        any_store.lockouts.set_lockout(f"acct:{name}:fp", until=10**12)
        any_store.lockouts.add_failure(f"acct:{name}:fp:totp", now=0, window=10**12)
    lifted = any_store.lockouts.clear_lockouts_by_prefix(account_prefix(a))
    assert lifted == 1
    assert any_store.lockouts.lockout_until(f"acct:{a}:fp", now=0) is None
    if a != b:
        assert any_store.lockouts.lockout_until(f"acct:{b}:fp", now=0) == 10**12, (a, b)
        assert any_store.lockouts.add_failure(f"acct:{b}:fp:totp", now=1, window=10**12) == 2, "b's count survived"
    assert any_store.lockouts.add_failure(f"acct:{a}:fp:totp", now=1, window=10**12) == 1, "a's count was cleared"


def test_redis_deployment_prefix_with_glob_characters_is_matched_literally(redis_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    odd = RedisStore(redis_url, prefix=f"t{tag}[1]*?\\:")
    plain = RedisStore(redis_url, prefix=f"t{tag}1x\\:")  # what the unescaped pattern would also match
    try:
        for s in (odd, plain):
            s.lockouts.set_lockout("acct:alice:fp", until=10**12)
        assert odd.lockouts.clear_lockouts_by_prefix("acct:alice:") == 1
        assert odd.lockouts.lockout_until("acct:alice:fp", now=0) is None
        assert plain.lockouts.lockout_until("acct:alice:fp", now=0) == 10**12
    finally:
        plain.lockouts.clear_lockouts_by_prefix("acct:")
        odd.close()
        plain.close()


# --- 4. the address lockout ---------------------------------------------------------------------


def test_five_certificates_of_one_account_do_not_lock_out_the_address(store: StateStore) -> None:
    auth = make_auth(store, lock_after=3, address_lock_after=2)
    accounts = accounts_with("mallory", "bob", certs=5)
    for n in range(101, 106):  # mallory's five certificates, each locked out
        for i in range(3):
            assert ask(auth, accounts, "mallory", n, f"guess-{i}", share=PW_SHARE).reason == "bad_password"
        assert ask(auth, accounts, "mallory", n, PW, share=PW_SHARE).reason == "locked"
    assert ask(auth, accounts, "bob", 201, PW, share=PW_SHARE).allowed, "bob behind the same address"


def test_failures_of_several_accounts_lock_out_the_address_until_unlocked(any_store: StateStore) -> None:
    auth = make_auth(any_store, lock_after=3, address_lock_after=2)
    accounts = accounts_with("alice", "carol", "bob", certs=2)
    for name, n in (("alice", 101), ("carol", 201)):
        for i in range(3):
            ask(auth, accounts, name, n, f"guess-{i}", share=PW_SHARE)
    assert ask(auth, accounts, "bob", 301, PW, share=PW_SHARE).reason == "locked", "two accounts: address"
    assert ask(auth, accounts, "bob", 301, PW, share=PW_SHARE, peer="10.0.0.2").allowed, "only that address"
    assert ask(auth, accounts, "alice", 102, PW, share=PW_SHARE, peer="10.0.0.2").allowed, "alice's other cert"
    assert any_store.lockouts.clear_lockout(address_key("10.0.0.10")) == 0, "an address is not a prefix"
    assert ask(auth, accounts, "bob", 301, PW, share=PW_SHARE).reason == "locked"
    assert any_store.lockouts.clear_lockout(address_key("::ffff:10.0.0.1")) == 1, "the same address, IPv4-mapped"
    assert ask(auth, accounts, "bob", 301, PW, share=PW_SHARE).allowed
    assert ask(auth, accounts, "alice", 101, PW, share=PW_SHARE).reason == "locked", "alice's own lockout stays"


def test_the_address_counts_accounts_within_the_window(any_store: StateStore) -> None:
    assert any_store.lockouts.note_lockout("addr:a", "alice", now=0, window=100) == 1
    assert any_store.lockouts.note_lockout("addr:a", "alice", now=10, window=100) == 1, "one account counts once"
    assert any_store.lockouts.note_lockout("addr:b", "bob", now=20, window=100) == 1, "per address"
    assert any_store.lockouts.note_lockout("addr:a", "bob", now=50, window=100) == 2
    assert any_store.lockouts.note_lockout("addr:a", "carol", now=111, window=100) == 2, "alice (at 10) aged out"
    assert any_store.lockouts.clear_lockout("addr:a") == 0, "records are cleared; there was no lockout"
    assert any_store.lockouts.note_lockout("addr:a", "dave", now=112, window=100) == 1


def test_canonical_address() -> None:
    assert canonical_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert canonical_address("2001:DB8:0:0::7") == "2001:db8::7"
    assert address_key("not an address") == "addr:not an address"
    with pytest.raises(ValueError):
        canonical_address("192.0.2.300")


# --- 5. live: TLS, real certificates, SQLite and Redis ------------------------------------------

LIVE_PW = "alice-secret-pw"


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "redis":
        return {"backend": "redis", "url": request.getfixturevalue("redis_url"),
                "prefix": f"test-{uuid.uuid4().hex}:"}
    return {}


def configure(inst: Instance, state: dict[str, str], **throttle: int) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    if state:
        raw["state"] = state
    raw["auth"] = {"credential_cache_seconds": 0}  # every request verifies the password again
    raw["throttle"] = {"delay_after": 1000, **throttle}
    raw["shares"]["secure"] = {"path": "data/secure", "writers": ["*"], "require": ["password", "totp"]}
    (inst.home.root / "data" / "secure").mkdir(exist_ok=True)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def cli(inst: Instance, *args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), *args])
    return out.exit_code, out.output


def enrol(inst: Instance) -> pyotp.TOTP:
    rc, out = cli(inst, "user", "totp", "enable", "alice", "--json")
    assert rc == 0, out
    return pyotp.TOTP(json.loads(out)["secret"])


def audit(inst: Instance) -> list[dict]:
    """The complete records of the audit log (a line still being written is left for later)."""
    path = inst.home.state_dir / "audit.log"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def audit_after(inst: Instance, before: int, count: int = 1) -> list[dict]:
    """The records written after the first `before`, waiting briefly for `count` of them."""
    for _ in range(200):
        records = audit(inst)[before:]
        if len(records) >= count:
            return records
        time.sleep(0.02)
    return audit(inst)[before:]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def audited(inst: Instance, s: requests.Session, url: str, user: str, password: str) -> tuple[int, str]:
    """GET `url` with these Basic credentials (UTF-8); the status and the one audit line's reason."""
    before = len(audit(inst))
    got = s.get(url, headers={"Authorization": basic(user, password)}, timeout=30).status_code
    records = audit_after(inst, before)
    assert len(records) == 1, records
    return got, records[0]["reason"]


def plain_session(inst: Instance, client: Client) -> requests.Session:
    s = session_for(inst, client=client)
    s.auth = None  # the Authorization header is set per request (UTF-8, which requests' auth is not)
    return s


def test_live_wrong_codes_after_the_right_password_lock_out(inst: Instance, backend: dict[str, str]) -> None:
    configure(inst, backend, lock_after=4, address_lock_after=5)
    totp = enrol(inst)
    laptop = inst.issue("alice", name="alice-laptop")
    with running(inst) as server, plain_session(inst, inst.clients["alice"]) as s, \
            plain_session(inst, laptop) as attacker:
        url = server.url + "secure/"
        wrong = next(f"{n:06d}" for n in range(10**6)
                     if f"{n:06d}" not in {totp.at(time.time() + 30 * k) for k in (-1, 0, 1, 2)})
        # twin first: one typo, then the right code
        assert audited(inst, s, url, "alice", LIVE_PW + wrong) == (401, "bad_otp")
        assert audited(inst, s, url, "alice", LIVE_PW + totp.now()) == (200, "ok"), "one typo still gets in"
        for _ in range(4):  # the right password (verified every time: no cache) and wrong codes
            assert audited(inst, attacker, url, "alice", LIVE_PW + wrong) == (401, "bad_otp")
        assert audited(inst, attacker, url, "alice", LIVE_PW + totp.at(time.time() + 30)) == (401, "locked")
        assert audited(inst, s, url, "alice", LIVE_PW) == (200, "ok"), "the other certificate's grant is untouched"
        rc, out = cli(inst, "user", "unlock", "alice")
        assert rc == 0 and "unlocked (1 lockout lifted)" in out, out
        assert audited(inst, attacker, url, "alice", LIVE_PW + totp.at(time.time() + 30)) == (200, "ok")


def test_live_codes_in_other_digits_are_wrong_codes_inline_and_on_the_step_up_page(
        inst: Instance, backend: dict[str, str]) -> None:
    configure(inst, backend, lock_after=1000)
    totp = enrol(inst)
    with running(inst) as server, plain_session(inst, inst.clients["alice"]) as s:
        url = server.url + "secure/"
        page_url = server.url + "_davserver/"
        arabic = totp.now().translate(ARABIC_INDIC)

        def stepup(code: str, csrf: str | None = None) -> tuple[int, str]:
            token = csrf
            if token is None:
                before = len(audit(inst))
                page = s.get(page_url, timeout=30)
                token = page.text.split('name=csrf value="', 1)[1].split('"', 1)[0]
                assert len(audit_after(inst, before)) == 1
            body = urlencode({"csrf": token, "password": LIVE_PW, "code": code}, encoding="utf-8")
            before = len(audit(inst))
            r = s.post(page_url + "stepup", data=body.encode("ascii"), timeout=30,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
            records = audit_after(inst, before)
            assert len(records) == 1, records
            return r.status_code, records[0]["reason"]

        def inline(code: str) -> tuple[int, str]:
            return audited(inst, s, url, "alice", LIVE_PW + code)

        assert inline(arabic) == (401, "bad_otp")
        assert stepup(arabic) == (403, "bad_otp")
        now_in_arabic = str(int(time.time())).translate(ARABIC_INDIC)  # int() reads it as the current time
        assert stepup(totp.now(), csrf=f"{now_in_arabic}.x") == (403, "csrf"), "refused, not a 500"

        @_SETTINGS
        @given(code=CODES)
        def each(code: str) -> None:
            if code.strip() in {totp.at(time.time() + 30 * k) for k in (-1, 0, 1)}:
                return
            got, reason = inline(code)
            assert got == 401 and reason in (FAILURES if code else {"otp_required"}), (code, reason)
            assert stepup(code) == (403, "bad_otp"), code
            assert stepup(totp.now(), csrf=f"{int(time.time())}.{code}") == (403, "csrf"), code

        each()
        # twins: the right code in ASCII digits opens a grant on either path
        assert stepup(totp.now()) == (200, "stepup")
        rc, out = cli(inst, "user", "totp", "enable", "alice", "--json")  # a new secret ends the grant
        fresh = pyotp.TOTP(json.loads(out)["secret"])
        assert inline("") == (401, "otp_required")
        assert inline(fresh.at(time.time() + 30)) == (200, "ok"), "(the current step was used above)"


def _lock_out(inst: Instance, url: str, client: Client, user: str, times: int) -> None:
    with plain_session(inst, client) as s:
        for i in range(times):  # distinct guesses: a repeat counts once (throttle.count_repeats)
            assert audited(inst, s, url, user, f"wrong-password-{i}!")[0] == 401


def test_live_unlock_lifts_exactly_the_named_accounts_lockout(inst: Instance, backend: dict[str, str]) -> None:
    configure(inst, backend, lock_after=3, address_lock_after=100)
    added = CliRunner().invoke(main, ["--home", str(inst.home.root), "user", "add", "Alice", "--password-stdin"],
                               input="Alice-secret-pw\n")
    assert added.exit_code == 0, added.output
    big = inst.issue("Alice", name="Alice-upper")
    small = inst.clients["alice"]
    with running(inst) as server:
        url = server.url + "files/"

        def gets_in(client: Client, user: str, pw: str) -> bool:
            with plain_session(inst, client) as s:
                return audited(inst, s, url, user, pw)[0] == 200

        assert gets_in(small, "alice", LIVE_PW) and gets_in(big, "Alice", "Alice-secret-pw")
        _lock_out(inst, url, small, "Alice", 3)  # alice's certificate, "Alice" typed: alice's failures
        _lock_out(inst, url, big, "Alice", 3)
        assert not gets_in(small, "alice", LIVE_PW) and not gets_in(big, "Alice", "Alice-secret-pw")
        assert cli(inst, "user", "unlock", "alice")[0] == 0
        assert gets_in(small, "alice", LIVE_PW), "alice's lockout is lifted, whatever name was typed"
        assert not gets_in(big, "Alice", "Alice-secret-pw"), "Alice's lockout stays"
        _lock_out(inst, url, small, "alice", 3)
        rc, out = cli(inst, "user", "unlock", "Alice", "--json")
        assert rc == 0 and json.loads(out) == {"account": "Alice", "lifted": 1}, out
        assert gets_in(big, "Alice", "Alice-secret-pw")
        assert not gets_in(small, "alice", LIVE_PW), "alice's lockout stays"
        rc, out = cli(inst, "user", "unlock", "ALICE")
        assert rc == 2 and "case-sensitive" in out and "'Alice'" in out, out


def test_live_one_accounts_certificates_do_not_lock_out_the_address_several_accounts_do(
        inst: Instance, backend: dict[str, str]) -> None:
    configure(inst, backend, lock_after=3, address_lock_after=2)
    extra = [inst.issue("alice", name=f"alice-{i}") for i in range(4)]
    with running(inst) as server:
        url = server.url + "files/"
        bob = inst.clients["bob"]

        def bob_gets_in() -> tuple[int, str]:
            with plain_session(inst, bob) as s:
                return audited(inst, s, url, "bob", "bob-secret-pw1")

        for client in [inst.clients["alice"], *extra]:  # five certificates of one account
            _lock_out(inst, url, client, "alice", 3)
        assert bob_gets_in() == (200, "ok"), "behind the same address, bob is not locked out"
        _lock_out(inst, url, inst.clients["carol"], "carol", 3)  # a second account
        assert bob_gets_in() == (401, "locked")
        rc, out = cli(inst, "user", "unlock", "--address", "127.0.0.1", "--json")
        assert rc == 0 and json.loads(out) == {"address": "127.0.0.1", "lifted": 1}, out
        assert bob_gets_in() == (200, "ok")
        rc, out = cli(inst, "user", "unlock", "--address", "127.0.0.1")
        assert rc == 0 and "address 127.0.0.1 unlocked (0 lockouts lifted)" in out, out
        assert cli(inst, "user", "unlock", "--address", "127.0.0.300")[0] == 2
        assert cli(inst, "user", "unlock")[0] == 2, "a name or an address"
        assert cli(inst, "user", "unlock", "bob", "--address", "127.0.0.1")[0] == 2


# --- the account-wide ceiling on consecutive failures (NIST SP 800-63B §5.2.2) ------------------


def test_slow_guessing_over_every_certificate_locks_the_account_until_unlocked(any_store: StateStore) -> None:
    """Guessing below the per-window limit, spread over two certificates and a month, still
    stops at throttle.max_consecutive_failures; only `user unlock` lifts that lockout."""
    auth = make_auth(any_store, lock_after=5, lock_seconds=60, window_seconds=60, max_consecutive_failures=12)
    accounts = accounts_with("alice", certs=2)
    at = T0
    for i in range(12):
        at = T0 + timedelta(days=2 * i)  # one guess every two days, never near the per-window limit
        assert ask(auth, accounts, "alice", 101 + i % 2, PW + wrong_code(at), at=at).reason == "bad_otp"
    for n in (101, 102):  # both certificates, the right code, weeks later
        later = at + timedelta(days=30)
        assert ask(auth, accounts, "alice", n, PW + code_at(later), at=later).reason == "locked"
    assert ask(auth, accounts_with("bob"), "bob", 101, PW + code_at(later), at=later).allowed, "others are not"
    assert Lockouts(any_store.lockouts).unlock_account("alice") >= 1  # what `davserver user unlock alice` does
    assert ask(auth, accounts, "alice", 101, PW + code_at(later), at=later).allowed


def test_a_success_of_the_factor_restarts_the_account_wide_count(any_store: StateStore) -> None:
    auth = make_auth(any_store, lock_after=1000, max_consecutive_failures=6)
    accounts = accounts_with("alice", certs=2)
    for round_ in range(3):  # 5 wrong codes, then the right one: never 6 in a row
        at = T0 + timedelta(minutes=5 * round_)
        for k in range(5):
            assert ask(auth, accounts, "alice", 101 + k % 2, PW + wrong_code(at), at=at).reason == "bad_otp"
        d = ask(auth, accounts, "alice", 102, PW + code_at(at), at=at)
        assert d.allowed, round_
        auth.end_grant(accounts["alice"], cert_of("alice", 102))
    # wrong passwords have a count of their own, which right codes do not restart
    for k in range(6):
        assert ask(auth, accounts, "alice", 101, f"typo-{k}", share=PW_SHARE).reason == "bad_password", k
    assert ask(auth, accounts, "alice", 102, PW, share=PW_SHARE).reason == "locked"


def test_the_ceiling_can_be_turned_off(store: StateStore) -> None:
    auth = make_auth(store, lock_after=1000, max_consecutive_failures=0)
    accounts = accounts_with("alice")
    for _ in range(101):  # past the default ceiling of 100 (the password is verified once, then cached)
        assert ask(auth, accounts, "alice", 101, PW + wrong_code(T0)).reason == "bad_otp"
    assert ask(auth, accounts, "alice", 101, PW + code_at(T0)).allowed


def test_an_ipv6_address_lockout_covers_its_64_block(store: StateStore) -> None:
    """Several accounts' certificates used from different addresses of one /64 (one
    subscriber's block) lock out the block; another block and IPv4 are separate."""
    auth = make_auth(store, lock_after=1, address_lock_after=2)
    accounts = accounts_with("a1", "a2", "a3")
    assert ask(auth, accounts, "a1", 101, "typo-typo", share=PW_SHARE, peer="2001:db8:1:2::10").reason == "bad_password"
    assert ask(auth, accounts, "a2", 201, "typo-typo", share=PW_SHARE, peer="2001:db8:1:2::ff").reason == "bad_password"
    assert ask(auth, accounts, "a3", 301, PW, share=PW_SHARE, peer="2001:db8:1:2:abcd::1").reason == "locked"
    assert ask(auth, accounts, "a3", 301, PW, share=PW_SHARE, peer="2001:db8:1:3::1").allowed
    assert address_key("2001:db8:1:2::10") == address_key("2001:db8:1:2:ffff::") == "addr:2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.7") == address_key("192.0.2.7") == "addr:192.0.2.7"
