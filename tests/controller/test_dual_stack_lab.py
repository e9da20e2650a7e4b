"""`mobike-vici run` beside a dual-stack charon: all IPv4 dies silently, IPv6 stays.

charon moves the IKE_SA to IPv6 by itself (the gateway announced its IPv6 address in
IKE_AUTH, ADDITIONAL_IP6_ADDRESS). The controller must follow that fact: the tunnel
comes back on the same IKE_SA (same SPIs), and no reauthentication or reinitiation
ever deletes an IKE_SA whose data path works."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.lab.charon_controller import INNER, Setup, build, full_tunnel_confs, mobile_conf
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0 = "10.1.0.2"
V6_LOCALS = ("2001:db8:1::2", "2001:db8:2::2")
GW6 = "2001:db8:ff::2"
BACK_WITHIN = 45.0  # generous: the functional bound for the tunnel to come back
STAY_UP = 15.0
_REPLY = re.compile(r"icmp_seq=(\d+)")


@pytest.fixture(params=["learnt", "configured", "full-tunnel"])
def setup(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Setup]:
    """``learnt``: the controller learns the gateway's IPv6 address only from charon
    (its MOBIKE path check, its move); ``configured``: ``remote_addrs`` names it too,
    so it is a candidate of the controller's own failover from the start;
    ``full-tunnel``: learnt, with 0.0.0.0/0 and ::/0 through the tunnel, so charon's
    table 220 routes the gateway's IPv6 address into the tunnel riding the dead IPv4."""
    conf, gw_conf = mobile_conf(), None
    if request.param == "configured":
        conf = conf.replace("remote_addrs = 192.0.2.2", f"remote_addrs = 192.0.2.2, {GW6}")
    elif request.param == "full-tunnel":
        conf, gw_conf = full_tunnel_confs()
    yield from build(lab, mob_conf=conf, gw_conf=gw_conf)


def _answered(log: Path) -> list[int]:
    """The sequence numbers of the echo replies the 100 Hz stream has received so far."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(m.group(1)) for line in text.splitlines()
            if "bytes from" in line and (m := _REPLY.search(line))]


def _replies(log: Path) -> int:
    return len(_answered(log))


def _sa_spi(sa: dict[str, object]) -> str:
    return f"{sa.get('initiator-spi')}_{sa.get('responder-spi')}"


def test_ipv4_dies_charon_moves_to_ipv6_and_the_controller_keeps_that_ike_sa(
        setup: Setup) -> None:
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the fault"
    spi = setup.spi()
    stream = setup.lab.workdir / "stream.txt"
    setup.lab.spawn(setup.topo.mob,
                    ["ping", "-n", "-i", "0.01", "-I", setup.vip(), INNER], stream)
    time.sleep(1.5)
    assert _replies(stream) > 0, "the 100 Hz stream gets no replies before the fault"
    mark = len(setup.event_list())
    log_mark = len(setup.mob.log_text())

    setup.topo.kill_family(4)

    # Back: charon's IKE_SA on an IPv6 path, the same SPIs, and the stream answered again.
    sa = setup.wait_local(V6_LOCALS, timeout=BACK_WITHIN)
    assert _sa_spi(sa) == spi, f"not the same IKE_SA: {sa}"
    assert sa["remote-host"] == GW6
    deadline = time.monotonic() + BACK_WITHIN
    before = _replies(stream)
    while _replies(stream) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replies(stream) > before, "the tunnel did not come back on IPv6"
    # charon's first MOBIKE check to the IPv6 address got its answer: with a full tunnel
    # it must skip table 220's default route into the dead tunnel (the snippet's fwmark),
    # else it is lost and charon sits out its retransmit ("path probing attempt").
    moved = setup.mob.log_text()[log_mark:]
    assert "path probing attempt" not in moved, moved[-3000:]

    # And it stays: 15 s later the same IKE_SA still carries the stream, without a gap
    # (ping paces itself below 100 Hz on a loaded machine: count what it sent).
    first = _answered(stream)[-1]
    time.sleep(STAY_UP)
    sa = setup.sa()
    assert sa.get("state") == "ESTABLISHED", sa
    assert _sa_spi(sa) == spi, f"the IKE_SA was replaced: {sa}"
    assert sa.get("local-host") in V6_LOCALS, sa
    later = [seq for seq in _answered(stream) if seq > first]
    assert later, f"no reply at all in the {STAY_UP:.0f} s after"
    sent = later[-1] - first
    assert sent > STAY_UP * 20, f"the stream sent only {sent} requests in {STAY_UP:.0f} s"
    assert len(later) >= 0.95 * sent, f"{sent - len(later)} of {sent} requests unanswered"

    events = setup.event_list()[mark:]
    names = [e["event"] for e in events]
    assert "handover_escalated" not in names, [e for e in events
                                               if e["event"] == "handover_escalated"]
    assert "ike_sa_deleted" not in names, [e for e in events if e["event"] == "ike_sa_deleted"]
    assert setup.controller is not None and setup.controller.poll() is None
    # learnt: charon moved by itself, the controller adopted that once its data path
    # verified; configured: the controller steered charon there (across families);
    # full tunnel: whichever moves first, once charon's check learnt the address.
    if setup.conf.read_text().count(GW6):
        sources = {"controller"}
    elif "::/0" in setup.conf.read_text():
        sources = {"controller", "charon"}
    else:
        sources = {"charon"}
    done = setup.wait_event(
        "handover_completed", lambda e: e.get("source") in sources, after=mark, timeout=1)
    assert done["ike_spi"] == spi
    assert done["remote"].startswith(GW6)
    assert done["local"].split("[")[0] in V6_LOCALS
    # Its path table holds the gateway's IPv6 address (charon learnt it through MOBIKE).
    learnt = setup.wait_event("peer_addresses_learned", lambda e: GW6 in e["addresses"],
                              after=0, timeout=1)
    assert learnt["conn"] == "home"
