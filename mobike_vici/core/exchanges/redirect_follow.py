"""The client's side of an INFORMATIONAL REDIRECT (RFC 5685 §6), make-before-break: a new
IKE_SA with the same connection and CHILD_SAs is set up at the new gateway
(REDIRECTED_FROM in its IKE_SA_INIT) while the old one keeps carrying traffic; only when
the new one and all its CHILD_SAs are up is the old one deleted. A new IKE_SA that fails
leaves the old one as it was.

MOBIKE and redirects never race: a REDIRECT that arrives while an address update or a
return routability check of the old IKE_SA is in flight waits for it.
"""

from __future__ import annotations

from ...config.model import ChildConfig
from ...types import Endpoint, Path
from ..context import Context
from ..events import IkeSaRedirected, RedirectRefused
from ..identity import is_any_identity
from ..ike_sa import IkeSa, IkeState
from ..redirects import RedirectState
from .base import Task
from .create_child import ChildCreateTask
from .ike_auth import IkeAuthTask
from .ike_init import ZERO_SPI, IkeInitTask
from .informational import DeleteIkeTask
from .mobike import MoveTask, RoutabilityTask


def step(ctx: Context, sa: IkeSa, now: float) -> list[IkeSa]:
    """Called each time the engine kicks ``sa``: start a waiting redirect, or finish one.
    New IKE_SAs go to ``ctx.new_sas``; the IKE_SAs returned are to be kicked."""
    state = sa.redirect
    if (state.target is not None and state.successor is None
            and sa.state == IkeState.ESTABLISHED and not _moving(sa)):
        new = _successor(ctx, sa, now)
        ctx.new_sas.append(new)
        state.successor = new.our_spi
        return []
    if (state.replaces is not None and sa.state == IkeState.ESTABLISHED
            and sa.pending is None and not sa.tasks):
        return _finish(ctx, sa, now)
    return []


def abandoned(ctx: Context, sa: IkeSa) -> None:
    """``sa`` is going: if it was a redirect's new IKE_SA, the old one stays (and may be
    redirected again)."""
    replaces = sa.redirect.replaces
    if replaces is None:
        return
    sa.redirect.replaces = None
    old = ctx.sas.get(replaces)
    if old is None:
        return
    old = old.lineage()[-1]
    gateway = str(old.redirect.target or sa.path.remote.addr)
    old.redirect.target = old.redirect.successor = None
    ctx.touch(old)
    ctx.emit(RedirectRefused(conn=old.conn.name, ike_spi=old.spi_str, gateway=gateway,
                             reason="new_ike_sa_failed"))


def _moving(sa: IkeSa) -> bool:
    moves = (MoveTask, RoutabilityTask)
    pending = sa.pending
    if pending is not None and isinstance(pending.task, moves):
        return not (isinstance(pending.task, MoveTask) and pending.task.failed is not None)
    return any(isinstance(t, moves) for t in sa.tasks)


def _successor(ctx: Context, old: IkeSa, now: float) -> IkeSa:
    target = old.redirect.target
    assert target is not None
    conn = old.conn
    local = ctx.source_address(target) or old.path.local.addr
    new = IkeSa(conn=conn, initiator=True, spi_i=ctx.new_ike_spi(), spi_r=ZERO_SPI,
                path=Path(Endpoint(local, conn.local_port), Endpoint(target, conn.remote_port)),
                created=now, last_received=now, last_sent=now)
    new.redirect = RedirectState(history=old.redirect.followed(now),
                                 came_from=old.path.remote.addr, replaces=old.our_spi,
                                 peer_id=old.remote_id)
    children = _children(old)
    tasks: list[Task] = [IkeInitTask(), IkeAuthTask(children[0] if children else None)]
    tasks += [ChildCreateTask(c) for c in children[1:]]
    new.tasks.extend(tasks)
    return new


def _children(sa: IkeSa) -> list[ChildConfig]:
    """The CHILD_SA configs the old IKE_SA carries, once each, in its order."""
    seen: dict[str, ChildConfig] = {}
    for child in sa.children.values():
        seen.setdefault(child.config.name, child.config)
    return list(seen.values())


def _finish(ctx: Context, new: IkeSa, now: float) -> list[IkeSa]:
    replaces = new.redirect.replaces
    assert replaces is not None
    new.redirect.replaces = None
    old = ctx.sas.get(replaces)
    if old is None:
        return []
    old = old.lineage()[-1]
    gateway = new.path.remote.addr
    if (is_any_identity(_remote_pattern(new)) and new.redirect.peer_id
            and new.remote_id != new.redirect.peer_id):
        # The configured remote identity accepts anyone: the new gateway must then be
        # who the old one was, or a redirect could hand the client to any peer.
        old.redirect.target = old.redirect.successor = None
        ctx.touch(old)
        ctx.emit(RedirectRefused(conn=old.conn.name, ike_spi=old.spi_str,
                                 gateway=str(gateway), reason="identity_changed"))
        new.tasks.append(DeleteIkeTask("redirect_identity_changed"))
        return [new]
    ctx.emit(IkeSaRedirected(conn=old.conn.name, ike_spi=old.spi_str,
                             new_ike_spi=new.spi_str, gateway=gateway,
                             from_gateway=old.path.remote.addr, phase="established",
                             outage=max(0.0, now - old.redirect.asked_at)))
    old.redirect.target = None
    if old.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
        old.tasks.clear()
        old.tasks.append(DeleteIkeTask("redirected"))
        ctx.touch(old)
        return [old]
    return []


def _remote_pattern(sa: IkeSa) -> str | None:
    return sa.conn.remote[0].id if sa.conn.remote else None
