"""RFC 5685 redirect on the wire, both roles: what IKE_SA_INIT carries (REDIRECT_SUPPORTED,
REDIRECTED_FROM, a REDIRECT answer), the gateway's INFORMATIONAL REDIRECT (a task), and
the client's reading of either. Following a redirect of an established IKE_SA (a new one
at the new gateway first) is ``redirect_follow``.

Security (RFC 5685 §8-9): a REDIRECT in an IKE_SA_INIT response is unauthenticated. It
is followed only when it echoes our Ni (so only someone who saw our request can send
it), names an address, and is within the loop limit; the IKE_SA then starts over at the
new gateway with the same connection, so that gateway must authenticate as the
configured remote identity in IKE_AUTH, or nothing is set up. An INFORMATIONAL REDIRECT
is authenticated by the IKE_SA it arrives on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...ikev2.constants import ExchangeType, NotifyType
from ...ikev2.message import Message
from ...ikev2.payloads import Nonce, Notify, Payload, find_notify, find_payload
from ...types import Endpoint, IPAddress, Path
from ..context import Context
from ..events import ClientRedirected, IkeSaRedirected, RedirectRefused, RedirectResolving
from ..ike_sa import IkeSa, IkeState
from ..redirects import (
    GatewayIdentity,
    GatewayIdentityError,
    decode_gateway,
    encode_gateway,
    followable,
    pick_address,
)
from .base import DropPacket, ExchangeAborted, Outcome, Task

InitPolicy = Callable[[Path, int], IPAddress | None]
"""The gateway's choice for a new client: ``(path, ike_sas)`` (the request's path and how
many IKE_SAs we hold) gives the gateway to redirect it to, or None to serve it."""


# -- IKE_SA_INIT, initiator --------------------------------------------------------------

def offer(sa: IkeSa) -> list[Payload]:
    """Our IKE_SA_INIT request says we follow redirects, or where we were sent from."""
    came_from = sa.redirect.came_from
    if came_from is not None:
        return [Notify(NotifyType.REDIRECTED_FROM, encode_gateway(came_from))]
    return [Notify(NotifyType.REDIRECT_SUPPORTED)]


def follow_init_redirect(ctx: Context, sa: IkeSa, payloads: Sequence[Payload],
                         now: float) -> bool:
    """An IKE_SA_INIT response with a REDIRECT: True when ``sa`` now points at the new
    gateway and its request is to be built again (same SPIi, a fresh nonce). A REDIRECT
    that does not echo our nonce is dropped (someone who never saw our request); one we
    may not follow ends the IKE_SA."""
    notify = find_notify(payloads, NotifyType.REDIRECT)
    if notify is None:
        return False
    try:
        gw = decode_gateway(notify.data)
    except GatewayIdentityError as exc:
        raise DropPacket(f"malformed REDIRECT: {exc}") from None
    if not gw.nonce or gw.nonce != sa.nonce_i:
        raise DropPacket("REDIRECT without our nonce")
    target = _refusal(ctx, sa, gw, now)
    old = sa.path.remote.addr
    local = ctx.source_address(target) or sa.path.local.addr
    sa.path = Path(Endpoint(local, sa.conn.local_port), Endpoint(target, sa.conn.remote_port))
    sa.redirect.came_from = old
    sa.redirect.history = sa.redirect.followed(now)
    sa.nonce_i = b""  # a new exchange with another gateway: nothing of this one is reused
    ctx.touch(sa)
    ctx.emit(IkeSaRedirected(conn=sa.conn.name, ike_spi=sa.spi_str, gateway=target,
                             from_gateway=old, phase="ike_sa_init", new_ike_spi=sa.spi_str))
    return True


def _refusal(ctx: Context, sa: IkeSa, gw: GatewayIdentity, now: float) -> IPAddress:
    """The address to follow ``gw`` to; ExchangeAborted (and redirect_refused) when not."""
    reason = None
    if gw.address is None or not followable(gw.address):
        reason = "not_an_address"
    elif not sa.redirect.allows(now):
        reason = "loop_detected"
    if reason is not None or gw.address is None:
        shown = gw.fqdn or str(gw.address)
        ctx.emit(RedirectRefused(conn=sa.conn.name, ike_spi=sa.spi_str, gateway=shown,
                                 reason=reason or "not_an_address"))
        raise ExchangeAborted(f"REDIRECT to {shown} not followed: {reason}")
    return gw.address


# -- IKE_SA_INIT, responder --------------------------------------------------------------

def peer_supports(payloads: Sequence[Payload]) -> bool:
    return (find_notify(payloads, NotifyType.REDIRECT_SUPPORTED) is not None
            or find_notify(payloads, NotifyType.REDIRECTED_FROM) is not None)


def init_redirect(ctx: Context, policy: InitPolicy | None, msg: Message, path: Path,
                  ike_sas: int) -> list[Payload] | None:
    """The stateless REDIRECT answer to an IKE_SA_INIT request, when the policy sends
    the client elsewhere; None to serve it. Only a client that sent REDIRECT_SUPPORTED
    is redirected here: one that already carries REDIRECTED_FROM is admitted (no
    ping-pong between full gateways; its own loop limit is the backstop)."""
    if policy is None or find_notify(msg.payloads, NotifyType.REDIRECT_SUPPORTED) is None:
        return None
    nonce = find_payload(msg.payloads, Nonce)
    if nonce is None:
        return None
    target = policy(path, ike_sas)
    if target is None or not followable(target) or target == path.local.addr:
        return None
    spi = f"{msg.header.spi_i.hex()}_{bytes(8).hex()}"
    ctx.emit(ClientRedirected(conn="", ike_spi=spi, path=path, gateway=target))
    return [Notify(NotifyType.REDIRECT, encode_gateway(target, nonce.data))]


# -- an established IKE_SA ---------------------------------------------------------------

class RedirectTask(Task):
    """The gateway's INFORMATIONAL REDIRECT (§6): the client sets up a new IKE_SA at
    ``gateway`` and deletes this one."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, gateway: IPAddress | str) -> None:
        self.gateway = gateway
        """An address, or an FQDN the client resolves."""
        encode_gateway(gateway)  # a name that cannot be sent fails here, not in build

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        return [Notify(NotifyType.REDIRECT, encode_gateway(self.gateway))]

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        return Outcome.DONE


def can_redirect(sa: IkeSa) -> str | None:
    """Why the gateway cannot send ``sa`` a REDIRECT, or None."""
    if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
        return "not established"
    if sa.mobike_initiator:
        return "we are the client of this IKE_SA"
    if not sa.redirect.supported:
        return "the client did not announce REDIRECT_SUPPORTED"
    return None


def respond_redirect(ctx: Context, sa: IkeSa, msg: Message, now: float) -> None:
    """A REDIRECT in the gateway's INFORMATIONAL request: remembered on ``sa``; the new
    IKE_SA starts when no MOBIKE move is in flight (``redirect_follow.step``)."""
    notify = find_notify(msg.payloads, NotifyType.REDIRECT)
    if notify is None or sa.state == IkeState.DELETED:
        return
    try:
        gw = decode_gateway(notify.data)
    except GatewayIdentityError:
        _refused(ctx, sa, "?", "malformed")
        return
    shown = gw.fqdn or str(gw.address)
    state = sa.redirect
    if not sa.mobike_initiator:
        _refused(ctx, sa, shown, "not_initiator")
    elif gw.address is not None and not followable(gw.address):
        _refused(ctx, sa, shown, "not_an_address")
    elif state.successor is not None or state.target is not None or state.resolving:
        return  # already on its way
    elif not state.allows(now):
        _refused(ctx, sa, shown, "loop_detected")
    elif gw.address is None:  # an FQDN: the daemon resolves it, then redirect_resolved
        state.resolving, state.asked_at = shown, now
        ctx.emit(RedirectResolving(conn=sa.conn.name, ike_spi=sa.spi_str, gateway=shown))
    else:
        state.target, state.asked_at = gw.address, now


def follow_resolved(ctx: Context, sa: IkeSa, name: str, addresses: Sequence[IPAddress]
                    ) -> bool:
    """The daemon's addresses for the FQDN ``sa`` was redirected to: True when ``sa`` now
    has a target (``redirect_follow.step`` takes it on); none usable is refused."""
    state = sa.redirect
    if state.resolving != name:
        return False  # a stale answer: the SA was rekeyed away or redirected anew
    state.resolving = None
    if sa.state == IkeState.DELETED:
        return False
    target = pick_address(addresses, sa.path.remote.addr.version,
                          lambda a: ctx.source_address(a) is not None)
    if target is None:
        _refused(ctx, sa, name, "unresolved")
        return False
    state.target = target
    return True


def _refused(ctx: Context, sa: IkeSa, gateway: str, reason: str) -> None:
    ctx.emit(RedirectRefused(conn=sa.conn.name, ike_spi=sa.spi_str, gateway=gateway,
                             reason=reason))
