"""More handovers with traffic through the tunnel: (d) an address removed and another
added, (e) NAT on the uplinks, (f) IPv4 dies while IPv6 remains, (g) charon as the
moving initiator and our daemon as the responder that follows it.

Same checks as test_handover.py: the stream resumes, IKE SPIs unchanged, both ends
agree on the endpoints (and between two of our daemons on unchanged CHILD SPIs).
Every case runs with a narrow selector and with a full tunnel (``full``); (d), (e)
and (f) against our responder and charon alike, (h) and (i) only against ours (what
they test is our responder), (g) with charon as the initiator.
"""

from __future__ import annotations

import sys
import time

import pytest

from mobike_vici.lab.handover import build, sa_view
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab

from .test_handover import (
    M0,
    M1,
    RESUME_TIMEOUT,
    SETTLE_TIMEOUT,
    TUNNELS,
    _check_same_sa,
    _to,
)

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("full", TUNNELS)]

GATEWAYS = [
    pytest.param(True, id="native-native"),
    pytest.param(False, id="native-charon", marks=pytest.mark.charon),
]
"""The responders of the cases whose point does not hang on our own responder."""

M0_NEW = "10.1.0.3"
M0_6 = "2001:db8:1::2"
M1_6 = "2001:db8:2::2"
GW2 = "192.0.2.3"


@pytest.mark.parametrize("gw_native", GATEWAYS)
def test_d_address_removed_then_another_added(lab: Lab, full: bool, gw_native: bool) -> None:
    h = build(lab, mob_native=True, gw_native=gw_native, full_tunnel=full)
    try:
        before = sa_view(h.mob)
        mob = h.topo.mob
        mob.ip("-4", "addr", "del", f"{M0}/24", "dev", "m0")
        fault = time.monotonic()
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None
        _check_same_sa(h, before, M1)
        assert isinstance(h.mob, NativeDaemon)
        h.mob.wait_event(lambda e: e.get("event") == "path_down"
                         and e.get("reason") == "address_removed", 5)
        # A new address on the preferred uplink: the SA goes there after hold-down.
        mob.ip("-4", "addr", "add", f"{M0_NEW}/24", "dev", "m0")
        mob.ip("-4", "route", "replace", "default", "via", "10.1.0.1", "dev", "m0",
               "metric", "100")
        assert h.wait_local(M0_NEW, 30.0), "did not move to the new address"
        _check_same_sa(h, before, M0_NEW)
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
        # Our responder says it heard of the new address (ADDITIONAL_IP4_ADDRESS).
        gw = h.gw
        if isinstance(gw, NativeDaemon):
            gw.wait_event(lambda e: e.get("event") == "addresses_updated"
                          and M0_NEW in e.get("addresses", []), 5)
    finally:
        h.close()


@pytest.mark.parametrize("gw_native", GATEWAYS)
def test_e_nat_on_the_uplinks(lab: Lab, full: bool, gw_native: bool) -> None:
    h = build(lab, mob_native=True, gw_native=gw_native, nat=True, full_tunnel=full)
    try:
        before = sa_view(h.mob)
        fault = h.link_down(0)
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None
        mob_view = None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            mob_view, gw_view = h.views()
            if mob_view["local"] == M1 and mob_view["child_spis"] == gw_view["child_spis"]:
                break
            time.sleep(0.1)
        assert mob_view is not None and mob_view["local"] == M1
        assert mob_view["ike_spi"] == before["ike_spi"] == gw_view["ike_spi"]
        # Both ends agree on the CHILD_SA (charon may have rekeyed it on the move).
        assert len(mob_view["child_spis"]) == 2
        assert mob_view["child_spis"] == gw_view["child_spis"], (mob_view, gw_view)
        # Behind the NAT, the gateway sees the router's address on either uplink.
        assert gw_view["remote"] == h.topo.rtr_wan4
    finally:
        h.close()


@pytest.mark.parametrize("gw_native", GATEWAYS)
def test_f_ipv4_dies_while_ipv6_remains(lab: Lab, full: bool, gw_native: bool) -> None:
    h = build(lab, mob_native=True, gw_native=gw_native, full_tunnel=full)
    try:
        before = sa_view(h.mob)
        for up in h.topo.uplinks:
            h.lab.blackhole(h.topo.rtr, up.addr4)
        fault = time.monotonic()
        # The failover first tries m1's IPv4 path (up at its last probe, dead with the
        # rest of IPv4): that attempt is bounded by the path's RTT (a fraction of a
        # second, not a fixed 10 s), then IPv6 is left. The target is 1 s.
        outage = h.wait_resumed(fault, RESUME_TIMEOUT)
        assert outage is not None
        print(f"(f) outage {outage:.3f} s")
        mob, gw = h.views()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        # charon rekeys the CHILD_SA after the move: wait until both ends agree on it.
        while (mob["local"] not in (M0_6, M1_6) or mob["child_spis"] != gw["child_spis"]) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
            mob, gw = h.views()
        assert mob["local"] in (M0_6, M1_6)
        assert gw["remote"] == mob["local"]
        assert mob["ike_spi"] == before["ike_spi"] == gw["ike_spi"]
        assert mob["child_spis"] == gw["child_spis"]
        if gw_native:
            assert mob["child_spis"] == before["child_spis"]
    finally:
        h.close()


@pytest.mark.charon
def test_g_charon_initiator_moves_native_responder_follows(lab: Lab, full: bool) -> None:
    h = build(lab, mob_native=False, gw_native=True, full_tunnel=full)
    try:
        before = sa_view(h.gw)
        fault = h.link_down(0)
        # Charon's move depends on the lab's source routing (harness.source_routes):
        # without its unreachable fallback this took 5-8 s and sometimes never happened.
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "stream did not resume"
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            mob, gw = h.views()
            # charon chooses m1's IPv4 or IPv6 address; either is a move to m1.
            if gw["remote"] in (M1, M1_6) and mob["local"] == gw["remote"] and \
                    mob["child_spis"] == gw["child_spis"]:
                break
            time.sleep(0.1)
        assert gw["remote"] in (M1, M1_6) and mob["local"] == gw["remote"]
        assert mob["ike_spi"] == before["ike_spi"] == gw["ike_spi"]
        assert len(gw["child_spis"]) == 2
        # Both ends agree on the CHILD_SA. Not necessarily the one from before: charon
        # rekeys it when the move changes the address family (m1's IPv6 path).
        assert mob["child_spis"] == gw["child_spis"], (mob, gw)
        assert isinstance(h.gw, NativeDaemon)
        moved = h.gw.wait_event(named("peer_moved"), 5)
        assert str(moved["remote"]).startswith(str(gw["remote"]))
        assert not [e for e in h.gw.events.events if _to(e, "update_rejected", "")]
    finally:
        h.close()


def test_i_responder_address_disappears_and_the_initiator_follows(lab: Lab, full: bool) -> None:
    h = build(lab, mob_native=True, gw_native=True, full_tunnel=full)
    try:
        gw, mob = h.topo.gw, h.mob
        assert isinstance(mob, NativeDaemon)
        # A second gateway address that survives the first (a secondary is promoted).
        gw.sysctl("net.ipv4.conf.eth0.promote_secondaries", "1")
        gw.add_address("eth0", f"{GW2}/24")
        mob.wait_event(lambda e: e.get("event") == "addresses_updated"
                       and GW2 in e.get("addresses", []), RESUME_TIMEOUT)
        before = sa_view(mob)
        gw.ip("-4", "addr", "del", f"{h.topo.gw4}/24", "dev", "eth0")
        fault = time.monotonic()
        assert h.wait_resumed(fault, 30.0) is not None, "stream did not resume"
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            mob_view, gw_view = h.views()
            if mob_view["remote"] == GW2 and gw_view["local"] == GW2:
                break
            time.sleep(0.1)
        assert mob_view["remote"] == GW2 and gw_view["local"] == GW2
        assert mob_view["ike_spi"] == before["ike_spi"] == gw_view["ike_spi"]
        assert mob_view["child_spis"] == before["child_spis"] == gw_view["child_spis"]
    finally:
        h.close()


def test_h_forged_update_never_moves_the_sa(lab: Lab, full: bool) -> None:
    """An INFORMATIONAL that claims the SA's SPIs but fails integrity, from another
    address (rtr's), is dropped: the responder keeps its endpoints. (Replayed and
    out-of-order updates are covered by the engine's unit tests, not here.)"""
    h = build(lab, mob_native=True, gw_native=True, full_tunnel=full)
    try:
        gw = h.gw
        assert isinstance(gw, NativeDaemon)
        before = sa_view(gw)
        spi_i, spi_r = (bytes.fromhex(x) for x in before["ike_spi"].split("_"))
        # IKE header: SPIs, next payload SK (46), version 2.0, INFORMATIONAL (37),
        # flags initiator (0x08), message ID 1000, then an SK payload of junk.
        body = bytes(range(64))
        header = spi_i + spi_r + bytes([46, 0x20, 37, 0x08]) + (1000).to_bytes(4, "big")
        sk = bytes([0, 0]) + (4 + len(body)).to_bytes(2, "big") + body
        msg = header + (28 + len(sk)).to_bytes(4, "big") + sk
        script = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                  "s.bind(('192.0.2.1',4500));"
                  f"s.sendto(bytes.fromhex('00000000{msg.hex()}'),('{h.topo.gw4}',4500))")
        for _ in range(3):
            h.topo.rtr.run(sys.executable, "-c", script)
        gw.wait_event(lambda e: e.get("event") == "packet_dropped"
                      and str(e.get("remote", "")).startswith("192.0.2.1"), RESUME_TIMEOUT)
        after = sa_view(gw)
        assert after["remote"] == before["remote"] == M0
        assert after == before
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
    finally:
        h.close()
