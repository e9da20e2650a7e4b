"""apply/diff/usable_addresses over hand-made events: the semantics of the net event stream."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.net.events import (
    AddressAdded,
    AddressRemoved,
    AddrFlag,
    LinkDown,
    LinkRemoved,
    LinkUp,
    NetEvent,
    OperState,
    Resynced,
    ResyncReason,
    RouteChanged,
    Scope,
)
from mobike_vici.net.state import NetState, apply, diff, usable_addresses


def up(ifindex: int, name: str, oper: OperState = OperState.UP) -> LinkUp:
    return LinkUp(ifindex=ifindex, ifname=name, admin_up=True, oper=oper, carrier=True)


def down(ifindex: int, name: str, *, admin: bool = True, carrier: bool = False) -> LinkDown:
    return LinkDown(ifindex=ifindex, ifname=name, admin_up=admin,
                    oper=OperState.LOWERLAYERDOWN, carrier=carrier)


def addr(ifindex: int, text: str, *, cls: Any = AddressAdded, flags: AddrFlag = AddrFlag.PERMANENT,
         scope: int = Scope.UNIVERSE, ifname: str = "") -> Any:
    iface = ipaddress.ip_interface(text)
    return cls(ifindex=ifindex, ifname=ifname, address=iface.ip,
               prefixlen=iface.network.prefixlen, flags=flags, scope=scope)


def route(gw: str, oif: int, metric: int = 100, *, added: bool = True,
          table: int = 254) -> RouteChanged:
    gateway = ipaddress.ip_address(gw)
    dst = ipaddress.ip_network("0.0.0.0/0" if gateway.version == 4 else "::/0")
    return RouteChanged(family=gateway.version, table=table, dst=dst, gateway=gateway,
                        oif=oif, ifname="", metric=metric, added=added)


def fold(events: list[NetEvent], state: NetState | None = None) -> NetState:
    state = state if state is not None else NetState()
    for event in events:
        state = apply(state, event)
    return state


def test_link_and_addresses_make_usable_addresses() -> None:
    state = fold([up(2, "eth0"), addr(2, "10.1.0.2/24"), addr(2, "2001:db8::2/64")])
    assert usable_addresses(state) == [
        ("eth0", ipaddress.ip_address("10.1.0.2")),
        ("eth0", ipaddress.ip_address("2001:db8::2")),
    ]


def test_usable_addresses_filters_scope_flags_and_link_state() -> None:
    state = fold([
        up(1, "lo", OperState.UNKNOWN), addr(1, "127.0.0.1/8", scope=Scope.HOST),
        addr(1, "::1/128", scope=Scope.HOST),
        up(2, "eth0"),
        addr(2, "fe80::1/64", scope=Scope.LINK),
        addr(2, "2001:db8::1/64", flags=AddrFlag.TENTATIVE),
        addr(2, "2001:db8::2/64", flags=AddrFlag.DADFAILED | AddrFlag.TENTATIVE),
        addr(2, "2001:db8::3/64", flags=AddrFlag.DEPRECATED),
        down(3, "eth1"), addr(3, "10.3.0.2/24"),
        addr(4, "10.4.0.2/24"),  # no link known for it
    ])
    assert usable_addresses(state) == [("eth0", ipaddress.ip_address("2001:db8::3"))]
    # ...but the filtered addresses are all in the state, with their scope.
    assert len(state.addresses) == 8
    scopes = {a.address.compressed: a.scope for a in state.addresses.values()}
    assert scopes["fe80::1"] == Scope.LINK and scopes["127.0.0.1"] == Scope.HOST


def test_link_down_and_up_toggle_usability_keep_addresses() -> None:
    state = fold([up(2, "eth0"), addr(2, "10.1.0.2/24")])
    state = apply(state, down(2, "eth0"))
    assert usable_addresses(state) == []
    assert len(state.addresses) == 1
    state = apply(state, up(2, "eth0"))
    assert usable_addresses(state) == [("eth0", ipaddress.ip_address("10.1.0.2"))]


def test_unknown_operstate_counts_as_up_only_with_carrier_and_admin() -> None:
    assert up(1, "tun0", OperState.UNKNOWN).up
    assert not LinkUp(ifindex=1, ifname="x", admin_up=True, oper=OperState.UNKNOWN,
                      carrier=False).up
    assert not LinkUp(ifindex=1, ifname="x", admin_up=False, oper=OperState.UP,
                      carrier=True).up


def test_address_removed_and_link_removed() -> None:
    state = fold([up(2, "eth0"), addr(2, "10.1.0.2/24"), addr(2, "10.1.0.3/24"),
                  up(3, "eth1"), addr(3, "10.2.0.2/24"), route("10.2.0.1", 3)])
    state = apply(state, addr(2, "10.1.0.3/24", cls=AddressRemoved))
    assert [a.address.compressed for a in state.addresses.values()] == ["10.1.0.2", "10.2.0.2"]
    state = apply(state, LinkRemoved(ifindex=3, ifname="eth1"))
    assert set(state.links) == {2}
    assert [a.address.compressed for a in state.addresses.values()] == ["10.1.0.2"]
    assert state.routes == {}


def test_routes_add_replace_remove_and_default_order() -> None:
    state = fold([up(2, "eth0"), up(3, "eth1"), route("10.1.0.1", 2, 200),
                  route("10.2.0.1", 3, 100), route("2001:db8::1", 2, 1024)])
    best4 = state.default_routes(4)
    assert [str(r.gateway) for r in best4] == ["10.2.0.1", "10.1.0.1"]
    assert len(state.default_routes()) == 3
    state = apply(state, route("10.2.0.1", 3, 100, added=False))
    assert [str(r.gateway) for r in state.default_routes(4)] == ["10.1.0.1"]
    # Removing a route that is not there changes nothing.
    assert apply(state, route("10.9.0.1", 3, 100, added=False)) == state


def test_apply_is_idempotent_and_resynced_is_a_no_op() -> None:
    events: list[NetEvent] = [up(2, "eth0"), addr(2, "10.1.0.2/24"), route("10.1.0.1", 2)]
    once = fold(events)
    assert fold(events, once) == once
    assert apply(once, Resynced(reason=ResyncReason.REQUESTED)) is once


def test_replaying_events_that_raced_a_dump_converges() -> None:
    # The dump saw the address already gone; queued events added then removed it.
    queued: list[NetEvent] = [addr(2, "10.1.0.9/24"), addr(2, "10.1.0.9/24", cls=AddressRemoved)]
    dumped = fold([up(2, "eth0"), addr(2, "10.1.0.2/24")])
    assert fold(queued, dumped) == dumped


def test_diff_orders_removals_first_and_reproduces_new() -> None:
    old = fold([up(2, "eth0"), addr(2, "10.1.0.2/24"), route("10.1.0.1", 2),
                up(3, "eth1"), addr(3, "10.2.0.2/24")])
    new = fold([up(2, "eth0"), addr(2, "10.1.0.3/24"), down(3, "eth1"),
                addr(3, "10.2.0.2/24"), up(4, "wlan0")])
    events = diff(old, new)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RouteChanged", "AddressRemoved", "LinkDown", "LinkUp", "AddressAdded"]
    assert isinstance(events[0], RouteChanged) and not events[0].added
    assert fold(events, old) == new
    assert diff(new, new) == []


def test_diff_from_empty_lists_links_before_addresses_before_routes() -> None:
    new = fold([route("10.1.0.1", 2), addr(2, "10.1.0.2/24"), up(2, "eth0")])
    assert [type(e).__name__ for e in diff(NetState(), new)] == \
        ["LinkUp", "AddressAdded", "RouteChanged"]


def test_address_flag_change_is_a_change() -> None:
    state = fold([up(2, "eth0"), addr(2, "2001:db8::1/64", flags=AddrFlag.TENTATIVE)])
    assert usable_addresses(state) == []
    settled = apply(state, addr(2, "2001:db8::1/64", flags=AddrFlag.PERMANENT))
    assert settled != state
    assert [type(e) for e in diff(state, settled)] == [AddressAdded]
    assert usable_addresses(settled) == [("eth0", ipaddress.ip_address("2001:db8::1"))]


# --- property: diff(old, new) applied to old gives new ----------------------------

_links = st.builds(
    lambda i, admin, carrier, oper: (LinkUp if admin and carrier and oper in
                                     (OperState.UP, OperState.UNKNOWN) else LinkDown)(
        ifindex=i, ifname=f"if{i}", admin_up=admin, oper=oper, carrier=carrier),
    st.integers(1, 4), st.booleans(), st.booleans(), st.sampled_from(OperState))
_addrs = st.builds(
    lambda i, host, removed, flags: addr(i, f"10.0.{i}.{host}/24",
                                         cls=AddressRemoved if removed else AddressAdded,
                                         flags=flags),
    st.integers(1, 4), st.integers(1, 5), st.booleans(),
    st.sampled_from([AddrFlag.PERMANENT, AddrFlag.TENTATIVE, AddrFlag.DEPRECATED]))
_routes = st.builds(
    lambda i, metric, added: route(f"10.0.{i}.1", i, metric, added=added),
    st.integers(1, 4), st.sampled_from([100, 200]), st.booleans())
_removals = st.builds(lambda i: LinkRemoved(ifindex=i, ifname=f"if{i}"), st.integers(1, 4))
_events = st.lists(st.one_of(_links, _addrs, _routes, _removals), max_size=25)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(_events, _events)
def test_diff_then_apply_reaches_new(first: list[NetEvent], second: list[NetEvent]) -> None:
    old = fold(first)
    new = fold(second, old)
    assert fold(diff(old, new), old) == new
    assert fold(diff(new, old), new) == old
