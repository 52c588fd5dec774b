"""Metrics with worker processes (metrics.py, prometheus_client's multiprocess mode).

Real worker processes (``DavServer(role="worker")`` in fresh interpreters, each
with ``PROMETHEUS_MULTIPROC_DIR`` in its environment from the start, as the
supervisor starts them) serve real TLS requests; the supervisor's listener
(``metrics.supervisor_listener``) runs in the test process and is scraped over HTTP,
parsed with prometheus_client's own parser. Each worker here listens on a socket of
its own, so the test knows exactly which worker served what; the supervisor's shared
socket is covered by tests/test_supervisor.py and the end-to-end test at the bottom.

Proves: requests served by two workers appear summed in one scrape, exactly; a worker
killed with -9 keeps its counted requests (counters never go backwards) while its open
connections leave the gauge once it is reaped (``worker_exited``); /readyz and
/healthz say not ready / not serving when no worker is alive and ready when one is;
for any workload over any number of workers dying in any order, one scrape equals what
a single process fed the same requests shows (Hypothesis)."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from davserver import metrics as metrics_module
from davserver.config import load_config
from davserver.metrics import HANDSHAKE_SYNC_SECONDS, Metrics, SupervisorListener, supervisor_listener, worker_exited

from .conftest import Instance, client_context, free_port, session_for

METRICS_ON = "\nmetrics: {enabled: true, port: 0}\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: A worker as the supervisor runs it (davserver/worker.py), reduced to what the
#: metrics see: DavServer(role="worker") on an inherited listening socket, in a fresh
#: interpreter whose environment holds PROMETHEUS_MULTIPROC_DIR from the start. It
#: says "ready" and serves until its stdin closes, then stops as on SIGTERM and exits.
#: argv: home, listening fd, seconds between handshake copies (0: the default).
_WORKER = r"""
import socket, sys
from pathlib import Path
from davserver import metrics
if float(sys.argv[3]):
    metrics.HANDSHAKE_SYNC_SECONDS = float(sys.argv[3])
from davserver.config import Home, load_config
from davserver.server import DavServer
srv = DavServer(load_config(Home(Path(sys.argv[1]))), bind="127.0.0.1",
                listen_socket=socket.socket(fileno=int(sys.argv[2])), role="worker")
srv.start()
assert srv.metrics is not None and srv.metrics.multiprocess and srv.metrics_listener is None
print("ready", flush=True)
sys.stdin.read()
srv.stop()
"""


class Worker:
    """One worker process serving on `sock` and writing its metrics into `directory`."""

    def __init__(self, inst: Instance, sock: socket.socket, directory: Path, sync_seconds: float = 0.0) -> None:
        self.port = int(sock.getsockname()[1])
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(inst.home.root), str(sock.fileno()), str(sync_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=(sock.fileno(),), text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != "ready\n":
            self.kill()
            raise AssertionError(f"the worker did not start: {line!r}")
        self.pid = self.proc.pid
        self.url = f"https://127.0.0.1:{self.port}/"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """As SIGTERM would: drain, stop, exit (its atexit hooks run)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


@contextmanager
def _supervised(
    inst: Instance, tmp_path: Path,
) -> Iterator[tuple[list[Worker], SupervisorListener, Callable[..., Worker]]]:
    """(the workers started so far, the supervisor's listener, start(sock=None, sync_seconds=0)):
    workers are counted alive while their process runs; every one is stopped at the end."""
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + METRICS_ON)
    directory = tmp_path / "multiproc"
    directory.mkdir()
    workers: list[Worker] = []
    sockets: list[socket.socket] = []

    def start(sock: socket.socket | None = None, sync_seconds: float = 0.0) -> Worker:
        if sock is None:
            sock = _listening()
            sockets.append(sock)
        worker = Worker(inst, sock, directory, sync_seconds)
        workers.append(worker)
        return worker

    listener = supervisor_listener(load_config(inst.home), lambda: sum(w.alive for w in workers),
                                   directory=directory)
    listener.start()
    try:
        yield workers, listener, start
    finally:
        for w in workers:
            if w.alive:
                w.kill()
        listener.stop()
        for sock in sockets:
            sock.close()


def _get(listener: SupervisorListener, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listener.port}{path}", timeout=10) as r:  # noqa: S310 - loopback
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _parse(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(listener: SupervisorListener) -> Samples:
    status, text = _get(listener, "/metrics")
    assert status == 200
    return _parse(text)


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _gets(samples: Samples) -> float:
    return _value(samples, "davserver_requests_total", method="GET", status="200")


def _until(listener: SupervisorListener, done: Callable[[Samples], bool], seconds: float = 10.0) -> Samples:
    deadline = time.monotonic() + seconds
    while not done(samples := _scrape(listener)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def _get_files(url: str, inst: Instance, n: int, *, password: str | None = None) -> None:
    """`n` GETs of /files/ on one kept-alive connection (one TLS handshake), then close it."""
    with session_for(inst, "alice", password=password) as s:
        for _ in range(n):
            assert s.get(f"{url}files/").status_code == (200 if password is None else 401)


def _hold(inst: Instance, port: int, n: int) -> list[ssl.SSLSocket]:
    """`n` open connections that each served one OPTIONS (kept alive)."""
    held = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        s = client_context(inst, inst.clients["bob"]).wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        held.append(s)
    return held


def _own(directory: Path, pid: int) -> Samples:
    """What worker `pid`'s own counter and histogram files hold (prometheus_client's merge)."""
    files = [str(directory / f"{typ}_{pid}.db") for typ in ("counter", "histogram")]
    out = {}
    for metric in MultiProcessCollector.merge([f for f in files if os.path.exists(f)]):
        for s in metric.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --- real worker processes ---------------------------------------------------------


def test_requests_on_two_workers_are_summed_in_one_scrape(inst: Instance, tmp_path: Path) -> None:
    with _supervised(inst, tmp_path) as (workers, listener, start):
        a, b = start(), start()
        _get_files(a.url, inst, 3)
        _get_files(b.url, inst, 5)
        _get_files(b.url, inst, 1, password="wrong")
        held = _hold(inst, a.port, 2) + _hold(inst, b.port, 1)
        samples = _until(listener, lambda s: _gets(s) >= 8 and _value(s, "davserver_handshakes_total",
                                                                         outcome="completed") >= 6)
        time.sleep(HANDSHAKE_SYNC_SECONDS + 0.3)
        again = _scrape(listener)
        for s in held:
            s.close()
        directory = listener.metrics.directory
        mine_a, mine_b = _own(directory, a.pid), _own(directory, b.pid)
    for seen in (samples, again):  # exactly, and no more a moment later
        assert _gets(seen) == 8
        assert _value(seen, "davserver_auth_refusals_total", reason="bad_password") == 1
        assert _value(seen, "davserver_requests_total", method="OPTIONS", status="200") == 3
        assert _value(seen, "davserver_request_duration_seconds_count") == 12
        assert _value(seen, "davserver_connections_open") == 3  # 2 on one worker + 1 on the other
        assert _value(seen, "davserver_handshakes_total", outcome="completed") == 6  # 3 sessions + 3 held
        assert _value(seen, "davserver_workers_alive") == 2
        assert _value(seen, "davserver_tls_handshake_failures_total", reason="no_cert") == 0  # exported at 0
    # Each worker counted its own part: the scrape is their sum, not one worker's figure.
    assert _gets(mine_a) == 3 and _gets(mine_b) == 5
    assert not [key for key in again if "pid" in dict(key[1])], "a gauge per process leaked into the scrape"
    # Certificate expiry is read once, by the supervisor: one sample per kind, no pid.
    expiry = {dict(labels)["kind"]: v for (n, labels), v in again.items()
              if n == "davserver_certificate_expiry_timestamp_seconds"}
    server_cert = x509.load_pem_x509_certificate(inst.home.certs_dir.joinpath("server.crt").read_bytes())
    assert set(expiry) == {"ca", "server", "client"}
    assert expiry["server"] == server_cert.not_valid_after_utc.timestamp()
    assert expiry["client"] == min(c.issued.not_after for c in inst.clients.values()).timestamp()


def test_a_worker_killed_with_9_keeps_its_counts_and_its_gauges_go(inst: Instance, tmp_path: Path) -> None:
    seen: list[float] = []

    def scrape(listener: SupervisorListener) -> Samples:
        samples = _scrape(listener)
        seen.append(_gets(samples))
        return samples

    with _supervised(inst, tmp_path) as (workers, listener, start):
        directory = listener.metrics.directory
        sock_a = _listening()
        a, b = start(sock_a), start()
        _get_files(a.url, inst, 4)
        _get_files(b.url, inst, 2)
        held = _hold(inst, a.port, 2) + _hold(inst, b.port, 1)
        before = _until(listener, lambda s: _gets(s) >= 6 and _value(s, "davserver_connections_open") >= 3
                        and _value(s, "davserver_handshakes_total", outcome="completed") >= 5)
        seen.append(_gets(before))
        assert _value(before, "davserver_connections_open") == 3

        a.kill()
        dead = scrape(listener)  # killed, not yet reaped: its files are as it left them
        assert _gets(dead) == 6 and _value(dead, "davserver_workers_alive") == 1
        worker_exited(a.pid)  # what the supervisor does after reaping it
        reaped = scrape(listener)
        assert _gets(reaped) == 6  # its 4 requests stay counted
        assert _value(reaped, "davserver_request_duration_seconds_count") == 9
        assert _value(reaped, "davserver_handshakes_total", outcome="completed") == 5  # 2 sessions + 3 held
        assert _value(reaped, "davserver_connections_open") == 1  # its 2 connections left the gauge
        # Its counts moved into the archive; its files are gone: the directory does not grow per restart.
        assert not list(directory.glob(f"*_{a.pid}.db"))
        assert (directory / "counter_archive.db").exists() and (directory / "histogram_archive.db").exists()

        # A replacement on the same socket counts on from there; stopped gracefully, then reaped.
        c = start(sock_a)
        _get_files(c.url, inst, 3)
        scrape(_wait_for(listener, 9))
        c.stop()
        worker_exited(c.pid)
        assert _gets(scrape(listener)) == 9
        b.kill()
        worker_exited(b.pid)
        last = scrape(listener)
        for s in held:
            s.close()
        sock_a.close()
        status, text = _get(listener, "/readyz")
    assert _gets(last) == 9 and _value(last, "davserver_request_duration_seconds_count") == 12  # + 3 OPTIONS
    assert _value(last, "davserver_connections_open") == 0 and _value(last, "davserver_workers_alive") == 0
    assert seen == sorted(seen), f"a counter went backwards: {seen}"
    assert sorted(p.name for p in directory.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
    assert (status, text) == (503, "not ready: no worker alive\n")


def _wait_for(listener: SupervisorListener, gets: int) -> SupervisorListener:
    _until(listener, lambda s: _gets(s) >= gets)
    return listener


def test_a_worker_stopped_at_once_flushes_its_handshake_count(inst: Instance, tmp_path: Path) -> None:
    """The handshake totals are copied every HANDSHAKE_SYNC_SECONDS; a worker that stops
    gracefully copies them once more at exit, so none is lost (here the period is an
    hour: only that last copy can bring them); a scrape before then shows none (the
    twin: the figures really are copied, not read live)."""
    with _supervised(inst, tmp_path) as (workers, listener, start):
        w = start(sync_seconds=3600)
        _get_files(w.url, inst, 1)
        _get_files(w.url, inst, 1)
        live = _until(listener, lambda s: _gets(s) >= 2)
        w.stop()
        worker_exited(w.pid)
        after = _scrape(listener)
    assert _value(live, "davserver_handshakes_total", outcome="completed") == 0
    assert _value(after, "davserver_handshakes_total", outcome="completed") == 2
    assert _value(after, "davserver_handshakes_total", outcome="accepted") == 2
    assert _gets(after) == 2


def test_readyz_and_healthz_follow_the_workers_alive(inst: Instance, tmp_path: Path) -> None:
    with _supervised(inst, tmp_path) as (workers, listener, start):
        assert _get(listener, "/readyz") == (503, "not ready: no worker alive\n")
        assert _get(listener, "/healthz") == (503, "not serving\n")
        w = start()
        assert _get(listener, "/readyz") == (200, "ready\n")
        assert _get(listener, "/healthz") == (200, "ok\n")
        w.kill()
        worker_exited(w.pid)
        assert _get(listener, "/readyz") == (503, "not ready: no worker alive\n")
        assert _get(listener, "/healthz") == (503, "not serving\n")
        for path in ("/", "/metrics/", "/livez/x"):
            assert _get(listener, path)[0] == 404


def test_readyz_of_the_supervisor_checks_the_store_and_its_own_reason(inst: Instance, tmp_path: Path) -> None:
    """With workers alive: the supervisor's own reason (e.g. draining) and an unreachable
    state store each make it not ready; the twin with both fine is ready."""
    cfg = inst.home.config_file
    directory = tmp_path / "mp"
    directory.mkdir()
    cfg.write_text(cfg.read_text() + METRICS_ON)
    reason: list[str | None] = [None]
    ok = supervisor_listener(load_config(inst.home), lambda: 1, lambda: reason[0], directory=directory)
    ok.start()
    try:
        assert _get(ok, "/readyz") == (200, "ready\n")
        reason[0] = "draining"
        assert _get(ok, "/readyz") == (503, "not ready: draining\n")
    finally:
        ok.stop()
    cfg.write_text(cfg.read_text() + f"state: {{backend: redis, url: 'redis://127.0.0.1:{free_port()}/0'}}\n")
    down = supervisor_listener(load_config(inst.home), lambda: 1, directory=directory)
    down.start()
    try:
        status, text = _get(down, "/readyz")
    finally:
        down.stop()
    assert status == 503 and text.startswith("not ready: state store unavailable"), text


def test_the_hooks_need_a_directory(inst: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    config = load_config(inst.home)
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        supervisor_listener(config, lambda: 1)
    with pytest.raises(ValueError, match="not a folder"):
        supervisor_listener(config, lambda: 1, directory=tmp_path / "missing")
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        worker_exited(12345)
    # The twin: from the environment, as a supervisor that sets it for itself too.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    listener = supervisor_listener(config, lambda: 1)
    try:
        assert listener.metrics.directory == tmp_path
        worker_exited(12345)  # no such worker's files: nothing to do, no error
    finally:
        listener.stop()


def test_a_single_process_is_not_in_multiprocess_mode(inst: Instance) -> None:
    """The test process (as `davserver serve` with server.workers: 1) never has the
    variable: its metrics are plain values with the scrape-time collectors, as always."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    m = Metrics()
    assert not m.multiprocess
    m.watch(server_not_after=lambda: datetime(2030, 1, 1).astimezone())
    assert 'davserver_certificate_expiry_timestamp_seconds{kind="server"}' in _text(m)


def _text(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


# --- the kind: any workload, any number of workers, any order of deaths --------------

_record = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "PUT", "PROPFIND", "BREW"]),
    "status": st.sampled_from([200, 201, 207, 401, 404]),
    "duration_ms": st.integers(0, 400_000),
    "bytes_in": st.integers(0, 10**9),
    "bytes_out": st.integers(0, 10**9),
    "decision": st.sampled_from(["allow", "deny"]),
    "reason": st.sampled_from(["bad_password", "locked", "nonsense"]),
})


def _comparable(text: str) -> Samples:
    return {k: v for k, v in _parse(text).items()
            if not k[0].endswith("_created") and k[0] != "davserver_workers_alive"
            and k[0] != "davserver_certificate_expiry_timestamp_seconds"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workloads=st.lists(st.tuples(st.lists(_record, max_size=12), st.integers(0, 5)), min_size=1, max_size=5),
    deaths=st.permutations(range(5)),
    tls=st.lists(st.sampled_from(["no_cert", "unknown_ca", "whatever"]), max_size=5),
)
def test_any_workers_dying_in_any_order_sum_like_one_process(
    inst: Instance, monkeypatch: pytest.MonkeyPatch, workloads: list[tuple[list[dict[str, Any]], int]],
    deaths: list[int], tls: list[str],
) -> None:
    """Workers (each a Metrics on prometheus_client's MultiProcessValue with a pid of its
    own, as in a worker process) are fed audit records and open connections; they die in
    any order and are reaped (worker_exited). After every death one scrape of the
    supervisor equals, for every counter and histogram sample, what ONE single-process
    Metrics fed every record shows; the connections gauge is the sum over the workers
    still alive."""
    config = load_config(inst.home)
    single = Metrics()  # the oracle: the test process is not in multiprocess mode
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", tmp)
        alive: dict[int, int] = {}  # fake pid -> open connections
        classes = []
        try:
            for index, (records, connections) in enumerate(workloads):
                pid = 40000 + index
                value_class = values.MultiProcessValue(process_identifier=lambda pid=pid: pid)
                classes.append(value_class)
                monkeypatch.setattr(values, "ValueClass", value_class)
                worker = Metrics()
                assert worker.multiprocess
                for record in records:
                    worker.observe(record)
                for reason in tls[index:index + 1]:
                    worker.count_tls_failure(reason)
                worker.connections.inc(connections)
                alive[pid] = connections
            monkeypatch.setattr(values, "ValueClass", values.MutexValue)
            for index, (records, _) in enumerate(workloads):  # the oracle's values: plain ones
                for record in records:
                    single.observe(record)
                for reason in tls[index:index + 1]:
                    single.count_tls_failure(reason)
            listener = supervisor_listener(config, lambda: len(alive), directory=directory)
            try:
                from prometheus_client import generate_latest

                expected = _comparable(generate_latest(single.registry).decode())
                expected.pop(("davserver_connections_open", ()), None)
                pids = [40000 + i for i in deaths if i < len(workloads)]
                for dead in [None, *pids]:
                    if dead is not None:
                        classes[dead - 40000].close_all_files()
                        alive.pop(dead)
                        worker_exited(dead)
                    seen = _comparable(generate_latest(listener.metrics.registry).decode())
                    assert seen.pop(("davserver_connections_open", ()), 0.0) == sum(alive.values())
                    assert seen == pytest.approx(expected)  # sums in another order: a last bit may differ
                assert sorted(p.name for p in directory.iterdir()) == ["counter_archive.db", "histogram_archive.db"]
            finally:
                listener.stop()
        finally:
            values.close_all_multiprocess_files()


def test_the_docs_say_what_changes_with_workers() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    section = doc.split("## Worker processes", 1)[1].split("\n## ", 1)[0]
    for needed in ("PROMETHEUS_MULTIPROC_DIR", "livesum", "davserver_workers_alive", "kill -9",
                   f"{HANDSHAKE_SYNC_SECONDS:g} s", "_created", "/readyz", "mark_process_dead"):
        assert needed in section, needed
    assert re.search(r"counters? never go(es)? backwards", section, re.I)
    assert metrics_module.MULTIPROC_ENV == "PROMETHEUS_MULTIPROC_DIR"


# --- end to end: davserver serve with server.workers: 2 ------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _multiproc_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert found, "a worker without PROMETHEUS_MULTIPROC_DIR"
    return Path(found[0].decode())


def test_serve_with_two_workers_sums_both_and_keeps_a_killed_workers_count(inst: Instance) -> None:
    """The real supervisor: requests on fresh connections land on both workers (each
    worker's own files show a part), one scrape shows their exact total; a worker killed
    with -9 is replaced and its requests stay counted; /readyz is ready again."""
    from .conftest import server_process

    metrics_port = free_port()
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text().replace("server: {", "server: {workers: 2, ", 1)
                   + f"\nmetrics: {{enabled: true, port: {metrics_port}}}\n")

    class Listener:  # the scrape helpers take anything with a port
        port = metrics_port

    listener: Any = Listener()
    with server_process(inst) as (proc, url):
        alive = _until(listener, lambda s: _value(s, "davserver_workers_alive") == 2)
        assert _value(alive, "davserver_workers_alive") == 2
        workers = _children(proc.pid)
        assert len(workers) == 2
        directory = _multiproc_dir(workers[0])
        assert _multiproc_dir(workers[1]) == directory
        sent = 0
        while sent < 200 and not all(_gets(_own(directory, w)) for w in workers):
            _get_files(url, inst, 1)
            sent += 1
        summed = _until(listener, lambda s: _gets(s) >= sent)  # the count follows the answer (audit line)
        parts = {w: _gets(_own(directory, w)) for w in workers}
        assert all(parts.values()), f"the requests did not reach both workers: {parts}"
        assert _gets(summed) == sent == sum(parts.values())

        os.kill(workers[0], signal.SIGKILL)
        seen = [_gets(_scrape(listener))]
        deadline = time.monotonic() + 10
        while not (len(_children(proc.pid)) == 2 and workers[0] not in _children(proc.pid)
                   and _value(_scrape(listener), "davserver_workers_alive") == 2):
            seen.append(_gets(_scrape(listener)))
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.05)
        assert not list(directory.glob(f"*_{workers[0]}.db")), "the killed worker's files were not folded"
        for _ in range(3):
            _get_files(url, inst, 1)
        after = _until(listener, lambda s: _gets(s) >= sent + 3)
        seen.append(_gets(after))
        ready = _get(listener, "/readyz")
    assert _gets(after) == sent + 3
    assert seen == sorted(seen) and min(seen) == sent, f"a counter went backwards: {seen}"
    assert ready == (200, "ready\n")
    assert not directory.exists(), "the supervisor left its metrics directory behind"
