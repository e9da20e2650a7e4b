"""The NAT before mob rebinds while a request of charon's is lost: our side repairs.

rtr masquerades mob's uplinks. charon (in gw) sends a request of its own (an
address-list INFORMATIONAL) that rtr drops; then the NAT forgets its mappings and takes
a new port range, so mob's public port changes. Our daemon finds the mapping changed in
a liveness check and updates the IKE_SA on the same path (RFC 4555 §3.8). charon 5.9.8
over kernel-libipsec follows a new port by rekeying its CHILD_SAs, and queues that
rekey behind its own request, which it retransmits 4 s later: meanwhile its ESP goes to
the old public port, where nothing answers. Our data path check finds the peer's ESP
missing after the update and rekeys the CHILD_SA: the stream from gw resumes before
charon's retransmission.

The order of events is asserted (the first packet back against charon's retransmission
in its log), never a duration.
"""

from __future__ import annotations

import time

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.handover import Handover, build
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab

from .test_charon_race import DELAYED, RETRANSMIT, _back_stream, _watch, address_update_sent
from .test_handover import RESUME_TIMEOUT, SETTLE_TIMEOUT

pytestmark = [pytest.mark.netns, pytest.mark.charon]

HOLD_TABLE = "mv_hold_requests"
"""rtr's table that drops charon's requests until the rebinding (deleted with it)."""
NEW_PORTS = (41000, 41999)


def _drop_charons_requests(h: Handover) -> None:
    """rtr drops IKE requests from gw (UDP 4500, the zero non-ESP marker, the response
    flag clear: charon's own requests); its answers to our checks and its ESP pass."""
    rtr, gw4 = h.topo.rtr, h.topo.gw4
    rtr.run("nft", "add", "table", "inet", HOLD_TABLE)
    rtr.run("nft", "add", "chain", "inet", HOLD_TABLE, "forward",
            "{ type filter hook forward priority -10 ; }")
    rtr.run("nft", "add", "rule", "inet", HOLD_TABLE, "forward", "ip", "saddr", gw4,
            "udp", "sport", "4500", "@th,64,32", "0", "@th,248,8", "&", "0x20", "==", "0",
            "drop")


def _wait_agreed_behind_nat(h: Handover) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        mob, gw = h.views()
        if (gw["remote"] == h.topo.rtr_wan4
                and mob["ike_spi"] == gw["ike_spi"] and mob["child_spis"] == gw["child_spis"]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ends do not agree: {mob} {gw}")
        time.sleep(0.1)


def test_nat_rebinding_while_charons_request_is_lost(lab: Lab) -> None:
    h = build(lab, mob_native=True, gw_native=False, nat=True)
    try:
        mob, gw = h.mob, h.gw
        assert isinstance(mob, NativeDaemon) and isinstance(gw, Charon)
        back = _back_stream(h)
        retransmits_before = gw.log_text().count(RETRANSMIT)
        _drop_charons_requests(h)
        address_update_sent(h)
        h.lab.masquerade(h.topo.rtr, "g0", ports=NEW_PORTS)
        h.lab.flush_conntrack(h.topo.rtr)
        # From here no mapping leads to the old port: what gw sends there is lost.
        fault = time.monotonic()
        h.topo.rtr.run("nft", "delete", "table", "inet", HOLD_TABLE)
        resumed, after_retransmit, retransmitted = _watch(gw, back, fault,
                                                          retransmits_before)
        log = gw.log_text()
        assert retransmitted is not None, "charon never retransmitted its request"
        assert resumed is not None, "the stream from gw never resumed"
        # The race really was on: charon queued its rekey behind its own request.
        assert DELAYED in log, log[-3000:]
        print(f"\nNAT rebinding with charon's request lost: the stream from gw resumed "
              f"{resumed - fault:.3f} s after it, charon retransmitted "
              f"{retransmitted - fault:.3f} s after it")
        assert not after_retransmit, "the stream from gw waited for charon's retransmit"
        # (On either uplink: both are behind the NAT, and a stall probes both.)
        changed = mob.wait_event(named("nat_mapping_changed"), RESUME_TIMEOUT)
        started = mob.wait_event(named("data_path_repair_started"), RESUME_TIMEOUT)
        assert started["local"] == changed["local"] and started["children"]
        mob.wait_event(named("data_path_repaired"), RESUME_TIMEOUT)
        # Both ends agree on one IKE_SA and CHILD_SA (charon's queued rekeys done), and
        # traffic flows both ways.
        _wait_agreed_behind_nat(h)
        after = time.monotonic()
        assert h.wait_resumed(after, SETTLE_TIMEOUT) is not None
        assert not mob.events.find(named("handover_failed"))
    finally:
        h.close()
