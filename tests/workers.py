"""Helpers for the tests of ``server.workers`` > 1: real `davserver serve` processes, and
which worker holds a connection read from Linux (the supervisor's children in /proc, each
one's socket descriptors against the kernel's socket table read with ``ss``), never from
anything in the answers.

Used by test_supervisor*.py, test_upload_sweep*.py, test_session_tickets.py and
test_multinode_keys.py; the ``private_tmp`` fixture is in conftest.py.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from davserver.supervisor import METRICS_DIR_PREFIX
from tests.conftest import Instance, client_context

START_SECONDS = 60  # for `davserver serve` to print its URL on a busy machine


def launch(inst: Instance, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`davserver serve --port 0 ARGS` started as its own process, its stderr to a new
    log file under `tmp_path`: (the process, the log). The caller stops it."""
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve",
                                 "--port", "0", *args], stderr=out)
    return proc, log


@contextmanager
def serve(inst: Instance, tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`davserver serve --port 0 ARGS` as its own process; yields it, its URL and its log.
    Stopped at the end if still running (SIGTERM, SIGKILL after 40 s)."""
    proc, log = launch(inst, tmp_path, *args)
    try:
        url = ""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and not url and proc.poll() is None:
            if m := re.search(r"serving (https://127\.0\.0\.1:\d+/)", log.read_text(errors="replace")):
                url = m.group(1)
            else:
                time.sleep(0.05)
        assert url, "the server did not start: " + log.read_text(errors="replace")[-3000:]
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def run_serve(inst: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    """`davserver serve ARGS` run to its end (one that cannot start), output captured."""
    return subprocess.run([sys.executable, "-m", "davserver.cli", "--home", str(inst.home.root), "serve", *args],
                          capture_output=True, text=True, timeout=120)


def children(pid: int) -> list[int]:
    """The PIDs of process `pid`'s children (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_for(check: Callable[[], object], seconds: float = 20.0, step: float = 0.02) -> bool:
    """Whether `check()` is true within `seconds` (looked at every `step` seconds, and once at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def socket_inodes(pid: int) -> set[int]:
    """The inodes of process `pid`'s sockets."""
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    except FileNotFoundError:
        pass
    return found


def established(port: int) -> dict[int, int]:
    """Inode -> client port of every established TCP connection to local `port`.

    Read from the kernel's socket diagnostics (``ss``, netlink, filtered in the kernel:
    a handful of entries in one dump). /proc/net/tcp is not used: it is read a page at
    a time and, while other connections open and close between two reads (thousands of
    TIME_WAIT entries under a load test), resumes at a shifted position and skips
    entries — a connection held by a worker then looks held by nobody."""
    out = subprocess.run(["ss", "-Htne", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        inode = re.search(r"\bino:(\d+)", line)
        if len(fields) >= 4 and inode:
            found[int(inode.group(1))] = int(fields[3].rsplit(":", 1)[1])
    return found


def worker_of(pids: list[int], port: int, client_port: int) -> int | None:
    """Which of `pids` holds the server side of the connection from `client_port` (look
    while the connection is open)."""
    conns = {inode for inode, cport in established(port).items() if cport == client_port}
    return next((pid for pid in pids if socket_inodes(pid) & conns), None)


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def set_setting(inst: Instance, section: str, **values: object) -> None:
    """Set `values` in `section` of the instance's davserver.yaml."""
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw.setdefault(section, {}).update(values)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


def ready_workers(log: Path) -> int:
    """How many times a worker said it serves in the supervisor's `log`."""
    return len(re.findall(r"worker \d+ serving: pid", log.read_text(errors="replace")))


def metrics_dirs(tmp: Path) -> list[str]:
    """The supervisors' private PROMETHEUS_MULTIPROC_DIR directories in `tmp`, by name."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(METRICS_DIR_PREFIX))


def start_upload(inst: Instance, port: int, path: str, length: int) -> http.client.HTTPSConnection:
    """A PUT of `length` bytes to `path` as alice (her password) on a new TLS connection to
    `port`: the headers sent, the body left to the caller (``send``, then
    ``getresponse``), who closes the connection."""
    client = inst.clients["alice"]
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(inst, client), timeout=60)
    token = base64.b64encode(f"{client.account}:{client.password}".encode()).decode()
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", f"Basic {token}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    return conn
