"""The native IKEv2 engine: every IKE_SA of one daemon, behind one sans-I/O interface.

Model: aioquic's QuicConnection. The caller feeds datagrams and the clock in and
takes datagrams, one timer deadline and events out. No sockets, asyncio, clock
or OS randomness in here.

STUB: the API below is the contract; the bodies are being written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config.model import Config
from ..types import IPAddress, Path
from .events import Event

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Datagram:
    """An IKE message (without the non-ESP marker) or a NAT-T keepalive to send on ``path``."""

    data: bytes
    path: Path
    keepalive: bool = False


@dataclass(frozen=True, slots=True)
class ChildStatus:
    name: str
    unique_id: int
    state: str
    spi_in: int
    spi_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    proposal: str


@dataclass(frozen=True, slots=True)
class IkeStatus:
    conn: str
    ike_spi: str
    state: str
    initiator: bool
    path: Path
    local_id: str
    remote_id: str
    proposal: str
    virtual_ips: tuple[str, ...]
    children: tuple[ChildStatus, ...]


class Engine:
    def __init__(
        self,
        config: Config,
        random_bytes: RandomBytes,
        source_address: Callable[[IPAddress], IPAddress | None],
    ) -> None:
        """``source_address(remote)`` is the route lookup the daemon does for us
        (the kernel's choice of source address toward ``remote``), used when a
        connection's local_addrs is %any."""
        raise NotImplementedError

    def initiate(self, conn: str, child: str | None, now: float) -> None:
        """Start an IKE_SA for ``conn`` (and its CHILD_SA ``child``)."""
        raise NotImplementedError

    def receive_datagram(self, data: bytes, path: Path, now: float) -> None:
        """Feed one IKE message (non-ESP marker already stripped) received on ``path``."""
        raise NotImplementedError

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        raise NotImplementedError

    def get_timer(self) -> float | None:
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        raise NotImplementedError

    def next_event(self) -> Event | None:
        raise NotImplementedError

    def rekey_ike(self, ike_spi: str, now: float) -> None:
        raise NotImplementedError

    def rekey_child(self, unique_id: int, now: float) -> None:
        raise NotImplementedError

    def delete_ike(self, ike_spi: str, now: float) -> None:
        raise NotImplementedError

    def delete_child(self, unique_id: int, now: float) -> None:
        raise NotImplementedError

    def status(self) -> list[IkeStatus]:
        raise NotImplementedError
