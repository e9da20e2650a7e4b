"""Virtual-IP pool leases: reuse by identity, sharing, exhaustion and take-over."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.model import PoolConfig
from mobike_vici.core.pool import AddressPool, Lease, acquire_from

ip = ipaddress.ip_address


def pool(first: str = "10.3.0.1", last: str = "10.3.0.3") -> AddressPool:
    return AddressPool("p", ip(first), ip(last))


def test_addresses_are_handed_out_in_order() -> None:
    p = pool()
    assert [p.acquire(n) for n in "abc"] == [ip("10.3.0.1"), ip("10.3.0.2"), ip("10.3.0.3")]
    assert p.online == 3 and p.offline == 0


def test_exhausted_pool_returns_none() -> None:
    p = pool(last="10.3.0.2")
    assert p.acquire("a") is not None
    assert p.acquire("b") is not None
    assert p.acquire("c") is None
    assert p.online == 2


def test_reconnecting_identity_gets_its_old_lease() -> None:
    p = pool()
    first = p.acquire("alice")
    p.acquire("bob")
    assert p.release("alice")
    assert p.online == 1 and p.offline == 1
    p.acquire("carol")  # a new identity must not get alice's offline lease while space is left
    assert p.acquire("alice") == first
    assert p.offline == 0


def test_same_identity_and_peer_share_an_online_lease() -> None:
    p = pool()
    a = p.acquire("alice", peer="192.0.2.10")
    assert p.acquire("alice", peer="192.0.2.10") == a
    assert p.online == 2  # two references, as charon counts them
    assert p.release("alice", a)
    assert p.leases() == [Lease("alice", a, True)]  # still online: one SA left
    assert p.release("alice", a)
    assert p.leases() == [Lease("alice", a, False)]
    assert p.offline == 1


def test_same_identity_from_another_peer_gets_another_address() -> None:
    p = pool()
    a = p.acquire("alice", peer="192.0.2.10")
    b = p.acquire("alice", peer="198.51.100.7")
    assert a != b
    assert p.acquire("alice") not in (a, b)  # no peer: no sharing


def test_requested_specific_address_must_match_shared_lease() -> None:
    p = pool()
    a = p.acquire("alice", peer="h")
    assert p.acquire_existing("alice", peer="h", requested=ip("10.3.0.3")) is None
    assert p.acquire_existing("alice", peer="h", requested=a) == a
    assert p.acquire_existing("alice", peer="h", requested=ip("0.0.0.0")) == a


def test_full_pool_takes_over_an_offline_lease() -> None:
    p = pool(last="10.3.0.2")
    a = p.acquire("alice")
    p.acquire("bob")
    p.release("alice")
    assert p.acquire("carol") == a
    assert p.acquire("alice") is None  # alice lost her lease to carol
    assert [le.identity for le in p.leases()] == ["bob", "carol"]


def test_wrong_family_is_refused() -> None:
    p = pool()
    assert p.acquire("alice", requested=ip("::")) is None
    assert p.online == 0


def test_release_unknown_is_false() -> None:
    p = pool()
    assert not p.release("nobody")
    p.acquire("alice")
    assert not p.release("alice", ip("10.3.0.3"))
    assert p.release("alice")
    assert not p.release("alice")  # already offline


def test_leases_listing() -> None:
    p = pool()
    p.acquire("alice")
    p.acquire("bob")
    p.release("bob")
    assert p.leases() == [
        Lease("alice", ip("10.3.0.1"), True),
        Lease("bob", ip("10.3.0.2"), False),
    ]


def test_ipv6_pool_and_size() -> None:
    p = AddressPool("v6", ip("fd00::1"), ip("fd00::ffff"))
    assert p.size == 0xFFFF
    assert p.acquire("a") == ip("fd00::1")
    assert p.acquire("b") == ip("fd00::2")


@pytest.mark.parametrize(
    ("first", "last"),
    [("10.0.0.2", "10.0.0.1"), ("10.0.0.1", "fd00::1"), ("fd00::", "fd00::1:0:0")],
)
def test_invalid_ranges(first: str, last: str) -> None:
    with pytest.raises(ValueError):
        AddressPool("bad", ip(first), ip(last))


def test_from_config() -> None:
    p = AddressPool.from_config(PoolConfig("cfg", ip("10.9.0.10"), ip("10.9.0.19")))
    assert p.name == "cfg" and p.size == 10


def test_acquire_from_prefers_existing_lease_in_a_later_pool() -> None:
    p1, p2 = pool("10.3.0.1", "10.3.0.1"), pool("10.4.0.1", "10.4.0.9")
    p1.acquire("bob")
    assert acquire_from([p1, p2], "alice") == (p2, ip("10.4.0.1"))
    p1.release("bob")
    p2.release("alice")
    # p1 has space only by taking bob's offline lease; alice's old lease in p2 wins.
    assert acquire_from([p1, p2], "alice") == (p2, ip("10.4.0.1"))
    assert acquire_from([p1, p2], "carol") == (p2, ip("10.4.0.2"))
