"""The supervisor of ``server.workers`` > 1 when things go wrong around it (supervisor.py, worker.py).

- One parse, one decision: every worker runs the davserver.yaml text the supervisor
  parsed at start; a worker restarted after the file changed runs it too (no answer
  differs by worker), the change is logged once and applies at the next start.
- A SIGTERM while the workers start stops them and exits 0 with "stopping" (no death by
  the signal, no metrics directory left); a SIGHUP then is forwarded once they serve.
  A metrics directory left by a supervisor killed with SIGKILL is removed at the next start.
- A worker that sends no heartbeat for ``server.worker_heartbeat_seconds`` (SIGSTOP) is
  killed and replaced, logged with the reason; a busy worker (a long upload) is not.

Real ``davserver serve`` processes on real TLS with the project's certificates.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from davserver.supervisor import METRICS_DIR_PREFIX, remove_dead_metrics_dirs
from tests.conftest import Instance, client_context, free_port
from tests.workers import (
    children,
    launch,
    metrics_dirs,
    port_of,
    ready_workers,
    serve,
    set_setting,
    start_upload,
    wait_for,
    worker_of,
)

CHANGED = "davserver.yaml changed since start; restart the service to apply it"


def request(inst: Instance, port: int, method: str, path: str, body: bytes | None = None,
            workers: list[int] | None = None) -> tuple[int, int | None]:
    """`method` `path` as alice on a new keep-alive TLS connection: (status, the one of
    `workers` that held the connection, looked up while it is still open; None without
    `workers`)."""
    client = inst.clients["alice"]
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(inst, client), timeout=30)
    try:
        conn.connect()
        assert conn.sock is not None
        cport = int(conn.sock.getsockname()[1])
        token = base64.b64encode(f"alice:{client.password}".encode()).decode()
        conn.request(method, path, body=body, headers={"Authorization": f"Basic {token}"})
        r = conn.getresponse()
        r.read()
        return r.status, worker_of(workers, port, cport) if workers else None  # the connection is still open
    finally:
        conn.close()


def require(inst: Instance, factors: list[str]) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["shares"]["files"]["require"] = factors
    inst.home.config_file.write_text(yaml.safe_dump(raw))


# --- one configuration for every worker ----------------------------------------------

def test_a_restarted_worker_runs_the_configuration_the_supervisor_started_with(inst: Instance,
                                                                              tmp_path: Path) -> None:
    require(inst, ["password"])
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        port = port_of(url)
        assert request(inst, port, "PUT", "/files/a.txt", b"a")[0] == 201
        require(inst, ["password", "totp"])  # the file changes under the running service
        def workers_ready(count: int) -> Callable[[], bool]:
            return lambda: ready_workers(log) == count

        for n in (1, 2):  # both workers replaced, one after the other
            victim = children(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            assert wait_for(workers_ready(2 + n), seconds=30)
        pids = children(proc.pid)
        seen: dict[int | None, list[int]] = {}
        for _ in range(16):  # new connections take turns: both (restarted) workers answer
            status, pid = request(inst, port, "GET", "/files/a.txt", workers=pids)
            seen.setdefault(pid, []).append(status)
        assert set(seen) == set(pids), seen
        assert all(s == 200 for statuses in seen.values() for s in statuses), seen  # not 401 from either
        assert log.read_text().count(CHANGED) == 1
    # The twin: a restart of the service applies the change (the password alone is refused).
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        assert request(inst, port_of(url), "GET", "/files/a.txt")[0] == 401
        assert CHANGED not in log.read_text()


# --- signals while the workers start -------------------------------------------------

def _starting(inst: Instance, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`davserver serve --workers 2`, returned once both workers run and neither serves yet."""
    proc, log = launch(inst, tmp_path, "--workers", "2")
    assert wait_for(lambda: len(children(proc.pid)) == 2, seconds=60, step=0.005)
    assert ready_workers(log) == 0, "the workers served before the signal: this test proves nothing"
    return proc, log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_workers_start_stops_them_and_exits_0(inst: Instance, tmp_path: Path, private_tmp: Path,
                                                                 signum: int) -> None:
    set_setting(inst, "metrics", enabled=True, port=free_port())
    proc, log = _starting(inst, tmp_path)
    workers = children(proc.pid)
    assert len(metrics_dirs(private_tmp)) == 1
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0, log.read_text()
    text = log.read_text()
    assert text.rstrip().endswith("stopping"), text
    assert "serving https" not in text and "Traceback" not in text
    assert wait_for(lambda: all(not Path(f"/proc/{p}").exists() for p in workers)), "a worker outlived the supervisor"
    assert metrics_dirs(private_tmp) == []


def test_a_sighup_while_the_workers_start_is_forwarded_once_they_serve(inst: Instance, tmp_path: Path) -> None:
    proc, log = _starting(inst, tmp_path)
    try:
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: ready_workers(log) == 2, seconds=60)
        assert proc.poll() is None, log.read_text()  # not killed by the SIGHUP
        assert wait_for(lambda: "reload: SIGHUP forwarded to 2 worker(s)" in log.read_text())
        assert wait_for(lambda: log.read_text().count("reloaded on request: audit=yes") == 2), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert log.read_text().rstrip().endswith("stopping")


def test_the_metrics_directory_of_a_killed_supervisor_is_removed_at_the_next_start(
        inst: Instance, tmp_path: Path, private_tmp: Path) -> None:
    set_setting(inst, "metrics", enabled=True, port=free_port())
    with serve(inst, tmp_path, "--workers", "2") as (proc, _url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        workers = children(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: all(not Path(f"/proc/{p}").exists() for p in workers), seconds=60)
    left = metrics_dirs(private_tmp)
    assert len(left) == 1 and left[0].startswith(f"{METRICS_DIR_PREFIX}{proc.pid}-")
    # The twin: a directory whose supervisor still runs (this test process) is kept.
    alive = private_tmp / f"{METRICS_DIR_PREFIX}{os.getpid()}-kept"
    alive.mkdir()
    with serve(inst, tmp_path, "--workers", "2") as (proc2, _url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        now = metrics_dirs(private_tmp)
        assert left[0] not in now and alive.name in now and len(now) == 2, now
        assert any(d.startswith(f"{METRICS_DIR_PREFIX}{proc2.pid}-") for d in now), now
    assert metrics_dirs(private_tmp) == [alive.name]


def test_only_dead_supervisors_metrics_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f"{METRICS_DIR_PREFIX}{dead.pid}-x1": True, f"{METRICS_DIR_PREFIX}{os.getpid()}-x2": False,
             f"{METRICS_DIR_PREFIX}1-x3": False,  # init runs: kept (even if not ours, never removed)
             f"{METRICS_DIR_PREFIX}{dead.pid}": False, f"other-{dead.pid}-x4": False}  # not our names
    for name in names:
        (tmp_path / name).mkdir()
    assert sorted(remove_dead_metrics_dirs(str(tmp_path))) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)


# --- heartbeat -----------------------------------------------------------------------

def test_a_stopped_worker_is_killed_and_replaced_after_the_heartbeat_limit(inst: Instance, tmp_path: Path) -> None:
    set_setting(inst, "server", worker_heartbeat_seconds=2)
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        port = port_of(url)
        victim, other = children(proc.pid)
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        assert wait_for(lambda: not Path(f"/proc/{victim}").exists() or victim not in children(proc.pid),
                        seconds=10, step=0.05), "the stopped worker was not killed"
        waited = time.monotonic() - stopped
        assert 1.5 <= waited < 4.0, waited  # the limit (2 s) plus one look, not at once
        assert wait_for(lambda: ready_workers(log) == 3, seconds=30)
        text = log.read_text()
        assert re.search(rf"worker \d \(pid {victim}\) sent no heartbeat for \d+ s \(server\.worker_heartbeat_seconds: "
                         r"2\): it is stopped or hung; killing it with SIGKILL", text), text
        assert re.search(rf"\(pid {victim}\) was killed by SIGKILL", text), text
        pids = children(proc.pid)
        assert other in pids and victim not in pids and len(pids) == 2
        seen = {request(inst, port, "GET", "/files/", workers=pids)[1] for _ in range(16)}
        assert seen == set(pids), log.read_text()  # the replacement serves


def test_a_busy_worker_is_not_killed(inst: Instance, tmp_path: Path) -> None:
    """The twin: a worker receiving a slow upload for three times the limit, while both
    workers answer other requests, keeps sending its heartbeat and is not killed."""
    set_setting(inst, "server", worker_heartbeat_seconds=2)
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        port = port_of(url)
        pids = children(proc.pid)
        chunks = 60
        conn = start_upload(inst, port, "/files/slow.bin", chunks * 1024)
        started = time.monotonic()
        for _ in range(chunks):  # 6 s: three times the limit
            conn.send(b"x" * 1024)
            request(inst, port, "GET", "/files/")
            time.sleep(0.1)
        r = conn.getresponse()
        assert r.status == 201, r.read()
        conn.close()
        assert time.monotonic() - started >= 6.0
        assert children(proc.pid) == pids, log.read_text()
        assert "sent no heartbeat" not in log.read_text()
