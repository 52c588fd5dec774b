"""Leftover upload files go within a bounded time while the server runs, and the sweep
can lock them where locks need a writable descriptor (NFS).

- ``state.backend: redis`` keeps a leftover younger than ``state.sweep_age_seconds``
  (another node may be writing it over a mount whose locks this machine cannot see), so
  the sweep right after a worker dies keeps its files; the sweep every
  ``state.sweep_seconds`` (maintenance.py ``InstanceMaintenance``) removes them within
  ``sweep_age_seconds + sweep_seconds`` plus one maintenance round: ``kill -9`` of a
  worker mid-upload (supervisor), and a writer killed mid-write (single-process server);
  the twin: a live upload left idle for longer than the age and several periods stays
  and completes.
- The sweep opens a leftover write-only (fs.py ``_remove_if_unlocked``): on Linux NFS an
  exclusive ``flock`` is an ``fcntl`` lock, which needs a descriptor open for writing
  (flock(2) NOTES). Tested as an unprivileged user (a subprocess that drops to uid
  65534 when the tests run as root, since root opens anything): a leftover of mode 0o200
  (openable for writing only) is swept, one locked by a live writer is not; a temp file
  whose final mode has no write bit (copy of a 0o444 file, PUT over one, a new file under
  umask 0o222) keeps the owner's write bit until after its rename, so its leftover is
  swept; after a normal close the target has exactly its final mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from davserver.config import load_config
from tests.conftest import Instance, running
from tests.test_upload_sweep import (
    assert_gone_within,
    assert_uploads_whole,
    finish,
    kill_mid_upload,
    share_dir,
    uploads_on_each_worker,
)
from tests.workers import set_setting, wait_for

#: The small age and period of these tests (seconds; the settings' lower bound is 1).
AGE = 1.0
PERIOD = 1.0
#: A round of the supervisor's or the server's maintenance thread (supervisor.py
#: ``_MAINTAIN_SECONDS``, server.py ``_TRIM_SECONDS``), plus slack for a loaded machine.
ROUND = 5.0
SLACK = 3.0
#: Every leftover must be gone this long after its writer died.
BOUND = AGE + PERIOD + ROUND + SLACK


def on_redis(inst: Instance, redis_url: str) -> None:
    set_setting(inst, "state", backend="redis", url=redis_url, prefix=f"sweep-{uuid.uuid4().hex}:",
                sweep_seconds=PERIOD, sweep_age_seconds=AGE)
    set_setting(inst, "server", timeout=60)  # the idle uploads below outlast the test instance's 10 s


def test_the_settings_are_read_with_their_defaults(inst: Instance, redis_url: str) -> None:
    state = load_config(inst.home).state
    assert (state.sweep_seconds, state.sweep_age_seconds) == (120.0, 300.0)
    on_redis(inst, redis_url)
    state = load_config(inst.home).state
    assert (state.sweep_seconds, state.sweep_age_seconds) == (PERIOD, AGE)


def test_kill_9_of_a_worker_on_redis_its_uploads_go_within_the_bound_live_ones_stay(
        inst: Instance, redis_url: str, tmp_path: Path) -> None:
    on_redis(inst, redis_url)
    share = share_dir(inst)
    body = os.urandom(1 << 20)
    with uploads_on_each_worker(inst, tmp_path, body) as (log, owner, victim, survivor):
        doomed, kept, killed = kill_mid_upload(share, owner, victim, survivor)
        assert_gone_within(doomed, killed, BOUND, log)
        # The twin: idle longer than the age and several periods, the live uploads stay.
        time.sleep(max(0.0, killed + AGE + 3 * PERIOD - time.monotonic()))
        assert all(os.path.exists(p) for p in kept), "the sweep removed a live upload of the other worker"
        for tls in owner[survivor]:
            assert finish(tls, body) == 201
    assert_uploads_whole(share, body)


WRITER = textwrap.dedent("""
    import sys, time
    from davserver.fs import AtomicFile
    upload = AtomicFile(sys.argv[1])
    upload.write(b"half of it")
    upload._file.flush()
    print(upload.temp_path, flush=True)
    time.sleep(120)
""")


def writer(target: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process writing `target` through AtomicFile, stopped mid-write; yields it
    and its temp file."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_the_single_process_server_on_redis_sweeps_a_dead_writers_file_within_the_bound(
        inst: Instance, redis_url: str) -> None:
    on_redis(inst, redis_url)
    share = share_dir(inst)
    with running(inst):
        dead, dead_temp = writer(share / "dead.bin")
        live, live_temp = writer(share / "live.bin")
        try:
            assert dead_temp.exists() and live_temp.exists()
            dead.kill()
            dead.wait()
            died = time.monotonic()
            assert wait_for(lambda: not dead_temp.exists(), seconds=BOUND)
            assert time.monotonic() - died <= BOUND
            time.sleep(max(0.0, died + AGE + 3 * PERIOD - time.monotonic()))
            assert live_temp.exists(), "the sweep removed a file a live process is writing"
        finally:
            for proc in (dead, live):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        assert wait_for(lambda: not live_temp.exists(), seconds=BOUND)  # its writer died too


# --- the sweep's descriptor is open for writing --------------------------------------

UNPRIVILEGED = textwrap.dedent("""
    import fcntl, os, shutil, stat, sys, tempfile
    from pathlib import Path
    from davserver.fs import TEMP_PREFIX, AtomicFile, sweep_temp_files  # before: uid 65534 may not read them
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    root = Path(tempfile.mkdtemp(prefix="sweep-mode-"))
    out = []

    # A leftover only writing can open (0o200): swept only by a write-only open.
    leftover = root / (TEMP_PREFIX + "w")
    leftover.write_bytes(b"x"); leftover.chmod(0o200)
    out.append(("write-only leftover swept", sweep_temp_files(root, older_than=0) == 1 and not leftover.exists()))
    # The twin: the same, locked by a live writer, stays.
    held = root / (TEMP_PREFIX + "h")
    held.write_bytes(b"x"); held.chmod(0o200)
    fd = os.open(held, os.O_WRONLY); fcntl.flock(fd, fcntl.LOCK_EX)
    out.append(("locked leftover kept", sweep_temp_files(root, older_than=0) == 0 and held.exists()))
    os.close(fd)
    out.append(("unlocked then swept", sweep_temp_files(root, older_than=0) == 1 and not held.exists()))
    # A leftover from before the write bit was kept (0o444): still swept here.
    old = root / (TEMP_PREFIX + "o")
    old.write_bytes(b"x"); old.chmod(0o444)
    out.append(("read-only leftover swept", sweep_temp_files(root, older_than=0) == 1 and not old.exists()))

    # AtomicFile whose final mode has no write bit: a crash after its metadata is set
    # leaves a file the sweep can open for writing; a normal close gives the exact mode.
    def upload(variant, target):
        if variant == "copy of a 0o444 file":
            src = root / ("src-" + target.name); src.write_bytes(b"s"); src.chmod(0o444)
            return AtomicFile(str(target), like=os.stat(src))
        if variant == "put over a 0o444 file":
            target.write_bytes(b"old"); target.chmod(0o444)
            return AtomicFile(str(target))
        os.umask(0o222)
        return AtomicFile(str(target))

    for variant in ("copy of a 0o444 file", "put over a 0o444 file", "new file under umask 0o222"):
        for crash in (True, False):
            target = root / ("t-" + variant.replace(" ", "-") + str(crash))
            pid = os.fork()
            if pid == 0:
                u = upload(variant, target)
                u.write(b"data")
                u._file.flush()
                u._apply_metadata(u._file.fileno())
                if crash:
                    os._exit(0)  # the kernel drops the lock; the temp file stays
                u.close()
                os._exit(0)
            os.waitpid(pid, 0)
            left = sorted(root.glob(TEMP_PREFIX + "*"))
            if crash:
                writable = len(left) == 1 and bool(left[0].stat().st_mode & stat.S_IWUSR)
                swept = sweep_temp_files(root, older_than=0) == 1 and not any(p.exists() for p in left)
                out.append((variant + ": leftover writable and swept", writable and swept))
            else:
                mode = stat.S_IMODE(target.stat().st_mode)
                out.append((variant + ": closed with mode 0o444", not left and mode == 0o444
                            and target.read_bytes() == b"data"))
            os.umask(0o022)
            if target.exists():
                target.chmod(0o644); target.unlink()
    shutil.rmtree(root)
    for name, ok in out:
        print(("ok " if ok else "FAILED ") + name)
""")


def test_the_sweep_locks_through_a_descriptor_open_for_writing(tmp_path: Path) -> None:
    """Run as an unprivileged user (root would open any file): see UNPRIVILEGED."""
    run = subprocess.run([sys.executable, "-c", UNPRIVILEGED], capture_output=True, text=True, timeout=60,
                         check=False, cwd="/", env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(lines) == 10, run.stdout + run.stderr[-3000:]
    assert all(line.startswith("ok ") for line in lines), run.stdout

