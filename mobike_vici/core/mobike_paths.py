"""MOBIKE's paths inside the engine (RFC 4555 §3.5, §3.6, §3.10): probes riding the
message-ID window, moves and their own resend schedule, our address list, and which
authenticated request from another path the IKE_SA follows.

The engine owns the window and the wire; :class:`PathMobility` gets the IKE_SA and
calls back to send (``send_all``) and to start the next queued request (``kick``).
The exchange itself (what the requests carry, how the peer's are answered) is
``exchanges/mobike.py``.

Message IDs: charon keeps a window of 1, so every request of ours (probes, updates,
DPD, rekeys) shares one slot per IKE_SA. A probe rides whatever request is
outstanding: that very request (same bytes, same message ID) is resent on the probed
path, which RFC 4555 §3.5 allows; the peer answers a copy from its response cache on
that path. A copy that reaches the peer after it has moved on to our next request is
ignored there ("expected N+1"), and one that arrives while the first copy is being
processed is dropped as a duplicate; so a probe not yet answered rides every request
that follows, and a response on its path to any of its copies proves the path, also
one that comes after the request was answered elsewhere (RFC 7296 §2.3: the window,
not the path, orders requests). On the request's own path a probe sends nothing,
unless the request is overdue there (``overdue_after`` without an answer: lost, or a
NAT that rebound under it lost the answer); then a probe that came after it sends
it there again, so the path is tested now, not at its retransmission. With nothing
outstanding a waiting probe starts a request of its own. Only an update in flight is
never copied (the peer would move there): probes wait for it; a spent one (timed out
or superseded) may be copied, since whichever path answers it works, and moving
resends the outstanding request on the new path.

Bounds: ``MAX_PROBES`` waiting probes per IKE_SA, ``MAX_RIDES`` requests per probe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from ..ikev2.constants import ExchangeType, NotifyType
from ..ikev2.message import Message
from ..ikev2.payloads import find_notify
from ..types import Endpoint, IPAddress, Path
from .context import Context
from .events import MoveFailed, ProbeResult, UpdateRejected
from .exchanges.base import Task
from .exchanges.mobike import (
    AddressListTask,
    MoveTask,
    ProbeTask,
    RoutabilityTask,
    announced,
    moved,
    redirect_children,
)
from .ike_sa import CachedResponse, IkeSa, IkeState, PendingRequest, Probe
from .settings import EngineSettings

MAX_PROBES = 64
"""Probes waiting per IKE_SA; beyond it the oldest is reported failed."""
MAX_RIDES = 3
"""Requests one probe is copied onto: its first, and two more for a copy the peer
dropped (it was still processing the first) or saw after our next request."""

SendAll = Callable[[Sequence[bytes], Path, IkeSa, float], None]
Kick = Callable[[IkeSa, float], None]


class PathMobility:
    """Probes, moves and address updates of every IKE_SA of one engine."""

    def __init__(self, ctx: Context, settings: EngineSettings, send_all: SendAll,
                 kick: Kick) -> None:
        self._ctx = ctx
        self._settings = settings
        self._send_all = send_all
        self._kick = kick
        self._next_probe_id = 1

    # ------------------------------------------------------------------ addresses

    def set_local_addresses(self, sas: Iterable[IkeSa], addrs: Sequence[IPAddress],
                            now: float) -> None:
        """Our usable addresses changed: tell the peer of every MOBIKE IKE_SA in ``sas``.

        The list sent is filtered by ``mobike { announce }``. A responder whose
        current address is gone sends it from one of the new addresses (§3.6), so
        the initiator learns where to move."""
        self._ctx.local_addresses = tuple(dict.fromkeys(addrs))
        policy = self._ctx.config.mobike.policy
        for sa in sas:
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

    def _responder_path(self, sa: IkeSa) -> Path | None:
        """A path from one of our remaining addresses to one of the peer's."""
        peers = peer_addresses(sa)
        for local in self._ctx.local_addresses:
            for remote in peers:
                if local.version == remote.version:
                    return Path(Endpoint(local, sa.path.local.port),
                                Endpoint(remote, sa.path.remote.port))
        return None

    # ------------------------------------------------------------------ probes

    def probe(self, sa: IkeSa, path: Path, now: float) -> int:
        """Test ``path`` (``Engine.probe``); raises ValueError when ``sa`` is not
        established."""
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            raise ValueError(f"IKE_SA {sa.spi_str} is not established")
        probe_id = self._next_probe_id
        self._next_probe_id += 1
        probe = Probe(probe_id, path, now, now + self._settings.probe_timeout)
        sa.probes.append(probe)
        if len(sa.probes) > MAX_PROBES:
            self._probe_done(sa, sa.probes[0], None)
        self.ride(sa, now)
        if not probe.message_ids and sa.pending is None and probe in sa.probes:
            self._probe_done(sa, probe, None)  # nothing could be sent
        return probe_id

    def rides(self, sa: IkeSa, message_id: int, path: Path) -> bool:
        """A probe sent the request ``message_id`` on ``path``."""
        return any(p.path == path and message_id in p.message_ids for p in sa.probes)

    def answered(self, sa: IkeSa, message_id: int, path: Path, now: float) -> None:
        """A response on ``path`` proves that path for the probes that sent it there."""
        for probe in list(sa.probes):
            if probe.path == path and message_id in probe.message_ids:
                self._probe_done(sa, probe, now - probe.message_ids[message_id])

    def _probe_done(self, sa: IkeSa, probe: Probe, rtt: float | None) -> None:
        """Report ``probe``: answered with ``rtt`` (from the copy that was answered), or
        failed (None)."""
        sa.probes.remove(probe)
        self._ctx.emit(ProbeResult(conn=sa.conn.name, ike_spi=sa.spi_str, path=probe.path,
                                   probe_id=probe.probe_id, ok=rtt is not None,
                                   rtt=max(0.0, rtt) if rtt is not None else None))

    def probe_timer(self, sa: IkeSa, now: float) -> None:
        for probe in list(sa.probes):
            if now >= probe.deadline:
                self._probe_done(sa, probe, None)

    def ride(self, sa: IkeSa, now: float) -> None:
        """Put the waiting probes on the outstanding request, one copy per path (see the
        module notes); with nothing outstanding, a probe that never had a request of
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
        resent = False
        # Overdue on its own path: a probe that comes after it sends it there again.
        overdue = now - pending.first_sent >= self._settings.overdue_after
        for probe in sa.probes:
            if pending.message_id in probe.message_ids or len(probe.message_ids) >= MAX_RIDES:
                continue
            left = pending.first_sent  # the request itself, on its own path
            if probe.path == pending.path and overdue and not in_flight_update \
                    and probe.sent > pending.first_sent and not resent:
                # The request or its answer may be lost (a NAT that rebound under it):
                # the peer answers a copy from its cache, and the path is tested now,
                # not at the request's next retransmission (charon's: 4 s).
                self._send_all(pending.datagrams, pending.path, sa, now)
                resent = True
                left = now
            elif probe.path != pending.path:
                left = now
                if in_flight_update:
                    continue  # waits for the slot
                if probe.path not in copied:
                    self._send_all(pending.datagrams, probe.path, sa, now)
                    copied.add(probe.path)
            probe.message_ids[pending.message_id] = left
            if own and probe.path == pending.path:
                probe.started = True

    # ------------------------------------------------------------------ moves

    def move(self, sa: IkeSa, path: Path, now: float, timeout: float | None) -> None:
        """``Engine.move``: UPDATE_SA_ADDRESSES to ``path``, or MoveFailed at once."""
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
        self.ride(sa, now)

    def move_timer(self, sa: IkeSa, pending: PendingRequest, task: MoveTask,
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
            task.resent += 1
            pending.deadline = min(now + self.move_resend(task), started + limit)
        self._send_all(pending.datagrams, pending.path, sa, now)

    def update_wait(self, task: Task) -> float | None:
        """The first resend interval of ``task`` when it is an update (its own schedule)."""
        return self.move_resend(task) if isinstance(task, MoveTask) else None

    def move_resend(self, task: MoveTask) -> float:
        """Resend interval of an update: move_retransmit, or a third of a shorter bound.
        The first resend of an update on the SA's own path after a NAT rebinding comes
        after rebind_resend: the answer that showed the new mapping proved the path a
        moment ago, and the peer's ESP goes to the old port until the update is through."""
        resend = self._settings.move_retransmit
        if task.new == task.old and not task.resent:
            resend = min(resend, self._settings.rebind_resend)
        return resend if task.timeout is None else min(resend, task.timeout / 3)

    # ------------------------------------------------------------------ the peer's moves

    def resend_after_peer_moved(self, sa: IkeSa, old: Path, now: float) -> None:
        """The peer's UPDATE_SA_ADDRESSES moved the IKE_SA off ``old``: our request
        outstanding there goes to the new addresses now (§3.5), not at its next
        retransmission. Left on the dead path (a probe of it, a rekey), it would hold
        back the return routability check queued behind it for seconds, and the
        CHILD_SAs with it. That request may be the check of an address the peer has
        left since (the update voided it): it goes too, its answer only frees the
        window. A check still in force stays on the address it checks. Not counted
        as a retransmission."""
        pending = sa.pending
        if pending is None or sa.mobike_initiator or pending.path == sa.path:
            return
        task = pending.task
        if isinstance(task, RoutabilityTask):
            if not task.superseded:
                return
        elif pending.path != old:
            return  # sent elsewhere on purpose (a probe of another path)
        pending.path = sa.path
        self._send_all(pending.datagrams, pending.path, sa, now)

    def follow_peer(self, sa: IkeSa, exchange: ExchangeType, path: Path, now: float) -> None:
        """An authenticated request arrived on another path than the SA's: follow it only
        where the RFCs say so. Anyone on the path can race a copy from a spoofed source,
        and integrity alone does not prove where the peer is."""
        old = sa.path
        if sa.state == IkeState.CONNECTING:
            if exchange == ExchangeType.IKE_AUTH and floats(sa, path):
                sa.path = path
            return
        if sa.mobike or path.local != old.local:
            # §3.5: with MOBIKE only UPDATE_SA_ADDRESSES moves an SA.
            return
        if sa.nat_remote and not (sa.nat_local and sa.initiator):
            # RFC 7296 §2.23: a NAT before the peer rebound; the side behind no NAT (or
            # the responder, when both are) follows the peer's latest authenticated request.
            moved(self._ctx, sa, old, path, None, now)


    def retransmitted(self, sa: IkeSa, exchange: int, cached: CachedResponse, path: Path,
                      now: float) -> None:
        """The peer's request again, on ``path``, answered from the cache: a replayed
        update is reported and not followed; the peer's own IKE_AUTH after a copy raced
        from elsewhere was answered but not followed floats now."""
        if cached.update and path != cached.path:
            self._ctx.emit(UpdateRejected(conn=sa.conn.name, ike_spi=sa.spi_str, path=path,
                                          reason="stale"))
        elif exchange == ExchangeType.IKE_AUTH and path != sa.path and floats(sa, path):
            if sa.state == IkeState.CONNECTING:
                sa.path = path
            else:
                moved(self._ctx, sa, sa.path, path, None, now)

    def stale_update(self, sa: IkeSa, msg: Message, path: Path) -> bool:
        """An authentic request older than the window is an UPDATE_SA_ADDRESSES replayed
        or reordered: reported, never followed (§3.5)."""
        if find_notify(msg.payloads, NotifyType.UPDATE_SA_ADDRESSES) is None:
            return False
        self._ctx.emit(UpdateRejected(conn=sa.conn.name, ike_spi=sa.spi_str, path=path,
                                      reason="stale"))
        return True


def update_in_flight(task: Task) -> MoveTask | None:
    """``task`` as an update still waiting for its answer (not timed out or superseded)."""
    return task if isinstance(task, MoveTask) and task.failed is None else None


def peer_addresses(sa: IkeSa) -> tuple[IPAddress, ...]:
    """The peer's current address, then the additional ones it announced."""
    return tuple(dict.fromkeys((sa.path.remote.addr, *sa.peer_addrs)))


def floats(sa: IkeSa, path: Path) -> bool:
    """§3.3, RFC 7296 §2.23: the initiator moves IKE_AUTH to port 4500. Only the ports
    change, or the address too when a NAT sits before the peer."""
    old = sa.path
    return (path.natt and not old.natt and path.local.addr == old.local.addr
            and (path.remote.addr == old.remote.addr or sa.nat_remote))
