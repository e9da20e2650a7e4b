"""The namespace lab itself: topologies route, paths die as asked, nothing is left behind."""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from mobike_vici.lab.faults import RouterFaults
from mobike_vici.lab.netns import Lab, LabError, list_namespaces, sweep_stale
from mobike_vici.lab.topology import mobile, two_hosts

pytestmark = pytest.mark.netns


def test_two_hosts_reach_each_other_v4_and_v6(lab: Lab) -> None:
    topo = two_hosts(lab)
    assert topo.host_a.ping(topo.b4)
    assert topo.host_b.ping(topo.a4)
    assert topo.host_a.ping(topo.b6)
    assert set(list_namespaces()) >= {topo.host_a.name, topo.host_b.name}
    assert all(ns.name.startswith(f"mv-{os.getpid()}-") for ns in lab.namespaces)


def test_mobile_both_uplinks_reach_gw(lab: Lab) -> None:
    topo = mobile(lab)
    for up in topo.uplinks:
        assert topo.mob.ping(topo.gw4, source=up.addr4), up
        assert topo.mob.ping(topo.gw6, source=up.addr6), up
    routes = topo.mob.ip("-4", "route", "show", "default").stdout
    assert "dev m0 metric 100" in routes and "dev m1 metric 200" in routes


def test_silent_kill_drops_one_uplink_only_and_revives(lab: Lab) -> None:
    topo = mobile(lab)
    topo.kill_silently(0)
    assert not topo.mob.ping(topo.gw4, source="10.1.0.2", wait=1)
    assert not topo.mob.ping(topo.gw6, source="2001:db8:1::2", wait=1)
    assert topo.mob.ping(topo.gw4, source="10.2.0.2")
    # Silent: the link is still up and the router still answers on it.
    assert "state UP" in topo.mob.ip("link", "show", "m0").stdout
    assert topo.mob.ping("10.1.0.1", source="10.1.0.2")
    topo.revive(0)
    assert topo.mob.ping(topo.gw4, source="10.1.0.2")



def test_ipv4_death_kills_every_uplinks_ipv4_only_and_revives(lab: Lab) -> None:
    topo = mobile(lab)
    topo.kill_family(4)  # one nftables transaction for both uplinks
    for up in topo.uplinks:
        assert not topo.mob.ping(topo.gw4, source=up.addr4, wait=1), up
        assert topo.mob.ping(topo.gw6, source=up.addr6), up
    topo.revive_family(4)
    for up in topo.uplinks:
        assert topo.mob.ping(topo.gw4, source=up.addr4), up

def test_pair_blackhole_drops_only_that_pair(lab: Lab) -> None:
    topo = mobile(lab)
    lab.blackhole(topo.rtr, "10.1.0.2", topo.gw4)
    assert not topo.mob.ping(topo.gw4, source="10.1.0.2", wait=1)
    assert topo.mob.ping(topo.rtr_wan4, source="10.1.0.2")  # not forwarded: unaffected
    lab.heal(topo.rtr, "10.1.0.2", topo.gw4)
    assert topo.mob.ping(topo.gw4, source="10.1.0.2")


def test_link_down_removes_default_route_and_link_up_restores(lab: Lab) -> None:
    topo = mobile(lab)
    topo.link_down(0)
    assert "dev m0" not in topo.mob.ip("-4", "route", "show", "default").stdout
    assert not topo.mob.ping(topo.gw4, source="10.1.0.2", wait=1)
    topo.link_up(0)
    assert "dev m0 metric 100" in topo.mob.ip("-4", "route", "show", "default").stdout
    assert topo.mob.ping(topo.gw4, source="10.1.0.2")
    assert topo.mob.ping(topo.gw6, source="2001:db8:1::2")


def test_nat_router_hides_uplink_addresses(lab: Lab) -> None:
    topo = mobile(lab, nat=True)
    # gw has no route back to 10/8: only a translated source can be answered.
    assert "10.0.0.0/8" not in topo.gw.ip("-4", "route").stdout
    assert topo.mob.ping(topo.gw4, source="10.1.0.2")
    assert topo.mob.ping(topo.gw4, source="10.2.0.2")
    lab.flush_conntrack(topo.rtr)
    assert topo.mob.ping(topo.gw4, source="10.1.0.2")


_UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4500))
print("ready", flush=True)
while True:
    _, (host, port) = s.recvfrom(64)
    print(host, port, flush=True)
"""
_UDP_SOURCE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 4500))
while True:
    s.sendto(b"x", (sys.argv[2], 4500))
    time.sleep(0.001)
"""


def test_a_nat_rebinding_changes_the_port_once_and_never_leaks(lab: Lab) -> None:
    """The carrier NAT on m1 rebinds (``RouterFaults.nat_rebind``): a flow through it
    gets one new public port, from the new range; at no moment does it leave
    untranslated (a NAT that vanishes for a moment is no rebinding)."""
    topo = mobile(lab, nat_backup=True)
    seen = lab.workdir / "sources.txt"
    sink = lab.spawn(topo.gw, [sys.executable, "-c", _UDP_SINK], seen)
    deadline = time.monotonic() + 10
    while "ready" not in seen.read_text():
        assert time.monotonic() < deadline and sink.poll() is None, seen.read_text()
        time.sleep(0.02)
    lab.spawn(topo.mob, [sys.executable, "-c", _UDP_SOURCE, topo.uplinks[1].addr4,
                         topo.gw4], lab.workdir / "source.txt")
    time.sleep(0.5)
    low, high = RouterFaults(lab, topo.rtr).nat_rebind("g0", f"{topo.uplinks[1].addr4}/24",
                                                        random.Random(7))
    time.sleep(0.5)
    sources = [tuple(line.split()) for line in seen.read_text().splitlines()[1:]]
    assert {host for host, _ in sources} == {topo.rtr_wan4}, sorted(set(sources))
    ports = [int(port) for _, port in sources]
    changes = [b for a, b in itertools.pairwise(ports) if a != b]
    assert len(changes) == 1 and low <= changes[0] <= high, sorted(set(ports))
    assert low <= ports[-1] <= high


def test_close_kills_processes_and_removes_namespaces(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    names: list[str] = []
    try:
        ns = lab.netns("solo")
        names.append(ns.name)
        # A process that ignores SIGTERM must still be gone after close().
        code = (
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)"
        )
        log = tmp_path / "sleep.log"
        proc = lab.spawn(ns, [sys.executable, "-c", code], log)
        deadline = time.monotonic() + 10
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None
    finally:
        lab.close()
    assert proc.poll() == -signal.SIGKILL
    assert not set(names) & set(list_namespaces())
    lab.close()  # idempotent


def test_parallel_labs_do_not_collide(tmp_path: Path) -> None:
    with Lab(tmp_path / "one") as one, Lab(tmp_path / "two") as two:
        assert one.prefix != two.prefix
        a = two_hosts(one)
        b = two_hosts(two)
        assert a.host_a.name != b.host_a.name
        assert a.host_a.ping(a.b4) and b.host_a.ping(b.b4)
    assert not [n for n in list_namespaces() if n.startswith((one.prefix, two.prefix))]


def test_sweep_removes_namespaces_of_dead_runs() -> None:
    stale = "mv-999999999-1-stale"
    os.system(f"ip netns add {stale}")
    try:
        assert stale in list_namespaces()
        removed = sweep_stale()
        assert stale in removed
        assert stale not in list_namespaces()
    finally:
        os.system(f"ip netns del {stale} 2>/dev/null")


def test_failing_command_raises_with_stderr(lab: Lab) -> None:
    ns = lab.netns("err")
    with pytest.raises(LabError, match="nosuchdev"):
        ns.ip("link", "set", "nosuchdev", "up")
