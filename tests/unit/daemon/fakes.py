"""A scripted stand-in for the native engine, and an event log tests can wait on."""

from __future__ import annotations

import asyncio
import io
import socket
from collections import deque
from collections.abc import Mapping

from mobike_vici.core.engine import ChildStatus, Datagram, IkeStatus
from mobike_vici.core.events import Event, ExchangeFailed, IkeSaDeleted, PacketDropped
from mobike_vici.daemon.framing import KEEPALIVE
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.types import Endpoint, Path

SPI = "0123456789abcdef_fedcba9876543210"


class FakeEngine:
    """Answers a tiny script instead of IKE.

    ``PING<x>`` -> ``PONG<x>`` on the same path; ``KA`` -> a keepalive on the same path;
    ``boom`` raises; ``DELETE-ACK`` removes every SA. ``initiate`` sends ``INIT <conn>``
    from ``local`` to ``peer``; ``delete_ike`` sends ``DELETE <spi>`` on the SA's path.
    """

    def __init__(self, local: Endpoint, peer: Endpoint) -> None:
        self.local = local
        self.peer = peer
        self.received: list[tuple[bytes, Path, float]] = []
        self.arrived = asyncio.Event()
        self.initiated: list[tuple[str, str | None, float]] = []
        self.eager: list[bool] = []
        """Per initiate: whether the peer was known to be restarting."""
        self.outbox: list[Datagram] = []
        self.events: deque[Event] = deque()
        self.timer: float | None = None
        self.timer_calls: list[float] = []
        self.timer_raises = False
        self.deleted: list[str] = []
        self.sas: dict[str, IkeStatus] = {}

    def add_sa(self, spi: str = SPI) -> IkeStatus:
        child = ChildStatus(name="net", unique_id=1, state="INSTALLED", spi_in=0xC1A2B3,
                            spi_out=0xDEADBEEF, local_ts=("10.3.0.1/32",),
                            remote_ts=("10.2.0.0/16",), proposal="aes128gcm16")
        sa = IkeStatus(conn="home", ike_spi=spi, state="ESTABLISHED", initiator=True,
                       path=Path(self.local, self.peer), local_id="moon", remote_id="sun",
                       proposal="aes128-sha256-x25519", virtual_ips=("10.3.0.1",),
                       children=(child,))
        self.sas[spi] = sa
        return sa

    def initiate(self, conn: str, child: str | None, now: float, *,
                 eager: bool = False) -> None:
        self.initiated.append((conn, child, now))
        self.eager.append(eager)
        self.outbox.append(Datagram(b"INIT " + conn.encode(), Path(self.local, self.peer)))

    def receive_datagram(self, data: bytes, path: Path, now: float) -> None:
        self.received.append((data, path, now))
        self.arrived.set()
        if data == b"boom":
            raise ValueError("malformed")
        if data.startswith(b"GARBAGE"):
            self.events.append(PacketDropped(path=path, reason="unknown SPI"))
        elif data.startswith(b"STALE"):
            self.events.append(PacketDropped(path=path, reason="message ID outside the window",
                                             authenticated=True))
        if data.startswith(b"PING"):
            self.outbox.append(Datagram(b"PONG" + data[4:], path))
        elif data == b"KA":
            self.outbox.append(Datagram(KEEPALIVE, path, keepalive=True))
        elif data == b"DELETE-ACK":
            for spi, sa in list(self.sas.items()):
                del self.sas[spi]
                self.events.append(IkeSaDeleted(conn=sa.conn, ike_spi=spi, path=sa.path,
                                                reason="deleted_locally"))

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self.outbox = self.outbox, []
        return out

    def set_wall_clock(self, unix_minus_now: float) -> None:
        pass

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        if self.timer_raises:
            raise RuntimeError("engine bug")
        self.timer = None
        self.events.append(ExchangeFailed(conn="home", ike_spi=SPI, exchange="IKE_SA_INIT",
                                          reason="retransmits_exceeded"))

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None

    def delete_ike(self, ike_spi: str, now: float) -> None:
        self.deleted.append(ike_spi)
        sa = self.sas[ike_spi]
        self.outbox.append(Datagram(b"DELETE " + ike_spi.encode(), sa.path))

    def status(self) -> list[IkeStatus]:
        return list(self.sas.values())


class RecordingLog(EventLog):
    """The real JSON event log, plus a record of (name, fields) that tests can await."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        super().__init__(make_logger(self.stream))
        self.records: list[tuple[str, dict[str, object]]] = []
        self._changed = asyncio.Event()

    def write(self, level: str, event_name: str, fields: Mapping[str, object]) -> None:
        super().write(level, event_name, fields)
        self.records.append((event_name, dict(fields)))
        self._changed.set()

    def named(self, name: str) -> list[dict[str, object]]:
        return [fields for event, fields in self.records if event == name]

    async def wait_for(self, name: str, timeout: float = 5.0) -> dict[str, object]:
        async with asyncio.timeout(timeout):
            while not self.named(name):
                self._changed.clear()
                await self._changed.wait()
        return self.named(name)[0]


def free_port() -> int:
    """A UDP port free on both IPv4 and IPv6 wildcards (re-used right away by the test)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
            s4.bind(("0.0.0.0", 0))
            port: int = s4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s6.bind(("::", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port")
