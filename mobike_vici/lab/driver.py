"""What a handover test or bench does to a running mobile lab, whatever runs at its ends:
a fault on an uplink, then a wait for the traffic or the SA to come back.

Each fault returns the CLOCK_MONOTONIC time it took effect, taken when the command that
injected it returned, so an outage measured from it errs short by that command's own
latency (a few ms). One driver serves the handover lab (``lab/handover.py``), the
controller's lab and the benches built on either.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod

from mobike_vici.lab.netns import LabError
from mobike_vici.lab.topology import Mobile, source_routes


class UplinkDriver(ABC):
    """Faults on mob's uplinks and the waits that follow them.

    ``lab_routes``: charon runs in mob and the lab keeps its per-uplink source tables
    (our daemon keeps its own), so a link that comes back needs them again."""

    topo: Mobile
    lab_routes: bool

    @abstractmethod
    def mob_local(self) -> str | None:
        """The mobile side's current IKE local address (no port)."""

    @abstractmethod
    def outage_after(self, fault: float) -> float | None:
        """Seconds from ``fault`` to the traffic's first arrival after it; None: none yet."""

    # -- faults ---------------------------------------------------------------------------

    def link_down(self, index: int) -> float:
        self.topo.link_down(index)
        return time.monotonic()

    def link_up(self, index: int) -> float:
        self.topo.link_up(index)
        if self.lab_routes:
            source_routes(self.topo, index)
        return time.monotonic()

    def kill_silently(self, index: int) -> float:
        self.topo.kill_silently(index)
        return time.monotonic()

    def revive(self, index: int) -> float:
        self.topo.revive(index)
        return time.monotonic()

    def kill_family(self, family: int) -> float:
        self.topo.kill_family(family)
        return time.monotonic()

    # -- waits ----------------------------------------------------------------------------

    def wait_resumed(self, after: float, timeout: float) -> float | None:
        """The outage from ``after`` (see ``outage_after``); None when the traffic did
        not come back within ``timeout`` of ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.outage_after(after)
            if got is not None and got <= timeout:
                return got
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def wait_local(self, addr: str, timeout: float) -> bool:
        """Whether the mobile side's IKE_SA sits on ``addr`` within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(LabError, KeyError, IndexError, ValueError,
                                     StopIteration):
                if self.mob_local() == addr:
                    return True
            time.sleep(0.1)
        return False
