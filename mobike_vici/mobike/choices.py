"""The operator's runtime choices (``prefer``, ``move``) over a connection's IKE_SAs.

Both backends keep one path manager per IKE_SA; a choice applies to every live IKE_SA
of the connection, and is remembered per connection so that its later IKE_SAs (a
reconnect, a new client) start with it. Pure: the caller hands over the managers and
says how to act on one it touched (mark it for the next engine pass, or pump it now).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..types import IPAddress
from .manager import PathManager

Touched = Callable[[str], None]
"""Called with the IKE_SA name of each manager a choice was applied to, refused or not."""


class OperatorChoices:
    def __init__(self) -> None:
        self._preferred: dict[str, IPAddress] = {}  # by conn; only configured names

    def prefer(self, conn: str, managers: Mapping[str, PathManager],
               local: IPAddress | None, now: float, touched: Touched) -> str | None:
        """Prefer ``local`` for every IKE_SA in ``managers`` (None: clear) and for the
        connection's later ones; why the first manager refused, else None."""
        for spi, manager in managers.items():
            refused = manager.set_preferred_local(local, now)
            touched(spi)
            if refused is not None:
                return refused
        if local is None:
            self._preferred.pop(conn, None)
        else:
            self._preferred[conn] = local
        return None

    def move(self, conn: str, managers: Mapping[str, PathManager], local: IPAddress,
             now: float, touched: Touched) -> str | None:
        """Move every IKE_SA in ``managers`` to ``local`` now, and keep preferring it."""
        if not managers:
            return "no_ike_sa"
        for spi, manager in managers.items():
            refused = manager.request_move(local, now)
            touched(spi)
            if refused is not None:
                return refused
        self._preferred[conn] = local
        return None

    def inherit(self, conn: str, manager: PathManager, now: float) -> None:
        """A new IKE_SA of ``conn``: it starts with the operator's preference, if any."""
        preferred = self._preferred.get(conn)
        if preferred is not None:
            manager.set_preferred_local(preferred, now, source="inherited")
