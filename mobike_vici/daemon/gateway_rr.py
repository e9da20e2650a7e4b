"""The gateway's return-routability check beside charon: ``mobike.gateway_rr`` wired to VICI.

The controller hands over charon's responder IKE_SAs and their moves; this runs
the verdicts: ``rekey`` over VICI, once per step (after reading, with ``list-sas``, which IKE
rekeys charon already has in flight), ``return_routability_ok`` /
``return_routability_failed`` on the stream, and ``terminate`` when the peer never
answered. One timer for all IKE_SAs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ..backends.vici import IkeSaInfo, SaRekeyed, ViciClient, ViciError
from ..config.mobike import MobikePolicy
from ..eventlog import EventLog
from ..mobike.gateway_rr import Action, Failed, GatewayRoutability, Rekey, Verified

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class GatewayChecks:
    """Return routability of every IKE_SA charon is responder of (see the module doc)."""

    def __init__(self, client: ViciClient, log: EventLog, policy: MobikePolicy,
                 spawn: Spawn) -> None:
        self.client = client
        self.log = log
        self._spawn = spawn
        self.logic = GatewayRoutability(policy.return_routability, policy.handover_timeout)
        self._timer: asyncio.TimerHandle | None = None
        self._last: dict[str, IkeSaInfo] = {}  # last info per IKE_SA (terminate needs it)

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def set_policy(self, policy: MobikePolicy) -> None:
        self.logic.set_policy(policy.return_routability, policy.handover_timeout)

    def seen(self, info: IkeSaInfo) -> None:
        self._last[info.ike_spi] = info
        self.logic.seen(info.ike_spi, info.path.remote)

    def moved(self, old: IkeSaInfo, new: IkeSaInfo) -> None:
        self._last[new.ike_spi] = new
        self.logic.seen(old.ike_spi, old.path.remote)  # first sight may be this move
        nat = new.nat_local or new.nat_remote
        self._act(self.logic.moved(new.ike_spi, new.path.remote, nat=nat, now=self.now))

    def rekeyed(self, event: SaRekeyed) -> None:
        self._last.pop(event.ike_spi, None)
        self._last[event.new_ike_spi] = event.new
        self._act(self.logic.rekeyed(event.ike_spi, event.new_ike_spi,
                                     by_charon=event.by_charon, now=self.now))

    def removed(self, ike_spi: str) -> None:
        self._last.pop(ike_spi, None)
        self.logic.removed(ike_spi)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the verdicts ---------------------------------------------------------------------

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            info = self._last.get(action.ike_spi)
            conn = info.conn if info is not None else None
            match action:
                case Rekey():
                    self._spawn(self._rekey(action.ike_spi))
                case Verified():
                    self.log.emit("return_routability_ok", conn=conn, ike_spi=action.ike_spi,
                                  remote=str(action.remote),
                                  duration_ms=round(action.duration * 1000, 3))
                case Failed():
                    self.log.write("warning", "return_routability_failed", {
                        "conn": conn, "ike_spi": action.ike_spi, "remote": str(action.remote),
                        "reason": action.reason,
                        "duration_ms": round(action.duration * 1000, 3)})
                    if info is not None:
                        self._spawn(self._terminate(info))
        self._arm()

    async def _rekey(self, ike_spi: str) -> None:
        info = self.client.table.get(ike_spi) or self._last.get(ike_spi)
        if info is None:
            return
        try:
            # A rekey charon sent before the move (so maybe to the old address) proves
            # nothing: count those still in flight so their answers are skipped.
            listed = await self.client.stream("list-sas", "list-sa",
                                              {"ike-id": str(info.unique_id)})
            stale = sum(_active_ike_rekeys(entry) for entry in listed)
            # Armed first: charon may report the answered rekey before its command reply.
            self.logic.armed(ike_spi, stale=stale)
            await self.client.call("rekey", {"ike-id": str(info.unique_id)})
        except ViciError as exc:
            self.log.emit("return_routability_rekey_refused", conn=info.conn,
                          ike_spi=ike_spi, error=str(exc))
            self._act(self.logic.rekey_failed(ike_spi, self.now))
            return
        self.log.emit("return_routability_check_sent", conn=info.conn, ike_spi=ike_spi,
                      remote=str(info.path.remote), stale=stale)

    async def _terminate(self, info: IkeSaInfo) -> None:
        # force: the DELETE would go to the address that does not answer, and charon
        # would keep the SA (and its traffic there) through every retransmission.
        try:
            await self.client.call("terminate", {"ike-id": str(info.unique_id),
                                                 "force": "yes", "timeout": "-1"})
            self.log.emit("ike_sa_terminated", conn=info.conn, ike_spi=info.ike_spi,
                          reason="return_routability_failed")
        except ViciError as exc:
            self.log.emit("terminate_failed", conn=info.conn, ike_spi=info.ike_spi,
                          error=str(exc))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.logic.get_timer()
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(max(when, self.now + 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._act(self.logic.handle_timer(self.now))


def _active_ike_rekeys(entry: dict[str, Any]) -> int:
    """IKE_REKEY tasks charon has in flight, from one ``list-sas`` entry."""
    count = 0
    for sa in entry.values():
        if isinstance(sa, dict):
            tasks = sa.get("tasks-active", [])
            count += sum(1 for t in tasks if t == "IKE_REKEY") if isinstance(tasks, list) else 0
    return count
