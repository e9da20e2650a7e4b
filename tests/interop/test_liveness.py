"""Dead peer detection both ways, deletes from either side, and charon clearing an SA
whose peer (our daemon) was SIGKILLed."""

from __future__ import annotations

import signal

import pytest

from mobike_vici.lab.native import NativeDaemon, named, start_native

from .configs import CONN, Side, swanctl_conf
from .support import CHANGE_TIMEOUT, Interop, Tunnel, charon_ike_sas, count_log, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon]

ROLES = pytest.mark.parametrize("native_initiates", [True, False],
                                ids=["native-initiator", "charon-initiator"])
DPD_ROUNDS = 3
# charon's log lines (ike/enc level 1) for an empty INFORMATIONAL exchange.
EMPTY_REQUEST_IN = r"parsed INFORMATIONAL request \d+ \[ \]"
EMPTY_RESPONSE_OUT = r"generating INFORMATIONAL response \d+ \[ \]"
EMPTY_RESPONSE_IN = r"parsed INFORMATIONAL response \d+ \[ \]"
# Short retransmissions so a dead peer is declared dead in seconds (1 + 1.4 + 1.96).
QUICK_RETRANSMIT = "retransmit_timeout = 1\n    retransmit_tries = 2\n    retransmit_base = 1.4"


def _unchanged(tunnel: Tunnel) -> bool:
    child = tunnel.child_event
    return tunnel.both_show_only(tunnel.ike_spi, child["spi_in"], child["spi_out"])


# MOBIKE's path probes (every 200 ms on the active path) are liveness checks too and
# leave DPD nothing to do: plain DPD is tested without them.
PLAIN_DPD = {"mobike": False}


def _no_deletes(tunnel: Tunnel) -> None:
    tunnel.daemon.events.poll()
    deleted = [ev for ev in tunnel.daemon.events.events
               if ev.get("event") in ("ike_sa_deleted", "child_sa_deleted")]
    assert deleted == []


@ROLES
def test_our_dpd_is_answered_by_charon(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates,
                                              native={"dpd_delay": "2s", **PLAIN_DPD}))
    wait_until(lambda: count_log(tunnel.charon, EMPTY_RESPONSE_OUT) >= DPD_ROUNDS,
               CHANGE_TIMEOUT, f"charon to answer {DPD_ROUNDS} of our DPD requests")
    assert count_log(tunnel.charon, EMPTY_REQUEST_IN) >= DPD_ROUNDS
    # The answers arrived: we never had to resend a request.
    assert count_log(tunnel.charon, r"received retransmit of request") == 0
    assert _unchanged(tunnel)
    _no_deletes(tunnel)


@ROLES
def test_charons_dpd_is_answered_by_us(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates,
                                              native=PLAIN_DPD, charon={"dpd_delay": "2s"}),
                               extra_charon=QUICK_RETRANSMIT)
    wait_until(lambda: count_log(tunnel.charon, EMPTY_RESPONSE_IN) >= DPD_ROUNDS,
               CHANGE_TIMEOUT, f"{DPD_ROUNDS} answers from us to charon's DPD")
    assert count_log(tunnel.charon, r"sending DPD request") >= DPD_ROUNDS
    # With quick retransmits a missed answer would have killed the SA by now.
    assert count_log(tunnel.charon, r"retransmit \d+ of request") == 0
    assert _unchanged(tunnel)
    _no_deletes(tunnel)


@ROLES
def test_charon_deletes_ike_sa(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates))
    tunnel.charon.terminate(CONN)
    deleted = tunnel.daemon.wait_event(
        lambda ev: ev.get("event") == "ike_sa_deleted" and ev.get("ike_spi") == tunnel.ike_spi,
        CHANGE_TIMEOUT)
    assert deleted.get("reason")
    tunnel.daemon.wait_event(
        lambda ev: ev.get("event") == "child_sa_deleted"
        and ev.get("spi_in") == tunnel.child_event["spi_in"], CHANGE_TIMEOUT)
    wait_until(lambda: tunnel.native_status() == [], CHANGE_TIMEOUT, "our status to be empty")
    assert charon_ike_sas(tunnel.charon) == []
    assert tunnel.daemon.alive()


@ROLES
def test_sigterm_deletes_ike_sa_at_charon(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates))
    # Graceful stop: SIGTERM, and a long grace so SIGKILL never stands in for it.
    assert tunnel.daemon.stop(grace=20.0) == 0
    assert tunnel.daemon.proc.returncode == 0
    tunnel.daemon.events.poll()
    assert any(ev.get("event") == "ike_sa_deleted" and ev.get("ike_spi") == tunnel.ike_spi
               for ev in tunnel.daemon.events.events)
    # charon has no DPD here: only our Delete can have removed the SA.
    wait_until(lambda: charon_ike_sas(tunnel.charon) == [], CHANGE_TIMEOUT,
               "charon's list-sas to be empty")
    assert count_log(tunnel.charon, r"received DELETE for IKE_SA") >= 1


def test_sigkill_is_cleared_by_charons_dpd(interop: Interop) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=True,
                                              native=PLAIN_DPD, charon={"dpd_delay": "2s"}),
                               extra_charon=QUICK_RETRANSMIT)
    tunnel.daemon.proc.send_signal(signal.SIGKILL)
    tunnel.daemon.proc.wait(timeout=10)
    assert tunnel.charon_sa(tunnel.ike_spi) is not None  # charon does not know yet
    wait_until(lambda: charon_ike_sas(tunnel.charon) == [], 60.0,
               "charon's DPD to clear the SA of the killed daemon")
    assert count_log(tunnel.charon, r"giving up after \d+ retransmits") >= 1


# --- MOBIKE and DPD together ---------------------------------------------------------
# Both on, as a roaming client runs them. Our path manager's probes are empty
# INFORMATIONAL requests on the active path every 200 ms: to charon they are traffic
# from us, so its DPD (sent only after dpd_delay without inbound traffic) has nothing
# to do, and the answers keep our own DPD quiet too. A dead peer must still be found.

MOBIKE_DPD = {"dpd_delay": "2s", "mobike": True}
# A probe is an INFORMATIONAL request, with NAT detection when NAT-T was negotiated.
PROBE_IN = r"parsed INFORMATIONAL request \d+ \[ (N\(NATD_[SD]_IP\) ?)*\]"


def test_mobike_probes_stand_in_for_dpd_while_the_peer_lives(interop: Interop) -> None:
    # Only the initiator runs a path manager (it decides where the SA goes, RFC 4555 §3.1).
    tunnel = interop.establish(*interop.sides(native_initiates=True, **MOBIKE_DPD),
                               extra_charon=QUICK_RETRANSMIT)
    # Three DPD intervals and more: the probes alone keep both sides satisfied.
    wait_until(lambda: count_log(tunnel.charon, PROBE_IN) >= 30, CHANGE_TIMEOUT,
               "charon to answer our path probes")
    assert count_log(tunnel.charon, r"sending DPD request") == 0
    assert count_log(tunnel.charon, r"retransmit \d+ of request") == 0
    assert _unchanged(tunnel)
    _no_deletes(tunnel)


@ROLES
def test_mobike_with_dpd_still_clears_a_sigkilled_peer(
        interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates,
                                              **MOBIKE_DPD),
                               extra_charon=QUICK_RETRANSMIT)
    # Liveness traffic either way: our probes (as initiator), or DPD from whichever side's
    # dpd_delay ran out first (charon initiating: nobody probes).
    wait_until(lambda: count_log(tunnel.charon, PROBE_IN)
               + count_log(tunnel.charon, EMPTY_RESPONSE_IN) >= 5, CHANGE_TIMEOUT,
               "liveness traffic between us and charon")
    tunnel.daemon.proc.send_signal(signal.SIGKILL)
    tunnel.daemon.proc.wait(timeout=10)
    assert tunnel.charon_sa(tunnel.ike_spi) is not None  # charon does not know yet
    # The probes stop, so charon's DPD starts (with MOBIKE, as an address check) and
    # gives up after its retransmissions.
    wait_until(lambda: charon_ike_sas(tunnel.charon) == [], 60.0,
               "charon's DPD to clear the SA of the killed daemon despite MOBIKE")
    assert count_log(tunnel.charon, r"sending DPD request|sending address list update"
                     r"|retransmit \d+ of request") >= 1
    assert count_log(tunnel.charon, r"giving up after \d+ retransmits") >= 1


def _charon_killed_under_native(interop: Interop, dead_after: str
                                ) -> tuple[NativeDaemon, Tunnel, Side]:
    """Our daemon (``mobike { dead_after }``) initiates to charon, then charon is
    SIGKILLed: returns our daemon, the tunnel and charon's side (to start it again)."""
    ours, theirs = interop.sides(native_initiates=True, mobike=True)
    charon = interop.start_charon(theirs)
    conf = interop.workdir / "native.conf"
    conf.write_text(swanctl_conf(ours) + f"mobike {{\n    dead_after = {dead_after}\n}}\n")
    daemon = start_native(interop.lab, interop.topo.host_a, conf, name="native")
    interop.natives.append(daemon)
    tunnel = Tunnel(charon, daemon)
    tunnel.wait_agree()
    charon.proc.send_signal(signal.SIGKILL)
    charon.proc.wait(timeout=10)
    return daemon, tunnel, theirs


def test_a_peer_gone_without_a_word_is_dead_after_dead_after(interop: Interop) -> None:
    # charon SIGKILLed: no DELETE, nothing answers on any path. Our probes and moves go
    # unanswered; mobike { dead_after } ends the IKE_SA long before charon's own
    # retransmission bound (165 s) would.
    daemon, tunnel, _ = _charon_killed_under_native(interop, dead_after="3s")
    gone = daemon.wait_event(named("ike_sa_deleted", ike_spi=tunnel.ike_spi), 30.0)
    assert gone["reason"] == "dead_after", gone


def test_a_peer_restarted_without_a_delete_is_noticed_long_before_dead_after(
        interop: Interop) -> None:
    # charon SIGKILLed and started again: no DELETE came, and the new charon drops our
    # requests for the SPI it no longer knows (it sends no INVALID_IKE_SPI). Its IKE
    # port answers a new IKE_SA_INIT though: the IKE_SA is lost there, and goes at
    # once (peer_lost_state), not after dead_after (30 s).
    daemon, tunnel, theirs = _charon_killed_under_native(interop, dead_after="30s")
    interop.start_charon(theirs)
    gone = daemon.wait_event(named("ike_sa_deleted", ike_spi=tunnel.ike_spi), 20.0)
    assert gone["reason"] == "peer_lost_state", gone
