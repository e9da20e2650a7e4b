"""``mobike-vici run``: which moves wait for their target to answer a probe first.

A return to the preferred path always does (it rests on a standby probe up to 2 s old;
charon's MOBIKE check sent onto a path that died meanwhile holds charon's next move for
its retransmission, about 2 s). Driven on a fake clock: the loop's timers are not
waited for, the check's pump is called as they would."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

from mobike_vici.backends.vici import IkeSaInfo
from mobike_vici.daemon.sibling_check import SiblingCheck
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.mobike.events import MoveRequested
from mobike_vici.types import Path

from ..backends.test_vici_steer import GW4, GW6, M0_V4, M0_V6, M1_V4, _dual_stack, _p

SPI = "a_b"
M0, M1 = _p(M0_V4, GW4), _p(M1_V4, GW4)
M0_SIX = _p(M0_V6, GW6)  # m0's other family: the sibling of M0


class _Ctl:
    """What the check asks of the controller, on a clock the test moves."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sent: list[tuple[int, Path]] = []
        self.begun: list[MoveRequested] = []
        self.failed: list[tuple[Path, str]] = []
        self.out = io.StringIO()
        self.log = EventLog(make_logger(self.out))
        self.monitor = SimpleNamespace(state=_dual_stack())
        self.prober = SimpleNamespace(send=self._send)
        self.wanted: Path | None = None
        manager = SimpleNamespace(
            paths=lambda: [], wanted_path=None,
            on_move_failed=lambda path, reason, now: self.failed.append((path, reason)))
        info = IkeSaInfo(conn="home", ike_spi=SPI, unique_id=1, state="ESTABLISHED",
                         path=M1, initiator=True, local_id="m", remote_id="g")
        self.sa = SimpleNamespace(info=info, manager=manager)
        self.sas: dict[str, Any] = {SPI: self.sa}
        self._wire = 0

    def _send(self, path: Path, wire_id: int, dev: str) -> bool:
        self.sent.append((wire_id, path))
        return True

    @property
    def now(self) -> float:
        return self.t

    def next_wire_id(self) -> int:
        self._wire += 1
        return self._wire

    def begin_move(self, sa: Any, event: MoveRequested) -> None:
        self.begun.append(event)

    def pump(self, sa: Any) -> None:
        pass


def _move(path: Path, reason: str) -> MoveRequested:
    return MoveRequested(path=path, old_path=M1, reason=reason)


def _run(answer: bool) -> _Ctl:
    async def main() -> _Ctl:
        ctl = _Ctl()
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        move = _move(M0, "preferred")
        ctl.sa.manager.wanted_path = M0
        assert check.hold(ctl.sa, move)  # type: ignore[arg-type]
        assert ctl.begun == [] and ctl.sent and ctl.sent[0][1] == M0
        for _ in range(100):  # a second in 10 ms steps
            ctl.t += 0.01
            if answer and ctl.sent:
                check.on_reply(ctl.sent[-1][0])
            check._pump(SPI)
        check.close()
        return ctl

    return asyncio.run(main())


def test_a_return_to_the_preferred_path_goes_ahead_once_its_target_answers() -> None:
    ctl = _run(answer=True)
    assert [e.path for e in ctl.begun] == [M0]
    assert ctl.failed == []
    assert '"reason": "return_unproven"' in ctl.out.getvalue()


def test_an_unanswered_return_fails_as_target_down_and_charon_is_not_steered() -> None:
    ctl = _run(answer=False)
    assert ctl.begun == []
    # target_down: the target alone is down; the path the IKE_SA is on stays up
    # (an unanswered failover's "timeout" would set the uplinks' shared paths aside).
    assert ctl.failed == [(M0, "target_down")]


def test_a_later_move_supersedes_a_held_return() -> None:
    async def main() -> _Ctl:
        ctl = _Ctl()
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        assert check.hold(ctl.sa, _move(M0, "preferred"))  # type: ignore[arg-type]
        assert not check.hold(ctl.sa, _move(M1, "operator"))  # type: ignore[arg-type]
        for _ in range(100):
            ctl.t += 0.01
            check._pump(SPI)
        return ctl

    ctl = asyncio.run(main())
    assert ctl.failed == []  # the held return's check ended with the later move


def _silent_death(sibling_answers: bool) -> tuple[_Ctl, bool, int]:
    """charon on M0; its inbound ESP stalls and the data plane bursts on M0 (the check is
    told, ``stalled``); no answer on M0, the path is dead, the path manager fails over
    onto M0's sibling on the same uplink. Returns (ctl, whether the failover was held,
    probes sent on the sibling after the failover was asked for)."""
    async def main() -> tuple[_Ctl, bool, int]:
        ctl = _Ctl()
        ctl.sa.manager.paths = lambda: [SimpleNamespace(path=M0, srtt=0.001, last_rtt=None),
                                        SimpleNamespace(path=M0_SIX, srtt=0.001, last_rtt=None),
                                        SimpleNamespace(path=M1, srtt=0.001, last_rtt=None)]
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        check.stalled(ctl.sa, M0)  # type: ignore[arg-type]
        assert {p for _, p in ctl.sent} == {M0_SIX, M1}  # every other candidate
        for _ in range(30):  # the dead path's burst runs its course (0.3 s)
            ctl.t += 0.01
            if sibling_answers:
                for wire_id, _ in ctl.sent:
                    check.on_reply(wire_id)
            for e in list(check._early.get(SPI, [])):
                check._pump_early(SPI, e)
        check.silent_death(SPI, M0, ctl.t)
        ctl.sa.manager.wanted_path = M0_SIX
        before = len(ctl.sent)
        held = check.hold(ctl.sa, MoveRequested(path=M0_SIX, old_path=M0,  # type: ignore[arg-type]
                                                reason="failover"))
        for _ in range(3):
            await asyncio.sleep(0)  # the loop runs what the check left to it
        sent_after = len(ctl.sent) - before
        check.close()
        return ctl, held, sent_after

    return asyncio.run(main())


def test_a_silent_deaths_sibling_unanswered_in_its_burst_fails_the_failover_at_once() -> None:
    """The whole uplink died: its other path's early burst went unanswered beside the
    dead path's own, so the failover onto it fails now, with no burst of its own."""
    ctl, held, sent_after = _silent_death(sibling_answers=False)
    assert held and sent_after == 0
    assert ctl.failed == [(M0_SIX, "timeout")]
    assert ctl.begun == []


def test_a_silent_deaths_sibling_that_answered_its_burst_takes_the_failover_unheld() -> None:
    """One family died (IPv4): the uplink's IPv6 path answered during the dead path's
    burst, so the failover onto it goes ahead without waiting for another answer."""
    ctl, held, sent_after = _silent_death(sibling_answers=True)
    assert not held and sent_after == 0
    assert ctl.failed == [] and ctl.begun == []  # not held: the caller moves on its own
    assert '"reason": "uplink_died_silently"' in ctl.out.getvalue()


def _ipv4_death(six_answers: bool = True) -> _Ctl:
    """charon on M0 (IPv4); IPv4 dies everywhere: M0's burst and M1's early one go
    unanswered, M0's IPv6 path answers its early burst. The path manager fails over onto
    M1 (another uplink), then, M1 failed, onto M0_SIX."""
    async def main() -> _Ctl:
        ctl = _Ctl()
        ctl.sa.manager.paths = lambda: [SimpleNamespace(path=p, srtt=0.001, last_rtt=None)
                                        for p in (M0, M0_SIX, M1)]
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        check.stalled(ctl.sa, M0)  # type: ignore[arg-type]
        for _ in range(30):  # the dead path's burst runs its course (0.3 s)
            ctl.t += 0.01
            for wire_id, path in ctl.sent:
                if path == M0_SIX and six_answers:
                    check.on_reply(wire_id)
            for e in list(check._early.get(SPI, [])):
                check._pump_early(SPI, e)
        check.silent_death(SPI, M0, ctl.t)
        ctl.sa.manager.wanted_path = M1
        held = check.hold(ctl.sa, MoveRequested(path=M1, old_path=M0,  # type: ignore[arg-type]
                                                reason="failover"))
        assert held == six_answers
        if not held:
            check.close()
            return ctl
        for _ in range(3):
            await asyncio.sleep(0)  # the loop runs what the check left to it
        ctl.sa.manager.wanted_path = M0_SIX
        assert not check.hold(ctl.sa, MoveRequested(  # type: ignore[arg-type]
            path=M0_SIX, old_path=M0, reason="failover"))
        check.close()
        return ctl

    return asyncio.run(main())


def test_an_ipv4_death_fails_the_other_uplinks_ipv4_path_by_its_early_burst() -> None:
    """The failover onto the other uplink's IPv4 path is held on the burst it had beside
    the dead path's, unanswered: it fails at once (not after the path manager's probes,
    0.6 s), as the target alone (its uplink's IPv6 path stays), and the next target,
    which answered beside it, is taken unheld."""
    ctl = _ipv4_death()
    assert ctl.failed == [(M1, "target_down")]
    assert '"reason": "path_died_silently"' in ctl.out.getvalue()
    assert ctl.begun == []  # the second failover was not held: the caller moves itself


def test_an_unanswered_race_lets_the_failover_go_unheld() -> None:
    """No candidate answered beside the dead path: failing the target would leave the
    IKE_SA on the dead path; charon's own check of every address it knows (some learnt
    through MOBIKE, unknown to the path manager) is the way out, as before the race."""
    ctl = _ipv4_death(six_answers=False)
    assert ctl.failed == [] and ctl.begun == []


def _death_under_a_return(target_answers: bool, six_answers: bool = True) -> _Ctl:
    """Soak (seed 41, IPv4 death 0.87 s): a return from M1 to M0 (IPv4) was under way,
    charon steered, when every IPv4 died. charon's path M1 stalls, its burst and M0's
    early one go unanswered, M0's IPv6 path answers its own (``six_answers``)."""
    async def main() -> _Ctl:
        ctl = _Ctl()
        ctl.sa.manager.paths = lambda: [SimpleNamespace(path=p, srtt=0.001, last_rtt=None)
                                        for p in (M0, M0_SIX, M1)]
        ctl.sa.manager.wanted_path = M0  # the return, begun (not held here any more)
        check = SiblingCheck(ctl, lambda: 0.05)  # type: ignore[arg-type]
        check.stalled(ctl.sa, M1)  # type: ignore[arg-type]
        for _ in range(30):  # the dead path's burst runs its course (0.3 s)
            ctl.t += 0.01
            for wire_id, path in ctl.sent:
                if (path == M0_SIX and six_answers) or (path == M0 and target_answers):
                    check.on_reply(wire_id)
            for e in list(check._early.get(SPI, [])):
                check._pump_early(SPI, e)
        check.silent_death(SPI, M1, ctl.t)
        check.close()
        return ctl

    return asyncio.run(main())


def test_a_move_under_way_whose_target_missed_its_burst_fails_at_the_silent_death() -> None:
    ctl = _death_under_a_return(target_answers=False)
    assert ctl.failed == [(M0, "target_down")]  # the next path is chosen now


def test_a_move_under_way_stays_when_its_target_answered_or_nothing_did() -> None:
    assert _death_under_a_return(target_answers=True).failed == []
    # nothing answered anywhere: charon's own checks are the last way out, as before
    assert _death_under_a_return(target_answers=False, six_answers=False).failed == []
