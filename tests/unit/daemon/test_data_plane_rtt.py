"""The RTT ``mobike-vici run``'s data-plane checks wait by: the path's as its probes have
it now, not as it was when charon moved there, nor a latency spike's that has ended.

Soak (seed 31): a latency spike on m0 left its paths' SRTT at 0.12-0.16 s for seconds
after it ended; a blackhole on m0 then stalled only after 4 such SRTTs (0.63 s), and the
failover onto m0's other family waited 5 of them (0.61 s) for its burst's verdict: a
1.38 s outage. Driven on a fake clock: the loop's timers are not waited for."""

from __future__ import annotations

import asyncio

from mobike_vici.daemon.sibling_check import SiblingCheck
from mobike_vici.mobike.events import MoveRequested
from mobike_vici.mobike.paths import PathState
from mobike_vici.mobike.policy import PathInfo, recent_rtt

from ..backends.test_vici_steer import GW4, M0_V4
from .test_esp_watch_roam import PATH, SPI, _plane
from .test_esp_watch_roam import _Ctl as _WatchCtl
from .test_sibling_check import M0, M0_SIX
from .test_sibling_check import _Ctl as _CheckCtl

SPIKE = 0.155  # the smoothed RTT a 200 ms spike left after two probes at 5 ms


def _info(path: object, srtt: float, last: float) -> PathInfo:
    return PathInfo(path, "m0", PathState.UP, srtt=srtt, last_rtt=last)  # type: ignore[arg-type]


def test_recent_rtt_drops_an_ended_spike_but_keeps_one_that_starts() -> None:
    assert recent_rtt(_info(PATH, SPIKE, 0.005)) == 0.005  # the spike ended
    assert recent_rtt(_info(PATH, 0.01, 0.2)) == 0.01  # starting: srtt rises as before
    assert recent_rtt(PathInfo(PATH, "m0", PathState.UP, srtt=0.02)) == 0.02  # no sample


def _stall_silence() -> float:
    """charon moved onto PATH while its SRTT still held a spike; the probes since found
    5 ms. A two-way flow (every 10 ms) then gets no answer: the silence when the data
    plane suspects the path (its burst starts)."""
    async def main() -> float:
        ctl = _WatchCtl()
        ctl.data_path_works = lambda *a: None  # type: ignore[attr-defined]
        infos = [_info(PATH, SPIKE, SPIKE)]
        sa = ctl.sas[SPI]
        sa.manager.paths = lambda: infos
        plane = _plane(ctl)
        plane.track(sa)
        plane.moved(sa)
        infos[0] = _info(PATH, 0.03, 0.005)  # the manager's probes after the move
        last_in = 0.0
        for i in range(100):
            ctl.t = 100.0 + i * 0.01
            plane._on_esp(M0_V4, GW4, False)
            plane._on_esp(M0_V4, GW4, True)
            last_in = ctl.t
        silence = -1.0
        for step in range(1, 200):
            ctl.t = last_in + step * 0.005
            plane._on_esp(M0_V4, GW4, False)
            if plane._sas[SPI].burst is not None:
                silence = ctl.t - last_in
                break
        for coro in ctl.spawned:
            await coro
        plane.close()
        return silence

    return asyncio.run(main())


def test_a_stall_waits_by_the_paths_rtt_now_not_by_the_one_it_had_at_the_move() -> None:
    silence = _stall_silence()
    assert silence > 0, "the stall was never suspected"
    # stall_timeout (0.1 s) and the flow's own pace rule now; 4 stale SRTTs were 0.62 s
    assert silence < 4 * SPIKE / 2


def _failover_verdict(sibling: PathInfo) -> float:
    """The path manager's probes found M0 dead first (no early burst) and fail over onto
    its other family, on the same suspect uplink, which does not answer: the time the
    check takes to fail the move."""
    async def main() -> float:
        ctl = _CheckCtl()
        ctl.sa.manager.paths = lambda: [sibling]
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        check.silent_death(SPI, M0, ctl.t)
        ctl.sa.manager.wanted_path = M0_SIX
        start = ctl.t
        assert check.hold(ctl.sa, MoveRequested(  # type: ignore[arg-type]
            path=M0_SIX, old_path=M0, reason="failover"))
        for _ in range(200):
            ctl.t += 0.005
            check._pump(SPI)
            if ctl.failed:
                break
        check.close()
        assert ctl.failed == [(M0_SIX, "timeout")] and ctl.begun == []
        return ctl.t - start

    return asyncio.run(main())


def test_a_failover_check_waits_by_the_targets_last_probe_after_a_spike() -> None:
    ended = _failover_verdict(_info(M0_SIX, 0.122, 0.005))
    assert ended < 0.3  # 2 gaps and a timeout of 5 ms RTT (floors); 5 stale SRTTs: 0.61 s
    # a target whose RTT is rising is still waited for by its smoothed RTT
    assert _failover_verdict(_info(M0_SIX, 0.122, 0.3)) > 0.5
