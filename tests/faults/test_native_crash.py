"""The native daemon SIGKILLed in the middle of a handover, with charon as the peer.

The IKE_SA and its CHILD_SAs lived in the killed process (keys are never written
anywhere), so they cannot survive it. What must hold instead: nothing of the dead
run stays behind (its TUN device goes with its descriptor, its routes and rules are
removed by the next start), the tunnel is set up again by itself, the peer ends with
exactly one IKE_SA for us (INITIAL_CONTACT makes it drop the orphan), the operator's
routing is untouched, and the next handover works.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.handover import build, sa_view
from mobike_vici.lab.native import NativeDaemon, start_native
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.net.numbers import RTPROT_MOBIKE_VICI

from .support import add_operator_routing, is_event, operator_view, ours, wait_new

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"


def ike_sas_at(charon: Charon) -> list[str]:
    """Every IKE_SA charon holds, as ``<spi_i>_<spi_r>`` (whatever its connection)."""
    out = []
    for entry in charon.session().list_sas():
        for sa in entry.values():
            spi_i, spi_r = (int(bytes(sa[k]).decode(), 16) for k in
                            ("initiator-spi", "responder-spi"))
            out.append(f"{spi_i:016x}_{spi_r:016x}")
    return out


def test_native_daemon_sigkilled_mid_handover_restarts_clean(lab: Lab) -> None:
    # The daemon's own tables and rules (proto RTPROT_MOBIKE_VICI: one table per uplink,
    # the tunnel's table, their rules) outlive a SIGKILL; the TUN's routes do not.
    h = build(lab, mob_native=True, gw_native=False)
    try:
        mob, gw = h.mob, h.gw
        assert isinstance(mob, NativeDaemon) and isinstance(gw, Charon)
        ns = h.topo.mob
        add_operator_routing(ns, via="10.1.0.1", dev="m0")
        operators = operator_view(ns)
        assert any("198.51.100.0/24" in line for line in operators)
        installed = sorted(ours(ns, RTPROT_MOBIKE_VICI))
        assert any("lookup" in line for line in installed), installed  # our rules
        old_spi = sa_view(mob)["ike_spi"]

        # Mid-handover, for sure: both uplinks silent, so the move to m1 is started and
        # stays unanswered (handover_timeout) when the daemon is killed.
        mark = len(mob.events.events)
        h.kill_silently(0)
        h.kill_silently(1)
        wait_new(mob, mark, is_event("handover_started"), timeout=20)
        os.kill(mob.proc.pid, signal.SIGKILL)
        mob.proc.wait(timeout=10)
        assert ns.ip("link", "show", "mvici0", check=False).returncode != 0, \
            "the kernel removes a TUN device with its last descriptor"
        survived = ours(ns, RTPROT_MOBIKE_VICI)
        assert any("lookup" in line for line in survived), \
            "our rules should outlive the crash (else this test checks nothing)"
        assert old_spi in ike_sas_at(gw)  # the orphan, at the peer
        h.revive(0)
        h.revive(1)

        mob.events.poll()
        mark = len(mob.events.events)
        restarted = start_native(lab, ns, mob.config, name="mob")  # same events file, appended
        h.mob = restarted
        cleaned = wait_new(restarted, mark, is_event("routing_leftovers_removed"))
        assert cleaned["count"] >= len([line for line in survived if "lookup" in line]), cleaned
        wait_new(restarted, mark, is_event("child_sa_installed"), timeout=30)
        assert h.wait_resumed(time.monotonic(), 30.0) is not None, "no traffic after restart"
        new_spi = sa_view(restarted)["ike_spi"]
        assert new_spi != old_spi
        # INITIAL_CONTACT: charon drops the orphan; exactly one IKE_SA for us remains.
        deadline = time.monotonic() + 15
        while ike_sas_at(gw) != [new_spi] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ike_sas_at(gw) == [new_spi]
        assert operator_view(ns) == operators, "a crash and restart changed the operator's routing"
        # The same tables and rules again, each once: nothing of the dead run added to them.
        deadline = time.monotonic() + 10
        while sorted(ours(ns, RTPROT_MOBIKE_VICI)) != installed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(ours(ns, RTPROT_MOBIKE_VICI)) == installed

        # A second daemon in the same namespace cannot bind and must not "clean up" the
        # running one's routes on its way out.
        routes_now = ours(ns, RTPROT_MOBIKE_VICI)
        with pytest.raises(LabError, match="exited with 1"):
            start_native(lab, ns, mob.config, name="second")
        assert ours(ns, RTPROT_MOBIKE_VICI) == routes_now

        # The next handover works.
        mark = len(restarted.events.events)
        fault = time.monotonic()
        h.kill_silently(0)
        done = wait_new(restarted, mark, is_event("handover_completed", local=M1), timeout=20)
        assert done["ike_spi"] == new_spi
        assert h.wait_resumed(fault, 20.0) is not None
        # charon rekeys the CHILD_SA after a move; the old one lingers a moment.
        deadline = time.monotonic() + 15
        mob_view, gw_view = h.views()
        while mob_view["child_spis"] != gw_view["child_spis"] and time.monotonic() < deadline:
            time.sleep(0.2)
            mob_view, gw_view = h.views()
        assert mob_view["ike_spi"] == gw_view["ike_spi"] == new_spi
        assert mob_view["child_spis"] == gw_view["child_spis"]

        # A clean stop leaves nothing of ours, and the operator's routing as it was.
        assert restarted.stop(grace=10.0) == 0
        assert ours(ns, RTPROT_MOBIKE_VICI) == []
        assert operator_view(ns) == operators
    finally:
        h.close()
