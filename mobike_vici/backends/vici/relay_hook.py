"""What the VICI glue (``mobility``) tells the relay of charon's requests held on a path
it is moved from (``daemon.ike_relay.IkeRelay``); ``NoRelay`` until the controller has
opened its socket."""

from __future__ import annotations

from typing import Protocol

from ...types import Path


class RequestRelay(Protocol):
    def relay(self, conn: str, ike_spi: str, target: Path, left: Path) -> None: ...
    def stop(self, conn: str) -> None: ...
    def retire(self, conn: str) -> None: ...
    def forget(self, ike_spi: str) -> None: ...


class NoRelay:
    """No packet socket (no CAP_NET_RAW, a unit test): charon retransmits by itself."""

    def relay(self, conn: str, ike_spi: str, target: Path, left: Path) -> None:
        return None

    def stop(self, conn: str) -> None:
        return None

    def retire(self, conn: str) -> None:
        return None

    def forget(self, ike_spi: str) -> None:
        return None
