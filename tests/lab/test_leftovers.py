"""Start-up cleanup of a killed daemon's routes and rules: ours by protocol number, in any
table; an operator's routes and rules, whatever their table, are never touched."""

from __future__ import annotations

import json

import pytest

from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.net.leftovers import ROUTE_PROTO, remove_owned

pytestmark = pytest.mark.netns


def routes_and_rules(ns: Netns) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    routes = []
    for family in ("-4", "-6"):
        routes += json.loads(ns.ip("-j", family, "route", "show", "table", "all").stdout or "[]")
        # Kernel-made local/multicast entries come and go with addresses: not the point.
    routes = [r for r in routes if r.get("table") not in ("local",) and r.get("type") not in (
        "local", "broadcast", "multicast")]
    rules = []
    for family in ("-4", "-6"):
        rules += json.loads(ns.ip("-j", family, "rule", "show").stdout or "[]")
    return routes, rules


def operator_setup(ns: Netns) -> None:
    """What an operator might have: routes in main and in a table of their own, rules."""
    ns.ip("route", "add", "198.51.100.0/24", "via", "10.5.0.1", "proto", "static")
    ns.ip("route", "add", "default", "via", "10.5.0.1", "table", "100")
    ns.ip("route", "add", "203.0.113.0/24", "via", "10.5.0.1", "table", "4556")
    ns.ip("rule", "add", "from", "10.5.0.2", "lookup", "100", "pref", "1000")
    ns.ip("rule", "add", "to", "203.0.113.0/24", "lookup", "4556", "pref", "4556")
    ns.ip("-6", "rule", "add", "from", "2001:db8:5::2", "lookup", "100", "pref", "1000")


def ours_setup(ns: Netns) -> None:
    """What a killed daemon leaves: a pinned host route in main, a table of routes with a
    rule to it (the per-uplink kind), IPv6 as well."""
    p = str(ROUTE_PROTO)
    ns.ip("route", "add", "192.0.2.2/32", "via", "10.5.0.1", "proto", p)
    ns.ip("route", "add", "default", "via", "10.5.0.1", "table", "4700", "proto", p)
    ns.ip("route", "add", "10.88.0.0/24", "via", "10.5.0.1", "table", "4700", "proto", p)
    ns.ip("rule", "add", "from", "10.5.0.2", "lookup", "4700", "pref", "4700", "protocol", p)
    ns.ip("rule", "add", "fwmark", "0x6d", "lookup", "4700", "pref", "4701", "protocol", p)
    ns.ip("-6", "route", "add", "2001:db8:ff::2/128", "via", "2001:db8:5::1", "proto", p)
    ns.ip("-6", "rule", "add", "from", "2001:db8:5::2", "lookup", "4700", "pref", "4700",
          "protocol", p)


def test_only_our_protocol_is_removed_in_any_table(lab: Lab) -> None:
    ns, peer = lab.netns("left"), lab.netns("peer")
    lab.link(ns, "u0", peer, "p0")
    ns.add_address("u0", "10.5.0.2/24")
    ns.ip("-6", "addr", "add", "2001:db8:5::2/64", "dev", "u0", "nodad")
    operator_setup(ns)
    before = routes_and_rules(ns)
    ours_setup(ns)
    assert routes_and_rules(ns) != before

    removed = remove_owned(netns=ns.name)
    assert len(removed.routes) == 4 and len(removed.rules) == 3, removed
    assert routes_and_rules(ns) == before  # the operator's, exactly as they were
    # Nothing left: a second sweep finds nothing.
    assert remove_owned(netns=ns.name).count == 0
