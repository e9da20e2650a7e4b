"""PolicyRouting in a throwaway namespace: steer a peer, clear, sweep a killed run's leftovers."""

from __future__ import annotations

import ipaddress
import signal
import sys

import pytest

from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.net.steering import DEFAULT_PRIORITY, DEFAULT_TABLE, PolicyRouting

pytestmark = pytest.mark.netns

ip = ipaddress.ip_address
PEER4, PEER6 = "192.0.2.9", "2001:db8:ff::9"


def two_uplinks(lab: Lab) -> Netns:
    """`mob` with uplinks u0 (main default route) and u1 towards `rtr`."""
    mob, rtr = lab.netns("mob"), lab.netns("rtr")
    lab.link(mob, "u0", rtr, "r0")
    lab.link(mob, "u1", rtr, "r1")
    mob.add_address("u0", "10.1.0.2/24")
    mob.add_address("u1", "10.2.0.2/24")
    mob.add_address("u0", "fd01::2/64")
    mob.add_address("u1", "fd02::2/64")
    rtr.add_address("r0", "10.1.0.1/24")
    rtr.add_address("r1", "10.2.0.1/24")
    rtr.add_address("r0", "fd01::1/64")
    rtr.add_address("r1", "fd02::1/64")
    mob.add_route("default", via="10.1.0.1")
    mob.add_route("::/0", via="fd01::1")
    return mob


def rules(ns: Netns, family: str) -> str:
    return ns.ip(family, "rule", "show").stdout


def table(ns: Netns, family: str) -> str:
    return ns.ip(family, "route", "show", "table", str(DEFAULT_TABLE)).stdout


def route_get(ns: Netns, dest: str) -> str:
    return ns.ip("route", "get", dest).stdout


def test_steer_moves_the_lookup_and_clear_restores_it(lab: Lab) -> None:
    mob = two_uplinks(lab)
    assert "dev u0 src 10.1.0.2" in route_get(mob, PEER4)
    with PolicyRouting(netns=mob.name) as pr:
        assert pr.reconcile_leftovers() == 0
        pr.steer(ip(PEER4), via=ip("10.2.0.1"), dev="u1", src=ip("10.2.0.2"))
        pr.steer(ip(PEER6), via=ip("fd02::1"), dev="u1", src=ip("fd02::2"))

        assert f"{DEFAULT_PRIORITY}:\tfrom all lookup {DEFAULT_TABLE} proto 145" in rules(mob, "-4")
        assert f"{DEFAULT_PRIORITY}:\tfrom all lookup {DEFAULT_TABLE} proto 145" in rules(mob, "-6")
        assert f"{PEER4} via 10.2.0.1 dev u1 proto 145 src 10.2.0.2" in table(mob, "-4")
        assert f"{PEER6} via fd02::1 dev u1 proto 145 src fd02::2" in table(mob, "-6")
        assert "via 10.2.0.1 dev u1" in route_get(mob, PEER4)
        assert "src 10.2.0.2" in route_get(mob, PEER4)
        assert "dev u1" in route_get(mob, PEER6) and "src fd02::2" in route_get(mob, PEER6)
        # Other destinations still follow the main table.
        assert "dev u0" in route_get(mob, "192.0.2.10")

        # Steering again replaces the route rather than adding a second one.
        pr.steer(ip(PEER4), via=ip("10.1.0.1"), dev="u0", src=ip("10.1.0.2"))
        assert table(mob, "-4").count(PEER4) == 1
        assert f"via 10.1.0.1 dev u0 table {DEFAULT_TABLE} src 10.1.0.2" in route_get(mob, PEER4)
        assert {str(r.peer) for r in pr.routes()} == {PEER4, PEER6}

        assert pr.unsteer(ip(PEER6)) and not pr.unsteer(ip(PEER6))
        assert table(mob, "-6").strip() == ""

        assert pr.clear() == 3  # one route, two rules
        assert str(DEFAULT_TABLE) not in rules(mob, "-4") + rules(mob, "-6")
        assert table(mob, "-4").strip() == ""
        assert "dev u0 src 10.1.0.2" in route_get(mob, PEER4)
        assert f"table {DEFAULT_TABLE}" not in route_get(mob, PEER4)


def test_bad_arguments_are_refused(lab: Lab) -> None:
    mob = two_uplinks(lab)
    with PolicyRouting(netns=mob.name) as pr:
        with pytest.raises(LookupError):
            pr.steer(ip(PEER4), via=ip("10.1.0.1"), dev="nope0", src=None)
        with pytest.raises(ValueError):
            pr.steer(ip(PEER4), via=ip("fd01::1"), dev="u0", src=None)
    with pytest.raises(ValueError):
        PolicyRouting(table=220, netns=mob.name)


def test_reconcile_removes_what_a_killed_run_left(lab: Lab) -> None:
    mob = two_uplinks(lab)
    child = (
        "import ipaddress, os, signal\n"
        "from mobike_vici.net.steering import PolicyRouting\n"
        "pr = PolicyRouting()\n"
        f"pr.steer(ipaddress.ip_address('{PEER4}'), via=ipaddress.ip_address('10.2.0.1'),"
        " dev='u1', src=ipaddress.ip_address('10.2.0.2'))\n"
        f"pr.steer(ipaddress.ip_address('{PEER6}'), via=ipaddress.ip_address('fd02::1'),"
        " dev='u1', src=None)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = mob.run(sys.executable, "-c", child, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert PEER4 in table(mob, "-4") and PEER6 in table(mob, "-6")
    assert f"lookup {DEFAULT_TABLE}" in rules(mob, "-4")

    with PolicyRouting(netns=mob.name) as pr:
        assert pr.reconcile_leftovers() == 4  # two routes, two rules
        assert pr.routes() == []
    assert table(mob, "-4").strip() == "" and table(mob, "-6").strip() == ""
    assert f"lookup {DEFAULT_TABLE}" not in rules(mob, "-4") + rules(mob, "-6")
    assert "dev u0" in route_get(mob, PEER4)


def test_steering_wins_over_charons_table_220(lab: Lab) -> None:
    """A full tunnel puts ``default dev <tunnel>`` into charon's table 220 (rule 220): a
    steered peer must still leave by its steered uplink, not into the tunnel."""
    mob = two_uplinks(lab)
    mob.ip("link", "add", "tun220", "type", "veth", "peer", "name", "tun220p")
    mob.ip("link", "set", "tun220", "up")
    mob.ip("link", "set", "tun220p", "up")
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        mob.ip(family, "route", "add", default, "dev", "tun220", "table", "220")
        mob.ip(family, "rule", "add", "priority", "220", "lookup", "220")
    assert "dev tun220" in mob.ip("-6", "route", "get", PEER6).stdout
    with PolicyRouting(netns=mob.name) as pr:
        pr.steer(ip(PEER4), via=ip("10.2.0.1"), dev="u1", src=ip("10.2.0.2"))
        pr.steer(ip(PEER6), via=ip("fd02::1"), dev="u1", src=ip("fd02::2"))
        assert "via 10.2.0.1 dev u1" in route_get(mob, PEER4)
        assert "via fd02::1 dev u1" in mob.ip("-6", "route", "get", PEER6).stdout
        # Everything else still follows table 220.
        assert "dev tun220" in route_get(mob, "192.0.2.10")
        pr.clear()
    assert "dev tun220" in mob.ip("-6", "route", "get", PEER6).stdout


def test_a_rule_an_older_version_left_at_4555_is_removed(lab: Lab) -> None:
    mob = two_uplinks(lab)
    for family in ("-4", "-6"):
        mob.ip(family, "rule", "add", "priority", "4555", "lookup", str(DEFAULT_TABLE),
               "protocol", "145")
    mob.ip("-4", "rule", "add", "priority", "4555", "lookup", str(DEFAULT_TABLE))
    with PolicyRouting(netns=mob.name) as pr:
        assert pr.reconcile_leftovers() == 3
        pr.steer(ip(PEER4), via=ip("10.2.0.1"), dev="u1", src=ip("10.2.0.2"))
        assert f"{DEFAULT_PRIORITY}:\tfrom all lookup {DEFAULT_TABLE}" in rules(mob, "-4")
        assert "4555:" not in rules(mob, "-4") + rules(mob, "-6")
        assert pr.clear() == 2  # the route and the rule


def test_a_gateway_on_a_down_link_is_an_oserror(lab: Lab) -> None:
    # The kernel refuses a route via a gateway it cannot reach (ENETUNREACH) when the
    # uplink went down under a move; callers handle OSError, and pyroute2's own error
    # escaped them (the controller's steering task died with the move half-installed).
    mob = two_uplinks(lab)
    mob.ip("link", "set", "u1", "down")
    with PolicyRouting(netns=mob.name) as pr, pytest.raises(OSError):
        pr.steer(ip(PEER4), via=ip("10.2.0.1"), dev="u1", src=ip("10.2.0.2"))


def test_steering_leaves_no_unread_netlink_replies(lab: Lab) -> None:
    """The controller keeps one IPRoute for its whole life and steers on every move: a
    reply pyroute2 never reads stays in its catch-all queue (with its receive buffer),
    which grew the daemon's memory by a few KiB per move for ever."""
    mob = two_uplinks(lab)
    with PolicyRouting(netns=mob.name) as pr:
        unread = pr._ipr.asyncore.msg_queue.root  # replies no request is waiting for
        for _ in range(50):
            pr.steer(ip(PEER4), via=ip("10.2.0.1"), dev="u1", src=ip("10.2.0.2"))
            pr.pin(ip(PEER6), via=ip("fd02::1"), dev="u1", src=ip("fd02::2"))
            pr.routes()
            assert pr.unsteer(ip(PEER4))
        assert f"{PEER6} via fd02::1 dev u1 proto 145" in table(mob, "-6")
        assert unread.qsize() == 0
        pr.clear()
