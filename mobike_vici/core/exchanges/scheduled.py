"""The exchanges an IKE_SA's own clock starts: CHILD_SA expiry and rekey, IKE rekey,
and a liveness check after ``dpd_delay`` of silence. Queued here; the engine sends."""

from __future__ import annotations

from ..child_sa import ChildState
from ..ike_sa import IkeSa
from .create_child import ChildRekeyTask, IkeRekeyTask
from .informational import DeleteChildTask, LivenessTask


def queue_due(sa: IkeSa, now: float) -> None:
    """Queue on the established ``sa`` every exchange whose time has come (each once:
    its deadline is cleared)."""
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
