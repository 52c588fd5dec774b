"""Every core: ``server.workers`` worker processes on one listening socket.

One davserver process uses at most one CPU core (the interpreter lock serialises its
threads). With ``server.workers`` above 1 (``auto``: one per usable CPU) ``davserver
serve`` runs this small supervisor instead of the server:

- it checks the shares and binds the listening socket (and the enrolment listener's,
  when enabled) ONCE, before any worker starts; then it sweeps leftover upload files
  (maintenance.py), so a start that fails (port in use) removes nothing. The sweep
  removes only temp files no process holds the lock of (fs.py ``sweep_temp_files``),
  so it is safe while another server or a worker orphaned by a killed supervisor is
  still writing an upload; it runs again after each worker that dies (its uploads'
  files are unlocked from then on) and every ``state.sweep_seconds`` (maintenance.py
  ``InstanceMaintenance``), on the maintenance thread;
- it starts the workers (worker.py) as fresh interpreters (``subprocess.Popen`` with
  ``pass_fds``; no fork: nothing of the supervisor's threads or locks is inherited),
  each a full server (``DavServer(role="worker")``) accepting on the same shared
  socket: the kernel hands each new connection to one worker, a busy worker accepts
  less often, and a worker that dies loses only its own connections;
- it restarts a worker that dies at once (within ``_POLL_SECONDS``); one that keeps
  dying within ``STABLE_SECONDS`` of its start is restarted after 1, 2, 4 ... up to
  ``BACKOFF_MAX_SECONDS`` seconds (each death logged with the delay), so a worker that
  cannot start never makes the supervisor spin;
- SIGTERM and SIGINT: it closes its own copy of the listening sockets, sends SIGTERM to
  every worker (each stops accepting and lets its in-flight requests finish within
  ``server.shutdown_timeout``), waits for them (SIGKILL after that timeout and
  ``_KILL_GRACE_SECONDS``) and exits 0; SIGHUP is forwarded to every worker (each
  reopens the audit log and re-reads its certificate, CRL and accounts);
- it alone runs the once-per-instance maintenance (maintenance.py: CRL re-signing, the
  server certificate's re-issue and the expiry warnings); each worker reloads what
  changed on disk itself.

With ``metrics.enabled`` the workers write their metrics into a private directory the
supervisor creates and removes (``PROMETHEUS_MULTIPROC_DIR``), and the supervisor serves
``/metrics`` from them (metrics.py ``supervisor_listener``; ``worker_exited`` after each
reaped worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import MAX_WORKERS, Config, read_config
from .errors import StartupError
from .maintenance import InstanceMaintenance, sweep_leftover_uploads
from .revocation import RevocationList
from .upstream import HTTPServer

__all__ = ["BACKOFF_MAX_SECONDS", "STABLE_SECONDS", "Supervisor", "restart_delay", "worker_count"]

log = logging.getLogger("davserver.supervisor")

#: A worker that lived at least this long before it died is restarted at once and its
#: record of quick deaths forgotten.
STABLE_SECONDS = 10.0
#: The longest wait before restarting a worker that keeps dying at start.
BACKOFF_MAX_SECONDS = 30.0
#: How often the supervisor looks for dead workers and due maintenance.
_POLL_SECONDS = 0.1
#: How long the first workers may take to start before `serve` gives up.
_START_SECONDS = 120.0
#: After server.shutdown_timeout, how long workers get to exit before SIGKILL.
_KILL_GRACE_SECONDS = 5.0
#: How often the once-per-instance maintenance is looked at.
_MAINTAIN_SECONDS = 5.0
#: The workers' private PROMETHEUS_MULTIPROC_DIR in the temp folder: this prefix, the
#: supervisor's PID, a dash and a random part (removed at stop, and at the next start
#: once that PID is gone: a supervisor killed by SIGKILL cannot remove its own).
METRICS_DIR_PREFIX = "davserver-metrics-"
#: What a worker writes on its pipe once a second (worker.py ``_heartbeat``): a byte
#: that never occurs in its ready/error line.
HEARTBEAT = b"\0"


def worker_count(setting: int | str) -> int:
    """How many workers `setting` (``server.workers``: a whole number, or ``auto``) means:
    ``auto`` is the number of CPUs this process may run on (``os.sched_getaffinity``,
    which honours taskset and cgroup cpusets), at most ``MAX_WORKERS``."""
    if setting == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, MAX_WORKERS))
    return int(setting)


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker after `quick_deaths` deaths in a row,
    each within ``STABLE_SECONDS`` of its start: 0 for the first (a crash is restarted at
    once), then 1, 2, 4 ... at most ``BACKOFF_MAX_SECONDS``."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(BACKOFF_MAX_SECONDS, 2.0 ** (quick_deaths - 2)))


@dataclass
class _Slot:
    """One worker place: the process in it (None while waiting to restart)."""

    number: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False
    #: The read end of the worker's ready pipe, until it said ready or error.
    pipe: int | None = None
    message: bytes = b""
    quick_deaths: int = 0
    restart_at: float = 0.0
    #: When the worker last said anything on its pipe (a heartbeat, its ready line).
    last_beat: float = 0.0
    pids: list[int] = field(default_factory=list)


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` with cheroot's own options (``prepare_socket``:
    SO_REUSEADDR, TCP_NODELAY, dual-stack for ``::``), inheritable by the workers.
    Raises OSError."""
    infos: list[tuple[Any, Any, int, str, Any]]
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = HTTPServer.prepare_socket(address, family, kind, proto, True, None)
        try:
            sock.bind(address)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error or OSError("no address to listen on")


class Supervisor:
    """The ``davserver serve`` process for ``server.workers`` > 1 (see the module).

    ``prepare()`` checks the shares, sweeps, and binds (StartupError as the single server
    says it); ``start()`` starts the workers and returns once each serves (StartupError
    with a worker's own message when one cannot start); ``serve_forever()`` supervises
    until SIGTERM/SIGINT, then drains the workers and raises KeyboardInterrupt (the CLI
    says "stopping"); ``reload()`` forwards SIGHUP; ``stop()`` ends everything.

    `config_text` is the davserver.yaml text `config` was parsed from (config.py
    ``read_config``); every worker is handed that text (a memfd, ``--config-fd``) and
    never reads the file, so all run one configuration until the service restarts.
    Without it the supervisor reads and parses the file itself, once, and uses that.
    """

    def __init__(self, config: Config, *, workers: int, bind: str | None = None, port: int | None = None,
                 config_text: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        if config_text is None:  # not told the text `config` came from: read and parse it once, here
            config, config_text = read_config(config.home)
        self.config = config
        #: The davserver.yaml text every worker runs (one parse, one decision: a worker
        #: restarted after the file changed still runs this; the change needs a restart).
        self.config_text = config_text
        self._config_fd = -1
        self._config_change_logged: str | None = None
        self.workers = workers
        self.bind = bind if bind is not None else config.server.bind
        self._port = port if port is not None else config.server.port
        self._socket: socket.socket | None = None
        self._enrolment_socket: socket.socket | None = None
        self._slots = [_Slot(n) for n in range(workers)]
        self._stopping = threading.Event()
        self._reload_requested = False
        self._lock = threading.Lock()
        self._metrics_dir: str | None = None
        self.metrics_listener: Any = None
        self._maintenance: InstanceMaintenance | None = None
        self._maintenance_thread: threading.Thread | None = None
        #: Set when a worker died: the maintenance thread sweeps its leftover uploads.
        self._sweep_due = threading.Event()
        #: The workers' shared accept counter (worker.py TurnTakingSocket): a memfd of 8 bytes.
        self._turns = -1

    # --- start ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The real port (once bound: port 0 picks one)."""
        return self._port

    def prepare(self) -> None:
        """Check the shares (server.py ``check_shares``), bind the listening sockets, then
        sweep leftover uploads (only once every bind succeeded). Raises StartupError."""
        from .server import _bind_error, bind_errno, check_shares

        if self._socket is not None:
            return
        check_shares(self.config)
        _ping_store(self.config)
        err = bind_errno(self.bind, self._port)
        if err is not None:
            raise _bind_error("server", self.bind, self._port, err, "pick --port")
        try:
            self._socket = _listening_socket(self.bind, self._port, self.config.server.listen_backlog)
        except OSError as exc:
            raise _bind_error("server", self.bind, self._port, exc.errno or 0, "pick --port") from None
        self._port = int(self._socket.getsockname()[1])
        if hasattr(os, "memfd_create"):
            self._turns = os.memfd_create("davserver-accept-turns")
            os.ftruncate(self._turns, 8)
        e = self.config.enrolment
        if e.enabled:
            try:
                self._enrolment_socket = _listening_socket(e.bind, e.port, e.handshakes_total)
            except OSError as exc:
                self._close_sockets()
                raise StartupError(
                    f"enrolment.port: cannot listen on {e.bind}:{e.port} ({exc}); "
                    "stop the other server, pick another enrolment.port, or set enrolment.enabled: false"
                ) from None
        if self.config.metrics.enabled:
            self._prepare_metrics()
        sweep_leftover_uploads(self.config)

    def _prepare_metrics(self) -> None:
        from . import metrics

        # The workers' environment only: this process's own metrics (none) stay in memory.
        remove_dead_metrics_dirs()
        self._metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        listener_of = getattr(metrics, "supervisor_listener", None)
        if listener_of is None:
            log.warning("metrics.enabled: this version serves no metrics with server.workers > 1")
            return
        # /readyz says 503 "stopping" from SIGTERM on, while the workers drain: a load
        # balancer sends no new connections to a node that is going away.
        self.metrics_listener = listener_of(self.config, self.workers_alive,
                                            ready=lambda: "stopping" if self._stopping.is_set() else None,
                                            directory=self._metrics_dir)
        try:
            self.metrics_listener.prepare()
        except OSError as exc:
            from .server import _bind_error

            self.metrics_listener = None
            self._close_sockets()
            self._remove_metrics_dir()
            m = self.config.metrics
            raise _bind_error("metrics", m.bind, m.port, exc.errno or 0, "pick another metrics.port") from None

    def start(self) -> None:
        """Start every worker and wait until each serves. Raises StartupError when one
        cannot start (its message, as the CLI would print it), having stopped the others;
        KeyboardInterrupt when SIGTERM or SIGINT came while they started (the signal
        handlers are installed first: ``_install_signal_handlers``); a SIGHUP then is kept
        for ``serve_forever``. On any failure everything taken (sockets, workers, the
        metrics directory) is released."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._install_signal_handlers()
        if self._stopping.is_set():
            raise KeyboardInterrupt
        self.prepare()
        now = time.monotonic()
        for slot in self._slots:
            self._spawn(slot, now)
        deadline = now + _START_SECONDS
        # Until each has said ready once; one that dies after that is restarted by serve_forever.
        while not all(slot.ready for slot in self._slots):
            if self._stopping.is_set():  # SIGTERM/SIGINT while starting: start() stops what started
                raise KeyboardInterrupt
            self._read_pipes(min(0.1, max(0.0, deadline - time.monotonic())))
            failed = next((s for s in self._slots if not s.ready and (s.proc is None or s.proc.poll() is not None)),
                          None)
            if failed is not None:
                self._read_pipes(0.0)
                if not failed.ready:
                    why = self._death_message(failed)
                    self.stop()
                    raise StartupError(why)
            if time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"the worker processes did not start within {_START_SECONDS:.0f} s")
        revocations = RevocationList(self.config.tls.crl)
        self._maintenance = InstanceMaintenance(self.config, revocations)
        self._maintenance_thread = threading.Thread(target=self._maintain, name="davserver-maintenance",
                                                    daemon=True)
        self._maintenance_thread.start()
        if self.metrics_listener is not None:
            self.metrics_listener.start()
        log.info("%d worker processes serving: %s", self.workers, " ".join(str(p) for p in self.worker_pids()))

    def _spawn(self, slot: _Slot, now: float) -> None:
        assert self._socket is not None
        config_fd = self._config_descriptor()
        read_end, write_end = os.pipe()
        fds = [self._socket.fileno(), write_end, config_fd]
        cmd = [sys.executable, "-m", "davserver.worker", "--home", str(self.config.home.root), "--bind", self.bind,
               "--listen-fd", str(self._socket.fileno()), "--ready-fd", str(write_end), "--parent", str(os.getpid()),
               "--config-fd", str(config_fd)]
        if self._turns >= 0:
            fds.append(self._turns)
            cmd += ["--turns-fd", str(self._turns), "--slot", str(slot.number), "--workers", str(self.workers)]
        if self._enrolment_socket is not None:
            fds.append(self._enrolment_socket.fileno())
            cmd += ["--enrolment-fd", str(self._enrolment_socket.fileno())]
        try:
            env = None if self._metrics_dir is None else {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir}
            slot.proc = subprocess.Popen(cmd, pass_fds=fds, env=env)  # noqa: S603 - our own interpreter and module
        except OSError:
            os.close(read_end)
            slot.proc = None
            raise
        finally:
            os.close(write_end)
        slot.pipe, slot.message, slot.ready, slot.started = read_end, b"", False, now
        slot.last_beat = now
        slot.pids.append(slot.proc.pid)

    def _config_descriptor(self) -> int:
        """A descriptor holding `config_text` (a memfd; elsewhere an unlinked temp file),
        made once and passed to every worker, which reads it from offset 0 with pread."""
        if self._config_fd < 0:
            data = self.config_text.encode("utf-8")
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("davserver-config")
            else:  # pragma: no cover - not Linux
                fd = os.dup(tempfile.TemporaryFile().fileno())  # noqa: SIM115 - the descriptor outlives it
            _write_all(fd, data)
            self._config_fd = fd
        return self._config_fd

    def _config_changed_on_disk(self) -> None:
        """Log once (per changed text) that davserver.yaml differs from the text the
        workers run: a worker restarted now still runs the text the supervisor started with."""
        try:
            text = self.config.home.config_file.read_text(encoding="utf-8")
        except OSError:
            return
        if text != self.config_text and text != self._config_change_logged:
            self._config_change_logged = text
            log.warning("davserver.yaml changed since start; restart the service to apply it "
                        "(the restarted worker runs the configuration the others run)")

    def _read_pipes(self, timeout: float) -> None:
        """Read what the workers said on their ready pipes (waiting up to `timeout` s)."""
        pipes = {slot.pipe: slot for slot in self._slots if slot.pipe is not None}
        if not pipes:
            if timeout > 0:
                self._stopping.wait(timeout)
            return
        readable, _, _ = select.select(list(pipes), [], [], timeout)
        for fd in readable:
            slot = pipes[fd]
            chunk = os.read(fd, 4096)
            if chunk:
                slot.last_beat = time.monotonic()
            if slot.ready:  # heartbeats, until the worker ends (EOF)
                if not chunk:
                    os.close(fd)
                    slot.pipe = None
                continue
            slot.message += chunk.replace(HEARTBEAT, b"")
            if chunk and not slot.message.endswith(b"\n"):
                continue
            if not chunk or not slot.message.startswith(b"ready"):  # it ended, or could not start
                os.close(fd)
                slot.pipe = None
            said = slot.message.decode("utf-8", "replace").strip()
            if said == "ready":
                slot.ready = True
                log.info("worker %d serving: pid %d, %.2f s after its start", slot.number,
                         slot.proc.pid if slot.proc else -1, time.monotonic() - slot.started)
            elif said.startswith("error\t"):
                log.error("worker %d (pid %s) could not start: %s", slot.number,
                          slot.proc.pid if slot.proc else "-", said.partition("\t")[2])

    def _death_message(self, slot: _Slot) -> str:
        said = slot.message.decode("utf-8", "replace").strip()
        if said.startswith("error\t"):
            return said.partition("\t")[2]
        status = slot.proc.poll() if slot.proc is not None else None
        return f"a worker process exited at start ({_status(status)}); its output is above"

    # --- running -------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The PIDs of the workers running now."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    def workers_alive(self) -> int:
        """How many workers run now and said they serve (metrics' readiness)."""
        return sum(1 for s in self._slots if s.ready and s.proc is not None and s.proc.poll() is None)

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask for a stop, SIGHUP for a reload: both only set a flag the
        supervising loop (or the start, which stops the workers it started) acts on, so a
        signal that comes while the workers start is never the default action (death by
        SIGTERM/SIGHUP, with the metrics directory left behind). Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return

        def _terminate(signum: int, frame: Any) -> None:
            self._stopping.set()

        def _hangup(signum: int, frame: Any) -> None:
            self._reload_requested = True

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        signal.signal(signal.SIGHUP, _hangup)

    def serve_forever(self) -> None:
        """Supervise until SIGTERM or SIGINT (its own signal handlers, installed here), then
        stop the workers (each drains) and raise KeyboardInterrupt. A SIGHUP that came
        while the workers started is forwarded now."""
        self._install_signal_handlers()
        if not self._slots[0].pids:
            self.start()
        try:
            while not self._stopping.is_set():
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self._read_pipes(_POLL_SECONDS)
                self._reap(time.monotonic())
        finally:
            self.stop()
        raise KeyboardInterrupt

    def _reap(self, now: float) -> None:
        """Restart the workers that died, with the back-off of :func:`restart_delay`."""
        for slot in self._slots:
            if self._stopping.is_set():
                return
            if slot.proc is not None:
                status = slot.proc.poll()
                if status is None:
                    if slot.ready and now - slot.started >= STABLE_SECONDS:
                        slot.quick_deaths = 0
                    self._check_heartbeat(slot, now)
                    continue
                self._exited(slot.proc.pid)
                self._sweep_due.set()  # the uploads it was writing are unlocked now
                lived = now - slot.started
                slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_SECONDS else 1
                delay = restart_delay(slot.quick_deaths)
                slot.restart_at = now + delay
                if slot.pipe is not None:
                    self._read_pipes(0.0)
                    if slot.pipe is not None:
                        os.close(slot.pipe)
                        slot.pipe = None
                if delay:
                    log.error("worker %d (pid %d) %s after %.1f s; it died %d times in a row within %.0f s of "
                              "its start: restarting in %.0f s", slot.number, slot.proc.pid, _status(status),
                              lived, slot.quick_deaths, STABLE_SECONDS, delay)
                else:
                    log.error("worker %d (pid %d) %s after %.1f s: restarting it", slot.number, slot.proc.pid,
                              _status(status), lived)
                slot.proc = None
            if slot.proc is None and now >= slot.restart_at:
                self._config_changed_on_disk()
                try:
                    self._spawn(slot, now)
                except OSError as exc:
                    slot.quick_deaths += 1
                    slot.restart_at = now + max(1.0, restart_delay(slot.quick_deaths))
                    log.error("could not start worker %d: %s", slot.number, exc)
                else:
                    log.info("worker %d restarted: pid %d", slot.number, slot.pids[-1])

    def _check_heartbeat(self, slot: _Slot, now: float) -> None:
        """SIGKILL a running worker that sent nothing for ``server.worker_heartbeat_seconds``
        (stopped, or hung so that even its heartbeat thread cannot run): its connections
        would hang and it would still count as alive. The next look reaps and replaces it."""
        limit = self.config.server.worker_heartbeat_seconds
        if slot.proc is None or now - slot.last_beat < limit:
            return
        # Our own view may be stale (this loop was busy): read what is waiting first.
        if slot.pipe is not None:
            self._read_pipes(0.0)
            if time.monotonic() - slot.last_beat < limit:
                return
        log.error("worker %d (pid %d) sent no heartbeat for %.0f s (server.worker_heartbeat_seconds: %d): "
                  "it is stopped or hung; killing it with SIGKILL and starting another", slot.number,
                  slot.proc.pid, now - slot.last_beat, limit)
        with contextlib.suppress(ProcessLookupError):
            slot.proc.kill()
        slot.last_beat = now  # once: it is reaped at the next look

    def _exited(self, pid: int) -> None:
        from . import metrics

        hook: Callable[..., object] | None = getattr(metrics, "worker_exited", None)
        if hook is not None and self._metrics_dir is not None:
            try:
                hook(pid, directory=self._metrics_dir)
            except Exception:  # noqa: BLE001 - metrics must never take the supervisor down
                log.exception("metrics: worker_exited(%d) failed", pid)

    def _maintain(self) -> None:
        while not self._stopping.is_set():
            if self._sweep_due.is_set():
                self._sweep_due.clear()
                try:
                    sweep_leftover_uploads(self.config)
                except Exception:  # noqa: BLE001 - maintenance must never take the supervisor down
                    log.exception("sweeping leftover uploads failed")
            if self._maintenance is not None:
                self._maintenance.run_due()
            self._sweep_due.wait(_MAINTAIN_SECONDS)

    def reload(self) -> dict[str, bool]:
        """Forward SIGHUP to every worker (each reopens the audit log and re-reads its
        certificate, CRL and accounts: server.py ``DavServer.reload``). Returns
        ``{"workers": True}`` when every running worker was signalled."""
        signalled = True
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                signalled = False
        log.info("reload: SIGHUP forwarded to %d worker(s)", len(self.worker_pids()))
        return {"workers": signalled}

    # --- stop ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, SIGTERM every worker, wait until each drained (within
        ``server.shutdown_timeout`` + ``_KILL_GRACE_SECONDS``, then SIGKILL), release
        the sockets and the metrics directory. Idempotent."""
        with self._lock:
            self._stopping.set()
            self._sweep_due.set()  # wakes the maintenance thread, which sees the stop and ends
            # Ours first: once the workers closed theirs, a new connection is refused, not queued.
            self._close_sockets()
            procs = [s.proc for s in self._slots if s.proc is not None]
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.config.server.shutdown_timeout + _KILL_GRACE_SECONDS
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("worker pid %d did not stop within server.shutdown_timeout: killed", proc.pid)
                    proc.kill()
                    proc.wait()
                self._exited(proc.pid)
            for slot in self._slots:
                slot.proc = None
                if slot.pipe is not None:
                    os.close(slot.pipe)
                    slot.pipe = None
            if self.metrics_listener is not None:
                self.metrics_listener.stop()
                self.metrics_listener = None
            self._remove_metrics_dir()

    def _remove_metrics_dir(self) -> None:
        """Remove the workers' private ``PROMETHEUS_MULTIPROC_DIR`` (a stop, a failed start)."""
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None

    def _close_sockets(self) -> None:
        for sock in (self._socket, self._enrolment_socket):
            if sock is not None:
                sock.close()
        self._socket = self._enrolment_socket = None
        if self._config_fd >= 0:
            os.close(self._config_fd)
            self._config_fd = -1
        if self._turns >= 0:
            os.close(self._turns)
            self._turns = -1


def remove_dead_metrics_dirs(tmp: str | None = None) -> list[str]:
    """Remove the metrics directories (``METRICS_DIR_PREFIX``) in the temp folder `tmp`
    that are ours (this user's) and whose supervisor PID no longer runs: left by a
    supervisor killed with SIGKILL. Returns the names removed."""
    folder = tmp if tmp is not None else tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = re.fullmatch(re.escape(METRICS_DIR_PREFIX) + r"(\d+)-\w+", name)
        if m is None:
            continue
        path = os.path.join(folder, name)
        try:
            if os.lstat(path).st_uid != os.getuid() or _alive(int(m.group(1))):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ping_store(config: Config) -> None:
    """StartupError, as the single server says it (server.py), when the state store does
    not answer: before binding, not as every worker's failure to start."""
    from .store import StoreUnavailable, open_store, unavailable_at_start

    store = open_store(config.state)
    try:
        store.ping()
    except StoreUnavailable as exc:
        raise StartupError(unavailable_at_start(config.state, exc)) from None
    finally:
        store.close()


def _status(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
