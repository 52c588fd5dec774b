"""The benchmark's data, certificates and the servers under test.

Every server runs as its own process on 127.0.0.1 and a free port, serves the same
folder at https://127.0.0.1:PORT/data/, demands a client certificate from the CA
that davserver's key manager creates, and is stopped by `stop()` (callers use
try/finally). Output of each server goes to a log file in the work folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
USER = "bench"
SMALL_NAME = "small.bin"  # 4 KiB
BIG_NAME = "big.bin"
MANY_NAME = "many"  # folder of small files
N_MANY = 1000


@dataclass(frozen=True)
class Fixture:
    """Files and key material shared by all servers."""

    work: Path
    data: Path
    home: Path  # davserver instance folder
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    client_pem: Path  # certificate + key in one file, for ab -E
    password: str
    password_file: Path
    big_size: int


def _davserver(home: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [sys.executable, "-m", "davserver.cli", "--home", str(home), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout


def _write_random(path: Path, size: int) -> None:
    block = 16 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def make_fixture(work: Path, big_size: int) -> Fixture:
    """Test data plus a davserver instance (CA, server certificate, account, client certificate, share)."""
    work.chmod(0o755)  # Apache's workers (www-data) must reach the data folder
    data = work / "data"
    (data / MANY_NAME).mkdir(parents=True)
    _write_random(data / BIG_NAME, big_size)
    _write_random(data / SMALL_NAME, 4096)
    for i in range(N_MANY):
        (data / MANY_NAME / f"file-{i:04d}.txt").write_bytes(os.urandom(512 + i % 3584))
    for folder in (data, data / MANY_NAME):
        folder.chmod(0o777)  # every server (Apache as www-data too) may write here

    home = work / "instance"
    password = secrets.token_urlsafe(18)
    _davserver(home, "init")
    _davserver(home, "user", "add", USER, "--password-stdin", stdin=password + "\n")
    issued = json.loads(_davserver(home, "cert", "issue", USER, "--json"))
    _davserver(home, "share", "add", "data", str(data))
    crt, key = Path(issued["paths"]["crt"]), Path(issued["paths"]["key"])
    pem = work / "client.pem"
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    password_file = work / "password.txt"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    certs = home / "certs"
    return Fixture(work, data, home, certs / "ca.crt", certs / "server.crt", certs / "server.key",
                   crt, key, pem, password, password_file, big_size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [0] is the state, [1] the ppid (proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes and of every child they have reaped.

    `pids` is a whole process tree (`_descendants`). Each live process counts its own
    utime + stime (all its threads) plus cutime + cstime (children it waited for), so
    a worker that exits between two readings is not lost: its time moves into its
    parent's cutime/cstime when the parent reaps it (proc(5), fields 14-17).
    """
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (OSError, IndexError):
            continue  # exited meanwhile: its parent's cutime holds it once reaped
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """{"rss": VmRSS, "pss": Pss, "uss": Private_Clean + Private_Dirty} of one process, KiB
    (/proc/PID/smaps_rollup; PSS shares each shared page among the processes mapping it,
    so the PSS of a supervisor and its workers adds up to what they really use)."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Rss":
                out["rss"] = int(rest.split()[0])
            elif key == "Pss":
                out["pss"] = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += int(rest.split()[0])
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Server:
    """A server process; subclasses build the command and say how to find the port."""

    name = "?"
    label = "?"
    ready_pattern: str | None = None  # regex with one group: the port, read from the log

    def __init__(self, fx: Fixture) -> None:
        self.fx = fx
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = fx.work / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.ready_pattern is None:
            self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.fx.work)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_path.read_text(errors='replace')}")
            if self.ready_pattern is not None and not self.port:
                m = re.search(self.ready_pattern, self.log_path.read_text(errors="replace"))
                if m:
                    self.port = int(m.group(1))
            if self.port and _accepts(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def pids(self) -> list[int]:
        """The server's process and its children (Apache's workers, davserver's worker processes)."""
        return _descendants(self.proc.pid) if self.proc else []

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far: its process, every
        child (live, or exited and reaped), all threads. Differences of two readings
        give the CPU a workload cost the server."""
        return tree_cpu_seconds(self.pids())

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children of a supervisor (davserver with
        server.workers > 1), else the server's process itself."""
        return [self.proc.pid] if self.proc else []

    def connections(self) -> dict[int, int]:
        """{pid: established TCP connections on the server's port} for each worker process."""
        inodes = _established_inodes(self.port)
        out = {}
        for pid in self.worker_pids():
            count = 0
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            count += 1
            out[pid] = count
        return out

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}/data/"


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of the ESTABLISHED TCP connections whose local port is `port` (/proc/net/tcp, tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out.add(fields[9])
    return out


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class DavServerProc(Server):
    """`davserver serve` on the fixture's instance; `workers` (1, 2, "auto"), when given, is passed
    as `--workers` and overrides server.workers (None: the configuration's, i.e. the default)."""

    name, label = "davserver", "davserver"
    ready_pattern = r"davserver serving https://127\.0\.0\.1:(\d+)/"

    def __init__(self, fx: Fixture, workers: int | str | None = None) -> None:
        super().__init__(fx)
        self.workers = workers

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "davserver.cli", "--home", str(self.fx.home), "serve", "--port", "0"]
        if self.workers is not None:
            if not serve_has_workers():
                if str(self.workers) != "1":
                    raise RuntimeError(f"this davserver's serve has no --workers: cannot run {self.workers} workers")
                return cmd  # one process is all it can run
            cmd += ["--workers", str(self.workers)]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self.wait_workers(timeout)

    def expected_workers(self) -> int:
        """Worker processes the server runs: 1 without a supervisor."""
        w = self.workers if self.workers is not None else configured_workers(self.fx.home)
        if not serve_has_workers():
            return 1
        return len(os.sched_getaffinity(0)) if str(w) == "auto" else int(w)

    def wait_workers(self, timeout: float) -> None:
        """Until every worker process listens (the supervisor may answer on the shared socket first)."""
        want = self.expected_workers()
        deadline = time.monotonic() + timeout
        while want > 1 and len(self.worker_pids()) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"davserver: {len(self.worker_pids())} of {want} workers after {timeout:.0f} s")
            time.sleep(0.05)
        if want > 1:
            time.sleep(1.0)  # each worker imports and builds its app after it is started

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        children = [p for p in _descendants(self.proc.pid) if p != self.proc.pid]
        return children or [self.proc.pid]


def serve_has_workers() -> bool:
    """Whether this davserver's `serve` takes --workers (the supervisor of server.workers)."""
    global _SERVE_HAS_WORKERS
    if _SERVE_HAS_WORKERS is None:
        out = subprocess.run([sys.executable, "-m", "davserver.cli", "serve", "--help"], capture_output=True, text=True)
        _SERVE_HAS_WORKERS = "--workers" in out.stdout
    return _SERVE_HAS_WORKERS


_SERVE_HAS_WORKERS: bool | None = None


def configured_workers(home: Path) -> int | str:
    """server.workers of the instance's configuration (its default when the key is absent)."""
    try:
        from davserver.config import Home, load_config

        return getattr(load_config(Home(home)).server, "workers", 1)
    except Exception:  # noqa: BLE001 - an older tree: one process
        return 1


class StockWsgiDAV(Server):
    name, label = "wsgidav", "stock WsgiDAV"
    ready_pattern = r"serving (\d+)"

    def command(self) -> list[str]:
        fx = self.fx
        return [sys.executable, str(BENCH_DIR / "stock_wsgidav.py"), "--root", str(fx.data),
                "--cert", str(fx.server_crt), "--key", str(fx.server_key), "--ca", str(fx.ca),
                "--user", USER, "--password-file", str(fx.password_file)]


APACHE_CONF = """\
# Generated by bench/servers.py: Debian's apache2 with mod_dav_fs, mod_ssl and Basic auth (bcrypt).
DefaultRuntimeDir {dir}
PidFile {dir}/httpd.pid
Mutex file:{dir} default
ServerName 127.0.0.1
Listen 127.0.0.1:{port} https
User www-data
Group www-data
ErrorLog {dir}/error.log
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %O" common
CustomLog {dir}/access.log common
{modules}
# Debian's apache2.conf and mods-available/mpm_event.conf, but unlimited requests per connection
Timeout 300
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0
TypesConfig /etc/mime.types
LimitRequestBody 0
SSLEngine on
SSLCertificateFile {server_crt}
SSLCertificateKeyFile {server_key}
SSLCACertificateFile {ca}
SSLVerifyClient require
SSLVerifyDepth 1
DavLockDB {dir}/davlock
<Directory />
    AllowOverride None
    Require all denied
</Directory>
Alias /data {data}
<Directory {data}>
    Options None
    AllowOverride None
    Dav On
    AuthType Basic
    AuthName "bench"
    AuthBasicProvider file
    AuthUserFile {dir}/htpasswd
    Require valid-user
</Directory>
"""

APACHE_MODULES = ("mpm_event", "authn_core", "authn_file", "authz_core", "authz_user", "auth_basic",
                  "mime", "alias", "dav", "dav_fs", "ssl")


def _htpasswd(path: Path, password: str) -> None:
    """The bench user in a bcrypt htpasswd file (`htpasswd -B`, cost 5): Apache and rclone read the same format."""
    subprocess.run(["htpasswd", "-c", "-i", "-B", str(path), USER],
                   input=password + "\n", text=True, check=True, capture_output=True)
    path.chmod(0o644)  # Apache's workers run as www-data


class Apache(Server):
    name, label = "apache", "Apache httpd"

    def command(self) -> list[str]:
        fx = self.fx
        folder = fx.work / "apache"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)  # DavLockDB is written by the www-data workers
        _htpasswd(folder / "htpasswd", fx.password)
        modules = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in APACHE_MODULES)
        conf = folder / "httpd.conf"
        conf.write_text(APACHE_CONF.format(dir=folder, port=self.port, modules=modules, data=fx.data, ca=fx.ca,
                                           server_crt=fx.server_crt, server_key=fx.server_key))
        return ["apache2", "-f", str(conf), "-d", str(folder), "-DFOREGROUND"]

    def worker_pids(self) -> list[int]:
        """mpm_event's child processes (the master accepts no connection)."""
        return [p for p in self.pids() if self.proc and p != self.proc.pid]


class RcloneServe(Server):
    """`rclone serve webdav` (Go net/http and x/net/webdav over rclone's VFS and local backend), its defaults.

    rclone serves the root of its remote, so it gets the data folder itself under `--baseurl /data`: the
    workloads' URLs stay the same and nothing else of the work folder (keys, passwords) is exposed.
    Basic auth comes from a bcrypt htpasswd file like Apache's; rclone checks it on every request too.
    """

    name, label = "rclone", "rclone serve"
    ready_pattern = r"WebDav Server started on \[?https://127\.0\.0\.1:(\d+)/"

    def command(self) -> list[str]:
        fx = self.fx
        folder = fx.work / "rclone"
        folder.mkdir(exist_ok=True)
        _htpasswd(folder / "htpasswd", fx.password)
        config = folder / "rclone.conf"
        config.touch()  # its own empty config: root's rclone.conf is neither read nor created
        return ["rclone", "serve", "webdav", str(fx.data), "--addr", "127.0.0.1:0", "--baseurl", "/data",
                "--cert", str(fx.server_crt), "--key", str(fx.server_key), "--client-ca", str(fx.ca),
                "--htpasswd", str(folder / "htpasswd"), "--vfs-cache-mode", "off",
                "--config", str(config), "--cache-dir", str(folder / "cache")]


class OpenSSLServer(Server):
    """`openssl s_server -WWW`: the TLS ceiling for one GET (no auth, no HTTP keep-alive)."""

    name, label = "openssl", "openssl s_server"
    ready_pattern = r"ACCEPT 127\.0\.0\.1:(\d+)"

    def command(self) -> list[str]:
        fx = self.fx
        return ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", str(fx.server_crt),
                "-key", str(fx.server_key), "-CAfile", str(fx.ca), "-Verify", "1", "-WWW"]
    # -WWW serves paths relative to the working folder (fx.work), so /data/big.bin is fx.data/big.bin.


def tool_versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "missing"

    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "wsgidav": version("wsgidav"),
        "cheroot": version("cheroot"),
        "apache2": first_line(["apache2", "-v"]).removeprefix("Server version: "),
        "openssl": " ".join(first_line(["openssl", "version"]).split()[:2]),
        "rclone": " ".join(first_line(["rclone", "version"]).split()[:2]),
        "curl": " ".join(first_line(["curl", "--version"]).split()[:2]),
        "ab": first_line(["ab", "-V"]).removeprefix("This is ").split(" <")[0],
    }


def require_tools(servers: set[str] | None = None) -> None:
    """Exit early, with the apt packages to install, when a tool of the run is missing (rclone: only if selected)."""
    tools = ["curl", "ab", "openssl", "apache2", "htpasswd"]
    if servers is None or "rclone" in servers:
        tools.append("rclone")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing tools: {' '.join(missing)} "
                 "(apt-get install -y curl apache2 apache2-utils openssl rclone)")
