"""What must hold across worker processes holds on SQLite (``state.backend: sqlite``).

Several processes share one instance home: worker processes of one ``davserver
serve`` (``server.workers``), two servers started on one home, and the CLI. Each
piece of shared state is one SQLite statement or one ``BEGIN IMMEDIATE``
transaction (never a deferred read-then-write: two of those either deadlock on
the upgrade, SQLITE_BUSY, or lose an update), and these tests race it from
PROCESSES (``spawn``: fresh interpreters, nothing shared but the file), released
together by a barrier, many rounds each:

* the store API, two processes per race: one TOTP step, one winner; N failures,
  counted N and a lockout exactly at ``throttle.lock_after``; an invitation spent
  once and burned once; one exclusive WebDAV lock per resource; a dead-property
  bound never exceeded; a grant opened by one seen by the other; a store file
  opened by many at once; a write that cannot get the lock in time fails closed; a
  write-in-flight mark refuses a LOCK until its process is gone;
* real TLS requests to two `davserver serve --workers 1` processes on one home:
  the same TOTP code accepted by exactly one; the same LOCK granted to exactly one;
  wrong passwords counted across both, a repeat once; no LOCK through either while one
  is still receiving an upload; a write that cannot get the file's lock in time is 503;
* per-process caches: a ``user passwd``/``disable``/``totp enable`` and a ``cert
  revoke`` run while both servers are warm are honoured by both at the next request.

Every refusal has its twin: the legitimate request still works.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from davserver.cli import main
from davserver.config import ThrottleConfig
from davserver.store.base import Grant, InvitationRecord, StoreUnavailable
from davserver.store.sqlite import SQLiteStore

from .conftest import PASSWORDS, Instance, running, session_for
from .racing import SPAWN, WAIT, run_spawned
from .test_server_auth import audit_records
from .test_totp_live import PW, code, configure, enrol

ROUNDS = 40


# --- the harness: processes that run one race per round, released together ------------------

def _racer(name: str, db: str, index: int, rounds: int, extra: Any, barrier: Any, results: Any) -> None:
    """A spawned process: opens its own store, then per round waits at the barrier and runs
    the race `name` (a function of this module), reporting (index, round, outcome)."""
    race = globals()[name]
    store = SQLiteStore(Path(db))
    try:
        barrier.wait(WAIT)  # everyone has opened the store
        for r in range(rounds):
            barrier.wait(WAIT)
            try:
                outcome = race(store, r, index, extra)
            except Exception as exc:  # noqa: BLE001 - reported, asserted by the parent
                outcome = f"error: {type(exc).__name__}: {exc}"
            results.put((index, r, outcome))
    finally:
        store.close()


def race(name: str, db: Path, *, rounds: int = ROUNDS, processes: int = 2, extra: Any = None) -> list[list[Any]]:
    """Run `name` in `processes` spawned processes for `rounds` rounds: outcomes[round][index]."""
    outcomes: list[list[Any]] = [[None] * processes for _ in range(rounds)]
    for index, r, outcome in run_spawned(_racer, [(name, str(db), i, rounds, extra) for i in range(processes)],
                                         rounds * processes):
        outcomes[r][index] = outcome
    return outcomes


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "state.db"
    SQLiteStore(path).close()
    return path


@contextmanager
def opened(db: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(db, busy_timeout=0.3)
    try:
        yield store
    finally:
        store.close()


# --- one code, one use -------------------------------------------------------------------------

def totp_step(store: SQLiteStore, r: int, index: int, extra: Any) -> bool:
    return store.use_otp_step(f"acct{r}", 1000)


def test_one_totp_step_is_accepted_by_exactly_one_process(db: Path) -> None:
    outcomes = race("totp_step", db)
    assert all(sorted(o) == [False, True] for o in outcomes), outcomes
    with opened(db) as store:  # twin: a later step is accepted, the same or an earlier one never
        assert store.use_otp_step("acct0", 1001) is True
        assert store.use_otp_step("acct0", 1001) is False
        assert store.use_otp_step("acct0", 1000) is False


# --- grants ------------------------------------------------------------------------------------

def grant_seen(store: SQLiteStore, r: int, index: int, extra: Any) -> str:
    """Process 0 opens a grant, process 1 waits for it; then 1 ends it and 0 sees it gone."""
    account, fp = f"acct{r}", "f" * 64
    deadline = time.monotonic() + 30
    if index == 0:
        now = time.time()
        store.open_grant(Grant(account, fp, "epoch", now, now, now + 60, now + 600))
        while store.get_grant(account, fp) is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        return "ended" if store.get_grant(account, fp) is None else "still open"
    while (grant := store.get_grant(account, fp)) is None and time.monotonic() < deadline:
        time.sleep(0.005)
    seen = grant is not None and grant.valid(time.time())
    store.end_grants(account)
    return "seen" if seen else "not seen"


def test_a_grant_opened_by_one_process_is_seen_and_ended_by_another(db: Path) -> None:
    outcomes = race("grant_seen", db, rounds=10)
    assert all(o == ["ended", "seen"] for o in outcomes), outcomes


# --- failure counters and sign-in lockouts ------------------------------------------------------

_THROTTLE = ThrottleConfig(lock_after=7, delay_after=1000, address_lock_after=1000, max_consecutive_failures=0)
_FP = "f" * 64


def failures(store: SQLiteStore, r: int, index: int, extra: Any) -> list[int]:
    """Each process counts `extra` failures on one raw key, then `extra` distinct wrong
    passwords of one account+certificate through Lockouts."""
    from davserver.auth.lockout import Lockouts

    lockouts = Lockouts(store.lockouts, _THROTTLE)
    counts = [store.lockouts.add_failure(f"raw{r}", time.time(), 900) for _ in range(extra)]
    for i in range(extra):
        lockouts.fail(f"acct{r}", _FP, "password", "192.0.2.1", time.time(), f"{index:02x}{i:030x}")
    return counts


def test_failures_from_two_processes_are_all_counted_and_lock_exactly_at_the_threshold(db: Path) -> None:
    from davserver.auth.lockout import Lockouts

    per_process = 3  # 6 failures: one below throttle.lock_after (7)
    outcomes = race("failures", db, rounds=20, extra=per_process)
    with opened(db) as store:
        lockouts = Lockouts(store.lockouts, _THROTTLE)
        now = time.time()
        for r, (a, b) in enumerate(outcomes):
            # add_failure handed out 1..6 once each: no update was lost, none counted twice
            assert sorted(a + b) == list(range(1, 2 * per_process + 1)), (r, a, b)
            # twin: one below the threshold, nobody is locked out
            assert not lockouts.is_locked_out(f"acct{r}", _FP, "192.0.2.1", now)
            # the 7th failure (from either) is the one that locks
            lockouts.fail(f"acct{r}", _FP, "password", "192.0.2.1", now, "e" * 32)
            assert lockouts.is_locked_out(f"acct{r}", _FP, "192.0.2.1", now), r


def threshold(store: SQLiteStore, r: int, index: int, extra: Any) -> bool:
    """Both processes fail at once, one each, starting from lock_after - 2 failures."""
    from davserver.auth.lockout import Lockouts

    Lockouts(store.lockouts, _THROTTLE).fail(f"thr{r}", _FP, "totp", "", time.time())
    return True


def test_the_lockout_engages_when_the_last_two_failures_race(db: Path) -> None:
    from davserver.auth.lockout import Lockouts

    rounds = 20
    with opened(db) as store:
        lockouts = Lockouts(store.lockouts, _THROTTLE)
        now = time.time()
        for r in range(rounds):
            for _ in range(_THROTTLE.lock_after - 2):
                lockouts.fail(f"thr{r}", _FP, "totp", "", now)
            assert not lockouts.is_locked_out(f"thr{r}", _FP, "", now)  # twin: short of the threshold
    race("threshold", db, rounds=rounds)
    with opened(db) as store:
        lockouts = Lockouts(store.lockouts, _THROTTLE)
        assert all(lockouts.is_locked_out(f"thr{r}", _FP, "", time.time()) for r in range(rounds))


# --- invitations ---------------------------------------------------------------------------------

def spend(store: SQLiteStore, r: int, index: int, extra: Any) -> bool:
    return store.spend_invitation(f"{r:064x}", time.time())


def burn(store: SQLiteStore, r: int, index: int, extra: Any) -> list[int]:
    return [store.fail_invitation(f"{r:064x}", time.time(), 5) for _ in range(4)]


def _invite(db: Path, rounds: int) -> None:
    now = time.time()
    with opened(db) as store:
        for r in range(rounds):
            assert store.add_invitation(InvitationRecord(f"{r:064x}", "alice", now, now + 600, now + 1200),
                                        now, 10_000)


def test_an_invitation_spent_by_two_processes_is_spent_once(db: Path) -> None:
    _invite(db, ROUNDS)
    outcomes = race("spend", db)
    assert all(sorted(o) == [False, True] for o in outcomes), outcomes
    with opened(db) as store:  # twin: the winner's unspend reopens it, and one spend wins again
        assert store.unspend_invitation(f"{0:064x}", time.time())
        assert store.spend_invitation(f"{0:064x}", time.time())
        assert not store.spend_invitation(f"{0:064x}", time.time())


def test_failed_sign_ins_on_one_invitation_from_two_processes_burn_it_exactly_once(db: Path) -> None:
    _invite(db, 20)
    outcomes = race("burn", db, rounds=20)
    for r, (a, b) in enumerate(outcomes):
        # 8 tries, burned at the 5th: failures 1..5 handed out once each, the rest find it closed
        assert sorted(n for n in a + b if n) == [1, 2, 3, 4, 5], (r, a, b)
    with opened(db) as store:
        assert {getattr(store.get_invitation(f"{r:064x}"), "state", None) for r in range(20)} == {"burned"}


# --- WebDAV locks and dead properties -----------------------------------------------------------

def dav_lock(store: SQLiteStore, r: int, index: int, scope: str) -> str:
    from wsgidav.dav_error import DAVError

    from davserver.store.davstate import SQLiteLockStorage

    storage = SQLiteLockStorage(store)
    # exclusive, odd rounds: process 0 locks the folder (depth infinity), process 1 a file in it
    folder = scope == "exclusive" and r % 2 == 1 and index == 0
    lock = {"type": "write", "scope": scope, "depth": "infinity" if folder else "0",
            "owner": f"<owner>{index}</owner>", "timeout": 60, "principal": f"user{index}"}
    try:
        return str(storage.create(f"/files/r{r}/" if folder else f"/files/r{r}/x.txt", lock)["token"])
    except DAVError as exc:
        return f"refused {exc.value}"


def test_the_same_exclusive_lock_from_two_processes_is_granted_once(db: Path) -> None:
    outcomes = race("dav_lock", db, extra="exclusive")
    for r, o in enumerate(outcomes):
        assert sorted(x.startswith("opaquelocktoken:") for x in o) == [False, True], (r, o)
        assert "refused 423" in o, (r, o)


def test_shared_locks_from_two_processes_are_both_granted(db: Path) -> None:
    outcomes = race("dav_lock", db, rounds=10, extra="shared")  # the twin: no conflict, no refusal
    assert all(x.startswith("opaquelocktoken:") for o in outcomes for x in o), outcomes


def dead_property(store: SQLiteStore, r: int, index: int, extra: Any) -> str:
    from davserver.store.davstate import PropertyBounds, SQLitePropertyManager, StateLimitExceeded

    props = SQLitePropertyManager(store, bounds=PropertyBounds(per_resource=3))
    try:  # each process sets two properties of its own: only one pair fits
        props.write_property(f"/files/r{r}", f"{{urn:x}}p{index}a", b"<a/>", environ={})
        props.write_property(f"/files/r{r}", f"{{urn:x}}p{index}b", b"<b/>", environ={})
    except StateLimitExceeded as exc:
        return str(exc.reason)
    return "ok"


def test_a_dead_property_bound_holds_against_two_processes(db: Path) -> None:
    outcomes = race("dead_property", db, rounds=20)
    with opened(db) as store:
        for r, o in enumerate(outcomes):
            (count,) = store.connection().execute(
                "SELECT COUNT(*) FROM dav_props WHERE url = ?", (f"/files/r{r}",)).fetchone()
            assert count == 3, (r, o, count)  # never over the bound, and no write lost under it
            assert sorted(o) == ["ok", "too_many_properties"], (r, o)


# --- opening one store file from many processes, and contention ----------------------------------

def opener(store: SQLiteStore, r: int, index: int, extra: Any) -> str:
    fresh = SQLiteStore(Path(extra) / f"r{r}" / "state.db")  # all processes create it at once
    try:
        return "ok" if fresh.use_otp_step("a", index + 1) in (True, False) else "?"
    finally:
        fresh.close()


def test_many_processes_create_and_open_one_store_file_at_once(db: Path, tmp_path: Path) -> None:
    outcomes = race("opener", db, rounds=20, processes=4, extra=str(tmp_path / "fresh"))
    assert all(x == "ok" for o in outcomes for x in o), outcomes
    with opened(tmp_path / "fresh" / "r0" / "state.db") as store:
        (mode,) = store.connection().execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"


def _hold_write_lock(db: str, held: Any, release: Any) -> None:
    """A spawned process that takes the file's write lock and keeps it until told."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    release.wait(WAIT)
    conn.execute("ROLLBACK")
    conn.close()


@contextmanager
def write_lock_held(db: Path) -> Iterator[None]:
    held, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold_write_lock, args=(str(db), held, release))
    holder.start()
    try:
        assert held.wait(WAIT)
        yield
    finally:
        release.set()
        holder.join(WAIT)


def test_a_write_that_cannot_get_the_lock_in_time_fails_closed(db: Path) -> None:
    from wsgidav.dav_error import DAVError

    from davserver.auth.lockout import Lockouts
    from davserver.store.davstate import SQLiteLockStorage

    store = SQLiteStore(db, busy_timeout=0.3)
    locks = SQLiteLockStorage(store)
    lock = {"type": "write", "scope": "exclusive", "depth": "0", "owner": "", "timeout": 60, "principal": "a"}
    try:
        now = time.time()
        store.open_grant(Grant("alice", _FP, "e", now, now, now + 60, now + 60))
        with write_lock_held(db):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):  # a code is not accepted when its use cannot be recorded
                store.use_otp_step("alice", 5)
            assert 0.25 < time.monotonic() - started < 5  # waited the busy timeout, not for ever
            with pytest.raises(StoreUnavailable):  # a failure that cannot be counted refuses the request
                Lockouts(store.lockouts, _THROTTLE).fail("alice", _FP, "password", "192.0.2.1", now, "a" * 32)
            with pytest.raises(StoreUnavailable):
                store.spend_invitation("0" * 64, now)
            with pytest.raises(StoreUnavailable):
                locks.create("/files/x.txt", dict(lock))
            assert store.get_grant("alice", _FP) is not None  # reads go on (WAL)
        # twin: once the lock is free the same writes succeed, and nothing half-done was left behind
        assert store.use_otp_step("alice", 5) is True
        assert str(locks.create("/files/x.txt", dict(lock))["token"]).startswith("opaque")
        with pytest.raises(DAVError):
            locks.create("/files/x.txt", dict(lock))
        with store.transaction() as conn:  # the connection is not stuck inside a transaction
            conn.execute("DELETE FROM otp_steps")
    finally:
        store.close()


# --- real TLS requests to two server processes on one instance home ------------------------------

@contextmanager
def two_servers(inst: Instance, workers: int = 1) -> Iterator[list[str]]:
    """Two server processes on one instance home; their base URLs. ``workers=1``: two
    ``davserver serve --workers 1``, each on its own port (so a test chooses which process
    a request reaches); ``workers=2``: one ``davserver serve --workers 2`` (the kernel picks
    the worker), its URL twice. stderr goes to a file, never a pipe left undrained."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [inst.home.root / f"serve-{i}.log" for i in range(2 if workers == 1 else 1)]
    try:
        for log in logs:
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve",
                     "--port", "0", "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=out))
        urls: list[str] = []
        for proc, log in zip(procs, logs, strict=True):
            deadline = time.monotonic() + WAIT
            while not (m := re.search(r"serving (https://127\.0\.0\.1:\d+/)", log.read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            urls.append(m.group(1))
        yield urls * (2 // len(urls))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def together(*calls: Callable[[], int]) -> list[int]:
    """Run the calls in threads released at once by a barrier; their results in order."""
    barrier = threading.Barrier(len(calls))
    out: list[int] = [0] * len(calls)

    def run(i: int) -> None:
        barrier.wait(WAIT)
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return out


def audited(inst: Instance, reason: str) -> bool:
    """Whether one of the newest audit records has `reason`, waiting briefly: a record is
    written just after its answer, and two processes' records may land in either order."""
    for _ in range(250):
        if reason in [r["reason"] for r in audit_records(inst)[-3:]]:
            return True
        time.sleep(0.02)
    return False


def getter(s: Any, url: str, auth: tuple[str, str]) -> Callable[[], int]:
    return lambda: int(s.get(url, auth=auth).status_code)


def _state_db(inst: Instance) -> Path:
    return inst.home.state_dir / "state.db"


def _cli(inst: Instance, *args: str, stdin: str | None = None) -> str:
    out = CliRunner().invoke(main, ["--home", str(inst.home.root), *args], input=stdin)
    assert out.exit_code == 0, out.output
    return out.output


#: Two `davserver serve --workers 1` (a port each), and one `davserver serve --workers 2`.
TWO = pytest.mark.parametrize("workers", [1, 2], ids=["two-serve", "two-workers"])
_NO_LOCKOUT = {"lock_after": 1000, "delay_after": 1000, "address_lock_after": 1000}


@TWO
def test_the_same_totp_code_sent_to_two_servers_is_accepted_by_exactly_one(inst: Instance, workers: int) -> None:
    configure(inst, throttle=_NO_LOCKOUT)
    totps = {account: enrol(inst, account) for account in ("alice", "bob")}
    seconds = {account: inst.issue(account, name=f"{account}-2") for account in totps}
    rounds = 0
    with two_servers(inst, workers) as urls, opened(_state_db(inst)) as store:
        for account, totp in totps.items():
            if time.time() % 30 > 22:  # three steps valid for the rounds below: c-1, c, c+1
                time.sleep(30 - time.time() % 30 + 0.5)
            now = time.time()
            a, b = session_for(inst, account), session_for(inst, client=seconds[account])
            for step in (-1, 0, 1):
                typed = PASSWORDS[account] + totp.at(now + 30 * step)
                store.end_grants(account)  # each round starts without a grant on either certificate
                statuses = together(getter(a, urls[0] + "secure/", (account, typed)),
                                    getter(b, urls[1] + "secure/", (account, typed)))
                assert sorted(statuses) == [200, 401], (account, step, statuses)
                rounds += 1
            # twin: the winner's grant serves its certificate on either server with the password alone
            winner = a if store.get_grant(account, inst.clients[account].issued.fingerprint) else b
            for url in urls:
                assert winner.get(url + "secure/", auth=(account, PASSWORDS[account])).status_code == 200
    assert rounds == 6


@TWO
def test_the_same_lock_sent_to_two_servers_is_granted_to_exactly_one(inst: Instance, workers: int) -> None:
    body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            '<D:locktype><D:write/></D:locktype><D:owner>{}</D:owner></D:lockinfo>')
    with two_servers(inst, workers) as urls:
        alice, bob = session_for(inst, "alice"), session_for(inst, "bob")
        for r in range(ROUNDS):
            assert alice.put(f"{urls[0]}files/lock{r}.txt", data=b"x").status_code == 201

            def lock(s: Any, url: str, r: int = r) -> Any:
                return s.request("LOCK", f"{url}files/lock{r}.txt", data=body.format(s.auth[0]),
                                 headers={"Timeout": "Second-60", "Content-Type": "application/xml"})

            answers: list[Any] = [None, None]

            def first(answers: list[Any] = answers) -> int:
                answers[0] = lock(alice, urls[0])
                return int(answers[0].status_code)

            def second(answers: list[Any] = answers) -> int:
                answers[1] = lock(bob, urls[1])
                return int(answers[1].status_code)

            statuses = together(first, second)
            assert sorted(statuses) == [200, 423], (r, statuses)
            # twin: once the winner unlocks, the other's LOCK is granted (on its own server)
            won = statuses.index(200)
            (winner, wurl), (loser, lurl) = ((alice, urls[0]), (bob, urls[1]))[::1 if won == 0 else -1]
            token = answers[won].headers["Lock-Token"]
            unlock = winner.request("UNLOCK", f"{wurl}files/lock{r}.txt", headers={"Lock-Token": token})
            assert unlock.status_code == 204
            assert lock(loser, lurl).status_code == 200


def _failures(store: SQLiteStore, key: str) -> int:
    row = store.connection().execute("SELECT count FROM failures WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


@TWO
def test_wrong_passwords_sent_to_two_servers_are_all_counted_and_lock_at_the_threshold(
    inst: Instance, workers: int
) -> None:
    configure(inst, throttle={"lock_after": 7, "delay_after": 1000, "address_lock_after": 1000})
    key = f"acct:alice:{inst.clients['alice'].issued.fingerprint}"
    with two_servers(inst, workers) as urls, opened(_state_db(inst)) as store:
        a, b = session_for(inst, "alice"), session_for(inst, "alice")

        def wrong(s: Any, url: str, tag: str) -> Callable[[], int]:
            return lambda: max(s.get(f"{url}files/", auth=("alice", f"wrong-{tag}-{i}")).status_code
                               for i in range(3))

        assert together(wrong(a, urls[0], "a"), wrong(b, urls[1], "b")) == [401, 401]
        assert _failures(store, f"{key}:password") == 6  # every one of them, none lost
        assert not store.lockouts.any_locked_out([key], time.time())
        assert a.get(urls[0] + "files/", auth=("alice", "wrong-7")).status_code == 401  # the 7th
        assert store.lockouts.any_locked_out([key], time.time())
        assert b.get(urls[1] + "files/").status_code == 401  # the right password: locked out
        assert audited(inst, "locked")
        _cli(inst, "user", "unlock", "alice")
        assert b.get(urls[1] + "files/").status_code == 200  # twin: unlocked, served again


def test_a_repeated_wrong_password_counts_once_across_servers(inst: Instance) -> None:
    key = f"acct:alice:{inst.clients['alice'].issued.fingerprint}:password"
    with two_servers(inst) as urls, opened(_state_db(inst)) as store:
        a, b = session_for(inst, "alice", password="same-wrong"), session_for(inst, "alice", password="same-wrong")

        def retries(s: Any, url: str) -> Callable[[], int]:  # a client retrying one sign-in
            return lambda: max(s.get(f"{url}files/").status_code for _ in range(4))

        assert together(retries(a, urls[0]), retries(b, urls[1])) == [401, 401]
        assert _failures(store, key) == 1
        # twin: a different wrong password is a new guess and counts; the right one clears them
        assert b.get(urls[1] + "files/", auth=("alice", "other-wrong")).status_code == 401
        assert _failures(store, key) == 2
        assert a.get(urls[0] + "files/", auth=("alice", PASSWORDS["alice"])).status_code == 200
        assert _failures(store, key) == 0
    # the key is the store's shared secret, in the state file (0600), no longer state/failure.key
    assert not (inst.home.state_dir / "failure.key").exists()
    assert _state_db(inst).stat().st_mode & 0o777 == 0o600


# --- per-process caches: the CLI's changes reach every warm server at its next request -----------

def test_cli_changes_reach_both_warm_servers_at_the_next_request(inst: Instance) -> None:
    with two_servers(inst) as urls:
        alice = [session_for(inst, "alice"), session_for(inst, "alice")]
        bob = session_for(inst, "bob")
        for s, url in zip(alice, urls, strict=True):  # warm: credentials cached, connection kept alive
            assert s.get(url + "files/").status_code == 200
            assert s.get(url + "files/").status_code == 200

        _cli(inst, "user", "passwd", "alice", "--password-stdin", stdin="a-new-password-9\n")
        for s, url in zip(alice, urls, strict=True):
            assert s.get(url + "files/").status_code == 401  # the old password, cached a moment ago
            assert s.get(url + "files/", auth=("alice", "a-new-password-9")).status_code == 200  # twin
            s.auth = ("alice", "a-new-password-9")

        _cli(inst, "user", "disable", "alice")
        assert [s.get(url + "files/").status_code for s, url in zip(alice, urls, strict=True)] == [401, 401]
        _cli(inst, "user", "enable", "alice")
        assert [s.get(url + "files/").status_code for s, url in zip(alice, urls, strict=True)] == [200, 200]

        _cli(inst, "cert", "revoke", inst.clients["alice"].issued.serial)
        assert [s.get(url + "files/").status_code for s, url in zip(alice, urls, strict=True)] == [401, 401]
        assert audited(inst, "revoked")
        assert [bob.get(url + "files/").status_code for url in urls] == [200, 200]  # twin: bob unaffected


def test_a_totp_reset_by_the_cli_ends_the_grant_on_both_warm_servers(inst: Instance) -> None:
    configure(inst, throttle=_NO_LOCKOUT)
    totp = enrol(inst)
    with two_servers(inst) as urls:
        s = session_for(inst, "alice")
        assert s.get(urls[0] + "secure/", auth=("alice", PW + code(totp))).status_code == 200
        # the grant opened through one server serves the password alone on the other
        assert [s.get(url + "secure/").status_code for url in urls] == [200, 200]
        fresh = enrol(inst)  # `user totp enable` again: a new secret
        assert [s.get(url + "secure/").status_code for url in urls] == [401, 401]
        assert audited(inst, "otp_required")
        assert s.get(urls[1] + "secure/", auth=("alice", PW + code(fresh, 1))).status_code == 200  # twin
        assert s.get(urls[0] + "secure/").status_code == 200


def test_requests_that_cannot_record_their_state_in_time_are_refused_503(inst: Instance) -> None:
    configure(inst, throttle=_NO_LOCKOUT, state={"busy_timeout_seconds": 0.3})
    totp = enrol(inst)
    lock_body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
                 '<D:locktype><D:write/></D:locktype></D:lockinfo>')
    with running(inst) as server:
        url = f"https://127.0.0.1:{server.port}/"
        s = session_for(inst, "alice")
        typed = PW + code(totp)
        assert s.put(url + "files/x.txt", data=b"x").status_code == 201
        with write_lock_held(_state_db(inst)):
            wrong = s.get(url + "files/", auth=("alice", "wrong-password"))  # its failure cannot be counted
            assert (wrong.status_code, wrong.headers.get("Retry-After")) == (503, "5")
            assert audited(inst, "store_unavailable")
            assert s.get(url + "secure/", auth=("alice", typed)).status_code == 503  # the code's use: not recorded
            assert s.request("LOCK", url + "files/x.txt", data=lock_body).status_code == 503
        # twins: with the file free again the same requests succeed, the code was not spent
        assert s.get(url + "secure/", auth=("alice", typed)).status_code == 200
        assert s.request("LOCK", url + "files/x.txt", data=lock_body).status_code == 200
        assert s.get(url + "files/", auth=("alice", "wrong-password")).status_code == 401


def test_a_lock_is_refused_on_any_server_while_another_is_still_receiving_an_upload(inst: Instance) -> None:
    """WsgiDAV refuses a LOCK while a PUT to the resource is still receiving its body
    (CWE-367); the mark of the write in flight is in the state file, so every process sees it."""
    body = ('<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            '<D:locktype><D:write/></D:locktype></D:lockinfo>')
    with two_servers(inst) as urls:
        alice, bob = session_for(inst, "alice"), session_for(inst, "bob")
        assert alice.put(urls[0] + "files/up.txt", data=b"old").status_code == 201
        sent = threading.Event()
        release = threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield b"x" * 1000
            sent.set()
            release.wait(WAIT)
            yield b"y" * 1000

        upload: list[int] = []
        uploader = threading.Thread(target=lambda: upload.append(
            alice.put(urls[0] + "files/up.txt", data=slow_body()).status_code))
        uploader.start()
        try:
            assert sent.wait(WAIT)
            time.sleep(0.5)  # the server has the first chunk and is waiting for the rest
            for url in urls:  # the other server as well as the one receiving it
                assert bob.request("LOCK", url + "files/up.txt", data=body).status_code == 423
            # twin: another resource locks meanwhile
            assert alice.put(urls[1] + "files/other.txt", data=b"o").status_code == 201
            assert bob.request("LOCK", urls[1] + "files/other.txt", data=body).status_code == 200
        finally:
            release.set()
            uploader.join(WAIT)
        assert upload == [204]
        # twin: once the upload is complete the LOCK is granted, by either server
        assert bob.request("LOCK", urls[1] + "files/up.txt", data=body).status_code == 200
        with opened(_state_db(inst)) as store:
            assert store.connection().execute("SELECT COUNT(*) FROM dav_writes").fetchone()[0] == 0


def _write_in_flight(db: str, url: str, marked: Any) -> None:
    """A spawned process that marks `url` as being written and never finishes (it is killed)."""
    from davserver.store.davstate import SQLiteLockStorage

    storage = SQLiteLockStorage(SQLiteStore(Path(db)))
    with storage.writing(url, lambda: None):
        marked.set()
        time.sleep(WAIT)


def test_a_mark_of_a_write_in_flight_refuses_a_lock_until_its_process_is_gone(db: Path) -> None:
    from wsgidav.dav_error import DAVError

    from davserver.store.davstate import SQLiteLockStorage

    marked = SPAWN.Event()
    writer = SPAWN.Process(target=_write_in_flight, args=(str(db), "/files/w/x.txt", marked))
    writer.start()
    lock = {"type": "write", "scope": "exclusive", "depth": "0", "owner": "", "timeout": 60, "principal": "a"}
    with opened(db) as store:
        locks = SQLiteLockStorage(store)
        try:
            assert marked.wait(WAIT)
            with pytest.raises(DAVError) as refused:
                locks.create("/files/w/x.txt", dict(lock))
            assert refused.value.value == 423
            with pytest.raises(DAVError):  # a depth-infinity lock on its folder too
                locks.create("/files/w/", {**lock, "depth": "infinity"})
            assert str(locks.create("/files/w/y.txt", dict(lock))["token"]).startswith("opaque")  # twin: a sibling
        finally:
            writer.kill()  # dies inside the write: its mark stays behind
            writer.join(WAIT)
        # a mark whose process is gone is dropped: the lock is granted
        assert str(locks.create("/files/w/x.txt", dict(lock))["token"]).startswith("opaque")
        assert store.connection().execute("SELECT COUNT(*) FROM dav_writes").fetchone()[0] == 0
