"""The PROXY protocol: the client's own address from a TCP balancer in front.

A TCP balancer that passes TLS through (HAProxy ``mode tcp``) connects to davserver
from its own address, so without more the audit log, the sign-in lockout, the
handshake caps and the metrics would see one address for everybody. With
``server.proxy_protocol`` set to ``v1`` or ``v2``, the balancer writes a PROXY header
(HAProxy's ``send-proxy`` / ``send-proxy-v2``) before the client's first TLS byte; the
handshake loop (handshake.py) reads it before the TLS handshake starts and sets the
connection's ``remote_addr`` to the header's source address, the one place every layer
reads (cheroot copies it into ``REMOTE_ADDR``).

The format is HAProxy's ``doc/proxy-protocol.txt`` (version 1: §2.1, version 2: §2.2);
this parser is strict where the text allows the receiver to be:

- Only connections from ``server.trusted_proxies`` carry a header, and from them it is
  required, in exactly the configured version (a v1 line where v2 is configured is
  refused, and the reverse). A header from any other address is refused
  (:func:`starts_with_proxy_header`): anyone could otherwise claim any address.
- Version 1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``, single spaces,
  at most 107 bytes (§2.1), addresses of the named family (IPv4 dotted quads without
  leading zeros, IPv6 without a zone), ports 0-65535 without leading zeros.
  ``PROXY UNKNOWN ...`` is what a proxy sends for its own health checks (§2.1: the
  receiver must accept it and use the real connection's addresses): the connection
  keeps the proxy's address.
- Version 2: the 12-byte signature, version 2, command LOCAL or PROXY, the header at
  most ``server.proxy_header_bytes`` long (TLVs included; §2.2 allows 65,551). LOCAL
  (the proxy's own health checks, §2.2) keeps the proxy's address and its address
  block is ignored, as §2.2 says. PROXY must carry TCP over IPv4 or IPv6: an AF_UNSPEC,
  AF_UNIX or datagram header names no client address the server could throttle, and
  taking the proxy's address instead would lump every such client together again, so
  it is refused. TLVs must fill the rest of the header exactly; their contents are not
  used (a CRC32C TLV is not checked).

Why not a library: PyPI's ``proxy-protocol`` (0.11.3) is the one maintained-looking
package; its last release is from April 2024, it is built around asyncio streams, and
it does not bound a v2 header below the format's 64 KiB. The parser here is small,
pure and property-tested (tests/test_proxy_protocol.py).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Literal

from .settings_schema import setting

__all__ = [
    "V1_MAX_BYTES",
    "V2_MAX_BYTES",
    "V2_MIN_LIMIT",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyPolicy",
    "encode_v1",
    "encode_v2",
    "parse_header",
    "read_header",
    "starts_with_proxy_header",
]

#: Longest version 1 header, CRLF included (proxy-protocol.txt §2.1).
V1_MAX_BYTES = 107
#: The first 12 bytes of every version 2 header (§2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16
#: Longest version 2 header the format allows: 16 fixed bytes and a 16-bit length.
V2_MAX_BYTES = _V2_FIXED + 0xFFFF
#: The smallest ``server.proxy_header_bytes``: room for the largest address block (AF_UNIX, 216 bytes).
V2_MIN_LIMIT = _V2_FIXED + 216

_ADDRESS_BYTES = {0x11: 12, 0x21: 36}  # TCP over IPv4, TCP over IPv6: (src, dst, sport, dport)
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """A PROXY header that is refused (malformed, truncated, too long, of the wrong
    version, of a family that names no client address, or from an untrusted address);
    the message says which. The connection is closed."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed PROXY header.

    ``version``: 1 or 2; ``local``: the connection speaks for the proxy itself (v2
    LOCAL, v1 UNKNOWN: health checks), ``source`` and ``destination`` are then None and
    the connection keeps the proxy's address; ``source``/``destination``: (address text,
    port) of the client and of the address it connected to; ``length``: the header's
    bytes on the wire (what is consumed before the TLS ClientHello); ``tlvs``: v2
    type-length-value entries as (type, value), in order.
    """

    version: int
    local: bool
    source: Address | None
    destination: Address | None
    length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _v1_address(text: str, family: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text) if family == "TCP4" else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an {family[3]} address") from None
    if "%" in text:
        raise ProxyHeaderError(f"PROXY v1: {text!r} carries a zone")
    return str(ip)


def _v1_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 0xFFFF:
        raise ProxyHeaderError(f"PROXY v1: {text[:8]!r} is not a port")
    return int(text)


def _check_printable(line: bytes) -> None:
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ProxyHeaderError("PROXY v1: a byte outside printable ASCII before the CRLF")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if len(data) < len(_V1_PREFIX):
        if _V1_PREFIX.startswith(data):
            return None
        raise ProxyHeaderError(_not_a_header(data, 1))
    if not data.startswith(_V1_PREFIX):
        raise ProxyHeaderError(_not_a_header(data, 1))
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
        seen = data[len(_V1_PREFIX) :]
        _check_printable(seen[:-1] if seen.endswith(b"\r") else seen)  # a CR at the end may be CRLF's half
        return None
    line = data[len(_V1_PREFIX) : end]
    _check_printable(line)
    fields = line.decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":
        # §2.1: the rest of the line is to be ignored; the real connection's addresses apply.
        return ProxyHeader(version=1, local=True, source=None, destination=None, length=end + 2)
    if fields[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1: unknown protocol {fields[0][:8]!r} (TCP4, TCP6 or UNKNOWN)")
    if len(fields) != 5:
        raise ProxyHeaderError("PROXY v1: expected 5 fields separated by single spaces")
    family = fields[0]
    source = (_v1_address(fields[1], family), _v1_port(fields[3]))
    destination = (_v1_address(fields[2], family), _v1_port(fields[4]))
    return ProxyHeader(version=1, local=False, source=source, destination=destination, length=end + 2)


def _parse_tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    at = 0
    while at < len(block):
        if len(block) - at < 3:
            raise ProxyHeaderError("PROXY v2: a TLV cut off in its type or length")
        size = int.from_bytes(block[at + 1 : at + 3], "big")
        if len(block) - at - 3 < size:
            raise ProxyHeaderError("PROXY v2: a TLV longer than the header")
        tlvs.append((block[at], bytes(block[at + 3 : at + 3 + size])))
        at += 3 + size
    return tuple(tlvs)


def _parse_v2(data: bytes, max_bytes: int) -> ProxyHeader | None:
    head = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyHeaderError(_not_a_header(data, 2))
    if len(data) < _V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2: version {version} (only 2 is defined)")
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2: command {command} (0 LOCAL or 1 PROXY)")
    length = _V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > max_bytes:
        raise ProxyHeaderError(f"PROXY v2: {length} bytes, above server.proxy_header_bytes ({max_bytes})")
    if len(data) < length:
        return None
    if command == 0:
        # §2.2: LOCAL: the receiver must ignore the address block; the proxy speaks for itself.
        return ProxyHeader(version=2, local=True, source=None, destination=None, length=length)
    family = data[13]
    size = _ADDRESS_BYTES.get(family)
    if size is None:
        raise ProxyHeaderError(
            f"PROXY v2: address family/protocol 0x{family:02x} names no TCP client address "
            "(0x11 TCP over IPv4 or 0x21 TCP over IPv6)"
        )
    block = data[_V2_FIXED:length]
    if len(block) < size:
        raise ProxyHeaderError(f"PROXY v2: {len(block)} bytes of addresses, {size} needed")
    half = (size - 4) // 2
    make = ipaddress.IPv4Address if family == 0x11 else ipaddress.IPv6Address
    source = (str(make(bytes(block[:half]))), int.from_bytes(block[size - 4 : size - 2], "big"))
    destination = (str(make(bytes(block[half : 2 * half]))), int.from_bytes(block[size - 2 : size], "big"))
    return ProxyHeader(
        version=2, local=False, source=source, destination=destination, length=length,
        tlvs=_parse_tlvs(block[size:]),
    )


def _not_a_header(data: bytes, version: int) -> str:
    if version == 2 and data.startswith(_V1_PREFIX[: len(data)]):
        return "a PROXY v1 header where server.proxy_protocol is v2"
    if version == 1 and data.startswith(V2_SIGNATURE[: len(data)]):
        return "a PROXY v2 header where server.proxy_protocol is v1"
    if data[:1] == b"\x16":
        return f"no PROXY v{version} header (a TLS ClientHello came first)"
    return f"no PROXY v{version} header"


def parse_header(data: bytes, version: Literal[1, 2], *, max_v2_bytes: int = V2_MAX_BYTES) -> ProxyHeader | None:
    """Parse the PROXY header at the start of `data` (what has arrived so far).

    Returns the header (its ``length`` says how many bytes of `data` it takes; the rest
    is the client's), or None when `data` is a valid beginning and more bytes are
    needed. Raises :class:`ProxyHeaderError` for anything else, and never another
    exception. `max_v2_bytes` bounds a version 2 header (``server.proxy_header_bytes``);
    a version 1 header is at most :data:`V1_MAX_BYTES` by the specification.
    """
    if version == 1:
        return _parse_v1(data)
    if version == 2:
        return _parse_v2(data, max_v2_bytes)
    raise ValueError(f"version must be 1 or 2, not {version!r}")


def starts_with_proxy_header(data: bytes) -> bool | None:
    """Whether `data`, the first bytes of a connection, begin a PROXY header of either
    version: True (``PROXY `` or the v2 signature), False (anything else, such as a TLS
    record, 0x16), None when `data` is a beginning of one of them and too short to say
    (b"" included). For connections from addresses that may not send a header."""
    if data.startswith(_V1_PREFIX) or data.startswith(V2_SIGNATURE):
        return True
    if _V1_PREFIX.startswith(data) or V2_SIGNATURE.startswith(data):
        return None
    return False


def read_header(
    sock: socket.socket, version: Literal[1, 2], held: bytearray, *, max_v2_bytes: int = V2_MAX_BYTES
) -> ProxyHeader | None:
    """Read the PROXY header from the non-blocking socket `sock` (an ``ssl.SSLSocket``
    whose handshake has not started, or a plain one), consuming exactly its bytes.

    What has arrived is looked at with ``MSG_PEEK`` on the socket under the TLS layer
    (OpenSSL reads nothing before its first handshake step). While the header is
    incomplete, every byte that arrived belongs to it: those are taken into `held`
    (the caller keeps it between calls, empty at first), so a level-triggered selector
    does not report them again. Once the header is whole, only its remaining bytes are
    taken (one ``recv`` of their exact length), and the TLS ClientHello behind it stays
    in the kernel for OpenSSL. Returns None while the header is incomplete (call again
    when the socket is readable). Raises :class:`ProxyHeaderError` as
    :func:`parse_header` does; ``EOFError`` when the peer closed before a whole header
    arrived; ``OSError`` for a socket error.
    """
    limit = (V1_MAX_BYTES if version == 1 else max_v2_bytes) - len(held)
    try:
        data = socket.socket.recv(sock, limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    if not data and not held:
        raise EOFError("the connection closed before its PROXY header")
    if not data:
        raise ProxyHeaderError(f"PROXY header cut off: the connection closed after {len(held)} bytes of it")
    header = parse_header(bytes(held) + data, version, max_v2_bytes=max_v2_bytes)
    want = len(data) if header is None else header.length - len(held)
    taken = socket.socket.recv(sock, want, socket.MSG_DONTWAIT)
    if taken != data[:want]:  # cannot happen on TCP: the peeked bytes are queued
        raise ProxyHeaderError("PROXY header: the bytes read differ from the bytes peeked")
    held += taken
    return header


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyPolicy:
    """Who may send which PROXY header: ``version`` (1 or 2, ``server.proxy_protocol``),
    ``trusted`` (``server.trusted_proxies`` as networks), ``max_v2_bytes``
    (``server.proxy_header_bytes``)."""

    version: Literal[1, 2]
    trusted: tuple[Network, ...]
    max_v2_bytes: int = setting("server.proxy_header_bytes").default

    @classmethod
    def from_settings(cls, mode: str, trusted: tuple[str, ...], max_v2_bytes: int) -> ProxyPolicy | None:
        """The policy of the settings, None for ``off``; `trusted` holds the checked
        texts of ``server.trusted_proxies`` (config.py). Raises ValueError otherwise."""
        if mode == "off":
            return None
        if mode not in ("v1", "v2"):
            raise ValueError(f"proxy_protocol must be off, v1 or v2, not {mode!r}")
        return cls(
            version=1 if mode == "v1" else 2,
            trusted=tuple(ipaddress.ip_network(t) for t in trusted),
            max_v2_bytes=max_v2_bytes,
        )

    def trusts(self, address: str) -> bool:
        """True when `address` (a peer address text; a zone is ignored) is in a trusted
        network; False for anything unparsable. An IPv4 address and its IPv4-mapped IPv6
        form (``::ffff:10.0.0.5``, RFC 4291 §2.5.5.2: what a dual-stack ``::`` listener
        reports for an IPv4 peer) are one address, and a network written in mapped form
        (``::ffff:10.0.0.5``, ``::ffff:10.0.0.0/120``, ``::ffff:0:0/96``) is its IPv4
        network: each matches the other. A plain IPv6 network (``::/0``, ``2001:db8::/32``)
        holds no IPv4 peer."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in _unmapped(net) for net in self.trusted)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(net: Network) -> Network:
    """`net` itself, or the IPv4 network an IPv4-mapped IPv6 network stands for
    (``::ffff:10.0.0.0/120`` → ``10.0.0.0/24``)."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _packed(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A version 1 header for `source` and `destination` ((address, port), both of one
    family), or ``PROXY UNKNOWN`` when either is None. For tests and tools."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if _packed(source[0])[0] == 4 else "TCP6"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: Address | None, destination: Address | None, *, tlvs: tuple[tuple[int, bytes], ...] = ()
) -> bytes:
    """A version 2 header: command PROXY over TCP for `source` and `destination`
    ((address, port), both of one family), LOCAL with no addresses when either is None;
    `tlvs` as (type, value) appended. For tests and tools."""
    tail = b"".join(bytes([t]) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + len(tail).to_bytes(2, "big") + tail
    ver, src = _packed(source[0])
    _, dst = _packed(destination[0])
    body = src + dst + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big") + tail
    return V2_SIGNATURE + bytes([0x21, 0x11 if ver == 4 else 0x21]) + len(body).to_bytes(2, "big") + body
