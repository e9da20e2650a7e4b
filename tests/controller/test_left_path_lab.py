"""A move whose first message on the new path is lost: ESP stays on the path it left.

The controller steers charon by a host route to the peer, which every packet to it
follows. charon on kernel-libipsec cannot move a CHILD_SA in place: after the MOBIKE
update the gateway rekeys it, and until the rekey is done both ends keep sending its
ESP on the path the move left (here m1's IPv4, behind the carrier NAT). The router drops
one message of the move on the new path, so it waits for a retransmission: the
gateway's rekey (4 s) or charon's path check (2.5 s). The ESP of those seconds must
still get through on m1: the controller pins m1's source to m1 (a rule before its
steering table) until ESP from the peer arrives on the new path. Before, the move's
route (same family) or the main table (after the move to the other family) sent it out
of m0, where the router's reverse-path filter dropped every packet."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.daemon.control import request
from mobike_vici.lab.charon import Charon
from mobike_vici.lab.charon_controller import INNER, Setup, build
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M0_V6 = "2001:db8:1::2"
GW4, GW6 = "192.0.2.2", "2001:db8:ff::2"
TABLE = "ctltest"
_REPLY = re.compile(r"^\[(\d+\.\d+)\].*bytes from")


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, nat_backup=True)


def _reply_times(log: Path) -> list[float]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [float(m.group(1)) for line in text.splitlines() if (m := _REPLY.match(line))]


def _move(setup: Setup, local: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        got = request(str(setup.control), "move", args={"conn": "home", "local": local})
        if got.get("ok") or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # a move of the controller's own still under way
    assert got.get("ok"), got


CREATE_CHILD_SA, INFORMATIONAL = 36, 37


def _drop(setup: Setup, src: str, dst: str, exchange: int, flags: int | None = None) -> None:
    """Drop IKE messages of ``exchange`` (its type byte after the non-ESP marker) from
    ``src`` to ``dst`` in the router, counted; the test removes the rule after the first.
    ``flags``: only those with this flags byte (0: the requests of the original responder)."""
    family = "ip6" if ":" in src else "ip"
    match = f"@th,240,8 {exchange}" + ("" if flags is None else f" @th,248,8 {flags}")
    script = f"""table inet {TABLE} {{
    chain drops {{ type filter hook forward priority -10; policy accept;
        {family} saddr {src} {family} daddr {dst} udp dport 4500 {match} counter drop
    }}
}}
"""
    setup.topo.rtr.run("nft", "-f", "-", input_text=script)


def _dropped(setup: Setup) -> int:
    out = setup.topo.rtr.run("nft", "list", "chain", "inet", TABLE, "drops").stdout
    m = re.search(r"counter packets (\d+)", out)
    return int(m.group(1)) if m else 0


def _on_m1(setup: Setup, lab: Lab) -> Path:
    """The controller running, charon moved to m1's IPv4 (behind the carrier NAT), a
    100 Hz ping through the tunnel; the ping's log."""
    # Strict reverse-path filtering, as an access network does (BCP 38): ESP from m1's
    # address that leaks out of m0 is dropped.
    setup.topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the test"
    log = lab.workdir / "stream.log"
    lab.spawn(setup.topo.mob, ["ping", "-D", "-n", "-i", "0.01", "-I", setup.vip(), INNER],
              log)
    _move(setup, M1)
    setup.wait_local(M1, timeout=30)
    assert setup.tunnel_ping(), "no traffic on m1's IPv4"
    return log


def _answered_while_held(setup: Setup, log: Path, charon_mark: int, held_until: str,
                         charon: Charon | None = None) -> None:
    """From the drop until ``charon``'s log (mob's) says ``held_until`` (the dropped
    message sent again), the stream must have been answered: ESP on the path the move
    left."""
    charon = charon or setup.mob
    deadline = time.monotonic() + 20
    while _dropped(setup) == 0:
        assert time.monotonic() < deadline, "nothing was dropped"
        time.sleep(0.02)
    lost_at = time.time()
    setup.topo.rtr.run("nft", "delete", "table", "inet", TABLE)
    deadline = time.monotonic() + 30
    while held_until not in charon.log_text()[charon_mark:]:
        assert time.monotonic() < deadline, f"charon never logged {held_until!r}"
        time.sleep(0.02)
    again_at = time.time()
    during = [t for t in _reply_times(log) if lost_at < t < again_at]
    assert len(during) >= 20, (
        f"{len(during)} replies in the {again_at - lost_at:.1f} s the move waited: the "
        "path it left no longer carried the ESP\n" + _rules(setup)
        + "\n" + setup.mob.log_text()[charon_mark:][-6000:])


def _rules(setup: Setup) -> str:
    return setup.topo.mob.ip("rule", "show").stdout + setup.our_rules_and_routes()


def _released(setup: Setup, mark: int, old: str, new: str) -> None:
    done = setup.wait_event("handover_completed", lambda e: e["local"].startswith(new),
                            after=mark)
    assert done["old_local"].startswith(old)
    released = setup.wait_event("left_path_released", lambda e: e["local"] == old,
                                after=mark, timeout=30)
    assert released["remote"] == GW4
    assert released["reason"] == "esp_on_new_path"
    assert "lookup 46" not in _rules(setup)  # no pin left behind
    assert setup.tunnel_ping()


def test_a_move_to_ipv6_keeps_esp_on_ipv4_until_the_peers_rekey_is_done(
        setup: Setup, lab: Lab) -> None:
    """To the other family: the gateway's CHILD_SA rekey after the update, its first
    message on the new path lost (the 30-minute soak's 4 s in a `loss` fault)."""
    log = _on_m1(setup, lab)
    _drop(setup, M0_V6, GW6, CREATE_CHILD_SA)
    charon_mark = len(setup.mob.log_text())
    mark = len(setup.event_list())
    _move(setup, M0_V6)
    setup.wait_local(M0_V6, timeout=30)
    # Done when the lost message was sent again: mob answers the gateway's retransmission
    # or retransmits its own request (both may rekey at once).
    _answered_while_held(setup, log, charon_mark, "retransmit")
    _released(setup, mark, M1, M0_V6)


def test_a_move_within_ipv4_keeps_esp_on_the_old_uplink_until_charon_moved(
        setup: Setup, lab: Lab) -> None:
    """Within one family the move's host route to the peer takes the old source's ESP
    too: charon's first MOBIKE check on the new path lost, it checks again only after
    2.5 s (the 30-minute soak's 2.6 s in a `loss` fault)."""
    log = _on_m1(setup, lab)
    _drop(setup, M0, GW4, INFORMATIONAL)
    charon_mark = len(setup.mob.log_text())
    mark = len(setup.event_list())
    _move(setup, M0)
    _answered_while_held(setup, log, charon_mark, "path probing attempt")
    setup.wait_local(M0, timeout=30)
    _released(setup, mark, M1, M0)


def test_a_lost_delete_of_the_peers_rekey_keeps_esp_on_the_old_uplink(
        setup: Setup, lab: Lab) -> None:
    """The gateway's ESP comes on the new path as soon as its rekey is answered, but
    charon, the rekey's responder, sends on the old CHILD_SA from the old source until
    the gateway's DELETE of it comes: that DELETE lost, the pin must stay until its
    retransmission (the 30-minute soak's 3.92 s in a `loss` fault: the pin went at the
    peer's first ESP)."""
    log = _on_m1(setup, lab)
    _drop(setup, GW4, M0, INFORMATIONAL, flags=0)
    gw_mark = len(setup.gw.log_text())
    mark = len(setup.event_list())
    _move(setup, M0)
    setup.wait_local(M0, timeout=30)
    _answered_while_held(setup, log, gw_mark, "retransmit", charon=setup.gw)
    _released(setup, mark, M1, M0)
