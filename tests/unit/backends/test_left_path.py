"""The pin on the path a move left goes once ESP travels the new path both ways.

Soak (seed 51, a `loss` fault, 3.92 s): charon returned from m1's IPv4 behind the NAT to
m0's; the gateway rekeyed the CHILD_SA, charon answered and installed the new inbound
half, the gateway's ESP came on m0 at once and the pin went 106 ms after the move. The
gateway's DELETE of the old CHILD_SA was lost, and charon, the rekey's responder, installs
the new outbound half only when that DELETE comes: until its retransmission 4 s later our
ESP left from m1's address on m0's route and was dropped. Real asyncio, short bounds."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Coroutine
from ipaddress import ip_address
from typing import Any

import pytest

from mobike_vici.backends.vici import IkeSaInfo
from mobike_vici.backends.vici import left_path as lp
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.types import Endpoint, Path

SPI = "1111111111111111_2222222222222222"
M1, M0, GW = ip_address("10.2.0.2"), ip_address("10.1.0.2"), ip_address("192.0.2.2")
LEFT = Path(Endpoint(M1, 4500), Endpoint(GW, 4500))
NEW = Path(Endpoint(M0, 4500), Endpoint(GW, 4500))


class _Plane:
    """When ESP last travelled charon's current path, each way (None: not since the move)."""

    def __init__(self) -> None:
        self.inbound: float | None = None
        self.outbound: float | None = None

    def last_inbound(self, spi: str) -> float | None:
        return self.inbound

    def last_outbound(self, spi: str) -> float | None:
        return self.outbound


class _Pins:
    def __init__(self) -> None:
        self.pinned: set[tuple[object, object]] = set()

    def pin(self, src: object, peer: object, *, via: object, dev: str) -> bool:
        self.pinned.add((src, peer))
        return True

    def unpin(self, src: object, peer: object) -> bool:
        self.pinned.discard((src, peer))
        return True


class _Host:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.log = EventLog(make_logger(self.out))
        info = IkeSaInfo(conn="home", ike_spi=SPI, unique_id=1, state="ESTABLISHED",
                         path=NEW, initiator=True, local_id="m", remote_id="g")
        self.sas: dict[str, Any] = {SPI: info}
        self.data_plane = _Plane()
        self.tasks: list[asyncio.Task[Any]] = []

    async def executor(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def released(self) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.out.getvalue().splitlines())
                if e["event"] == "left_path_released"]


def _run(outbound_after: float | None) -> tuple[list[dict[str, Any]], bool]:
    """A move from LEFT held; the peer's ESP on the new path at once, ours after
    ``outbound_after`` seconds (None: never). The release events, and whether the pin
    was still there 0.15 s in."""
    async def main() -> tuple[list[dict[str, Any]], bool]:
        host = _Host()
        paths = lp.LeftPaths(host, asyncio.Lock())  # type: ignore[arg-type]
        pins = _Pins()
        paths._pins = pins  # type: ignore[assignment]
        await paths.pin(host.sas[SPI], LEFT, ("m1", ip_address("10.2.0.1")))
        host.data_plane.inbound = 1.0
        paths.hold("home")
        if outbound_after is not None:
            await asyncio.sleep(outbound_after)
            host.data_plane.outbound = 2.0
        await asyncio.sleep(0.15 - (outbound_after or 0.0))
        held = (M1, GW) in pins.pinned
        await asyncio.gather(*host.tasks)
        return host.released(), held

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def _short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp, "LEFT_PATH_POLL", 0.005)
    monkeypatch.setattr(lp, "LEFT_PATH_HOLD", 0.6)


def test_the_peers_esp_alone_keeps_the_pin() -> None:
    """Our ESP still on the old CHILD_SA: the pin stays, to the bound."""
    released, held = _run(outbound_after=None)
    assert held, "the pin went while our ESP still left from the old source"
    assert [e["reason"] for e in released] == ["bound"]


def test_esp_both_ways_on_the_new_path_releases_the_pin() -> None:
    released, held = _run(outbound_after=0.05)
    assert not held
    assert [e["reason"] for e in released] == ["esp_on_new_path"]
    assert released[0]["local"] == str(M1) and released[0]["remote"] == str(GW)
