"""plan_uplinks: which routes and rules keep each uplink's marked packets on it (pure)."""

from __future__ import annotations

import ipaddress

from mobike_vici.net.numbers import UPLINK_TABLE_FIRST
from mobike_vici.net.state import NetState
from mobike_vici.net.uplinks import OwnRoute, OwnRule, plan_uplinks

from .test_state import addr, down, fold, route, up

T0, T1 = UPLINK_TABLE_FIRST, UPLINK_TABLE_FIRST + 1
SKIP = ("mvici*", "lo")


def two_uplinks() -> NetState:
    return fold([
        up(1, "lo"), addr(1, "127.0.0.1/8"), addr(1, "10.88.0.1/32"),
        up(2, "m0"), addr(2, "10.1.0.2/24"), addr(2, "2001:db8:1::2/64"),
        up(3, "m1"), addr(3, "10.2.0.2/24"),
        up(9, "mvici0"), addr(9, "10.99.0.1/32"),
        route("10.1.0.1", 2, 100), route("2001:db8:1::1", 2, 100), route("10.2.0.1", 3, 200),
        # an IPv6 default on m1, which has no IPv6 address: nothing to send from there
        route("2001:db8:2::1", 3, 200),
        # not main: someone else's table
        route("10.1.0.9", 2, 5, table=100),
    ])


def test_one_table_per_uplink_with_its_connected_prefix_and_default() -> None:
    plan = plan_uplinks(two_uplinks(), {}, skip=SKIP)
    assert plan.tables == {2: T0, 3: T1}
    ip = ipaddress.ip_address
    net = ipaddress.ip_network
    assert plan.routes == {
        OwnRoute(table=T0, family=4, dst=net("10.1.0.0/24"), oif=2, prefsrc=ip("10.1.0.2")),
        OwnRoute(table=T0, family=6, dst=net("2001:db8:1::/64"), oif=2,
                 prefsrc=ip("2001:db8:1::2")),
        OwnRoute(table=T0, family=4, dst=net("0.0.0.0/0"), oif=2, gateway=ip("10.1.0.1"),
                 metric=100),
        OwnRoute(table=T0, family=6, dst=net("::/0"), oif=2, gateway=ip("2001:db8:1::1"),
                 metric=100),
        OwnRoute(table=T1, family=4, dst=net("10.2.0.0/24"), oif=3, prefsrc=ip("10.2.0.2")),
        OwnRoute(table=T1, family=4, dst=net("0.0.0.0/0"), oif=3, gateway=ip("10.2.0.1"),
                 metric=200),
    }
    assert plan.rules == {
        OwnRule(family=4, src=ip("10.1.0.2"), table=T0),
        OwnRule(family=6, src=ip("2001:db8:1::2"), table=T0),
        OwnRule(family=4, src=ip("10.2.0.2"), table=T1),
    }


def test_a_downed_uplink_loses_its_table_and_the_others_keep_theirs() -> None:
    state = two_uplinks()
    first = plan_uplinks(state, {}, skip=SKIP)
    gone = plan_uplinks(fold([down(2, "m0")], state), first.tables, skip=SKIP)
    assert gone.tables == {3: T1}
    assert all(r.table == T1 for r in gone.routes)
    assert {r.src for r in gone.rules} == {ipaddress.ip_address("10.2.0.2")}
    # Back up: it takes the free table again; m1 never moved.
    back = plan_uplinks(state, gone.tables, skip=SKIP)
    assert back.tables == {2: T0, 3: T1}
    assert back == first


def test_tables_are_bounded() -> None:
    state = two_uplinks()
    plan = plan_uplinks(state, {}, skip=SKIP, max_uplinks=1)
    assert plan.tables == {2: T0}
    assert plan.unplaced == ("m1",)
    assert {r.table for r in plan.routes} == {T0}


def test_two_addresses_in_one_prefix_make_one_route_and_two_rules() -> None:
    state = fold([up(2, "m0"), addr(2, "10.1.0.2/24"), addr(2, "10.1.0.3/24")])
    plan = plan_uplinks(state, {}, skip=SKIP)
    assert [r.prefsrc for r in plan.routes] == [ipaddress.ip_address("10.1.0.2")]
    assert {r.src for r in plan.rules} == {ipaddress.ip_address("10.1.0.2"),
                                          ipaddress.ip_address("10.1.0.3")}


def test_nothing_usable_nothing_wanted() -> None:
    state = fold([up(1, "lo"), addr(1, "127.0.0.1/8"), up(2, "m0"),
                  addr(2, "fe80::1/64"), route("10.1.0.1", 2)])
    plan = plan_uplinks(state, {}, skip=SKIP)
    assert plan.tables == {} and not plan.routes and not plan.rules
