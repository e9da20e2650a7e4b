"""NetFollow: a burst of netlink messages (a link coming back: the link, its addresses,
its routes) gives each link hint to the path managers at once, but the address set,
the pump and the uplink tables only once, on the final state, after the burst; after a
burst that only took things away, the tables a moment later."""

from __future__ import annotations

import asyncio
import io
import ipaddress
from collections.abc import Iterable
from typing import Any

import pytest

from mobike_vici.daemon import native_net
from mobike_vici.daemon.native_net import NetFollow
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.net.events import (
    AddressAdded,
    AddressRemoved,
    AddrFlag,
    LinkDown,
    LinkUp,
    NetEvent,
    OperState,
    Resynced,
    ResyncReason,
)
from mobike_vici.net.state import NetState, apply


class _Mobility:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_link(self, ifname: str, up: bool, now: float) -> None:
        self.calls.append(("link", ifname, up))

    def on_route_changed(self, now: float) -> None:
        self.calls.append(("route",))

    def on_addresses(self, addrs: Iterable[tuple[str, Any]], now: float) -> None:
        self.calls.append(("addresses", tuple(sorted(str(a) for _, a in addrs))))


class _Routing:
    def __init__(self) -> None:
        self.calls: list[tuple[NetState, bool]] = []

    def on_net(self, state: NetState, resynced: bool = False) -> None:
        self.calls.append((state, resynced))


class _Monitor:
    def __init__(self) -> None:
        self.state = NetState()

    def close(self) -> None:
        pass


def _burst(ifname: str = "m0") -> list[NetEvent]:
    link = {"ifindex": 2, "ifname": ifname, "admin_up": True, "carrier": True}
    addrs = [AddressAdded(ifindex=2, ifname=ifname, address=ipaddress.ip_address(a),
                          prefixlen=p, flags=AddrFlag(0), scope=0)
             for a, p in (("10.1.0.2", 24), ("2001:db8:1::2", 64))]
    return [LinkDown(**link, oper=OperState.DOWN),  # type: ignore[arg-type]
            LinkUp(**link, oper=OperState.UP),  # type: ignore[arg-type]
            *addrs]


def _follow() -> tuple[NetFollow, _Mobility, _Routing, list[int], _Monitor]:
    mobility, routing, changed, monitor = _Mobility(), _Routing(), [0], _Monitor()

    def bump() -> None:
        changed[0] += 1
    net = NetFollow(EventLog(make_logger(io.StringIO())), mobility,  # type: ignore[arg-type]
                    routing, bump, lambda: 1.0)  # type: ignore[arg-type]
    net.monitor = monitor  # type: ignore[assignment]
    return net, mobility, routing, changed, monitor


def test_a_burst_settles_once_on_the_final_state() -> None:
    net, mobility, routing, changed, monitor = _follow()

    async def scenario() -> tuple[list[tuple[Any, ...]], int, int]:
        for event in _burst():
            monitor.state = apply(monitor.state, event)
            net.on_event(event)  # as the monitor does: state first, then the event
        during = (list(mobility.calls), changed[0], len(routing.calls))
        await asyncio.sleep(0)
        return during

    hints, changed_during, routed_during = asyncio.run(scenario())
    # The hints went at once, in order; nothing else ran inside the burst.
    assert hints == [("link", "m0", False), ("link", "m0", True)]
    assert (changed_during, routed_during) == (0, 0)
    # Then once: the final address set, one pump, one routing update on the final state.
    assert mobility.calls[2:] == [("addresses", ("10.1.0.2", "2001:db8:1::2"))]
    assert changed[0] == 1
    assert routing.calls == [(monitor.state, False)]


def test_a_resync_in_the_burst_makes_the_tables_reinstall_everything() -> None:
    net, _mobility, routing, changed, _monitor = _follow()

    async def scenario() -> None:
        for event in [*_burst(), Resynced(reason=ResyncReason.REFRESH)]:
            net.on_event(event)
        await asyncio.sleep(0)
        net.on_event(_burst()[1])  # the next burst: not full again
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [full for _, full in routing.calls] == [True, False]
    assert changed[0] == 2


def test_close_drops_a_pending_settle() -> None:
    net, mobility, routing, changed, _monitor = _follow()

    async def scenario() -> None:
        net.on_event(_burst()[1])
        net.close()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert mobility.calls == [("link", "m0", True)]
    assert (changed[0], routing.calls) == (0, [])


def _loss(ifname: str = "m0") -> list[NetEvent]:
    link = {"ifindex": 2, "ifname": ifname, "admin_up": False, "carrier": False}
    return [LinkDown(**link, oper=OperState.DOWN),  # type: ignore[arg-type]
            AddressRemoved(ifindex=2, ifname=ifname, address=ipaddress.ip_address(
                "2001:db8:1::2"), prefixlen=64, flags=AddrFlag(0), scope=0)]


def test_a_burst_that_only_took_things_away_leaves_the_tables_for_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The soak's link_down: the managers hear of it and pump at once (the handover's
    # update leaves), the tables' few milliseconds wait until its answer is in.
    monkeypatch.setattr(native_net, "FOLLOW_AFTER_LOSS", 0.01)
    net, mobility, routing, changed, monitor = _follow()

    async def scenario() -> tuple[int, int]:
        for event in _loss():
            monitor.state = apply(monitor.state, event)
            net.on_event(event)
        await asyncio.sleep(0)
        settled = (changed[0], len(routing.calls))
        await asyncio.sleep(0.2)
        return settled

    assert asyncio.run(scenario()) == (1, 0)
    assert mobility.calls[0] == ("link", "m0", False)
    assert routing.calls == [(monitor.state, False)]


def test_a_gain_follows_at_once_and_takes_the_put_off_follow_with_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_net, "FOLLOW_AFTER_LOSS", 0.05)
    net, _mobility, routing, changed, monitor = _follow()

    async def scenario() -> int:
        for event in _loss():
            net.on_event(event)
        await asyncio.sleep(0)
        for event in _burst()[1:]:  # the link is back, with its addresses
            monitor.state = apply(monitor.state, event)
            net.on_event(event)
        await asyncio.sleep(0)
        at_once = len(routing.calls)
        await asyncio.sleep(0.3)
        return at_once

    assert asyncio.run(scenario()) == 1
    assert routing.calls == [(monitor.state, False)]  # the put-off one never ran
    assert changed[0] == 2


def test_close_drops_a_put_off_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_net, "FOLLOW_AFTER_LOSS", 0.01)
    net, _mobility, routing, _changed, _monitor = _follow()

    async def scenario() -> None:
        for event in _loss():
            net.on_event(event)
        await asyncio.sleep(0)
        net.close()
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert routing.calls == []
