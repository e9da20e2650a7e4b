"""A move to the other address family while the peer's CHILD_SA rekey is unanswered.

charon on kernel-libipsec cannot move a CHILD_SA in place: after the MOBIKE update the
gateway rekeys it, and until the rekey is done both ends keep sending its ESP on the
path the move left. Here that path is m1's IPv4 (behind the carrier NAT), the move goes
to m0's IPv6, and the first CREATE_CHILD_SA message mob sends on the new path is dropped
by the router: the rekey waits for a retransmission (the gateway's, 4 s). The ESP of
those seconds must still get through on m1: the controller keeps the left peer address
routed by m1 until ESP from the peer arrives on the new path. Before, it dropped that
route the moment charon landed; the address then followed the main table out of m0, and
the router's reverse-path filter dropped every packet until the rekey was done (the
30-minute soak's 4 s outage in a `loss` fault)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.daemon.control import request
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


def _drop_first_create_child_sa(setup: Setup) -> None:
    """Drop CREATE_CHILD_SA messages (IKE exchange type 36 after the non-ESP marker)
    from mob's m0 IPv6 address to the gateway; counted, removed after the first."""
    script = f"""table inet {TABLE} {{
    chain drops {{ type filter hook forward priority -10; policy accept;
        ip6 saddr {M0_V6} ip6 daddr {GW6} udp dport 4500 @th,240,8 36 counter drop
    }}
}}
"""
    setup.topo.rtr.run("nft", "-f", "-", input_text=script)


def _dropped(setup: Setup) -> int:
    out = setup.topo.rtr.run("nft", "list", "chain", "inet", TABLE, "drops").stdout
    m = re.search(r"counter packets (\d+)", out)
    return int(m.group(1)) if m else 0


def test_the_left_path_carries_esp_until_the_peers_rekey_is_done(setup: Setup,
                                                                  lab: Lab) -> None:
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

    _drop_first_create_child_sa(setup)
    charon_mark = len(setup.mob.log_text())
    mark = len(setup.event_list())
    _move(setup, M0_V6)
    setup.wait_local(M0_V6, timeout=30)
    deadline = time.monotonic() + 20
    while _dropped(setup) == 0:
        assert time.monotonic() < deadline, "no CREATE_CHILD_SA on the new path"
        time.sleep(0.02)
    lost_at = time.time()
    setup.topo.rtr.run("nft", "delete", "table", "inet", TABLE)
    # The rekey is done when the dropped message was sent again (mob answers the
    # gateway's retransmission, or retransmits its own request) and answered.
    deadline = time.monotonic() + 30
    while "retransmit" not in setup.mob.log_text()[charon_mark:]:
        assert time.monotonic() < deadline, "the rekey was never retransmitted"
        time.sleep(0.02)
    again_at = time.time()
    during = [t for t in _reply_times(log) if lost_at < t < again_at]
    assert len(during) >= 20, (
        f"{len(during)} replies in the {again_at - lost_at:.1f} s the rekey waited: the "
        "path the move left no longer carried the ESP\n" + setup.our_rules_and_routes()
        + "\n" + setup.mob.log_text()[charon_mark:][-6000:])

    done = setup.wait_event("handover_completed", lambda e: e["local"].startswith(M0_V6),
                            after=mark)
    assert done["old_local"].startswith(M1)
    released = setup.wait_event("left_path_released", after=mark, timeout=30)
    assert released["remote"] == GW4
    assert released["reason"] == "esp_on_new_path"
    assert GW4 not in setup.our_rules_and_routes()
    assert setup.tunnel_ping()
