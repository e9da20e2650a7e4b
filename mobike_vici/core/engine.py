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

MOBIKE (RFC 4555, ``exchanges/mobike.py``): ``set_local_addresses``,
``peer_addresses``, ``probe`` and ``move`` (see each; ``peer_addresses``, ``probe``
and ``move`` raise KeyError for an unknown SA, ``probe`` ValueError for one not
established). Results come as events: ProbeResult, IkeSaMoved / MoveFailed,
PeerMoved / UpdateRejected, ChildSaUpdated (one per CHILD_SA that moved),
PeerAddressesUpdated and NatMappingChanged.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from ..config.model import ChildConfig, Config, ConnectionConfig, Unique
from ..ikev2.constants import (
    NATT_KEEPALIVE,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    notify_is_error,
)
from ..ikev2.crypto import IntegrityError
from ..ikev2.message import (
    DecodeError,
    Fragment,
    Header,
    Message,
    decode_header,
    decode_message,
    decrypt_fragment,
    decrypt_message,
    encode_encrypted,
    encode_fragments,
    encode_message,
    fragment_capacity,
    join_fragments,
    transport_overhead,
)
from ..ikev2.payloads import (
    Encrypted,
    EncryptedFragment,
    Notify,
    Payload,
    encode_payloads,
    find_notify,
)
from ..types import Endpoint, IPAddress, Path
from .admission import Admission, DemandCookie, Refuse
from .child_sa import ChildState
from .context import Context, candidates
from .errors import ProtocolError
from .events import (
    ChildSaDeleted,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    MessageFragmented,
    MoveFailed,
    PacketDropped,
    ProbeResult,
    UpdateRejected,
)
from .exchanges import redirect_follow
from .exchanges.base import (
    DropPacket,
    ExchangeAborted,
    Outcome,
    Task,
    notify_name,
    unsupported_critical,
)
from .exchanges.create_child import (
    ChildCreateTask,
    ChildRekeyTask,
    IkeRekeyTask,
    respond_create_child,
)
from .exchanges.handover import migrate_tasks
from .exchanges.ike_auth import AuthFailed, IkeAuthTask, respond_auth
from .exchanges.ike_init import ZERO_SPI, IkeInitTask, init_scan, respond_init
from .exchanges.informational import (
    DeleteChildTask,
    DeleteIkeTask,
    LivenessTask,
    respond_informational,
)
from .exchanges.mobike import (
    AddressListTask,
    MoveTask,
    ProbeTask,
    RoutabilityTask,
    announced,
    check_mapping,
    moved,
    redirect_children,
    respond_mobike,
)
from .exchanges.redirect import (
    InitPolicy,
    RedirectTask,
    can_redirect,
    init_redirect,
    respond_redirect,
)
from .fragments import REASSEMBLY_TIMEOUT, add_fragment, expire
from .ike_sa import CachedResponse, IkeSa, IkeState, PendingRequest, Probe
from .nat import WireView
from .settings import EngineSettings
from .ts import no_service_names, ts_to_str

RandomBytes = Callable[[int], bytes]

MAX_PROBES = 64
"""Probes waiting per IKE_SA; beyond it the oldest is reported failed."""
MAX_RIDES = 3
"""Requests one probe is copied onto: its first, and two more for a copy the peer
dropped (it was still processing the first) or saw after our next request."""

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


@dataclass(frozen=True, slots=True)
class ChildStatus:
    name: str
    unique_id: int
    state: str
    spi_in: int
    spi_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    proposal: str


@dataclass(frozen=True, slots=True)
class IkeStatus:
    conn: str
    ike_spi: str
    state: str
    initiator: bool
    """RFC 4555's initiator (``IkeSa.mobike_initiator``), as charon's list-sas says."""
    path: Path
    local_id: str
    remote_id: str
    proposal: str
    virtual_ips: tuple[str, ...]
    children: tuple[ChildStatus, ...]


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
        self._next_probe_id = 1
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
        path = self._initial_path(cfg)
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
    def rekey_ike(self, ike_spi: str, now: float) -> None:
        sa = self._by_name(ike_spi)
        if sa.state == IkeState.ESTABLISHED:
            sa.tasks.append(IkeRekeyTask())
            self._kick(sa, now)

    @_settles
    def rekey_child(self, unique_id: int, now: float) -> None:
        sa = self._by_child(unique_id)
        sa.tasks.append(ChildRekeyTask(unique_id))
        self._kick(sa, now)

    @_settles
    def delete_ike(self, ike_spi: str, now: float) -> None:
        sa = self._by_name(ike_spi)
        if sa.state != IkeState.ESTABLISHED and sa.state != IkeState.REKEYING:
            self._destroy(sa, "deleted_locally", now)
            return
        sa.tasks.clear()
        sa.tasks.append(DeleteIkeTask())
        self._kick(sa, now)

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
    def redirect(self, ike_spi: str, gateway: IPAddress, now: float) -> None:
        """As gateway, send the client of ``ike_spi`` to ``gateway`` (INFORMATIONAL
        REDIRECT). KeyError for an unknown SA, ValueError when it cannot be redirected."""
        sa = self._by_name(ike_spi)
        why = can_redirect(sa)
        if why is not None:
            raise ValueError(f"IKE_SA {ike_spi}: {why}")
        sa.tasks.append(RedirectTask(gateway))
        self._kick(sa, now)

    # ------------------------------------------------------------------ MOBIKE API
    #
    # Message IDs: charon keeps a window of 1, so every request of ours (probes,
    # updates, DPD, rekeys) shares one slot per IKE_SA. A probe rides whatever request
    # is outstanding: that very request (same bytes, same message ID) is resent on the
    # probed path, which RFC 4555 §3.5 allows; the peer answers a copy from its
    # response cache on that path. A copy that reaches the peer after it has moved on
    # to our next request is ignored there ("expected N+1"), and one that arrives
    # while the first copy is being processed is dropped as a duplicate; so a probe
    # not yet answered rides every request that follows, and a response on its path
    # to any of its copies proves the path, also one that comes after the request was
    # answered elsewhere (RFC 7296 §2.3: the window, not the path, orders requests).
    # With nothing outstanding a waiting probe starts a request of its own. Only an
    # update in flight is never copied (the peer would move there): probes wait for
    # it; a spent one (timed out or superseded) may be copied, since whichever path
    # answers it works, and moving resends the outstanding request on the new path.

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
        self._ctx.local_addresses = tuple(dict.fromkeys(addrs))
        policy = self._ctx.config.mobike.policy
        for sa in list(self._sas.values()):
            if not sa.mobike or sa.state != IkeState.ESTABLISHED:
                continue
            local = sa.path.local.addr
            path: Path | None = None
            if local not in self._ctx.local_addresses:
                if sa.mobike_initiator:
                    continue  # the controller moves us; the update carries the news
                path = self._responder_path(sa)
                if path is None:
                    continue
                local = path.local.addr
            listed = announced(policy, self._ctx.local_addresses, local)
            if path is None and listed == sa.announced:
                continue
            sa.tasks = deque(t for t in sa.tasks if not isinstance(t, AddressListTask))
            sa.tasks.append(AddressListTask(listed, path))
            self._kick(sa, now)

    def peer_addresses(self, ike_spi: str) -> tuple[IPAddress, ...]:
        """The peer's current address, then the additional ones it announced."""
        sa = self._by_name(ike_spi)
        return tuple(dict.fromkeys((sa.path.remote.addr, *sa.peer_addrs)))

    @_settles
    def probe(self, ike_spi: str, path: Path, now: float) -> int:
        """Test ``path`` with a protected request; the answer is a ProbeResult event.

        ok when a response arrives on ``path``, not ok ``probe_timeout`` later. A
        failed probe changes nothing else (the IKE_SA lives on). Raises KeyError
        for an unknown SA and ValueError when it is not established.
        """
        sa = self._by_name(ike_spi)
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            raise ValueError(f"IKE_SA {ike_spi} is not established")
        probe_id = self._next_probe_id
        self._next_probe_id += 1
        probe = Probe(probe_id, path, now, now + self._settings.probe_timeout)
        sa.probes.append(probe)
        if len(sa.probes) > MAX_PROBES:
            self._probe_done(sa, sa.probes[0], None, now=now)
        self._ride(sa, now)
        if not probe.message_ids and sa.pending is None and probe in sa.probes:
            self._probe_done(sa, probe, None, now=now)  # nothing could be sent
        return probe_id

    @_settles
    def move(self, ike_spi: str, path: Path, now: float, timeout: float | None = None) -> None:
        """As original initiator, move the IKE_SA and all its CHILD_SAs to ``path``
        (UPDATE_SA_ADDRESSES). Outcome: IkeSaMoved + ChildSaUpdated, or MoveFailed.
        ``timeout`` bounds this attempt (at most move_timeout; resent a few times within)."""
        sa = self._by_name(ike_spi)
        reason = ("not_mobike" if not sa.mobike else "not_initiator"
                  if not sa.mobike_initiator
                  else "not_established"
                  if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING) else None)
        if reason is not None:
            self._ctx.emit(MoveFailed(conn=sa.conn.name, ike_spi=sa.spi_str, path=path,
                                      reason=reason))
            return
        # §3.5: a newer decision replaces an update not yet answered.
        for task in sa.tasks:
            if isinstance(task, MoveTask):
                task.fail(self._ctx, sa, "superseded")
        sa.tasks = deque(t for t in sa.tasks if not isinstance(t, MoveTask))
        pending = sa.pending
        if pending is not None:
            if isinstance(pending.task, MoveTask):
                pending.task.fail(self._ctx, sa, "superseded")
            # Whatever is outstanding continues on the new path (§3.5).
            pending.path = path
            self._send_all(pending.datagrams, path, sa, now)
        limit = self._settings.move_timeout
        task = MoveTask(sa.path, path, now, min(timeout, limit) if timeout is not None else None)
        task.early_encap = redirect_children(self._ctx, sa, path)
        sa.tasks.appendleft(task)
        self._kick(sa, now)
        self._ride(sa, now)

    def _responder_path(self, sa: IkeSa) -> Path | None:
        """A path from one of our remaining addresses to one of the peer's."""
        peers = self.peer_addresses(sa.spi_str)
        for local in self._ctx.local_addresses:
            for remote in peers:
                if local.version == remote.version:
                    return Path(Endpoint(local, sa.path.local.port),
                                Endpoint(remote, sa.path.remote.port))
        return None

    def status(self) -> list[IkeStatus]:
        out: list[IkeStatus] = []
        for sa in self._sas.values():
            children = tuple(
                ChildStatus(
                    name=c.name, unique_id=c.unique_id, state=c.state.value,
                    spi_in=c.spi_in_int, spi_out=c.spi_out_int,
                    local_ts=tuple(ts_to_str(t, no_service_names) for t in c.local_ts),
                    remote_ts=tuple(ts_to_str(t, no_service_names) for t in c.remote_ts),
                    proposal=c.proposal,
                )
                for c in sa.children.values()
            )
            out.append(IkeStatus(
                conn=sa.conn.name, ike_spi=sa.spi_str, state=sa.state.value,
                initiator=sa.mobike_initiator, path=sa.path, local_id=sa.local_id,
                remote_id=sa.remote_id, proposal=sa.proposal,
                virtual_ips=tuple(str(v) for v in sa.virtual_ips), children=children,
            ))
        return out

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

    def _initial_path(self, conn: ConnectionConfig) -> Path:
        remote = _first_address(conn.remote_addrs)
        if remote is None:
            raise ValueError(f"connection {conn.name}: no remote address to initiate to")
        local = _first_address(conn.local_addrs) or self._ctx.source_address(remote)
        if local is None:
            raise ValueError(f"connection {conn.name}: no route to {remote}")
        return Path(Endpoint(local, conn.local_port), Endpoint(remote, conn.remote_port))

    def _by_name(self, ike_spi: str) -> IkeSa:
        # The name is "SPIi_SPIr" and the table is keyed by our SPI, one of the two:
        # two lookups instead of a walk over every SA on each call.
        spi_i, sep, spi_r = ike_spi.partition("_")
        if sep:
            for half in (spi_i, spi_r):
                try:
                    sa = self._sas.get(bytes.fromhex(half))
                except ValueError:
                    break
                if sa is not None and sa.spi_str == ike_spi:
                    self._ctx.touch(sa)
                    return sa
        for sa in self._sas.values():
            if sa.spi_str == ike_spi:
                self._ctx.touch(sa)
                return sa
        raise KeyError(ike_spi)

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

    def _encode(self, sa: IkeSa, exchange: ExchangeType, message_id: int, response: bool,
                payloads: list[Payload]) -> bytes:
        header = sa.header(exchange, message_id, response)
        if exchange == ExchangeType.IKE_SA_INIT:
            return encode_message(header, payloads)
        assert sa.cipher_out is not None
        iv = self._ctx.random_bytes(sa.cipher_out.iv_length)
        return encode_encrypted(header, payloads, sa.cipher_out, iv)

    def _fragment(self, sa: IkeSa, exchange: ExchangeType, message_id: int, response: bool,
                  payloads: list[Payload], data: bytes, path: Path) -> tuple[bytes, ...]:
        """``data`` cut into RFC 7383 fragments when it is too large for fragment_size
        on ``path`` and fragmentation was negotiated (never IKE_SA_INIT, §2.5); else ()."""
        if exchange == ExchangeType.IKE_SA_INIT or not sa.fragmentation:
            return ()
        version = path.remote.addr.version
        limit = self._settings.fragment_limit(version)
        if len(data) + transport_overhead(version, path.natt) <= limit:
            return ()
        assert sa.cipher_out is not None
        capacity = fragment_capacity(limit, version, path.natt, sa.cipher_out)
        try:
            fragments = tuple(encode_fragments(sa.header(exchange, message_id, response),
                                               payloads, sa.cipher_out,
                                               self._ctx.random_bytes, capacity))
        except ValueError:
            return ()  # more than 65535 fragments: the whole message then, as it is
        length = len(encode_payloads(payloads))
        self._ctx.emit(MessageFragmented(conn=sa.conn.name, ike_spi=sa.spi_str,
                                         exchange=_exchange_name(exchange), sent=True,
                                         fragments=len(fragments), length=length, path=path))
        return fragments

    # ------------------------------------------------------------------ our requests

    def _kick(self, sa: IkeSa, now: float) -> None:
        """Send the next queued request when none is outstanding (window size 1)."""
        self._ctx.touch(sa)
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
        data = self._encode(sa, task.exchange, mid, False, payloads)
        if task.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_request = data
        wait = (self._move_resend(task) if isinstance(task, MoveTask)
                else self._eager_wait(task, now) or self._settings.retransmit.wait(0))
        path = task.path or sa.path
        fragments = self._fragment(sa, task.exchange, mid, False, payloads, data, path)
        sa.pending = PendingRequest(mid, task.exchange, data, path, task, now, now + wait,
                                    fragments=fragments)
        if sa.unanswered_since is None or sa.unanswered_since <= sa.last_received:
            # The peer spoke since the last request we counted from: count from this one.
            sa.unanswered_since = now
            dead_after = self._settings.dead_after
            sa.dead_at = now + dead_after if dead_after > 0 else None
        self._send_all(sa.pending.datagrams, path, sa, now)
        self._ride(sa, now)
        return True

    def _on_response(self, sa: IkeSa, header: Header, data: bytes, path: Path,
                     now: float, assembled: Message | None = None) -> None:
        """The peer's response; ``assembled``: already reassembled from fragments."""
        pending = sa.pending
        if (pending is None or header.message_id != pending.message_id
                or header.exchange != pending.exchange):
            if any(p.path == path and header.message_id in p.message_ids
                   for p in sa.probes) and self._open(sa, header, data, path) is not None:
                # A copy answered after another path had answered the request: the
                # answer still proves this path (authenticated by the SA's keys).
                self._probes_answered(sa, header.message_id, path, now)
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
        self._probes_answered(sa, header.message_id, path, now)
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
            self._ride(sa, now)
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
        try:
            msg = decode_message(data)
            if header.exchange == ExchangeType.IKE_SA_INIT:
                if any(isinstance(p, Encrypted) for p in msg.payloads):
                    raise DecodeError("SK payload in IKE_SA_INIT")
                return msg
            if sa.cipher_in is None:
                raise DecodeError("no keys yet")
            if not msg.payloads or not isinstance(msg.payloads[-1], Encrypted):
                raise DecodeError("unprotected message")
            return decrypt_message(data, msg, sa.cipher_in)
        except IntegrityError:
            self._drop(path, "integrity check failed", header)
        except (DecodeError, ValueError) as exc:
            self._drop(path, f"malformed message: {exc}", header)
        return None

    def _open_fragment(self, sa: IkeSa, header: Header, data: bytes,
                       path: Path) -> Fragment | None:
        """Decode and check one fragment on its own; None (and packet_dropped) on failure."""
        try:
            if sa.cipher_in is None:
                raise DecodeError("no keys yet")
            return decrypt_fragment(data, decode_message(data), sa.cipher_in)
        except IntegrityError:
            self._drop(path, "integrity check failed", header)
        except (DecodeError, ValueError) as exc:
            self._drop(path, f"malformed fragment: {exc}", header)
        return None

    def _on_fragment(self, sa: IkeSa, header: Header, data: bytes, path: Path,
                     now: float) -> None:
        """One RFC 7383 fragment: checked on its own, then kept until its message is whole.

        The message ID and exchange are checked before any cryptography, so only
        fragments of the one message we expect in each direction cost a decryption.
        """
        mid = header.message_id
        exchange = header.exchange
        response = header.is_response
        cached = sa.cached
        if exchange == ExchangeType.IKE_SA_INIT:
            self._drop(path, "fragment in IKE_SA_INIT", header)
            return
        retransmit = not response and cached is not None and mid == cached.message_id
        if response:
            pending = sa.pending
            if pending is None or mid != pending.message_id or exchange != pending.exchange:
                self._drop(path, "unexpected response", header)
                return
        elif not retransmit:
            if mid != sa.peer_next_id:
                self._drop(path, f"message ID {mid} outside the window", header)
                return
            if not isinstance(exchange, ExchangeType) or exchange not in sa.peer_may_start():
                self._drop(path, f"unexpected {_exchange_name(exchange)} request", header)
                return
        fragment = self._open_fragment(sa, header, data, path)
        if fragment is None:
            return
        if retransmit:
            assert cached is not None
            # §2.6.1: only fragment 1 of a retransmitted request makes us resend the
            # response, else each fragment would send all of ours again.
            if fragment.number == 1:
                self._send_all(cached.datagrams, path, sa, now)
            return
        added = add_fragment(sa.reassembly, response, mid, int(exchange), fragment, now,
                             REASSEMBLY_TIMEOUT)
        if added.reason:
            self._drop(path, added.reason, header, authenticated=True)
            return
        if added.done is None:
            return
        whole = dataclasses.replace(header, next_payload=added.first_payload)
        try:
            msg = join_fragments(whole, added.first_payload, added.done)
        except DecodeError as exc:
            self._drop(path, f"malformed message: {exc}", header, authenticated=True)
            return
        self._ctx.emit(MessageFragmented(conn=sa.conn.name, ike_spi=sa.spi_str,
                                         exchange=_exchange_name(exchange), sent=False,
                                         fragments=len(added.done),
                                         length=sum(map(len, added.done)), path=path))
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
                if cached.update and path != cached.path:
                    # An update replayed from elsewhere: answered, never followed.
                    self._ctx.emit(UpdateRejected(conn=sa.conn.name, ike_spi=sa.spi_str,
                                                  path=path, reason="stale"))
                elif (header.exchange == ExchangeType.IKE_AUTH and path != sa.path
                      and _floats(sa, path)):
                    # The peer's own IKE_AUTH, after a copy raced from elsewhere was
                    # answered but not followed: now the float happens.
                    if sa.state == IkeState.CONNECTING:
                        sa.path = path
                    else:
                        moved(self._ctx, sa, sa.path, path, None, now)
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
            self._drop(path, f"unexpected {_exchange_name(exchange)} request", header)
            return
        msg = assembled if assembled is not None else self._open(sa, header, data, path)
        if msg is None:
            return
        # Authenticated from here on.
        sa.last_received = now
        if path != sa.path:
            self._follow_peer(sa, exchange, path, now)
        path_before = sa.path
        destroy_reason: str | None = None
        critical = unsupported_critical(msg.payloads)
        if critical is not None:
            reply: list[Payload] = [Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                                           bytes([critical.type & 0xFF]))]
            self._report(sa, exchange, "UNSUPPORTED_CRITICAL_PAYLOAD")
        else:
            try:
                reply = self._respond(sa, exchange, msg, now)
                if exchange == ExchangeType.INFORMATIONAL and sa.state != IkeState.DELETED:
                    reply += respond_mobike(self._ctx, sa, msg, path, mid, now)
                    respond_redirect(self._ctx, sa, msg, now)
                if exchange == ExchangeType.CREATE_CHILD_SA:
                    for p in reply:
                        if isinstance(p, Notify) and notify_is_error(int(p.type)):
                            self._report(sa, exchange, notify_name(p.type))
            except AuthFailed as exc:
                reply = [Notify(NotifyType.AUTHENTICATION_FAILED)]
                self._report(sa, exchange, f"authentication_failed: {exc}")
                destroy_reason = "authentication_failed"
            except ProtocolError as exc:
                reply = [Notify(exc.notify, exc.data)]
                self._report(sa, exchange, f"{exc.notify.name}: {exc.reason}")
            except ValueError as exc:
                # Our config cannot answer it (e.g. an identity we cannot encode).
                failed = (NotifyType.AUTHENTICATION_FAILED if exchange == ExchangeType.IKE_AUTH
                          else NotifyType.NO_PROPOSAL_CHOSEN)
                reply = [Notify(failed)]
                self._report(sa, exchange, f"{failed.name}: {exc}")
                if exchange == ExchangeType.IKE_AUTH:
                    destroy_reason = "authentication_failed"
            except DropPacket as exc:
                # Authenticated, so not garbage: a malformed request gets INVALID_SYNTAX.
                reply = [Notify(NotifyType.INVALID_SYNTAX)]
                self._report(sa, exchange, f"INVALID_SYNTAX: {exc.reason}")
        self._adopt(now)
        response = self._encode(sa, exchange, mid, True, reply)
        update = find_notify(msg.payloads, NotifyType.UPDATE_SA_ADDRESSES) is not None
        fragments = self._fragment(sa, exchange, mid, True, reply, response, path)
        sa.cached = CachedResponse(mid, data, response, path, update,
                                   response_fragments=fragments)
        sa.peer_next_id = mid + 1
        self._send_all(sa.cached.datagrams, path, sa, now)
        self._resend_after_peer_moved(sa, path_before, now)
        if sa.state != IkeState.CONNECTING:
            self._admission.forget(sa)
        if sa.initial_contact and sa.state == IkeState.ESTABLISHED:
            sa.initial_contact = False
            self._initial_contact(sa, now)
        if destroy_reason is not None:
            self._destroy(sa, destroy_reason, now)
        elif sa.state == IkeState.DELETED:
            reason = sa.delete_reason or ("rekeyed" if sa.rekeyed else "deleted_by_peer")
            self._destroy(sa, reason, now)
        else:
            self._kick(sa, now)
        for other in sa.lineage()[1:]:
            self._kick(other, now)

    def _resend_after_peer_moved(self, sa: IkeSa, old: Path, now: float) -> None:
        """The peer's UPDATE_SA_ADDRESSES moved the IKE_SA off ``old``: our request
        outstanding there goes to the new addresses now (RFC 4555 3.5), not at its next
        retransmission. Left on the dead path (a probe of it, a rekey), it would hold
        back the return routability check queued behind it for seconds, and the
        CHILD_SAs with it. Not counted as a retransmission."""
        pending = sa.pending
        if (sa.path == old or pending is None or pending.path != old
                or sa.mobike_initiator or isinstance(pending.task, RoutabilityTask)):
            return
        pending.path = sa.path
        self._send_all(pending.datagrams, pending.path, sa, now)

    def _follow_peer(self, sa: IkeSa, exchange: ExchangeType, path: Path, now: float) -> None:
        """An authenticated request arrived on another path than the SA's: follow it only
        where the RFCs say so. Anyone on the path can race a copy from a spoofed source,
        and integrity alone does not prove where the peer is."""
        old = sa.path
        if sa.state == IkeState.CONNECTING:
            if exchange == ExchangeType.IKE_AUTH and _floats(sa, path):
                sa.path = path
            return
        if sa.mobike or path.local != old.local:
            # RFC 4555 §3.5: with MOBIKE only UPDATE_SA_ADDRESSES moves an SA.
            return
        if sa.nat_remote and not (sa.nat_local and sa.initiator):
            # RFC 7296 §2.23: a NAT before the peer rebound; the side behind no NAT (or
            # the responder, when both are) follows the peer's latest authenticated request.
            moved(self._ctx, sa, old, path, None, now)

    def _respond(self, sa: IkeSa, exchange: ExchangeType, msg: Message,
                 now: float) -> list[Payload]:
        if exchange == ExchangeType.IKE_AUTH:
            return respond_auth(self._ctx, sa, msg, now)
        if exchange == ExchangeType.INFORMATIONAL:
            return respond_informational(self._ctx, sa, msg, now)
        return respond_create_child(self._ctx, sa, msg, now)

    def _stale_request(self, sa: IkeSa, header: Header, data: bytes, path: Path) -> None:
        """An authentic request older than the window: an old UPDATE_SA_ADDRESSES
        replayed (or reordered) is reported and never followed (RFC 4555 §3.5)."""
        msg = self._open(sa, header, data, path)
        if msg is None:
            return
        if find_notify(msg.payloads, NotifyType.UPDATE_SA_ADDRESSES) is not None:
            self._ctx.emit(UpdateRejected(conn=sa.conn.name, ike_spi=sa.spi_str, path=path,
                                          reason="stale"))
        else:
            self._drop(path, f"message ID {header.message_id} outside the window", header,
                       authenticated=True)

    def _probes_answered(self, sa: IkeSa, message_id: int, path: Path, now: float) -> None:
        """A response on ``path`` proves that path for the probes that sent it there."""
        for probe in list(sa.probes):
            if probe.path == path and message_id in probe.message_ids:
                self._probe_done(sa, probe, now - probe.message_ids[message_id], now=now)

    def _probe_done(self, sa: IkeSa, probe: Probe, rtt: float | None, *, now: float) -> None:
        """Report ``probe``: answered with ``rtt`` (from the copy that was answered), or
        failed (None)."""
        sa.probes.remove(probe)
        self._ctx.emit(ProbeResult(conn=sa.conn.name, ike_spi=sa.spi_str, path=probe.path,
                                   probe_id=probe.probe_id, ok=rtt is not None,
                                   rtt=max(0.0, rtt) if rtt is not None else None))

    def _probe_timer(self, sa: IkeSa, now: float) -> None:
        for probe in list(sa.probes):
            if now >= probe.deadline:
                self._probe_done(sa, probe, None, now=now)

    def _ride(self, sa: IkeSa, now: float) -> None:
        """Put the waiting probes on the outstanding request, one copy per path (see the
        MOBIKE API notes); with nothing outstanding, a probe that never had a request of
        its own starts one on its path. Bounded: each probe rides at most ``MAX_RIDES``
        requests and starts at most one, so probes never make a stream of requests."""
        if not sa.probes or sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            return
        if sa.pending is None:
            if sa.tasks:
                self._kick(sa, now)  # the next request comes and is ridden from there
                return
            first = next((p for p in sa.probes if not p.started
                          and len(p.message_ids) < MAX_RIDES), None)
            if first is not None:
                sa.tasks.appendleft(ProbeTask(first.path))
                self._kick(sa, now)
            return
        pending = sa.pending
        task = pending.task
        in_flight_update = (isinstance(task, MoveTask) and task.failed is None
                            ) or isinstance(task, RoutabilityTask)
        own = isinstance(task, ProbeTask)
        copied = {pending.path}
        for probe in sa.probes:
            if pending.message_id in probe.message_ids or len(probe.message_ids) >= MAX_RIDES:
                continue
            left = pending.first_sent  # the request itself, on its own path
            if probe.path != pending.path:
                left = now
                if in_flight_update:
                    continue  # waits for the slot
                if probe.path not in copied:
                    self._send_all(pending.datagrams, probe.path, sa, now)
                    copied.add(probe.path)
            probe.message_ids[pending.message_id] = left
            if own and probe.path == pending.path:
                probe.started = True

    def _move_timer(self, sa: IkeSa, pending: PendingRequest, task: MoveTask,
                    now: float) -> None:
        """An unanswered update is resent every move_retransmit until move_timeout;
        then it has failed, and the request (its message ID is spent) carries on
        back on the SA's path, like a liveness check."""
        settings = self._settings
        started = task.sent_at if task.sent_at is not None else pending.first_sent
        limit = task.timeout if task.timeout is not None else settings.move_timeout
        if now >= started + limit - 1e-9:
            task.fail(self._ctx, sa, "timeout")
            pending.path = sa.path
            pending.first_sent = now
            pending.deadline = now + settings.retransmit.wait(0)
        else:
            pending.deadline = min(now + self._move_resend(task), started + limit)
        self._send_all(pending.datagrams, pending.path, sa, now)

    def _eager_wait(self, task: Task, now: float) -> float | None:
        """The resend interval of an IKE_SA_INIT to a restarting peer, within its window."""
        until = task.eager_until if isinstance(task, IkeInitTask) else None
        if until is None or now >= until:
            return None
        return min(self._settings.eager_resend, until - now)

    def _move_resend(self, task: MoveTask) -> float:
        """Resend interval of an update: move_retransmit, or a third of a shorter bound."""
        resend = self._settings.move_retransmit
        return resend if task.timeout is None else min(resend, task.timeout / 3)

    def _adopt(self, now: float) -> None:
        """Register IKE_SAs created by a rekey (CREATE_CHILD_SA) and start their tasks."""
        while self._ctx.new_sas:
            new = self._ctx.new_sas.pop()
            self._register(new)
            self._kick(new, now)

    def _report(self, sa: IkeSa, exchange: int, reason: str) -> None:
        self._ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str,
                                      exchange=_exchange_name(exchange), reason=reason))

    def _initial_contact(self, sa: IkeSa, now: float) -> None:
        """Drop (silently: the peer lost them) older SAs with the same identities."""
        if sa.conn.unique == Unique.NEVER:
            return
        for other in self._index.with_remote_id(sa.remote_id):
            if (other is not sa and other.conn.name == sa.conn.name
                    and other.state != IkeState.CONNECTING
                    and (other.local_id, other.remote_id) == (sa.local_id, sa.remote_id)):
                self._destroy(other, "initial_contact", now)

    def _init_request(self, header: Header, data: bytes, path: Path, now: float) -> None:
        if header.spi_r != ZERO_SPI or header.message_id != 0:
            self._drop(path, "IKE_SA_INIT request with responder SPI or message ID", header)
            return
        key = (header.spi_i, path.remote)
        existing = self._by_init.get(key)
        if existing is not None:
            if data == existing.init_request:
                self._send(existing.init_response, path, existing, now)
            else:
                self._drop(path, "IKE_SA_INIT for an SA being set up", header)
            return
        # Admission (cookies, caps, DH budget) before the request is decoded.
        try:
            scan = init_scan(header, data)
        except DropPacket as exc:
            self._drop(path, exc.reason, header)
            return
        verdict = self._admission.screen(header.spi_i, path.remote.addr, scan.nonce,
                                         scan.cookie, scan.ke_group, now)
        if isinstance(verdict, DemandCookie):
            self._answer_init(header, [Notify(NotifyType.COOKIE, verdict.token)], path, now)
            return
        if isinstance(verdict, Refuse):
            self._drop(path, verdict.reason, header)
            return
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            self._drop(path, f"malformed message: {exc}", header)
            return
        if any(isinstance(p, Encrypted | EncryptedFragment) for p in msg.payloads):
            self._drop(path, "SK payload in IKE_SA_INIT", header)
            return
        redirected = init_redirect(self._ctx, self._redirect_policy, msg, path, len(self._sas))
        if redirected is not None:
            self._answer_init(header, redirected, path, now)
            return
        try:
            reply = respond_init(self._ctx, msg, path, candidates(self._ctx.config, path),
                                 now)
        except DropPacket as exc:
            self._drop(path, exc.reason, header)
            return
        if reply.sa is None:
            # Stateless answer (INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN).
            self._answer_init(header, reply.payloads, path, now)
            if reply.reason != "invalid_ke_payload":
                self._drop(path, reply.reason, header)
            return
        sa = reply.sa
        assert sa.suite is not None
        sa.init_request = data
        response = self._encode(sa, ExchangeType.IKE_SA_INIT, 0, True, reply.payloads)
        sa.init_response = response
        sa.cached = CachedResponse(0, data, response, path)
        sa.peer_next_id = 1
        sa.last_received = now
        self._register(sa)
        self._admission.admit(key, sa, sa.suite.dh)
        self._by_init[key] = sa
        sa.init_key = key
        self._send(response, path, sa, now)

    def _answer_init(self, header: Header, payloads: list[Payload], path: Path,
                     now: float) -> None:
        """A stateless IKE_SA_INIT response (COOKIE, INVALID_KE_PAYLOAD, an error)."""
        answer = Header(header.spi_i, ZERO_SPI, 0, ExchangeType.IKE_SA_INIT,
                        HeaderFlag.RESPONSE, 0)
        self._send(encode_message(answer, payloads), path, None, now)

    # ------------------------------------------------------------------ timers

    def _sa_timer(self, sa: IkeSa, now: float) -> None:
        self._probe_timer(sa, now)
        expire(sa.reassembly, now, REASSEMBLY_TIMEOUT)
        if sa.dead_at is not None and now >= sa.dead_at and sa.silent_since_asked():
            self._destroy(sa, "dead_after", now)
            return
        pending = sa.pending
        settings = self._settings
        if (pending is not None and now >= pending.deadline
                and isinstance(pending.task, MoveTask) and pending.task.failed is None):
            self._move_timer(sa, pending, pending.task, now)
        elif pending is not None and now >= pending.deadline and (
                eager := self._eager_wait(pending.task, now)):
            # Not counted as a retransmission: charon's schedule starts after the window.
            pending.deadline = now + eager
            self._send(pending.data, pending.path, sa, now)
        elif pending is not None and now >= pending.deadline:
            if pending.retransmitted >= settings.retransmit.tries:
                if isinstance(pending.task, DeleteIkeTask):
                    reason = pending.task.reason  # it was going away anyway
                elif pending.task.liveness:
                    reason = "dpd_timeout"
                else:
                    reason = "retransmits_exceeded"
                self._destroy(sa, reason, now)
                return
            pending.retransmitted += 1
            pending.deadline = now + settings.retransmit.wait(pending.retransmitted)
            if isinstance(pending.task, ProbeTask):
                # A probe's own path had probe_timeout; the request lives on the SA's.
                pending.path = sa.path
            self._send_all(pending.datagrams, pending.path, sa, now)
        self._ride(sa, now)
        if sa.state == IkeState.CONNECTING:
            if not sa.initiator and now >= sa.created + settings.half_open_timeout:
                self._destroy(sa, "half_open_timeout", now)
            return
        if sa.retire_at is not None and now >= sa.retire_at:
            self._destroy(sa, "rekeyed", now)
            return
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            return
        for child in list(sa.children.values()):
            if child.expire_at is not None and now >= child.expire_at:
                child.expire_at = None
                child.rekey_at = None
                sa.tasks.append(DeleteChildTask([child.unique_id], "expired"))
            elif (child.rekey_at is not None and now >= child.rekey_at
                  and child.state == ChildState.INSTALLED):
                child.rekey_at = None
                sa.tasks.append(ChildRekeyTask(child.unique_id))
        if sa.rekey_at is not None and now >= sa.rekey_at:
            sa.rekey_at = None
            sa.tasks.append(IkeRekeyTask())
        if (sa.conn.dpd_delay > 0 and sa.pending is None and not sa.tasks
                and now >= sa.last_received + sa.conn.dpd_delay):
            sa.tasks.append(LivenessTask())
        self._kick(sa, now)
        if sa.nat_local and sa.path.natt and now >= sa.last_sent + settings.keepalive_interval:
            self._outbox.append(Datagram(NATT_KEEPALIVE, sa.path, keepalive=True))
            sa.last_sent = now

    # ------------------------------------------------------------------ teardown

    def _destroy(self, sa: IkeSa, reason: str, now: float) -> None:
        """Remove ``sa`` and its CHILD_SAs, releasing SPIs and virtual IP leases."""
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


def _first_address(specs: tuple[str, ...]) -> IPAddress | None:
    for spec in specs:
        try:
            return ipaddress.ip_address(spec.strip())
        except ValueError:
            continue
    return None


def _floats(sa: IkeSa, path: Path) -> bool:
    """RFC 4555 §3.3, RFC 7296 §2.23: the initiator moves IKE_AUTH to port 4500. Only
    the ports change, or the address too when a NAT sits before the peer."""
    old = sa.path
    return (path.natt and not old.natt and path.local.addr == old.local.addr
            and (path.remote.addr == old.remote.addr or sa.nat_remote))


def _exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"
