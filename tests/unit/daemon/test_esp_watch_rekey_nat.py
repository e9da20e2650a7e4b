"""A NAT rebind just before charon's IKE rekey: the path is left, since no check of
charon's can see it.

Soak (seed 51, `nat_rebind` 18:31:52, 2.18 s): the carrier NAT gave m1's flow a new
public port 250 ms before charon rekeyed the IKE_SA. The gateway kept sending ESP to the
old port; the new IKE_SA's first check (``nat_baseline``) recorded the new mapping, so
charon saw no change and sent no UPDATE_SA_ADDRESSES; the burst after the stall was
answered and nothing more happened until a move by chance. Driven on a fake clock."""

from __future__ import annotations

import asyncio
import io
import json
from types import SimpleNamespace
from typing import Any

from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.mobike import health as hm

from ..backends.test_vici_steer import GW4, M0_V4
from .test_esp_watch_roam import PATH, SPI, _flow, _plane
from .test_esp_watch_roam import _Ctl as _WatchCtl


class _Ctl(_WatchCtl):
    def __init__(self) -> None:
        super().__init__(nat_local=True)
        self.out = io.StringIO()
        self.log = EventLog(make_logger(self.out))
        self.failed: list[tuple[str, float]] = []
        self.sas[SPI].manager = SimpleNamespace(
            paths=lambda: [], active_path=PATH,
            on_active_path_failed=lambda now, reason, hold=0.0: self.failed.append(
                (reason, hold)))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.out.getvalue().splitlines())
                if e["event"] == name]


def _run(rekey: bool, peer_back: bool = False) -> _Ctl:
    """Two-way ESP every 10 ms for a second; then (``rekey``) charon's IKE rekey replaces
    the watch of the IKE_SA (the same path), and only ours goes out; the burst's first
    probe is answered. ``peer_back``: the peer's ESP comes once before the check's
    answer from charon."""
    async def main() -> _Ctl:
        ctl = _Ctl()
        sent: list[int] = []
        ctl.prober = SimpleNamespace(send=lambda path, wire_id, dev: sent.append(wire_id)
                                     or True)
        plane = _plane(ctl)
        plane.track(ctl.sas[SPI])
        _flow(ctl, plane, two_way=True)
        ctl.t = 101.0
        if rekey:
            plane.forget(SPI)
            plane.track(ctl.sas[SPI])
        for step in range(1, 600):
            ctl.t = 101.0 + step * 0.001
            if step % 10 == 0:
                plane._on_esp(M0_V4, GW4, False)
            if sent and plane._sas[SPI].burst is not None:
                plane.on_probe_reply(sent[0])  # the path answers, the peer's ESP does not
                if peer_back:
                    plane._on_esp(M0_V4, GW4, True)
            plane._on_timer(SPI)
        for coro in ctl.spawned:
            await coro
        plane.close()
        return ctl

    return asyncio.run(main())


def test_the_peers_esp_lost_across_an_ike_rekey_behind_a_nat_leaves_the_path() -> None:
    ctl = _run(rekey=True)
    checks = ctl.events("nat_mapping_check")
    assert [c.get("rekeyed") for c in checks] == [True]
    assert checks[0]["silent_ms"] > 0
    assert [reason for reason, _ in ctl.failed] == ["data_path_dead"]
    assert ctl.failed[0][1] == hm.dead_hold(1)
    assert "nat_check" not in [r for _, _, r in ctl.prearmed]  # charon's check is no help


def test_without_a_rekey_charon_checks_the_mapping_as_before() -> None:
    ctl = _run(rekey=False)
    assert [c.get("rekeyed") for c in ctl.events("nat_mapping_check")] == [None]
    assert [r for _, _, r in ctl.prearmed] == ["nat_baseline", "nat_check"]
    assert ctl.failed == []


def test_the_peers_esp_back_before_the_answer_keeps_the_path() -> None:
    ctl = _run(rekey=True, peer_back=True)
    assert ctl.events("nat_mapping_check") == []
    assert ctl.failed == []
