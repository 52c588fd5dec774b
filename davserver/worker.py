"""One worker process of the supervisor (supervisor.py): a full server (server.py
``DavServer(role="worker")``) on the listening sockets the supervisor bound.

Started as a fresh interpreter (``python -m davserver.worker``), never forked, so it
inherits no threads or held locks. The supervisor passes the sockets' descriptors
(``--listen-fd``, ``--enrolment-fd``) and a pipe (``--ready-fd``) on which the worker
writes one line once it serves, ``ready``, or why it could not start, ``error<TAB>``
and the one line the CLI would print; from its first moment a thread of its own writes
a heartbeat byte (NUL) on the same pipe every second, busy or not, so the supervisor
can tell a stopped or hung worker from a busy one (``server.worker_heartbeat_seconds``).
Its configuration is the exact davserver.yaml text the supervisor parsed at start
(``--config-fd``: parsed here with the same home, never re-read from disk), so every
worker, a restarted one too, runs the configuration the supervisor started with.
Signals: SIGTERM drains (in-flight requests get
``server.shutdown_timeout``; a second SIGTERM, as systemd's stop sends one to every
process of the service besides the supervisor's, changes nothing) and exits 0; SIGHUP reloads (``DavServer.reload``);
SIGINT is ignored (a Ctrl-C at the terminal reaches every process of the group: the
supervisor alone decides); the worker ends with the supervisor (``PR_SET_PDEATHSIG``),
so a supervisor killed by SIGKILL leaves no worker serving on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["TurnTakingSocket", "main"]

#: <linux/prctl.h>: deliver a signal to this process when its parent exits.
_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor `parent` exits; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the supervisor's SIGTERM alone ends it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


class TurnTakingSocket(socket.socket):
    """The shared listening socket, accepting new connections in turns.

    Every worker waits on the one socket, and the kernel wakes all of them for each new
    connection: the first to call accept() wins, so a few connections opened at once
    (a benchmark's, a sync client's) often land 3 to 1 on two workers, and one core
    idles. Here the workers count their accepts in one shared counter (`turns`: 8 bytes
    of a memfd from the supervisor, the same for all) and the worker in `slot` accepts
    when ``count % workers == slot``; the others wait up to ``TURN_WAIT_SECONDS`` for it
    (in steps that release the interpreter lock) and then take the connection
    themselves, so a busy, dead or restarting worker delays a connection by at most that
    and never loses one. Not its turn and another took it: ``accept`` raises
    BlockingIOError (EAGAIN), which cheroot treats as nothing to accept
    (``cheroot/connections.py`` ``_from_server_socket``). Updates are not atomic across
    processes; a lost increment only shifts the turns by one.
    """

    #: How long a worker leaves a new connection to the worker whose turn it is.
    TURN_WAIT_SECONDS = 0.002
    _STEP_SECONDS = 0.0002

    def __init__(self, fileno: int, turns: mmap.mmap, slot: int, workers: int) -> None:
        super().__init__(fileno=fileno)
        self.turns, self.slot, self.workers = turns, slot, workers

    def _count(self) -> int:
        return int(struct.unpack_from("=Q", self.turns, 0)[0])

    def accept(self) -> tuple[socket.socket, Any]:
        """``socket.accept()`` in turns (see the class docstring): the new connection and the
        peer address. Raises BlockingIOError (EAGAIN) when it was not this worker's turn and
        another worker took the connection meanwhile, or when none is pending."""
        seen = self._count()
        if seen % self.workers != self.slot:
            deadline = time.monotonic() + self.TURN_WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(self._STEP_SECONDS)
                if self._count() != seen:
                    raise BlockingIOError(errno.EAGAIN, "taken in its turn by another worker")
        conn, address = super().accept()
        struct.pack_into("=Q", self.turns, 0, (self._count() + 1) % (1 << 63))
        return conn, address


#: Seconds between two heartbeats (the supervisor's limit is server.worker_heartbeat_seconds >= 2).
HEARTBEAT_SECONDS = 1.0


def _say(fd: int, line: str) -> None:
    """Tell the supervisor `line` on the ready pipe in one write (atomic with the
    heartbeats, being under PIPE_BUF). The pipe stays open: the heartbeat thread writes
    on it until the process ends."""
    with contextlib.suppress(OSError):
        os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace")[:512])


def _heartbeat(fd: int) -> None:
    """Write one NUL byte on the pipe `fd` every HEARTBEAT_SECONDS until the pipe is gone
    (the supervisor ended: EPIPE; or the fd closed at a failed start: EBADF)."""
    while True:
        try:
            os.write(fd, b"\0")
        except OSError:
            return
        time.sleep(HEARTBEAT_SECONDS)


def read_config_fd(fd: int) -> str:
    """The text held by the descriptor `fd` (the supervisor's memfd), read from offset 0
    with pread (the offset is shared with the other workers). Closes `fd`."""
    parts = []
    offset = 0
    try:
        while chunk := os.pread(fd, 65536, offset):
            parts.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return b"".join(parts).decode("utf-8")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m davserver.worker")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--enrolment-fd", type=int, default=-1)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--config-fd", type=int, required=True)
    parser.add_argument("--turns-fd", type=int, default=-1)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM; returns the exit status (0; 2 when the server could not start)."""
    args = _arguments(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(args.parent)
    threading.Thread(target=_heartbeat, args=(args.ready_fd,), name="davserver-heartbeat", daemon=True).start()
    from .cli import _failure, _setup_logging
    from .config import Home, config_from_text
    from .server import DavServer, tune_allocator

    _setup_logging()
    for handler in logging.getLogger().handlers:  # which worker said it: the supervisor logs each one's PID
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    tune_allocator()
    listen: socket.socket
    if args.turns_fd >= 0 and args.workers > 1:
        listen = TurnTakingSocket(args.listen_fd, mmap.mmap(args.turns_fd, 8), args.slot, args.workers)
        os.close(args.turns_fd)  # the mapping stays
    else:
        listen = socket.socket(fileno=args.listen_fd)
    enrolment = socket.socket(fileno=args.enrolment_fd) if args.enrolment_fd >= 0 else None
    try:
        home = Home(args.home)
        config = config_from_text(read_config_fd(args.config_fd), home, str(home.config_file))
        server = DavServer(config, bind=args.bind, listen_socket=listen, enrolment_socket=enrolment, role="worker")
        server.start()
    except Exception as exc:  # noqa: BLE001 - told to the supervisor as the CLI would say it
        _say(args.ready_fd, f"error\t{_failure(exc)}")
        return 2

    def _terminate(signum: int, frame: Any) -> None:
        # Once: systemd's stop (KillMode=control-group) signals every process of the
        # service, then the supervisor forwards its own; a second KeyboardInterrupt
        # inside stop() would cut the drain short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    def _reload(signum: int, frame: Any) -> None:
        # On its own thread: the handler interrupts the main thread anywhere (cli.py _run).
        threading.Thread(target=server.reload, name="davserver-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _reload)
    _say(args.ready_fd, "ready")
    with contextlib.suppress(KeyboardInterrupt):
        server.run_until_stopped()
    return 0


if __name__ == "__main__":  # pragma: no cover - the supervisor's entry point
    sys.exit(main())
