"""Profile davserver under one workload with py-spy and list its hot spots.

    pip install py-spy
    python bench/hotspots.py get_small                # 4 KiB GET keep-alive, 8 clients (ab)
    python bench/hotspots.py propfind --seconds 20    # PROPFIND Depth 1 on 1000 files, 4 clients
    python bench/hotspots.py get_big | put_big | new_conn
    python bench/hotspots.py get_small --workers 2      # supervisor and both workers (py-spy --subprocesses)

Starts davserver as in bench/run.py (own process, full stack), attaches
`py-spy record --format raw` for the workload's duration, and prints the functions
with the most samples: "self" (the sample's innermost frame: where the time is
spent) and "total" (anywhere on the stack). Idle threads are not sampled. Writes
the collapsed stacks to bench/profiles/WORKLOAD.txt (readable by flamegraph.pl or
speedscope).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import clients
from servers import DavServerProc, Server, make_fixture

BENCH = Path(__file__).resolve().parent
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: Innermost frames of threads that wait for work (py-spy does not always see them as idle).
_WAITING = ("Condition.wait (threading.py)", "Event.wait (threading.py)", "EpollSelector.select (selectors.py)",
            "socket.accept (socket.py)", "sleep (")


def drive(workload: str, server: Server, seconds: float) -> None:
    if workload == "get_small":
        clients.ab_small(server, seconds)
    elif workload == "propfind":
        clients.propfind_rate(server, seconds)
    elif workload == "new_conn":
        clients.new_connections(server, seconds)
    else:
        fn = clients.get_big if workload == "get_big" else clients.put_big
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            fn(server)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize(raw: Path, top: int) -> str:
    """Self and total sample shares per function from py-spy's collapsed stacks."""
    self_count: Counter[str] = Counter()
    self_lines: dict[str, Counter[str]] = {}
    total_count: Counter[str] = Counter()
    samples = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        keys = []
        for frame in frames:
            m = _FRAME.match(frame)
            func, file, lineno = (m["func"], _short(m["file"]), m["line"]) if m else (frame, "?", None)
            keys.append((f"{func} ({file})", f"{file}:{lineno}" if lineno else file))
        if not keys:
            continue
        leaf, where = keys[-1]
        if leaf.startswith(_WAITING):
            waiting += count
            continue
        self_count[leaf] += count
        self_lines.setdefault(leaf, Counter())[where] += count
        for key in {k for k, _ in keys}:
            total_count[key] += count
    busy = samples - waiting
    out = [f"{samples} samples, {waiting} of threads waiting for work (left out); shares are of the other {busy}"]
    out.append(f"\nself (innermost frame), top {top}:")
    for key, n in self_count.most_common(top):
        hottest = self_lines[key].most_common(1)[0][0]
        out.append(f"  {100 * n / busy:5.1f}%  {key}  [hottest line {hottest}]")
    out.append(f"\ntotal (on the stack), top {top}:")
    for key, n in total_count.most_common(top):
        out.append(f"  {100 * n / busy:5.1f}%  {key}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["get_big", "put_big", "get_small", "propfind", "new_conn"])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (py-spy --gil)")
    p.add_argument("--workers", help="davserver's worker processes (serve --workers; default: its server.workers)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so `finally` stops the servers
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("bench: py-spy not found (pip install py-spy)")

    out_dir = BENCH / "profiles"
    out_dir.mkdir(exist_ok=True)
    workers = f"-workers{args.workers}" if args.workers else ""
    raw = out_dir / f"{args.workload}{'-gil' if args.gil else ''}{workers}.txt"
    work = Path(tempfile.mkdtemp(prefix="davprof-"))
    server = DavServerProc(make_fixture(work, 512 << 20), workers=args.workers)
    spy = None
    try:
        server.start()
        clients.warm_up(server)
        assert server.proc is not None
        cmd = [py_spy, "record", "--pid", str(server.proc.pid), "--rate", str(args.rate), "--format", "raw",
               "--output", str(raw), "--nonblocking", *(["--gil"] if args.gil else []),
               *(["--subprocesses"] if len(server.worker_pids()) > 1 else [])]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let py-spy attach
        drive(args.workload, server, args.seconds)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            spy.wait(60)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.workload}: {raw}")
    print(summarize(raw, args.top))


if __name__ == "__main__":
    main()
