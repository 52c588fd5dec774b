"""A/B two davserver source trees: is a change faster, and by how much of the server's CPU?

    git worktree add /tmp/before HEAD~1                      # the tree to compare against
    python bench/ab.py /tmp/before .                         # get_big, get_small; 3 rounds
    python bench/ab.py /tmp/before . --workloads propfind,propfind4,new_conn --rounds 5
    python bench/ab.py /tmp/before . --workloads get_small_c1,get_small_c32 --size-mib 64

Each tree runs as `python -m davserver.cli serve` with PYTHONPATH set to the tree, on the
same data and instance (made by bench/servers.py), and the two take turns on every
workload (A B A B …). Besides the workload's own number it prints the server's CPU time
(user + system, from /proc) spent on it: on a shared VM the throughput of one run can move
by a third, while the CPU a server spends per request or per byte moves much less.

The instance is made by the first tree's key manager, so its configuration has only keys
that both trees know when the first tree is the older one. Same needs as bench/run.py
(curl, ab, root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import clients
from servers import DavServerProc, Fixture, make_fixture

WORKLOADS = ("get_big", "put_big", "get_small", "propfind", "propfind4", "new_conn")


class TreeServer(DavServerProc):
    """davserver from a given source tree."""

    def __init__(self, fx: Fixture, tree: Path, label: str) -> None:
        self.name = self.label = label
        super().__init__(fx)
        self.tree = tree

    def command(self) -> list[str]:
        return ["env", f"PYTHONPATH={self.tree}", *super().command()]


def cpu_seconds(server: TreeServer) -> float:
    """The server's CPU so far: its process and its worker processes (servers.tree_cpu_seconds)."""
    return server.cpu_seconds()


def run(workload: str, server: TreeServer, seconds: float) -> float:
    if workload == "get_big":
        return clients.get_big(server)
    if workload == "put_big":
        return clients.put_big(server)
    if workload == "get_small":
        return clients.ab_small(server, seconds)
    if workload.startswith("get_small_c") and workload[len("get_small_c"):].isdigit():
        return clients.ab_small(server, seconds, concurrency=int(workload[len("get_small_c"):]))
    if workload == "propfind":
        return clients.propfind_latency(server, 30)
    if workload == "propfind4":
        return clients.propfind_rate(server, seconds)
    if workload == "new_conn":
        return clients.new_connections(server, seconds)
    raise SystemExit(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)}, get_small_cN)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree_a", type=Path, help="source tree A (a folder holding davserver/)")
    parser.add_argument("tree_b", type=Path, help="source tree B")
    parser.add_argument("--workloads", default="get_big,get_small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the timed phases")
    parser.add_argument("--size-mib", type=int, default=512, help="size of the big file")
    args = parser.parse_args()
    trees = [args.tree_a.resolve(), args.tree_b.resolve()]
    for tree in trees:
        if not (tree / "davserver" / "__init__.py").is_file():
            raise SystemExit(f"{tree}: no davserver/ package there")
    workloads = args.workloads.split(",")
    os.environ["PYTHONPATH"] = str(trees[0])  # the instance is made by tree A's key manager
    work = Path(tempfile.mkdtemp(prefix="davbench-ab-"))
    os.chdir(work)  # `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
    try:
        fx = make_fixture(work, args.size_mib << 20)
        servers = [TreeServer(fx, tree, label) for tree, label in zip(trees, ("A", "B"), strict=True)]
        values: dict[tuple[str, str], list[float]] = {(s.name, w): [] for s in servers for w in workloads}
        cpu: dict[tuple[str, str], list[float]] = {(s.name, w): [] for s in servers for w in workloads}
        try:
            for server in servers:
                server.start()
            for round_ in range(1, args.rounds + 1):
                for workload in workloads:
                    for server in servers:
                        clients.warm_up(server)
                        before = cpu_seconds(server)
                        value = run(workload, server, args.seconds)
                        used = cpu_seconds(server) - before
                        values[(server.name, workload)].append(value)
                        cpu[(server.name, workload)].append(used)
                        print(f"round {round_} {workload:12} {server.name}: {value:10.1f}  server CPU {used:6.2f} s",
                              flush=True)
        finally:
            for server in servers:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nA = {trees[0]}\nB = {trees[1]}\nmedians over the rounds (MB/s, req/s, conn/s; propfind in ms), "
          "and the server's CPU seconds per run")
    for workload in workloads:
        a, b = (statistics.median(values[(n, workload)]) for n in ("A", "B"))
        ca, cb = (statistics.median(cpu[(n, workload)]) for n in ("A", "B"))
        print(f"{workload:12} A {a:10.1f}  B {b:10.1f}  B/A {b / a:5.2f}   CPU A {ca:6.2f} s  B {cb:6.2f} s")


if __name__ == "__main__":
    sys.exit(main())
