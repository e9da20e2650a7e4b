"""What the native daemon (``daemon.native``) uses of its parts, as protocols (tests pass
fakes), and the small pure decisions it makes about a datagram or a deleted IKE_SA."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..config.model import CloseAction, Config, DpdAction
from ..core.engine import Datagram, IkeStatus
from ..core.events import Event, IkeSaDeleted
from ..types import Path
from .control import JsonObject


class EngineApi(Protocol):
    """What the daemon uses of ``core.engine.Engine`` (tests pass a fake)."""

    def initiate(self, conn: str, child: str | None, now: float, *,
                 eager: bool = False) -> None: ...
    def receive_datagram(self, data: bytes, path: Path, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[Datagram]: ...
    def get_timer(self) -> float | None: ...
    def set_wall_clock(self, unix_minus_now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Event | None: ...
    def delete_ike(self, ike_spi: str, now: float) -> None: ...
    def status(self) -> list[IkeStatus]: ...


EspHandler = Callable[[bytes, Path, float], None]
"""Takes one ESP-in-UDP datagram received on ``path`` (the data plane's hook)."""

EventHook = Callable[[Event], None]


class Service(Protocol):
    """Something run beside the daemon (the pool): started once it is up, closed with it,
    handed each config a SIGHUP applies."""

    def start(self) -> None: ...
    async def close(self) -> None: ...
    def reload(self, config: Config) -> None: ...


class DataPlaneApi(Protocol):
    """What the daemon uses of a userspace data plane (``daemon.esp_io.UserspaceEsp``)."""

    def open(self, host: Any) -> None: ...
    def close(self) -> None: ...
    def receive_udp(self, data: bytes, path: Path, now: float) -> None: ...
    def receive_esp(self, data: bytes, now: float) -> None: ...
    def on_event(self, event: Event) -> Mapping[str, object]: ...
    def counters(self) -> Mapping[int, Mapping[str, int]]: ...
    def totals(self) -> JsonObject: ...



NETLINK_RCVBUF_ENV = "MOBIKE_VICI_TEST_NETLINK_RCVBUF"
"""Test hook: the netlink monitor's receive buffer in bytes (tiny, to force ENOBUFS)."""


def opens_ike_sa(data: bytes) -> bool:
    """An IKE_SA_INIT request (RFC 7296 3.1: responder SPI zero, exchange 34, no R flag)."""
    return (len(data) >= 28 and data[8:16] == bytes(8) and data[18] == 34
            and not data[19] & 0x20)


def restart_children(config: Config, gone: IkeSaDeleted,
                     live: Sequence[IkeStatus]) -> list[str]:
    """Names of the children to initiate again after the IKE_SA ``gone`` went away;
    none when another established IKE_SA of its connection (in ``live``) carries on."""
    try:
        children = config.connection(gone.conn).children
    except KeyError:
        return []
    if any(ike.conn == gone.conn and ike.ike_spi != gone.ike_spi
           and ike.state == "ESTABLISHED" for ike in live):
        return []
    if gone.reason == "deleted_by_peer":
        return [c.name for c in children if c.close_action == CloseAction.START]
    if gone.reason in ("dpd_timeout", "retransmits_exceeded", "dead_after", "peer_lost_state"):
        return [c.name for c in children if c.dpd_action == DpdAction.RESTART]
    return []


def netlink_rcvbuf(environ: Mapping[str, str]) -> int | None:
    value = environ.get(NETLINK_RCVBUF_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None
