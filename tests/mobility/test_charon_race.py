"""charon has a request of its own in flight on the path that dies: our side repairs.

charon 5.9.8 with kernel-libipsec cannot update a CHILD_SA in place, so on our
UPDATE_SA_ADDRESSES it queues a CHILD_SA rekey, and a queued task waits while a request
of charon's own is outstanding ("delaying task initiation, INFORMATIONAL exchange in
progress"). When that request left on the path that then died silently, it is answered
only after charon retransmits it, 4 s later, on the new path; until then charon's ESP
goes to the dead path, and nothing comes back through the tunnel, however fast our move.

Here: the stream runs both ways (our daemon in mob initiates, charon in gw responds),
an address appears in gw, so charon sends its address-list INFORMATIONAL, which is lost
on m0 (``charons_request_lost``: as a request that left just before the fault would be;
held for certain, since a fast move would otherwise beat charon's 100 ms roam delay),
and m0 is blackholed; or m0 is blackholed and charon is told to rekey the CHILD_SA
(``swanctl --rekey``), the same with a CREATE_CHILD_SA; or to rekey the IKE_SA, the
one case the repair cannot beat (charon refuses CHILD_SA rekeys meanwhile), and which
the events then tell. With the data path check, our daemon sees its ESP go unanswered
after the move, rekeys the CHILD_SA itself (charon answers a CREATE_CHILD_SA whatever it
has outstanding) and the stream from gw resumes before charon's first retransmission.
With the check off (``verify_timeout = 0``) the same run shows the tail: the stream from
gw resumes only after that retransmission.

The order of events is what is asserted (the first packet back through the tunnel
against the moment charon's log shows its retransmission), never a duration.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.handover import STREAM, Handover, build, outage
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import NFT_TABLE, Lab, LabError
from mobike_vici.lab.tunnel import CHILD, CONN

from .test_handover import M0, M1, RESUME_TIMEOUT, SETTLE_TIMEOUT, _wait_agreed

pytestmark = [pytest.mark.netns, pytest.mark.charon]

BACK_PORT = 5302
GW_EXTRA = "192.0.2.50/24"
"""An address that appears in gw right after the fault: charon tells us of it."""
DELAYED = "delaying task initiation"
RETRANSMIT = "retransmit 1 of request"
ADDRESS_UPDATE = "sending address list update using MOBIKE"
STEADY = 2.0
"""Seconds the stream from gw flows before the fault."""
RETRANSMIT_TIMEOUT = 20.0
"""Functional: charon's first retransmission comes 4 s after its request."""


def _arrivals(path: Path) -> list[tuple[int, float, float]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return out


def _back_stream(h: Handover) -> Path:
    """A 100 Hz stream from gw to mob's virtual IP, through the tunnel (the direction
    charon's stuck rekey cuts); returns its arrivals file."""
    assert isinstance(h.mob, NativeDaemon)
    status = json.loads(h.mob.status(as_json=True).stdout)
    vip = status["ike_sas"][0]["virtual_ips"][0]
    arrivals = h.lab.workdir / "back-arrivals.txt"
    arrivals.write_text("")
    recv = subprocess.Popen(
        h.topo.mob.argv([sys.executable, str(STREAM), "recv", vip, str(BACK_PORT),
                         str(arrivals)]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    h.procs.append(recv)
    assert recv.stdout is not None
    if recv.stdout.readline().strip() != b"listening":
        raise LabError("back stream receiver did not start")
    send = h.lab.spawn(h.topo.gw, [sys.executable, str(STREAM), "send", vip, str(BACK_PORT),
                                   "0.01"], h.lab.workdir / "back-send.log")
    h.procs.append(send)
    start = time.monotonic()
    deadline = start + RESUME_TIMEOUT + STEADY
    # Flowing steadily for a while, as a stream the fault interrupts is.
    while not _spans(_arrivals(arrivals), start, STEADY):
        if time.monotonic() > deadline:
            raise LabError("no steady stream from gw through the tunnel")
        time.sleep(0.05)
    return arrivals


def _spans(arrivals: list[tuple[int, float, float]], start: float, seconds: float) -> bool:
    times = [recv for _, sent, recv in arrivals if sent >= start]
    return bool(times) and max(times) - min(times) >= seconds


def _check_off(mob: NativeDaemon) -> None:
    """verify_timeout = 0 in the running daemon (SIGHUP re-reads the policy)."""
    text = mob.config.read_text()
    assert "mobike {\n" in text
    mob.config.write_text(text.replace("mobike {\n", "mobike {\n  verify_timeout = 0\n", 1))
    mob.proc.send_signal(signal.SIGHUP)
    reloaded = mob.wait_event(named("config_reloaded"), RESUME_TIMEOUT)
    assert reloaded["policy_changed"] is True


def _settled_both_ways(h: Handover, back: Path) -> None:
    """Both ends agree on one CHILD_SA on m1, the ping resumes and the stream from gw
    flows again, within SETTLE_TIMEOUT."""
    _wait_agreed(h, M1)
    after = time.monotonic()
    assert h.wait_resumed(after, SETTLE_TIMEOUT) is not None
    deadline = after + SETTLE_TIMEOUT
    while outage(_arrivals(back), after) is None:
        assert time.monotonic() < deadline, "the stream from gw stopped again"
        time.sleep(0.05)


def _watch(gw: Charon, back: Path, fault: float, retransmits_before: int
           ) -> tuple[float | None, bool, float | None]:
    """Polled until both are known: the first arrival from gw of a packet sent after the
    fault (CLOCK_MONOTONIC); whether charon's log showed a new retransmission when that
    arrival was seen (the log is read after the arrivals, and charon logs before it sends:
    a stream that its retransmission brought back finds the line already there); and when
    the log first showed one."""
    resumed: float | None = None
    retransmitted_first = False
    retransmitted: float | None = None
    deadline = time.monotonic() + RETRANSMIT_TIMEOUT
    while (resumed is None or retransmitted is None) and time.monotonic() < deadline:
        got = outage(_arrivals(back), fault) if resumed is None else None
        seen = gw.log_text().count(RETRANSMIT) > retransmits_before
        if got is not None:
            resumed, retransmitted_first = fault + got, seen
        if seen and retransmitted is None:
            retransmitted = time.monotonic()
        time.sleep(0.01)
    return resumed, retransmitted_first, retransmitted


def charons_request_lost(h: Handover) -> None:
    """charon sends a request of its own that is lost on m0, right before m0 dies.

    rtr drops IKE requests from gw to m0 (UDP 4500 with the zero non-ESP marker and the
    response flag clear: charon's own requests; its answers to our probes and its ESP
    pass); an address appears in gw, and charon sends its address-list INFORMATIONAL
    there (100 ms after the kernel event). Once charon has said so, m0 dies. Lost, as a
    request that left just before the fault is, whoever moves first afterwards."""
    assert isinstance(h.gw, Charon)
    m0 = h.topo.uplinks[0].addr4
    h.lab._ensure_nft(h.topo.rtr)  # the lab's table, where kill_silently adds its drops
    h.topo.rtr.run("nft", "add", "rule", "inet", NFT_TABLE, "forward", "ip", "saddr",
                   h.topo.gw4, "ip", "daddr", m0, "udp", "sport", "4500",
                   "@th,64,32", "0", "@th,248,8", "&", "0x20", "==", "0", "drop")
    address_update_sent(h)


def address_update_sent(h: Handover) -> None:
    """An address appears in gw; returns once charon has sent its address-list
    INFORMATIONAL (100 ms after the kernel event)."""
    assert isinstance(h.gw, Charon)
    before = h.gw.log_text().count(ADDRESS_UPDATE)
    h.topo.gw.ip("-4", "addr", "add", GW_EXTRA, "dev", "eth0")
    deadline = time.monotonic() + RESUME_TIMEOUT
    while h.gw.log_text().count(ADDRESS_UPDATE) == before:
        if time.monotonic() > deadline:
            raise LabError("charon sent no address-list update")
        time.sleep(0.01)
    time.sleep(0.02)  # its packet is out (and dropped) just after the line


def _charon_request(h: Handover, trigger: str) -> None:
    """Make charon send a request of its own now (on the path just blackholed)."""
    assert isinstance(h.gw, Charon)
    if trigger == "address":
        # An address-list INFORMATIONAL after its kernel event (100 ms later).
        h.topo.gw.ip("-4", "addr", "add", GW_EXTRA, "dev", "eth0")
    elif trigger == "child_rekey":
        h.gw.swanctl("--rekey", "--child", CHILD)
    else:
        h.gw.swanctl("--rekey", "--ike", CONN)


@pytest.mark.parametrize(("trigger", "check"), [
    pytest.param("address", True, id="address-check"),
    pytest.param("address", False, id="address-check-off"),
    pytest.param("child_rekey", True, id="child-rekey-check"),
    pytest.param("ike_rekey", True, id="ike-rekey-check"),
])
def test_charons_request_lost_on_the_dead_path(lab: Lab, trigger: str, check: bool) -> None:
    h = build(lab, mob_native=True, gw_native=False)
    try:
        mob, gw = h.mob, h.gw
        assert isinstance(mob, NativeDaemon) and isinstance(gw, Charon)
        if not check:
            _check_off(mob)
        back = _back_stream(h)
        retransmits_before = gw.log_text().count(RETRANSMIT)
        if trigger == "address":
            # Held for certain: the address-list update otherwise races our move.
            charons_request_lost(h)
            fault = h.kill_silently(0)
        else:
            fault = h.kill_silently(0)
            _charon_request(h, trigger)
        resumed, after_retransmit, retransmitted = _watch(gw, back, fault,
                                                          retransmits_before)
        log = gw.log_text()
        # The race really was on: charon queued its rekey behind its own request.
        assert DELAYED in log, log[-3000:]
        assert retransmitted is not None, "charon never retransmitted its request"
        assert resumed is not None, "the stream from gw never resumed"
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "the stream to gw did not"
        moved = mob.wait_event(named("handover_completed"), RESUME_TIMEOUT)
        assert moved["local"].startswith(M1) and moved["old_local"].startswith(M0)
        mob.events.poll()
        repairs = [e for e in mob.events.events if e.get("event") in
                   ("data_path_repair_started", "data_path_repaired")]
        print(f"\ncharon race ({trigger}), check {'on' if check else 'off'}: the stream from gw "
              f"resumed {resumed - fault:.3f} s after the fault, charon retransmitted "
              f"{retransmitted - fault:.3f} s after it; "
              + "; ".join(f"{e['event']} {e.get('dead_ms', e.get('waited_ms'))} ms"
                          for e in repairs))
        if trigger == "ike_rekey":
            # The one the repair cannot beat: while its IKE_SA rekey is outstanding,
            # charon answers our CHILD_SA rekey with TEMPORARY_FAILURE. The verdict says
            # so, and the late repair tells the whole outage.
            assert "N(TEMP_FAIL)" in log
            failed = mob.wait_event(named("handover_failed", reason="data_path_dead"),
                                    RESUME_TIMEOUT)
            assert failed["rekeyed"] is False
            late = mob.wait_event(named("data_path_repaired"), RESUME_TIMEOUT)
            assert late["dead_ms"] > failed["dead_ms"]
            assert after_retransmit
        elif check:
            started = mob.wait_event(named("data_path_repair_started"), RESUME_TIMEOUT)
            assert started["local"].startswith(M1) and started["children"]
            repaired = mob.wait_event(named("data_path_repaired"), RESUME_TIMEOUT)
            assert repaired["local"].startswith(M1)
            # charon answered our CREATE_CHILD_SA while its own request was outstanding.
            assert "CREATE_CHILD_SA request" in log
            assert not after_retransmit, "the stream from gw waited for charon's retransmit"
        else:
            assert not repairs
            assert after_retransmit, "no tail: the race did not happen"
        # Whatever charon's queued tasks do after its retransmission, both ends end up
        # agreeing on one CHILD_SA on the new path, and traffic flows both ways.
        _settled_both_ways(h, back)
        if trigger != "ike_rekey":
            assert not mob.events.find(named("handover_failed"))
    finally:
        h.close()


def test_the_peers_esp_lost_on_the_new_path_is_a_failed_handover(lab: Lab) -> None:
    """IKE passes on m1 but charon's ESP to m1 is dropped (ESP-in-UDP, told from IKE by
    the non-ESP marker): the move completes for IKE, the repair's rekey completes too, and
    the data path stays dead: handover_failed, not data_path_repaired."""
    h = build(lab, mob_native=True, gw_native=False)
    try:
        mob = h.mob
        assert isinstance(mob, NativeDaemon)
        _back_stream(h)
        fault = h.kill_silently(0)
        m1 = h.topo.uplinks[1].addr4
        # In rtr's forward chain (the lab's table): UDP 4500 from gw to m1 whose first
        # four payload bytes are not the zero marker of IKE, i.e. ESP.
        h.topo.rtr.run("nft", "add", "rule", "inet", NFT_TABLE, "forward", "ip", "saddr",
                       h.topo.gw4, "ip", "daddr", m1, "udp", "sport", "4500",
                       "@th,64,32", "!=", "0", "drop")
        assert h.wait_resumed(fault, RESUME_TIMEOUT) is not None, "the stream to gw did not"
        started = mob.wait_event(named("data_path_repair_started"), RESUME_TIMEOUT)
        assert started["local"].startswith(M1) and started["children"]
        failed = mob.wait_event(named("handover_failed", reason="data_path_dead"),
                                SETTLE_TIMEOUT)
        assert failed["local"].startswith(M1) and failed["old_local"].startswith(M0)
        # charon answered the rekey on m1 (IKE passes); its ESP still does not reach us.
        assert failed["rekeyed"] is True
        assert mob.events.find(named("data_path_repaired")) is None
        assert mob.events.find(named("child_sa_rekeyed")) is not None
    finally:
        h.close()
