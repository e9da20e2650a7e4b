"""``mobike-vici run``'s data plane starts charon's roam timer before a burst's verdict.

charon checks its paths 100 ms after the first route event; the failover's routes come
only after the burst found the path dead. Re-installing charon's own route while the
burst is under way lets that check run just after the failover's routes, instead of
100 ms after them. Driven on a fake clock: the loop's timers are not waited for."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

from mobike_vici.backends.vici import IkeSaInfo
from mobike_vici.daemon.esp_watch import CHARON_ROAM_DELAY, STEER_MARGIN, EspWatch
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.mobike import health as hm
from mobike_vici.types import Path

from ..backends.test_vici_steer import GW4, M0_V4, _dual_stack, _p

SPI = "a_b"
PATH = _p(M0_V4, GW4)


class _Ctl:
    """What the data plane asks of the controller, on a clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0
        self.prearmed: list[tuple[float, Path]] = []
        self.dead: list[float] = []
        self.log = EventLog(make_logger(io.StringIO()))
        self.prober = None
        self.monitor = SimpleNamespace(state=_dual_stack())
        manager = SimpleNamespace(paths=lambda: [], active_path=PATH,
                                  on_active_path_failed=lambda now, reason: self.dead.append(now))
        info = IkeSaInfo(conn="home", ike_spi=SPI, unique_id=1, state="ESTABLISHED",
                         path=PATH, initiator=True, local_id="m", remote_id="g")
        self.sas: dict[str, Any] = {SPI: SimpleNamespace(info=info, manager=manager)}

    @property
    def now(self) -> float:
        return self.t

    def prearm_roam(self, spi: str, path: Path) -> None:
        self.prearmed.append((self.t, path))

    def pump(self, sa: Any) -> None:
        pass

    def next_wire_id(self) -> int:
        return 1


def _run(traffic: str) -> _Ctl:
    """Two-way (or one-way) ESP every 10 ms for a second, then only ours goes out; the
    clock then moves in 1 ms steps, the data plane's timers run when due."""
    async def main() -> _Ctl:
        ctl = _Ctl()
        plane = EspWatch(ctl, SimpleNamespace(  # type: ignore[arg-type]
            suspect=lambda *a: False, silent_death=lambda *a: None), hm.HealthSettings())
        plane.available = True
        plane.track(ctl.sas[SPI])
        for i in range(100):
            ctl.t = 100.0 + i * 0.01
            plane._on_esp(M0_V4, GW4, False)
            if traffic == "two-way":
                plane._on_esp(M0_V4, GW4, True)
        for step in range(1, 600):
            ctl.t = 101.0 + step * 0.001
            if step % 10 == 0:
                plane._on_esp(M0_V4, GW4, False)
            if traffic == "answered" and plane._sas[SPI].burst is not None:
                plane._on_esp(M0_V4, GW4, True)  # the peer's ESP again, 1 ms into the burst
            plane._on_timer(SPI)
        plane.close()
        return ctl

    return asyncio.run(main())


def test_a_stall_of_a_two_way_flow_starts_charons_timer_before_the_verdict() -> None:
    ctl = _run("two-way")
    assert len(ctl.dead) == 1 and len(ctl.prearmed) == 1
    at, path = ctl.prearmed[0]
    assert path == PATH
    # charon's check comes STEER_MARGIN after the verdict: the failover's routes are in.
    assert abs(at + CHARON_ROAM_DELAY - (ctl.dead[0] + STEER_MARGIN)) < 0.003
    assert at < ctl.dead[0]


def test_a_peer_that_never_answered_or_answers_in_time_starts_nothing() -> None:
    one_way = _run("one-way")  # nothing answers the burst here (no prober): dead
    assert one_way.prearmed == [] and one_way.dead
    answered = _run("answered")
    assert answered.prearmed == [] and answered.dead == []
