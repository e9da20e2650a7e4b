"""The controller's book of a peer's addresses, and what it gives the path table."""

from __future__ import annotations

import ipaddress

from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import LocalAddress
from mobike_vici.mobike.peer_addresses import PeerAddresses
from mobike_vici.types import Endpoint, Path

ip = ipaddress.ip_address
GW4, GW6 = ip("192.0.2.2"), ip("2001:db8:ff::2")


def test_learn_returns_what_was_new_and_keeps_the_order_and_the_source() -> None:
    book = PeerAddresses()
    assert book.learn("home", [GW4], "config") == [GW4]
    assert book.learn("home", [GW4], "charon") == []
    assert book.learn("home", [GW6, GW4], "mobike") == [GW6]
    assert book.of("home") == [GW4, GW6]
    assert book.source("home", GW4) == "config"
    assert book.source("home", GW6) == "mobike"
    assert book.of("other") == []


def test_addresses_no_peer_uses_for_ike_are_ignored() -> None:
    book = PeerAddresses()
    junk = [ip("fe80::1"), ip("::"), ip("127.0.0.1"), ip("ff02::1"), ip("169.254.1.1")]
    assert book.learn("home", junk, "mobike") == []
    assert "home" in book and book.of("home") == []


def test_the_book_is_bounded_per_family_first_come_first_kept() -> None:
    book = PeerAddresses(max_per_family=2)
    v4 = [ip(f"192.0.2.{i}") for i in range(1, 6)]
    assert book.learn("home", [*v4, GW6], "mobike") == [v4[0], v4[1], GW6]
    assert book.learn("home", [ip("198.51.100.1")], "charon") == []


def test_connections_a_reload_removed_are_forgotten() -> None:
    book = PeerAddresses()
    book.learn("home", [GW4], "config")
    book.learn("old", [GW6], "config")
    book.retain(["home"])
    assert "old" not in book and book.of("home") == [GW4]


def test_a_learnt_ipv6_peer_address_gives_the_path_table_ipv6_pairs_to_probe() -> None:
    """The gateway's IPv6 address, learnt while the IKE_SA runs on IPv4: both uplinks'
    IPv6 addresses pair with it and are probed like the IPv4 pairs."""
    active = Path(Endpoint(ip("10.1.0.2"), 4500), Endpoint(GW4, 4500))
    locals_ = [LocalAddress(ip("10.1.0.2"), "m0"), LocalAddress(ip("2001:db8:1::2"), "m0"),
               LocalAddress(ip("10.2.0.2"), "m1"), LocalAddress(ip("2001:db8:2::2"), "m1")]
    book = PeerAddresses()
    book.learn("home", [GW4], "charon")
    manager = PathManager(MobikePolicy(), active, locals_, book.of("home"), now=0.0)
    assert {p.path.remote.addr for p in manager.paths()} == {GW4}
    book.learn("home", [GW6], "mobike")
    manager.on_peer_addresses(book.of("home"), 0.1)
    pairs = {(p.path.local.addr, p.path.remote.addr) for p in manager.paths()}
    assert (ip("2001:db8:1::2"), GW6) in pairs and (ip("2001:db8:2::2"), GW6) in pairs
    assert (ip("10.1.0.2"), GW6) not in pairs  # a path is one family
    probed: set[tuple[object, object]] = set()
    now = 0.1
    for _ in range(20):
        for req in manager.probes_to_send(now):
            probed.add((req.path.local.addr, req.path.remote.addr))
            manager.on_probe_reply(req.probe_id, now + 0.001)
        now += 0.25
        manager.handle_timer(now)
    assert (ip("2001:db8:1::2"), GW6) in probed and (ip("2001:db8:2::2"), GW6) in probed
