"""The one shape both backends' mobility glue has: ``backends.native.Mobility`` (our
engine probes and moves) and ``backends.vici.mobility.ViciMobility`` (charon does the
IKE work, steered by routes). Each keeps one ``mobike.manager.PathManager`` per IKE_SA
it may move; the daemons around them (``daemon.native``, ``daemon.controller``) reach
them through this for the operator (``daemon.operator``), SIGHUP (``daemon.reload``)
and ``status``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config.mobike import MobikePolicy
from ..mobike.manager import PathManager
from ..types import IPAddress


class MobilityBackend(Protocol):
    def manager(self, ike_spi: str) -> PathManager | None:
        """The IKE_SA's path manager, None when it has none (not ours to move)."""

    def conn_spis(self, conn: str) -> list[str]:
        """The IKE_SAs of ``conn`` that have a path manager."""

    def set_policy(self, policy: MobikePolicy, now: float) -> None:
        """A reloaded ``mobike { }`` policy for every path manager, live ones included."""

    def prefer(self, conn: str, local: IPAddress | None, now: float) -> str | None:
        """The operator's preferred local address (None clears); why it was refused."""

    def move(self, conn: str, local: IPAddress, now: float) -> str | None:
        """The operator's move of ``conn`` to ``local`` now; why it was refused."""


if TYPE_CHECKING:  # mypy holds both backends to the protocol
    from .native import Mobility
    from .vici.mobility import ViciMobility

    def _both(native: Mobility, vici: ViciMobility) -> tuple[MobilityBackend, ...]:
        return native, vici
