"""IKE and ESP over TCP (RFC 9329) between two of our daemons in the mobile topology.

mob (uplinks m0, m1; m0 preferred) initiates to gw with ``tcp = fallback`` on both
ends; rtr drops UDP and ESP where a case says so (an nftables rule on forwarded
packets, TCP untouched), the way a hotel network blocks IPsec. Each case checks
the traffic through the tunnel (pings to gw's inner address) and that the IKE_SA
keeps its SPIs on both ends while it changes transport.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.lab.charon import start_charon
from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.lab.topology import Mobile, mobile
from mobike_vici.lab.tunnel import INNER_ADDR, INNER_NET, swanctl_conf, wait_ping

pytestmark = pytest.mark.netns

GW4 = "192.0.2.2"
M0, M1 = "10.1.0.2", "10.2.0.2"
UP_TIMEOUT = 20.0  # functional: the goal is 3 s
MOVE_TIMEOUT = 20.0
RETURN_TIMEOUT = 30.0  # UDP is tried again every 5 s
NFT_UDP = "tcp_lab_udp"
TRICKLE = Path(__file__).resolve().parent / "trickle.py"

TCP_POLICY = """mobike {
  tcp = fallback
  tcp_port = 4500
}
"""
MOB_POLICY = """mobike {
  tcp = fallback
  tcp_port = 4500
  prefer {
    backup {
      interface = m1
      cost = 10
    }
  }
}
"""


def block_udp(topo: Mobile, uplinks: list[int]) -> None:
    """rtr drops forwarded UDP and ESP from and to the ``uplinks``' addresses, both
    families, as a network that blocks IPsec does; TCP and ICMP pass."""
    v4 = ", ".join(topo.uplinks[i].addr4 for i in uplinks)
    v6 = ", ".join(topo.uplinks[i].addr6 for i in uplinks)
    topo.rtr.run("nft", "delete", "table", "inet", NFT_UDP, check=False)
    topo.rtr.run("nft", "-f", "-", input_text=f"""
table inet {NFT_UDP} {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip saddr {{ {v4} }} meta l4proto {{ udp, esp }} drop
        ip daddr {{ {v4} }} meta l4proto {{ udp, esp }} drop
        ip6 saddr {{ {v6} }} meta l4proto {{ udp, esp }} drop
        ip6 daddr {{ {v6} }} meta l4proto {{ udp, esp }} drop
    }}
}}
""")


def unblock_udp(rtr: Netns) -> None:
    rtr.run("nft", "delete", "table", "inet", NFT_UDP, check=False)


def start(lab: Lab, before: Callable[[Mobile], None] | None = None
          ) -> tuple[Mobile, NativeDaemon, NativeDaemon]:
    topo = mobile(lab)
    if before is not None:
        before(topo)
    topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    conf_gw = lab.workdir / "gw.conf"
    conf_gw.write_text(swanctl_conf(initiator=False, local=GW4, remote="%any",
                                    inner_net=INNER_NET) + TCP_POLICY)
    conf_mob = lab.workdir / "mob.conf"
    conf_mob.write_text(swanctl_conf(initiator=True, local="%any", remote=GW4,
                                     inner_net=INNER_NET) + MOB_POLICY)
    gw = start_native(lab, topo.gw, conf_gw, name="gw")
    mob = start_native(lab, topo.mob, conf_mob, name="mob")
    return topo, mob, gw


def sa(end: NativeDaemon) -> dict[str, Any]:
    proc = end.status(as_json=True)
    assert proc.returncode == 0, proc.stderr
    (ike,) = json.loads(proc.stdout)["ike_sas"]
    return dict(ike)


def wait_transport(end: NativeDaemon, transport: str, local: str | None,
                   timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = sa(end)
        if last.get("transport") == transport and (
                local is None or str(last["local"]).startswith(local)):
            return last
        time.sleep(0.2)
    raise AssertionError(f"not on {transport} from {local}: {last}")


def pings(ns: Netns, count: int = 5) -> int:
    return sum(ns.ping(INNER_ADDR, count=1, wait=1.0) for _ in range(count))


def _seconds_between(first: dict[str, Any], then: dict[str, Any]) -> float:
    stamps = [datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00"))
              for ev in (first, then)]
    return (stamps[1] - stamps[0]).total_seconds()


def test_udp_blocked_from_the_start_comes_up_over_tcp(lab: Lab) -> None:
    topo, mob, gw = start(lab, lambda t: block_udp(t, [0, 1]))
    installed = mob.wait_event(named("child_sa_installed"), UP_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, UP_TIMEOUT)
    up_s = _seconds_between(mob.wait_event(named("daemon_started")), installed)
    mob_sa = wait_transport(mob, "tcp", None, 5)
    gw_sa = wait_transport(gw, "tcp", None, 5)
    assert mob_sa["ike_spi"] == gw_sa["ike_spi"]
    assert any(p["active"] and p["transport"] == "tcp" for p in mob_sa["paths"])
    assert mob.events.find(named("tcp_path_fallback")) is not None
    assert gw.events.find(named("tcp_stream_opened", role="responder")) is not None
    assert pings(topo.mob) >= 4
    print(f"CHILD_SA up over TCP {up_s:.2f} s after the initiator's daemon started")


def test_silent_udp_death_moves_to_tcp_and_back(lab: Lab) -> None:
    topo, mob, gw = start(lab)
    mob.wait_event(named("child_sa_installed"), UP_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, UP_TIMEOUT)
    before = sa(mob)
    assert before["transport"] == "udp"
    topo.link_down(1)  # the only uplink is m0
    mob.wait_event(named("path_down", reason="link_down"), 10)
    time.sleep(1)
    ping = subprocess.Popen(topo.mob.argv(["ping", "-n", "-D", "-i", "0.01", "-w", "10",
                                           "-W", "1", INNER_ADDR]),
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    block_udp(topo, [0])
    cut = time.time()
    wait_transport(mob, "tcp", M0, MOVE_TIMEOUT)
    wait_transport(gw, "tcp", None, MOVE_TIMEOUT)
    out, _ = ping.communicate(timeout=30)
    replies = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    after = [t for t in replies if t > cut]
    assert after, "no ping through the tunnel after UDP died"
    outage = after[0] - max([t for t in replies if t <= cut], default=cut)
    print(f"100 Hz ping through the tunnel: longest silence {outage:.2f} s across the "
          f"silent UDP death, {len(replies)} replies")
    assert pings(topo.mob) >= 4
    unblock_udp(topo.rtr)
    wait_transport(mob, "udp", M0, RETURN_TIMEOUT)
    wait_transport(gw, "udp", None, RETURN_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, MOVE_TIMEOUT)
    assert pings(topo.mob) >= 4
    assert mob.events.find(named("tcp_path_returned")) is not None
    mob.wait_event(named("tcp_stream_closed", reason="returned_to_udp"), 10)
    after_mob, after_gw = sa(mob), sa(gw)
    assert after_mob["ike_spi"] == before["ike_spi"] == after_gw["ike_spi"]


def test_link_down_on_a_tcp_path_moves_to_the_other_uplink(lab: Lab) -> None:
    topo, mob, gw = start(lab, lambda t: block_udp(t, [0, 1]))
    mob.wait_event(named("child_sa_installed"), UP_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, UP_TIMEOUT)
    before = wait_transport(mob, "tcp", M0, 10)
    topo.link_down(0)
    wait_transport(mob, "tcp", M1, MOVE_TIMEOUT)
    moved = mob.wait_event(lambda ev: ev.get("event") == "handover_completed"
                           and str(ev.get("local", "")).startswith(M1), 10)
    assert moved["transport"] == "tcp"
    wait_ping(topo.mob, INNER_ADDR, MOVE_TIMEOUT)
    assert pings(topo.mob) >= 4
    assert sa(mob)["ike_spi"] == before["ike_spi"] == sa(gw)["ike_spi"]


@pytest.mark.charon
def test_charon_peer_gets_one_tcp_unavailable_and_nothing_else(lab: Lab) -> None:
    """charon has no TCP: UDP blocked on the standby uplink makes us try TCP there once
    per peer address, it is refused, and the SA stays where it is, on UDP."""
    topo = mobile(lab)
    block_udp(topo, [1])
    topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    conf_gw = lab.workdir / "gw.conf"
    conf_gw.write_text(swanctl_conf(initiator=False, local=GW4, remote="%any",
                                    inner_net=INNER_NET))
    conf_mob = lab.workdir / "mob.conf"
    conf_mob.write_text(swanctl_conf(initiator=True, local="%any", remote=GW4,
                                     inner_net=INNER_NET) + MOB_POLICY)
    gw = start_charon(lab, topo.gw, name="gw")
    gw.load_all(conf_gw)
    mob = start_native(lab, topo.mob, conf_mob, name="mob")
    mob.wait_event(named("child_sa_installed"), UP_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, UP_TIMEOUT)
    mob.wait_event(named("tcp_unavailable"), UP_TIMEOUT)
    time.sleep(8)  # several more fallback rounds on the blocked uplink
    said = [ev["remote"] for ev in mob.events.events if ev.get("event") == "tcp_unavailable"]
    assert len(said) == len(set(said))  # once per peer address
    assert mob.events.find(named("tcp_path_fallback")) is None
    assert mob.events.find(named("handover_started")) is None
    on = sa(mob)
    assert on["transport"] == "udp" and str(on["local"]).startswith(M0)
    assert pings(topo.mob) >= 4


def test_a_thousand_trickling_connections_leave_the_tunnel_alone(lab: Lab) -> None:
    """rtr opens 1000 connections to gw's TCP port and trickles a byte on each every
    0.5 s, while the tunnel (itself over TCP: UDP blocked) carries a 100 Hz ping."""
    topo, mob, gw = start(lab, lambda t: block_udp(t, [0, 1]))
    mob.wait_event(named("child_sa_installed"), UP_TIMEOUT)
    wait_ping(topo.mob, INNER_ADDR, UP_TIMEOUT)
    wait_transport(mob, "tcp", M0, 10)
    attack = subprocess.Popen(topo.rtr.argv([sys.executable, str(TRICKLE), GW4, "4500",
                                             "1000", "12"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        ping = topo.mob.run("ping", "-n", "-q", "-i", "0.01", "-c", "1000", "-W", "1",
                            INNER_ADDR, check=False, timeout=60)
        out, _ = attack.communicate(timeout=60)
    finally:
        if attack.poll() is None:
            attack.kill()
            attack.wait()
    received = int(re.search(r"(\d+) received", ping.stdout).group(1))  # type: ignore[union-attr]
    report = json.loads(out)
    print(f"100 Hz ping: {received}/1000 through the tunnel during the attack; {report}")
    assert received >= 950
    assert report["open_at_end"] == 0  # every trickler was refused or timed out
    assert gw.events.find(named("tcp_refused", reason="max_per_source")) is not None
    assert gw.alive() and sa(gw)["transport"] == "tcp"
