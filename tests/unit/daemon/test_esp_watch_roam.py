"""When ``mobike-vici run``'s data plane makes charon check its path (a route event).

Never before a burst's verdict: charon (``check_current_path``) would send a DPD on the
dying path and the failover's MOBIKE update would wait for that DPD's retransmission.
After a burst answered on a path behind a NAT while the peer's ESP, flowing until the
stall, stopped: charon's DPD then carries NAT detection and finds a rebinding NAT's new
port (``nat_check``). Driven on a fake clock: the loop's timers are not waited for."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

from mobike_vici.backends.vici import IkeSaInfo
from mobike_vici.daemon import nat_check
from mobike_vici.daemon.esp_watch import EspWatch
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.mobike import health as hm
from mobike_vici.types import Path

from ..backends.test_vici_steer import GW4, M0_V4, _dual_stack, _p

SPI = "a_b"
PATH = _p(M0_V4, GW4)


class _Ctl:
    """What the data plane asks of the controller, on a clock the test moves."""

    def __init__(self, nat_local: bool = False) -> None:
        self.t = 100.0
        self.spawned: list[Any] = []
        self.listed: list[dict[str, Any]] = []
        self.prearmed: list[tuple[float, Path, str]] = []
        self.dead: list[float] = []
        self.log = EventLog(make_logger(io.StringIO()))
        self.prober: Any = None
        self.monitor = SimpleNamespace(state=_dual_stack())
        manager = SimpleNamespace(paths=lambda: [], active_path=PATH,
                                  on_active_path_failed=lambda now, reason: self.dead.append(now))
        info = IkeSaInfo(conn="home", ike_spi=SPI, unique_id=1, state="ESTABLISHED",
                         path=PATH, initiator=True, local_id="m", remote_id="g")
        self.sas: dict[str, Any] = {SPI: SimpleNamespace(info=info, manager=manager)}
        self.client = SimpleNamespace(table={SPI: info}, stream=self._stream)
        self.nat_local = nat_local

    async def _stream(self, command: str, event: str,
                      message: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.listed.append({"command": command, **(message or {})})
        return [{"home": {"initiator-spi": "a", "responder-spi": "b",
                          "nat-local": "yes" if self.nat_local else "no"}}]

    def spawn(self, coro: Any) -> None:
        self.spawned.append(coro)

    @property
    def now(self) -> float:
        return self.t

    def prearm_roam(self, spi: str, path: Path, reason: str) -> None:
        self.prearmed.append((self.t, path, reason))

    def pump(self, sa: Any) -> None:
        pass

    def next_wire_id(self) -> int:
        return 1


def _plane(ctl: _Ctl) -> EspWatch:
    """The watch over ``ctl``, with a sibling check that never steps in."""
    plane = EspWatch(ctl, SimpleNamespace(  # type: ignore[arg-type]
        suspect=lambda *a: False, silent_death=lambda *a: None, stalled=lambda *a: None),
        hm.HealthSettings())
    plane.available = True
    return plane


def _flow(ctl: _Ctl, plane: EspWatch, two_way: bool) -> None:
    """Our ESP every 10 ms for a second from t=100 on PATH, and (``two_way``) the peer's."""
    for i in range(100):
        ctl.t = 100.0 + i * 0.01
        plane._on_esp(M0_V4, GW4, False)
        if two_way:
            plane._on_esp(M0_V4, GW4, True)


def _run(traffic: str, nat_local: bool = False) -> _Ctl:
    """Two-way (or one-way) ESP every 10 ms for a second, then only ours goes out; the
    clock then moves in 1 ms steps, the data plane's timers run when due. ``probed``:
    the burst's first probe is answered 1 ms after it went out."""
    async def main() -> _Ctl:
        ctl = _Ctl(nat_local)
        sent: list[int] = []
        if traffic == "probed":
            ctl.prober = SimpleNamespace(send=lambda path, wire_id, dev: sent.append(wire_id)
                                         or True)
        plane = _plane(ctl)
        plane.track(ctl.sas[SPI])
        _flow(ctl, plane, two_way=traffic in ("two-way", "probed"))
        for step in range(1, 600):
            ctl.t = 101.0 + step * 0.001
            if step % 10 == 0:
                plane._on_esp(M0_V4, GW4, False)
            if traffic == "answered" and plane._sas[SPI].burst is not None:
                plane._on_esp(M0_V4, GW4, True)  # the peer's ESP again, 1 ms into the burst
            if sent and plane._sas[SPI].burst is not None:
                plane.on_probe_reply(sent[0])  # the path answers, the peer's ESP does not
            plane._on_timer(SPI)
        for coro in ctl.spawned:
            await coro
        plane.close()
        return ctl

    return asyncio.run(main())


def test_a_stall_of_a_two_way_flow_makes_no_route_event_before_the_verdict() -> None:
    ctl = _run("two-way")  # nothing answers the burst (no prober): the path is dead
    assert len(ctl.dead) == 1
    assert ctl.prearmed == [] and len(ctl.listed) == 1  # only the new IKE_SA's NAT question


def test_an_answered_burst_behind_a_nat_makes_charon_check_the_mapping() -> None:
    ctl = _run("probed", nat_local=True)
    assert ctl.dead == []
    # the new IKE_SA's baseline, then once for the one answered burst
    assert [(p, r) for _, p, r in ctl.prearmed] == [(PATH, "nat_baseline"),
                                                     (PATH, "nat_check")]
    assert ctl.listed == [{"command": "list-sas", "ike-id": "1", "noblock": "yes"}] * 2


def test_an_answered_burst_without_a_nat_or_a_quiet_peer_starts_nothing() -> None:
    no_nat = _run("probed", nat_local=False)  # charon asked, and it sees no NAT here
    assert no_nat.prearmed == [] and len(no_nat.listed) == 2 and no_nat.dead == []
    answered = _run("answered", nat_local=True)  # the peer's ESP itself came back
    assert [r for _, _, r in answered.prearmed] == ["nat_baseline"]
    assert len(answered.listed) == 1 and answered.dead == []


def test_nat_here_reads_charons_own_flag_for_that_ike_sa() -> None:
    entries = [{"other": {"initiator-spi": "c", "responder-spi": "d", "nat-local": "yes"}},
               {"home": {"initiator-spi": "a", "responder-spi": "b", "nat-local": "no"}}]
    assert not nat_check.nat_here(entries, "a_b")
    assert nat_check.nat_here(entries, "c_d")
    assert not nat_check.nat_here(entries, "e_f")


def _track(nat_local: bool, forget_first: bool = False) -> _Ctl:
    async def main() -> _Ctl:
        ctl = _Ctl(nat_local)
        plane = _plane(ctl)
        plane.track(ctl.sas[SPI])
        if forget_first:
            plane.forget(SPI)
        for coro in ctl.spawned:
            await coro
        plane.close()
        return ctl

    return asyncio.run(main())


def test_a_new_ike_sa_behind_a_nat_has_charon_record_its_mapping_at_once() -> None:
    """charon keeps no NAT detection of IKE_SA_INIT: its first check of a new IKE_SA only
    records the mapping, so a rebind before that check would go unnoticed by it."""
    ctl = _track(nat_local=True)
    assert [(p, r) for _, p, r in ctl.prearmed] == [(PATH, "nat_baseline")]
    assert ctl.listed == [{"command": "list-sas", "ike-id": "1", "noblock": "yes"}]
    assert _track(nat_local=False).prearmed == []  # no NAT here: nothing to record
    gone = _track(nat_local=True, forget_first=True)  # rekeyed or deleted meanwhile
    assert gone.prearmed == [] and gone.listed == []
