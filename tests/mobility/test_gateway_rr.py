"""Return routability beside charon as responder (RFC 4555 §5.2): `mobike-vici run` on gw.

mob (our daemon with a hand on the wheel, ``lab/programs/mover.py``) sends an authenticated
UPDATE_SA_ADDRESSES from m1's address. charon on gw follows it at once. With the
return path to m1 cut in rtr, nothing charon sends there is answered: the controller
beside charon (``return_routability = always``) sees the move, has charon rekey the
IKE_SA, gets no answer within ``handover_timeout`` and terminates the IKE_SA
(``return_routability_failed``). With the return path intact both rekeys of the check
are answered (``return_routability_ok``) and the tunnel keeps working on m1.

The lab half (``spoofed_move``, ``start``) is ``mobike_vici/lab/gateway_rr.py``, shared with
``bench/gateway_rr.py``.
"""

from __future__ import annotations

import signal
import time

import pytest

from mobike_vici.lab.gateway_rr import (
    BOUND,
    M0,
    M1,
    cut_return_path,
    spoofed_move,
    start,
    start_controller,
)
from mobike_vici.lab.handover import sa_view
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab

from .test_handover import RESUME_TIMEOUT

pytestmark = [pytest.mark.netns, pytest.mark.charon]



def test_a_move_to_an_address_without_return_path_is_terminated_within_the_bound(
        lab: Lab) -> None:
    run, seen = spoofed_move(lab, controller=True, window=BOUND + 15.0)
    try:
        failed = run.wait_event("return_routability_failed", 1.0)
        assert failed["remote"].startswith(M1) and failed["reason"] == "timeout"
        sent = run.wait_event("return_routability_check_sent", 1.0)
        assert sent["remote"].startswith(M1)
        terminated = run.wait_event("ike_sa_terminated", 5.0)
        assert terminated["reason"] == "return_routability_failed"
        # charon's IKE_SA with those SPIs is gone (not merely rekeyed and kept) ...
        assert seen["sa_gone_after_s"] is not None, seen
        assert "return_routability_ok" not in [e.get("event") for e in run.event_list()]
        # ... and charon's rekey, the check, really went towards m1 (the capture works).
        assert seen["ike_to_m1"] > 0, seen
    finally:
        run.h.close()


def test_a_genuine_move_is_verified_and_the_tunnel_keeps_working(lab: Lab) -> None:
    run = start(lab, controller=True)
    h = run.h
    try:
        before = sa_view(h.gw)
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        ok = run.wait_event("return_routability_ok", BOUND + 10.0)
        assert ok["remote"].startswith(M1)
        assert ok["ike_spi"] != before["ike_spi"]  # charon's rekeys, answered from m1
        rekeys = [e for e in run.event_list() if e.get("event") == "ike_sa_rekeyed"]
        assert len(rekeys) == 2 and rekeys[-1]["new_ike_spi"] == ok["ike_spi"], rekeys
        names = [e.get("event") for e in run.event_list()]
        assert "return_routability_failed" not in names and "ike_sa_terminated" not in names
        after = sa_view(h.gw)
        assert after["remote"] == M1 and after["ike_spi"] == ok["ike_spi"]
        # The tunnel works on m1: the stream still arrives, well after the check.
        time.sleep(1.0)
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
        assert sa_view(h.gw)["ike_spi"] == ok["ike_spi"]
        # The controller did not take the gateway's SA for one of its own to steer.
        assert "ike_sa_tracked" not in names
    finally:
        h.close()


def test_a_rekey_charon_had_in_flight_before_a_genuine_move_does_not_count(lab: Lab) -> None:
    """charon's own IKE rekey is on its way to m0 (whose return path is cut) when the peer
    moves to m1: charon retransmits it to m1 and it is answered there, but its first copy
    went to m0, so it proves nothing (RFC 4555 §3.7). Only a rekey asked for after the
    move verifies m1."""
    run = start(lab, controller=True, bound=15.0)
    h = run.h
    try:
        cut_return_path(h.topo.rtr, M0)
        run.gw.swanctl("--rekey", "--ike", "dp")
        time.sleep(0.5)
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        sent = run.wait_event("return_routability_check_sent", 10.0)
        assert sent["stale"] == 1, sent
        ok = run.wait_event("return_routability_ok", 25.0)
        assert ok["remote"].startswith(M1)
        rekeys = [e for e in run.event_list() if e.get("event") == "ike_sa_rekeyed"]
        assert len(rekeys) >= 3, rekeys  # the stale one, then the two asked for
        assert ok["ike_spi"] == rekeys[-1]["new_ike_spi"]
        names = [e.get("event") for e in run.event_list()]
        assert "return_routability_failed" not in names
        assert h.wait_resumed(time.monotonic(), RESUME_TIMEOUT) is not None
    finally:
        h.close()


def test_a_restarted_controller_still_sees_the_checked_sa_as_the_peers(lab: Lab) -> None:
    """After the check charon's flag calls the gateway's IKE_SA "initiator" (it started the
    last rekey); a controller started afterwards must not take it for a client SA of its
    own to probe and steer."""
    run = start(lab, controller=True)
    h = run.h
    try:
        assert isinstance(h.mob, NativeDaemon)
        h.mob.proc.send_signal(signal.SIGUSR1)
        run.wait_event("return_routability_ok", BOUND + 10.0)
        assert run.gw.list_sas()["dp"].get("initiator") == "yes"  # charon's own flag
        assert run.controller is not None
        assert lab.stop(run.controller, grace=10.0) == 0
        mark = len(run.event_list())
        again = start_controller(lab, h, run.events, BOUND)
        run.controller = again
        deadline = time.monotonic() + 20.0
        while not any(e.get("event") == "steering_reconciled" for e in run.event_list()[mark:]):
            assert time.monotonic() < deadline, run.event_list()[mark:]
            time.sleep(0.05)
        time.sleep(1.0)  # a tracked SA would have been probed by now
        names = [e.get("event") for e in run.event_list()[mark:]]
        assert "ike_sa_tracked" not in names and "path_up" not in names, names
    finally:
        h.close()
