"""The router's delay line: a latency spike on one uplink, both families, NAT kept."""

from __future__ import annotations

import re

import pytest

from mobike_vici.lab.faults import DELAY_DEVICE, DELAY_RULE_PREF, RouterFaults
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.lab.topology import Mobile, mobile, source_routes

pytestmark = pytest.mark.netns

DELAY = 0.2


def _min_rtt_s(ns: Netns, dest: str, source: str) -> float:
    family = ["-6"] if ":" in dest else []
    out = ns.run("ping", *family, "-n", "-q", "-c", "3", "-i", "0.3", "-W", "3", "-I", source,
                 dest, timeout=30).stdout
    found = re.search(r"= ([\d.]+)/", out)
    assert found, out
    return float(found.group(1)) / 1000


def _through_line(topo: Mobile) -> int:
    """Packets the router sent into the delay line so far (the device's TX)."""
    out = topo.rtr.run("cat", f"/sys/class/net/{DELAY_DEVICE}/statistics/tx_packets").stdout
    return int(out)


def _spiked(lab: Lab) -> tuple[Mobile, RouterFaults]:
    topo = mobile(lab, nat_backup=True)
    topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")  # strict, as the soak runs it
    source_routes(topo, 0)
    source_routes(topo, 1)
    faults = RouterFaults(lab, topo.rtr)
    faults.install([])
    faults.install_delay_line(DELAY)
    return topo, faults


def test_a_latency_spike_delays_one_uplink_in_both_families(lab: Lab) -> None:
    topo, faults = _spiked(lab)
    m0, m1 = topo.uplinks
    faults.latency_on(m0.router_if)
    assert "lookup" in topo.rtr.ip("-6", "rule", "show", "pref", DELAY_RULE_PREF).stdout
    before = _through_line(topo)
    assert _min_rtt_s(topo.mob, topo.gw4, m0.addr4) >= DELAY * 0.9
    assert _min_rtt_s(topo.mob, topo.gw6, m0.addr6) >= DELAY * 0.9
    assert _through_line(topo) - before >= 6
    # The other uplink does not cross the line.
    before = _through_line(topo)
    assert topo.mob.ping(topo.gw4, source=m1.addr4, count=3)
    assert _through_line(topo) == before
    faults.latency_off()
    assert topo.mob.ping(topo.gw4, source=m0.addr4, count=3)
    assert _through_line(topo) == before
    assert "lookup" not in topo.rtr.ip("-4", "rule", "show", "pref", DELAY_RULE_PREF).stdout


def test_the_carrier_nat_still_translates_what_crossed_the_line(lab: Lab) -> None:
    topo, faults = _spiked(lab)
    m1 = topo.uplinks[1]
    # gw refuses m1's own addresses: only a translated packet gets an answer.
    topo.gw.run("nft", "-f", "-", input_text=f"""
table inet nat_proof {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {m1.addr4} drop
    }}
}}
""")
    assert topo.mob.ping(topo.gw4, source=m1.addr4)
    faults.latency_on(m1.router_if)
    before = _through_line(topo)
    assert _min_rtt_s(topo.mob, topo.gw4, m1.addr4) >= DELAY * 0.9
    assert _through_line(topo) > before
