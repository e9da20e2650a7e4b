"""Short full collections: what start-up built leaves the cyclic collector's walk.

After start-up a daemon holds some 56 000 objects the cyclic garbage collector tracks
(modules, classes, pyroute2's message tables, the config), nearly all kept for its
whole life. CPython's full (generation 2) collection walks every one of them: 33-56 ms
on a loaded two-core host, and allocation triggers it, so it comes most often right
when a handover allocates. On the native daemon the loop, and with it the tunnel's
packets, stood still that long: some of the soak's longest link-down outages.

``freeze_startup`` runs one full collection (so no garbage is frozen) and moves what
survives into the permanent generation (``gc.freeze``): later full collections walk
only what was built since, a few thousand objects. Frozen objects are still freed by
reference counting; only a reference cycle among them, dropped later, would stay. So
it runs before the connections are initiated: an IKE_SA's objects do form cycles and do
go away. (A peer's IKE_SA_INIT taken while the control socket opens, just before, would
be frozen with start-up: that one IKE_SA's objects could stay, once.)
"""

from __future__ import annotations

import gc


def freeze_startup() -> int:
    """Collect, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcFreezeService:
    """``freeze_startup`` as a service of the native daemon (``native_api.Service``),
    started after the others and before the connections are initiated."""

    def __init__(self) -> None:
        self.frozen = 0

    def start(self) -> None:
        self.frozen = freeze_startup()

    async def close(self) -> None:
        """Nothing to undo: the frozen objects live as long as the process."""

    def reload(self, config: object) -> None:
        """Nothing in the config concerns it."""
