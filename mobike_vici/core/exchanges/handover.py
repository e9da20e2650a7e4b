"""Moving CHILD_SAs from a rekeyed IKE_SA to its successor (RFC 7296 §2.18)."""

from __future__ import annotations

from ..child_sa import ChildState
from ..context import Context
from ..events import IkeSaRekeyed
from ..ike_sa import IkeSa, IkeState
from .base import Task
from .mobike import MoveTask


def hand_over(ctx: Context, old: IkeSa, new: IkeSa, now: float) -> None:
    """Move the CHILD_SAs and leases to ``new``; ``old`` waits for its Delete.

    When ``new`` was itself rekeyed meanwhile (a collision resolved late), its
    newest successor takes them.
    """
    new = new.lineage()[-1]
    ctx.touch(old)
    ctx.touch(new)
    new.virtual_ips += tuple(v for v in old.virtual_ips if v not in new.virtual_ips)
    new.leases += old.leases
    old.leases = ()
    new.children.update(old.children)
    old.children = {}
    old.successor = new
    old.set_state(IkeState.REKEYED)
    old.rekey_at = None
    old.rekeyed = True
    # Long enough for the peer to retransmit a request whose answer it missed.
    old.retire_at = now + ctx.settings.retransmit.give_up_after()
    ctx.emit(IkeSaRekeyed(conn=old.conn.name, ike_spi=old.spi_str, new_ike_spi=new.spi_str))
    if new.mobike and new.mobike_initiator and new.nat_local and new.natt_supported:
        # The peer's NAT hash of us changes with the SPIs, so no check can tell whether
        # the NAT rebound around the rekey (RFC 4555 §3.8); one that rebound just before
        # it left the peer's ESP going to the old public port (soak: 35.8 s). An update
        # on the same path makes the peer follow the mapping as it is now (charon
        # changes nothing when it did not change), and its answer's NAT detection is
        # the new IKE_SA's baseline.
        new.tasks.append(MoveTask(new.path, new.path, None))


def migrate_tasks(old: IkeSa, tasks: list[Task]) -> None:
    """Re-queue CHILD_SA work that ``old`` can no longer carry on its successor.

    A Delete is simply sent again there (the peer answers it even for SPIs it
    already dropped); a CHILD_SA rekey starts over.
    """
    from .create_child import ChildCreateTask, ChildRekeyTask  # create_child imports us
    from .informational import DeleteChildTask

    target = old.lineage()[-1]
    if target is old or target.state in (IkeState.DELETED, IkeState.DELETING):
        return
    for task in tasks:
        if isinstance(task, ChildCreateTask):
            target.tasks.append(ChildCreateTask(task.config))
        elif isinstance(task, DeleteChildTask):
            target.tasks.append(DeleteChildTask(task.unique_ids, task.reason))
        elif isinstance(task, ChildRekeyTask):
            holder = target.holder_of(task.unique_id)
            if holder is not None:
                child = holder.children[task.unique_id]
                if child.state == ChildState.REKEYING:
                    child.state = ChildState.INSTALLED
                target.tasks.append(ChildRekeyTask(task.unique_id))
