"""Repairs of charon's CHILD_SAs it does not make itself. After charon moved the IKE_SA,
our ESP that still leaves by the path it left counts as sent for the move's check:
nothing back on the new path within the bound is a repair. A rekey charon reported and
then undid is repaired by a rekey from our side.

Soak (seed 41, a 2.03 s blackhole): charon moved from m0's IPv6 to m1's IPv4 behind the
NAT; over kernel-libipsec its CHILD_SA cannot change encapsulation in place, so our ESP
kept leaving from m0's IPv6 address until the new CHILD_SA's outbound half was installed,
which waited for the gateway's DELETE of the old one, and charon had dropped that DELETE.
The check saw nothing either way on the new path and called the tunnel idle; the outage
lasted until the blackhole healed. Driven on a fake clock: the loop's timers are not
waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

from mobike_vici.backends.vici import ChildSaInfo
from mobike_vici.eventlog import EventLog, make_logger

from ..backends.test_vici_steer import GW4, M0_V4, M1_V4, _p
from .test_esp_watch_roam import SPI, _plane
from .test_esp_watch_roam import _Ctl as _WatchCtl

NEW = _p(M1_V4, GW4)
Calls = list[tuple[str, dict[str, str]]]


def _with_child(ctl: _WatchCtl, unique_id: int, spi_in: str, spi_out: str
                ) -> tuple[ChildSaInfo, Calls]:
    """charon lists one CHILD_SA of the IKE_SA; its VICI calls are recorded (answered)."""
    calls: Calls = []

    async def call(command: str, message: dict[str, str]) -> dict[str, str]:
        calls.append((command, message))
        return {"success": "yes"}

    child = ChildSaInfo(name="net", unique_id=unique_id, state="INSTALLED", mode="TUNNEL",
                        protocol="ESP", encap=True, spi_in=spi_in, spi_out=spi_out,
                        local_ts=("10.99.0.1/32",), remote_ts=("10.88.0.0/24",))
    sa = ctl.sas[SPI]
    sa.info = dataclasses.replace(sa.info, children=(child,))
    ctl.client.table = {SPI: sa.info}
    ctl.client.call = call  # type: ignore[attr-defined]
    return child, calls


def _after_move(ours_left_behind: bool) -> list[dict[str, object]]:
    """A two-way flow on m0 for a second, then charon moves to m1: nothing comes back,
    and ours leaves every 10 ms by m0 (``ours_left_behind``) or not at all."""
    async def main() -> list[dict[str, object]]:
        ctl = _WatchCtl()
        out = io.StringIO()
        ctl.log = EventLog(make_logger(out))
        ctl.data_path_works = lambda *a: None  # type: ignore[attr-defined]
        plane = _plane(ctl)
        sa = ctl.sas[SPI]
        plane.track(sa)
        for i in range(100):
            ctl.t = 100.0 + i * 0.01
            plane._on_esp(M0_V4, GW4, False)
            plane._on_esp(M0_V4, GW4, True)
        ctl.t = 101.0
        sa.info = dataclasses.replace(sa.info, path=NEW)
        plane.moved(sa)
        for step in range(1, 600):
            ctl.t = 101.0 + step * 0.001
            if ours_left_behind and step % 10 == 0:
                plane._on_esp(M0_V4, GW4, False)
            plane._on_timer(SPI)
        for coro in ctl.spawned:
            coro.close()  # the NAT question and the repair's rekey: not run here
        plane.close()
        return [json.loads(line) for line in out.getvalue().splitlines()]

    return asyncio.run(main())


def test_our_esp_left_on_the_old_path_with_nothing_back_is_repaired() -> None:
    events = _after_move(ours_left_behind=True)
    names = [e["event"] for e in events]
    assert "data_path_repair_started" in names, events
    assert "data_path_unverified" not in names
    started = next(e for e in events if e["event"] == "data_path_repair_started")
    assert started["local"] == str(NEW.local)


def test_nothing_either_way_after_the_move_is_still_an_idle_tunnel() -> None:
    events = _after_move(ours_left_behind=False)
    names = [e["event"] for e in events]
    assert "data_path_repair_started" not in names, events
    unverified = [e for e in events if e["event"] == "data_path_unverified"]
    assert [e["reason"] for e in unverified] == ["idle"]


def test_a_rekey_charon_undid_is_repaired_by_a_rekey_from_our_side() -> None:
    """Soak (seed 41, link_down 2.94 s): after a rekey collision charon's new CHILD_SA
    had no outbound half and the route went with the old one; the tunnel was dead until
    the next move's rekey. The table's ``rekey_undone`` now makes the controller rekey
    the IKE_SA's CHILD_SAs through VICI at once."""
    async def main() -> tuple[Calls, list[dict[str, object]]]:
        ctl = _WatchCtl()
        out = io.StringIO()
        ctl.log = EventLog(make_logger(out))
        _, calls = _with_child(ctl, 5, "d950b601", "f31b13fb")
        plane = _plane(ctl)
        plane.track(ctl.sas[SPI])
        plane.rekey_undone(SPI, 2)
        plane.rekey_undone("unknown_spi", 2)  # an IKE_SA not watched: nothing
        for coro in ctl.spawned:
            await coro
        plane.close()
        return calls, [json.loads(line) for line in out.getvalue().splitlines()]

    calls, events = asyncio.run(main())
    assert calls == [("rekey", {"child-id": "5"})]
    started = [e for e in events if e["event"] == "data_path_repair_started"]
    assert len(started) == 1 and started[0]["reason"] == "rekey_undone"
    assert started[0]["child"] == 2


def _foreign(spi_in: int, seconds: float = 1.0, rekey_at: float | None = None
             ) -> tuple[Calls, list[dict[str, object]]]:
    """A two-way flow on charon's path for ``seconds``, the peer's ESP on ``spi_in``;
    charon's CHILD_SA has inbound SPI 9eaafd94 (from ``rekey_at`` seconds on, a rekeyed
    one with 11112222 instead)."""
    async def main() -> tuple[Calls, list[dict[str, object]]]:
        ctl = _WatchCtl()
        out = io.StringIO()
        ctl.log = EventLog(make_logger(out))
        child, calls = _with_child(ctl, 9, "9eaafd94", "5f7640ec")
        plane = _plane(ctl)
        sa = ctl.sas[SPI]
        plane.track(sa)
        for i in range(int(seconds * 100)):
            ctl.t = 100.0 + i * 0.01
            if rekey_at is not None and i == int(rekey_at * 100):
                sa.info = dataclasses.replace(sa.info, children=(
                    dataclasses.replace(child, unique_id=10, spi_in="11112222"),))
                ctl.client.table = {SPI: sa.info}
            plane._on_esp(M0_V4, GW4, False)
            plane._on_esp(M0_V4, GW4, True, spi_in)
        for coro in ctl.spawned:
            await coro
        plane.close()
        return calls, [json.loads(line) for line in out.getvalue().splitlines()]

    return asyncio.run(main())


def test_the_peers_esp_only_on_an_spi_charon_lacks_is_repaired_by_a_rekey() -> None:
    """Soak (seed 51, blackhole 35.6 s, an IKE_SA lost): the gateway sent on a CHILD_SA
    charon had destroyed; ESP flowed both ways, none of it usable, and nothing moved."""
    calls, events = _foreign(0xACD3378F, seconds=8.0)
    started = [e for e in events if e["event"] == "data_path_repair_started"]
    assert [e["reason"] for e in started] == ["unknown_spi", "unknown_spi"]  # every 5 s
    assert started[0]["spi"] == "acd3378f"
    assert calls[0] == ("rekey", {"child-id": "9"})


def test_the_peers_esp_on_charons_spi_repairs_nothing() -> None:
    calls, events = _foreign(0x9EAAFD94)
    assert calls == []
    assert "data_path_repair_started" not in [e["event"] for e in events]


def test_the_peers_esp_on_an_spi_charon_listed_before_its_rekey_repairs_nothing() -> None:
    """The peer moves to the rekeyed CHILD_SA only once its exchange completes (a lost
    DELETE: a second or more); its old SPI stays valid meanwhile."""
    calls, events = _foreign(0x9EAAFD94, seconds=3.0, rekey_at=1.0)
    assert calls == []
    assert "data_path_repair_started" not in [e["event"] for e in events]


def test_our_esp_on_the_new_path_is_told_apart_from_the_old_one() -> None:
    """The pin on the path a move left (``left_path``) needs ESP on the new path both
    ways: ours from the old source (charon's old CHILD_SA, the rekey's DELETE not yet
    there) is not ours on the new path."""
    async def main() -> None:
        ctl = _WatchCtl()
        ctl.data_path_works = lambda *a: None  # type: ignore[attr-defined]
        plane = _plane(ctl)
        sa = ctl.sas[SPI]
        plane.track(sa)
        plane._on_esp(M0_V4, GW4, False)
        plane._on_esp(M0_V4, GW4, True)
        assert plane.last_outbound(SPI) == 100.0
        ctl.t = 101.0
        sa.info = dataclasses.replace(sa.info, path=NEW)
        plane.moved(sa)
        assert plane.last_outbound(SPI) is None and plane.last_inbound(SPI) is None
        ctl.t = 101.1
        plane._on_esp(M1_V4, GW4, True)  # the peer's, on its new CHILD_SA
        plane._on_esp(M0_V4, GW4, False)  # ours, still on the old one
        assert plane.last_inbound(SPI) == 101.1
        assert plane.last_outbound(SPI) is None
        ctl.t = 101.2
        plane._on_esp(M1_V4, GW4, False)
        assert plane.last_outbound(SPI) == 101.2
        assert plane.last_outbound("not watched") is None
        for coro in ctl.spawned:
            coro.close()
        plane.close()

    asyncio.run(main())
