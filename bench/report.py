"""Summaries (median, min-max), ratios davserver/peer, the project's targets, and the
Markdown / JSON output."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    higher_better: bool = True


METRICS = [
    Metric("get_big", "{big} GET (curl)", "MB/s"),
    Metric("put_big", "{big} PUT (curl -T)", "MB/s"),
    Metric("get_small", "4 KiB GET, keep-alive, 8 clients (ab -k)", "req/s"),
    Metric("propfind_ms", "PROPFIND Depth 1, 1000 files, 1 client (median)", "ms", higher_better=False),
    Metric("propfind_rps", "PROPFIND Depth 1, 1000 files, 4 clients", "req/s"),
    Metric("new_conn", "new TLS connection + 4 KiB GET, 4 clients", "conn/s"),
    Metric("rss_idle", "RSS at rest (start of each round)", "MiB", higher_better=False),
    Metric("rss_get", "peak RSS during {big} GET", "MiB", higher_better=False),
    Metric("rss_put", "peak RSS during {big} PUT", "MiB", higher_better=False),
    Metric("rss_hwm", "peak RSS over the whole run (VmHWM)", "MiB", higher_better=False),
    Metric("pss_idle", "PSS at rest, summed over the server's processes", "MiB", higher_better=False),
    Metric("rss_get_process", "peak RSS of the largest process during {big} GET", "MiB", higher_better=False),
    Metric("rss_put_process", "peak RSS of the largest process during {big} PUT", "MiB", higher_better=False),
    Metric("rss_hwm_process", "VmHWM of the largest process over the whole run", "MiB", higher_better=False),
    Metric("cpu_get_big", "server CPU per GiB sent ({big} GET)", "s/GiB", higher_better=False),
    Metric("cpu_put_big", "server CPU per GiB received ({big} PUT)", "s/GiB", higher_better=False),
    Metric("cpu_get_small", "server CPU per 4 KiB GET (8 keep-alive clients)", "ms/req", higher_better=False),
    Metric("cpu_propfind_ms", "server CPU per PROPFIND Depth 1, 1000 files, 1 client", "ms/req", higher_better=False),
    Metric("cpu_propfind_rps", "server CPU per PROPFIND Depth 1, 1000 files, 4 clients", "ms/req",
           higher_better=False),
    Metric("cpu_new_conn", "server CPU per new TLS connection + 4 KiB GET", "ms/conn", higher_better=False),
    Metric("client_cpu_get_small", "client (ab) CPU per 4 KiB GET", "ms/req", higher_better=False),
    Metric("client_cpu_propfind_rps", "client (Python) CPU per PROPFIND, 4 clients", "ms/req", higher_better=False),
    Metric("client_cpu_new_conn", "client (Python) CPU per new connection", "ms/conn", higher_better=False),
    Metric("client_share_get_big", "client (curl) share of all CPUs, {big} GET", "%", higher_better=False),
    Metric("client_share_put_big", "client (curl) share of all CPUs, {big} PUT", "%", higher_better=False),
    Metric("client_share_get_small", "client (ab) share of all CPUs, 4 KiB GET", "%", higher_better=False),
    Metric("client_share_propfind_rps", "client (Python) share of all CPUs, PROPFIND 4 clients", "%",
           higher_better=False),
    Metric("client_share_new_conn", "client (Python) share of all CPUs, new connections", "%", higher_better=False),
]

#: Workloads whose rate is projected to an N-core machine from the server CPU per request:
#: (rate metric, CPU metric, title).
PROJECTED = [
    ("get_small", "cpu_get_small", "4 KiB GET, keep-alive"),
    ("propfind_rps", "cpu_propfind_rps", "PROPFIND Depth 1, 1000 files"),
    ("new_conn", "cpu_new_conn", "new TLS connection + 4 KiB GET"),
]
#: Servers that serve from one Python process: one interpreter lock, so at most about one core.
ONE_CORE = ("wsgidav",)

SERVERS = [("davserver", "davserver"), ("wsgidav", "stock WsgiDAV"), ("apache", "Apache httpd"),
           ("rclone", "rclone serve"), ("openssl", "openssl s_server")]
PEERS = ("wsgidav", "apache", "rclone", "openssl")


@dataclass(frozen=True)
class Target:
    text: str
    metric: str
    factor: float  # required = factor * peer median, or factor itself when peer is None
    peer: str | None = None
    at_most: bool = False  # True: davserver must stay at or below the required value
    fallback: float | None = None  # required value when the peer was not measured in this run
    fallback_text: str = ""


TARGETS = [
    Target("1 GiB GET ≥ 0.9 × openssl s_server", "get_big", 0.9, "openssl"),
    Target("1 GiB PUT ≥ 1.5 × Apache", "put_big", 1.5, "apache"),
    Target("4 KiB GET ≥ 4 × Apache", "get_small", 4.0, "apache"),
    Target("4 KiB GET ≥ 5000 req/s", "get_small", 5000),
    # The issue asks for rclone's latency; 16 ms stands in for it when rclone is not part of the run.
    Target("PROPFIND Depth 1 (1000 files) ≤ rclone serve (its median in this run)", "propfind_ms", 1.0, "rclone",
           at_most=True, fallback=16,
           fallback_text="PROPFIND Depth 1 (1000 files) ≤ 16 ms (fixed: rclone not measured)"),
    Target("PROPFIND Depth 1 (1000 files) ≥ 100 req/s, 4 clients", "propfind_rps", 100),
    Target("new TLS connections ≥ 1.1 × Apache", "new_conn", 1.1, "apache"),
    # Per process: with server.workers > 1 every worker is one, each under the same bound.
    Target("RSS < 64 MiB during 1 GiB GET (largest process)", "rss_get_process", 64, at_most=True),
    Target("RSS < 64 MiB during 1 GiB PUT (largest process)", "rss_put_process", 64, at_most=True),
    Target("RSS < 64 MiB over the whole run (VmHWM, largest process)", "rss_hwm_process", 64, at_most=True),
]


def summarize(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, per_server in raw.items():
        out[metric] = {
            server: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
            for server, v in per_server.items() if v
        }
    return out


def ratios(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """davserver median / peer median, per metric (for ms and MiB: lower is better, so read it inverted)."""
    out: dict[str, dict[str, float]] = {}
    for metric, per_server in summary.items():
        dav = per_server.get("davserver")
        if not dav:
            continue
        out[metric] = {peer: dav["median"] / s["median"] for peer, s in per_server.items()
                       if peer != "davserver" and s["median"]}
    return out


def check_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        dav = summary.get(t.metric, {}).get("davserver")
        peer = summary.get(t.metric, {}).get(t.peer) if t.peer else None
        text, basis, required = t.text, "fixed", t.factor
        if peer is not None:
            basis, required = f"{t.peer} median in this run", t.factor * peer["median"]
        elif t.peer and t.fallback is not None:
            text, basis, required = t.fallback_text, f"fixed ({t.peer} not measured)", t.fallback
        if dav is None or (t.peer and peer is None and t.fallback is None):
            rows.append({"target": text, "metric": t.metric, "status": "not measured"})
            continue
        measured = dav["median"]
        met = measured <= required if t.at_most else measured >= required
        if t.at_most:
            gap = f"{measured - required:+.1f} {_unit(t.metric)} vs limit"
        else:
            gap = f"{measured / required:.2f} × required" + ("" if met else f" (needs {required / measured:.1f}× more)")
        rows.append({"target": text, "metric": t.metric, "basis": basis, "required": required,
                     "measured": measured, "met": met, "status": "met" if met else "not met", "gap": gap})
    return rows


def projection(summary: dict[str, Any], cpus: int, dav_workers: int, cores: int = 16) -> list[dict[str, Any]]:
    """Each server's rate on a `cores`-core machine, if the workload stays CPU-bound.

    projected = cores / (server CPU seconds per request): every core busy with the server, at the
    CPU per request measured here, and nothing else limiting (disk, network, locks; the client on
    other machines). A server of one Python process (ONE_CORE) gets at most one core's worth:
    1 / CPU per request. davserver runs `server.workers` processes (auto: one per core).
    """
    rows = []
    for rate_metric, cpu_metric, title in PROJECTED:
        for server, s in summary.get(cpu_metric, {}).items():
            rate = summary.get(rate_metric, {}).get(server)
            if not rate or not s["median"]:
                continue
            per_core = 1000 / s["median"]  # requests per CPU second
            usable = 1 if server in ONE_CORE else cores
            rows.append({"workload": title, "metric": rate_metric, "server": server, "measured": rate["median"],
                         "cpu_ms": s["median"], "cores_used_here": rate["median"] * s["median"] / 1000,
                         "per_core": per_core, "cores": cores, "projected": per_core * usable,
                         "one_core": server in ONE_CORE})
    return rows


def _unit(metric: str) -> str:
    return next(m.unit for m in METRICS if m.key == metric)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    summary, rat = result["summary"], result["ratios"]
    size = result["big_size"]
    big = "1 GiB" if size == 1 << 30 else f"{size >> 20} MiB"
    present = [(k, label) for k, label in SERVERS if any(k in summary.get(m.key, {}) for m in METRICS)]
    lines = [
        "# Benchmark results",
        "",
        f"`{result['command']}` — {result['started']}, {result['elapsed_s'] / 60:.1f} min, "
        f"{result['rounds']} round(s), big file {result['big_size'] / 2**20:,.0f} MiB, "
        f"timed phases {result['seconds']:g} s.",
        "",
        "Machine and versions:",
        "",
        *(f"- {k}: {v}" for k, v in result["machine"].items()),
        "",
        "Each cell: median (min–max) over the rounds. Ratios are davserver / peer medians "
        "(for ms and MiB lower is better).",
        "",
        "| workload | unit | " + " | ".join(label for _, label in present)
        + " | " + " | ".join(f"davserver / {label}" for k, label in present if k in PEERS) + " |",
        "|---|---|" + "---:|" * (len(present) + sum(1 for k, _ in present if k in PEERS)),
    ]
    for m in METRICS:
        per = summary.get(m.key, {})
        if not per:
            continue
        cells = []
        for k, _ in present:
            s = per.get(k)
            cells.append(f"{_num(s['median'])} ({_num(s['min'])}–{_num(s['max'])})" if s else "–")
        for k, _ in present:
            if k in PEERS:
                r = rat.get(m.key, {}).get(k)
                cells.append(f"{r:.2f}" if r is not None else "–")
        title = m.title.format(big=big)
        lines.append(f"| {title} | {m.unit} | " + " | ".join(cells) + " |")
    proj = result.get("projection") or []
    if proj:
        cores = proj[0]["cores"]
        lines += [
            "",
            f"## Projection to {cores} cores",
            "",
            f"Measured here on {result.get('cpus', '?')} CPUs with the client on the same machine; davserver "
            f"ran {result.get('davserver_workers', '?')} worker process(es). Projected = {cores} / server CPU "
            "seconds per request: assumes the workload stays CPU-bound and scales with cores (every core busy "
            "with the server at the CPU per request measured here), disk and network not limiting, the clients "
            "on other machines. Stock WsgiDAV is one Python process: at most one core, so 1 / CPU per request.",
            "",
            "| workload | server | measured, req/s | server CPU per request, ms | cores busy here | "
            f"per core, req/s | projected, {cores} cores, req/s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        labels = dict(SERVERS)
        for r in proj:
            lines.append(f"| {r['workload']} | {labels.get(r['server'], r['server'])} | {_num(r['measured'])} | "
                         f"{r['cpu_ms']:.2f} | {r['cores_used_here']:.2f} | {_num(r['per_core'])} | "
                         f"{_num(r['projected'])}{' (one core)' if r['one_core'] else ''} |")
    lines += ["", "## Targets", ""]
    if size != 1 << 30:
        lines += [f"(Measured with a {big} file instead of 1 GiB: indicative only.)", ""]
    lines += ["| target | required | davserver | status | gap |", "|---|---:|---:|---|---|"]
    for row in result["targets"]:
        if row["status"] == "not measured":
            lines.append(f"| {row['target']} | – | – | not measured | |")
            continue
        unit = _unit(row["metric"])
        lines.append(f"| {row['target']} | {_num(row['required'])} {unit} | {_num(row['measured'])} {unit} | "
                     f"**{row['status']}** | {row['gap']} |")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # re-render a results .md from its .json: python bench/report.py bench/results.json
    import json
    import sys
    from pathlib import Path

    for name in sys.argv[1:]:
        path = Path(name)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
