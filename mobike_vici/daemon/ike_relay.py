"""``mobike-vici run``: charon's request in flight on the path it is steered away from is
sent once more over the new path, by the controller.

charon runs one exchange at a time, and its MOBIKE update waits behind the exchange in
flight. A request sent into a path that died silently (a CHILD_SA or IKE_SA rekey, a
DPD, a delete) is answered only by its retransmission: at ``retransmit_timeout`` at the
earliest, and for any exchange but MOBIKE's own from the IKE_SA's old address again,
which the dead uplink still swallows (charon re-resolves only a MOBIKE message's source).
The IKE_SA then stays on the dead path until charon gives up on it.

So a packet socket watches IKE on port 4500 (the IKE header is in the clear): the last
request charon sent on each IKE_SA and whether its response came. When a move steers
charon onto a new path, that request, unanswered and sent elsewhere, goes out again over
the new path from charon's address and port there, unchanged: the peer answers a request
from wherever it came (its response to a retransmission from its cache), charon takes
the response on any of its addresses, finishes the exchange, and its MOBIKE update
follows at once. Until the move ends, every request charon sends on the path the move
leaves (the next one of that exchange, a delete after a rekey) is copied over the new
path too; what it sends on a path of its own choice (its MOBIKE update) is not.

A copy the peer had answered already costs it a cached response that charon ignores. A
copy of an UPDATE_SA_ADDRESSES charon sent on a path that died (a move's earlier target)
moves the peer onto the new path one exchange before charon, whose own update there
follows at once: the controller's route asks charon for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..eventlog import EventLog
from ..net.ike_wire import IkeDatagram, ike_filter, parse, udp_segment
from ..net.sock_filter import attach_filter
from ..types import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
RCVBUF = 1 << 20
READ_BATCH = 64
MAX_SAS = 1024  # IKE_SAs whose last request is remembered (the oldest goes first)
MAX_FRAGMENTS = 32  # datagrams kept of one request

Sender = Callable[[Path, bytes], None]
"""Sends a UDP payload from the path's local endpoint to its remote one."""


def needs_relay(request: IkeDatagram, target: Path) -> bool:
    """True when ``request`` did not go out on ``target`` (another address at either end)."""
    return (request.src, request.sport, request.dst, request.dport) != (
        target.local.addr, target.local.port, target.remote.addr, target.remote.port)


class RequestLedger:
    """The last request charon sent on each IKE_SA (every datagram of it: IKEv2
    fragments share its message ID), until its response comes. Pure.

    A copy of a request seen leaving after its response came (one of the copies a
    MOBIKE path check sends on every path, held back by neighbour resolution on an
    address just added) is settled already: the peer ignores it as old, so it must not
    wait here (soak: a state check judged such a copy unanswered and ended a live
    IKE_SA as ``peer_lost_state``)."""

    def __init__(self, limit: int = MAX_SAS) -> None:
        self._limit = limit
        self._last: OrderedDict[str, list[IkeDatagram]] = OrderedDict()
        self._answered: OrderedDict[str, int] = OrderedDict()
        """The highest message ID answered on each IKE_SA (charon's own requests)."""

    def sent(self, request: IkeDatagram) -> None:
        spi = request.ike_spi
        done = self._answered.get(spi)
        if done is not None and request.message_id <= done:
            return
        last = self._last.get(spi)
        if last is not None and last[0].message_id == request.message_id:
            if len(last) < MAX_FRAGMENTS and all(d.payload != request.payload for d in last):
                last.append(request)
        else:
            self._last[spi] = [request]
        self._last.move_to_end(spi)
        while len(self._last) > self._limit:
            self._last.popitem(last=False)

    def answered(self, response: IkeDatagram) -> None:
        spi = response.ike_spi
        self._answered[spi] = max(response.message_id, self._answered.get(spi, 0))
        self._answered.move_to_end(spi)
        while len(self._answered) > self._limit:
            self._answered.popitem(last=False)
        last = self._last.get(spi)
        if last is not None and last[0].message_id == response.message_id:
            del self._last[spi]

    def pending(self, ike_spi: str) -> list[IkeDatagram]:
        return list(self._last.get(ike_spi, ()))

    def forget(self, ike_spi: str) -> None:
        self._last.pop(ike_spi, None)
        self._answered.pop(ike_spi, None)


@dataclass(slots=True)
class _Move:
    conn: str
    target: Path
    left: Path  # the path the move leaves: only what charon sends there is copied
    relayed: set[tuple[int, bytes]]  # (message ID, datagram) on the target already


def sent_on(request: IkeDatagram, path: Path) -> bool:
    """True when ``request`` went out from ``path``'s local to its remote address."""
    return (request.src, request.dst) == (path.local.addr, path.remote.addr)


def _key(request: IkeDatagram) -> tuple[int, bytes]:
    return (request.message_id, request.payload)


class IkeRelay:
    """The packet socket, the ledger, and the moves under way. ``relay`` when a move's
    route is in place, ``stop`` when the move ends. Must be used from a running loop."""

    def __init__(self, log: EventLog, send: Sender | None = None) -> None:
        self.log = log
        self.ledger = RequestLedger()
        self.relayed = 0
        self._send: Sender = send if send is not None else send_from
        self._moves: dict[str, _Move] = {}  # by IKE_SA
        self._retired: set[str] = set()  # IKE_SAs an escalated move is replacing
        self._sock: socket.socket | None = None
        self._filter_buf: Any = None  # the kernel copies it; kept alive with the socket

    # -- the socket ---------------------------------------------------------------------

    def open(self) -> None:
        """Raises OSError when packet sockets are not allowed here."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._filter_buf = attach_filter(sock, ike_filter())
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # loop already closed
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(0xFFFF)
            except OSError:  # nothing more (BlockingIOError), or the socket went
                return
            if addr[0] == "lo":
                continue
            seen = parse(data)
            if seen is not None:
                self.on_datagram(seen, outgoing=addr[2] == PACKET_OUTGOING)

    # -- what the glue calls ------------------------------------------------------------

    def relay(self, conn: str, ike_spi: str, target: Path, left: Path) -> None:
        """A move of ``ike_spi`` from ``left`` onto ``target`` has its route: send
        charon's unanswered request sent on ``left`` there, and every later one it sends
        on ``left``, until ``stop(conn)``. What charon sends on a path of its own choice
        (its MOBIKE update where it found a way) is its own: a copy of that update from
        the target's address would move the peer there, and charon elsewhere."""
        if ike_spi in self._retired:
            return
        move = _Move(conn, target, left, set())
        self._moves[ike_spi] = move
        for request in self.ledger.pending(ike_spi):
            self._copy(move, request)

    def stop(self, conn: str) -> None:
        """The connection's move ended (landed, failed, taken over)."""
        for spi in [s for s, m in self._moves.items() if m.conn == conn]:
            del self._moves[spi]

    def retire(self, conn: str) -> None:
        """The move was escalated: charon replaces the IKE_SA (a reauthentication deletes
        it first, then sets its successor up from the old address: a delete answered
        through the relay would start that successor on the dead path). Its requests are
        left to charon from now on, in later moves too."""
        for spi in [s for s, m in self._moves.items() if m.conn == conn]:
            del self._moves[spi]
            self._retired.add(spi)

    def moving(self, ike_spi: str) -> bool:
        """True while a move of ``ike_spi`` is under way (its requests are relayed)."""
        return ike_spi in self._moves

    def forget(self, ike_spi: str) -> None:
        self._moves.pop(ike_spi, None)
        self._retired.discard(ike_spi)
        self.ledger.forget(ike_spi)

    # -- the decisions ------------------------------------------------------------------

    def on_datagram(self, seen: IkeDatagram, *, outgoing: bool) -> None:
        if outgoing and not seen.response:
            self.ledger.sent(seen)
            move = self._moves.get(seen.ike_spi)
            if move is None:
                return
            if not needs_relay(seen, move.target):
                move.relayed.add(_key(seen))  # charon sent it there itself: no copy
            elif sent_on(seen, move.left):
                self._copy(move, seen)
        elif not outgoing and seen.response:
            self.ledger.answered(seen)

    def _copy(self, move: _Move, request: IkeDatagram) -> None:
        target = move.target
        if not needs_relay(request, target) or not sent_on(request, move.left):
            return
        key = _key(request)
        if key in move.relayed:
            return  # charon's own retransmissions need no more copies than the first
        move.relayed.add(key)
        try:
            self._send(target, request.payload)
        except OSError as exc:
            self.log.emit("ike_relay_failed", conn=move.conn, ike_spi=request.ike_spi,
                          message_id=request.message_id, local=str(target.local),
                          remote=str(target.remote), error=str(exc))
            return
        self.relayed += 1
        self.log.emit("ike_request_relayed", conn=move.conn, ike_spi=request.ike_spi,
                      message_id=request.message_id, exchange=request.exchange_name,
                      local=str(target.local), remote=str(target.remote),
                      sent_from=f"{request.src}[{request.sport}]")


def send_from(target: Path, payload: bytes) -> None:
    """``payload`` in a UDP datagram from ``target.local`` to ``target.remote``, through a
    raw socket: charon holds the port, and a raw socket takes none of its packets."""
    local, remote = target.local, target.remote
    family = socket.AF_INET if local.addr.version == 4 else socket.AF_INET6
    segment = udp_segment(local.addr, remote.addr, local.port, remote.port, payload)
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP) as sock:
        sock.bind((str(local.addr), 0))
        sock.sendto(segment, (str(remote.addr), 0))
