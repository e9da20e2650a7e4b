"""Deleting an IKE_SA while a request of ours is outstanding (``Engine.delete_ike``).

The DELETE may not overtake that request (window size 1, RFC 7296 §2.3): it waits
behind it, at most ``EngineSettings.delete_wait``. The request is resent at once, so an
answer the peer sent and the path lost comes back from its cache within a round trip.
Unanswered by then, the DELETE goes with the next message ID: a peer that took the
request (only its answer got lost) expects that ID and deletes the SA, one that did not
drops it, as it would a DELETE that never came. Bending the window only on the way out
is what tells a peer promptly that we stop (charon on shutdown sends no DELETE then).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ...types import Path
from ..context import Context
from ..events import ExchangeFailed
from ..ike_sa import IkeSa, IkeState
from .informational import DeleteIkeTask

Send = Callable[[Sequence[bytes], Path, IkeSa, float], None]
"""The engine's sending of one message (all its fragments) on a path."""


def queue_delete(ctx: Context, sa: IkeSa, now: float, send: Send) -> bool:
    """Queue the DELETE of ``sa``, first of all its work (the caller kicks); False when
    it is not established (ESTABLISHED or REKEYING): no DELETE to send."""
    if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
        return False
    sa.tasks.clear()
    sa.tasks.append(DeleteIkeTask())
    pending = sa.pending
    if pending is not None and not isinstance(pending.task, DeleteIkeTask):
        sa.delete_by = now + ctx.settings.delete_wait
        send(pending.datagrams, pending.path, sa, now)
    return True


def step(ctx: Context, sa: IkeSa, now: float, send: Send) -> IkeSa | None:
    """Before ``sa``'s next request: a waiting DELETE goes first once the request it
    waited for is answered or given up. Returns an IKE_SA to kick: the one an IKE_SA
    rekey made while the DELETE waited, whose DELETE is queued too."""
    if sa.delete_by is None:
        return None
    pending = sa.pending
    if pending is not None:
        if now < sa.delete_by:
            return None
        sa.pending = None
        sa.next_request_id += 1
        ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str,
                                exchange=pending.task.exchange.name,
                                reason="unanswered while deleting the IKE_SA"))
    sa.delete_by = None
    # Queued meanwhile (a rekey's DELETE of the old CHILD_SA): moot, the CHILD_SAs go too.
    sa.tasks = deque(t for t in sa.tasks if isinstance(t, DeleteIkeTask))
    successor = sa.lineage()[-1]
    if successor is sa or not queue_delete(ctx, successor, now, send):
        return None
    return successor
