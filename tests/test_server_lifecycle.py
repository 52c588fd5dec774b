"""A DavServer's life (server.py): constructing one takes nothing (no descriptor, thread,
file or directory); ``start()`` takes everything; a start that fails at any step releases
all it took (descriptors, threads, listening sockets) with the error that names the
setting, and the corrected server then starts on the same port; one server starts, stops
and starts again."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from davserver.config import load_config
from davserver.errors import StartupError
from davserver.server import DavServer, port_is_free

from .conftest import Instance, free_port, session_for


def _fds() -> dict[int, str]:
    """This process's open descriptors and what each is (``/proc/self/fd``)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # noqa: PERF203 - the listing's own descriptor, closed since
            continue
    return found


@contextmanager
def nothing_left() -> Iterator[None]:
    """Fails unless every descriptor and thread opened within is closed or ended again
    (threads get 10 s to end: cheroot's pool joins its workers on stop)."""
    gc.collect()
    fds, threads = _fds(), set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        new_fds = {fd: what for fd, what in _fds().items() if fds.get(fd) != what}
        new_threads = sorted(t.name for t in set(threading.enumerate()) - threads if t.is_alive())
        if (not new_fds and not new_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert new_fds == {}, "descriptors left open"
    assert new_threads == [], "threads left running"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root`: (mtime in ns, size in bytes) by relative path."""
    return {str(p.relative_to(root)): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in root.rglob("*")}


def _edit(inst: Instance, change: Callable[[dict[str, Any]], None]) -> None:
    raw = yaml.safe_load(inst.home.config_file.read_text())
    change(raw)
    inst.home.config_file.write_text(yaml.safe_dump(raw))


@contextmanager
def _listening(port: int) -> Iterator[None]:
    """Another program's socket listening on 127.0.0.1:`port`."""
    with socket.create_server(("127.0.0.1", port)):
        yield


def _serves(inst: Instance, port: int) -> None:
    """A DavServer of the instance's configuration starts on `port`, answers alice, stops."""
    server = DavServer(load_config(inst.home), bind="127.0.0.1", port=port)
    server.start()
    try:
        assert server.port == port
        assert session_for(inst, "alice").get(f"https://127.0.0.1:{port}/files/", timeout=30).status_code == 200
    finally:
        server.stop()


def test_constructing_a_server_takes_nothing(inst: Instance, tmp_path: Path) -> None:
    """No descriptor, thread, file or folder; the audit log and the SQLite state database
    appear at start (the twin)."""
    audit, db = tmp_path / "logs" / "audit.log", tmp_path / "db" / "state.db"
    _edit(inst, lambda raw: raw.update(audit={"file": str(audit)}, state={"backend": "sqlite", "path": str(db)}))
    config = load_config(inst.home)
    before = _tree(tmp_path)
    gc.collect()
    fds, threads = _fds(), set(threading.enumerate())
    server = DavServer(config, bind="127.0.0.1", port=0)
    assert _fds() == fds and set(threading.enumerate()) == threads
    assert _tree(tmp_path) == before and not audit.parent.exists() and not db.parent.exists()
    with pytest.raises(AttributeError, match=r"DavServer\.store exists once start\(\) or prepare\(\) has run"):
        server.store  # noqa: B018
    assert server.port == 0 and server.readiness() == "not serving"
    server.stop()  # nothing to stop: a no-op
    server.start()
    try:
        assert audit.is_file() and db.is_file() and server.port != 0
        assert server.readiness() is None
    finally:
        server.stop()


def _redis_gone(raw: dict[str, Any], ports: dict[str, int]) -> None:
    raw["state"] = {"backend": "redis", "url": f"redis://127.0.0.1:{ports['closed']}/0"}


def _audit_unwritable(raw: dict[str, Any], ports: dict[str, int]) -> None:
    raw["audit"] = {"file": "config/davserver.yaml/audit.log"}  # under a file: no folder can be made


def _bad_issuer(raw: dict[str, Any], ports: dict[str, int]) -> None:
    raw["identity"] = {"subject_rules": [{"issuer": "config/davserver.yaml", "match": "cn"}]}


def _enrolment(raw: dict[str, Any], ports: dict[str, int]) -> None:
    raw["enrolment"] = {"enabled": True, "port": ports["enrolment"]}


def _metrics(raw: dict[str, Any], ports: dict[str, int]) -> None:
    raw["metrics"] = {"enabled": True, "bind": "127.0.0.1", "port": ports["metrics"]}


def _nothing(raw: dict[str, Any], ports: dict[str, int]) -> None:
    return


#: Each step of the start that can fail: the configuration that breaks it, the port another
#: program holds ("server", "enrolment", "metrics" or None), the error expected. The step's
#: twin is the instance's own configuration (or the same one, the port free again).
FAILURES: dict[str, tuple[Callable[[dict[str, Any], dict[str, int]], None], str | None, type[Exception], str]] = {
    "state store unreachable": (_redis_gone, None, StartupError,
                                r"^state\.url: state store \(redis\) unavailable: .*\(start Redis or fix the URL\)$"),
    "audit log unwritable": (_audit_unwritable, None, OSError, r"davserver\.yaml"),
    "subject rule issuer": (_bad_issuer, None, StartupError,
                            r"^identity\.subject_rules\[0\]\.issuer: .* holds no certificate"),
    "server port taken": (_nothing, "server", StartupError, r"^server\.port: 127\.0\.0\.1:\d+ is already in use "
                          r"\(stop the other server or pick --port\)$"),
    "enrolment port taken": (_enrolment, "enrolment", StartupError, r"^enrolment\.port: cannot listen on "),
    "metrics port taken": (_metrics, "metrics", StartupError,
                           r"^metrics\.port: 127\.0\.0\.1:\d+ is already in use"),
}


@pytest.mark.parametrize("step", FAILURES)
def test_a_failed_start_releases_everything_and_the_twin_starts(inst: Instance, step: str) -> None:
    breaks, taken, error, says = FAILURES[step]
    ports = {"server": free_port(), "closed": free_port(), "enrolment": free_port(), "metrics": free_port()}
    original = inst.home.config_file.read_text()
    _edit(inst, lambda raw: breaks(raw, ports))
    config = load_config(inst.home)
    with _listening(ports[taken]) if taken else _nothing_held():
        with nothing_left():
            server = DavServer(config, bind="127.0.0.1", port=ports["server"])
            with pytest.raises(error, match=says):
                server.start()
            server.stop()  # after a failed start: nothing more to do
        if taken != "server":
            assert port_is_free("127.0.0.1", ports["server"]), "the main listener is closed"
    if taken is None:
        inst.home.config_file.write_text(original)
    _serves(inst, ports["server"])


@contextmanager
def _nothing_held() -> Iterator[None]:
    yield


def test_one_server_starts_stops_and_starts_again(inst: Instance) -> None:
    """The same DavServer object twice on the same port, with the enrolment and metrics
    listeners; nothing of either run is left after the last stop."""
    ports = {"enrolment": free_port(), "metrics": free_port()}
    _edit(inst, lambda raw: _enrolment(raw, ports))
    _edit(inst, lambda raw: _metrics(raw, ports))
    port = free_port()
    with nothing_left():
        server = DavServer(load_config(inst.home), bind="127.0.0.1", port=port)
        for _ in range(2):
            server.start()
            try:
                assert server.port == port and server.enrolment is not None and server.metrics_listener is not None
                assert server.enrolment.port == ports["enrolment"] and server.metrics_listener.port == ports["metrics"]
                with session_for(inst, "alice") as client:
                    assert client.get(f"https://127.0.0.1:{port}/files/", timeout=30).status_code == 200
            finally:
                server.stop()
            assert all(port_is_free("127.0.0.1", p) for p in (port, *ports.values()))
