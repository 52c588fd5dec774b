"""The health and metrics listener (metrics.py): real TLS requests to a live server,
then /metrics scraped over HTTP and parsed with prometheus_client's own parser.

Done when (issue 14): a refused password shows under
``davserver_auth_refusals_total{reason="bad_password"}``, /healthz answers 200, /readyz
503 while the state store is down and 200 when it answers; the listener is off by
default and serves nothing but its three paths."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from davserver.config import load_config
from davserver.server import DavServer

from .conftest import Instance, client_context, free_port, running, session_for

ROOT = Path(__file__).resolve().parent.parent
METRICS_ON = "\nmetrics: {enabled: true, port: 0}\n"


def _enable(inst: Instance, extra: str = "") -> None:
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + METRICS_ON + extra)


def _get(srv: DavServer, path: str, method: str = "GET") -> tuple[int, str]:
    assert srv.metrics_listener is not None
    req = urllib.request.Request(f"http://127.0.0.1:{srv.metrics_listener.port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own loopback listener
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(srv: DavServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(srv, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _until(srv: DavServer, done: Callable[[dict[tuple[str, tuple[tuple[str, str], ...]], float]], bool]
           ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + 5
    while not done(samples := _samples(srv)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def test_a_refused_password_and_a_served_request_are_counted(inst: Instance) -> None:
    _enable(inst)
    with running(inst) as srv:
        before = _samples(srv)
        assert _value(before, "davserver_auth_refusals_total", reason="bad_password") == 0
        bad = session_for(inst, "alice", password="wrong-password")
        assert bad.request("PROPFIND", f"{srv.url}files/", headers={"Depth": "0"}).status_code == 401
        bad.close()
        # The twin: the right password is served, and is no refusal.
        good = session_for(inst, "alice")
        r = good.put(f"{srv.url}files/a.txt", data=b"x" * 1000)
        assert r.status_code in (201, 204)
        r = good.get(f"{srv.url}files/a.txt")
        assert r.status_code == 200 and len(r.content) == 1000
        good.close()
        # The audit record (and so the count) is written when the server closes the answer,
        # a moment after the client has read it.
        after = _until(srv, lambda s: _value(s, "davserver_request_duration_seconds_count") >= 3)
    assert _value(after, "davserver_auth_refusals_total", reason="bad_password") == 1
    assert sum(v for (n, _), v in after.items() if n == "davserver_auth_refusals_total") == 1
    assert _value(after, "davserver_requests_total", method="PROPFIND", status="401") == 1
    assert _value(after, "davserver_requests_total", method="PUT", status="201") == 1
    assert _value(after, "davserver_requests_total", method="GET", status="200") == 1
    assert _value(after, "davserver_request_duration_seconds_count") == 3
    assert _value(after, "davserver_bytes_received_total") >= 1000
    assert _value(after, "davserver_bytes_sent_total") >= 1000
    # Every audit line is one request in the metrics.
    audit = [json.loads(x) for x in (inst.home.root / "state" / "audit.log").read_text().splitlines()]
    assert len(audit) == sum(v for (n, _), v in after.items() if n == "davserver_requests_total")


def test_method_labels_are_bounded(inst: Instance) -> None:
    """Any method outside the fixed list counts as ``other``, whatever the client invents."""
    _enable(inst)
    with running(inst) as srv:
        s = session_for(inst, "alice")
        for verb in ("FROB", "XYZZY1", "SEARCH"):
            s.request(verb, f"{srv.url}files/")
        s.close()
        samples = _until(srv, lambda s: _value(s, "davserver_request_duration_seconds_count") >= 3)
    methods = {dict(labels).get("method") for (n, labels) in samples if n == "davserver_requests_total"}
    assert "other" in methods
    assert not methods & {"FROB", "XYZZY1", "SEARCH"}
    assert sum(v for (n, labels), v in samples.items()
               if n == "davserver_requests_total" and dict(labels)["method"] == "other") == 3


def _settle(srv: DavServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples once no connection of the main listener is open (at most 5 s)."""
    deadline = time.monotonic() + 5
    while _value(samples := _samples(srv), "davserver_connections_open") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def test_tls_refusals_connections_handshakes_and_certificate_expiry(inst: Instance) -> None:
    _enable(inst)
    with running(inst) as srv:
        # A client without a certificate: refused at the handshake.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
                pytest.raises((ssl.SSLError, OSError)), \
                client_context(inst, None).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\n")
            if not s.recv(100):
                raise ConnectionResetError
        _settle(srv)  # the refused connection is closed (after the lingerer let it go)
        # Three kept-alive connections with a good certificate.
        held = []
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s = client_context(inst, inst.clients["bob"]).wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            held.append(s)
        time.sleep(0.2)
        during = _samples(srv)
        for s in held:
            s.close()
        after = _settle(srv)
        server_cert = x509.load_pem_x509_certificate(inst.home.certs_dir.joinpath("server.crt").read_bytes())
    assert _value(during, "davserver_tls_handshake_failures_total", reason="no_cert") == 1
    for reason in ("unknown_ca", "cert_expired", "bad_eku", "tls_error"):
        assert ("davserver_tls_handshake_failures_total", (("reason", reason),)) in during  # exported at 0
    assert _value(during, "davserver_connections_open") == 3
    assert _value(after, "davserver_connections_open") == 0
    assert _value(during, "davserver_handshakes_total", outcome="failed") == 1
    assert _value(during, "davserver_handshakes_total", outcome="completed") == 3
    expiry = {dict(labels)["kind"]: v for (n, labels), v in after.items()
              if n == "davserver_certificate_expiry_timestamp_seconds"}
    assert set(expiry) == {"ca", "server", "client"}
    assert expiry["server"] == server_cert.not_valid_after_utc.timestamp()
    soonest = min(c.issued.not_after for c in inst.clients.values()).timestamp()
    assert expiry["client"] == soonest
    assert expiry["ca"] > expiry["server"] - 86400 * 400


def test_health_paths_404_elsewhere_and_get_only(inst: Instance) -> None:
    _enable(inst)
    with running(inst) as srv:
        assert _get(srv, "/healthz") == (200, "ok\n")
        assert _get(srv, "/readyz") == (200, "ready\n")
        for path in ("/", "/metrics/", "/files/", "/healthz/x", "/favicon.ico", "/enrol/x"):
            assert _get(srv, path)[0] == 404, path
        assert _get(srv, "/metrics", "POST")[0] == 405
        assert _get(srv, "/metrics", "HEAD")[0] == 200


def test_the_listener_is_off_by_default(inst: Instance) -> None:
    config = load_config(inst.home)
    assert not config.metrics.enabled and config.metrics.port == 9180 and config.metrics.bind == "127.0.0.1"
    with running(inst) as srv:
        assert srv.metrics is None and srv.metrics_listener is None
        # Refusals are still audited without metrics (nothing depends on the listener).
        assert session_for(inst, "alice").get(f"{srv.url}files/").status_code == 200


def test_two_servers_in_one_process_keep_their_own_counters(inst: Instance, tmp_path: Path) -> None:
    _enable(inst)
    with running(inst) as one, running(inst) as two:
        s = session_for(inst, "alice", password="wrong")
        s.get(f"{one.url}files/")
        s.close()
        refused = _until(one, lambda s: _value(s, "davserver_auth_refusals_total", reason="bad_password") >= 1)
        assert _value(refused, "davserver_auth_refusals_total", reason="bad_password") == 1
        assert _value(_samples(two), "davserver_auth_refusals_total", reason="bad_password") == 0


def test_a_taken_metrics_port_is_a_startup_error(inst: Instance) -> None:
    from davserver.errors import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = inst.home.config_file
        cfg.write_text(cfg.read_text() + f"\nmetrics: {{enabled: true, port: {port}}}\n")
        srv = DavServer(load_config(inst.home), port=0)
        with pytest.raises(StartupError, match="metrics.port"):
            srv.start()


@contextmanager
def _redis(port: int, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_readyz_follows_the_state_store(inst: Instance, tmp_path: Path) -> None:
    """/readyz: 200 with Redis answering, 503 naming the state store once it is stopped
    (while /healthz stays 200: the process serves), 200 again when it is back."""
    port = free_port()
    _enable(inst, f"state: {{backend: redis, url: 'redis://127.0.0.1:{port}/0'}}\n")
    with _redis(port, tmp_path) as _:
        srv = DavServer(load_config(inst.home), port=0)
        srv.start()
        assert _get(srv, "/readyz") == (200, "ready\n")
    try:
        status, text = _get(srv, "/readyz")
        assert status == 503 and "state store" in text, text
        assert _get(srv, "/healthz")[0] == 200
        with _redis(port, tmp_path):
            deadline = time.monotonic() + 10
            while (answer := _get(srv, "/readyz"))[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert answer == (200, "ready\n")
    finally:
        srv.stop()


def test_readyz_is_200_with_redis_up(inst: Instance, redis_url: str) -> None:
    _enable(inst, f"state: {{backend: redis, url: '{redis_url}', prefix: 'metrics-{time.time_ns()}:'}}\n")
    with running(inst) as srv:
        assert _get(srv, "/readyz") == (200, "ready\n")


def _until_text(srv: DavServer, needle: str) -> tuple[int, str]:
    deadline = time.monotonic() + 5
    while needle not in (answer := _get(srv, "/metrics"))[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def test_docs_list_every_metric_and_the_dashboard_names_only_real_ones(inst: Instance) -> None:
    _enable(inst)
    with running(inst) as srv:
        session_for(inst, "alice").get(f"{srv.url}files/")
        session_for(inst, "alice", password="wrong").get(f"{srv.url}files/")  # a labelled counter shows once used
        _, text = _until_text(srv, "davserver_auth_refusals_total{")
    families = {f.name for f in text_string_to_metric_families(text)}
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    doc = (ROOT / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `(davserver_[a-z_]+)", doc, re.M))
    parts = ("_created", "_bucket", "_count", "_sum")
    shown = {n for n in exported if n.startswith("davserver_") and not n.endswith(parts)}
    shown |= {n for n in families if n + "_bucket" in exported}  # a histogram by its own name
    assert shown == listed, (shown ^ listed)
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    named = {m for e in exprs for m in re.findall(r"\b(davserver_[a-z_]+)", e)}
    assert named and named <= exported | {f"{n}_bucket" for n in families}, named - exported
