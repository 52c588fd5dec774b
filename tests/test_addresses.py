"""addresses.py: one spelling per address and one client block for every per-address bound.

The handshake caps, the audit rate of refused handshakes, the enrolment listener's caps
and the sign-in lockout of an address all count a client by ``client_block``: an IPv6
client that hops inside its /64 counts once everywhere, and an IPv4 client arriving
IPv4-mapped on an IPv6 listener is the same client as over IPv4."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from davserver.addresses import canonical_address, client_block
from davserver.auth.lockout import address_key


def test_the_exact_forms() -> None:
    assert canonical_address(" ::FFFF:192.0.2.7 ") == "192.0.2.7"
    assert canonical_address("2001:DB8:0:0::1") == "2001:db8::1"
    assert canonical_address("fe80::1%eth0") == "fe80::1"
    assert client_block("2001:db8:1:2::10") == client_block("2001:db8:1:2:ffff::") == "2001:db8:1:2::/64"
    assert client_block("2001:db8:1:3::10") == "2001:db8:1:3::/64"  # the next /64 is another client
    assert client_block("::ffff:192.0.2.7") == client_block("192.0.2.7") == "192.0.2.7"
    assert client_block("192.0.2.8") != client_block("192.0.2.7")  # no IPv4 grouping
    assert client_block("not an address") == "not an address"
    # addresses that carry one IPv4 client: keyed by it, not by the /64 every client shares
    assert client_block("64:ff9b::192.0.2.7") == "192.0.2.7" != client_block("64:ff9b::192.0.2.8")
    teredo = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # RFC 4380 §4's example: client 192.0.2.45
    assert client_block(teredo) == "192.0.2.45"
    assert client_block("2001:0:4136:e378:8000:63bf:3fff:fdd3") == "192.0.2.44"
    assert client_block("::1") == "::1" != client_block("::2")
    with pytest.raises(ValueError):
        canonical_address("not an address")


@given(st.ip_addresses(v=4))
def test_an_ipv4_client_is_one_client_however_it_arrives(ip: ipaddress.IPv4Address) -> None:
    """Directly, IPv4-mapped on an IPv6 listener, or through NAT64."""
    mapped = f"::ffff:{ip}"
    assert client_block(str(ip)) == client_block(mapped) == client_block(f" {mapped.upper()} ") == str(ip)
    assert client_block(f"64:ff9b::{ip}") == str(ip)


@given(st.ip_addresses(v=6), st.integers(0, 2**64 - 1))
def test_an_ipv6_client_is_its_slash_64(ip: ipaddress.IPv6Address, host: int) -> None:
    if ip.ipv4_mapped is not None or ip in ipaddress.ip_network("64:ff9b::/96") or ip.teredo or ip.is_loopback:
        return  # each carries one client's IPv4 address or is the loopback: test_the_exact_forms
    same_block = ipaddress.IPv6Address((int(ip) >> 64 << 64) | host)
    if same_block in ipaddress.ip_network("64:ff9b::/96") or same_block.is_loopback:
        return
    assert client_block(str(ip)) == client_block(same_block.exploded) == client_block(f"{same_block}%eth0")
    assert ipaddress.ip_address(str(ip)) in ipaddress.ip_network(client_block(str(ip)))


@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=40)))
def test_every_per_address_bound_counts_the_same_client(text: str) -> None:
    """The sign-in lockout of an address keys the block the connection caps count."""
    assert address_key(text) == f"addr:{client_block(text)}"
