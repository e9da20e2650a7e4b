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

from ..backends.test_vici_steer import GW4, M0_V4, M1_V4, _dual_stack, _p

SPI = "a_b"
M0, M1 = _p(M0_V4, GW4), _p(M1_V4, GW4)


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
