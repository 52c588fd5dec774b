"""Keys that every process and node serving the same users must share, over real TLS.

The CSRF tokens' HMAC key and the failure digests' key are the state store's shared
secrets (StateStore.shared_secret), not 32 random bytes of each process:

* ``davserver serve --workers 2`` (separate worker processes on one SQLite store): a
  listing's token works on new connections whichever worker accepts them; which worker
  served a connection is read from /proc (tests/test_supervisor.py's helpers), never
  from the answers, and both must have served;
* two nodes on one real redis-server, each with its OWN instance home (a copy: same
  configuration, accounts and CA, its own ``state/``, as on two machines): a token
  issued by node A is accepted by node B and the other way round; the same wrong password
  sent through both nodes counts once.

Every acceptance has its twin: a forged or absent token is refused (403, audited
``csrf``) by every worker and node; a different wrong password counts again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from davserver.access import Refusal
from davserver.auth.core import FAILURE_KEY_NAME
from davserver.config import Home
from davserver.csrf import HEADER
from davserver.guard import CSRF_KEY_NAME
from davserver.store.sqlite import SQLiteStore
from tests.conftest import Instance, server_process, session_for
from tests.test_clients import share_dir
from tests.workers import children, port_of, ready_workers, serve, wait_for, worker_of

TRIES = 60  # new connections to make until every worker has answered each kind of request


def token_of(page: str) -> str:
    """The listing's ``data-token`` (the one the page's script sends)."""
    import html
    import re

    m = re.search(r'data-token="([^"]+)"', page)
    assert m, page[:2000]
    return html.unescape(m[1])


def browser_headers(base: str, token: str | None) -> dict[str, str]:
    """What the listing's script sends with a write to the server at `base` (its URL): our
    origin, same-origin, the token (none when None)."""
    headers = {"Origin": base.rstrip("/"), "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    if token is not None:
        headers[HEADER] = token
    return headers


def forged(token: str) -> str:
    issued, _, mac = token.partition(".")
    return f"{issued}.{mac[::-1]}"


def audit_reasons(inst: Instance, path: str, count: int) -> list[str]:
    """The audit reasons of requests to `path`, once `count` of them are written (a record is
    written just after its answer, by whichever process served it)."""
    log = inst.home.root / "state" / "audit.log"
    deadline = time.monotonic() + 10
    while True:
        lines = log.read_text().split("\n")[:-1] if log.exists() else []
        found = [r["reason"] for r in map(json.loads, lines) if r.get("path") == path]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


# --- worker processes of one `davserver serve` ---------------------------------------------------

def _served(session: requests.Session, method: str, url: str, pids: list[int], port: int,
            headers: dict[str, str] | None = None) -> tuple[requests.Response, int]:
    """`method` on a new connection of `session`: the answer and the worker PID that holds it."""
    r = session.request(method, url, headers=headers or {}, timeout=30, stream=True)
    connection = r.raw._connection  # urllib3 2: open until the body is read
    assert connection is not None
    client_port = int(connection.sock.getsockname()[1])
    pid = worker_of(pids, port, client_port)
    r.content  # noqa: B018 - read: the connection goes back to the pool
    assert pid is not None, "no worker holds the connection"
    return r, pid


def test_a_token_issued_by_one_worker_is_accepted_by_the_other(inst: Instance, tmp_path: Path) -> None:
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        pids = children(proc.pid)
        assert len(pids) == 2, pids
        assert wait_for(lambda: ready_workers(log) == 2)
        port, files = port_of(url), url + "files/"
        with session_for(inst, "alice") as s:
            page, issuer = _served(s, "GET", files, pids, port)
        assert page.status_code == 200
        token = token_of(page.text)

        # new connections, each in its own session, until each worker has taken every kind
        kinds: dict[str, Callable[[], str | None]] = {
            "valid": lambda: token, "forged": lambda: forged(token), "absent": lambda: None}
        want = {"valid": 201, "forged": 403, "absent": 403}
        seen: dict[tuple[str, int], int] = {}
        names: dict[str, list[str]] = {kind: [] for kind in kinds}
        for i in range(TRIES):
            kind = list(kinds)[i % len(kinds)]
            name = f"w{i}-{kind}"
            with session_for(inst, "alice") as t:
                r, pid = _served(t, "MKCOL", files + name, pids, port, browser_headers(url, kinds[kind]()))
            assert r.status_code == want[kind], (kind, pid, r.status_code, r.text[:300])
            seen[(kind, pid)] = seen.get((kind, pid), 0) + 1
            names[kind].append(name)
            if len(seen) == len(kinds) * len(pids):
                break
        assert set(seen) == {(kind, pid) for kind in kinds for pid in pids}, seen
        assert seen[("valid", next(p for p in pids if p != issuer))] >= 1  # the other worker took the token
        for kind in ("forged", "absent"):  # the refusals' reason, on both workers
            for name in names[kind]:
                assert audit_reasons(inst, f"/files/{name}", 1) == [Refusal.CSRF], (kind, name)
                assert not (share_dir(inst, "files") / name).exists()
        for name in names["valid"]:
            assert (share_dir(inst, "files") / name).is_dir()
    # the key is in the store, not in a file of the home (state/failure.key is gone)
    assert not (inst.home.state_dir / "failure.key").exists()
    store = SQLiteStore(inst.home.state_dir / "state.db")
    try:
        assert len(store.shared_secret(CSRF_KEY_NAME)) == len(store.shared_secret(FAILURE_KEY_NAME)) == 32
    finally:
        store.close()


# --- two nodes on one redis-server ---------------------------------------------------------------

Nodes = tuple[list[Instance], list[str]]


@pytest.fixture
def nodes(inst: Instance, redis_url: str, tmp_path: Path) -> Iterator[Nodes]:
    """Two `davserver serve` nodes on one Redis, each with its own home; ([A, B] homes, [A, B] URLs)."""
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["state"] = {"backend": "redis", "url": redis_url, "prefix": f"test-{uuid.uuid4().hex}:"}
    raw["throttle"] = {"lock_after": 50, "address_lock_after": 100, "delay_after": 100}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    root = tmp_path / "node-b"
    shutil.copytree(inst.home.root, root, ignore=shutil.ignore_patterns("state"))
    other = dataclasses.replace(inst, home=Home(root))
    with server_process(inst) as (_, url_a), server_process(other) as (_, url_b):
        yield [inst, other], [url_a, url_b]

def test_a_token_issued_by_one_node_is_accepted_by_the_other(nodes: Nodes) -> None:
    homes, (a, b) = nodes
    inst = homes[0]
    home_of = {a: homes[0], b: homes[1]}
    for issuer, other, tag in ((a, b, "ab"), (b, a, "ba")):
        with session_for(inst, "alice") as s:
            page = s.get(issuer + "files/", timeout=30)
            assert page.status_code == 200
            token = token_of(page.text)
            for node in (issuer, other):  # twins: forged and absent refused by both nodes
                for kind, sent in (("forged", forged(token)), ("absent", None)):
                    name = f"{tag}-{kind}-{port_of(node)}"
                    r = s.request("MKCOL", node + "files/" + name, headers=browser_headers(node, sent),
                                  timeout=30)
                    assert r.status_code == 403, (tag, kind, node, r.status_code)
                    assert audit_reasons(home_of[node], f"/files/{name}", 1) == [Refusal.CSRF]
            with session_for(inst, "alice") as t:  # a new connection, to the node that did not issue it
                r = t.request("MKCOL", other + "files/" + tag, headers=browser_headers(other, token),
                              timeout=30)
            assert r.status_code == 201, (tag, r.status_code, r.text[:300])
            assert (share_dir(home_of[other], "files") / tag).is_dir()


def test_a_repeated_wrong_password_through_both_nodes_counts_once(nodes: Nodes, redis_url: str) -> None:
    (inst, _), (a, b) = nodes
    prefix = yaml.safe_load(inst.home.config_file.read_text())["state"]["prefix"]
    key = f"{prefix}fail:acct:alice:{inst.clients['alice'].issued.fingerprint}:password"
    client = redis.Redis.from_url(redis_url)

    def count() -> int:
        return int(client.hget(key, "n") or 0)

    def sign_in(node: str, password: str) -> int:
        with session_for(inst, "alice", password=password) as s:
            return s.get(node + "files/", timeout=30).status_code

    try:
        for node in (a, b, a, b, b, a):  # one client retrying one wrong password, on either node
            assert sign_in(node, "the-same-wrong-one") == 401
        assert count() == 1
        assert sign_in(b, "another-wrong-one") == 401  # twin: a new guess counts, on either node
        assert count() == 2
        assert sign_in(a, "yet-another-wrong-one") == 401
        assert count() == 3
        assert sign_in(a, inst.clients["alice"].password) == 200  # and the right password clears them
        assert count() == 0
    finally:
        client.close()
