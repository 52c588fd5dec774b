"""The supervisor of ``server.workers`` > 1 while it stops and when it cannot start.

* From SIGTERM on, while the workers drain their requests in flight (up to
  ``server.shutdown_timeout``), the supervisor's ``/readyz`` says 503 ``not ready:
  stopping``, so that a load balancer sends new clients elsewhere; before it, 200.
* A start that fails (here: ``metrics.port`` taken) ends with the one error line and
  exit 2, and leaves no private ``PROMETHEUS_MULTIPROC_DIR`` behind.

The server is the real ``davserver serve`` process, its clients real TLS sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import Instance, free_port
from tests.workers import metrics_dirs, port_of, ready_workers, run_serve, serve, set_setting, start_upload, wait_for


def readyz(port: int) -> tuple[int, str]:
    """(status, body) of ``GET /readyz`` on the metrics listener at `port` (plain HTTP, loopback)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:  # noqa: S310 - loopback
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readyz_says_stopping_while_the_workers_drain(inst: Instance, tmp_path: Path, private_tmp: Path) -> None:
    mport = free_port()
    set_setting(inst, "metrics", enabled=True, port=mport)
    body = os.urandom(64 * 1024)
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        assert readyz(mport) == (200, "ready\n")  # the twin: serving, ready
        assert len(metrics_dirs(private_tmp)) == 1  # the workers' directory, while they run
        conn = start_upload(inst, port_of(url), "/files/drained.bin", len(body))
        conn.send(body[:1024])
        time.sleep(0.5)  # a worker reads the request and waits for the rest of the body
        proc.send_signal(signal.SIGTERM)
        try:
            assert wait_for(lambda: readyz(mport)[0] == 503, seconds=10), readyz(mport)
            assert readyz(mport) == (503, "not ready: stopping\n")
            assert proc.poll() is None  # still draining
            conn.send(body[1024:])
            assert conn.getresponse().status == 201
        finally:
            conn.close()
        assert proc.wait(timeout=40) == 0
    assert metrics_dirs(private_tmp) == []


def test_a_taken_metrics_port_ends_serve_with_one_line_and_leaves_no_directory(
        inst: Instance, tmp_path: Path, private_tmp: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        mport = taken.getsockname()[1]
        set_setting(inst, "metrics", enabled=True, port=mport)
        r = run_serve(inst, "--port", "0", "--workers", "2")
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert errors[0].startswith(f"error: metrics.port: 127.0.0.1:{mport} is already in use"), r.stderr
    assert "Traceback" not in r.stderr and "serving" not in r.stderr
    assert metrics_dirs(private_tmp) == []
    # The twin: with the port free it serves, and stopping removes the directory too.
    with serve(inst, tmp_path, "--workers", "2") as (proc, _url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        assert readyz(mport) == (200, "ready\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    assert metrics_dirs(private_tmp) == []
