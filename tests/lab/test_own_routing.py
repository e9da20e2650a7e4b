"""The native daemon's own routing against a real kernel: uplink tables that follow
netlink, the tunnel rule that marked packets skip, peer throw routes, and cleanup that
touches nothing of the operator's (net/own_routing.py, daemon/routing.py)."""

from __future__ import annotations

import ipaddress
import signal
import time

import pytest

from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.lab.topology import Mobile, mobile
from mobike_vici.lab.tunnel import INNER_ADDR, swanctl_conf, wait_ping
from mobike_vici.net.numbers import OUTER_FWMARK, TUNNEL_TABLE, UPLINK_TABLE_FIRST
from mobike_vici.net.own_routing import OuterRouting
from mobike_vici.net.rtnl import dump_state, open_socket
from mobike_vici.net.state import NetState
from tests.unit.net.test_state import addr, fold, up

pytestmark = pytest.mark.netns

MARK = hex(OUTER_FWMARK)
ELSEWHERE = "198.51.100.7"  # any address: in a full tunnel it goes through the TUN


def state_of(ns: Netns) -> NetState:
    sock = open_socket(ns.name)
    try:
        return dump_state(sock)
    finally:
        sock.close()


def route_get(ns: Netns, dest: str, *args: str) -> str:
    return ns.ip("-6" if ":" in dest else "-4", "route", "get", dest, *args).stdout


def snapshot(ns: Netns) -> str:
    """Every rule and every route of both families, in every table."""
    parts = [ns.ip(fam, what, "show", *extra).stdout
             for fam in ("-4", "-6")
             for what, extra in (("rule", ()), ("route", ("table", "all")))]
    return "\n".join(parts)


def operator_setup(topo: Mobile) -> None:
    """What an operator had before we started: a route, a rule at one of our
    priorities (to a table of theirs), a source-routing table."""
    mob = topo.mob
    mob.ip("route", "add", "203.0.113.0/24", "via", "10.2.0.1", "dev", "m1", "proto", "static")
    mob.ip("route", "add", "default", "via", "10.1.0.1", "dev", "m0", "table", "100")
    mob.ip("rule", "add", "from", "10.1.0.2", "lookup", "100", "pref", "4550")
    mob.ip("-6", "rule", "add", "to", "2001:db8:77::/48", "lookup", "100", "pref", "4556")


def test_uplink_tables_follow_links_and_marked_lookups_skip_the_tunnel(lab: Lab) -> None:
    topo = mobile(lab)
    mob = topo.mob
    reports: list[tuple[str, dict[str, object]]] = []
    owner = OuterRouting(netns=mob.name, skip=("lo",),
                         report=lambda name, fields: reports.append((name, fields)))
    try:
        owner.start()
        owner.follow(state_of(mob), full=True)
        owner.exclude_peers([ipaddress.ip_address(topo.gw4)])
        # A full tunnel's default route in our tunnel table (what net.tun_routes adds).
        mob.ip("route", "add", "default", "dev", "m0", "table", str(TUNNEL_TABLE),
               "proto", "145")
        owner.flush()
        t0, t1 = UPLINK_TABLE_FIRST, UPLINK_TABLE_FIRST + 1
        assert f"table {t1}" in route_get(mob, topo.gw4, "from", "10.2.0.2", "mark", MARK)
        assert "dev m1" in route_get(mob, topo.gw4, "from", "10.2.0.2", "mark", MARK)
        assert "dev m1" in route_get(mob, topo.gw6, "from", "2001:db8:2::2",
                                     "mark", MARK)
        # The kernel's own choice of source, marked: main, never the tunnel's table.
        assert "table" not in route_get(mob, ELSEWHERE, "mark", MARK)
        # Unmarked: the tunnel's table, except for the peer, which is thrown back to main.
        assert f"table {TUNNEL_TABLE}" in route_get(mob, ELSEWHERE)
        assert "via 10.1.0.1 dev m0" in route_get(mob, topo.gw4)

        # m1 goes down: its table goes; up again (its default route back): it returns.
        mob.set_link("m1", False)
        owner.follow(state_of(mob))
        owner.flush()
        assert mob.ip("route", "show", "table", str(t1), check=False).stdout.strip() == ""
        assert "10.2.0.2" not in mob.ip("rule", "show").stdout
        topo.link_up(1)
        owner.follow(state_of(mob))
        owner.flush()
        assert "default via 10.2.0.1 dev m1" in mob.ip("route", "show", "table", str(t1)).stdout
        assert f"from 10.2.0.2 fwmark {MARK} lookup {t1}" in mob.ip("rule", "show").stdout
        assert f"lookup {t0}" in mob.ip("rule", "show").stdout
        assert reports == []
        # What the kernel refuses is reported, not raised: an uplink that is gone by
        # the time the request arrives.
        owner.follow(fold([up(999, "ghost0"), addr(999, "10.7.0.2/24")], state_of(mob)))
        owner.flush()
        assert {f["call"] for n, f in reports if n == "route_failed"} == {"route_replace"}
    finally:
        removed = owner.close()
    assert removed > 0
    assert "proto 145" not in snapshot(mob)


def test_start_removes_a_crashed_runs_leftovers_and_nothing_of_the_operators(lab: Lab) -> None:
    topo = mobile(lab)
    mob = topo.mob
    operator_setup(topo)
    before = snapshot(mob)
    crashed = OuterRouting(netns=mob.name, skip=("lo",))
    crashed.start()
    crashed.follow(state_of(mob), full=True)
    crashed.flush()
    # The "crash": the process would go without close(); what it installed stays.
    crashed.detach()
    left = snapshot(mob)
    assert f"lookup {TUNNEL_TABLE}" in left and f"lookup {UPLINK_TABLE_FIRST}" in left
    again = OuterRouting(netns=mob.name, skip=("lo",))
    try:
        assert again.start() > 0
        assert again.close() > 0
    finally:
        again.close()
    assert snapshot(mob) == before


def _full_tunnel(lab: Lab, topo: Mobile) -> tuple[NativeDaemon, NativeDaemon]:
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    conf_gw = lab.workdir / "gw.conf"
    conf_gw.write_text(swanctl_conf(initiator=False, local=topo.gw4, remote="%any",
                                    inner_net="0.0.0.0/0,::/0", vip6=True))
    conf_mob = lab.workdir / "mob.conf"
    conf_mob.write_text(swanctl_conf(initiator=True, local="%any", remote=topo.gw4,
                                     inner_net="0.0.0.0/0,::/0", vip6=True))
    gw = start_native(lab, topo.gw, conf_gw, name="gw")
    mob = start_native(lab, topo.mob, conf_mob, name="mob")
    mob.wait_event(named("child_sa_installed"), 30)
    wait_ping(topo.mob, INNER_ADDR, 30)
    return mob, gw


def test_full_tunnel_daemon_keeps_ike_out_and_leaves_the_operators_routes_alone(
        lab: Lab) -> None:
    topo = mobile(lab)
    operator_setup(topo)
    before = snapshot(topo.mob)
    mob, gw = _full_tunnel(lab, topo)
    # Both ends routed both families' selectors (each with a source of its own family).
    gw.wait_event(named("child_sa_installed"), 10)
    for end in (mob, gw):
        assert end.events.find(named("route_failed")) is None, end.events.events
    # Everything goes through the tunnel, but the peer and our marked packets do not.
    assert "dev mvici" in route_get(topo.mob, ELSEWHERE)
    assert "dev mvici" in route_get(topo.mob, "2001:db8:77::1")
    assert "dev mvici" not in route_get(topo.mob, topo.gw4)
    assert "dev m1" in route_get(topo.mob, topo.gw4, "from", "10.2.0.2", "mark", MARK)
    assert "203.0.113.0/24 via 10.2.0.1 dev m1 proto static" in topo.mob.ip("route").stdout
    mob.stop()
    assert mob.events.find(named("routing_removed")) is not None
    assert snapshot(topo.mob) == before


def test_after_a_crash_the_next_start_clears_our_leftovers(lab: Lab) -> None:
    topo = mobile(lab)
    operator_setup(topo)
    before = snapshot(topo.mob)
    mob, gw = _full_tunnel(lab, topo)
    mob.proc.send_signal(signal.SIGKILL)
    mob.proc.wait(10)
    gw.stop()
    left = snapshot(topo.mob)
    assert f"lookup {UPLINK_TABLE_FIRST}" in left, "uplink rules should outlive a crash"
    # The TUN went with the process; nothing of ours may still send anything into it.
    conf = lab.workdir / "mob.conf"
    again = start_native(lab, topo.mob, conf, name="mob-again")
    found = again.wait_event(named("routing_leftovers_removed"), 15)
    assert found["count"] > 0
    again.stop()
    deadline = time.monotonic() + 5
    while snapshot(topo.mob) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert snapshot(topo.mob) == before
