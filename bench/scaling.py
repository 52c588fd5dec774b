"""How davserver's costs grow: PROPFIND Depth 1 with the number of members, GET and PUT with
the file's size, and the 4 KiB GET rate with the number of keep-alive clients.

    python bench/scaling.py                # full: 100 … 50,000 members, 1 MiB … 4 GiB, 1 … 128 clients
    python bench/scaling.py --quick        # smoke run: up to 10,000 members and 256 MiB, 3 s ab phases
    python bench/scaling.py --servers davserver,apache      # peers too (openssl s_server: GET only)
    python bench/scaling.py --workloads propfind --members 100,1000,5000
    python bench/scaling.py --plot-only    # redraw the PNGs (and the .md) from bench/scaling.json
    python bench/scaling.py --workloads workers             # worker processes: 1, 2, auto → bench/scaling-workers.*
    python bench/scaling.py --workloads workers --worker-counts 1,2,4,auto

Costs must grow linearly with members and bytes, and the request rate must not fall as
clients are added. Measured (davserver's default configuration, full stack: client
certificate, password, audit log, started by bench/servers.py as in bench/run.py):

1. PROPFIND Depth 1 (the named live properties of bench/clients.py) on folders of 100,
   1,000, 10,000 and 50,000 files of 0.5-4 KiB, one keep-alive client: median of
   20/20/7/5 requests after 3/3/2/1 warm-up requests, each answer checked (207 and
   members + 1 responses); ms, µs per member, response size, server RSS.
2. GET and PUT with curl (client certificate + Basic auth) of 1 MiB, 16 MiB, 256 MiB,
   1 GiB and 4 GiB files of random bytes: median MB/s over 3 runs (2 at 4 GiB), server RSS.
   The file is in the page cache; each PUT goes to a new name that is then deleted and
   followed by sync(), as in bench/run.py.
3. 4 KiB GET, `ab -k` with 1, 8, 32 and 128 clients for 10 s: req/s, median over 3
   interleaved rounds; server RSS. davserver has 32 worker threads by default, so beyond
   32 clients requests queue for a worker (idle keep-alive connections hold none).
4. Worker processes (`server.workers`, given as `serve --workers`): 1, 2 and auto (one
   per usable CPU), each with (a) 4 KiB GET, `ab -k -c 8`, and (b) PROPFIND Depth 1 of
   the 1,000-file folder with 4 keep-alive clients (`ab -k -c 4 -m PROPFIND`, the
   cheapest client: a third of the Python client's CPU), 10 s each, 3 interleaved rounds.
   Per point: req/s; the server's CPU seconds per request (user + system of the
   supervisor and every worker, from /proc) and how many cores it kept busy; each
   worker's share of that CPU and of the connections (a shared accept socket may hand
   them out unevenly); the client's own CPU share of the machine (it runs on the same
   cores); RSS and PSS of every worker and of the supervisor, after the start and
   after the load. Verdicts: 2 workers ≥ 1.6 × 1 worker on both workloads. Written to
   bench/scaling-workers.* and docs/img/scaling-workers.png unless other workloads run
   with it.

Every point gets a freshly started server, warmed with one authenticated GET, so each
point starts from the same state (memory, caches) whatever ran before it. Server RSS is VmRSS summed over the
server's processes, sampled every 20 ms while the point runs ("idle" is taken just after
the warm-up GET). Before each point the runner waits, up to --max-wait seconds (180; 0
with --quick), for other processes to leave the CPUs idle.

Writes bench/scaling.json (raw values), bench/scaling.md (tables and verdicts, also on
stdout) and docs/img/scaling-{propfind,transfer,concurrency}.png; --quick writes
bench/scaling-quick.* and bench/scaling-quick-*.png instead. Needs matplotlib for the
PNGs (the measurements are written without it), plus what bench/run.py needs: curl, ab,
openssl (and apache2 for --servers apache), davserver installed in the running Python,
and root. Full run: about 6-8 minutes on 2 idle cores, davserver only (--quick: 1 minute).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clients
import report
import run
from servers import (
    BIG_NAME,
    Apache,
    DavServerProc,
    Fixture,
    OpenSSLServer,
    Server,
    StockWsgiDAV,
    _write_random,
    make_fixture,
    memory_kib,
    require_tools,
    tree_cpu_seconds,
)

BENCH = Path(__file__).resolve().parent
DOCS_IMG = BENCH.parent / "docs" / "img"
MiB = 1 << 20
GiB = 1 << 30
CLIENTS = (1, 8, 32, 128)
DAV_THREADS = 32  # davserver's default server.threads
SERVER_KINDS: dict[str, type[Server]] = {
    "davserver": DavServerProc,
    "wsgidav": StockWsgiDAV,
    "apache": Apache,
    "openssl": OpenSSLServer,
}
DAV_PEERS = ("davserver", "wsgidav", "apache")  # openssl s_server: no auth, no keep-alive, no PUT or PROPFIND
LABELS = dict(report.SERVERS)
WORKLOADS = ("propfind", "transfer", "concurrency", "workers")
WORKER_COUNTS = ("1", "2", "auto")
WORKER_KINDS = ("get", "propfind")  # 4 KiB GET with WORKER_GET_CLIENTS, PROPFIND Depth 1 of 1,000 with 4
WORKER_GET_CLIENTS = 8
WORKER_PROPFIND_CLIENTS = 4
WORKERS_TARGET = 1.6  # 2 workers against 1, both workloads (issue 16)


@dataclasses.dataclass(frozen=True)
class Params:
    members: tuple[int, ...]
    sizes: tuple[int, ...]  # bytes
    seconds: float  # each ab phase
    rounds: int  # of the concurrency sweep and of the workers sweep
    quick: bool
    worker_counts: tuple[str, ...] = WORKER_COUNTS
    workers: str | None = None  # davserver's workers for the other sweeps (None: its configuration's)

    def propfind_requests(self, members: int) -> tuple[int, int]:
        """(warm-up, timed) requests: fewer for big folders, whose answers take seconds."""
        warm = 3 if members <= 1000 else 2 if members <= 10_000 else 1
        timed = 20 if members <= 1000 else 7 if members <= 10_000 else 5
        return warm, max(3, timed // 2) if self.quick else timed

    @staticmethod
    def transfer_runs(size: int) -> int:
        return 2 if size >= 4 * GiB else 3


FULL = Params(
    members=(100, 1000, 10_000, 50_000),
    sizes=(MiB, 16 * MiB, 256 * MiB, GiB, 4 * GiB),
    seconds=10.0,
    rounds=3,
    quick=False,
)
QUICK = Params(members=(100, 1000, 10_000), sizes=(MiB, 16 * MiB, 256 * MiB), seconds=3.0, rounds=1, quick=True)


def size_label(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def members_folder(members: int) -> str:
    return f"members-{members}"


def make_members(data: Path, members: int) -> None:
    """A folder of `members` files of 0.5-4 KiB, like bench/servers.py's 1000-file folder."""
    folder = data / members_folder(members)
    folder.mkdir()
    for i in range(members):
        (folder / f"file-{i:05d}.txt").write_bytes(os.urandom(512 + i % 3584))


def rss_mib(server: Server) -> float:
    return clients.rss_kib(server.pids())[0] / 1024


@contextlib.contextmanager
def fresh(cls: type[Server], fx: Fixture, workers: str | None = None) -> Iterator[Server]:
    """A newly started server, warmed up (credential cache filled), stopped on the way out.
    `workers` goes to davserver (`serve --workers`); None keeps its configuration's."""
    server = DavServerProc(fx, workers=workers) if cls is DavServerProc else cls(fx)
    try:
        server.start()
        if server.name != "openssl":
            clients.warm_up(server)
        yield server
    finally:
        server.stop()


# --- workloads -------------------------------------------------------------------


def _propfind(conn: http.client.HTTPSConnection, path: str, auth: str, members: int) -> int:
    """One PROPFIND Depth 1, checked (207, members + 1 responses); the answer's size in bytes."""
    conn.request(
        "PROPFIND",
        path,
        body=clients.PROPFIND_BODY,
        headers={"Depth": "1", "Authorization": auth, "Content-Type": "application/xml"},
    )
    resp = conn.getresponse()
    body = resp.read()
    entries = clients.count_hrefs(body, members + 1)
    if resp.status != 207 or entries != members + 1:
        raise clients.BenchError(f"PROPFIND of {members} members answered {resp.status} with {entries} entries")
    return len(body)


def measure_propfind(server: Server, members: int, warm: int, timed: int) -> dict[str, Any]:
    ctx, auth = clients.client_context(server.fx), clients._auth(server.fx)
    path = f"/data/{members_folder(members)}/"
    idle = rss_mib(server)
    times: list[float] = []
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=900)
    try:
        with clients.RssSampler(server) as sampler:
            for _ in range(warm):
                size = _propfind(conn, path, auth, members)
            for _ in range(timed):
                t0 = time.perf_counter()
                size = _propfind(conn, path, auth, members)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    median = statistics.median(times)
    return {
        "times_ms": times,
        "median_ms": median,
        "us_per_member": median * 1000 / members,
        "response_bytes": size,
        "rss_idle_mib": idle,
        "rss_peak_mib": sampler.peak_mib,
    }


def measure_transfer(server: Server, op: str, runs: int) -> dict[str, Any]:
    """GET or PUT of the fixture's big file (its size is fx.big_size) through curl, `runs` times."""
    fn = clients.get_big if op == "get" else clients.put_big
    idle = rss_mib(server)
    with clients.RssSampler(server) as sampler:
        values = [fn(server) for _ in range(runs)]
    return {
        "mbps": values,
        "median_mbps": statistics.median(values),
        "rss_idle_mib": idle,
        "rss_peak_mib": sampler.peak_mib,
    }


def measure_rate(server: Server, concurrency: int, seconds: float) -> dict[str, Any]:
    idle = rss_mib(server)
    with clients.RssSampler(server) as sampler:
        rps = clients.ab_small(server, seconds, concurrency)
    return {"rps": rps, "rss_idle_mib": idle, "rss_peak_mib": sampler.peak_mib}


def _memory(server: Server) -> dict[str, Any]:
    """RSS, PSS and USS (KiB) of the supervisor (None with one process) and of each worker."""
    assert server.proc is not None
    workers = server.worker_pids()
    supervisor = None if workers == [server.proc.pid] else memory_kib(server.proc.pid)
    return {"supervisor": supervisor, "workers": [memory_kib(pid) for pid in workers]}


def _others_share(machine0: float, own0: float, client0: float, server_cpu: float, seconds: float) -> float:
    """Share of all CPUs that other processes took while a point ran: the machine's busy time
    less the server's, the client's (reaped children) and the bench's own, over the elapsed time."""
    busy = clients.machine_busy_seconds() - machine0
    ours = server_cpu + (clients._children_cpu() - client0) + (clients.own_cpu_seconds() - own0)
    return max(0.0, busy - ours) / (seconds * len(os.sched_getaffinity(0)))


def measure_workers(server: Server, kind: str, seconds: float) -> dict[str, Any]:
    """One workload against davserver with some worker processes: rate, CPU (server, per worker,
    client), connections per worker, memory per worker."""
    workers = server.worker_pids()
    idle = _memory(server)
    cpu0, each0 = server.cpu_seconds(), [tree_cpu_seconds([pid]) for pid in workers]
    machine0, own0, client0 = clients.machine_busy_seconds(), clients.own_cpu_seconds(), clients._children_cpu()
    with clients.RssSampler(server) as sampler:
        if kind == "get":
            run = clients.ab_small_run(server, seconds, WORKER_GET_CLIENTS)
        else:
            run = clients.ab_propfind_run(server, seconds, WORKER_PROPFIND_CLIENTS)
    cpu = server.cpu_seconds() - cpu0
    others = _others_share(machine0, own0, client0, cpu, run.seconds)
    each = [tree_cpu_seconds([pid]) - c for pid, c in zip(workers, each0, strict=True)]
    if server.worker_pids() != workers:
        raise clients.BenchError(f"worker processes changed during the point: {workers} → {server.worker_pids()}")
    return {
        "workers_n": len(workers),
        "clients": WORKER_GET_CLIENTS if kind == "get" else WORKER_PROPFIND_CLIENTS,
        "rps": run.rate,
        "requests": run.count,
        "seconds": run.seconds,
        "server_cpu": cpu,
        "cpu_ms": cpu * 1000 / run.count,
        "server_cores": cpu / run.seconds,
        "worker_cpu": each,
        "supervisor_cpu": cpu - sum(each) if len(workers) > 1 else 0.0,
        "connections": [sampler.connections.get(pid, 0) for pid in workers],
        "client_cpu": run.client_cpu,
        "client_ms": run.client_cpu * 1000 / run.count,
        "client_share": run.client_share(),
        "others_share": others,
        "memory_idle": idle,
        "memory_loaded": _memory(server),
        "rss_peak_mib": sampler.peak_mib,
    }


def measure_split(servers: list[Server], kind: str, seconds: float) -> dict[str, Any]:
    """The even spread a supervisor should reach, for comparison: N single-process servers on one
    instance (N ports), each with its own ab and 1/N of the clients, run at the same time."""
    n = len(servers)
    per = (WORKER_GET_CLIENTS if kind == "get" else WORKER_PROPFIND_CLIENTS) // n
    idle = [memory_kib(s.worker_pids()[0]) for s in servers]
    cpu0 = [s.cpu_seconds() for s in servers]
    client0 = clients._children_cpu()
    machine0, own0 = clients.machine_busy_seconds(), clients.own_cpu_seconds()
    runs: list[clients.Run | None] = [None] * n
    errors: list[BaseException] = []

    def drive(i: int) -> None:
        try:
            fn = clients.ab_small_run if kind == "get" else clients.ab_propfind_run
            runs[i] = fn(servers[i], seconds, per)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(min(2.0, seconds / 2))
    connections = [sum(s.connections().values()) for s in servers]
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done = [r for r in runs if r is not None]
    each = [s.cpu_seconds() - c for s, c in zip(servers, cpu0, strict=True)]
    client_cpu = clients._children_cpu() - client0
    count, elapsed = sum(r.count for r in done), max(r.seconds for r in done)
    cpus = len(os.sched_getaffinity(0))
    others = _others_share(machine0, own0, client0, sum(each), elapsed)
    return {
        "workers_n": n,
        "clients": per * n,
        "rps": count / elapsed,
        "requests": count,
        "seconds": elapsed,
        "server_cpu": sum(each),
        "cpu_ms": sum(each) * 1000 / count,
        "server_cores": sum(each) / elapsed,
        "worker_cpu": each,
        "supervisor_cpu": 0.0,
        "connections": connections,
        "client_cpu": client_cpu,
        "client_ms": client_cpu * 1000 / count,
        "client_share": client_cpu / (elapsed * cpus),
        "others_share": others,
        "memory_idle": {"supervisor": None, "workers": idle},
        "memory_loaded": {"supervisor": None, "workers": [memory_kib(s.worker_pids()[0]) for s in servers]},
        "rss_peak_mib": 0.0,
    }


# --- the run ---------------------------------------------------------------------


class Runner:
    """Runs the points one by one, records each (or its error) and saves the JSON after each."""

    def __init__(
        self, fx: Fixture, params: Params, servers: list[str], max_wait: float, out: Path, result: dict[str, Any]
    ) -> None:
        self.fx, self.params, self.servers, self.max_wait, self.out = fx, params, servers, max_wait, out
        self.result = result

    def wait_quiet(self) -> float:
        """Start a point only when the machine is quiet (other jobs would skew it), or after --max-wait."""
        t0 = time.monotonic()
        while (busy := clients.cpu_busy(1.0)) > 0.15 and time.monotonic() - t0 < self.max_wait:
            pass
        if time.monotonic() - t0 > 3:
            print(f"  (waited {time.monotonic() - t0:.0f} s for other processes; CPUs now {busy:.0%} busy)", flush=True)
        return busy

    def point(
        self,
        workload: str,
        name: str,
        fx: Fixture,
        key: dict[str, Any],
        measure: Callable[[Server], dict[str, Any]],
        workers: str | None = None,
    ) -> None:
        """One fresh server of kind `name` (davserver: with `workers`, default the sweep's), measured by
        measure(server)."""
        busy = self.wait_quiet()
        t0 = time.monotonic()
        try:
            with fresh(SERVER_KINDS[name], fx, workers or self.params.workers) as server:
                record = measure(server)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # BenchError is a RuntimeError
            record = {"error": str(exc)}
            print(f"  ERROR {workload} {name} {key}: {exc}", flush=True)
        entry = {"server": name, **key, **record, "background_cpu": busy, "point_s": time.monotonic() - t0}
        self.result["raw"][workload].append(entry)
        if "error" not in entry:
            print("  " + describe(workload, entry), flush=True)
        self.save()

    def save(self) -> None:
        self.out.with_suffix(".json").write_text(json.dumps(self.result, indent=2) + "\n")

    def propfind(self) -> None:
        print("PROPFIND Depth 1", flush=True)
        for members in self.params.members:
            make_members(self.fx.data, members)
        for members in self.params.members:
            warm, timed = self.params.propfind_requests(members)
            for name in self.servers:
                if name in DAV_PEERS:
                    self.point(
                        "propfind",
                        name,
                        self.fx,
                        {"members": members, "requests": timed},
                        functools.partial(measure_propfind, members=members, warm=warm, timed=timed),
                    )

    def transfer(self) -> None:
        print("GET and PUT", flush=True)
        biggest = max(self.params.sizes)
        free = shutil.disk_usage(self.fx.data).free
        if free < 2 * biggest + GiB:  # the file, a PUT target of the same size, and a margin
            print(
                f"  skipped: {free / GiB:.1f} GiB free in {self.fx.data}, {(2 * biggest + GiB) / GiB:.1f} GiB needed",
                flush=True,
            )
            return
        for size in self.params.sizes:
            _write_random(self.fx.data / BIG_NAME, size)
            os.sync()  # the file's writeback does not overlap the transfers
            fx = dataclasses.replace(self.fx, big_size=size)
            runs = self.params.transfer_runs(size)
            for op in ("get", "put"):
                for name in self.servers:
                    if op == "get" or name in DAV_PEERS:
                        self.point(
                            "transfer",
                            name,
                            fx,
                            {"op": op, "size": size, "runs": runs},
                            functools.partial(measure_transfer, op=op, runs=runs),
                        )
        (self.fx.data / BIG_NAME).unlink()

    def concurrency(self) -> None:
        print("4 KiB GET keep-alive rate", flush=True)
        for rnd in range(1, self.params.rounds + 1):
            for n in CLIENTS:
                for name in self.servers:
                    if name in DAV_PEERS:
                        self.point(
                            "concurrency",
                            name,
                            self.fx,
                            {"clients": n, "round": rnd},
                            functools.partial(measure_rate, concurrency=n, seconds=self.params.seconds),
                        )


    def split_point(self, n: int, key: dict[str, Any], kind: str) -> None:
        """N fresh single-process davservers on one instance, measured together (measure_split)."""
        busy = self.wait_quiet()
        t0 = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(fresh(DavServerProc, self.fx, "1")) for _ in range(n)]
                record = measure_split(servers, kind, self.params.seconds)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            record = {"error": str(exc)}
            print(f"  ERROR workers davserver {key}: {exc}", flush=True)
        entry = {"server": "davserver", **key, **record, "background_cpu": busy, "point_s": time.monotonic() - t0}
        self.result["raw"]["workers"].append(entry)
        if "error" not in entry:
            print("  " + describe("workers", entry), flush=True)
        self.save()

    def workers(self) -> None:
        print("worker processes", flush=True)
        for rnd in range(1, self.params.rounds + 1):
            for kind in WORKER_KINDS:
                for w in self.params.worker_counts:
                    if w.endswith("x1") and w[:-2].isdigit():
                        self.split_point(int(w[:-2]), {"workers": w, "kind": kind, "round": rnd}, kind)
                        continue
                    self.point(
                        "workers",
                        "davserver",
                        self.fx,
                        {"workers": w, "kind": kind, "round": rnd},
                        functools.partial(measure_workers, kind=kind, seconds=self.params.seconds),
                        workers=w,
                    )


def _mib(kib: float) -> float:
    return kib / 1024


def describe(workload: str, e: dict[str, Any]) -> str:
    if workload == "workers":
        mem = "/".join(f"{_mib(m['rss']):.0f}:{_mib(m['pss']):.0f}" for m in e["memory_loaded"]["workers"])
        return (
            f"workers {e['workers']:>4} ({e['workers_n']}) {e['kind']:8} {e['rps']:8,.1f} req/s  "
            f"server {e['cpu_ms']:.2f} ms CPU/req, {e['server_cores']:.2f} cores  "
            f"per worker CPU {'/'.join(f'{c:.1f}' for c in e['worker_cpu'])} s, "
            f"connections {'/'.join(str(c) for c in e['connections'])}  "
            f"client {e['client_share']:.0%} of CPUs, others {e.get('others_share', 0.0):.0%}  "
            f"worker RSS:PSS {mem} MiB"
        )
    if workload == "propfind":
        return (
            f"{e['server']:10} {e['members']:>6,} members {e['median_ms']:10,.1f} ms "
            f"{e['us_per_member']:7.1f} µs/member  {e['response_bytes'] / MiB:6.1f} MiB answer  "
            f"RSS {e['rss_idle_mib']:.0f} → {e['rss_peak_mib']:.0f} MiB"
        )
    if workload == "transfer":
        return (
            f"{e['server']:10} {e['op'].upper():3} {size_label(e['size']):>8} {e['median_mbps']:8,.0f} MB/s "
            f"({', '.join(f'{v:,.0f}' for v in e['mbps'])})  RSS {e['rss_idle_mib']:.0f} → "
            f"{e['rss_peak_mib']:.0f} MiB"
        )
    return (
        f"{e['server']:10} {e['clients']:>4} clients {e['rps']:8,.0f} req/s  "
        f"RSS {e['rss_idle_mib']:.0f} → {e['rss_peak_mib']:.0f} MiB"
    )


# --- summaries, verdicts, Markdown -----------------------------------------------


def summarize(raw: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Per server and x: the numbers the tables and plots show (errors left out)."""
    ok = {w: [e for e in raw.get(w, []) if "error" not in e] for w in WORKLOADS}
    wgroups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in ok["workers"]:
        wgroups.setdefault((e["workers"], e["kind"]), []).append(e)
    workers = []
    for (w, kind), es in wgroups.items():
        rps = [e["rps"] for e in es]
        loaded = [m for e in es for m in e["memory_loaded"]["workers"]]
        idle = [m for e in es for m in e["memory_idle"]["workers"]]
        sup = [e["memory_loaded"]["supervisor"] for e in es if e["memory_loaded"]["supervisor"]]
        shares = [max(e["worker_cpu"]) / max(1e-9, sum(e["worker_cpu"])) for e in es]
        workers.append(
            {
                "server": "davserver",
                "workers": w,
                "workers_n": es[0]["workers_n"],
                "kind": kind,
                "clients": es[0]["clients"],
                "median": statistics.median(rps),
                "min": min(rps),
                "max": max(rps),
                "n": len(rps),
                "cpu_ms": statistics.median(e["cpu_ms"] for e in es),
                "server_cores": statistics.median(e["server_cores"] for e in es),
                "client_ms": statistics.median(e["client_ms"] for e in es),
                "client_share": statistics.median(e["client_share"] for e in es),
                "others_share": max(e.get("others_share", 0.0) for e in es),
                "busiest_worker_share": statistics.median(shares),
                "supervisor_cpu_share": statistics.median(
                    e.get("supervisor_cpu", 0.0) / max(1e-9, e["server_cpu"]) for e in es
                ),
                "connections": [e["connections"] for e in es],
                "worker_rss": statistics.median(_mib(m["rss"]) for m in loaded),
                "worker_pss": statistics.median(_mib(m["pss"]) for m in loaded),
                "worker_uss": statistics.median(_mib(m["uss"]) for m in loaded),
                "worker_rss_idle": statistics.median(_mib(m["rss"]) for m in idle),
                "worker_pss_idle": statistics.median(_mib(m["pss"]) for m in idle),
                "supervisor_rss": statistics.median(_mib(m["rss"]) for m in sup) if sup else None,
                "supervisor_pss": statistics.median(_mib(m["pss"]) for m in sup) if sup else None,
                "total_pss": statistics.median(
                    _mib(sum(m["pss"] for m in e["memory_loaded"]["workers"])
                         + (e["memory_loaded"]["supervisor"] or {"pss": 0})["pss"])
                    for e in es
                ),
            }
        )
    transfer = []
    for e in ok["transfer"]:
        transfer.append(
            {
                "server": e["server"],
                "op": e["op"],
                "size": e["size"],
                "median": e["median_mbps"],
                "min": min(e["mbps"]),
                "max": max(e["mbps"]),
                "n": len(e["mbps"]),
                "rss_idle": e["rss_idle_mib"],
                "rss_peak": e["rss_peak_mib"],
            }
        )
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in ok["concurrency"]:
        groups.setdefault((e["server"], e["clients"]), []).append(e)
    conc = []
    for (server, n), es in groups.items():
        rps = [e["rps"] for e in es]
        conc.append(
            {
                "server": server,
                "clients": n,
                "median": statistics.median(rps),
                "min": min(rps),
                "max": max(rps),
                "n": len(rps),
                "rss_idle": statistics.median(e["rss_idle_mib"] for e in es),
                "rss_peak": max(e["rss_peak_mib"] for e in es),
            }
        )
    propfind = [
        {
            "server": e["server"],
            "members": e["members"],
            "median": e["median_ms"],
            "min": min(e["times_ms"]),
            "max": max(e["times_ms"]),
            "n": len(e["times_ms"]),
            "us_per_member": e["us_per_member"],
            "response_bytes": e["response_bytes"],
            "rss_idle": e["rss_idle_mib"],
            "rss_peak": e["rss_peak_mib"],
        }
        for e in ok["propfind"]
    ]
    return {
        "propfind": sorted(propfind, key=lambda r: (r["server"], r["members"])),
        "transfer": sorted(transfer, key=lambda r: (r["server"], r["op"], r["size"])),
        "concurrency": sorted(conc, key=lambda r: (r["server"], r["clients"])),
        "workers": sorted(
            workers, key=lambda r: (r["kind"], r["workers"].endswith("x1"), r["workers_n"], r["workers"] == "auto")
        ),
    }


def _rows(summary: list[dict[str, Any]], server: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in summary if r["server"] == server and all(r[k] == v for k, v in match.items())]


def verdicts(summary: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """Simple linearity checks: per-unit cost at the largest point against a smaller one (1.0 = linear)."""
    out: list[dict[str, str]] = []

    def add(check: str, server: str, value: str, verdict: str) -> None:
        out.append({"check": check, "server": server, "value": value, "verdict": verdict})

    servers = sorted({r["server"] for rows in summary.values() for r in rows}, key=list(SERVER_KINDS).index)
    for server in servers:
        pf = _rows(summary["propfind"], server)
        if len(pf) >= 2:
            top = pf[-1]
            ref = next((r for r in pf if r["members"] == 1000), pf[0])
            if ref is not top:
                ratio = top["us_per_member"] / ref["us_per_member"]
                add(
                    f"PROPFIND time per member, {top['members']:,} vs {ref['members']:,} members",
                    server,
                    f"{top['us_per_member']:.1f} vs {ref['us_per_member']:.1f} µs: ratio {ratio:.2f}",
                    "linear" if ratio <= 1.25 else "**grows faster than linear**",
                )
            grow = top["rss_peak"] - top["rss_idle"]
            answer = top["response_bytes"] / MiB
            value = (
                f"+{grow:.1f} MiB over idle at {top['members']:,} members "
                f"({grow * 1024 / top['members']:.2f} KiB/member, {grow / answer:.1f}× the {answer:.1f} MiB "
                f"answer)"
            )
            prev = pf[-2]
            prev_grow = prev["rss_peak"] - prev["rss_idle"]
            if grow < 8:
                verdict = "flat (< 8 MiB)"
            elif prev_grow < 2:
                verdict = f"grows; at {prev['members']:,} members within noise (+{prev_grow:.1f} MiB)"
            else:
                ratio = (grow / top["members"]) / (prev_grow / prev["members"])
                value += f"; per member {ratio:.2f}× that at {prev['members']:,}"
                verdict = "linear" if ratio <= 1.5 else "**grows faster than linear**"
            add("PROPFIND server RSS", server, value, verdict)
        for op in ("get", "put"):
            tr = _rows(summary["transfer"], server, op=op)
            if len(tr) < 2:
                continue
            top = tr[-1]
            ref = next((r for r in tr if r["size"] == 256 * MiB and r is not top), tr[-2])
            ratio = top["median"] / ref["median"]
            add(
                f"{op.upper()} MB/s, {size_label(top['size'])} vs {size_label(ref['size'])}",
                server,
                f"{top['median']:,.0f} vs {ref['median']:,.0f} MB/s: ratio {ratio:.2f}",
                "linear (throughput holds)" if ratio >= 0.8 else "**slows down with size**",
            )
            grow = top["rss_peak"] - tr[0]["rss_peak"]
            add(
                f"{op.upper()} peak RSS, {size_label(top['size'])} vs {size_label(tr[0]['size'])}",
                server,
                f"{top['rss_peak']:.0f} vs {tr[0]['rss_peak']:.0f} MiB ({grow:+.1f})",
                "flat (streamed)" if grow < 16 else "**grows with size**",
            )
        for kind, title in (("get", "4 KiB GET keep-alive"), ("propfind", "PROPFIND Depth 1 of 1,000, 4 clients")):
            wk = {r["workers"]: r for r in _rows(summary.get("workers", []), server, kind=kind)}
            if "1" not in wk:
                continue
            for w, r in wk.items():
                if w == "1":
                    continue
                ratio = r["median"] / wk["1"]["median"]
                target = w == "2" or (w == "auto" and r["workers_n"] == 2)
                add(
                    f"{title}: {w} workers ({r['workers_n']} processes) vs 1",
                    server,
                    f"{r['median']:,.1f} vs {wk['1']['median']:,.1f} req/s: ratio {ratio:.2f}",
                    (f"**met** (≥ {WORKERS_TARGET})" if ratio >= WORKERS_TARGET
                     else f"**not met** (< {WORKERS_TARGET})")
                    if target
                    else f"{ratio / r['workers_n']:.2f} of linear",
                )
        cc = {r["clients"]: r for r in _rows(summary["concurrency"], server)}
        for hi in (32, 128):
            if hi in cc and 8 in cc:
                ratio = cc[hi]["median"] / cc[8]["median"]
                add(
                    f"4 KiB GET rate, {hi} vs 8 clients",
                    server,
                    f"{cc[hi]['median']:,.0f} vs {cc[8]['median']:,.0f} req/s: ratio {ratio:.2f}",
                    "holds" if ratio >= 0.9 else "**falls**",
                )
    return out


def _num(x: float) -> str:
    return report._num(x)


def _range(r: dict[str, Any]) -> str:
    return _num(r["median"]) + (f" ({_num(r['min'])}–{_num(r['max'])})" if r["n"] > 1 else "")


def png_paths(img_dir: Path, stem: str) -> dict[str, Path]:
    return {w: img_dir / f"{stem}-{w}.png" for w in WORKLOADS}


def markdown(result: dict[str, Any], pngs: dict[str, Path], md_dir: Path) -> str:
    s = result["summary"]
    p = result["params"]
    label = LABELS.get
    lines = [
        "# How davserver's costs grow",
        "",
        f"`{result['command']}` — {result['started']}, {result['elapsed_s'] / 60:.1f} min"
        + (" (quick mode)" if p["quick"] else "")
        + f", davserver {result['machine'].get('davserver', '?')}.",
        f"Machine: {result['machine'].get('cpu', '?')}, {result['machine'].get('ram', '?')} RAM, "
        f"{result['machine'].get('os', '?')}, Python {result['machine'].get('python', '?')}.",
        "",
        "Every point: a freshly started server (default configuration), warmed up with one authenticated GET. "
        "RSS: VmRSS of the server's processes, just after the warm-up (idle) and its peak while the point ran "
        "(sampled every 20 ms).",
    ]

    def image(workload: str, alt: str) -> list[str]:
        if workload in pngs and pngs[workload].exists():
            return ["", f"![{alt}]({os.path.relpath(pngs[workload], md_dir)})"]
        return []

    if s["propfind"]:
        lines += [
            "",
            "## PROPFIND Depth 1, one keep-alive client",
            "",
            "Named live properties (displayname, getlastmodified, getcontentlength, resourcetype, "
            "getcontenttype, getetag); every answer checked: 207 with members + 1 responses. "
            "Median (min–max) over the timed requests.",
            "",
            "| members | server | requests | latency, ms | µs per member | answer, MiB | RSS idle → peak, MiB |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(s["propfind"], key=lambda r: (r["members"], list(SERVER_KINDS).index(r["server"]))):
            lines.append(
                f"| {r['members']:,} | {label(r['server'])} | {r['n']} | {_range(r)} | "
                f"{r['us_per_member']:.1f} | {r['response_bytes'] / MiB:.2f} | "
                f"{r['rss_idle']:.0f} → {r['rss_peak']:.0f} |"
            )
        lines += image("propfind", "PROPFIND latency and RSS against members")
    if s["transfer"]:
        lines += [
            "",
            "## GET and PUT (curl)",
            "",
            "MB/s = 10⁶ bytes / curl's time_total (TLS handshake included, which weighs on 1 MiB); "
            "median (min–max) over the runs. The file is in the page cache; PUT includes davserver's "
            "fsync, each PUT target is deleted and followed by sync().",
            "",
            "| size | server | runs | GET, MB/s | PUT, MB/s | RSS idle → peak GET / PUT, MiB |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        keys = sorted(
            {(r["size"], r["server"]) for r in s["transfer"]}, key=lambda k: (k[0], list(SERVER_KINDS).index(k[1]))
        )
        for size, server in keys:
            get = next(iter(_rows(s["transfer"], server, size=size, op="get")), None)
            put = next(iter(_rows(s["transfer"], server, size=size, op="put")), None)
            first = get or put or {}
            peaks = " / ".join(f"{r['rss_peak']:.0f}" if r else "–" for r in (get, put))
            lines.append(
                f"| {size_label(size)} | {label(server)} | {first.get('n', 0)} | {_range(get) if get else '–'} | "
                f"{_range(put) if put else '–'} | {first.get('rss_idle', 0.0):.0f} → {peaks} |"
            )
        lines += image("transfer", "GET and PUT throughput and RSS against file size")
    if s["concurrency"]:
        lines += [
            "",
            "## 4 KiB GET keep-alive rate (ab -k)",
            "",
            f"`ab -k -c N -t {p['seconds']:g}`, median (min–max) over {p['rounds']} interleaved round(s). "
            f"davserver runs its default {DAV_THREADS} worker threads: beyond {DAV_THREADS} clients, "
            "requests queue for a worker. ab's time includes the N TLS handshakes at the start "
            "(about 0.6 s for 128 clients at davserver's ~200 handshakes/s).",
            "",
            "| clients | server | req/s | RSS idle → peak, MiB |",
            "|---:|---|---:|---:|",
        ]
        for r in sorted(s["concurrency"], key=lambda r: (r["clients"], list(SERVER_KINDS).index(r["server"]))):
            lines.append(
                f"| {r['clients']} | {label(r['server'])} | {_range(r)} | {r['rss_idle']:.0f} → {r['rss_peak']:.0f} |"
            )
        lines += image("concurrency", "4 KiB GET rate and RSS against keep-alive clients")
    if s.get("workers"):
        lines += workers_markdown(result, s["workers"])
        lines += image("workers", "requests per second against worker processes, with the CPU-bound projection")
    if result["verdicts"]:
        lines += [
            "",
            "## Linearity",
            "",
            "Per-unit cost at the largest point against a smaller one: a time ratio near 1 (≤ 1.25), "
            "throughput ratio ≥ 0.8, rate ratio ≥ 0.9 and RSS growth < 16 MiB count as linear / holding.",
            "",
            "| check | server | measured | verdict |",
            "|---|---|---|---|",
        ]
        for v in result["verdicts"]:
            lines.append(f"| {v['check']} | {label(v['server'])} | {v['value']} | {v['verdict']} |")
    errors = [(w, e) for w in WORKLOADS for e in result["raw"].get(w, []) if "error" in e]
    if errors:
        lines += ["", "## Errors", ""]
        for w, e in errors:  # the first line, and ab's count of failures; the whole text is in the JSON
            text = e["error"].splitlines() or [""]
            text[1:] = [" ".join(line.split()) for line in text[1:] if line.startswith("Failed requests")]
            where = {k: e[k] for k in ("members", "size", "clients") if k in e}
            lines.append(f"- {w} {e['server']} {where}: {' '.join(text)}")
    busy = [e["background_cpu"] for w in WORKLOADS for e in result["raw"].get(w, [])]
    if busy:
        lines += [
            "",
            f"CPU busy with other work just before each point (servers stopped): median "
            f"{statistics.median(busy):.0%}, max {max(busy):.0%}.",
        ]
    return "\n".join(lines) + "\n"


PROJECT_CORES = 16


def _workers_label(r: dict[str, Any]) -> str:
    w = r["workers"]
    if w.endswith("x1"):
        return f"{w[:-2]} single-process servers"
    return "1 worker" if w == "1" else f"{w} workers" + (f" ({r['workers_n']})" if w == "auto" else "")


def workers_markdown(result: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The worker-process tables: rates and CPU, memory, and the projection to PROJECT_CORES cores."""
    p = result["params"]
    base = {r["kind"]: r for r in rows if r["workers"] == "1"}
    titles = {"get": f"4 KiB GET, ab -k -c {WORKER_GET_CLIENTS}",
              "propfind": f"PROPFIND Depth 1, 1,000 files, {WORKER_PROPFIND_CLIENTS} clients"}
    lines = [
        "",
        "## Worker processes (server.workers)",
        "",
        f"davserver started with `serve --workers W` for W in {', '.join(p.get('worker_counts', WORKER_COUNTS))} "
        f"(auto: one per usable CPU, {next((r['workers_n'] for r in rows if r['workers'] == 'auto'), '?')} here); "
        f"{p['seconds']:g} s per point, median (min–max) over {p['rounds']} interleaved round(s), a fresh server "
        "for every point. Server CPU: user + system seconds of the supervisor and all its workers (/proc), per "
        "request; cores busy = server CPU / elapsed. Busiest worker: its share of the server's CPU (1/W is an even "
        "spread); supervisor: its own share. Connections per worker: the keep-alive connections each worker held "
        "(one list per round). "
        "Client: the load generator's own CPU (ab, one C event loop, for both workloads: `ab -k -m PROPFIND` "
        "checks every answer's length against the first, which is checked for 207 and 1,001 responses) as a share "
        "of all the machine's CPUs, which it shares with the server. Others: the share of all CPUs that other "
        "processes took during the point (the machine's busy time less the server's, the client's and the "
        "bench's own), the highest over the rounds: a point with more than a few percent was disturbed. "
        "A row Nx1 (e.g. 2x1) is N single-process "
        "servers on N ports of the same instance, each with its own ab and 1/N of the clients at the same time: "
        "the even spread of connections, for comparison with what the supervisor's shared socket gets.",
        "",
        "| workload | workers | req/s | × 1 worker | server CPU, ms/req | cores busy | busiest worker | supervisor | "
        "connections per worker | client CPU, ms/req | client share of CPUs | others, at most |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["median"] / base[r["kind"]]["median"] if r["kind"] in base else float("nan")
        conns = "; ".join("/".join(str(c) for c in cs) for cs in r["connections"])
        lines.append(
            f"| {titles[r['kind']]} | {r['workers']} ({r['workers_n']}) | {_range(r)} | {ratio:.2f} | "
            f"{r['cpu_ms']:.2f} | {r['server_cores']:.2f} | {r['busiest_worker_share']:.0%} | "
            f"{r.get('supervisor_cpu_share', 0.0):.1%} | {conns} | "
            f"{r['client_ms']:.3f} | {r['client_share']:.0%} | {r.get('others_share', 0.0):.0%} |"
        )
    lines += [
        "",
        "Memory per worker process: median over the workers of every point of the row, just after the start "
        "(one authenticated GET served) and after the load. PSS shares each shared page among the processes "
        "that map it, so the PSS of the supervisor and the workers adds up to what the server really uses; "
        "USS is the worker's private memory, what one more worker adds.",
        "",
        "| workload | workers | RSS per worker, MiB | PSS per worker, MiB | USS per worker, MiB | "
        "supervisor RSS / PSS, MiB | total PSS, MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sup = "–" if r["supervisor_rss"] is None else f"{r['supervisor_rss']:.1f} / {r['supervisor_pss']:.1f}"
        lines.append(
            f"| {titles[r['kind']]} | {r['workers']} ({r['workers_n']}) | {r['worker_rss_idle']:.1f} → "
            f"{r['worker_rss']:.1f} | {r['worker_pss_idle']:.1f} → {r['worker_pss']:.1f} | {r['worker_uss']:.1f} | "
            f"{sup} | {r['total_pss']:.1f} |"
        )
    lines += [
        "",
        f"Projection to {PROJECT_CORES} cores: {PROJECT_CORES} workers (auto), each request costing the server "
        "CPU measured in the row; assumes the work stays CPU-bound and spreads evenly over the workers, the "
        "disk and the network do not limit, the clients run elsewhere, and the state store (SQLite's one "
        "writer, or Redis) keeps up. Per core = 1,000 / server CPU ms per request.",
        "",
        f"| workload | from | server CPU, ms/req | per core, req/s | projected, {PROJECT_CORES} cores, req/s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["workers"] == "auto":
            continue
        per_core = 1000 / r["cpu_ms"]
        lines.append(
            f"| {titles[r['kind']]} | {_workers_label(r)} | {r['cpu_ms']:.2f} | {_num(per_core)} | "
            f"{_num(per_core * PROJECT_CORES)} |"
        )
    return lines


# --- plots -----------------------------------------------------------------------


def plot(result: dict[str, Any], pngs: dict[str, Path]) -> list[Path]:
    """Draw the PNGs (matplotlib, Agg backend); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    s = result["summary"]
    colors = dict(zip(SERVER_KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:gray"), strict=True))
    subtitle = f"{result['started'][:10]}, davserver {result['machine'].get('davserver', '?').split(' (')[0]}"
    written = []

    def ticks(ax: Any, values: list[int], labels: list[str]) -> None:
        ax.set_xticks(values)
        ax.set_xticklabels(labels)
        ax.xaxis.set_minor_locator(NullLocator())

    def errbar(ax: Any, rows: list[dict[str, Any]], x: str, **kw: Any) -> None:
        xs = [r[x] for r in rows]
        ys = [r["median"] for r in rows]
        err = [[r["median"] - r["min"] for r in rows], [r["max"] - r["median"] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, capsize=3, marker="o", **kw)

    def save(fig: Any, workload: str, title: str) -> None:
        for ax in fig.axes:
            if ax.get_yscale() == "linear":
                ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # from zero, with room above the highest point
        fig.suptitle(f"{title} ({subtitle})")
        fig.tight_layout()
        pngs[workload].parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(pngs[workload], dpi=120)
        plt.close(fig)
        written.append(pngs[workload])

    servers = [k for k in SERVER_KINDS if any(r["server"] == k for rows in s.values() for r in rows)]
    if s["propfind"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        for server in servers:
            rows = _rows(s["propfind"], server)
            if not rows:
                continue
            c = colors[server]
            errbar(ax1, rows, "members", color=c, label=f"{LABELS[server]}, median (min–max)")
            ref = next((r for r in rows if r["members"] == 1000), rows[0])
            xs = [r["members"] for r in rows]
            ax1.plot(
                xs,
                [ref["median"] * x / ref["members"] for x in xs],
                ls=":",
                color=c,
                alpha=0.7,
                label=f"linear through {ref['members']:,}",
            )
            ax2.plot(xs, [r["rss_peak"] for r in rows], marker="o", color=c, label=f"{LABELS[server]} peak RSS")
            ax2.plot(
                xs,
                [r["rss_idle"] for r in rows],
                marker=".",
                ls="--",
                color=c,
                alpha=0.6,
                label=f"{LABELS[server]} idle RSS",
            )
        first = _rows(s["propfind"], servers[0]) or s["propfind"]
        ax2.plot(
            [r["members"] for r in first],
            [r["response_bytes"] / MiB for r in first],
            marker="s",
            ls=":",
            color="black",
            alpha=0.6,
            label="answer size",
        )
        members = sorted({r["members"] for r in s["propfind"]})
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ticks(ax, members, [f"{m:,}" for m in members])
            ax.set_xlabel("members in the folder")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
        ax1.set_yscale("log")
        ax1.set_ylabel("latency, ms (log)")
        ax1.set_title("PROPFIND Depth 1 latency, 1 client")
        ax2.set_ylabel("MiB")
        ax2.set_title("server RSS during the requests; answer size")
        save(fig, "propfind", "PROPFIND Depth 1 against folder size")
    if s["transfer"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        for server in servers:
            for op, ls in (("get", "-"), ("put", "--")):
                rows = _rows(s["transfer"], server, op=op)
                if not rows:
                    continue
                c = colors[server]
                errbar(ax1, rows, "size", color=c, ls=ls, label=f"{LABELS[server]} {op.upper()}")
                ax2.plot(
                    [r["size"] for r in rows],
                    [r["rss_peak"] for r in rows],
                    marker="o",
                    color=c,
                    ls=ls,
                    label=f"{LABELS[server]} {op.upper()} peak RSS",
                )
        sizes = sorted({r["size"] for r in s["transfer"]})
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ticks(ax, sizes, [size_label(x) for x in sizes])
            ax.set_xlabel("file size")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
        ax1.set_ylabel("MB/s (10⁶ B/s), median (min–max)")
        ax1.set_title("throughput (curl, TLS + client certificate + password)")
        ax2.set_ylabel("MiB")
        ax2.set_title("server peak RSS")
        save(fig, "transfer", "GET and PUT against file size")
    if s["concurrency"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        for server in servers:
            rows = _rows(s["concurrency"], server)
            if not rows:
                continue
            c = colors[server]
            errbar(ax1, rows, "clients", color=c, label=f"{LABELS[server]}, median (min–max)")
            ax2.plot(
                [r["clients"] for r in rows],
                [r["rss_peak"] for r in rows],
                marker="o",
                color=c,
                label=f"{LABELS[server]} peak RSS",
            )
        counts = sorted({r["clients"] for r in s["concurrency"]})
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ticks(ax, counts, [str(n) for n in counts])
            ax.axvline(DAV_THREADS, color="tab:blue", ls=":", alpha=0.6, label=f"davserver threads ({DAV_THREADS})")
            ax.set_xlabel("concurrent keep-alive clients (ab -k -c)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
        ax1.set_ylabel("requests/s")
        ax1.set_title("4 KiB GET rate")
        ax2.set_ylabel("MiB")
        ax2.set_title("server peak RSS")
        save(fig, "concurrency", "4 KiB GET keep-alive rate against clients")
    if s.get("workers"):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
        kinds = (("get", f"4 KiB GET, {WORKER_GET_CLIENTS} keep-alive clients"),
                 ("propfind", f"PROPFIND Depth 1 of 1,000, {WORKER_PROPFIND_CLIENTS} clients"))
        for ax, (kind, title) in zip(axes[:2], kinds, strict=True):
            rows = [r for r in s["workers"] if r["kind"] == kind and r["workers"] != "auto"
                    and not r["workers"].endswith("x1")]
            auto = [r for r in s["workers"] if r["kind"] == kind and r["workers"] == "auto"]
            split = [r for r in s["workers"] if r["kind"] == kind and r["workers"].endswith("x1")]
            if not rows:
                continue
            errbar(ax, [dict(r, x=r["workers_n"]) for r in rows], "x", color="tab:blue",
                   label="measured, median (min–max)")
            for r in auto:
                ax.plot([r["workers_n"]], [r["median"]], marker="D", color="tab:purple", ls="",
                        label=f"auto ({r['workers_n']}), measured")
            for r in split:
                ax.plot([r["workers_n"]], [r["median"]], marker="s", color="tab:green", ls="",
                        label=f"{r['workers_n']} separate processes, clients split evenly")
            best = min(rows, key=lambda r: r["cpu_ms"] if r["workers_n"] > 1 else float("inf"))
            xs = [1, 2, 4, 8, PROJECT_CORES]
            ax.plot(xs, [x * 1000 / best["cpu_ms"] for x in xs], ls="--", color="tab:gray",
                    label=f"CPU-bound projection: N × 1000 / {best['cpu_ms']:.2f} ms")
            one = next((r for r in rows if r["workers"] == "1"), None)
            if one:
                ax.plot(xs, [one["median"] * x for x in xs], ls=":", color="tab:blue", alpha=0.5,
                        label="linear from 1 worker")
                ax.plot([2], [WORKERS_TARGET * one["median"]], marker="_", markersize=18, mew=2, color="tab:red",
                        ls="", label=f"target: 2 workers ≥ {WORKERS_TARGET} × 1")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks(ax, xs, [str(x) for x in xs])
            ax.axvline(result["params"].get("cpus", 2), color="tab:red", ls=":", alpha=0.4,
                       label="cores of this machine")
            ax.set_xlabel("worker processes")
            ax.set_ylabel("requests/s (log)")
            ax.set_title(title)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[2]
        mem = [r for r in s["workers"] if r["kind"] == "propfind" and not r["workers"].endswith("x1")] or s["workers"]
        labels = [f"{r['workers']} ({r['workers_n']})" for r in mem]
        xs = list(range(len(mem)))
        ax.bar([x - 0.2 for x in xs], [r["worker_rss"] for r in mem], width=0.2, label="RSS per worker")
        ax.bar(xs, [r["worker_pss"] for r in mem], width=0.2, label="PSS per worker")
        ax.bar([x + 0.2 for x in xs], [r["total_pss"] for r in mem], width=0.2, label="total PSS (+ supervisor)")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels)
        ax.set_xlabel("workers (processes)")
        ax.set_ylabel("MiB")
        ax.set_title("memory after the PROPFIND load")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "workers", "Worker processes: request rate and memory")
    return written


def finish(result: dict[str, Any], out: Path, img_dir: Path, stem: str) -> None:
    """Summaries, verdicts, PNGs, Markdown: all derived from result["raw"], so --plot-only can redo them."""
    result["summary"] = summarize(result["raw"])
    result["verdicts"] = verdicts(result["summary"])
    pngs = png_paths(img_dir, stem)
    try:
        written = plot(result, pngs)
    except ImportError:
        written = []
        print("scaling: matplotlib is missing (pip install matplotlib): no PNGs drawn", file=sys.stderr)
    text = markdown(result, pngs, out.parent)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print()
    print(text)
    print(f"scaling: wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}" + "".join(f", {p}" for p in written))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="members up to 10,000, sizes up to 256 MiB, 3 s ab phases")
    p.add_argument(
        "--servers",
        default="davserver",
        help="comma-separated subset of davserver,wsgidav,apache,openssl (default davserver)",
    )
    p.add_argument("--workloads", help="comma-separated subset of propfind,transfer,concurrency,workers (default all)")
    p.add_argument("--worker-counts", help="server.workers values of the workers sweep (default 1,2,auto)")
    p.add_argument("--workers", help="davserver's workers in the other sweeps (default: its configuration's)")
    p.add_argument("--members", help="comma-separated folder sizes (default 100,1000,10000,50000)")
    p.add_argument("--sizes", help="comma-separated file sizes in MiB (default 1,16,256,1024,4096)")
    p.add_argument("--rounds", type=int, help="rounds of the concurrency sweep (default 3, or 1 with --quick)")
    p.add_argument("--seconds", type=float, help="length of each ab phase (default 10, or 3 with --quick)")
    p.add_argument("--out", type=Path, help="output prefix (default bench/scaling, bench/scaling-quick)")
    p.add_argument("--img-dir", type=Path, help="where the PNGs go (default docs/img, or bench/ with --quick)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNGs and the .md from the JSON; no run")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (data, instance, server logs)")
    p.add_argument(
        "--max-wait",
        type=float,
        help="seconds to wait before each point for other processes to leave the CPUs idle "
        "(default 180, or 0 with --quick)",
    )
    args = p.parse_args()
    only_workers = args.workloads == "workers"  # its own files: the other sweeps' results stay as they are
    stem = "scaling-quick" if args.quick else "scaling"
    out = args.out or BENCH / (stem.replace("scaling", "scaling-workers") if only_workers else stem)
    img_dir = args.img_dir or (BENCH if args.quick else DOCS_IMG)
    out.parent.mkdir(parents=True, exist_ok=True)

    if args.plot_only:
        finish(json.loads(out.with_suffix(".json").read_text()), out, img_dir, stem)
        return

    base = QUICK if args.quick else FULL
    params = dataclasses.replace(
        base,
        members=tuple(int(x) for x in args.members.split(",")) if args.members else base.members,
        sizes=tuple(int(float(x) * MiB) for x in args.sizes.split(",")) if args.sizes else base.sizes,
        rounds=args.rounds or base.rounds,
        seconds=args.seconds or base.seconds,
        worker_counts=tuple(args.worker_counts.split(",")) if args.worker_counts else base.worker_counts,
        workers=args.workers,
    )
    servers = args.servers.split(",")
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    for name in servers:
        if name not in SERVER_KINDS:
            p.error(f"unknown server {name!r}")
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    max_wait = args.max_wait if args.max_wait is not None else 0 if args.quick else 180
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so `finally` stops the servers
    require_tools()

    t_start = time.monotonic()
    result: dict[str, Any] = {
        "command": "python bench/scaling.py " + " ".join(sys.argv[1:]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": 0.0,
        "params": {
            **dataclasses.asdict(params),
            "clients": CLIENTS,
            "cpus": len(os.sched_getaffinity(0)),
            "servers": servers,
            "workloads": workloads,
            "propfind_requests": {m: params.propfind_requests(m) for m in params.members},
            "transfer_runs": {s: params.transfer_runs(s) for s in params.sizes},
        },
        "machine": run.machine(),  # before the servers start: the sources they run
        "raw": {w: [] for w in WORKLOADS},
    }
    work = Path(tempfile.mkdtemp(prefix="davscale-"))
    try:
        print(f"scaling: preparing {work}", flush=True)
        fx = make_fixture(work, MiB)
        runner = Runner(fx, params, servers, max_wait, out, result)
        for w in workloads:
            getattr(runner, w)()
    finally:
        if args.keep:
            print(f"scaling: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["elapsed_s"] = time.monotonic() - t_start
    finish(result, out, img_dir, stem)
    print(f"scaling: {result['elapsed_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
