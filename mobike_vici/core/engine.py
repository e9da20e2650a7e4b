"""The native IKEv2 engine: every IKE_SA of one daemon, behind one sans-I/O interface.

Model: aioquic's QuicConnection. The caller feeds datagrams and the clock in and
takes datagrams, one timer deadline and events out. No sockets, asyncio, clock
or OS randomness in here.

The engine demultiplexes by our SPI (and IKE_SA_INIT requests by (SPIi, remote)),
keeps the message-ID windows and retransmissions, and hands each exchange to
its module under ``exchanges/``: a task object when we initiate it, a
``respond_*`` function when the peer does.

Errors come in two tiers. Anything unauthenticated that does not
fit (garbage, unknown SPI, failed integrity, wrong message ID, unexpected
exchange) becomes a :class:`PacketDropped` event and changes nothing.
Authenticated but invalid requests are answered with an error notify and
reported as :class:`ExchangeFailed`.

Exceptions: ``receive_datagram``, ``handle_timer``, ``datagrams_to_send``,
``get_timer``, ``next_event`` and ``status`` raise nothing for any input (an
exception escaping them is a bug). ``initiate`` raises KeyError for an unknown
connection or child name and ValueError when no address to use is known;
``rekey_*``/``delete_*`` raise KeyError for an unknown SA.

MOBIKE (RFC 4555; ``mobike_paths.py`` on our side, ``exchanges/mobike.py`` the
exchange): ``set_local_addresses``, ``peer_addresses``, ``probe`` and ``move`` (the
last three raise KeyError for an unknown SA, ``probe`` ValueError for one not
established). Results come as events: ProbeResult, IkeSaMoved / MoveFailed,
PeerMoved / UpdateRejected, ChildSaUpdated, PeerAddressesUpdated, NatMappingChanged.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from ..config.model import ChildConfig, Config
from ..ikev2.constants import NATT_KEEPALIVE, ExchangeType, NotifyType, PayloadType
from ..ikev2.message import DecodeError, Header, Message, decode_header
from ..ikev2.payloads import find_notify
from ..types import Endpoint, IPAddress, Path
from .admission import Admission, receive_init
from .context import Context, initial_path
from .events import ChildSaDeleted, Event, ExchangeFailed, IkeSaDeleted, PacketDropped
from .exchanges import closing, redirect_follow
from .exchanges.base import DropPacket, ExchangeAborted, Outcome, Task, unsupported_critical
from .exchanges.create_child import ChildCreateTask, ChildRekeyTask
from .exchanges.handover import migrate_tasks
from .exchanges.ike_auth import IkeAuthTask
from .exchanges.ike_init import ZERO_SPI, IkeInitTask
from .exchanges.informational import DeleteChildTask, DeleteIkeTask
from .exchanges.mobike import check_mapping
from .exchanges.redirect import InitPolicy, RedirectTask, can_redirect, follow_resolved
from .exchanges.responder import answer_request
from .exchanges.scheduled import queue_due
from .fragments import REASSEMBLY_TIMEOUT, expire
from .ike_sa import CachedResponse, IkeSa, IkeState, PendingRequest
from .mobike_paths import PathMobility, peer_addresses, update_in_flight
from .nat import WireView
from .protection import (
    cut_fragments,
    encode,
    exchange_name,
    open_fragment,
    open_message,
    reassemble,
    screen_fragment,
)
from .settings import EngineSettings
from .state_check import StateCheck
from .status import ChildStatus, IkeStatus, status_of

RandomBytes = Callable[[int], bytes]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _settles(
        method: Callable[Concatenate[Engine, _P], _R]) -> Callable[Concatenate[Engine, _P], _R]:
    """A public call that may change SAs: the index follows what it touched, whatever
    way the call ends."""
    def settled(self: Engine, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._settle()
    functools.update_wrapper(settled, method)
    return settled

__all__ = ["ChildStatus", "Datagram", "Engine", "EngineSettings", "IkeStatus"]


@dataclass(frozen=True, slots=True)
class Datagram:
    """An IKE message (without the non-ESP marker) or a NAT-T keepalive to send on ``path``."""

    data: bytes
    path: Path
    keepalive: bool = False


class Engine:
    def __init__(
        self,
        config: Config,
        random_bytes: RandomBytes,
        source_address: Callable[[IPAddress], IPAddress | None],
        settings: EngineSettings | None = None,
    ) -> None:
        """``source_address(remote)`` is the route lookup the daemon does for us
        (the kernel's choice of source address toward ``remote``), used when a
        connection's local_addrs is %any."""
        self._settings = settings or EngineSettings()
        self._ctx = Context(config, self._settings, random_bytes, source_address)
        self._sas: dict[bytes, IkeSa] = {}
        """Every IKE_SA by the SPI we chose (SPIi as initiator, SPIr as responder)."""
        self._wire: WireView | None = None
        self._by_init: dict[tuple[bytes, Endpoint], IkeSa] = {}
        """Every responder SA by (SPIi, remote): IKE_SA_INIT retransmits get the cached answer."""
        self._admission = Admission(self._settings, self._ctx.cookies)
        self._ctx.sas = self._sas
        self._index = self._ctx.index
        self._outbox: list[Datagram] = []
        self._paths = PathMobility(self._ctx, self._settings, self._send_all, self._kick)
        self._state_check = StateCheck(self._ctx, self._settings, self._sas, self._register,
                                       self._kick, self._send_all)
        self._redirect_policy: InitPolicy | None = None

    # ------------------------------------------------------------------ API

    @_settles
    def initiate(self, conn: str, child: str | None, now: float, *,
                 eager: bool = False) -> None:
        """Start an IKE_SA for ``conn`` (and its CHILD_SA ``child``; the first one when None).
        ``eager``: the peer is known to be restarting; its IKE_SA_INIT is resent every
        ``eager_resend`` for ``eager_window`` before charon's schedule."""
        cfg = self._ctx.config.connection(conn)
        child_cfg: ChildConfig | None = None
        if child is not None:
            matches = [c for c in cfg.children if c.name == child]
            if not matches:
                raise KeyError(child)
            child_cfg = matches[0]
        elif cfg.children:
            child_cfg = cfg.children[0]
        if child_cfg is not None:
            # Like charon: an established IKE_SA of this connection carries the new
            # CHILD_SA (CREATE_CHILD_SA) instead of a second IKE_SA.
            for existing in self._sas.values():
                if existing.conn.name == cfg.name and existing.state == IkeState.ESTABLISHED:
                    existing.tasks.append(ChildCreateTask(child_cfg))
                    self._kick(existing, now)
                    return
        path = initial_path(self._ctx, cfg)
        sa = IkeSa(conn=cfg, initiator=True, spi_i=self._ctx.new_ike_spi(), spi_r=ZERO_SPI,
                   path=path, created=now, last_received=now, last_sent=now)
        self._register(sa)
        settings = self._settings
        sa.tasks.append(IkeInitTask(now + settings.eager_window if eager else None))
        sa.tasks.append(IkeAuthTask(child_cfg))
        self._kick(sa, now)

    @_settles
    def receive_datagram(self, data: bytes, path: Path, now: float) -> None:
        """Feed one IKE message (non-ESP marker already stripped) received on ``path``."""
        try:
            header = decode_header(data)
        except DecodeError as exc:
            self._drop(path, f"malformed header: {exc}")
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            self._init_request(header, data, path, now)
            return
        our_spi = header.spi_r if header.from_initiator else header.spi_i
        sa = self._sas.get(our_spi)
        if sa is None or sa.initiator == header.from_initiator:
            self._drop(path, "unknown SPI", header)
            return
        self._ctx.touch(sa)
        new_init_response = (sa.initiator and header.is_response
                             and header.exchange == ExchangeType.IKE_SA_INIT
                             and sa.spi_r == ZERO_SPI)
        if not new_init_response and (header.spi_i, header.spi_r) != (sa.spi_i, sa.spi_r):
            self._drop(path, "SPI pair mismatch", header)
            return
        if header.next_payload == PayloadType.SKF:
            self._on_fragment(sa, header, data, path, now)
            return
        if header.is_response:
            self._on_response(sa, header, data, path, now)
        else:
            self._on_request(sa, header, data, path, now)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        return self._index.next_deadline()

    @_settles
    def handle_timer(self, now: float) -> None:
        # Only the SAs that are due, in the table's order; for every other SA the
        # timer work would find nothing to do.
        due = self._index.due(now)
        for sa in due:  # re-filed afterwards, even if one of them raised
            self._ctx.touch(sa)
        for sa in due:
            if self._sas.get(sa.our_spi) is sa:  # not removed by an earlier one here
                self._sa_timer(sa, now)

    def next_event(self) -> Event | None:
        return self._ctx.events.popleft() if self._ctx.events else None

    @_settles
    def rekey_child(self, unique_id: int, now: float) -> None:
        sa = self._by_child(unique_id)
        sa.tasks.append(ChildRekeyTask(unique_id))
        self._kick(sa, now)

    @_settles
    def delete_ike(self, ike_spi: str, now: float) -> None:
        sa = self._by_name(ike_spi)
        if closing.queue_delete(self._ctx, sa, now, self._send_all):
            self._kick(sa, now)
        else:  # not established: nothing to tell the peer
            self._destroy(sa, "deleted_locally", now)

    @_settles
    def delete_child(self, unique_id: int, now: float) -> None:
        sa = self._by_child(unique_id)
        sa.tasks.append(DeleteChildTask([unique_id]))
        self._kick(sa, now)

    # ------------------------------------------------------------------ redirect API

    def set_redirect_policy(self, policy: InitPolicy | None) -> None:
        """As gateway, who gets a REDIRECT in IKE_SA_INIT (RFC 5685; ``exchanges/redirect``)."""
        self._redirect_policy = policy

    @_settles
    def redirect(self, ike_spi: str, gateway: IPAddress | str, now: float) -> None:
        """As gateway, send the client of ``ike_spi`` to ``gateway`` (address or FQDN).
        KeyError for an unknown SA, ValueError when it cannot be redirected."""
        sa = self._by_name(ike_spi)
        why = can_redirect(sa)
        if why is not None:
            raise ValueError(f"IKE_SA {ike_spi}: {why}")
        sa.tasks.append(RedirectTask(gateway))
        self._kick(sa, now)

    @_settles
    def redirect_resolved(self, ike_spi: str, name: str, addresses: Sequence[IPAddress],
                          now: float) -> None:
        """As client, the addresses of a REDIRECT's FQDN (none: refused); KeyError: SA gone."""
        sa = self._by_name(ike_spi)
        if follow_resolved(self._ctx, sa, name, addresses):
            self._kick(sa, now)

    # ------------------------------------------------------------------ MOBIKE API
    # (mobike_paths.py: how probes share the message-ID window)

    def set_wire_view(self, view: WireView | None) -> None:
        """How the transport carries our paths (IKE over TCP): NAT detection hashes that."""
        self._wire = view

    def set_wall_clock(self, unix_minus_now: float) -> None:
        """Where ``now`` sits in UNIX time, for certificate validity (the core has no clock)."""
        self._ctx.wall_offset = unix_minus_now

    @_settles
    def set_local_addresses(self, addrs: Sequence[IPAddress], now: float) -> None:
        """Our usable addresses changed: tell the peer of every MOBIKE IKE_SA.

        The list sent is filtered by ``mobike { announce }``. A responder whose
        current address is gone sends it from one of the new addresses (RFC 4555
        §3.6), so the initiator learns where to move.
        """
        self._paths.set_local_addresses(list(self._sas.values()), addrs, now)

    def peer_addresses(self, ike_spi: str) -> tuple[IPAddress, ...]:
        """The peer's current address, then the additional ones it announced."""
        return peer_addresses(self._by_name(ike_spi))

    @_settles
    def probe(self, ike_spi: str, path: Path, now: float) -> int:
        """Test ``path`` with a protected request; the answer is a ProbeResult event.

        ok when a response arrives on ``path``, not ok ``probe_timeout`` later. A
        failed probe changes nothing else (the IKE_SA lives on). Raises KeyError
        for an unknown SA and ValueError when it is not established.
        """
        return self._paths.probe(self._by_name(ike_spi), path, now)

    @_settles
    def move(self, ike_spi: str, path: Path, now: float, timeout: float | None = None) -> None:
        """As original initiator, move the IKE_SA and all its CHILD_SAs to ``path``
        (UPDATE_SA_ADDRESSES). Outcome: IkeSaMoved + ChildSaUpdated, or MoveFailed.
        ``timeout`` bounds this attempt (at most move_timeout; resent a few times within)."""
        self._paths.move(self._by_name(ike_spi), path, now, timeout)

    def status(self) -> list[IkeStatus]:
        return status_of(sa for sa in self._sas.values() if sa.check_of is None)

    # ------------------------------------------------------------------ the index

    def _register(self, sa: IkeSa) -> None:
        sa.wire = self._wire
        self._sas[sa.our_spi] = sa
        self._index.add(sa)

    def _settle(self) -> None:
        """Re-file every SA the call touched, and their successors (exchanges change
        the CHILD_SAs and tasks they hand on)."""
        touched = self._ctx.touched
        while touched:
            _, sa = touched.popitem()
            for one in sa.lineage():
                self._index.refile(one)

    # ------------------------------------------------------------------ lookups

    def _by_name(self, ike_spi: str) -> IkeSa:
        return self._ctx.sa_named(ike_spi)

    def _by_child(self, unique_id: int) -> IkeSa:
        sa = self._index.holder_of_child(unique_id)
        if sa is None:
            raise KeyError(unique_id)
        self._ctx.touch(sa)
        return sa

    # ------------------------------------------------------------------ output

    def _send(self, data: bytes, path: Path, sa: IkeSa | None, now: float) -> None:
        self._outbox.append(Datagram(data, path))
        if sa is not None:
            sa.last_sent = now
            self._ctx.touch(sa)

    def _send_all(self, datagrams: Sequence[bytes], path: Path, sa: IkeSa,
                  now: float) -> None:
        """A message: one datagram, or all its fragments (every resend sends them all,
        RFC 7383 §2.6.1)."""
        for data in datagrams:
            self._send(data, path, sa, now)

    def _drop(self, path: Path, reason: str, header: Header | None = None,
              authenticated: bool = False) -> None:
        spi = f"{header.spi_i.hex()}_{header.spi_r.hex()}" if header is not None else None
        self._ctx.emit(PacketDropped(path=path, reason=reason, ike_spi=spi,
                                     authenticated=authenticated))

    # ------------------------------------------------------------------ our requests

    def _kick(self, sa: IkeSa, now: float) -> None:
        """Send the next queued request when none is outstanding (window size 1)."""
        self._ctx.touch(sa)
        if (closed_too := closing.step(self._ctx, sa, now, self._send_all)) is not None:
            self._kick(closed_too, now)
        if sa.redirect.target is not None or sa.redirect.replaces is not None:
            for other in redirect_follow.step(self._ctx, sa, now):
                self._kick(other, now)
            self._adopt(now)
        if sa.state == IkeState.REKEYED and sa.successor is not None:
            # CHILD_SA work queued here belongs to the IKE_SA that took the CHILD_SAs.
            moved = [t for t in sa.tasks if not isinstance(t, DeleteIkeTask)]
            if moved:
                migrate_tasks(sa, moved)
                sa.tasks = deque(t for t in sa.tasks if isinstance(t, DeleteIkeTask))
                self._kick(sa.lineage()[-1], now)
        while sa.pending is None and sa.tasks and sa.state != IkeState.DELETED:
            task = sa.tasks.popleft()
            if self._send_request(sa, task, now):
                return

    def _send_request(self, sa: IkeSa, task: Task, now: float) -> bool:
        """Build and send ``task``'s request; False when there was nothing to send."""
        try:
            payloads = task.build(self._ctx, sa, now)
        except ExchangeAborted as exc:
            self._failed(sa, task.exchange, exc, now)
            return False
        except ValueError as exc:
            # A config value the wire cannot carry (e.g. an identity we cannot encode).
            self._failed(sa, task.exchange, ExchangeAborted(f"cannot build request: {exc}"),
                         now)
            return False
        if task.exchange == ExchangeType.INFORMATIONAL and not payloads and not task.liveness:
            return False  # e.g. deleting CHILD_SAs that are gone already
        mid = sa.next_request_id
        data = encode(self._ctx, sa, task.exchange, mid, False, payloads)
        if task.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_request = data
        wait = (self._paths.update_wait(task) or task.eager_wait(self._settings.eager_resend, now)
                or self._settings.retransmit.wait(0))
        path = task.path or sa.path
        fragments = cut_fragments(self._ctx, sa, task.exchange, mid, False, payloads, data, path)
        sa.pending = PendingRequest(mid, task.exchange, data, path, task, now, now + wait,
                                    fragments=fragments)
        if sa.unanswered_since is None or sa.unanswered_since <= sa.last_received:
            # The peer spoke since the last request we counted from: count from this one.
            sa.unanswered_since = now
            self._state_check.arm(sa, now)  # dead_after and the state check count from now
        self._send_all(sa.pending.datagrams, path, sa, now)
        self._paths.ride(sa, now)
        return True

    def _on_response(self, sa: IkeSa, header: Header, data: bytes, path: Path,
                     now: float, assembled: Message | None = None) -> None:
        """The peer's response; ``assembled``: already reassembled from fragments."""
        if sa.check_of is not None:  # a state check's IKE_SA_INIT: any answer will do
            self._state_check.answered(sa, header, now)
            return
        pending = sa.pending
        if (pending is None or header.message_id != pending.message_id
                or header.exchange != pending.exchange):
            if (self._paths.rides(sa, header.message_id, path)
                    and self._open(sa, header, data, path) is not None):
                # A copy answered after another path had answered the request: the
                # answer still proves this path (authenticated by the SA's keys).
                self._paths.answered(sa, header.message_id, path, now)
                sa.last_received = now
                return
            self._drop(path, "unexpected response", header)
            return
        msg = assembled if assembled is not None else self._open(sa, header, data, path)
        if msg is None:
            return
        if unsupported_critical(msg.payloads) is not None:
            self._drop(path, "unsupported critical payload in response", header)
            return
        task = pending.task
        if header.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_response = data
        self._paths.answered(sa, header.message_id, path, now)
        if task.liveness and path == pending.path:
            # Only the answer to the request on its own path: a copy sent on another
            # path (a probe riding it) may get the peer's cached answer to the first
            # copy it saw, whose NAT detection describes that other path.
            check_mapping(self._ctx, sa, msg, path)
        try:
            outcome = task.process(self._ctx, sa, msg, now)
        except DropPacket as exc:
            self._drop(path, exc.reason, header)
            return
        except ExchangeAborted as exc:
            sa.pending = None
            sa.next_request_id += 1
            sa.last_received = now
            self._failed(sa, task.exchange, exc, now)
            return
        sa.last_received = now
        sa.pending = None
        self._adopt(now)
        if outcome == Outcome.RETRY:
            # Same message ID (0): the peer asked for a COOKIE or another DH group.
            self._send_request(sa, task, now)
            return
        sa.next_request_id += 1
        successors = sa.lineage()[1:]
        if sa.state == IkeState.DELETED:
            self._destroy(sa, task.reason, now)
        else:
            self._kick(sa, now)
            self._paths.ride(sa, now)
        for other in successors:
            self._kick(other, now)

    def _failed(self, sa: IkeSa, exchange: ExchangeType, exc: ExchangeAborted,
                now: float) -> None:
        self._ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str,
                                      exchange=exchange.name, reason=exc.reason))
        if exc.keep_sa and sa.state in (IkeState.ESTABLISHED, IkeState.REKEYING,
                                        IkeState.REKEYED):
            self._kick(sa, now)
        else:
            # Event reasons are snake_case; a notify name becomes e.g. no_proposal_chosen.
            reason = exc.reason.lower() if exc.reason.isupper() else exc.reason
            self._destroy(sa, reason, now)

    # ------------------------------------------------------------------ peer requests

    def _open(self, sa: IkeSa, header: Header, data: bytes, path: Path) -> Message | None:
        """Decode and, past IKE_SA_INIT, decrypt; None (and packet_dropped) on failure."""
        opened = open_message(sa, header, data)
        if isinstance(opened, str):
            self._drop(path, opened, header)
            return None
        return opened

    def _on_fragment(self, sa: IkeSa, header: Header, data: bytes, path: Path,
                     now: float) -> None:
        """One RFC 7383 fragment: checked on its own, then kept until its message is whole."""
        response = header.is_response
        cached = sa.cached
        retransmit = not response and cached is not None and header.message_id == cached.message_id
        why = screen_fragment(sa, header, retransmit)
        if why is not None:
            self._drop(path, why, header)
            return
        fragment = open_fragment(sa, data)
        if isinstance(fragment, str):
            self._drop(path, fragment, header)
            return
        if retransmit:
            assert cached is not None
            # §2.6.1: only fragment 1 of a retransmitted request makes us resend the
            # response, else each fragment would send all of ours again.
            if fragment.number == 1:
                self._send_all(cached.datagrams, path, sa, now)
            return
        done = reassemble(self._ctx, sa, header, fragment, path, now)
        if isinstance(done, str):
            self._drop(path, done, header, authenticated=True)
            return
        if done is None:
            return
        whole, msg = done
        if response:
            self._on_response(sa, whole, data, path, now, msg)
        else:
            self._on_request(sa, whole, data, path, now, msg)

    def _on_request(self, sa: IkeSa, header: Header, data: bytes, path: Path,
                    now: float, assembled: Message | None = None) -> None:
        """The peer's request; ``assembled``: already reassembled from fragments (its
        window and exchange checked, ``data`` its last fragment)."""
        mid = header.message_id
        cached = sa.cached
        if cached is not None and mid == cached.message_id:
            if data == cached.request:
                # A retransmission: the same answer again, never processed twice.
                self._paths.retransmitted(sa, header.exchange, cached, path, now)
                self._send_all(cached.datagrams, path, sa, now)
            else:
                self._drop(path, "retransmission differs from the original request", header)
            return
        if mid != sa.peer_next_id:
            if mid < sa.peer_next_id and header.exchange == ExchangeType.INFORMATIONAL:
                self._stale_request(sa, header, data, path)
                return
            self._drop(path, f"message ID {mid} outside the window", header)
            return
        exchange = header.exchange
        if not isinstance(exchange, ExchangeType):
            self._drop(path, f"unknown exchange {exchange}", header)
            return
        if exchange not in sa.peer_may_start():
            self._drop(path, f"unexpected {exchange_name(exchange)} request", header)
            return
        msg = assembled if assembled is not None else self._open(sa, header, data, path)
        if msg is None:
            return
        # Authenticated from here on.
        sa.last_received = now
        if path != sa.path:
            self._paths.follow_peer(sa, exchange, path, now)
        path_before = sa.path
        answer = answer_request(self._ctx, sa, exchange, msg, path, mid, now)
        reply = answer.payloads
        self._adopt(now)
        response = encode(self._ctx, sa, exchange, mid, True, reply)
        update = find_notify(msg.payloads, NotifyType.UPDATE_SA_ADDRESSES) is not None
        fragments = cut_fragments(self._ctx, sa, exchange, mid, True, reply, response, path)
        sa.cached = CachedResponse(mid, data, response, path, update,
                                   response_fragments=fragments)
        sa.peer_next_id = mid + 1
        self._send_all(sa.cached.datagrams, path, sa, now)
        self._paths.resend_after_peer_moved(sa, path_before, now)
        if sa.state != IkeState.CONNECTING:
            self._admission.forget(sa)
        if sa.initial_contact and sa.state == IkeState.ESTABLISHED:
            sa.initial_contact = False
            self._initial_contact(sa, now)
        if answer.destroy is not None:
            self._destroy(sa, answer.destroy, now)
        elif sa.state == IkeState.DELETED:
            reason = sa.delete_reason or ("rekeyed" if sa.rekeyed else "deleted_by_peer")
            self._destroy(sa, reason, now)
        else:
            self._kick(sa, now)
        for other in sa.lineage()[1:]:
            self._kick(other, now)

    def _stale_request(self, sa: IkeSa, header: Header, data: bytes, path: Path) -> None:
        """An authentic request older than the window: dropped, unless it is an old
        UPDATE_SA_ADDRESSES (reported, never followed: RFC 4555 §3.5)."""
        msg = self._open(sa, header, data, path)
        if msg is not None and not self._paths.stale_update(sa, msg, path):
            self._drop(path, f"message ID {header.message_id} outside the window", header,
                       authenticated=True)

    def _adopt(self, now: float) -> None:
        """Register IKE_SAs created by a rekey (CREATE_CHILD_SA) and start their tasks."""
        while self._ctx.new_sas:
            new = self._ctx.new_sas.pop()
            self._register(new)
            self._kick(new, now)

    def _initial_contact(self, sa: IkeSa, now: float) -> None:
        """Drop (silently: the peer lost them) older SAs with the same identities."""
        for other in self._ctx.older_twins(sa):
            self._destroy(other, "initial_contact", now)

    def _init_request(self, header: Header, data: bytes, path: Path, now: float) -> None:
        out = receive_init(self._ctx, self._admission, self._by_init, header, data, path, now,
                           redirect_policy=self._redirect_policy, ike_sas=len(self._sas))
        if out.new and out.sa is not None:
            self._register(out.sa)
        if out.response is not None:
            self._send(out.response, path, out.sa, now)
        if out.drop is not None:
            self._drop(path, out.drop, header)

    # ------------------------------------------------------------------ timers

    def _sa_timer(self, sa: IkeSa, now: float) -> None:
        self._paths.probe_timer(sa, now)
        expire(sa.reassembly, now, REASSEMBLY_TIMEOUT)
        if (dead := self._state_check.verdict(sa, now)) is not None:
            self._destroy(sa, dead, now)  # dead_after, peer_lost_state
            return
        pending = sa.pending
        settings = self._settings
        if (pending is not None and now >= pending.deadline
                and (update := update_in_flight(pending.task)) is not None):
            self._paths.move_timer(sa, pending, update, now)
        elif pending is not None and now >= pending.deadline and (
                eager := pending.task.eager_wait(settings.eager_resend, now)):
            # Not counted as a retransmission: charon's schedule starts after the window.
            pending.deadline = now + eager
            self._send(pending.data, pending.path, sa, now)
        elif pending is not None and now >= pending.deadline:
            if pending.retransmitted >= settings.retransmit.tries:
                self._destroy(sa, pending.task.exhausted(), now)
                return
            pending.retransmitted += 1
            pending.deadline = now + settings.retransmit.wait(pending.retransmitted)
            if pending.task.tests_path:
                # A probe's own path had probe_timeout; the request lives on the SA's.
                pending.path = sa.path
            self._send_all(pending.datagrams, pending.path, sa, now)
        self._paths.ride(sa, now)
        if sa.state == IkeState.CONNECTING:
            if not sa.initiator and now >= sa.created + settings.half_open_timeout:
                self._destroy(sa, "half_open_timeout", now)
            return
        if sa.retire_at is not None and now >= sa.retire_at:
            self._destroy(sa, "rekeyed", now)
            return
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            return
        queue_due(sa, now)
        self._kick(sa, now)
        if sa.nat_local and sa.path.natt and now >= sa.last_sent + settings.keepalive_interval:
            self._outbox.append(Datagram(NATT_KEEPALIVE, sa.path, keepalive=True))
            sa.last_sent = now

    # ------------------------------------------------------------------ teardown

    def _destroy(self, sa: IkeSa, reason: str, now: float) -> None:
        """Remove ``sa`` and its CHILD_SAs, releasing SPIs and virtual IP leases."""
        if self._state_check.dropped(sa):
            return  # a state check that gave up: never reported
        # CHILD_SA work still open here continues on the successor of a rekey.
        open_tasks = ([sa.pending.task] if sa.pending is not None else []) + list(sa.tasks)
        migrate_tasks(sa, open_tasks)
        redirect_follow.abandoned(self._ctx, sa)
        successor = sa.lineage()[-1]
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
            self._index.remove(sa)
        self._admission.forget(sa)
        if sa.init_key is not None and self._by_init.get(sa.init_key) is sa:
            del self._by_init[sa.init_key]
        self._ctx.release_ike_spi(sa.our_spi)
        for child in list(sa.children.values()):
            self._ctx.release_child_spi(child.spi_in)
            self._ctx.emit(ChildSaDeleted(
                conn=sa.conn.name, ike_spi=sa.spi_str, child=child.name,
                unique_id=child.unique_id, spi_in=child.spi_in_int,
                spi_out=child.spi_out_int, reason=reason,
            ))
        sa.children.clear()
        for pool_name, address in sa.leases:
            pool = self._ctx.pools.get(pool_name)
            if pool is not None:
                pool.release(sa.remote_id, address)
        sa.leases = ()
        sa.pending = None
        sa.tasks.clear()
        sa.set_state(IkeState.DELETED)
        self._ctx.emit(IkeSaDeleted(conn=sa.conn.name, ike_spi=sa.spi_str, path=sa.path,
                                    reason=reason))
        if successor is not sa and self._sas.get(successor.our_spi) is successor:
            self._kick(successor, now)
