"""MOBIKE (RFC 4555): negotiation, address lists, UPDATE_SA_ADDRESSES, COOKIE2, NAT
prohibition, probes.

Both roles, as charon's ike_mobike. In IKE_AUTH the initiator offers MOBIKE
(:func:`offer_mobike`, :func:`mobike_answered`) and the responder accepts it
(:func:`mobike_offered`, :func:`answer_mobike`), each with its address list (§3.2).
Then, as original initiator, we move the IKE_SA (:class:`MoveTask`), announce our
addresses (:class:`AddressListTask`) and test paths (:class:`ProbeTask`); as
responder :func:`respond_mobike` answers those requests (every INFORMATIONAL
request: ``exchanges/responder.py`` adds its part), follows an accepted update and,
when the policy asks for it, first checks that the peer answers at its new address
(:class:`RoutabilityTask`, §3.7). When probes and moves go out is
``core/mobike_paths.py``.

COOKIE2 bookkeeping lives here, not in ``mobike/routability.py``: core/ must
not import the layer above it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import deque
from collections.abc import Callable, Sequence

from ...config.mobike import (
    MAX_PEER_ADDRESSES_PER_FAMILY,
    AnnounceMode,
    MobikePolicy,
)
from ...config.model import ConnectionConfig
from ...ikev2.constants import ExchangeType, NotifyType
from ...ikev2.message import Message
from ...ikev2.payloads import Notify, Payload, find_notify, first_error
from ...return_routability import check_needed
from ...types import Endpoint, IPAddress, Path
from ..context import Context
from ..events import (
    ChildSaUpdated,
    IkeSaMoved,
    MoveFailed,
    NatMappingChanged,
    PeerAddressesUpdated,
    PeerMoved,
    UpdateRejected,
)
from ..ike_sa import IkeSa
from ..nat import nat_verdict, natd_notifies, peer_saw_us
from .base import ExchangeAborted, Outcome, Task, notify_name

SUPERSEDED = "superseded"
"""A move replaced by a newer decision (which takes the CHILD_SAs along itself)."""
COOKIE2_SIZE = 16
"""RFC 4555 §4.2.5 allows 8..64 octets."""
MAX_VERIFIED_PEERS = 16
"""Peer endpoints remembered as verified per IKE_SA (as the controller's checks keep)."""

ADDRESS_NOTIFIES = (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.ADDITIONAL_IP6_ADDRESS,
                    NotifyType.NO_ADDITIONAL_ADDRESSES)


# ---------------------------------------------------------------- payload helpers


def natd_payloads(sa: IkeSa, path: Path) -> list[Payload]:
    """NAT_DETECTION_SOURCE_IP / _DESTINATION_IP for ``path`` as seen from our side."""
    return natd_notifies(sa.spi_i, sa.spi_r, sa.natd_path(path))


def no_nats_data(path: Path) -> bytes:
    """§4.2.6: source address, destination address, source port, destination port."""
    return (path.local.addr.packed + path.remote.addr.packed
            + path.local.port.to_bytes(2, "big") + path.remote.port.to_bytes(2, "big"))


def nat_guard(sa: IkeSa, path: Path) -> list[Payload]:
    """NAT detection when NAT-T is in use, else NO_NATS_ALLOWED (§3.9)."""
    if sa.natt_supported:
        return natd_payloads(sa, path)
    return [Notify(NotifyType.NO_NATS_ALLOWED, no_nats_data(path))]


def announced(policy: MobikePolicy, addrs: Sequence[IPAddress],
              current: IPAddress) -> tuple[IPAddress, ...]:
    """Our addresses to disclose besides ``current`` (§5.5: the announce policy)."""
    if policy.announce == AnnounceMode.PREFERRED_ONLY:
        return ()
    out: list[IPAddress] = []
    for addr in addrs:
        if addr == current or addr in out:
            continue
        if policy.announce == AnnounceMode.PREFIXES and not any(
                addr.version == net.version and addr in net
                for net in policy.announce_prefixes):
            continue
        out.append(addr)
    return tuple(out)


def address_notifies(addrs: Sequence[IPAddress], informational: bool) -> list[Payload]:
    """ADDITIONAL_IP*_ADDRESS per address; NO_ADDITIONAL_ADDRESSES for an empty list in
    an INFORMATIONAL (in IKE_AUTH no notify already means none)."""
    out: list[Payload] = []
    for addr in addrs:
        ntype = (NotifyType.ADDITIONAL_IP4_ADDRESS if addr.version == 4
                 else NotifyType.ADDITIONAL_IP6_ADDRESS)
        out.append(Notify(ntype, addr.packed))
    if not out and informational:
        out.append(Notify(NotifyType.NO_ADDITIONAL_ADDRESSES))
    return out


def parse_addresses(payloads: Sequence[Payload]) -> tuple[IPAddress, ...] | None:
    """The peer's announced list, or None when the message carries no address notify.

    At most MAX_PEER_ADDRESSES_PER_FAMILY distinct addresses of each family are
    kept, the first ones listed; the rest are ignored."""
    found = False
    out: dict[IPAddress, None] = {}
    kept = {4: 0, 6: 0}
    for p in payloads:
        if not isinstance(p, Notify) or p.type not in ADDRESS_NOTIFIES:
            continue
        found = True
        addr: IPAddress
        if p.type == NotifyType.ADDITIONAL_IP4_ADDRESS and len(p.data) == 4:
            addr = ipaddress.IPv4Address(p.data)
        elif p.type == NotifyType.ADDITIONAL_IP6_ADDRESS and len(p.data) == 16:
            addr = ipaddress.IPv6Address(p.data)
        else:
            continue
        if addr in out or kept[addr.version] >= MAX_PEER_ADDRESSES_PER_FAMILY:
            continue
        kept[addr.version] += 1
        out[addr] = None
    return tuple(out) if found else None


def _detect(sa: IkeSa, payloads: Sequence[Payload], path: Path) -> bytes | None:
    """Update the NAT flags from the peer's NAT detection hashes for ``path`` (our view);
    the peer's hash of us, or None without NAT detection payloads."""
    verdict = nat_verdict(payloads, sa.spi_i, sa.spi_r, sa.natd_path(path))
    if verdict is None:
        return None
    sa.nat_remote, sa.nat_local = verdict.remote, verdict.local
    return verdict.peer_saw_us


def moved(ctx: Context, sa: IkeSa, old: Path, new: Path, started: float | None,
          now: float, early_encap: bool | None = None) -> None:
    """The IKE_SA and every CHILD_SA now use ``new`` (same SPIs, keys untouched).
    ``early_encap``: how the CHILD_SAs were already sent to ``new`` when the update
    was decided (``redirect_children``); they are not moved again unless NAT detection
    changed their encapsulation."""
    already = sa.esp_path == new and early_encap is not None
    sa.path = new
    sa.esp_path = None
    sa.natd_seen = None  # the peer's hash of us changed with the path: a new baseline
    if not already or early_encap != _encap(sa):
        # First: the data plane follows these alone, and the move's other followers
        # (peer routes, path managers, the log) need not hold the ESP back.
        _children_to(ctx, sa, new)
    if started is not None:
        ctx.emit(IkeSaMoved(conn=sa.conn.name, ike_spi=sa.spi_str, old_path=old,
                            new_path=new, duration=now - started))
    else:
        ctx.emit(PeerMoved(conn=sa.conn.name, ike_spi=sa.spi_str, old_path=old, new_path=new))


def _encap(sa: IkeSa) -> bool:
    return sa.nat_any or sa.conn.encap


def _children_to(ctx: Context, sa: IkeSa, path: Path) -> None:
    for child in sa.children.values():
        ctx.emit(ChildSaUpdated(conn=sa.conn.name, ike_spi=sa.spi_str, child=child.name,
                                unique_id=child.unique_id, spi_in=child.spi_in_int,
                                spi_out=child.spi_out_int, path=path, encap=_encap(sa)))


def redirect_children(ctx: Context, sa: IkeSa, path: Path) -> bool | None:
    """§3.5: the initiator updates its IPsec SAs as soon as it decides on new addresses
    (no return-routability check of ours), so ESP leaves on ``path`` with the update,
    a round trip before the answer. Returns the encapsulation sent with (None: the
    CHILD_SAs were there already)."""
    if (sa.esp_path or sa.path) == path:
        return None
    sa.esp_path = None if path == sa.path else path
    _children_to(ctx, sa, path)
    return _encap(sa)


def remember_verified(sa: IkeSa, remote: Endpoint) -> None:
    """``remote`` received what we sent there (§3.7): newest last, the oldest forgotten."""
    sa.verified_peers.pop(remote, None)
    sa.verified_peers[remote] = None
    while len(sa.verified_peers) > MAX_VERIFIED_PEERS:
        del sa.verified_peers[next(iter(sa.verified_peers))]


def check_mapping(ctx: Context, sa: IkeSa, msg: Message, path: Path) -> None:
    """§3.8: NAT detection in the answer to a liveness check on the active path shows
    whether the NAT in front of us rebound; as initiator we then update the SA."""
    if path != sa.path or not sa.mobike:
        return
    seen = peer_saw_us(msg.payloads)
    if seen is None:
        return
    previous, sa.natd_seen = sa.natd_seen, seen
    if previous is None or previous == seen:
        return
    ctx.emit(NatMappingChanged(conn=sa.conn.name, ike_spi=sa.spi_str, path=path))
    if sa.mobike_initiator and not any(isinstance(t, MoveTask) for t in sa.tasks):
        sa.tasks.appendleft(MoveTask(sa.path, sa.path, None))


# ---------------------------------------------------------------- IKE_AUTH (§3.2)


def offer_mobike(ctx: Context, sa: IkeSa, tunnel: bool) -> list[Payload]:
    """Our IKE_AUTH request's MOBIKE_SUPPORTED and address list; like charon, only for
    a tunnel mode CHILD_SA."""
    if not sa.conn.mobike or not tunnel:
        return []
    return [Notify(NotifyType.MOBIKE_SUPPORTED), *_our_addresses(ctx, sa)]


def mobike_answered(sa: IkeSa, payloads: Sequence[Payload]) -> None:
    """The responder's IKE_AUTH answer: whether it supports MOBIKE, and its addresses."""
    sa.peer_mobike = mobike_offered(payloads)
    sa.peer_addrs = parse_addresses(payloads) or ()


def mobike_offered(payloads: Sequence[Payload]) -> bool:
    return find_notify(payloads, NotifyType.MOBIKE_SUPPORTED) is not None


def answer_mobike(ctx: Context, sa: IkeSa, conn: ConnectionConfig,
                  payloads: Sequence[Payload]) -> list[Payload]:
    """Our IKE_AUTH answer's MOBIKE part; the peer's addresses are kept. MOBIKE is on
    when both want it and every CHILD_SA of ``conn`` is tunnel mode."""
    sa.peer_addrs = parse_addresses(payloads) or ()
    if conn.mobike and sa.peer_mobike and all(c.mode == "tunnel" for c in conn.children):
        return [Notify(NotifyType.MOBIKE_SUPPORTED), *_our_addresses(ctx, sa)]
    sa.peer_mobike = False
    return []


def _our_addresses(ctx: Context, sa: IkeSa) -> list[Payload]:
    """Our additional addresses for IKE_AUTH, as the announce policy allows."""
    listed = announced(ctx.config.mobike.policy, ctx.local_addresses, sa.path.local.addr)
    sa.announced = listed
    return address_notifies(listed, False)


# ---------------------------------------------------------------- our requests


class ProbeTask(Task):
    """An empty INFORMATIONAL on ``path`` (§3.10 path test), with NAT detection."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = True
    tests_path = True
    path: Path

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        return natd_payloads(sa, self.path) if sa.natt_supported else []

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        return Outcome.DONE


class AddressListTask(Task):
    """Our additional addresses (full list) in an INFORMATIONAL, optionally on another
    path than the SA's (a responder whose own address vanished)."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = True  # an empty list is still a message (NO_ADDITIONAL_ADDRESSES)

    def __init__(self, addrs: tuple[IPAddress, ...], path: Path | None = None) -> None:
        self.addrs = addrs
        self.path = path

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        payloads = address_notifies(self.addrs, True)
        if not sa.natt_supported:
            payloads.append(Notify(NotifyType.NO_NATS_ALLOWED,
                                   no_nats_data(self.path or sa.path)))
        sa.announced = self.addrs
        return payloads

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        return Outcome.DONE


class MoveTask(Task):
    """UPDATE_SA_ADDRESSES on ``new`` (§3.5), with COOKIE2 and NAT detection.

    ``started`` is None for an update the core decided itself (NAT rebinding).
    ``failed`` set (timeout, superseded) means the answer is ignored: the request
    stays outstanding only to keep the message-ID window in step with the peer.
    """

    exchange = ExchangeType.INFORMATIONAL
    liveness = False

    def __init__(self, old: Path, new: Path, started: float | None,
                 timeout: float | None = None) -> None:
        self.old = old
        self.new = new
        self.path = new
        self.started = started
        self.timeout = timeout
        """This attempt's bound (from the path's RTT); None: the engine's move_timeout."""
        self.cookie2 = b""
        self.failed: str | None = None
        self.resent = 0
        """Resends so far (its own schedule, not counted as retransmissions)."""
        self.sent_at: float | None = None
        self.early_encap: bool | None = None
        """How the CHILD_SAs went to ``new`` when the move was decided (None: not moved
        early, e.g. an update on the same path after a NAT rebinding)."""

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        self.cookie2 = ctx.random_bytes(COOKIE2_SIZE)
        self.sent_at = now
        if self.started is None:
            self.started = now
            self.old = sa.path
        payloads: list[Payload] = [Notify(NotifyType.UPDATE_SA_ADDRESSES)]
        payloads += nat_guard(sa, self.new)
        payloads.append(Notify(NotifyType.COOKIE2, self.cookie2))
        if ctx.local_addresses:
            # §3.6 allows the list in the update itself, as charon sends it.
            listed = announced(ctx.config.mobike.policy, ctx.local_addresses,
                               self.new.local.addr)
            payloads += address_notifies(listed, True)
            sa.announced = listed
        return payloads

    def fail(self, ctx: Context, sa: IkeSa, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            ctx.emit(MoveFailed(conn=sa.conn.name, ike_spi=sa.spi_str, path=self.new,
                                reason=reason))
            if reason != SUPERSEDED and self.early_encap is not None \
                    and sa.esp_path == self.new:
                # The CHILD_SAs went ahead with the update: back to the IKE_SA's path.
                redirect_children(ctx, sa, sa.path)

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        cookie = find_notify(msg.payloads, NotifyType.COOKIE2)
        if cookie is None or not hmac.compare_digest(cookie.data, self.cookie2):
            # §3.5: the answer does not belong to our request: someone interferes.
            raise ExchangeAborted("cookie2_mismatch")
        if self.failed is not None:
            return Outcome.DONE
        error = first_error(msg.payloads)
        if error is not None:
            self.fail(ctx, sa, notify_name(error.type).lower())
            return Outcome.DONE
        seen = _detect(sa, msg.payloads, self.new)
        moved(ctx, sa, self.old, self.new, self.started, now, self.early_encap)
        # The peer saw us on the new path in this update and follows it: its hash of
        # us is the baseline, so a rebinding before the next liveness check is noticed.
        sa.natd_seen = seen
        return Outcome.DONE


class RoutabilityTask(Task):
    """The responder's return-routability check (§3.7): COOKIE2 to the peer's new
    address; the CHILD_SAs move when it comes back.

    The CHILD_SAs wait on the old address meanwhile, often a dead one, so a lost check
    is resent like the initiator's update (every move_retransmit for move_timeout,
    uncounted), not after charon's 4 s; then charon's schedule."""

    exchange = ExchangeType.INFORMATIONAL
    liveness = False

    def __init__(self, old: Path, new: Path) -> None:
        self.old = old
        self.new = new
        self.path = new
        self.cookie2 = b""
        self.superseded = False
        self.resend = 0.0

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        self.cookie2 = ctx.random_bytes(COOKIE2_SIZE)
        self.resend = ctx.settings.move_retransmit
        self.eager_until = now + ctx.settings.move_timeout
        return [Notify(NotifyType.COOKIE2, self.cookie2)]

    def eager_wait(self, resend: float, now: float) -> float | None:
        """The update's resend interval (not the restarting peer's ``resend``)."""
        return super().eager_wait(self.resend, now)

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        cookie = find_notify(msg.payloads, NotifyType.COOKIE2)
        if cookie is None or not hmac.compare_digest(cookie.data, self.cookie2):
            raise ExchangeAborted("cookie2_mismatch")
        if self.superseded:
            return Outcome.DONE  # maybe resent elsewhere since: it proves no address
        remember_verified(sa, self.new.remote)  # only ever sent there
        if sa.path == self.new:
            moved(ctx, sa, self.old, self.new, None, now)
        return Outcome.DONE


# ---------------------------------------------------------------- peer requests


def _allowed(policy: MobikePolicy, addr: IPAddress) -> bool:
    nets = policy.allowed_peer_prefixes
    return not nets or any(addr.version == n.version and addr in n for n in nets)


def respond_mobike(ctx: Context, sa: IkeSa, msg: Message, path: Path, message_id: int,
                   now: float) -> list[Payload]:
    """The MOBIKE part of our answer to an authenticated INFORMATIONAL request that
    arrived on ``path`` (our view); updates the SA's peer addresses and path."""
    payloads = msg.payloads
    update = find_notify(payloads, NotifyType.UPDATE_SA_ADDRESSES) is not None
    reply: list[Payload] = []
    has_natd = find_notify(payloads, NotifyType.NAT_DETECTION_SOURCE_IP) is not None
    if has_natd:
        # Liveness checks and updates both learn how we see them (§3.8).
        reply += natd_payloads(sa, path)
    cookie2 = find_notify(payloads, NotifyType.COOKIE2)
    if cookie2 is not None:
        reply.append(Notify(NotifyType.COOKIE2, cookie2.data))

    def reject(reason: str) -> list[Payload]:
        if update:
            ctx.emit(UpdateRejected(conn=sa.conn.name, ike_spi=sa.spi_str, path=path,
                                    reason=reason))
        return reply

    if not sa.mobike:
        return reject("not_mobike")
    no_nats = find_notify(payloads, NotifyType.NO_NATS_ALLOWED)
    if no_nats is not None and no_nats.data != no_nats_data(Path(path.remote, path.local)):
        reply.append(Notify(NotifyType.UNEXPECTED_NAT_DETECTED))
        return reject("unexpected_nat_detected")
    addrs = parse_addresses(payloads)
    if addrs is not None:
        # §3.6: the set is the request's source address plus the list (replaced whole).
        sa.peer_addrs = tuple(dict.fromkeys((path.remote.addr, *addrs)))
    if update:
        _follow_update(ctx, sa, payloads, path, message_id, has_natd, reply, reject, now)
    if addrs is not None:
        # After the update's own events: the CHILD_SAs' new path reaches the data
        # plane before the path managers' bookkeeping of the list.
        ctx.emit(PeerAddressesUpdated(conn=sa.conn.name, ike_spi=sa.spi_str,
                                      addresses=sa.peer_addrs))
    return reply


def _follow_update(ctx: Context, sa: IkeSa, payloads: Sequence[Payload], path: Path,
                   message_id: int, has_natd: bool, reply: list[Payload],
                   reject: Callable[[str], object], now: float) -> None:
    """An authenticated UPDATE_SA_ADDRESSES: the IKE_SA follows it at once, the CHILD_SAs
    too unless the new address must answer a return routability check first."""
    if sa.mobike_initiator:
        reject("not_initiator")  # only the initiator decides (§3.1), rekeyed or not
        return
    if message_id <= sa.last_update_id:
        reject("stale")
        return
    sa.last_update_id = message_id
    policy = ctx.config.mobike.policy
    if not _allowed(policy, path.remote.addr):
        reply.append(Notify(NotifyType.UNACCEPTABLE_ADDRESSES))
        reject("unacceptable_addresses")
        return
    if has_natd:
        _detect(sa, payloads, path)
    old = sa.path
    # The IKE_SA follows the IP header at once (§3.5); the CHILD_SAs maybe after RR.
    sa.path = path
    # A newer update replaces a check not yet sent, and voids one in flight.
    sa.tasks = deque(t for t in sa.tasks if not isinstance(t, RoutabilityTask))
    if sa.pending is not None and isinstance(sa.pending.task, RoutabilityTask):
        sa.pending.task.superseded = True
    if path == old and sa.esp_path is None:
        return
    # An endpoint that set the IKE_SA up or answered a check before is not asked again.
    if check_needed(policy.return_routability, nat=sa.nat_any,
                    verified=path.remote in sa.verified_peers):
        # The CHILD_SAs, new ones too, stay where they were until the check answers
        # (a repeated update to the same address asks again: the last check was voided).
        sa.esp_path = sa.esp_path or old
        sa.tasks.appendleft(RoutabilityTask(sa.esp_path, path))
    else:
        moved(ctx, sa, old, path, None, now)
