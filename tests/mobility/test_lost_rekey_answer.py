"""Our answer to charon's CHILD_SA rekey is lost, then our daemon moves: our side repairs.

charon (in gw) rekeys the CHILD_SA; our daemon in mob answers and installs the new
CHILD_SA, but rtr drops that answer on m0, so charon knows only the old CHILD_SA until
its retransmission 4 s later. Then m0 dies silently and our daemon moves to m1. charon
5.9.8 over kernel-libipsec cannot move the old CHILD_SA in place (it would rekey it, but
its own rekey is outstanding), so its ESP still goes to m0. Our data path check finds
its ESP missing and rekeys the CHILD_SA charon never heard of (CHILD_SA_NOT_FOUND); the
engine then rekeys the old one, which charon knows, and deletes it, and charon installs
the new outbound SA on m1: the stream from gw resumes before charon's retransmission.
Afterwards both ends agree on one CHILD_SA on m1 and the stream flows both ways.

The order of events is asserted (the first packet back against charon's retransmission
in its log), never a duration.
"""

from __future__ import annotations

import time

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.handover import build
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import NFT_TABLE, Lab, LabError
from mobike_vici.lab.tunnel import CHILD

from .test_charon_race import RETRANSMIT, _back_stream, _settled_both_ways, _watch
from .test_handover import M0, M1, RESUME_TIMEOUT

pytestmark = [pytest.mark.netns, pytest.mark.charon]

CREATE_CHILD_SA = 36


def test_lost_answer_to_charons_rekey_then_a_move(lab: Lab) -> None:
    h = build(lab, mob_native=True, gw_native=False)
    try:
        mob, gw = h.mob, h.gw
        assert isinstance(mob, NativeDaemon) and isinstance(gw, Charon)
        back = _back_stream(h)
        mob.events.poll()
        old = [e for e in mob.events.events if e.get("event") == "child_sa_installed"][-1]
        # rtr drops mob's CREATE_CHILD_SA answers on m0 (UDP 4500 to gw, the zero
        # non-ESP marker, exchange type 36, the response flag set).
        h.lab._ensure_nft(h.topo.rtr)
        h.topo.rtr.run("nft", "add", "rule", "inet", NFT_TABLE, "forward", "ip", "saddr",
                       h.topo.uplinks[0].addr4, "ip", "daddr", h.topo.gw4, "udp", "dport",
                       "4500", "@th,64,32", "0", "@th,240,8", str(CREATE_CHILD_SA),
                       "@th,248,8", "&", "0x20", "==", "0x20", "drop")
        retransmits_before = gw.log_text().count(RETRANSMIT)
        gw.swanctl("--rekey", "--child", CHILD)
        made = mob.wait_event(named("child_sa_installed", rekey_of=old["unique_id"]),
                              RESUME_TIMEOUT)
        assert made["initiator"] is False  # charon's rekey, answered (and lost)
        time.sleep(0.05)
        if gw.log_text().count(RETRANSMIT) > retransmits_before:
            raise LabError("charon retransmitted before the fault")
        fault = h.kill_silently(0)
        resumed, after_retransmit, retransmitted = _watch(gw, back, fault,
                                                          retransmits_before)
        assert retransmitted is not None, "charon never retransmitted its rekey"
        assert resumed is not None, "the stream from gw never resumed"
        moved = mob.wait_event(named("handover_completed"), RESUME_TIMEOUT)
        assert moved["local"].startswith(M1) and moved["old_local"].startswith(M0)
        print(f"\nlost rekey answer: the stream from gw resumed {resumed - fault:.3f} s "
              f"after the fault, charon retransmitted {retransmitted - fault:.3f} s after it")
        assert not after_retransmit, "the stream from gw waited for charon's retransmit"
        mob.events.poll()
        # Our repair met CHILD_SA_NOT_FOUND and rekeyed the CHILD_SA charon had.
        mob.wait_event(lambda ev: named("child_sa_rekeyed", old_unique_id=old["unique_id"])(ev)
                       and ev.get("new_unique_id") != made["unique_id"], RESUME_TIMEOUT)
        # Once charon's retransmission got our cached answer, one CHILD_SA on m1.
        _settled_both_ways(h, back)
        assert not mob.events.find(named("handover_failed"))
    finally:
        h.close()
