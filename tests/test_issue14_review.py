"""Faults found by trying the service features (issue 14) as a new administrator and as
an attacker would: each with the exact input, the kind of input around it, and a twin
showing the legitimate case still works.

- A balancer listed in ``server.trusted_proxies`` in its IPv4-mapped form
  (``::ffff:127.0.0.2``, what ``ss`` shows for an IPv4 peer of a dual-stack ``::``
  listener) was not trusted: every connection through it was refused as an untrusted
  PROXY header.
- One client trickling a request to the metrics listener held its only worker: /healthz
  answered nothing for as long as the client kept trickling.
- ``davserver check`` with a ``state.url`` redis-py cannot parse (a bad port or host)
  ended in "unexpected ValueError"; ``check --timeout nan`` was taken and then failed the
  same way against Redis.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from davserver.cli import main
from davserver.config import ConfigError, Home, load_config, parse_config
from davserver.proxy_protocol import ProxyPolicy, encode_v2
from davserver.server import DavServer

from .conftest import Instance
from .test_proxy_protocol import CLIENT_DST, PROXY_IP, audit, audit_after, proxied_server, refused, request

# --- trusted_proxies written in IPv4-mapped form ---------------------------------------------


@pytest.mark.parametrize("trusted", ["'::ffff:127.0.0.2'", "'::ffff:127.0.0.0/120'", "'::ffff:0:0/96'",
                                     "127.0.0.2", "127.0.0.0/8"])
def test_a_balancer_listed_in_either_form_is_trusted_through_a_real_tls_request(inst: Instance, trusted: str) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, "v2", trusted=trusted) as server:
        before = len(audit(inst))
        header = encode_v2(("203.0.113.9", 40000), CLIENT_DST)
        assert request(inst, server.port, source=PROXY_IP, header=header, client=alice) == 200
        assert audit_after(inst, before)[-1]["peer"] == "203.0.113.9"


def test_an_address_outside_the_mapped_network_stays_untrusted(inst: Instance) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, "v2", trusted="'::ffff:127.0.0.2'") as server:
        before = len(audit(inst))
        header = encode_v2(("203.0.113.9", 40000), CLIENT_DST)
        refused(inst, server.port, source="127.0.0.3", header=header, client=alice)
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == ("127.0.0.3", "proxy_header")
        assert "not in server.trusted_proxies" in record["detail"]


def test_trust_is_the_same_for_an_ipv4_address_and_its_mapped_form_for_every_network() -> None:
    networks = ["10.0.0.5", "10.0.0.0/24", "0.0.0.0/0", "::ffff:10.0.0.5", "::ffff:10.0.0.0/120",
                "::ffff:0:0/96", "::/0", "2001:db8::/32", "::fffe:0:0/95", "::10.0.0.5"]
    peers = ["10.0.0.5", "10.0.0.6", "10.0.1.5", "192.0.2.1", "0.0.0.0", "255.255.255.255"]  # noqa: S104 - a peer address, not a bind
    for net in networks:
        policy = ProxyPolicy.from_settings("v2", (str(ipaddress.ip_network(net)),), 4096)
        assert policy is not None
        for peer in peers:
            mapped = f"::ffff:{peer}"
            assert policy.trusts(peer) == policy.trusts(mapped), (net, peer)
            inside = any(ipaddress.ip_address(a) in ipaddress.ip_network(net) for a in (peer, mapped))
            plain_v6 = ":" in net and not ipaddress.IPv6Network(net).subnet_of(ipaddress.IPv6Network("::ffff:0:0/96"))
            # a plain IPv6 network (::/0 included) holds no IPv4 peer; every other one exactly its addresses
            assert policy.trusts(peer) == (inside and not plain_v6), (net, peer)
    # twin: real IPv6 peers are matched by IPv6 networks as before
    policy = ProxyPolicy.from_settings("v2", ("2001:db8::/32",), 4096)
    assert policy is not None and policy.trusts("2001:db8::1") and not policy.trusts("2001:db9::1")


# --- a trickling client against the metrics listener --------------------------------------------

METRICS = "\nmetrics: {enabled: true, port: 0}\nlimits: {header_seconds: 1}\n"


def _healthz(port: int) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=8) as r:  # noqa: S310 - loopback
        return r.status, time.monotonic() - started


def test_trickling_clients_cannot_keep_healthz_from_answering(inst: Instance) -> None:
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + METRICS)
    server = DavServer(load_config(inst.home), port=0)
    server.start()
    stop = threading.Event()
    socks: list[socket.socket] = []
    try:
        assert server.metrics_listener is not None
        port = server.metrics_listener.port
        assert _healthz(port)[0] == 200  # twin: a plain health check
        # exact input: "GET /metrics HTTP/1.1\r\n", then one header line every 0.3 s, never ending
        for _ in range(3):  # more tricklers than the listener has workers
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            socks.append(s)

        def trickle() -> None:
            while not stop.wait(0.3):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-a: b\r\n")

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        for _ in range(3):
            status, took = _healthz(port)
            # limits.header_seconds (1 s here) bounds every request of the listener
            assert status == 200 and took < 4, took
        # the tricklers were closed at their deadline, unanswered
        for s in socks:
            s.settimeout(5)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            assert b"200 OK" not in data
    finally:
        stop.set()
        for s in socks:
            s.close()
        server.stop()


# --- davserver check and a state.url redis-py cannot parse ----------------------------------------

BAD_URLS = [
    "redis://:Sup3rSecretPw@127.0.0.1:notaport/0",  # exact input: a port that is no number
    "redis://:Sup3rSecretPw@[::1/0",
    "redis://:Sup3rSecretPw@127.0.0.1:99999/0",
    "redis://127.0.0.1:6379/0?socket_timeout=abc",
]


def _check(home: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["--home", str(home), "check", *args])
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unparsable_redis_url_is_a_config_error_without_its_password(inst: Instance, url: str) -> None:
    """A state.url redis-py cannot read is refused when the configuration is loaded (not at
    the first store call): `check` exits 2 with one line naming state.url, `serve` and
    the account commands refuse the same way, and the password never appears."""
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + f"state: {{backend: redis, url: '{url}'}}\n")
    code, out, err = _check(inst.home.root, "--json")
    assert code == 2 and out == "" and "unexpected" not in err, (out, err)
    assert err.startswith("error: ") and " state.url: " in err and len(err.strip().splitlines()) == 1, err
    assert "Sup3rSecretPw" not in out + err
    for args in (["user", "unlock", "alice"], ["serve", "--port", "0"]):
        r = CliRunner().invoke(main, ["--home", str(inst.home.root), *args])
        assert r.exit_code == 2 and "state.url" in r.stderr and "Sup3rSecretPw" not in r.stdout + r.stderr, r.stderr
    with pytest.raises(ConfigError) as exc:
        load_config(inst.home)
    assert exc.value.key == "state.url" and "Sup3rSecretPw" not in str(exc.value)


@pytest.mark.parametrize("url", ["http://:Sup3rSecretPw@x/0", "redis://:Sup3rSecretPw@host:0/0",
                                 "redis://:Sup3rSecretPw@/0", "redis://:Sup3rSecretPw@h/abc"])
def test_every_refused_redis_url_hides_its_password(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"state": {"backend": "redis", "url": url}}, Home(tmp_path))
    assert exc.value.key == "state.url" and "Sup3rSecretPw" not in str(exc.value) and ":***@" in str(exc.value)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:pw@host:6380/2", "redis://[::1]/3",
                                 "unix:///run/redis.sock", "redis://h:6379/0?socket_timeout=5"])
def test_usable_redis_urls_load(tmp_path: Path, url: str) -> None:
    """The twins: URLs redis-py reads load unchanged."""
    assert parse_config({"state": {"backend": "redis", "url": url}}, Home(tmp_path)).state.url == url


def test_a_parsable_but_unreachable_redis_url_is_still_the_ping_finding(inst: Instance) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = inst.home.config_file
    cfg.write_text(cfg.read_text() + f"state: {{backend: redis, url: 'redis://127.0.0.1:{port}/0'}}\n")
    code, out, _ = _check(inst.home.root, "--json")
    found = [f for f in json.loads(out)["findings"] if f.get("setting") == "state.url"]
    assert code == 1 and len(found) == 1 and "no answer to a ping" in found[0]["message"]


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-1", "0", "61"])
def test_check_timeout_refuses_what_is_no_number_of_seconds(inst: Instance, value: str) -> None:
    code, out, err = _check(inst.home.root, "--timeout", value)
    assert code == 2 and out == "" and "--timeout" in err and "unexpected" not in err, (out, err)
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0.1", "2", "60"])
def test_check_timeout_takes_a_number_of_seconds(inst: Instance, value: str) -> None:
    code, _, err = _check(inst.home.root, "--timeout", value)
    assert code in (0, 1) and err == "", err


# --- a listener address that is not this host's -----------------------------------------------

NOT_HERE = "203.0.113.77"  # TEST-NET-3 (RFC 5737): never an address of the test machine


def _set_bind(inst: Instance, text: str) -> None:
    """Append `text`; a ``server:`` mapping replaces the test instance's own."""
    cfg = inst.home.config_file
    body = cfg.read_text()
    if text.lstrip().startswith("server:"):
        old = "server: {bind: 127.0.0.1, port: 0, threads: 16, timeout: 10}"
        assert old in body
        body = body.replace(old, "")
    cfg.write_text(body + text)


def test_a_server_bind_that_is_no_address_of_this_host_says_so_not_port_in_use(inst: Instance) -> None:
    from davserver.errors import StartupError

    _set_bind(inst, f"\nserver: {{bind: {NOT_HERE}, port: {_free_port()}}}\n")
    r = CliRunner().invoke(main, ["--home", str(inst.home.root), "serve"])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == (f"error: server.bind: {NOT_HERE} is not an address of this host "
                                "(use one of its addresses, 0.0.0.0 or ::)"), r.stderr
    code, out, _ = _check(inst.home.root, "--json")
    assert code == 1 and {"level": "error", "setting": "server.bind", "message":
                          f"{NOT_HERE} is not an address of this host",
                          "fix": "use one of its addresses, 0.0.0.0 or ::"} in json.loads(out)["findings"]
    # with port 0 (no pre-check) the same words
    server = DavServer(load_config(inst.home), port=0)
    with pytest.raises(StartupError, match=f"server.bind: {NOT_HERE} is not an address of this host"):
        server.prepare()


def test_a_metrics_bind_that_is_no_address_of_this_host_says_so(inst: Instance) -> None:
    from davserver.errors import StartupError

    _set_bind(inst, f"\nmetrics: {{enabled: true, bind: {NOT_HERE}, port: {_free_port()}}}\n")
    server = DavServer(load_config(inst.home), port=0)
    with pytest.raises(StartupError, match=f"metrics.bind: {NOT_HERE} is not an address of this host"):
        server.prepare()
    code, out, _ = _check(inst.home.root, "--json")
    assert code == 1 and [f["setting"] for f in json.loads(out)["findings"]] == ["metrics.bind"]


def test_a_port_in_use_is_still_in_use_and_a_free_one_is_no_finding(inst: Instance) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _set_bind(inst, f"\nserver: {{bind: 127.0.0.1, port: {port}}}\n")
        r = CliRunner().invoke(main, ["--home", str(inst.home.root), "serve"])
        assert r.exit_code == 2 and f"server.port: 127.0.0.1:{port} is already in use" in r.stderr
        # check: a port in use is the running server's own, no finding
        code, out, _ = _check(inst.home.root, "--json")
        assert code == 0, out


def test_every_bind_errno_names_the_setting_and_a_fix() -> None:
    import errno

    from davserver.server import bind_refusal

    expected = {errno.EADDRINUSE: ("metrics.port", "already in use"),
                errno.EADDRNOTAVAIL: ("metrics.bind", "not an address of this host"),
                errno.EACCES: ("metrics.port", "not allowed to listen"),
                errno.EINVAL: ("metrics.bind", "Invalid argument"), 0: ("metrics.bind", "refused")}
    for err, (key, words) in expected.items():
        got_key, message, fix = bind_refusal("metrics", "10.0.0.1", 80, err, "pick another metrics.port")
        assert got_key == key and words in message and fix, (err, message, fix)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the group's own options: one line too ----------------------------------------------------------


@pytest.mark.parametrize("args", [["--bogus"], ["--home"], ["--home", "{file}", "check"], ["--home", "{file}"],
                                  ["--bogus", "check", "--json"]])
def test_a_usage_error_in_the_groups_own_options_is_one_line(tmp_path: Path, args: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    r = CliRunner().invoke(main, [a.replace("{file}", str(afile)) for a in args], prog_name="davserver")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "(see `davserver --help`)" in lines[0] and r.stdout == ""
    assert afile.read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_group_alone_shows_its_help_not_an_error(inst: Instance) -> None:
    for args in (["share"], ["user"], ["cert"], []):
        r = CliRunner().invoke(main, args, prog_name="davserver")
        assert r.exit_code == 2 and r.output.startswith("Usage: davserver"), (args, r.output)
    # twin: the same options used right still work
    r = CliRunner().invoke(main, ["--home", str(inst.home.root), "share", "list"])
    assert r.exit_code == 0 and "files" in r.stdout


# --- serve --bind takes what server.bind takes ------------------------------------------------------


@pytest.mark.parametrize("value", ["", "nonsense", "127.0.0.1 ", "999.1.1.1", "[::1]", "127.1"])
def test_serve_bind_refuses_what_server_bind_refuses_in_one_line(inst: Instance, value: str) -> None:
    r = CliRunner().invoke(main, ["--home", str(inst.home.root), "serve", "--bind", value, "--port", "0"],
                           prog_name="davserver")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0] == (f"error: Invalid value for '--bind': {value!r} is not an IP address "
                        "(e.g. 0.0.0.0, :: or 127.0.0.1) (see `davserver serve --help`)")


def test_a_bind_that_does_not_resolve_names_the_setting() -> None:
    from davserver.errors import StartupError
    from davserver.server import _bind_error, bind_errno

    err = bind_errno("::%nosuchif0", 0)  # exact input: a zone naming no interface
    assert err is not None and err < 0
    message = str(_bind_error("server", "::%nosuchif0", 0, err, "pick --port"))
    assert message == ("server.bind: ::%nosuchif0 does not resolve to an address of this host "
                       "(use one of its IP addresses, 0.0.0.0 or ::)")
    assert isinstance(_bind_error("server", "x", 1, err, ""), StartupError)
    # twin: loopback binds
    assert bind_errno("127.0.0.1", 0) is None and bind_errno("::1", 0) is None


@pytest.mark.parametrize(("written", "canonical"), [("0000::", "::"), ("0:0:0:0:0:0:0:0", "::"),
                                                    ("::0001", "::1"), ("0.0.0.0", "0.0.0.0"),  # noqa: S104
                                                    ("127.0.0.1", "127.0.0.1")])
def test_server_bind_is_kept_in_its_canonical_spelling(tmp_path: Path, written: str, canonical: str) -> None:
    """`bind: "0000::"` listened on every address while the serve line showed
    `https://[0000::]`: the value is kept as `ipaddress` spells it, so `::` is recognised
    everywhere (the twin: already canonical addresses are unchanged)."""
    assert parse_config({"server": {"bind": written}}, Home(tmp_path)).server.bind == canonical
