"""Client addresses: one spelling per address, and the block a per-client bound counts.

Every per-address bound — the handshake caps (handshake.py), the audit rate of refused
handshakes (tls_refusals.py), the enrolment listener's caps and the sign-in lockout of an
address (auth/lockout.py) — counts a client by :func:`client_block`, so an IPv6 client
counts the same everywhere.
"""

from __future__ import annotations

import ipaddress

__all__ = ["canonical_address", "client_block"]

#: RFC 6052 §2.1: the NAT64 well-known prefix; the last 32 bits are the IPv4 client's address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def canonical_address(text: str) -> str:
    """One spelling per address: surrounding space and an IPv6 zone (``%eth0``) dropped,
    ``::ffff:10.0.0.1`` written ``10.0.0.1``, IPv6 compressed and lower-case. Raises
    ValueError for text that is not an IPv4 or IPv6 address."""
    ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def client_block(address: str) -> str:
    """The client a per-address bound counts: an IPv4 address as is (also when it arrives
    IPv4-mapped on an IPv6 listener); an IPv6 address that carries one IPv4 client's
    address (NAT64's well-known prefix ``64:ff9b::/96``, RFC 6052; a Teredo client's
    mapped address, RFC 4380 §4) by that IPv4 address, since the /64 of such an address
    is shared by every client of the translator or relay; the loopback ``::1`` as is;
    any other IPv6 address by its /64 prefix (``2001:db8::/64``), since one subscriber
    is given a whole /64 (RFC 6177) and could otherwise take a fresh address for every
    connection or account. Text that is no address is its own key."""
    try:
        canonical = canonical_address(address)
    except ValueError:
        return address
    ip = ipaddress.ip_address(canonical)
    if not isinstance(ip, ipaddress.IPv6Address) or ip.is_loopback:
        return canonical
    if ip in _NAT64:
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.teredo is not None:
        return str(ip.teredo[1])
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
