"""`mobike-vici run` watching charon's ESP: an inbound stall moves charon before the slow
probe schedule would, a move whose data path stays dead is repaired by a CHILD_SA rekey
through VICI (or reported failed), and idle or one-way traffic moves nothing.

Seen here: with charon at both ends (kernel-libipsec) the mobile charon rekeys its
CHILD_SAs itself right after its UPDATE_SA_ADDRESSES, so the gateway's delayed rekey
(its own INFORMATIONAL in flight on the dead path, "delaying task initiation") does
not keep the data path dead in this pairing; the dead path is made with nft instead."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.lab.charon_controller import INNER, Setup, build, mobile_conf
from mobike_vici.lab.handover import STREAM, STREAM_PORT
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M1_ANY = (M1, "2001:db8:2::2")
# Scheduled probes alone need probe_misses (2) x 2 s to call m0 down: the data plane
# must beat that by far.
SLOW_PROBES = {"probe_interval": "2s", "probe_timeout": "1s"}


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, mob_conf=mobile_conf(**SLOW_PROBES))


def _up(setup: Setup) -> str:
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the test"
    return setup.spi()


def _ping_stream(setup: Setup, name: str = "stream") -> Path:
    """100 Hz pings through the tunnel (ESP both ways), until the lab ends."""
    log = setup.lab.workdir / f"{name}.txt"
    setup.lab.spawn(setup.topo.mob, ["ping", "-n", "-i", "0.01", "-I", setup.vip(), INNER], log)
    return log


def test_an_inbound_stall_moves_charon_before_the_probe_schedule_would(setup: Setup) -> None:
    spi = _up(setup)
    _ping_stream(setup)
    time.sleep(1.0)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    stalled = setup.wait_event("inbound_stalled", after=mark, timeout=10)
    assert stalled["local"].startswith(M0)
    dead = setup.wait_event("data_path_dead", after=mark, timeout=10)
    assert dead["missed"] >= 1
    down = setup.wait_event("path_down", lambda e: e["local"].startswith(M0), after=mark)
    assert down["reason"] == "data_plane"  # not probe_timeout: the schedule did not decide
    done = setup.wait_event("handover_completed", lambda e: e["local"].startswith(M1_ANY),
                            after=mark)
    assert done["ike_spi"] == spi
    sa = setup.wait_local(M1_ANY, timeout=10)
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == spi
    # The move is complete once ESP from the gateway arrives on the new path.
    verified = setup.wait_event("data_path_verified", after=mark, timeout=15)
    assert verified["local"].split("[")[0] in M1_ANY
    downs = [e for e in setup.event_list()[mark:] if e["event"] == "path_down"
             and e["local"].startswith(M0)]
    assert downs[0]["reason"] == "data_plane"


_ESP_DROP = """
table inet cstest {
    chain forward {
        type filter hook forward priority -5; policy accept;
        ip saddr 192.0.2.2 ip daddr 10.2.0.2 udp dport 4500 @th,64,32 != 0 drop
    }
}
"""


def _drop_gateway_esp_to_m1(setup: Setup) -> None:
    """rtr drops the gateway's ESP to m1 (IKE and probes pass): the data path on the new
    uplink stays dead after a move that IKE itself completes."""
    setup.topo.rtr.run("nft", "-f", "-", input_text=_ESP_DROP)


def _lift(setup: Setup) -> None:
    setup.topo.rtr.run("nft", "delete", "table", "inet", "cstest")


def test_a_dead_data_path_after_the_move_is_repaired_by_a_child_rekey(setup: Setup) -> None:
    """IKE completes the move to m1 while the gateway's ESP to m1 is dropped: past the
    bound the controller rekeys the CHILD_SA through VICI; once ESP is let through again
    its arrival on m1 is ``data_path_repaired``, with the time the data path was dead."""
    spi = _up(setup)
    _drop_gateway_esp_to_m1(setup)
    _ping_stream(setup)
    time.sleep(1.0)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_event("handover_completed", lambda e: e["local"].startswith(M1_ANY),
                     after=mark, timeout=15)
    started = setup.wait_event("data_path_repair_started", after=mark, timeout=15)
    assert started["local"].split("[")[0] in M1_ANY
    assert started["ike_spi"] == spi
    _lift(setup)  # the gateway's ESP may come back now, on whichever CHILD_SA
    repaired = setup.wait_event("data_path_repaired", after=mark, timeout=15)
    assert repaired["ike_spi"] == spi
    assert repaired["rekeyed"] >= 1  # charon took our CHILD_SA rekey over VICI
    assert repaired["dead_ms"] > started["waited_ms"]
    names = [e["event"] for e in setup.event_list()[mark:]]
    assert "handover_failed" not in names
    assert "data_path_verified" not in names
    assert setup.tunnel_ping(timeout=5)
    assert setup.spi() == spi


def test_a_data_path_that_stays_dead_after_the_repair_is_a_failed_handover(
        setup: Setup) -> None:
    spi = _up(setup)
    _drop_gateway_esp_to_m1(setup)
    _ping_stream(setup)
    time.sleep(1.0)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_event("data_path_repair_started", after=mark, timeout=15)
    failed = setup.wait_event("handover_failed", lambda e: e["reason"] == "data_path_dead",
                              after=mark, timeout=15)
    assert failed["ike_spi"] == spi
    assert failed["detail"] == "no_inbound_esp"
    assert failed["old_local"].startswith(M0)
    _lift(setup)
    assert setup.tunnel_ping(timeout=10)


def test_one_way_traffic_and_an_idle_tunnel_move_nothing(setup: Setup) -> None:
    _up(setup)
    mark = len(setup.event_list())
    time.sleep(4.0)  # idle
    # One-way: UDP to a port nobody listens on; only rate-limited ICMP errors come back.
    sender = setup.lab.spawn(setup.topo.mob, [
        "python3", "-c",
        "import socket,time\n"
        f"s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('{setup.vip()}',0))\n"
        "while True:\n"
        f"    s.sendto(b'x'*64,('{INNER}',9)); time.sleep(0.01)\n"],
        setup.lab.workdir / "oneway.txt")
    time.sleep(8.0)
    assert sender.poll() is None, (setup.lab.workdir / "oneway.txt").read_text()
    events = setup.event_list()[mark:]
    names = [e["event"] for e in events]
    assert "handover_started" not in names, events
    assert "path_down" not in names, events
    assert "data_path_dead" not in names, events
    assert setup.sa()["local-host"] == M0


def test_a_slow_ping_answered_all_along_is_never_a_stall(setup: Setup) -> None:
    """5 packets/s, every one answered: the silence between a reply and the next request
    is the ping's own pace, not a stall (``inbound_stalled`` was logged every 0.6 s)."""
    _up(setup)
    mark = len(setup.event_list())
    log = setup.lab.workdir / "slow-ping.txt"
    setup.lab.spawn(setup.topo.mob, ["ping", "-n", "-i", "0.2", "-I", setup.vip(), INNER], log)
    time.sleep(6.0)
    assert log.read_text().count("bytes from") >= 20, log.read_text()
    events = setup.event_list()[mark:]
    assert [e for e in events if e["event"] == "inbound_stalled"] == [], events
    assert setup.sa()["local-host"] == M0


@pytest.fixture
def fast(lab: Lab) -> Iterator[Setup]:
    """The default probe schedule (200 ms): its answers re-arm a quiet peer's watch."""
    yield from build(lab, mob_conf=mobile_conf())


def test_one_way_traffic_stays_watched_after_its_first_answered_burst(fast: Setup) -> None:
    """A stream from mob that nothing answers (a sink on gw): the first stall's burst is
    answered (a quiet peer), and no ESP ever comes back. When m0 then dies silently, the
    data plane still finds it (``data_path_dead``, path_down ``data_plane``), re-armed by
    the path manager's answered probes, rather than leaving it to their timeout."""
    setup, lab = fast, fast.lab
    _up(setup)
    sink = lab.workdir / "arrivals.txt"
    sink.write_text("")
    lab.spawn(setup.topo.gw, [sys.executable, str(STREAM), "recv", INNER, str(STREAM_PORT),
                              str(sink)], lab.workdir / "recv.log")
    time.sleep(0.5)
    lab.spawn(setup.topo.mob, [sys.executable, str(STREAM), "send", INNER, str(STREAM_PORT),
                               "0.01"], lab.workdir / "send.log")
    setup.wait_event("inbound_stalled")  # the healthy path's stall: its burst is answered
    time.sleep(2.0)
    mark = len(setup.event_list())
    assert "data_path_dead" not in [e["event"] for e in setup.event_list()]

    setup.topo.kill_silently(0)

    down = setup.wait_event("path_down", lambda e: e["local"].startswith(M0), after=mark)
    assert down["reason"] == "data_plane", setup.event_list()[mark:]
    setup.wait_local(M1_ANY)


M1_V6 = "2001:db8:2::2"
GW6 = "2001:db8:ff::2"


@pytest.fixture
def dual(lab: Lab) -> Iterator[Setup]:
    """The default probe schedule, the gateway's IPv6 address a candidate from the start,
    and IPv4 first on a cost tie: m0 dies, the failover lands on m1's IPv4, and m1's IPv6
    is the one candidate left."""
    conf = mobile_conf().replace("remote_addrs = 192.0.2.2",
                                 f"remote_addrs = 192.0.2.2, {GW6}")
    conf = conf.replace("mobike {\n", "mobike {\n    family = ipv4\n")
    yield from build(lab, mob_conf=conf)


def test_a_data_path_still_dead_after_the_repair_moves_the_sa_to_another_candidate(
        dual: Setup) -> None:
    """IKE and probes pass on m1's IPv4, the gateway's ESP does not, even after the
    repair: the verdict fails that path and holds it out of the choice, so the IKE_SA
    moves to m1's IPv6, where the data path works. Before, the path answered its probes,
    so it stayed the active one with no ESP (soak, seed 41: 35 s with no move at all)."""
    setup = dual
    spi = _up(setup)
    _drop_gateway_esp_to_m1(setup)  # IPv4 only
    _ping_stream(setup)
    time.sleep(1.0)
    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    failed = setup.wait_event("handover_failed", lambda e: e["reason"] == "data_path_dead",
                              after=mark, timeout=20)
    assert failed["local"].startswith(M1), failed
    events = setup.event_list()
    at = next(i for i, e in enumerate(events) if e == failed)
    moved = setup.wait_event("handover_completed",
                             lambda e: e["local"].startswith(M1_V6), after=at, timeout=15)
    assert moved["ike_spi"] == spi
    verified = setup.wait_event("data_path_verified", lambda e: e["local"].startswith(M1_V6),
                                after=at, timeout=15)
    assert verified["ike_spi"] == spi
    assert setup.tunnel_ping(timeout=5)
    down = setup.wait_event("path_down", lambda e: e["reason"] == "data_path_dead", after=at)
    assert down["local"].startswith(M1)
    assert setup.spi() == spi  # the same IKE_SA all along: nothing set up anew
