"""The sweep of leftover upload files never removes an upload in flight (fs.py
``sweep_temp_files``): the process writing a temp file holds an exclusive ``flock`` on
it until after its rename, and the sweep removes only files it can lock itself.

Real `davserver serve` processes, real TLS uploads with the project's certificates:

- the reviewer's reproduction: a second `davserver serve` on the same home while a
  rate-limited curl upload runs through a two-worker server fails to bind (exit 2) and
  removes nothing, for one worker and for two; the upload ends 201 with its bytes;
- ``kill -9`` of the supervisor: a fresh serve on the same home leaves the upload the
  orphaned worker is still draining, which then completes;
- ``kill -9`` of a worker mid-upload: the supervisor removes that worker's temp files
  within ``SWEPT_WITHIN`` seconds, while the other worker's upload at that moment is
  untouched and completes;
- every write path that makes a temp file (PUT plain, chunked, with X-OC-Mtime, with
  OC-Checksum, with a wrong OC-Checksum, COPY, COPY over a file, MOVE across shares,
  onto another folder) holds the lock at every write and at the rename, and a sweep
  at those instants removes nothing; the twin: a temp file nobody locks is removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from davserver import fs
from davserver.config import load_config
from davserver.fs import TEMP_PREFIX, sweep_temp_files
from tests.conftest import Instance, running, session_for
from tests.test_fs_safety import put_head, read_response, status_of, tls_socket
from tests.workers import children, port_of, ready_workers, run_serve, serve, wait_for, worker_of

#: How soon after a worker's death its leftover upload files must be gone (the
#: supervisor reaps within 0.1 s and sweeps at once on its maintenance thread).
SWEPT_WITHIN = 5.0


def share_dir(inst: Instance, name: str = "files") -> Path:
    return load_config(inst.home).shares[name].path


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(TEMP_PREFIX + "*"))


def temp_files_of(pid: int, folder: Path) -> set[str]:
    """The temp upload files process `pid` has open under `folder` (Linux /proc)."""
    found: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)) and os.path.basename(target).startswith(TEMP_PREFIX):
            found.add(target)
    return found


def locked_by_someone(path: Path) -> bool:
    """True when another open file holds `path`'s flock (a new open cannot take it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def hold_lock(path: Path) -> subprocess.Popen[bytes]:
    """Another process holding `path`'s flock until it is killed (flock(1) would leave its
    command, a child holding the lock, behind)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); time.sleep(60)")
    return subprocess.Popen([sys.executable, "-c", code, str(path)])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def half_upload(inst: Instance, port: int, path: str, body: bytes) -> Iterator[Any]:
    """A PUT on a raw TLS connection whose body has been sent up to half; yields the socket."""
    alice = inst.clients["alice"]
    with tls_socket(inst, port, alice) as tls:
        tls.sendall(put_head(alice, path, f"Content-Length: {len(body)}\r\n") + body[: len(body) // 2])
        yield tls


def finish(tls: Any, body: bytes) -> int:
    tls.sendall(body[len(body) // 2 :])
    return status_of(read_response(tls))


@contextmanager
def uploads_on_each_worker(inst: Instance, tmp_path: Path,
                           body: bytes) -> Iterator[tuple[Path, dict[int, list[Any]], int, int]]:
    """`davserver serve --workers 2`, and half uploads of `body` to /files/u0.bin, u1.bin
    ... (at most 12) on new connections until each worker holds at least one; yields the
    server's log, worker -> its uploads' sockets, and the two workers (victim, survivor).
    The sockets are closed, then the server stopped, at the end."""
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log), ExitStack() as stack:
        assert wait_for(lambda: ready_workers(log) == 2)
        port, pids = port_of(url), children(proc.pid)
        owner: dict[int, list[Any]] = {pid: [] for pid in pids}
        for n in range(12):  # until each worker has an upload in flight
            tls = stack.enter_context(half_upload(inst, port, f"/files/u{n}.bin", body))
            client_port = int(tls.getsockname()[1])
            assert wait_for(lambda: worker_of(pids, port, client_port) is not None)  # noqa: B023 - used at once
            owner[worker_of(pids, port, client_port) or 0].append(tls)
            if all(owner.values()):
                break
        assert all(owner.values()), "the connections did not reach both workers"
        victim, survivor = pids
        yield log, owner, victim, survivor


def kill_mid_upload(share: Path, owner: dict[int, list[Any]], victim: int,
                    survivor: int) -> tuple[set[str], set[str], float]:
    """Once each worker has its uploads' temp files open, `kill -9` `victim`: (its temp
    files, `survivor`'s, the monotonic time of the kill)."""
    assert wait_for(lambda: len(temp_files_of(victim, share)) == len(owner[victim]))
    assert wait_for(lambda: len(temp_files_of(survivor, share)) == len(owner[survivor]))
    doomed, kept = temp_files_of(victim, share), temp_files_of(survivor, share)
    os.kill(victim, signal.SIGKILL)
    return doomed, kept, time.monotonic()


def assert_gone_within(paths: set[str], since: float, seconds: float, log: Path) -> None:
    """Every one of `paths` is gone within `seconds` of `since` (monotonic); else the log's tail."""
    assert wait_for(lambda: not any(os.path.exists(p) for p in paths), seconds=seconds), log.read_text()[-2000:]
    assert time.monotonic() - since <= seconds


def assert_uploads_whole(share: Path, body: bytes) -> None:
    """Every u0.bin ... u11.bin that was stored has exactly `body`, and no temp file is left."""
    for n in range(12):
        target = share / f"u{n}.bin"
        if target.exists():
            assert sha(target.read_bytes()) == sha(body)
    assert temp_files(share) == []


# --- the reviewer's reproduction -----------------------------------------------------

def test_a_second_serve_that_cannot_bind_removes_no_upload_in_flight(inst: Instance, tmp_path: Path) -> None:
    """`davserver serve` (2 workers); a curl upload of 20 MB at 1 MB/s with alice's
    certificate and password; meanwhile `davserver serve --workers 1` (and 2) on the same
    home and port: each exits 2 ("port in use") having removed nothing; the upload
    answers 201 and the file has its bytes. Before, each logged "removed 1 unfinished
    upload(s)" and the upload answered 409."""
    share = share_dir(inst)
    source = tmp_path / "20MB-file"
    body = os.urandom(20 << 20)
    source.write_bytes(body)
    alice = inst.clients["alice"]
    with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
        assert wait_for(lambda: ready_workers(log) == 2)
        curl = subprocess.Popen(["curl", "-sS", "--limit-rate", "1M", "--cacert", str(inst.ca_file),
                                 "--cert", str(alice.crt), "--key", str(alice.key),
                                 "-u", f"alice:{alice.password}", "-T", str(source),
                                 "-o", "/dev/null", "-w", "%{http_code}", url + "files/big.bin"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: temp_files(share), seconds=30), "the upload did not start"
            in_flight = temp_files(share)
            inode = in_flight[0].stat().st_ino
            for workers in ("1", "2"):
                second = run_serve(inst, "--workers", workers, "--port", str(port_of(url)))
                said = second.stdout + second.stderr
                assert second.returncode == 2, said
                assert "in use" in said, said
                assert "removed" not in said, said
                assert temp_files(share) == in_flight and in_flight[0].stat().st_ino == inode, workers
            assert curl.poll() is None, "the upload ended before the second serves: the test proved nothing"
            out, err = curl.communicate(timeout=120)
        finally:
            if curl.poll() is None:
                curl.kill()
                curl.wait()
        assert out == "201", (out, err)
        assert sha((share / "big.bin").read_bytes()) == sha(body)
        assert temp_files(share) == []
        assert "removed" not in log.read_text()


def test_a_fresh_serve_after_kill_9_of_the_supervisor_leaves_the_orphans_upload(inst: Instance,
                                                                               tmp_path: Path) -> None:
    """The orphaned worker still drains its upload; a fresh serve on the same home (it
    binds: another port) sweeps, but not that file; the upload then completes."""
    share = share_dir(inst)
    leftover = share / (TEMP_PREFIX + "crashed")  # a real leftover: nobody holds its lock
    body = os.urandom(4 << 20)
    orphans: list[int] = []
    try:
        with serve(inst, tmp_path, "--workers", "2") as (proc, url, log):
            assert wait_for(lambda: ready_workers(log) == 2)
            orphans = children(proc.pid)
            with half_upload(inst, port_of(url), "/files/orphan.bin", body) as tls:
                assert wait_for(lambda: temp_files(share))
                in_flight = temp_files(share)
                leftover.write_bytes(b"half")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                with serve(inst, tmp_path, "--workers", "1") as (fresh, _, fresh_log):
                    assert wait_for(lambda: "removed 1 unfinished upload(s)" in fresh_log.read_text()), \
                        fresh_log.read_text()[-2000:]
                    assert not leftover.exists()  # the twin: what nobody writes goes
                    assert all(p.exists() for p in in_flight), "a fresh serve removed the orphan's upload"
                    assert finish(tls, body) == 201
        assert sha((share / "orphan.bin").read_bytes()) == sha(body)
        assert temp_files(share) == []
    finally:
        for pid in orphans:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_kill_9_of_a_worker_its_upload_files_are_swept_soon_the_others_stay(inst: Instance,
                                                                           tmp_path: Path) -> None:
    """Uploads in flight on both workers; `kill -9` of one: its temp files are gone
    within SWEPT_WITHIN seconds, the other worker's stay and its uploads complete."""
    share = share_dir(inst)
    body = os.urandom(2 << 20)
    with uploads_on_each_worker(inst, tmp_path, body) as (log, owner, victim, survivor):
        assert wait_for(lambda: temp_files_of(victim, share) and temp_files_of(survivor, share))
        doomed, kept, killed = kill_mid_upload(share, owner, victim, survivor)
        assert_gone_within(doomed, killed, SWEPT_WITHIN, log)
        assert f"removed {len(doomed)} unfinished upload(s)" in log.read_text()
        assert all(os.path.exists(p) for p in kept), "the sweep removed a live upload of the other worker"
        for tls in owner[survivor]:
            assert finish(tls, body) == 201
    assert_uploads_whole(share, body)


# --- every write path holds the lock while in flight ---------------------------------

class _Probe:
    """Wraps fs.AtomicFile.write and the rename (``os.replace`` as fs.py calls it) to look,
    at each of those instants, whether the temp file is locked and survives a sweep."""

    def __init__(self) -> None:
        self.writes = 0
        self.renames = 0
        self.failures: list[str] = []

    def look(self, path: str, when: str) -> None:
        if not locked_by_someone(Path(path)):
            self.failures.append(f"{when}: {path} not locked")
        # The real sweep, bypassing this process's own record of what it writes: the lock alone.
        with fs._WRITING_LOCK:
            mine = set(fs._WRITING)
            fs._WRITING.clear()
        try:
            if sweep_temp_files(Path(path).parent, older_than=0) or not os.path.exists(path):
                self.failures.append(f"{when}: {path} swept")
        finally:
            with fs._WRITING_LOCK:
                fs._WRITING.update(mine)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> _Probe:
    found = _Probe()
    real_write, real_os = fs.AtomicFile.write, os  # the os module fs.py calls

    def write(self: fs.AtomicFile, data: bytes) -> int:
        found.writes += 1
        found.look(self.temp_path, "write")
        return real_write(self, data)

    class _Os:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_os, name)

        @staticmethod
        def replace(src: str, dst: str) -> None:
            if os.path.basename(src).startswith(TEMP_PREFIX):
                found.renames += 1
                found.look(src, "rename")
            real_os.replace(src, dst)

    monkeypatch.setattr(fs.AtomicFile, "write", write)
    monkeypatch.setattr(fs, "os", _Os())
    return found


def _chunked(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1 << 16):
        yield data[i : i + (1 << 16)]


WRITE_PATHS = ["put", "put-chunked", "put-mtime", "put-checksum", "put-bad-checksum", "copy", "copy-over",
               "copy-across-shares", "move-across-filesystems"]


def _other_filesystem(inst: Instance) -> Path | None:
    """A folder on another filesystem than the shares' (/dev/shm, a tmpfs), or None."""
    shm = Path("/dev/shm")  # noqa: S108 - a test folder, removed with the test
    if not shm.is_dir() or shm.stat().st_dev == share_dir(inst).stat().st_dev:
        return None
    folder = shm / f"davserver-test-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("variant", WRITE_PATHS)
def test_every_write_path_holds_the_lock_while_in_flight(inst: Instance, probe: _Probe, variant: str) -> None:
    """A MOVE across shares on one filesystem is a rename (no temp file): across two
    (EXDEV) it copies through a temp file (copymove.py), the path tried here."""
    other = None
    if variant == "move-across-filesystems":
        other = _other_filesystem(inst)
        if other is None:
            pytest.skip("no second filesystem (/dev/shm) here")
        text = inst.home.config_file.read_text()
        inst.home.config_file.write_text(text.replace("path: data/team", f"path: {other}"))
    try:
        with running(inst) as server:
            _write_through(inst, server, probe, variant, other)
    finally:
        if other is not None:
            shutil.rmtree(other, ignore_errors=True)


def _write_through(inst: Instance, server: Any, probe: _Probe, variant: str, other: Path | None) -> None:
    s = session_for(inst)
    base = server.url
    body = os.urandom(300_000)
    (share_dir(inst) / "src.bin").write_bytes(body)
    (share_dir(inst) / "sub").mkdir()
    (share_dir(inst) / "old.bin").write_bytes(b"old")
    expected: tuple[str, int, bytes | None]
    if variant == "put":
        expected = ("files/new.bin", s.put(base + "files/new.bin", data=body).status_code, body)
    elif variant == "put-chunked":
        expected = ("files/new.bin", s.put(base + "files/new.bin", data=_chunked(body)).status_code, body)
    elif variant == "put-mtime":
        r = s.put(base + "files/new.bin", data=body, headers={"X-OC-Mtime": "1500000000"})
        assert r.headers.get("X-OC-Mtime") == "accepted"
        assert (share_dir(inst) / "new.bin").stat().st_mtime == 1500000000
        expected = ("files/new.bin", r.status_code, body)
    elif variant == "put-checksum":
        digest = hashlib.sha1(body).hexdigest()  # noqa: S324 - the client's checksum, not security
        expected = ("files/new.bin", s.put(base + "files/new.bin", data=body,
                                           headers={"OC-Checksum": f"SHA1:{digest}"}).status_code, body)
    elif variant == "put-bad-checksum":
        r = s.put(base + "files/old.bin", data=body, headers={"OC-Checksum": "SHA1:" + "0" * 40})
        expected = ("files/old.bin", r.status_code, b"old")
    elif variant == "copy":
        expected = ("files/sub/copy.bin", s.request("COPY", base + "files/src.bin",
                                                     headers={"Destination": base + "files/sub/copy.bin"}).status_code,
                    body)
    elif variant == "copy-over":
        expected = ("files/old.bin", s.request("COPY", base + "files/src.bin",
                                               headers={"Destination": base + "files/old.bin",
                                                        "Overwrite": "T"}).status_code, body)
    elif variant == "copy-across-shares":
        expected = ("team/copied.bin", s.request("COPY", base + "files/src.bin",
                                                 headers={"Destination": base + "team/copied.bin"}).status_code, body)
    else:
        expected = ("team/moved.bin", s.request("MOVE", base + "files/src.bin",
                                                headers={"Destination": base + "team/moved.bin"}).status_code, body)
        assert not (share_dir(inst) / "src.bin").exists()
    where, status, content = expected
    if variant == "put-bad-checksum":
        assert status == 400
    else:
        assert status in (201, 204), (variant, status)
    assert probe.writes >= 1, f"{variant}: no temp file was written: the probe saw nothing"
    assert probe.renames == (0 if variant == "put-bad-checksum" else 1), variant
    assert probe.failures == [], probe.failures
    share, _, rel = where.partition("/")
    assert (share_dir(inst, share) / rel).read_bytes() == content
    assert temp_files(inst.home.root / "data") == []
    assert other is None or temp_files(other) == []


def test_a_temp_file_nobody_locks_is_swept_one_locked_elsewhere_is_not(tmp_path: Path) -> None:
    """The twin of the above, with the lock held by another process (a real `flock`)."""
    (tmp_path / "d").mkdir()
    orphan = tmp_path / "d" / (TEMP_PREFIX + "orphan")
    held = tmp_path / "d" / (TEMP_PREFIX + "held")
    orphan.write_bytes(b"x")
    held.write_bytes(b"y")
    holder = hold_lock(held)
    try:
        assert wait_for(lambda: locked_by_someone(held), seconds=10)
        assert sweep_temp_files(tmp_path, older_than=0) == 1
        assert not orphan.exists() and held.exists()
        holder.kill()
        holder.wait()
        assert sweep_temp_files(tmp_path, older_than=0) == 1  # its holder died: it goes
        assert not held.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_file_that_cannot_be_locked_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the filesystem refuses locks (ENOLCK, EOPNOTSUPP) the sweep keeps the file
    (fail safe) and says so; an upload there is still written."""
    leftover = tmp_path / (TEMP_PREFIX + "x")
    leftover.write_bytes(b"x")
    real_flock = fcntl.flock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert sweep_temp_files(tmp_path, older_than=0) == 0 and leftover.exists()
    upload = fs.AtomicFile(str(tmp_path / "target.bin"))
    upload.write(b"data")
    upload.close()
    assert (tmp_path / "target.bin").read_bytes() == b"data"
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert sweep_temp_files(tmp_path, older_than=0) == 1 and not leftover.exists()


def test_uploads_written_while_another_process_sweeps_without_pause_all_land(tmp_path: Path) -> None:
    """A sweep in a tight loop in another process (so only the locks protect the files,
    not this process's record of them) while 300 uploads are written here: every upload
    lands whole, even one whose fresh temp file the sweep met between its creation and
    its lock (it takes another name, fs.py ``_locked_temp_file``)."""
    stop = tmp_path / "stop"
    code = ("import sys, pathlib; from davserver.fs import sweep_temp_files\n"
            "root, stop, n = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), 0\n"
            "while not stop.exists():\n    n += 1; sweep_temp_files(root, older_than=0)\n"
            "print(n)\n")
    (tmp_path / "d").mkdir()
    sweeper = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d"), str(stop)],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # it sweeps
        for n in range(300):
            data = os.urandom(1000 + n)
            upload = fs.AtomicFile(str(tmp_path / "d" / f"f{n % 7}.bin"))
            upload.write(data[:500])
            upload.write(data[500:])
            upload.close()
            assert (tmp_path / "d" / f"f{n % 7}.bin").read_bytes() == data, n
        stop.touch()
        out, _ = sweeper.communicate(timeout=30)
        assert int(out) > 10, "the sweeper hardly ran: the test proved nothing"
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait()
    assert temp_files(tmp_path / "d") == []
