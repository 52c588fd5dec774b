"""The workloads: curl for 1 GiB transfers, ab for small keep-alive GETs, and small
Python clients (http.client / ssl) for PROPFIND and for fresh TLS connections.

Each function takes a server (bench.servers.Server) and returns one number.
A wrong status or a short transfer raises BenchError: a fast failure is not a result.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from servers import BIG_NAME, MANY_NAME, SMALL_NAME, USER, Fixture, Server

MB = 1_000_000

#: What rclone, Finder and Explorer ask for in a listing.
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname/><D:getlastmodified/><D:getcontentlength/>'
    b"<D:resourcetype/><D:getcontenttype/><D:getetag/></D:prop></D:propfind>\n"
)
_HREF = re.compile(rb"<(?:[A-Za-z0-9]+:)?href>", re.IGNORECASE)


def count_hrefs(body: bytes, expected: int) -> int:
    """The <href> elements of a multistatus answer (one per response).

    Fast path: `expected` open and close tags without attributes make 2 × expected
    occurrences of b"href>", counted at memchr speed (0.2 ms for 1,000 members instead
    of the regex's 1.2 ms, CPU the client would take from the server on a shared
    machine); any other count is checked with the regex.
    """
    if body.count(b"href>") == 2 * expected:
        return expected
    return len(_HREF.findall(body))


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Run:
    """One timed phase: `count` units of work (requests, connections, bytes) in `seconds`, and the
    client's own CPU seconds (user + system) spent on them."""

    count: float
    seconds: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def client_share(self) -> float:
        """The client's share of the machine's CPUs while it ran (1.0 = every core busy with the client)."""
        return self.client_cpu / (self.seconds * len(os.sched_getaffinity(0)))


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (a client run with subprocess.run: its
    difference around the run is the client's CPU; no server is reaped during a workload)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _thread_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime + ru.ru_stime


def _curl(fx: Fixture, *args: str) -> dict[str, str]:
    fmt = "%{http_code} %{time_total} %{size_download} %{size_upload}"
    # HTTP/1.1 for every server: rclone (Go) would otherwise accept curl's ALPN offer of h2, the others speak 1.1.
    cmd = ["curl", "-sS", "--http1.1", "--cacert", str(fx.ca), "--cert", str(fx.client_crt),
           "--key", str(fx.client_key), "-u", f"{USER}:{fx.password}", "-o", "/dev/null", "-w", fmt, *args]
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    cpu = _children_cpu() - cpu0
    if out.returncode != 0:
        raise BenchError(f"curl {' '.join(args)}: {out.stderr.strip()}")
    code, total, down, up = out.stdout.split()
    return {"code": code, "time": total, "down": down, "up": up, "cpu": f"{cpu:.3f}"}


def warm_up(server: Server) -> None:
    """One authenticated request, so a credential cache is filled before timing starts."""
    r = _curl(server.fx, server.base + SMALL_NAME)
    if r["code"] != "200":
        raise BenchError(f"{server.name}: warm-up GET answered {r['code']}")


def get_big(server: Server) -> float:
    """1 GiB (the big file) GET through curl, MB/s."""
    return get_big_run(server).rate / MB


def get_big_run(server: Server) -> Run:
    """The big file's GET through curl: bytes, seconds (curl's time_total), curl's CPU."""
    fx = server.fx
    r = _curl(fx, server.base + BIG_NAME)
    if r["code"] != "200" or int(r["down"]) != fx.big_size:
        raise BenchError(f"{server.name}: GET answered {r['code']} with {r['down']} bytes")
    return Run(fx.big_size, float(r["time"]), float(r["cpu"]))


def put_big(server: Server) -> float:
    """PUT of the big file to a new name (curl -T), MB/s including the server's commit; then removed."""
    return put_big_run(server).rate / MB


def put_big_run(server: Server) -> Run:
    """The big file's PUT (curl -T) to a new name, then removed and sync()ed: bytes, seconds, curl's CPU."""
    fx = server.fx
    name = f"put-{server.name}.bin"
    target = fx.data / name
    try:
        r = _curl(fx, "-T", str(fx.data / BIG_NAME), server.base + name)
        if r["code"] not in ("201", "204") or target.stat().st_size != fx.big_size:
            raise BenchError(f"{server.name}: PUT answered {r['code']}")
        return Run(fx.big_size, float(r["time"]), float(r["cpu"]))
    finally:
        target.unlink(missing_ok=True)
        os.sync()  # no dirty pages of this upload are left to slow the next one


def ab_small(server: Server, seconds: float, concurrency: int = 8) -> float:
    """4 KiB GET, keep-alive, `concurrency` clients for `seconds` (ab -k -t), requests/s."""
    return ab_small_run(server, seconds, concurrency).rate


def ab_small_run(server: Server, seconds: float, concurrency: int = 8) -> Run:
    """4 KiB GET, keep-alive, `concurrency` clients for `seconds` (ab -k -t): requests, ab's time
    taken (its N handshakes included), ab's CPU. ab is one C process with one event loop: on this
    machine the cheapest client there is that speaks TLS with a client certificate."""
    return _ab(server, seconds, concurrency, server.base + SMALL_NAME)


def ab_propfind_run(server: Server, seconds: float, concurrency: int = 4) -> Run:
    """PROPFIND Depth 1 on the 1000-file folder with `ab -k -m PROPFIND`, `concurrency` clients.

    About a third of the Python client's CPU per request (0.25 against 0.73 ms here), for the
    workers sweep where the client's CPU is taken from the server's two cores. ab reads only
    answers with a Content-Length (no chunked encoding: Apache's and rclone's listings are
    chunked, so bench/run.py keeps the Python client for every server). The answer is checked
    once here (207, 1,001 responses, a Content-Length); ab then counts any answer of another
    length, or not 2xx, as failed, which fails the run.
    """
    fx = server.fx
    conn = _connect(server, client_context(fx))
    try:
        conn.request("PROPFIND", f"/data/{MANY_NAME}/", body=PROPFIND_BODY,
                     headers={"Depth": "1", "Authorization": _auth(fx), "Content-Type": "application/xml"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 207 or count_hrefs(body, 1001) != 1001 or resp.getheader("Content-Length") is None:
        raise BenchError(f"{server.name}: PROPFIND answered {resp.status}, {count_hrefs(body, 1001)} entries, "
                         f"Content-Length {resp.getheader('Content-Length')} (ab needs one)")
    request_body = fx.work / "propfind.xml"
    request_body.write_bytes(PROPFIND_BODY)
    # -p before -m: ab refuses -m then -p ("Cannot mix POST with other methods")
    return _ab(server, seconds, concurrency, server.base + MANY_NAME + "/",
               "-p", str(request_body), "-T", "application/xml", "-m", "PROPFIND", "-H", "Depth: 1")


def _ab(server: Server, seconds: float, concurrency: int, url: str, *options: str) -> Run:
    """`ab -k` for `seconds` with `concurrency` connections: requests, ab's time taken, ab's CPU.
    Any failed (other length) or non-2xx answer, or connections not kept alive, raise BenchError."""
    fx = server.fx
    cmd = ["ab", "-q", "-k", "-t", str(seconds), "-n", "10000000", "-c", str(concurrency), "-E", str(fx.client_pem),
           "-A", f"{USER}:{fx.password}", *options, url]
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120).stdout
    cpu = _children_cpu() - cpu0

    def field(name: str) -> str:
        m = re.search(rf"^{name}:\s+(\S+)", out, re.MULTILINE)
        if not m:
            raise BenchError(f"{server.name}: ab printed no {name!r}:\n{out}")
        return m.group(1)

    if field("Failed requests") != "0" or "Non-2xx responses" in out:
        raise BenchError(f"{server.name}: ab saw failed or non-2xx responses:\n{out}")
    if int(field("Keep-Alive requests")) < int(field("Complete requests")) * 0.99:
        raise BenchError(f"{server.name}: ab connections were not kept alive:\n{out}")
    return Run(int(field("Complete requests")), float(field("Time taken for tests")), cpu)


# --- Python clients -------------------------------------------------------------


def client_context(fx: Fixture) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(fx.ca))
    ctx.load_cert_chain(str(fx.client_crt), str(fx.client_key))
    return ctx


def _auth(fx: Fixture) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{fx.password}".encode()).decode()


def _propfind(conn: http.client.HTTPSConnection, path: str, auth: str) -> None:
    conn.request("PROPFIND", path, body=PROPFIND_BODY,
                 headers={"Depth": "1", "Authorization": auth, "Content-Type": "application/xml"})
    resp = conn.getresponse()
    body = resp.read()
    entries = count_hrefs(body, 1001)
    if resp.status != 207 or entries < 1001:
        raise BenchError(f"PROPFIND answered {resp.status} with {entries} entries")


def _connect(server: Server, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=60)


def propfind_latency(server: Server, count: int) -> float:
    """PROPFIND Depth 1 on the 1000-file folder, one keep-alive client: median milliseconds."""
    return propfind_latency_run(server, count)[0]


def propfind_latency_run(server: Server, count: int) -> tuple[float, Run]:
    """The median ms of `count` timed PROPFINDs (after 3 untimed), and the Run of all of them."""
    ctx, auth, path = client_context(server.fx), _auth(server.fx), f"/data/{MANY_NAME}/"
    t_start, cpu0 = time.perf_counter(), _thread_cpu()
    conn = _connect(server, ctx)
    try:
        for _ in range(3):
            _propfind(conn, path, auth)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            _propfind(conn, path, auth)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return statistics.median(times), Run(count + 3, time.perf_counter() - t_start, _thread_cpu() - cpu0)


def _run_threads(clients: int, seconds: float, setup: Callable[[], Any], step: Callable[[Any], None],
                 teardown: Callable[[Any], None]) -> Run:
    """`clients` threads call step() until `seconds` pass: completed steps, seconds, and the CPU
    the client threads used in the timed phase (RUSAGE_THREAD of each)."""
    counts = [0] * clients
    cpu = [0.0] * clients
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]  # set once every client is connected

    def worker(i: int) -> None:
        state = None
        try:
            state = setup()
            start.wait()
            cpu0 = _thread_cpu()
            while time.perf_counter() < stop_at[0]:
                step(state)
                counts[i] += 1
            cpu[i] = _thread_cpu() - cpu0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            start.abort()
        finally:
            if state is not None:
                teardown(state)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchError(f"client failed: {errors[0]!r}")
    return Run(sum(counts), elapsed, sum(cpu))


def propfind_rate(server: Server, seconds: float, clients: int = 4) -> float:
    """PROPFIND Depth 1 on the 1000-file folder, `clients` keep-alive clients: requests/s."""
    return propfind_rate_run(server, seconds, clients).rate


def propfind_rate_run(server: Server, seconds: float, clients: int = 4) -> Run:
    """PROPFIND Depth 1 on the 1000-file folder, `clients` keep-alive clients (Python threads, each its
    own connection; every answer checked): requests, seconds, the client threads' CPU."""
    ctx, auth, path = client_context(server.fx), _auth(server.fx), f"/data/{MANY_NAME}/"

    def setup() -> http.client.HTTPSConnection:
        conn = _connect(server, ctx)
        _propfind(conn, path, auth)
        return conn

    return _run_threads(clients, seconds, setup, lambda c: _propfind(c, path, auth), lambda c: c.close())


def new_connections(server: Server, seconds: float, clients: int = 4) -> float:
    """Fresh TCP + full TLS handshake with the client certificate + one 4 KiB GET each: connections/s."""
    return new_connections_run(server, seconds, clients).rate


def new_connections_run(server: Server, seconds: float, clients: int = 4) -> Run:
    """Fresh TCP + full TLS handshake with the client certificate + one 4 KiB GET each: connections,
    seconds, the client threads' CPU."""
    fx = server.fx
    ctx = client_context(fx)
    request = (f"GET /data/{SMALL_NAME} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
               f"Authorization: {_auth(fx)}\r\nConnection: close\r\n\r\n").encode()

    def one(_: object) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            data = bytearray()
            while chunk := s.recv(65536):
                data += chunk
        if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) or len(data) < 4096:
            raise BenchError(f"{server.name}: fresh-connection GET answered {bytes(data[:40])!r}")

    return _run_threads(clients, seconds, lambda: object(), one, lambda _: None)


# --- memory -----------------------------------------------------------------------


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over the processes."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


class RssSampler:
    """Peak summed VmRSS of a server's processes while a `with` block runs (sampled every 20 ms)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_kib = 0
        self.peak_process_kib = 0  # the largest single process (one davserver worker, one Apache child)
        self.connections: dict[int, int] = {}  # per worker pid, at the sample with the most connections
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The process list is read once a second, not every 20 ms: scanning /proc costs the
        # machine CPU that the server and the client share.
        pids, listed = self.server.pids(), time.monotonic()
        while True:
            if time.monotonic() - listed >= 1.0:
                pids, listed = self.server.pids(), time.monotonic()
                conns = self.server.connections()
                if sum(conns.values()) >= sum(self.connections.values()):
                    self.connections = conns
            per_process = [rss_kib([pid])[0] for pid in pids]
            self.peak_kib = max(self.peak_kib, sum(per_process))
            self.peak_process_kib = max(self.peak_process_kib, *per_process, 0)
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def peak_process_mib(self) -> float:
        return self.peak_process_kib / 1024


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (the bench: its threads, samplers, a Python client)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat): with our servers idle, that is other work."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)
