"""What the charon data-plane watch (``esp_watch``) and the sibling check
(``sibling_check``) ask of the VICI backend's glue (``backends.vici.mobility``).

A narrow interface instead of the whole controller: both modules are handed the glue
and call back only these; unit tests hand them a fake."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from ..backends.vici.mobility import TrackedSa
from ..backends.vici.session import ViciClient
from ..eventlog import EventLog
from ..mobike.events import MoveRequested
from ..net.monitor import NetlinkMonitor
from ..net.probes.icmp import IcmpProber
from ..types import Path


class WatchHost(Protocol):
    @property
    def now(self) -> float: ...
    @property
    def log(self) -> EventLog: ...
    @property
    def monitor(self) -> NetlinkMonitor: ...
    @property
    def prober(self) -> IcmpProber | None: ...
    @property
    def client(self) -> ViciClient: ...
    @property
    def sas(self) -> Mapping[str, TrackedSa]: ...

    def pump(self, sa: TrackedSa) -> None:
        """Let the IKE_SA's path manager act on what it was just told."""

    def next_wire_id(self) -> int:
        """A probe id in the prober's one id space."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
    def begin_move(self, sa: TrackedSa, event: MoveRequested) -> None: ...
    def data_path_works(self, ike_spi: str, path: Path) -> None: ...
    def prearm_roam(self, ike_spi: str, path: Path, reason: str) -> None: ...
