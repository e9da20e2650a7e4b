"""NetlinkMonitor: the asyncio watcher of links, addresses and routes that feeds the path manager.

Protocol: subscribe first, then dump, then reconcile. The event
socket joins the multicast groups before any dump starts, so a change that races
the dump is either in the dump or queued on the socket; what was queued before the
dump started is discarded (the dump supersedes it, and replaying it could bring back
what was deleted since), what queued during the dump is applied on top of it (apply
is idempotent, the last word per object wins) and the
consumer gets `diff(previous, result)` followed by `Resynced`, so nothing is lost
and nothing is reported twice. On ENOBUFS (the kernel dropped messages because we
read too slowly) the same resync runs again. Because IPv4 flushes routes silently
when a link goes down or an address goes away, such events also schedule a short
delayed "refresh" resync. The refresh dumps routes only (links and addresses are
always announced), of the main table only when the kernel can filter, and reads the
dump on the event loop: a full dump parsed on a worker thread held the GIL against
the loop, and the userspace tunnel's packets with it, for tens of milliseconds right
after a link went down or came back. Its protocol is the same, for routes: what is
queued before the dump is applied first, what arrives during it on top of it.

Exceptions: `start()` raises OSError when the sockets cannot be opened (no such
namespace, no permission). A failure of a background resync ends iteration with
that exception; callback users find it in `failure`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import structlog

from .events import (
    MAIN_TABLE,
    AddressRemoved,
    LinkDown,
    LinkRemoved,
    NetEvent,
    Resynced,
    ResyncReason,
)
from .rtnl import (
    DUMP_ATTEMPTS,
    GROUPS,
    RECV_SIZE,
    DumpInterrupted,
    DumpReplies,
    RouteFilter,
    dump_state,
    is_main_default_route,
    open_socket,
    parse,
    route_dump_request,
    strict_dumps,
    to_events,
)
from .state import NetState, apply, diff

DEFAULT_QUEUE_SIZE = 4096  # events held for a slow consumer before it is resynced
READ_BURST = 64  # datagrams read per wake-up, so a flood cannot starve the loop
REFRESH_DELAY = 0.2  # seconds after a down/removal event before the route refresh
REFRESH_SEQ_FIRST = 1000  # refresh dumps number their requests apart from full dumps (1-3)

EventCallback = Callable[[NetEvent], None]


class NetlinkMonitor:
    """Kernel network state as a stream of `net.events`, kept in `state`.

    Use as an async context manager or call `start()`/`close()`; consume with
    `async for event in monitor` or pass `on_event`. The queue for the iterator is
    bounded by `queue_size`: a consumer that falls that far behind loses the queued
    events and receives instead the diff from what it last saw plus
    `Resynced(reason=OVERRUN)` (so its view still converges).
    """

    def __init__(self, *, netns: str | None = None,
                 route_filter: RouteFilter = is_main_default_route,
                 rcvbuf: int = 1 << 20, queue_size: int = DEFAULT_QUEUE_SIZE,
                 refresh_delay: float | None = REFRESH_DELAY,
                 on_event: EventCallback | None = None, logger: Any = None) -> None:
        self.netns = netns
        self._route_filter = route_filter
        self._rcvbuf = rcvbuf
        self._queue_size = queue_size
        self._refresh_delay = refresh_delay
        self._on_event = on_event
        self._log = logger if logger is not None else structlog.get_logger("mobike_vici.net")
        self._state = NetState()
        self._delivered = NetState()  # what the iterator's consumer has seen so far
        self._queue: deque[tuple[NetEvent, NetState]] = deque()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._events_sock: socket.socket | None = None
        self._dump_sock: socket.socket | None = None
        self._reading = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresh: asyncio.TimerHandle | None = None
        self._dump_table = 0  # the table a refresh asks the kernel for (0: every table)
        self._dump_seq = REFRESH_SEQ_FIRST
        self._closed = False
        self.failure: BaseException | None = None
        self.resyncs = 0  # completed resyncs, initial one included (for tests and status)
        self.overruns = 0  # ENOBUFS seen on the event socket

    @property
    def state(self) -> NetState:
        """The current snapshot (already including every event emitted so far)."""
        return self._state

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, dump, reconcile; the initial state arrives as events + Resynced."""
        if self._events_sock is not None:
            raise RuntimeError("monitor already started")
        # Subscribe first: from here on every change is either queued or in the dump.
        try:
            self._events_sock = open_socket(self.netns, groups=GROUPS, rcvbuf=self._rcvbuf)
            self._dump_sock = open_socket(self.netns, groups=0)
            if self._route_filter is is_main_default_route and strict_dumps(self._dump_sock):
                self._dump_table = MAIN_TABLE
            await self.resync(ResyncReason.INITIAL)
        except BaseException:
            self.close()  # `async with` does not call __aexit__ when __aenter__ fails
            raise

    async def __aenter__(self) -> NetlinkMonitor:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching and release the sockets; iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pause()
        if self._refresh is not None:
            self._refresh.cancel()
        for task in self._tasks:
            task.cancel()
        for sock in (self._events_sock, self._dump_sock):
            if sock is not None:
                sock.close()
        self._wakeup.set()

    # --- consuming ----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[NetEvent]:
        return self

    async def __anext__(self) -> NetEvent:
        while not self._queue:
            if self.failure is not None:
                raise self.failure
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        event, state_after = self._queue.popleft()
        self._delivered = state_after
        return event

    def _emit(self, event: NetEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
            return
        if len(self._queue) >= self._queue_size:
            # The consumer is too slow: replace what it missed by one diff.
            self._queue.clear()
            for missed in diff(self._delivered, self._state):
                self._queue.append((missed, self._state))
            self._queue.append((Resynced(reason=ResyncReason.OVERRUN), self._state))
            self._log.warning("net_consumer_overran", queue_size=self._queue_size)
        else:
            self._queue.append((event, self._state))
        self._wakeup.set()

    # --- resync -------------------------------------------------------------------

    async def resync(self, reason: ResyncReason = ResyncReason.REQUESTED) -> None:
        """Rebuild the state from a fresh dump and emit the difference, then Resynced
        (after a refresh only when something changed)."""
        async with self._lock:
            if self._closed:
                return
            self._pause()
            try:
                new = None
                if reason is ResyncReason.REFRESH:
                    new = await self._refresh_routes()
                if new is None:
                    new = await self._dump_and_drain()
            finally:
                self._resume()
            events = diff(self._state, new)
            self._state = new
            for event in events:
                self._emit(event)
            if events or reason is not ResyncReason.REFRESH:
                self._emit(Resynced(reason=reason))
            self.resyncs += 1
            self._log.info("net_resynced", reason=reason.value, changes=len(events),
                           netns=self.netns)

    async def _dump_and_drain(self) -> NetState:
        assert self._dump_sock is not None
        loop = asyncio.get_running_loop()
        for _attempt in range(DUMP_ATTEMPTS):
            # What is queued now is older than the dump about to start: replayed over
            # it, an old "address added" would resurrect an address deleted since
            # (after an overrun the queue holds exactly such stale messages). Only
            # what arrives from here on is replayed over the dump.
            self._drain(discard=True)
            snapshot = await loop.run_in_executor(
                None, dump_state, self._dump_sock, self._route_filter)
            pending = self._drain_counted()
            if pending is None:
                continue
            return self._replayed(snapshot, pending)
        raise OSError(errno.ENOBUFS, "netlink socket keeps overrunning during resync")

    async def _refresh_routes(self) -> NetState | None:
        """The state with the routes of a fresh route dump; None after an overrun of the
        event socket (then only a full dump can tell what was lost)."""
        assert self._dump_sock is not None
        older = self._drain_counted()
        if older is None:
            return None
        for msg in older:  # older than the dump: applied first, as events
            for event in to_events(msg, self._state, self._route_filter):
                self._feed(event)
        if self._closed:  # an on_event callback closed us
            return self._state
        loop = asyncio.get_running_loop()
        for _attempt in range(DUMP_ATTEMPTS):
            self._dump_seq += 1
            replies = DumpReplies(self._dump_seq)
            routes = NetState(links=self._state.links, addresses=self._state.addresses)
            await loop.sock_sendall(self._dump_sock,
                                    route_dump_request(replies.seq, self._dump_table))
            try:
                while not replies.done:
                    data = await loop.sock_recv(self._dump_sock, RECV_SIZE)
                    routes = self._replayed(routes, replies.feed(data))
            except DumpInterrupted:
                continue
            pending = self._drain_counted()
            return None if pending is None else self._replayed(routes, pending)
        raise DumpInterrupted(errno.EAGAIN, "netlink route dump interrupted repeatedly")

    def _drain_counted(self) -> list[Any] | None:
        """``_drain()``, or None (counted in ``overruns``) when the event socket overran."""
        try:
            return self._drain()
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.overruns += 1
            return None

    def _replayed(self, state: NetState, messages: list[Any]) -> NetState:
        """``state`` with ``messages`` (newer than it) applied."""
        for msg in messages:
            for event in to_events(msg, state, self._route_filter):
                state = apply(state, event)
        return state

    def _drain(self, *, discard: bool = False) -> list[Any]:
        """Every message queued on the event socket, read without blocking."""
        assert self._events_sock is not None
        out: list[Any] = []
        while True:
            try:
                data = self._events_sock.recv(RECV_SIZE)
            except BlockingIOError:
                return out
            except OSError as exc:
                if discard and exc.errno == errno.ENOBUFS:
                    continue
                raise
            if not discard:
                out.extend(parse(data))

    def _spawn_resync(self, reason: ResyncReason) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self.resync(reason))
        self._tasks.add(task)
        task.add_done_callback(self._resync_done)

    def _resync_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closed:
            self._log.error("net_monitor_failed", error=str(exc), netns=self.netns)
            self.failure = exc
            self.close()

    def _schedule_refresh(self) -> None:
        if self._refresh_delay is None or self._refresh is not None or self._closed:
            return

        def fire() -> None:
            self._refresh = None
            self._spawn_resync(ResyncReason.REFRESH)

        self._refresh = asyncio.get_running_loop().call_later(self._refresh_delay, fire)

    # --- reading ------------------------------------------------------------------

    def _pause(self) -> None:
        if self._reading and self._events_sock is not None:
            asyncio.get_running_loop().remove_reader(self._events_sock.fileno())
        self._reading = False

    def _resume(self) -> None:
        if not self._reading and not self._closed and self._events_sock is not None:
            asyncio.get_running_loop().add_reader(self._events_sock.fileno(), self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        assert self._events_sock is not None
        for _ in range(READ_BURST):
            if self._closed or not self._reading:
                return  # an on_event callback closed us, or a resync took over
            try:
                data = self._events_sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    self._log.warning("net_socket_overran", netns=self.netns)
                    self._pause()
                    self._spawn_resync(ResyncReason.OVERRUN)
                    return
                self._log.error("net_monitor_failed", error=str(exc), netns=self.netns)
                self.failure = exc
                self.close()
                return
            for msg in parse(data):
                for event in to_events(msg, self._state, self._route_filter):
                    self._feed(event)

    def _feed(self, event: NetEvent) -> None:
        new = apply(self._state, event)
        if new == self._state:
            return  # a repeat (e.g. a link stats update): nothing for the consumer
        self._state = new
        self._emit(event)
        if isinstance(event, LinkDown | LinkRemoved | AddressRemoved):
            self._schedule_refresh()


async def _watch(netns: str | None) -> None:
    async with NetlinkMonitor(netns=netns) as monitor:
        async for event in monitor:
            print(event, flush=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m mobike_vici.net.monitor [--netns NS]`: print events until ^C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--netns", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(args.netns))


if __name__ == "__main__":
    main()
