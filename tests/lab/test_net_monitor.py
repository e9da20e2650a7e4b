"""NetlinkMonitor against a real kernel, inside throwaway network namespaces.

The monitor runs in this process with its sockets created inside the namespace; the
test changes the namespace with `ip` and waits (generously) for the events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from mobike_vici.lab.netns import Lab, Netns, list_namespaces
from mobike_vici.net.events import (
    AddressAdded,
    AddressRemoved,
    LinkDown,
    LinkUp,
    NetEvent,
    Resynced,
    ResyncReason,
    RouteChanged,
    Scope,
)
from mobike_vici.net.monitor import NetlinkMonitor
from mobike_vici.net.rtnl import (
    RECV_SIZE,
    DumpReplies,
    dump_state,
    open_socket,
    route_dump_request,
    strict_dumps,
    to_events,
)
from mobike_vici.net.state import NetState, usable_addresses

pytestmark = pytest.mark.netns

TIMEOUT = 15.0
T = TypeVar("T")
ip = ipaddress.ip_address


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def until(monitor: NetlinkMonitor, pred: Callable[[NetEvent], bool],
                seen: list[NetEvent] | None = None) -> NetEvent:
    """The first event matching `pred` (within TIMEOUT); the ones before go to `seen`."""
    async def scan() -> NetEvent:
        async for event in monitor:
            if pred(event):
                return event
            if seen is not None:
                seen.append(event)
        raise AssertionError(f"monitor ended (failure={monitor.failure!r})")
    return await asyncio.wait_for(scan(), TIMEOUT)


def is_resynced(reason: ResyncReason) -> Callable[[NetEvent], bool]:
    return lambda e: isinstance(e, Resynced) and e.reason is reason


def has_addr(cls: type[AddressAdded] | type[AddressRemoved], text: str
             ) -> Callable[[NetEvent], bool]:
    return lambda e: isinstance(e, cls) and str(e.address) == text


def fresh_dump(ns: Netns) -> NetState:
    sock = open_socket(ns.name)
    try:
        return dump_state(sock)
    finally:
        sock.close()


def setup(lab: Lab) -> tuple[Netns, Netns]:
    ns, peer = lab.netns("mon"), lab.netns("peer")
    lab.link(ns, "u0", peer, "p0")
    ns.add_address("u0", "10.5.0.2/24")
    peer.add_address("p0", "10.5.0.1/24")
    return ns, peer


def test_initial_sync_then_address_add_and_remove(lab: Lab) -> None:
    ns, _ = setup(lab)

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name) as mon:
            seen: list[NetEvent] = []
            await until(mon, is_resynced(ResyncReason.INITIAL), seen)
            assert any(isinstance(e, LinkUp) and e.ifname == "u0" for e in seen)
            assert any(has_addr(AddressAdded, "10.5.0.2")(e) for e in seen)
            # Loopback and link-local are reported, with their scope, but are not usable.
            assert any(isinstance(e, AddressAdded) and str(e.address) == "127.0.0.1"
                       and e.scope == Scope.HOST for e in seen)
            assert ("u0", ip("10.5.0.2")) in usable_addresses(mon.state)
            assert all(a.version == 4 or not a.is_link_local
                       for _, a in usable_addresses(mon.state))

            ns.add_address("u0", "10.5.0.3/24")
            ev = await until(mon, has_addr(AddressAdded, "10.5.0.3"))
            assert isinstance(ev, AddressAdded) and ev.ifname == "u0" and ev.prefixlen == 24
            ns.add_address("u0", "2001:db8:5::2/64")
            await until(mon, has_addr(AddressAdded, "2001:db8:5::2"))
            assert ("u0", ip("2001:db8:5::2")) in usable_addresses(mon.state)

            ns.ip("addr", "del", "10.5.0.3/24", "dev", "u0")
            await until(mon, has_addr(AddressRemoved, "10.5.0.3"))
            ns.ip("-6", "addr", "del", "2001:db8:5::2/64", "dev", "u0")
            await until(mon, has_addr(AddressRemoved, "2001:db8:5::2"))
            assert [str(a) for _, a in usable_addresses(mon.state)] == ["10.5.0.2"]

    run(scenario())


def test_link_down_up_and_carrier_loss(lab: Lab) -> None:
    ns, peer = setup(lab)

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            ns.set_link("u0", False)
            ev = await until(mon, lambda e: isinstance(e, LinkDown) and e.ifname == "u0")
            assert isinstance(ev, LinkDown) and not ev.admin_up
            assert usable_addresses(mon.state) == []
            ns.set_link("u0", True)
            await until(mon, lambda e: isinstance(e, LinkUp) and e.ifname == "u0")
            # The far end going down: our link stays admin up but loses carrier.
            peer.set_link("p0", False)
            ev = await until(mon, lambda e: isinstance(e, LinkDown) and e.ifname == "u0")
            assert isinstance(ev, LinkDown) and ev.admin_up and not ev.carrier
            peer.set_link("p0", True)
            await until(mon, lambda e: isinstance(e, LinkUp) and e.ifname == "u0")
            assert ("u0", ip("10.5.0.2")) in usable_addresses(mon.state)

    run(scenario())


def test_default_route_add_remove_and_silent_flush_on_link_down(lab: Lab) -> None:
    ns, _ = setup(lab)

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name, refresh_delay=0.1) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            assert mon.state.default_routes() == []
            ns.add_route("default", via="10.5.0.1", metric=100)
            ev = await until(mon, lambda e: isinstance(e, RouteChanged))
            assert isinstance(ev, RouteChanged) and ev.added and ev.ifname == "u0"
            assert ev.gateway == ip("10.5.0.1") and ev.metric == 100 and ev.dst.prefixlen == 0
            ns.ip("route", "del", "default", "via", "10.5.0.1", "metric", "100")
            ev = await until(mon, lambda e: isinstance(e, RouteChanged))
            assert isinstance(ev, RouteChanged) and not ev.added
            assert mon.state.default_routes() == []

            # IPv4 drops routes of a downed link without telling anyone: the refresh
            # after the LinkDown must find out.
            ns.add_route("default", via="10.5.0.1", metric=100)
            await until(mon, lambda e: isinstance(e, RouteChanged) and e.added)
            ns.set_link("u0", False)
            ev = await until(mon, lambda e: isinstance(e, RouteChanged))
            assert isinstance(ev, RouteChanged) and not ev.added
            assert mon.state.default_routes() == []

    run(scenario())


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """A default executor that counts what is handed to it (and runs it)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_refresh_reads_routes_on_the_loop_and_keeps_what_raced_it(lab: Lab) -> None:
    """The refresh after a link goes down finds the silently flushed route without a
    worker thread (one would hold the GIL against the loop); an address change queued
    when it starts is reported once, and the state ends equal to the kernel's."""
    ns, _ = setup(lab)

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name, refresh_delay=0.3) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            executor = NoThreads()
            asyncio.get_running_loop().set_default_executor(executor)
            ns.add_route("default", via="10.5.0.1", metric=100)
            await until(mon, lambda e: isinstance(e, RouteChanged) and e.added)
            seen: list[NetEvent] = []
            ns.set_link("u0", False)
            await until(mon, lambda e: isinstance(e, LinkDown) and e.ifname == "u0", seen)
            # Queued on the socket, unread, when the refresh starts.
            ns.add_address("u0", "10.5.0.9/24")
            await asyncio.sleep(0.4)  # no await on the monitor: the refresh runs meanwhile
            await until(mon, is_resynced(ResyncReason.REFRESH), seen)
            gone = [e for e in seen if isinstance(e, RouteChanged)]
            assert len(gone) == 1 and not gone[0].added and gone[0].ifname == "u0"
            assert sum(has_addr(AddressAdded, "10.5.0.9")(e) for e in seen) == 1
            assert executor.submitted == 0
            assert mon.state == fresh_dump(ns)
            executor.shutdown()

    run(scenario())


def test_route_dump_of_the_main_table_only(lab: Lab) -> None:
    """A strict socket's route dump of one table leaves the others (and their routes,
    the bulk in a daemon's namespace) in the kernel."""
    ns, _ = setup(lab)
    ns.add_route("default", via="10.5.0.1", metric=100)
    ns.ip("route", "add", "default", "via", "10.5.0.1", "table", "4560")
    sock = open_socket(ns.name)
    try:
        assert strict_dumps(sock)
        sock.setblocking(True)
        sock.send(route_dump_request(77, 254))
        replies = DumpReplies(77)
        msgs = []
        while not replies.done:
            msgs += replies.feed(sock.recv(RECV_SIZE))
    finally:
        sock.close()
    tables = {m.get("RTA_TABLE") for m in msgs}
    assert tables == {254}
    events = [e for m in msgs for e in to_events(m)]
    assert [(e.table, e.metric, str(e.gateway)) for e in events if isinstance(e, RouteChanged)] \
        == [(254, 100, "10.5.0.1")]


def test_requested_resync_does_not_double_report_a_racing_change(lab: Lab) -> None:
    ns, _ = setup(lab)

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            # No await between the change and the resync: the notification is still
            # queued on the socket while the dump already contains the address.
            ns.add_address("u0", "10.5.0.7/24")
            await mon.resync()
            seen: list[NetEvent] = []
            await until(mon, is_resynced(ResyncReason.REQUESTED), seen)
            assert [e for e in seen if isinstance(e, AddressAdded)] == \
                [e for e in seen if has_addr(AddressAdded, "10.5.0.7")(e)]
            assert len(seen) == 1
            assert mon.state == fresh_dump(ns)

    run(scenario())


def test_overrun_enobufs_resyncs_to_the_kernel_state(lab: Lab) -> None:
    ns, _ = setup(lab)
    count = 300
    batch = "".join(f"addr add 10.6.{i // 200}.{i % 200 + 1}/32 dev u0\n" for i in range(count))

    async def scenario() -> None:
        # A tiny receive buffer and a burst while the loop cannot read: the kernel
        # must drop notifications and report ENOBUFS.
        async with NetlinkMonitor(netns=ns.name, rcvbuf=4096) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            ns.run("ip", "-batch", "-", input_text=batch)
            seen: list[NetEvent] = []
            await until(mon, is_resynced(ResyncReason.OVERRUN), seen)
            assert mon.overruns >= 1
            added = {str(e.address) for e in seen if isinstance(e, AddressAdded)}
            assert len(added) == count  # every address announced once: lost ones via diff
            assert sum(isinstance(e, AddressAdded) for e in seen) == count
            assert mon.state == fresh_dump(ns)

    run(scenario())


def test_overrun_during_adds_and_deletes_does_not_resurrect_deleted_addresses(
        lab: Lab) -> None:
    """After ENOBUFS the socket still holds messages older than the resync's dump; an
    "address added" among them replayed over the dump would bring back an address that
    was deleted since."""
    ns, _ = setup(lab)
    count = 300
    adds = "".join(f"addr add 10.6.{i // 200}.{i % 200 + 1}/32 dev u0\n" for i in range(count))
    dels = "".join(f"addr del 10.6.{i // 200}.{i % 200 + 1}/32 dev u0\n"
                   for i in range(0, count, 2))

    async def scenario() -> None:
        async with NetlinkMonitor(netns=ns.name, rcvbuf=4096) as mon:
            await until(mon, is_resynced(ResyncReason.INITIAL))
            ns.run("ip", "-batch", "-", input_text=adds + dels)
            await until(mon, is_resynced(ResyncReason.OVERRUN))
            assert mon.overruns >= 1
            assert mon.state == fresh_dump(ns)
            kept = [a for a in mon.state.addresses.values() if str(a.address).startswith("10.6.")]
            assert len(kept) == count // 2

    run(scenario())


def test_missing_namespace_is_an_oserror_and_not_created() -> None:
    name = "mv-no-such-namespace-for-monitor"

    async def scenario() -> None:
        with pytest.raises(OSError):
            async with NetlinkMonitor(netns=name):
                pass

    run(scenario())
    assert name not in list_namespaces()
