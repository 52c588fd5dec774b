"""Basic credentials as real clients send them (issue cases2/03 and 04).

* Non-ASCII passwords: RFC 7617 §2.1 (charset UTF-8, PRECIS OpaqueString) and RFC 8265 §4.2
  (NFC): the NFC and NFD spellings of one password are one password, and a header encoded
  as ISO-8859-1 (Windows' Mini-Redirector, OkHttp) is read, not refused as malformed.
  Hashes made before preparation existed (from an NFD password) keep working.
* Retries: a failure that repeats one already counted within the window counts once
  (``throttle.count_repeats``), ``DOMAIN\\user`` and ``user@domain`` are the certificate's
  account (``auth.strip_domain``), and wrong TOTP codes still all count.

First the pure parts on a real store with an injected clock, then the live server over TLS
with certificates from the instance's CA and accounts made by the CLI.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest
import requests
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver.accounts import Account, Accounts, BoundCert, load_accounts
from davserver.auth import passwords
from davserver.auth.core import Authenticator, Credentials, Decision
from davserver.auth.identity import CertIdentity
from davserver.auth.passwords import hash_password, password_forms, prepare_password, verify_password
from davserver.cli import main
from davserver.config import IdentityConfig, ShareConfig, ThrottleConfig, load_config
from davserver.guard import parse_basic
from davserver.store import SQLiteStore, StateStore

from .conftest import Instance, running

CASE_PW = "Grüße-für-Jürgen"  # cases2/03
NFC = unicodedata.normalize("NFC", CASE_PW)
NFD = unicodedata.normalize("NFD", CASE_PW)
T0 = datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC)
FP = "ab" * 32
SECRET = pyotp.random_base32()
PW_SHARE = ShareConfig("files", Path("/f"), writers=("*",), require=("password",))
TOTP_SHARE = ShareConfig("secure", Path("/s"), writers=("*",), require=("password", "totp"))
CAROL_PW = "carol-pw-123"  # cases2/04
_CAROL_HASH = hash_password(CAROL_PW)
_SETTINGS = settings(max_examples=25, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def header(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


def cert(name: str = "carol", fp: str = FP) -> CertIdentity:
    return CertIdentity(fp, "01", f"CN={name}", "CN=ca", name, (), (), (),
                        T0 - timedelta(days=1), T0 + timedelta(days=365), True)


def carol(password_hash: str = _CAROL_HASH) -> Accounts:
    return Accounts({"carol": Account("carol", password_hash, certificates=(BoundCert(FP),), totp_secret=SECRET)})


def make_auth(store: StateStore, *, strip_domain: bool = True, cache: float = 0, **throttle: object) -> Authenticator:
    t = {"lock_after": 10, "address_lock_after": 5, "delay_after": 1000, **throttle}
    return Authenticator(IdentityConfig(), cache_seconds=cache, store=store, strip_domain=strip_domain,
                         throttle=ThrottleConfig(**t))  # type: ignore[arg-type]


def ask(auth: Authenticator, user: str, password: str, *, accounts: Accounts | None = None,
        share: ShareConfig = PW_SHARE, at: datetime = T0) -> Decision:
    return auth.decide(cert=cert(), credentials=Credentials(user, password), accounts=accounts or carol(),
                       revoked=frozenset(), share=share, require=share.require, write=False, now=at,
                       peer="10.0.0.1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


# --- 1. decoding the header ---------------------------------------------------------------------


def test_the_case_octets_decode_to_the_password() -> None:
    """cases2/03's three encodings of one password, and the twin: malformed stays malformed."""
    for raw in (NFC.encode("utf-8"), NFD.encode("utf-8"), NFC.encode("latin-1")):
        creds = parse_basic(header(b"u1:" + raw))
        assert creds is not None and not creds.malformed and creds.user == "u1"
        assert prepare_password(creds.password) == NFC, raw.hex()
    with pytest.raises(UnicodeDecodeError):
        NFC.encode("latin-1").decode("utf-8")
    assert parse_basic(header(b"u1:\x80uro")) == Credentials("u1", "€uro"), "0x80 is € in Windows-1252"
    assert parse_basic(header(b"u1:\x81")) == Credentials("u1", "\x81"), "undefined in 1252: ISO-8859-1"
    for bad in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer abc"):
        assert parse_basic(bad) == Credentials(malformed=True), bad
    assert parse_basic(header("u1:pässword".encode())) == Credentials("u1", "pässword"), "UTF-8 first"


@_SETTINGS
@given(st.text())
def test_any_utf8_user_pass_decodes_exactly(text: str) -> None:
    raw = f"user:{text}".encode("utf-8", "surrogatepass")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return  # lone surrogates are not UTF-8 any client sends
    assert parse_basic(header(raw)) == Credentials("user", text)


LATIN1_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                             blacklist_characters=[chr(c) for c in range(0x7F, 0xA0)]))


@_SETTINGS
@given(LATIN1_TEXT)
@example(NFC)
def test_any_latin1_password_sent_as_latin1_decodes_to_itself(text: str) -> None:
    raw = text.encode("latin-1")
    try:
        raw.decode("utf-8")
        return  # octets that are also UTF-8 are read as UTF-8 (documented in guard._decode_credentials)
    except UnicodeDecodeError:
        pass
    assert parse_basic(header(b"user:" + raw)) == Credentials("user", text)


# --- 2. preparing and checking passwords -------------------------------------------------------


@_SETTINGS
@given(st.text())
def test_preparation_is_nfc_idempotent_and_form_blind(text: str) -> None:
    prepared = prepare_password(text)
    assert prepare_password(prepared) == prepared
    assert unicodedata.is_normalized("NFC", prepared)
    assert prepare_password(unicodedata.normalize("NFD", text)) == prepared
    assert password_forms(text)[0] == prepared and len(set(password_forms(text))) == len(password_forms(text))


def test_preparation_maps_spaces_not_widths() -> None:
    """RFC 8265 §4.2.2: non-ASCII spaces become U+0020; fullwidth characters are kept."""
    assert prepare_password("a\u00a0b\u3000c") == "a b c"
    assert prepare_password("ＡＢＣ１") == "ＡＢＣ１"
    assert password_forms("plain-ascii") == ("plain-ascii",), "ASCII costs one argon2 check"


NON_ASCII = st.text(alphabet=st.characters(categories=["L", "M", "N", "P", "S"]), min_size=1, max_size=12)


@_SETTINGS
@given(NON_ASCII)
@example(CASE_PW)
@example("한국어-パスワード-ガ")
def test_a_password_signs_in_in_any_normal_form_and_as_latin1(store: StateStore, text: str) -> None:
    auth = make_auth(store, lock_after=10**6)
    accounts = carol(hash_password(unicodedata.normalize("NFD", text)))  # `user add` with NFD input
    for form in ("NFC", "NFD"):
        assert ask(auth, "carol", unicodedata.normalize(form, text), accounts=accounts).allowed, form
    try:
        latin1 = unicodedata.normalize("NFC", text).encode("latin-1")
    except UnicodeEncodeError:
        latin1 = None
    if latin1 is not None and any(0x80 <= b <= 0x9F for b in latin1) is False:
        creds = parse_basic(header(b"carol:" + latin1))
        assert creds is not None and not creds.malformed
        d = auth.decide(cert=cert(), credentials=creds, accounts=accounts, revoked=frozenset(), share=PW_SHARE,
                        require=PW_SHARE.require, write=False, now=T0)
        assert d.allowed, "sent as ISO-8859-1"
    assert ask(auth, "carol", text + "x", accounts=accounts).reason == "bad_password", "twin: another password"


def test_a_hash_made_from_an_nfd_password_before_preparation_still_works(store: StateStore) -> None:
    old = passwords._hasher.hash(NFD)  # what `user add` stored from NFD input before this change
    auth = make_auth(store)
    for typed in (NFD, NFC):
        assert ask(auth, "carol", typed, accounts=carol(old)).allowed, typed.encode().hex()
    assert ask(auth, "carol", NFC + "!", accounts=carol(old)).reason == "bad_password"


def test_cli_hashes_the_prepared_password(inst: Instance) -> None:
    for args in (["user", "add", "u9"], ["user", "passwd", "alice"]):
        out = CliRunner().invoke(main, ["--home", str(inst.home.root), *args, "--password-stdin"], input=NFD + "\n")
        assert out.exit_code == 0, out.output
    hashes = {a.name: a.password_hash or "" for a in load_accounts(inst.home.accounts_file).values()}
    for name in ("u9", "alice"):
        assert verify_password(hashes[name], NFC), f"{name}: the hash is of the NFC form"
        assert not verify_password(hashes[name], NFD), f"{name}: not of the NFD text as typed"


# --- 3. retries and user forms -------------------------------------------------------------------


def test_eleven_windows_retries_with_a_domain_user_sign_in(store: StateStore) -> None:
    """cases2/04: `WORKGROUP\\carol` with the right password, eleven times (dufs#307): all in."""
    auth = make_auth(store)
    for form in ("WORKGROUP\\carol", "carol@WORKGROUP", ".\\carol", "carol"):
        for _ in range(11):
            assert ask(auth, form, CAROL_PW).allowed, form
    assert ask(auth, "WORKGROUP\\carol", "wrong").reason == "bad_password", "twin: the password still counts"
    assert ask(auth, "WORKGROUP\\bob", CAROL_PW).reason == "user_mismatch", "twin: another user part"
    assert ask(auth, "carol\\WORKGROUP", CAROL_PW).reason == "user_mismatch"


def test_without_strip_domain_the_retries_are_refused_but_counted_once(store: StateStore) -> None:
    auth = make_auth(store, strip_domain=False)
    for form in ("WORKGROUP\\carol", "carol@WORKGROUP", "Carol"):
        assert [ask(auth, form, CAROL_PW).reason for _ in range(11)] == ["user_mismatch"] * 11, form
    assert ask(auth, "carol", CAROL_PW).allowed, "3 distinct mistakes, 33 tries: not locked out"
    for i in range(10):  # twin: ten distinct wrong user names do lock out
        ask(auth, f"WORKGROUP{i}\\carol", CAROL_PW)
    assert ask(auth, "carol", CAROL_PW).reason == "locked"


def test_a_repeated_wrong_password_counts_once_and_distinct_ones_each(store: StateStore) -> None:
    auth = make_auth(store)
    burst = [ask(auth, "carol", CAROL_PW + "x").reason for _ in range(11)]
    assert burst == ["bad_password"] * 11
    assert ask(auth, "carol", CAROL_PW).allowed, "cases2/04: the corrected login gets in"
    for i in range(10):  # twin: ten distinct guesses lock out
        assert ask(auth, "carol", f"guess-{i}").reason == "bad_password"
    assert ask(auth, "carol", CAROL_PW).reason == "locked"


def test_nfc_and_nfd_spellings_of_one_wrong_password_are_one_guess(store: StateStore) -> None:
    auth = make_auth(store, lock_after=2)
    assert ask(auth, "carol", NFC).reason == "bad_password"
    assert ask(auth, "carol", NFD).reason == "bad_password"
    assert ask(auth, "carol", CAROL_PW).allowed
    assert ask(auth, "carol", NFC + "1").reason == "bad_password"
    assert ask(auth, "carol", NFC + "2").reason == "bad_password"
    assert ask(auth, "carol", CAROL_PW).reason == "locked", "twin: two distinct guesses reach lock_after 2"


def test_count_repeats_true_counts_every_failure(store: StateStore) -> None:
    auth = make_auth(store, count_repeats=True)
    for _ in range(10):
        assert ask(auth, "carol", "wrong").reason == "bad_password"
    assert ask(auth, "carol", CAROL_PW).reason == "locked"


def test_the_same_wrong_code_always_counts(store: StateStore) -> None:
    """The TOTP guessing defence is unchanged: even one code repeated in one step counts each time."""
    auth = make_auth(store, lock_after=4)
    valid = {pyotp.TOTP(SECRET).at(T0 + timedelta(seconds=30 * s)) for s in (-1, 0, 1)}
    wrong = next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in valid)
    for _ in range(4):
        assert ask(auth, "carol", CAROL_PW + wrong, share=TOTP_SHARE).reason == "bad_otp"
    assert ask(auth, "carol", CAROL_PW + pyotp.TOTP(SECRET).at(T0), share=TOTP_SHARE).reason == "locked"


def test_settings_are_read_from_the_config(inst: Instance) -> None:
    cfg = load_config(inst.home)
    assert cfg.auth.strip_domain is True and cfg.throttle.count_repeats is False, "the defaults"
    text = inst.home.config_file.read_text() + "auth: {strip_domain: false}\nthrottle: {count_repeats: true}\n"
    inst.home.config_file.write_text(text)
    cfg = load_config(inst.home)
    assert cfg.auth.strip_domain is False and cfg.throttle.count_repeats is True


# --- 4. live, over TLS ---------------------------------------------------------------------------


def _status(inst: Instance, url: str, client_name: str, raw: bytes) -> int:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(inst.ca_file)
    c = inst.clients[client_name]
    s.cert = (str(c.crt), str(c.key))
    with s:
        return s.request("PROPFIND", url, headers={"Depth": "0", "Authorization": header(raw)}, timeout=30).status_code


def test_live_case_03_and_04(inst: Instance) -> None:
    home = str(inst.home.root)
    for name, pw in (("u1", NFC), ("u2", NFD), ("winuser", CAROL_PW)):
        out = CliRunner().invoke(main, ["--home", home, "user", "add", name, "--password-stdin"], input=pw + "\n")
        assert out.exit_code == 0, out.output
        inst.issue(name)
    with running(inst) as server:
        url = server.url + "files/"
        for acct in ("u1", "u2"):
            for raw in (NFC.encode(), NFD.encode(), NFC.encode("latin-1")):
                assert _status(inst, url, acct, acct.encode() + b":" + raw) == 207, (acct, raw.hex())
        for _ in range(10):
            _status(inst, url, "u1", b"u1:" + NFC.encode("latin-1"))
        assert _status(inst, url, "u1", b"u1:" + NFC.encode()) == 207
        assert _status(inst, url, "u1", b"u1:" + NFC.encode() + b"x") == 401, "twin: a wrong password"
        burst = [_status(inst, url, "winuser", b"WORKGROUP\\winuser:" + CAROL_PW.encode()) for _ in range(11)]
        assert burst == [207] * 11
        burst = [_status(inst, url, "winuser", b"winuser:" + CAROL_PW.encode() + b"x") for _ in range(11)]
        assert burst == [401] * 11
        assert _status(inst, url, "winuser", b"winuser:" + CAROL_PW.encode()) == 207, "the corrected login"
