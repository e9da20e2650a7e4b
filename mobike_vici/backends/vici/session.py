"""An asyncio client for charon's VICI socket: commands, events into the SA table, reconnects.

The ``vici`` package (PyPI, 6.0.x) is blocking, so it never runs on the event
loop: commands go through one session on a dedicated single-thread executor
(which also keeps them in order), events arrive on a second socket read by a
daemon thread that hands each message to the loop with
``call_soon_threadsafe``. When either socket fails (charon stopped or
restarted) the client reports ``ViciDisconnected``, keeps the SA table as it
was, and reconnects with exponential backoff; after every connect it runs the
``on_connect`` hook (load the config into the new charon) and then a full
resync (list-conns, list-sas) that the table reconciles against. Events that
arrive during the resync are held back and applied after it, so a snapshot
never undoes a newer event. Of charon's ``log`` event only the MOBIKE path checks
reach the loop (``addresses.path_checked``: the peer addresses charon knows).

Public surface: ``ViciClient`` (``run``, ``close``, ``wait_connected``,
``call``, ``stream``, ``initiate``, ``table``, ``events``, ``conns``) and ``Backoff``.
Only ``ViciError`` subclasses escape the command methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import vici
import vici.exception
from vici.protocol import Message, Packet, Transport

from .addresses import LOG_PREFIX, path_checked
from .errors import CommandFailed, ViciError, ViciUnavailable
from .events import ViciConnected, ViciDisconnected, ViciEvent
from .table import SA_EVENTS, SaTable, decode, parse_list_sas, responder_only

DEFAULT_URI = "unix:///var/run/charon.vici"
EVENT_QUEUE_SIZE = 4096  # bound on undelivered events; beyond it new events are dropped
COMMAND_TIMEOUT = 30.0  # seconds charon may take to start answering one command
REGISTER_TIMEOUT = 5.0
RESYNC_PUT_WAIT = 5.0  # seconds a resync's change waits for room in the queue

# What the vici package raises when the session is unusable (rather than a refusal).
_SESSION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, vici.exception.SessionException, vici.exception.DeserializationException,
)

_CONNECT_ERRORS: tuple[type[BaseException], ...] = (ViciError, TimeoutError, *_SESSION_ERRORS)

Msg = dict[str, Any]
# charon's level-1 log too: its MOBIKE path checks name the peer addresses it knows.
EVENTS = (*SA_EVENTS, "log")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling (``factor``) up to ``maximum`` seconds."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


def open_socket(uri: str, timeout: float | None) -> socket.socket:
    """A connected socket for ``unix:///path`` or ``tcp://host:port`` (blocking: use a thread)."""
    parsed = urllib.parse.urlsplit(uri)
    sock: socket.socket
    if parsed.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = parsed.path
    elif parsed.scheme == "tcp":
        sock = socket.socket(socket.AF_INET6 if ":" in (parsed.hostname or "") else
                             socket.AF_INET, socket.SOCK_STREAM)
        address = (parsed.hostname or "127.0.0.1", parsed.port or 4502)
    else:
        raise ViciError(f"unsupported VICI URI {uri!r} (unix:///path or tcp://host:port)")
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class _EventReader(threading.Thread):
    """Registers for events on its own socket, then forwards every event to the loop."""

    def __init__(self, sock: socket.socket, names: tuple[str, ...],
                 loop: asyncio.AbstractEventLoop,
                 registered: asyncio.Future[list[str]],
                 deliver: Callable[[str, Msg], None],
                 lost: Callable[[str], None]) -> None:
        super().__init__(name="vici-events", daemon=True)
        self._sock = sock
        self._names = names
        self._loop = loop
        self._registered = registered
        self._deliver = deliver
        self._lost = lost
        self._stopping = False

    def stop(self) -> None:
        """Wake the blocked recv (shutdown) and let the thread end; safe to call twice."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody left to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _register(self, transport: Transport) -> list[str]:
        unknown = []
        for name in self._names:
            transport.send(Packet.register_event(name))
            while True:
                response = Packet.parse(transport.receive())
                if response.response_type != Packet.EVENT:
                    break
            if response.response_type == Packet.EVENT_UNKNOWN:
                unknown.append(name)  # e.g. ike-update before 5.9.2: live without it
            elif response.response_type != Packet.EVENT_CONFIRM:
                raise vici.exception.SessionException(
                    f"registering {name}: unexpected response {response.response_type}")
        return unknown

    def run(self) -> None:
        transport = Transport(self._sock)
        try:
            unknown = self._register(transport)
            self._sock.settimeout(None)
            self._call(_resolve, self._registered, unknown)
            while True:
                packet = Packet.parse(transport.receive())
                if packet.response_type != Packet.EVENT:
                    continue
                name = packet.event_type.decode("utf-8", "replace")
                message = decode(Message.deserialize(packet.payload))
                if name == "log" and not str(message.get("msg", "")).startswith(LOG_PREFIX):
                    continue  # the rest of charon's log stays on this thread
                self._call(self._deliver, name, message)
        except Exception as exc:
            if not self._stopping:
                reason = str(exc) or type(exc).__name__
                self._call(_fail, self._registered, reason)
                self._call(self._lost, reason)


def _resolve(fut: asyncio.Future[list[str]], value: list[str]) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[list[str]], reason: str) -> None:
    if not fut.done():
        fut.set_exception(ViciUnavailable(reason))


class ViciClient:
    """One charon, kept attached: commands, the SA table, and a bounded queue of events.

    Run ``await client.run()`` in a task; it returns after ``close()``. The
    ``events`` queue receives ``ViciConnected``, ``ViciDisconnected`` and the
    SA table's events, in order (``EVENT_QUEUE_SIZE`` at most; overflow is
    dropped and logged, the table itself stays right). ``on_connect`` runs
    after every (re)connect before the resync, e.g. to load the config.
    """

    def __init__(self, uri: str = DEFAULT_URI, *, logger: Any | None = None,
                 backoff: Backoff | None = None,
                 on_connect: Callable[[ViciClient], Awaitable[None]] | None = None,
                 queue_size: int = EVENT_QUEUE_SIZE) -> None:
        self.uri = uri
        self.table = SaTable()
        self.events: asyncio.Queue[ViciEvent] = asyncio.Queue(maxsize=queue_size)
        self.conns: dict[str, Msg] = {}
        """charon's loaded connections as of the last resync (decoded list-conns)."""
        self.dropped_events = 0
        self._log = logger if logger is not None else structlog.get_logger("mobike_vici.vici")
        self._backoff = backoff or Backoff()
        self._on_connect = on_connect
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="vici-cmd")
        self._session: Any = None
        self._cmd_sock: socket.socket | None = None
        self._reader: _EventReader | None = None
        self._generation = 0
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._held: list[tuple[str, Msg]] | None = None  # events held back during a resync

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until connected and resynced; ``TimeoutError`` after ``timeout`` seconds."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def run(self) -> None:
        """Connect, resync, follow events; on loss reconnect with backoff; until ``close()``.

        Cancelling the task also drops the sessions.
        """
        try:
            await self._run()
        finally:
            self._teardown()

    async def _run(self) -> None:
        delays = self._backoff.delays()
        while not self._closing.is_set():
            try:
                await self._connect()
            except _CONNECT_ERRORS as exc:
                self._teardown()
                if self._closing.is_set():
                    break
                delay = next(delays)
                self._log.info("vici_connect_failed", uri=self.uri, error=str(exc),
                               retry_in_s=delay)
                await self._sleep(delay)
                continue
            delays = self._backoff.delays()
            await self._wait_lost_or_closed()
            reason = "closed" if self._closing.is_set() else self._lost_reason
            self._teardown()
            self._emit(ViciDisconnected(uri=self.uri, reason=reason))
            self._log.warning("vici_disconnected", uri=self.uri, reason=reason)
            if not self._closing.is_set():
                await self._sleep(next(delays))

    async def close(self) -> None:
        """Stop reconnecting and drop the sessions (``run`` returns)."""
        self._closing.set()
        self._teardown()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    async def _wait_lost_or_closed(self) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({lost, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            closing.cancel()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._generation += 1
        gen = self._generation
        self._lost.clear()
        event_sock = await loop.run_in_executor(None, open_socket, self.uri, COMMAND_TIMEOUT)
        registered: asyncio.Future[list[str]] = loop.create_future()
        self._held = []
        reader = _EventReader(event_sock, EVENTS, loop, registered,
                              lambda name, msg: self._on_raw_event(gen, name, msg),
                              lambda reason: self._mark_lost(gen, reason))
        self._reader = reader
        reader.start()
        unknown = await asyncio.wait_for(registered, REGISTER_TIMEOUT)
        if unknown:
            self._log.warning("vici_events_unsupported", events=unknown)
        try:
            self._cmd_sock = await loop.run_in_executor(self._executor, open_socket, self.uri,
                                                        COMMAND_TIMEOUT)
        except RuntimeError as exc:  # executor shut down by close()
            raise ViciUnavailable(str(exc)) from None
        self._session = vici.Session(self._cmd_sock)
        version = decode(await self._run_blocking(lambda s: s.version()))
        daemon = f"{version.get('daemon', '')} {version.get('version', '')}".strip()
        self._emit(ViciConnected(uri=self.uri, daemon=daemon))
        self._log.info("vici_connected", uri=self.uri, daemon=daemon)
        if self._on_connect is not None:
            try:
                await self._on_connect(self)
            except ViciUnavailable:
                raise
            except ViciError as exc:
                self._log.error("vici_on_connect_failed", error=str(exc))
        await self.resync()
        self._ready.set()

    def _teardown(self) -> None:
        self._ready.clear()
        self._held = None
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._cmd_sock is not None:
            with contextlib.suppress(OSError):
                self._cmd_sock.shutdown(socket.SHUT_RDWR)
            self._cmd_sock.close()
            self._cmd_sock = None
        self._session = None

    def _mark_lost(self, gen: int, reason: str) -> None:
        if gen == self._generation and not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    # -- events ------------------------------------------------------------------------------

    def _emit(self, event: ViciEvent) -> None:
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_events += 1
            self._log.warning("vici_event_dropped", vici_event=type(event).__name__,
                              dropped=self.dropped_events)

    def _on_raw_event(self, gen: int, name: str, message: Msg) -> None:
        if gen != self._generation:
            return  # from a session already torn down
        if self._held is not None:
            self._held.append((name, message))
            return
        self._apply(name, message)

    def _changes(self, name: str, message: Msg) -> list[ViciEvent]:
        if name == "log":
            checked = path_checked(message)
            return [checked] if checked is not None else []
        try:
            return list(self.table.apply(name, message))
        except ValueError as exc:
            self._log.warning("vici_event_unparsed", vici_event=name, error=str(exc))
            return []

    def _apply(self, name: str, message: Msg) -> None:
        for change in self._changes(name, message):
            self._emit(change)

    async def _put(self, event: ViciEvent, patient: bool) -> bool:
        """Queue ``event``, waiting for the consumer when the queue is full (a resync's
        burst: one change per SA), ``RESYNC_PUT_WAIT`` seconds at most and only while
        ``patient``; else it is dropped and counted. False when the wait ran out (nobody
        is reading: the rest of this resync need not wait either)."""
        try:
            self.events.put_nowait(event)
            return True
        except asyncio.QueueFull:
            pass
        if patient:
            try:
                await asyncio.wait_for(self.events.put(event), RESYNC_PUT_WAIT)
                return True
            except TimeoutError:
                pass
        self._emit(event)  # still full: dropped and counted
        return False

    async def resync(self) -> None:
        """list-conns and list-sas, reconcile the table, then apply events held meanwhile.

        The changes go to the queue at the consumer's pace: a resync of N SAs makes
        2N of them, more than the queue holds on a gateway. Events arriving meanwhile
        stay held, and are applied in order after the snapshot's changes."""
        if self._held is None:
            self._held = []
        try:
            conns = await self.stream("list-conns", "list-conn")
            sas = await self.stream("list-sas", "list-sa")
            self.conns = {name: body for entry in conns for name, body in entry.items()}
            snapshot = parse_list_sas(sas, responder_only(self.conns))
            changes: list[ViciEvent] = list(self.table.reconcile(snapshot))
        except BaseException:
            held, self._held = self._held or [], None
            for name, message in held:
                self._apply(name, message)
            raise
        patient = True
        for change in changes:
            patient = await self._put(change, patient) and patient
        done = 0
        while self._held is not None and done < len(self._held):
            name, message = self._held[done]
            done += 1
            for change in self._changes(name, message):
                patient = await self._put(change, patient) and patient
        self._held = None

    # -- commands ----------------------------------------------------------------------------

    async def _run_blocking(self, fn: Callable[[Any], Any]) -> Any:
        session, gen = self._session, self._generation
        if session is None:
            raise ViciUnavailable(f"not connected to {self.uri}")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, session)
        except vici.exception.CommandException as exc:
            raise CommandFailed(str(exc)) from None
        except _SESSION_ERRORS as exc:
            self._mark_lost(gen, str(exc) or type(exc).__name__)
            raise ViciUnavailable(f"{self.uri}: {exc}") from None
        except RuntimeError as exc:  # executor shut down by close()
            raise ViciUnavailable(str(exc)) from None

    async def call(self, command: str, message: Mapping[str, Any] | None = None) -> Msg:
        """One VICI command; the decoded answer. ``CommandFailed`` when charon says no."""
        body = dict(message) if message is not None else None
        answer = await self._run_blocking(lambda s: s.request(command, body))
        result: Msg = decode(answer)
        return result

    async def stream(self, command: str, event: str,
                     message: Mapping[str, Any] | None = None) -> list[Msg]:
        """A streamed command (list-sas, list-conns, ...): the decoded stream entries."""
        body = dict(message) if message is not None else None
        entries = await self._run_blocking(
            lambda s: list(s.streamed_request(command, event, body)))
        return [decode(e) for e in entries]

    async def initiate(self, child: str, ike: str | None = None, *,
                       timeout_ms: int = 10000, init_limits: bool = True) -> list[str]:
        """Initiate a CHILD_SA (and its IKE_SA); charon's log lines. ``CommandFailed`` on failure.

        Runs on its own short-lived session so a slow initiation does not hold
        up other commands.
        """
        message: Msg = {"child": child, "timeout": str(timeout_ms),
                        "init-limits": "yes" if init_limits else "no"}
        if ike is not None:
            message["ike"] = ike
        wait = None if timeout_ms <= 0 else timeout_ms / 1000 + COMMAND_TIMEOUT

        def blocking() -> list[str]:
            sock = open_socket(self.uri, wait)
            try:
                logs = vici.Session(sock).initiate(message)
                return [decode(entry).get("msg", "") for entry in logs]
            finally:
                sock.close()

        try:
            return await asyncio.to_thread(blocking)
        except vici.exception.CommandException as exc:
            raise CommandFailed(f"initiate {child}: {exc}") from None
        except _SESSION_ERRORS as exc:
            raise ViciUnavailable(f"{self.uri}: {exc}") from None
