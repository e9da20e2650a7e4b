"""The daemon's wiring of a data plane, over real loopback sockets with a fake engine:
ESP on the NAT-T port goes to the data plane and never to the engine, IKE behind the
non-ESP marker still goes to the engine, child_sa_deleted carries the data plane's
counters, status shows them, and lifetime requests reach the engine."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

from mobike_vici.config.model import Config
from mobike_vici.core.engine import IkeStatus
from mobike_vici.core.events import ChildSaDeleted, Event
from mobike_vici.daemon.control import JsonObject
from mobike_vici.daemon.framing import NON_ESP_MARKER
from mobike_vici.daemon.native import Daemon
from mobike_vici.types import Endpoint, Path
from tests.unit.daemon.fakes import SPI, FakeEngine, RecordingLog, free_port

V4 = ((socket.AF_INET, "0.0.0.0"),)


class FakeDataPlane:
    def __init__(self) -> None:
        self.host: Any = None
        self.esp: list[bytes] = []
        self.events: list[Event] = []
        self.closed = False
        self.arrived = asyncio.Event()

    def open(self, host: Any) -> None:
        self.host = host

    def close(self) -> None:
        self.closed = True

    def receive_udp(self, data: bytes, path: Path, now: float) -> None:
        raise AssertionError("the fast path should have taken it")

    def receive_esp(self, data: bytes, now: float) -> None:
        self.esp.append(data)
        self.arrived.set()

    def on_event(self, event: Event) -> Mapping[str, object]:
        self.events.append(event)
        return {"bytes_in": 1234, "replay_failures": 2} if isinstance(event, ChildSaDeleted) \
            else {}

    def counters(self) -> Mapping[int, Mapping[str, int]]:
        return {1: {"bytes_in": 5, "packets_in": 1}}

    def totals(self) -> JsonObject:
        return {"unknown_spi": 3}


class RekeyingEngine(FakeEngine):
    def __init__(self, local: Endpoint, peer: Endpoint) -> None:
        super().__init__(local, peer)
        self.rekeyed: list[int] = []
        self.status_calls = 0

    def status(self) -> list[IkeStatus]:
        self.status_calls += 1
        return super().status()

    def rekey_child(self, unique_id: int, now: float) -> None:
        self.rekeyed.append(unique_id)


def test_data_plane_wiring() -> None:
    async def main() -> None:
        ike_port, natt_port = free_port(), free_port()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        engine = RekeyingEngine(Endpoint.parse("127.0.0.1", ike_port),
                                Endpoint.parse("127.0.0.1", peer.getsockname()[1]))
        engine.add_sa()
        log = RecordingLog()
        plane = FakeDataPlane()
        daemon = Daemon(Config(), engine, log, ike_port=ike_port, natt_port=natt_port,
                        bind=V4, data_plane=plane)
        await daemon.start()
        try:
            assert plane.host is daemon
            assert daemon.natt_socket(socket.AF_INET) is not None
            esp = b"\x00\x00\x10\x00" + bytes(40)
            peer.sendto(esp, ("127.0.0.1", natt_port))
            async with asyncio.timeout(5):
                await plane.arrived.wait()
            assert plane.esp == [esp] and engine.received == []

            peer.sendto(NON_ESP_MARKER + b"hello", ("127.0.0.1", natt_port))
            async with asyncio.timeout(5):
                await engine.arrived.wait()
            assert [d for d, _, _ in engine.received] == [b"hello"]
            # The hot path never walks the SA table: the data plane follows events.
            assert engine.status_calls == 0

            engine.events.append(ChildSaDeleted(conn="home", ike_spi=SPI, child="net",
                                                unique_id=1, spi_in=1, spi_out=2,
                                                reason="deleted_by_peer"))
            daemon.child_request(1, 1)  # also flushes the engine's events
            assert engine.rekeyed == [1]
            deleted = log.named("child_sa_deleted")
            assert deleted and deleted[0]["bytes_in"] == 1234
            assert deleted[0]["reason"] == "deleted_by_peer"

            answer = daemon._control_request({"cmd": "status"})
            child = answer["ike_sas"][0]["children"][0]
            assert child["counters"] == {"bytes_in": 5, "packets_in": 1}
            assert answer["esp"] == {"unknown_spi": 3}
        finally:
            await daemon.close()
            peer.close()
        assert plane.closed

    asyncio.run(main())


def test_daemon_says_its_data_plane_is_userspace() -> None:
    """The native daemon has one data plane on every kernel; the event stream says so once."""

    async def main() -> None:
        engine = FakeEngine(Endpoint.parse("127.0.0.1", free_port()),
                            Endpoint.parse("127.0.0.1", free_port()))
        log = RecordingLog()
        plane = FakeDataPlane()
        daemon = Daemon(Config(), engine, log, ike_port=free_port(), natt_port=free_port(),
                        bind=V4, data_plane=plane, net_monitor=False)
        await daemon.start()
        try:
            [selected] = log.named("data_plane_selected")
            assert selected["data_plane"] == "userspace" and "TUN" in selected["reason"]
            assert daemon.data_plane is plane and plane.host is daemon
            assert daemon.esp_handler is not None
        finally:
            await daemon.close()

    asyncio.run(main())
