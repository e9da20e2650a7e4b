"""The monitor's bounded event queue: a consumer that falls behind still converges.

No sockets: events are fed through the monitor's internal entry point, as the
reader callback would after parsing netlink messages.
"""

from __future__ import annotations

import asyncio
import ipaddress

from mobike_vici.net.events import (
    AddressAdded,
    AddrFlag,
    LinkUp,
    NetEvent,
    OperState,
    Resynced,
    ResyncReason,
)
from mobike_vici.net.monitor import NetlinkMonitor
from mobike_vici.net.state import NetState, apply


def added(n: int) -> AddressAdded:
    return AddressAdded(ifindex=2, ifname="eth0", address=ipaddress.ip_address(f"10.0.0.{n}"),
                        prefixlen=24, flags=AddrFlag.PERMANENT, scope=0)


async def drain(monitor: NetlinkMonitor) -> list[NetEvent]:
    monitor.close()  # iteration ends once the queue is empty
    return [event async for event in monitor]


def test_slow_consumer_gets_diff_and_resynced_instead_of_lost_events() -> None:
    async def scenario() -> tuple[list[NetEvent], NetEvent, NetState]:
        monitor = NetlinkMonitor(queue_size=3, refresh_delay=None)
        monitor._feed(LinkUp(ifindex=2, ifname="eth0", admin_up=True, oper=OperState.UP,
                             carrier=True))
        monitor._feed(added(1))
        first = await monitor.__anext__()  # the consumer has seen the link only
        for n in range(2, 9):
            monitor._feed(added(n))
        return await drain(monitor), first, monitor.state

    rest, first, final = asyncio.run(scenario())
    assert isinstance(first, LinkUp)
    assert isinstance(rest[-1], Resynced) and rest[-1].reason is ResyncReason.OVERRUN
    assert len(rest) <= 3 + 8  # bounded: queue size plus one diff
    view = apply(NetState(), first)
    for event in rest:
        view = apply(view, event)
    assert view == final
    assert len(final.addresses) == 8


def test_repeated_event_is_not_emitted_twice() -> None:
    async def scenario() -> list[NetEvent]:
        monitor = NetlinkMonitor(refresh_delay=None)
        monitor._feed(added(1))
        monitor._feed(added(1))
        monitor._feed(added(2))
        return await drain(monitor)

    assert asyncio.run(scenario()) == [added(1), added(2)]


def test_callback_receives_events_instead_of_the_queue() -> None:
    seen: list[NetEvent] = []

    async def scenario() -> list[NetEvent]:
        monitor = NetlinkMonitor(on_event=seen.append, refresh_delay=None)
        monitor._feed(added(1))
        return await drain(monitor)

    assert asyncio.run(scenario()) == []
    assert seen == [added(1)]
