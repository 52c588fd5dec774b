"""The client's own address behind a balancer: the PROXY protocol (server.proxy_protocol,
server.trusted_proxies, server.proxy_header_bytes).

The parser is proved by properties (every valid header round-trips, every beginning
asks for more, no input raises anything but the parser's own error) and by the listed
refusals; the live tests write v1 and v2 headers from a trusted loopback address
(127.0.0.2) before a real TLS handshake and read the audit log, the lockout and the
handshake caps; the HAProxy tests put a real HAProxy (mode tcp, send-proxy-v2 and
send-proxy) between curl and the server, each on its own loopback address.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from davserver.config import ConfigError, load_config
from davserver.proxy_protocol import (
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyPolicy,
    encode_v1,
    encode_v2,
    parse_header,
    read_header,
    starts_with_proxy_header,
)
from davserver.server import DavServer

from .conftest import CONFIG, Client, Instance, client_context

PROXY_IP = "127.0.0.2"  # the balancer, as the server sees it
OTHER_IP = "127.0.0.1"  # any other address

# --- the parser ------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
pairs = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5).map(tuple)


def _canonical(address: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(address[0])), address[1]


@given(pairs, st.binary(max_size=64))
def test_every_v1_header_round_trips_and_leaves_what_follows(pair: tuple, rest: bytes) -> None:
    src, dst = pair
    raw = encode_v1(src, dst)
    header = parse_header(raw + rest, 1)
    assert header == ProxyHeader(1, False, _canonical(src), _canonical(dst), len(raw))
    assert len(raw) <= V1_MAX_BYTES


@given(pairs, tlvs, st.binary(max_size=64))
def test_every_v2_header_round_trips_and_leaves_what_follows(pair: tuple, tlv: tuple, rest: bytes) -> None:
    src, dst = pair
    raw = encode_v2(src, dst, tlvs=tlv)
    header = parse_header(raw + rest, 2)
    assert header == ProxyHeader(2, False, _canonical(src), _canonical(dst), len(raw), tlv)


@given(st.one_of(pairs.map(lambda p: (1, encode_v1(*p))), st.tuples(pairs, tlvs).map(
    lambda p: (2, encode_v2(*p[0], tlvs=p[1])))), st.data())
def test_every_beginning_of_a_valid_header_asks_for_more(case: tuple, data: st.DataObject) -> None:
    version, raw = case
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert parse_header(raw[:cut], version) is None


@given(st.sampled_from([1, 2]), st.binary(max_size=300))
@example(1, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
@example(2, V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12))
def test_any_bytes_are_a_header_a_beginning_or_the_parsers_own_refusal(version: int, data: bytes) -> None:
    try:
        header = parse_header(data, version)  # type: ignore[arg-type]
    except ProxyHeaderError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)


@given(st.sampled_from([1, 2]), pairs, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_a_valid_header_with_one_byte_changed_never_raises_another_error(
        version: int, pair: tuple, data: st.DataObject) -> None:
    raw = bytearray(encode_v1(*pair) if version == 1 else encode_v2(*pair))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProxyHeaderError):
        parse_header(bytes(raw), version)  # type: ignore[arg-type]


@given(st.sampled_from([1, 2]), pairs, st.binary(min_size=1, max_size=600), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_socket_reader_takes_exactly_the_header_and_no_byte_behind_it(
        version: int, pair: tuple, behind: bytes, data: st.DataObject) -> None:
    raw = encode_v1(*pair) if version == 1 else encode_v2(*pair)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) + len(behind) - 1), max_size=4)))
    stream = raw + behind
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        held = bytearray()
        header = None
        for piece in pieces:
            left.sendall(piece)
            if header is None:
                header = read_header(right, version, held)  # type: ignore[arg-type]
        left.close()
        assert header is not None and header.length == len(raw) and bytes(held) == raw
        rest = b""
        while chunk := right.recv(4096):
            rest += chunk
        assert rest == behind  # the ClientHello behind the header: every byte still there


@given(st.sampled_from([1, 2]), st.binary(max_size=300), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_the_socket_reader_refuses_any_garbage_or_cut_off_stream_with_its_own_errors(
        version: int, garbage: bytes, data: st.DataObject) -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        left.sendall(garbage)
        left.close()
        held = bytearray()
        try:
            for _ in range(4):
                if read_header(right, version, held) is not None:  # type: ignore[arg-type]
                    return  # garbage that is a header: taken
        except (ProxyHeaderError, EOFError):
            return
        raise AssertionError(f"neither a header nor a refusal for {garbage!r}")


V6_MAX = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
REFUSED_V1 = [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # a leading zero
    b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family and address disagree
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # a zone
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n",
    b"PROXY \r\n",
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a ClientHello: no header at all
    V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12),  # the other version
    b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n",  # 109 bytes
    b"PROXY UNKNOWN " + b"x" * 100,  # no CRLF within 107 bytes
]


@pytest.mark.parametrize("raw", REFUSED_V1)
def test_malformed_v1_headers_are_refused(raw: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(raw, 1)


def test_a_v1_line_of_107_bytes_is_taken_and_one_of_108_refused() -> None:
    longest = f"PROXY UNKNOWN {V6_MAX} {V6_MAX} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_BYTES == 107
    header = parse_header(longest, 1)
    assert header == ProxyHeader(1, True, None, None, 107)  # UNKNOWN: the proxy's own address stays
    with pytest.raises(ProxyHeaderError, match="no CRLF within 107 bytes"):
        parse_header(longest.replace(b" 65535\r\n", b" 655350\r\n"), 1)
    tcp6 = f"PROXY TCP6 {V6_MAX} {V6_MAX} 65535 65535\r\n".encode()
    assert parse_header(tcp6, 1) == ProxyHeader(1, False, (V6_MAX, 65535), (V6_MAX, 65535), len(tcp6))


def _v2(command_byte: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([command_byte, family]) + len(body).to_bytes(2, "big") + body


REFUSED_V2 = {
    "version 1": _v2(0x11, 0x11, bytes(12)),
    "version 3": _v2(0x31, 0x11, bytes(12)),
    "command 2": _v2(0x22, 0x11, bytes(12)),
    "AF_UNSPEC under PROXY": _v2(0x21, 0x00, b""),
    "AF_UNIX": _v2(0x21, 0x31, bytes(216)),
    "UDP over IPv4": _v2(0x21, 0x12, bytes(12)),
    "IPv4 block too short": _v2(0x21, 0x11, bytes(11)),
    "IPv6 block too short": _v2(0x21, 0x21, bytes(35)),
    "TLV cut in its length": _v2(0x21, 0x11, bytes(12) + b"\x01\x00"),
    "TLV longer than the header": _v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05abc"),
    "a v1 line": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "a ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00\x00",
    "signature off by one byte": V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),
}


@pytest.mark.parametrize("raw", REFUSED_V2.values(), ids=list(REFUSED_V2))
def test_malformed_v2_headers_are_refused(raw: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(raw, 2)


def test_v2_local_is_taken_with_no_address_whatever_its_block_holds() -> None:
    for raw in (encode_v2(None, None), _v2(0x20, 0x11, bytes(12)), _v2(0x20, 0x31, bytes(216))):
        assert parse_header(raw, 2) == ProxyHeader(2, True, None, None, len(raw))


def test_a_v2_header_above_proxy_header_bytes_is_refused_at_it_taken() -> None:
    src, dst = ("192.0.2.1", 40000), ("192.0.2.9", 443)
    fits = encode_v2(src, dst, tlvs=((0xEE, bytes(232 - 16 - 12 - 3)),))
    assert len(fits) == 232
    assert parse_header(fits, 2, max_v2_bytes=232) is not None
    over = encode_v2(src, dst, tlvs=((0xEE, bytes(232 - 16 - 12 - 2)),))
    with pytest.raises(ProxyHeaderError, match="above server.proxy_header_bytes"):
        parse_header(over[:16], 2, max_v2_bytes=232)  # refused from its length field, before the rest arrives


def test_the_screen_for_untrusted_addresses() -> None:
    assert starts_with_proxy_header(b"\x16\x03\x01\x00") is False
    assert starts_with_proxy_header(b"GET / HTTP/1.1\r\n") is False
    assert starts_with_proxy_header(b"PROXY TCP4 ") is True
    assert starts_with_proxy_header(V2_SIGNATURE + b"\x21") is True
    for prefix in (b"", b"P", b"PROXY", b"\r\n\r\n", V2_SIGNATURE[:11]):
        assert starts_with_proxy_header(prefix) is None


def test_trusted_proxies_match_networks_and_ipv4_mapped_addresses() -> None:
    policy = ProxyPolicy.from_settings("v2", ("10.0.0.0/8", "2001:db8::/32"), 4096)
    assert policy is not None and policy.version == 2
    assert policy.trusts("10.1.2.3") and policy.trusts("::ffff:10.1.2.3") and policy.trusts("2001:db8::5")
    assert not policy.trusts("11.0.0.1") and not policy.trusts("2001:db9::1") and not policy.trusts("nonsense")
    assert ProxyPolicy.from_settings("off", (), 4096) is None


# --- the settings ------------------------------------------------------------------------


def _config(inst: Instance, server: str) -> Path:
    path = inst.home.config_file
    path.write_text(CONFIG.replace("server: {bind: 127.0.0.1, port: 0, threads: 16, timeout: 10}", server))
    return path


@pytest.mark.parametrize(
    ("server", "key", "words"),
    [
        ("server: {proxy_protocol: v2}", "server.proxy_protocol", "server.trusted_proxies is empty"),
        ("server: {proxy_protocol: v1, trusted_proxies: []}", "server.proxy_protocol",
         "server.trusted_proxies is empty"),
        ("server: {proxy_protocol: v3, trusted_proxies: [10.0.0.1]}", "server.proxy_protocol", "off, v1 or v2"),
        ("server: {proxy_protocol: v2, trusted_proxies: [10.0.0.1/8]}", "server.trusted_proxies[0]",
         "did you mean 10.0.0.0/8"),
        ("server: {proxy_protocol: v2, trusted_proxies: [balancer.local]}", "server.trusted_proxies[0]",
         "not an address"),
        ("server: {proxy_protocol: v2, trusted_proxies: 10.0.0.1}", "server.trusted_proxies", "not a list"),
        ("server: {proxy_protocol: v2, trusted_proxies: [10.0.0.1], proxy_header_bytes: 231}",
         "server.proxy_header_bytes", "232 to 65551"),
        ("server: {proxy_protocol: v2, trusted_proxies: [10.0.0.1], proxy_header_bytes: 65552}",
         "server.proxy_header_bytes", "232 to 65551"),
    ],
)
def test_proxy_settings_that_cannot_work_are_config_errors(inst: Instance, server: str, key: str, words: str) -> None:
    _config(inst, server)
    with pytest.raises(ConfigError) as err:
        load_config(inst.home)
    assert err.value.key == key and words in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("server", "mode", "trusted", "limit"),
    [
        ("server: {}", "off", (), 4096),
        ("server: {proxy_protocol: off}", "off", (), 4096),
        ("server: {proxy_protocol: v2, trusted_proxies: [10.0.0.1, 10.1.0.0/16, '2001:db8::/48']}", "v2",
         ("10.0.0.1/32", "10.1.0.0/16", "2001:db8::/48"), 4096),
        ("server: {proxy_protocol: v1, trusted_proxies: [10.0.0.1], proxy_header_bytes: 232}", "v1",
         ("10.0.0.1/32",), 232),
        ("server: {proxy_protocol: v2, trusted_proxies: [10.0.0.1], proxy_header_bytes: 65551}", "v2",
         ("10.0.0.1/32",), 65551),
    ],
)
def test_proxy_settings_that_work_are_taken(inst: Instance, server: str, mode: str, trusted: tuple, limit: int) -> None:
    _config(inst, server)
    s = load_config(inst.home).server
    assert (s.proxy_protocol, s.trusted_proxies, s.proxy_header_bytes) == (mode, trusted, limit)


# --- live: headers written before a real TLS handshake -------------------------------------

LIVE_SERVER = "server: {{bind: 127.0.0.1, port: 0, threads: 16, timeout: 10, proxy_protocol: {mode}, " \
              "trusted_proxies: [{trusted}]{extra}}}"


@contextmanager
def proxied_server(inst: Instance, mode: str, *, trusted: str = PROXY_IP, extra: str = "",
                   append: str = "") -> Iterator[DavServer]:
    path = _config(inst, LIVE_SERVER.format(mode=mode, trusted=trusted, extra=extra))
    if append:
        path.write_text(path.read_text() + append)
    server = DavServer(load_config(inst.home), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def audit(inst: Instance) -> list[dict]:
    path = inst.home.state_dir / "audit.log"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def audit_after(inst: Instance, before: int, count: int = 1) -> list[dict]:
    for _ in range(250):
        records = audit(inst)[before:]
        if len(records) >= count:
            return records
        time.sleep(0.02)
    return audit(inst)[before:]


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(15)
    sock.connect(("127.0.0.1", port))
    return sock


def request(inst: Instance, port: int, *, source: str, header: bytes, client: Client | None,
            password: str | None = None, path: str = "/files/") -> int:
    """Write `header` from `source`, then a TLS handshake with `client`'s certificate and
    one GET with Basic credentials; the status. Raises OSError/SSLError when refused."""
    sock = connect_from(source, port)
    tls: ssl.SSLSocket | None = None
    try:
        sock.sendall(header)
        tls = client_context(inst, client).wrap_socket(sock, server_hostname="127.0.0.1")
        user = client.account if client else "nobody"
        pw = client.password if password is None and client else (password or "")
        cred = base64.b64encode(f"{user}:{pw}".encode()).decode()
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {cred}\r\n"
                    "Connection: close\r\n\r\n".encode())
        first = tls.recv(4096)
        if not first:
            raise ConnectionResetError("closed without an answer")
        return int(first.split(b" ", 2)[1])
    finally:
        if tls is not None:
            tls.close()
        sock.close()


def refused(inst: Instance, port: int, *, source: str, header: bytes, client: Client | None) -> str:
    """The same as `request`, expecting the connection to be closed before any answer."""
    try:
        status = request(inst, port, source=source, header=header, client=client)
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__
    raise AssertionError(f"answered {status}, expected the connection closed")


CLIENT_SRC, CLIENT_DST = ("203.0.113.7", 50123), ("198.51.100.1", 443)
HEADERS = {"v1": encode_v1(CLIENT_SRC, CLIENT_DST), "v2": encode_v2(CLIENT_SRC, CLIENT_DST)}


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_a_header_from_the_trusted_proxy_gives_the_audit_log_the_clients_address(inst: Instance, mode: str) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, mode) as server:
        before = len(audit(inst))
        assert request(inst, server.port, source=PROXY_IP, header=HEADERS[mode], client=alice) == 200
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["account"], record["reason"]) == ("203.0.113.7", "alice", "ok")
        # twin: the same proxy without a header is refused and closed, audited with its own address
        before = len(audit(inst))
        refused(inst, server.port, source=PROXY_IP, header=b"", client=alice)
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == (PROXY_IP, "proxy_header"), record
        assert f"no PROXY {mode} header" in record["detail"]
        # and the other version is refused too
        before = len(audit(inst))
        other = HEADERS["v2" if mode == "v1" else "v1"]
        refused(inst, server.port, source=PROXY_IP, header=other, client=alice)
        assert audit_after(inst, before)[-1]["reason"] == "proxy_header"
        assert server.handshakes.counters().proxy_refused == 2


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_a_header_from_an_untrusted_address_is_refused_and_a_plain_client_served(inst: Instance, mode: str) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, mode) as server:
        before = len(audit(inst))
        refused(inst, server.port, source=OTHER_IP, header=HEADERS[mode], client=alice)
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == (OTHER_IP, "proxy_header"), record
        assert "not in server.trusted_proxies" in record["detail"]
        # twin: the same client without a header, straight to the server, is served as itself
        before = len(audit(inst))
        assert request(inst, server.port, source=OTHER_IP, header=b"", client=alice) == 200
        assert audit_after(inst, before)[-1]["peer"] == OTHER_IP


def test_a_local_header_keeps_the_proxys_own_address(inst: Instance) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, "v2") as server:
        before = len(audit(inst))
        assert request(inst, server.port, source=PROXY_IP, header=encode_v2(None, None), client=alice) == 200
        assert audit_after(inst, before)[-1]["peer"] == PROXY_IP


def test_with_proxy_protocol_off_a_header_is_a_bad_tls_handshake(inst: Instance) -> None:
    alice = inst.clients["alice"]
    config = _config(inst, "server: {bind: 127.0.0.1, port: 0, threads: 16, timeout: 10}")
    assert "proxy_protocol" not in config.read_text()
    server = DavServer(load_config(inst.home), port=0)
    server.start()
    try:
        refused(inst, server.port, source=PROXY_IP, header=HEADERS["v2"], client=alice)
        for _ in range(100):
            if server.handshakes.counters().failed:
                break
            time.sleep(0.02)
        counters = server.handshakes.counters()
        assert (counters.failed, counters.proxy_refused) == (1, 0)
        assert all(r["reason"] != "proxy_header" for r in audit(inst))
        # twin: the same client without the header is served, with its own address
        before = len(audit(inst))
        assert request(inst, server.port, source=PROXY_IP, header=b"", client=alice) == 200
        assert audit_after(inst, before)[-1]["peer"] == PROXY_IP
    finally:
        server.stop()


def test_a_header_cut_off_is_refused_and_one_stalled_ends_at_handshake_seconds(inst: Instance) -> None:
    alice = inst.clients["alice"]
    with proxied_server(inst, "v2", append="limits: {handshake_seconds: 1}\n") as server:
        raw = HEADERS["v2"]
        before = len(audit(inst))
        with connect_from(PROXY_IP, server.port) as sock:
            sock.sendall(raw[:20])
            time.sleep(0.2)
        record = audit_after(inst, before)[-1]
        assert record["reason"] == "proxy_header" and "cut off" in record["detail"], record
        # stalled half-way: closed at limits.handshake_seconds (1 s), not before
        with connect_from(PROXY_IP, server.port) as sock:
            sock.sendall(raw[:20])
            started = time.monotonic()
            assert sock.recv(1) == b""
            waited = time.monotonic() - started
        assert 0.8 <= waited <= 3.0, waited
        assert server.handshakes.counters().timed_out == 1
        # a plain TCP check (connect, close) is neither audited nor counted as refused
        before = len(audit(inst))
        with connect_from(PROXY_IP, server.port):
            pass
        time.sleep(0.2)
        assert audit(inst)[before:] == [] and server.handshakes.counters().proxy_refused == 1
        # twin: the whole header, sent in two parts, is served
        with connect_from(PROXY_IP, server.port) as sock:
            sock.sendall(raw[:20])
            time.sleep(0.1)
            sock.sendall(raw[20:])
            with client_context(inst, alice).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert tls.recv(12).startswith(b"HTTP/1.1 ")


def test_a_v2_header_above_proxy_header_bytes_is_refused_live(inst: Instance) -> None:
    alice = inst.clients["alice"]
    fits = encode_v2(CLIENT_SRC, CLIENT_DST, tlvs=((0xEE, bytes(232 - 16 - 12 - 3)),))
    over = encode_v2(CLIENT_SRC, CLIENT_DST, tlvs=((0xEE, bytes(232 - 16 - 12 - 2)),))
    with proxied_server(inst, "v2", extra=", proxy_header_bytes: 232") as server:
        before = len(audit(inst))
        refused(inst, server.port, source=PROXY_IP, header=over, client=alice)
        assert "above server.proxy_header_bytes (232)" in audit_after(inst, before)[-1]["detail"]
        assert request(inst, server.port, source=PROXY_IP, header=fits, client=alice) == 200


THROTTLE = """
throttle: {lock_after: 2, address_lock_after: 2, delay_after: 100}
"""


@pytest.mark.parametrize(
    ("attacker", "same_client", "other_client"),
    [
        (["203.0.113.7", "203.0.113.7"], "203.0.113.7", "203.0.113.8"),
        # IPv6: one /64 is one address (auth/lockout.py, RFC 6177)
        (["2001:db8:1:2::1", "2001:db8:1:2::2"], "2001:db8:1:2::3", "2001:db8:1:3::1"),
    ],
)
def test_the_lockout_locks_the_headers_address_not_the_proxys(
        inst: Instance, attacker: list[str], same_client: str, other_client: str) -> None:
    def via(ip: str) -> bytes:
        return encode_v2((ip, 40000), ("2001:db8::1" if ":" in ip else "198.51.100.1", 443))

    with proxied_server(inst, "v2", append=THROTTLE) as server:
        for account, ip in zip(["alice", "bob"], attacker, strict=True):  # two accounts locked out from it
            for i in range(2):  # two different guesses: a repeated one counts once
                assert request(inst, server.port, source=PROXY_IP, header=via(ip), client=inst.clients[account],
                               password=f"wrong-password-{i}") == 401
        carol = inst.clients["carol"]
        before = len(audit_after(inst, 0, 4))  # each line is written once its answer has gone
        assert request(inst, server.port, source=PROXY_IP, header=via(same_client), client=carol) == 401
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == (same_client, "locked"), record
        # twin: another client behind the same proxy, and the proxy itself, are not locked out
        assert request(inst, server.port, source=PROXY_IP, header=via(other_client), client=carol) == 200
        assert request(inst, server.port, source=PROXY_IP, header=encode_v2(None, None), client=carol) == 200


def test_the_handshake_cap_per_address_counts_the_headers_address(inst: Instance) -> None:
    with proxied_server(inst, "v2", extra=", handshakes_per_address: 2") as server:
        a = [connect_from(PROXY_IP, server.port) for _ in range(3)]
        b = [connect_from(PROXY_IP, server.port) for _ in range(2)]
        try:
            for sock in a:  # three silent handshakes of client A behind the proxy
                sock.sendall(encode_v2(("192.0.2.10", 1000), CLIENT_DST))
                time.sleep(0.05)
            for sock in b:  # two of client B
                sock.sendall(encode_v2(("192.0.2.20", 1000), CLIENT_DST))
            time.sleep(0.3)
            counters = server.handshakes.counters()
            assert (counters.evicted_per_address, counters.pending) == (1, 4), counters
            a[0].settimeout(2)
            assert a[0].recv(1) == b"", "A's oldest handshake is the one closed"
            for sock in [*a[1:], *b]:  # the twins: the others wait on
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
        finally:
            for sock in a + b:
                sock.close()


# --- a real HAProxy in front -----------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_SOURCE = "127.0.0.3"  # the balancer's address towards davserver
CURL_SOURCE = "127.0.0.2"  # the client's

SCALING_DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"


def _doc_blocks() -> tuple[str, str]:
    """docs/scaling.md's HAProxy configuration and the node settings beside it."""
    section = SCALING_DOC.read_text().split("## HAProxy", 1)[1]
    haproxy_cfg = re.search(r"```\n(.*?)```", section, re.S)
    node_yaml = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert haproxy_cfg and node_yaml
    return haproxy_cfg.group(1), node_yaml.group(1)


def haproxy_config(port: int, backend_port: int, send_proxy: str) -> str:
    """The documented configuration, as written but for the addresses, the port, the
    check interval and HAProxy's source address (all nodes are this one server)."""
    text, _ = _doc_blocks()
    assert text.count("bind :443") == 1
    text = text.replace("bind :443", f"bind 127.0.0.1:{port}")
    text, n = re.subn(r"10\.0\.0\.1[12]:8443 check send-proxy-v2",
                      f"127.0.0.1:{backend_port} check {send_proxy} inter 100ms source {HAPROXY_SOURCE}", text)
    assert n == 2, text
    return text


def test_the_documented_node_settings_load(inst: Instance) -> None:
    _, node = _doc_blocks()
    server = yaml.safe_load(node)["server"]
    assert server == {"proxy_protocol": "v2", "trusted_proxies": ["10.0.0.5"]}
    _config(inst, "server: " + json.dumps({"bind": "127.0.0.1", "port": 0, **server}))
    loaded = load_config(inst.home).server
    assert (loaded.proxy_protocol, loaded.trusted_proxies) == ("v2", ("10.0.0.5/32",))


def _free_port_in(lo: int, hi: int) -> int:
    for port in range(lo, hi + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


@contextmanager
def haproxy(tmp_path: Path, backend_port: int, send_proxy: str) -> Iterator[int]:
    """HAProxy in the foreground on a free port of 18400-18499 with its own config
    file (docs/scaling.md's); stopped by its PID."""
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed (apt-get install haproxy; .ci/run installs it)")
    port = _free_port_in(18400, 18499)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, backend_port, send_proxy))
    subprocess.run([HAPROXY, "-c", "-f", str(cfg)], check=True, capture_output=True)
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.025)
        else:
            raise AssertionError("haproxy did not start listening")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def curl(inst: Instance, port: int) -> tuple[int, str]:
    alice = inst.clients["alice"]
    out = subprocess.run(
        ["curl", "-sS", "--interface", CURL_SOURCE, "--cacert", str(inst.ca_file), "--cert", str(alice.crt),
         "--key", str(alice.key), "-u", f"alice:{alice.password}", "-o", "/dev/null", "-w", "%{http_code}",
         "--max-time", "20", f"https://127.0.0.1:{port}/files/"],
        capture_output=True, text=True, check=False,
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize(("send_proxy", "mode"), [("send-proxy-v2", "v2"), ("send-proxy", "v1")])
def test_through_haproxy_the_audit_log_shows_the_clients_own_address(
        inst: Instance, tmp_path: Path, capfd: pytest.CaptureFixture[str], send_proxy: str, mode: str) -> None:
    with proxied_server(inst, mode, trusted=HAPROXY_SOURCE) as server, \
            haproxy(tmp_path, server.port, send_proxy) as port:
        before = len(audit(inst))
        rc, out = curl(inst, port)
        assert (rc, out) == (0, "200")
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["account"], record["status"]) == (CURL_SOURCE, "alice", 200), record
        time.sleep(1.0)  # ten health checks: a header, then a close (or a reset before the accept)
        counters = server.handshakes.counters()
        assert (counters.failed, counters.proxy_refused, counters.completed) == (0, 0, 1), counters
    assert [r["reason"] for r in audit(inst)[before:]] == ["ok"]
    assert "Traceback" not in capfd.readouterr().err


def test_through_haproxy_without_send_proxy_the_connection_is_refused(inst: Instance, tmp_path: Path) -> None:
    with proxied_server(inst, "v2", trusted=HAPROXY_SOURCE) as server, haproxy(tmp_path, server.port, "") as port:
        before = len(audit(inst))
        rc, out = curl(inst, port)
        assert rc != 0, out
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == (HAPROXY_SOURCE, "proxy_header"), record


def test_a_balancer_not_in_trusted_proxies_is_refused(inst: Instance, tmp_path: Path) -> None:
    with proxied_server(inst, "v2", trusted="127.0.0.9") as server, \
            haproxy(tmp_path, server.port, "send-proxy-v2") as port:
        before = len(audit(inst))
        rc, out = curl(inst, port)
        assert rc != 0, out
        record = audit_after(inst, before)[-1]
        assert (record["peer"], record["reason"]) == (HAPROXY_SOURCE, "proxy_header"), record
        assert "not in server.trusted_proxies" in record["detail"]


def test_a_flood_of_untrusted_headers_is_audited_within_the_rate_limit(inst: Instance) -> None:
    with proxied_server(inst, "v2") as server:
        before = len(audit(inst))
        started = time.monotonic()
        for _ in range(20):
            with connect_from(OTHER_IP, server.port) as sock:
                sock.sendall(HEADERS["v2"])
                assert sock.recv(1) == b""  # closed
        elapsed = time.monotonic() - started
        for _ in range(100):
            if server.handshakes.counters().proxy_refused == 20:
                break
            time.sleep(0.02)
        assert server.handshakes.counters().proxy_refused == 20
        lines = [r for r in audit(inst)[before:] if r.get("reason") == "proxy_header"]
        # audit.tls_refusals_per_second (5) from one address per second, the rest summed up
        assert 1 <= len(lines) <= 5 * (int(elapsed) + 2), (len(lines), elapsed)
        if elapsed < 1:
            assert len(lines) <= 10
        # twin: a client without a header from that address is still served
        assert request(inst, server.port, source=OTHER_IP, header=b"", client=inst.clients["alice"]) == 200
