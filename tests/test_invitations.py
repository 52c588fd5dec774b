"""Enrolment invitations on every state-store backend: single use under a race, expiry,
burning after failures, withdrawal, the bound, and a token that is never stored."""

from __future__ import annotations

import base64
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davserver.cli import main
from davserver.config import EnrolmentConfig, Home, load_config
from davserver.invitations import (
    InvitationGone,
    Invitations,
    TooManyInvitations,
    UnknownInvitation,
    default_base_url,
    token_digest,
)
from davserver.store import SQLiteStore, StateStore
from davserver.store.redis import RedisStore

T0 = 1_800_000_000.0
CONFIG = EnrolmentConfig(enabled=True, url="https://dav.example.org:8444")


@pytest.fixture(params=["sqlite", "redis"])
def open_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """Opens stores on one shared backend, as separate server nodes would."""
    opened: list[StateStore] = []
    prefix = f"test-{uuid.uuid4().hex}:"

    def node() -> StateStore:
        s: StateStore
        if request.param == "redis":
            s = RedisStore(request.getfixturevalue("redis_url"), prefix=prefix)
        else:
            s = SQLiteStore(tmp_path / "state.db")
        opened.append(s)
        return s

    yield node
    for s in opened:
        s.close()


@pytest.fixture
def store(open_node: Callable[[], StateStore]) -> StateStore:
    return open_node()


def invitations(store: StateStore, **changes: object) -> Invitations:
    cfg = EnrolmentConfig(**{**CONFIG.__dict__, **changes})
    return Invitations(store, cfg)


def test_an_invitation_is_spent_once(store: StateStore) -> None:
    inv = invitations(store)
    token, created = inv.create("alice", now=T0)
    assert created.account == "alice" and created.failures == 0
    assert (created.expires - created.created).total_seconds() == CONFIG.invite_seconds == 72 * 3600
    assert inv.peek(token, now=T0 + 1) == created
    assert inv.spend(token, now=T0 + 2) == created
    for call in (inv.spend, inv.peek, inv.record_failure):
        with pytest.raises(InvitationGone) as gone:
            call(token, now=T0 + 3)
        assert gone.value.reason == "spent"
    assert inv.open(now=T0 + 3) == []


def _race_spends(nodes: list[Invitations], token: str) -> list[str]:
    """Two threads per node spend `token` at once; returns "won" or the reason of each refusal."""
    barrier = threading.Barrier(len(nodes) * 2)
    outcomes: list[str] = []

    def race(inv: Invitations) -> None:
        barrier.wait()
        try:
            inv.spend(token, now=T0 + 1)
            outcomes.append("won")
        except InvitationGone as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=race, args=(inv,)) for inv in nodes * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_racing_spends_on_two_nodes_one_wins(open_node: Callable[[], StateStore]) -> None:
    for _ in range(10):
        nodes = [invitations(open_node()), invitations(open_node())]
        token, _ = nodes[0].create("alice", now=T0)
        assert sorted(_race_spends(nodes, token)) == ["spent", "spent", "spent", "won"]


def test_an_invitation_expires(store: StateStore) -> None:
    inv = invitations(store)
    token, _ = inv.create("alice", valid_for=60, now=T0)
    assert inv.peek(token, now=T0 + 59.9).account == "alice", "twin: still open just before"
    for call in (inv.peek, inv.spend, inv.record_failure):
        with pytest.raises(InvitationGone) as gone:
            call(token, now=T0 + 60)
        assert gone.value.reason == "expired"
    assert inv.open(now=T0 + 60) == []
    # the default lifetime is enrolment.invite_seconds
    token2, made = invitations(store, invite_seconds=120.0).create("bob", now=T0)
    assert (made.expires - made.created).total_seconds() == 120
    with pytest.raises(ValueError, match="valid for"):
        inv.create("bob", valid_for=0, now=T0)


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_burned_at_invite_max_failures_and_not_one_before(store: StateStore, limit: int) -> None:
    inv = invitations(store, invite_max_failures=limit)
    twin, _ = inv.create("alice", now=T0)
    for n in range(1, limit):
        assert inv.record_failure(twin, now=T0 + n) == n
    assert inv.peek(twin, now=T0 + 10).failures == limit - 1
    assert inv.spend(twin, now=T0 + 10).account == "alice", f"{limit - 1} failures leave it open"

    token, _ = inv.create("alice", now=T0)
    for n in range(1, limit + 1):
        assert inv.record_failure(token, now=T0 + n) == n
    for call in (inv.peek, inv.spend, inv.record_failure):
        with pytest.raises(InvitationGone) as gone:
            call(token, now=T0 + 20)
        assert gone.value.reason == "burned"


def test_the_default_burns_at_five(store: StateStore) -> None:
    assert CONFIG.invite_max_failures == 5
    inv = invitations(store)
    token, _ = inv.create("alice", now=T0)
    assert [inv.record_failure(token, now=T0) for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(InvitationGone):
        inv.spend(token, now=T0)


def test_racing_failures_burn_exactly_at_the_limit(open_node: Callable[[], StateStore]) -> None:
    nodes = [invitations(open_node()), invitations(open_node())]
    token, _ = nodes[0].create("alice", now=T0)
    counts: list[int] = []
    gone: list[str] = []
    barrier = threading.Barrier(8)

    def fail(inv: Invitations) -> None:
        barrier.wait()
        try:
            counts.append(inv.record_failure(token, now=T0 + 1))
        except InvitationGone as exc:
            gone.append(exc.reason)

    threads = [threading.Thread(target=fail, args=(nodes[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts) == [1, 2, 3, 4, 5] and gone == ["burned"] * 3


def test_revoke_withdraws_the_accounts_open_invitations_only(store: StateStore) -> None:
    inv = invitations(store)
    a1, _ = inv.create("alice", now=T0)
    a2, _ = inv.create("alice", now=T0 + 1)
    spent, _ = inv.create("alice", now=T0 + 2)
    inv.spend(spent, now=T0 + 3)
    b, _ = inv.create("bob", now=T0)
    assert inv.revoke("alice", now=T0 + 4) == 2
    for token in (a1, a2):
        with pytest.raises(InvitationGone) as gone:
            inv.spend(token, now=T0 + 5)
        assert gone.value.reason == "revoked"
    with pytest.raises(InvitationGone) as still_spent:
        inv.peek(spent, now=T0 + 5)
    assert still_spent.value.reason == "spent"
    assert [i.account for i in inv.open(now=T0 + 5)] == ["bob"]
    assert inv.revoke("alice", now=T0 + 6) == 0
    assert inv.revoke("Alice", now=T0 + 6) == 0 and inv.peek(b, now=T0 + 6).account == "bob"


def test_the_bound_on_open_invitations(store: StateStore) -> None:
    inv = invitations(store, max_open_invitations=3)
    tokens = [inv.create("alice", now=T0 + i)[0] for i in range(3)]
    with pytest.raises(TooManyInvitations, match="enrolment.max_open_invitations"):
        inv.create("bob", now=T0 + 10)
    assert [i.account for i in inv.open(now=T0 + 10)] == ["alice"] * 3, "nothing stored for bob"
    # twin: a spent invitation makes room (its record goes first) ...
    inv.spend(tokens[0], now=T0 + 11)
    fresh, _ = inv.create("bob", now=T0 + 12)
    assert inv.peek(fresh, now=T0 + 12).account == "bob"
    with pytest.raises(UnknownInvitation):
        inv.peek(tokens[0], now=T0 + 12)
    # ... and so does an expired one
    short, _ = invitations(store, max_open_invitations=4).create("carol", valid_for=60, now=T0 + 13)
    with pytest.raises(TooManyInvitations):
        invitations(store, max_open_invitations=4).create("dave", now=T0 + 14)
    invitations(store, max_open_invitations=4).create("dave", now=T0 + 13 + 60)
    assert sorted(i.account for i in inv.open(now=T0 + 80)) == ["alice", "alice", "bob", "dave"]


def test_closed_invitations_answer_gone_for_a_lifetime_then_unknown(store: StateStore) -> None:
    inv = invitations(store)
    token, _ = inv.create("alice", valid_for=100, now=T0)
    inv.spend(token, now=T0 + 1)
    other, _ = inv.create("bob", now=T0 + 150)  # pruning runs on create
    with pytest.raises(InvitationGone):
        inv.peek(token, now=T0 + 150)
    inv.create("bob", now=T0 + 200)  # keep_until = expires + lifetime = T0 + 200: pruned now
    with pytest.raises(UnknownInvitation):
        inv.peek(token, now=T0 + 200)
    assert inv.peek(other, now=T0 + 200).account == "bob"


@pytest.mark.parametrize("token", [
    "", "x", "A" * 21, "A" * 129, "../../etc/passwd", "tok en" * 5, "Ä" * 30, "a" * 43,
])
def test_unknown_and_malformed_tokens(store: StateStore, token: str) -> None:
    inv = invitations(store)
    inv.create("alice", now=T0)
    for call in (inv.peek, inv.spend, inv.record_failure):
        with pytest.raises(UnknownInvitation):
            call(token, now=T0)


def test_tokens_are_random_and_at_least_128_bits(store: StateStore) -> None:
    inv = invitations(store)
    tokens = {inv.create("alice", now=T0)[0] for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 16
        assert inv.url(token) == f"https://dav.example.org:8444/enrol/{token}"


def _redis_dump(store: RedisStore) -> bytes:
    out = b""
    client: Any = store.client  # redis-py's sync answers are typed as "sync or async"
    for key in client.scan_iter(match=store.prefix + "*"):
        out += key
        kind = client.type(key)
        if kind == b"hash":
            for k, v in client.hgetall(key).items():
                out += k + v
        elif kind == b"zset":
            for member, score in client.zrange(key, 0, -1, withscores=True):
                out += member + repr(score).encode()
        else:
            out += repr(client.dump(key)).encode()
    return out


def test_only_the_hash_of_a_token_is_stored(store: StateStore, tmp_path: Path) -> None:
    inv = invitations(store)
    tokens = [inv.create("alice", now=T0)[0] for _ in range(3)]
    inv.record_failure(tokens[1], now=T0)
    inv.spend(tokens[2], now=T0)
    if isinstance(store, RedisStore):
        stored = _redis_dump(store)
    else:
        db = sqlite3.connect(tmp_path / "state.db")
        rows = db.execute("SELECT * FROM invitations").fetchall()
        db.close()
        stored = repr(rows).encode()
        for path in tmp_path.glob("state.db*"):  # the file and its WAL, byte for byte
            stored += path.read_bytes()
    for token in tokens:
        assert token.encode() not in stored
        assert token_digest(token).encode() in stored, "the check can see what is stored"


def test_default_base_url_is_the_server_certificates_name(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(tmp_path), "init", "--hostname", "dav.example.org"])
    assert result.exit_code == 0, result.output
    config = load_config(Home(tmp_path))
    assert config.enrolment.url is None
    assert default_base_url(config) == "https://dav.example.org:8444"
    # twin: a certificate with only loopback names gives localhost; enrolment.url wins over both
    other = tmp_path / "other"
    assert runner.invoke(main, ["--home", str(other), "init"]).exit_code == 0
    assert default_base_url(load_config(Home(other))) == "https://localhost:8444"
    cfg_file = other / "config" / "davserver.yaml"
    cfg_file.write_text(cfg_file.read_text().replace(
        "  port: 8444\n", "  port: 9444\n  url: https://files.example.net/\n", 1))
    config = load_config(Home(other))
    assert config.enrolment.port == 9444 and default_base_url(config) == "https://files.example.net"


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(["alice", "bob"]), st.sampled_from([30.0, 100.0])),
        st.tuples(st.just("fail"), st.integers(0, 5)),
        st.tuples(st.just("fail"), st.integers(0, 2)),  # often the same few: they burn
        st.tuples(st.just("spend"), st.integers(0, 5)),
        st.tuples(st.just("revoke"), st.sampled_from(["alice", "bob"])),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 29.0, 70.0])),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_invitations_follow_the_model(store: StateStore, ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of creates, failures, spends, withdrawals and waits: each invitation is
    open until the first of spent / expired / burned (3 failures) / revoked, is spent at
    most once, and is unknown one lifetime after it expired; the store agrees with a plain model at every step."""
    inv = invitations(store, invite_max_failures=3, max_open_invitations=1000)
    now = T0
    run = uuid.uuid4().hex[:8]  # the store outlives one example: this example's accounts are its own
    tokens: list[str] = []
    model: list[dict[str, Any]] = []  # account, expires, failures, state

    def model_state(i: int) -> str:
        m = model[i]
        if now >= float(m["keep_until"]):
            return "unknown"
        if m["state"] == "open" and now >= float(m["expires"]):
            return "expired"
        return str(m["state"])

    for op in ops:
        if op[0] == "create":
            token, _ = inv.create(f"{op[1]}-{run}", valid_for=float(op[2]), now=now)
            tokens.append(token)
            model.append({"account": f"{op[1]}-{run}", "expires": now + float(op[2]), "failures": 0, "state": "open",
                          "keep_until": now + 2 * float(op[2])})
        elif op[0] == "wait":
            now += float(op[1])
        elif op[0] == "revoke":
            name = f"{op[1]}-{run}"
            expected = [i for i in range(len(model)) if model[i]["account"] == name and model_state(i) == "open"]
            assert inv.revoke(name, now=now) == len(expected)
            for i in expected:
                model[i]["state"] = "revoked"
        elif tokens:
            i = int(op[1]) % len(tokens)
            state = model_state(i)
            if op[0] == "spend":
                if state == "open":
                    assert inv.spend(tokens[i], now=now).account == model[i]["account"]
                    model[i]["state"] = "spent"
                elif state == "unknown":
                    with pytest.raises(UnknownInvitation):
                        inv.spend(tokens[i], now=now)
                else:
                    with pytest.raises(InvitationGone) as gone:
                        inv.spend(tokens[i], now=now)
                    assert gone.value.reason == state
            elif state == "open":
                n = int(model[i]["failures"]) + 1
                assert inv.record_failure(tokens[i], now=now) == n
                model[i]["failures"] = n
                model[i]["state"] = "burned" if n >= 3 else "open"
            elif state == "unknown":
                with pytest.raises(UnknownInvitation):
                    inv.record_failure(tokens[i], now=now)
            else:
                with pytest.raises(InvitationGone) as gone:
                    inv.record_failure(tokens[i], now=now)
                assert gone.value.reason == state
        open_now = sorted((str(m["account"]), float(m["expires"])) for i, m in enumerate(model)
                          if model_state(i) == "open")
        listed = [(i.account, i.expires.timestamp()) for i in inv.open(now=now) if i.account.endswith(run)]
        assert sorted(listed) == open_now
