"""Benchmark davserver against stock WsgiDAV, Apache httpd (mod_dav), rclone serve webdav and openssl s_server.

    python bench/run.py                # full: 5 rounds, 1 GiB file, 10 s timed phases (~14 min on 2 cores)
    python bench/run.py --quick        # smoke run: 1 round, 128 MiB file, 3 s phases (~1 min)
    python bench/run.py --rounds 3     # full sizes, 3 rounds
    python bench/run.py --servers davserver,apache --workloads get_small,new_conn
    python bench/run.py --workers 1    # davserver as one process (default: its server.workers, auto)

Needs curl, ab (apache2-utils), apache2, openssl and rclone (unless --servers leaves it
out) on PATH and the project installed in the running Python (`pip install -e .`); run
it as root (Apache's workers drop to www-data). Everything happens in a temp folder:
test data (the big file, a folder of 1000 small files, a 4 KiB file), a davserver
instance made by its own key manager (`davserver init`, `user add`, `cert issue`,
`share add`), and the servers, each its own process on 127.0.0.1 and a free port, all
stopped at the end.

Workloads run interleaved (davserver, WsgiDAV, Apache, rclone[, openssl], then the next
workload, and the whole sequence once per round). Results: medians with min-max and
davserver/peer ratios on stdout, in bench/results.md and bench/results.json
(bench/results-quick.* for --quick). For every workload the runner also takes the
server's CPU time (user + system from /proc, summed over its process and all its
children: Apache's workers, davserver's worker processes; see servers.tree_cpu_seconds)
and the client's own CPU time, and gives both per unit of work: CPU seconds per GiB,
milliseconds per request. With them the throughput of a CPU-bound workload on an N-core
machine is projected (report.projection). Before each workload the runner waits, up to
--max-wait seconds (180; 0 with --quick), for other processes to leave the CPUs idle.
Profiles: bench/hotspots.py. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clients
import report
from servers import (
    Apache,
    DavServerProc,
    OpenSSLServer,
    RcloneServe,
    Server,
    StockWsgiDAV,
    make_fixture,
    memory_kib,
    require_tools,
    tool_versions,
)

BENCH = Path(__file__).resolve().parent
#: Started, and measured in each workload, in this order.
SERVER_KINDS: tuple[type[Server], ...] = (DavServerProc, StockWsgiDAV, Apache, RcloneServe, OpenSSLServer)

NOTES = [
    "All servers and all clients share the machine's cores; the clients (curl, ab, Python threads) "
    "use CPU the servers would otherwise have.",
    "Apache checks the bcrypt hash (htpasswd -B, cost 5) on every request (mod_authn_file keeps no "
    "cache); davserver verifies argon2id once per login and then serves from its verified-credential "
    "cache (kept 300 s after the last use, at most 3600 s); stock WsgiDAV compares a clear-text password.",
    "davserver writes a PUT to a temp file, fsyncs it and renames it; Apache (mod_dav_fs) renames a temp "
    "file without fsync; stock WsgiDAV writes the target in place without fsync. Each PUT creates a new "
    "file, which is removed and followed by sync() before the next.",
    "rclone serve webdav checks the same kind of bcrypt htpasswd file on every request too (no cache). It "
    "keeps directory listings in its VFS directory cache (5 min) and answers PROPFIND from it; it writes a PUT "
    "in place (open O_TRUNC, no temp file, no fsync). Go's TLS picks TLS_AES_128_GCM_SHA256 (the others: "
    "TLS_AES_256_GCM_SHA384); curl is held to HTTP/1.1, which all servers speak.",
    "openssl s_server -WWW has no HTTP auth and closes after each response: it is the TLS ceiling for GET.",
    "RSS of Apache, and of davserver with several workers, is the sum over the server's processes (shared "
    "pages counted in each); PSS shares them out, and the RSS targets apply to the largest single process.",
    "Server CPU is user + system time from /proc/PID/stat of the server's process tree (every thread; children "
    "that exit are counted through their parent's cutime/cstime), taken around each workload; client CPU is "
    "curl's and ab's (getrusage of reaped children) or the Python client threads' own (RUSAGE_THREAD).",
    "Stock WsgiDAV runs with 50 cheroot threads (what the wsgidav command uses), davserver with its "
    "configured 32; Apache with Debian's mpm_event settings and unlimited requests per connection; rclone "
    "with its defaults (a goroutine per connection, --vfs-cache-mode off).",
]


def machine() -> dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = "?"
    return {"cpu": f"{cpu} × {os.cpu_count()} cores", "ram": f"{mem_kib / 2**20:.0f} GiB",
            "os": f"Debian {debian}, Linux {platform.release()}", **tool_versions(),
            "davserver": _git_revision()}


def _git_revision() -> str:
    """Commit, and a digest of davserver's sources so uncommitted states can be told apart."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=BENCH.parent, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "?"
    digest = hashlib.sha256()
    for path in sorted((BENCH.parent / "davserver").rglob("*.py")):
        digest.update(path.read_bytes())
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "davserver") else ""
    return f"{rev}{dirty} (sources sha256 {digest.hexdigest()[:12]})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 128 MiB file, 3 s phases")
    p.add_argument("--rounds", type=int, help="rounds (default 5, or 1 with --quick)")
    p.add_argument("--servers", help="comma-separated subset of davserver,wsgidav,apache,rclone,openssl")
    p.add_argument("--workloads", help="comma-separated subset of get_big,put_big,get_small,propfind,new_conn")
    p.add_argument("--out", type=Path, help="output prefix (default bench/results, bench/results-quick)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (data, configs, server logs)")
    p.add_argument("--workers", help="davserver's worker processes: 1, 2, …, or auto (default: its server.workers)")
    p.add_argument("--max-wait", type=float,
                   help="seconds to wait, before each workload, for other processes to leave the CPUs idle "
                        "(default 180, or 0 with --quick)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so `finally` stops the servers

    rounds = args.rounds or (1 if args.quick else 5)
    big_size = (128 if args.quick else 1024) << 20
    seconds = 3.0 if args.quick else 10.0
    latency_count = 15 if args.quick else 50
    out = args.out or BENCH / ("results-quick" if args.quick else "results")
    wanted_servers = set(args.servers.split(",")) if args.servers else None
    if unknown := (wanted_servers or set()) - {cls.name for cls in SERVER_KINDS}:
        p.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    require_tools(wanted_servers)
    wanted_work = set(args.workloads.split(",")) if args.workloads else None
    max_wait = args.max_wait if args.max_wait is not None else 0 if args.quick else 180

    raw: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    busy_log: list[float] = []

    def wait_quiet() -> None:
        """Start a workload only when the machine is quiet (other jobs would skew it), or after --max-wait."""
        t0 = time.monotonic()
        deadline = t0 + max_wait
        while (busy := clients.cpu_busy()) > 0.15 and time.monotonic() < deadline:
            pass
        if time.monotonic() - t0 > 3:
            print(f"  (waited {time.monotonic() - t0:.0f} s for other processes; CPUs now {busy:.0%} busy)", flush=True)
        busy_log.append(busy)

    def record(metric: str, server: Server, value: float, unit: str) -> None:
        raw[metric][server.name].append(value)
        print(f"  {metric:13} {server.name:10} {value:12,.1f} {unit}", flush=True)

    Measure = Callable[[Server], tuple[float, clients.Run]]

    def with_rss(fn: Measure, rss_metric: str) -> Measure:
        def run(server: Server) -> tuple[float, clients.Run]:
            with clients.RssSampler(server) as sampler:
                value = fn(server)
            record(rss_metric, server, sampler.peak_mib, "MiB peak")
            record(rss_metric + "_process", server, sampler.peak_process_mib, "MiB peak, largest process")
            return value
        return run

    def rate(fn: Callable[[Server], clients.Run], scale: float = 1.0) -> Measure:
        def run(server: Server) -> tuple[float, clients.Run]:
            r = fn(server)
            return r.rate / scale, r
        return run

    def latency(server: Server) -> tuple[float, clients.Run]:
        return clients.propfind_latency_run(server, latency_count)

    MB = 1_000_000
    dav_peers = ("davserver", "wsgidav", "apache", "rclone")
    # CPU per unit of work, from CPU seconds and a Run's count (bytes, requests, connections)
    per_gib = ("s/GiB", lambda cpu, count: cpu / (count / 2**30))
    per_request = ("ms/req", lambda cpu, count: cpu * 1000 / count)
    # (name, metric, unit, function, servers it applies to, CPU per unit)
    workloads: list[tuple[str, str, str, Measure, tuple[str, ...], tuple[str, Callable[[float, float], float]]]] = [
        ("get_big", "get_big", "MB/s", with_rss(rate(clients.get_big_run, MB), "rss_get"), (*dav_peers, "openssl"),
         per_gib),
        ("put_big", "put_big", "MB/s", with_rss(rate(clients.put_big_run, MB), "rss_put"), dav_peers, per_gib),
        ("get_small", "get_small", "req/s", rate(lambda s: clients.ab_small_run(s, seconds)), dav_peers, per_request),
        ("propfind", "propfind_ms", "ms", latency, dav_peers, per_request),
        ("propfind", "propfind_rps", "req/s", rate(lambda s: clients.propfind_rate_run(s, seconds)), dav_peers,
         per_request),
        ("new_conn", "new_conn", "conn/s", rate(lambda s: clients.new_connections_run(s, seconds)), dav_peers,
         ("ms/conn", per_request[1])),
    ]

    started_at = datetime.now(UTC)
    host = machine()  # before the servers start: the sources they run
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="davbench-"))
    servers: list[Server] = []
    try:
        print(f"bench: preparing {work} (big file {big_size >> 20} MiB)", flush=True)
        fx = make_fixture(work, big_size)
        for cls in SERVER_KINDS:
            if wanted_servers is None or cls.name in wanted_servers:
                server = cls(fx, workers=args.workers) if cls is DavServerProc else cls(fx)
                server.start()
                servers.append(server)
                print(f"bench: {server.label} on port {server.port}, {len(server.worker_pids())} "
                      f"serving process(es) of {len(server.pids())}", flush=True)
        for rnd in range(1, rounds + 1):
            print(f"round {rnd}/{rounds}", flush=True)
            for server in servers:
                if server.name != "openssl":
                    clients.warm_up(server)
                record("rss_idle", server, clients.rss_kib(server.pids())[0] / 1024, "MiB")
                pss = 0
                for pid in server.pids():
                    with contextlib.suppress(OSError):
                        pss += memory_kib(pid)["pss"]
                record("pss_idle", server, pss / 1024, "MiB")
            for name, metric, unit, fn, applies, (cpu_unit, per_unit) in workloads:
                if wanted_work is not None and name not in wanted_work:
                    continue
                wait_quiet()
                for server in servers:
                    if server.name in applies:
                        if server.name != "openssl":
                            clients.warm_up(server)
                        cpu0 = server.cpu_seconds()
                        value, r = fn(server)
                        cpu = server.cpu_seconds() - cpu0
                        record(metric, server, value, unit)
                        record("cpu_" + metric, server, per_unit(cpu, r.count), f"{cpu_unit} server CPU")
                        record("client_cpu_" + metric, server, per_unit(r.client_cpu, r.count),
                               f"{cpu_unit} client CPU")
                        record("client_share_" + metric, server, 100 * r.client_share(), "% of all CPUs: client")
        for server in servers:
            record("rss_hwm", server, clients.rss_kib(server.pids())[1] / 1024, "MiB VmHWM")
            record("rss_hwm_process", server, max(clients.rss_kib([pid])[1] for pid in server.pids()) / 1024,
                   "MiB VmHWM, largest process")
    finally:
        dav_workers = next((len(s.worker_pids()) for s in servers if s.name == "davserver"), 0)
        for server in servers:
            server.stop()
        if args.keep:
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary = report.summarize({m: dict(v) for m, v in raw.items()})
    result: dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "started": started_at.isoformat(timespec="seconds"),
        "elapsed_s": time.monotonic() - t_start,
        "rounds": rounds,
        "big_size": big_size,
        "seconds": seconds,
        "propfind_latency_requests": latency_count,
        "cpus": len(os.sched_getaffinity(0)),
        "davserver_workers": dav_workers,
        "machine": host,
        "raw": raw,
        "summary": summary,
        "ratios": report.ratios(summary),
        "projection": report.projection(summary, len(os.sched_getaffinity(0)), dav_workers),
        "targets": report.check_targets(summary),
        "background_cpu": busy_log,
        "notes": [*NOTES, f"CPU busy with other work just before each workload (servers idle): median "
                  f"{statistics.median(busy_log or [0]):.0%}, max {max(busy_log or [0]):.0%}."],
    }
    text = report.markdown(result)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(text)
    print(f"bench: wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} "
          f"in {result['elapsed_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
