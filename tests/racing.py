"""Races between PROCESSES: fresh interpreters (``spawn``: nothing shared but what the
test hands them, such as a store's file or URL), released together by a barrier.

Used by test_store_secrets.py and test_workers_race.py.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

SPAWN = multiprocessing.get_context("spawn")
WAIT = 120.0  # seconds a barrier or a result may take on a loaded machine


def run_spawned(target: Callable[..., None], args: list[tuple[Any, ...]], count: int) -> list[Any]:
    """One spawned process per entry of `args`, each running ``target(*entry, barrier,
    results)``: `barrier` a ``Barrier`` for all of them, `results` a ``Queue``. Returns the
    first `count` items they put on `results`, in the order they came (each within WAIT
    seconds, else ``queue.Empty``); then every process has ended (killed if not within
    WAIT seconds) and each must have exited 0 (AssertionError with the exit codes)."""
    barrier = SPAWN.Barrier(len(args))
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*entry, barrier, results)) for entry in args]
    for p in procs:
        p.start()
    received: list[Any] = []
    try:
        for _ in range(count):
            received.append(results.get(timeout=WAIT))
    finally:
        for p in procs:
            p.join(timeout=WAIT)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return received
