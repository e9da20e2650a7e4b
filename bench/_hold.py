"""The scale bench's initiator: sets up IKE_SA+CHILD_SAs in stages and keeps them all.

Runs inside the initiator's namespace (started by ``scale.py``). Setups are made as in
``_load.py`` (one Engine per IKE_SA, ``--concurrency`` in flight), but an established
engine is kept: it answers the responder's rekeys, DPD and deletes for the rest of the
run. The kept engines' timers sit in a heap, so servicing N SAs costs O(log N) per
event, not a walk over all of them.

Protocol with the parent: for each size in ``--stages`` set up SAs until that many are
held, write ``<out>.stage<i>`` (JSON) and keep servicing until ``<out>.go<i>`` exists;
after the last stage keep servicing until ``<out>.stop`` exists, then write ``<out>``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import socket
import sys
import time
from pathlib import Path as FsPath

from _load import POLL_MAX, Generator, Setup

from mobike_vici.core.engine import Engine
from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from mobike_vici.types import Path


class Holder(Generator):
    def __init__(self, config_path: str, concurrency: int, setup_timeout: float) -> None:
        super().__init__(config_path, concurrency, 1e9, setup_timeout, delete=False)
        self.held: dict[bytes, Engine] = {}
        # An IKE rekey the responder initiates names the new IKE_SA by its own SPI first:
        # both new SPIs lead to the engine, so its messages are not dropped as unknown.
        self.aliases: dict[bytes, bytes] = {}
        self.scheduled: dict[bytes, float] = {}
        self.heap: list[tuple[float, bytes]] = []
        self.rekeyed = 0
        self.ike_rekeyed = 0
        self.rekeyed_sas: set[bytes] = set()
        self.lost: dict[str, int] = {}
        self.children_deleted = 0

    # A setup that completes moves into ``held``; everything else is as in _load.py.
    def _after(self, spi: bytes, setup: Setup, now: float) -> None:
        engine = setup.engine
        ok = failed = False
        while (ev := engine.next_event()) is not None:
            if isinstance(ev, ChildSaInstalled):
                self.tally.latencies.append(now - setup.started)
                ok = True
            elif isinstance(ev, IkeSaDeleted):
                self.tally.fail(ev.reason)
                failed = True
            elif isinstance(ev, ExchangeFailed):
                self.tally.fail(f"{ev.exchange}: {ev.reason}")
                failed = True
        self._flush(engine, now)
        if ok or failed:
            self.setups.pop(spi, None)
        if ok and not failed:
            self.held[spi] = engine
            self._schedule(spi, engine)

    def _schedule(self, spi: bytes, engine: Engine) -> None:
        deadline = engine.get_timer()
        if deadline is None:
            self.scheduled.pop(spi, None)
        elif self.scheduled.get(spi) != deadline:
            self.scheduled[spi] = deadline
            heapq.heappush(self.heap, (deadline, spi))

    def _after_held(self, spi: bytes, engine: Engine, now: float) -> None:
        while (ev := engine.next_event()) is not None:
            self._on_held_event(spi, ev)
        self._flush(engine, now)
        if spi in self.held:
            self._schedule(spi, engine)
        else:
            self.scheduled.pop(spi, None)

    def _on_held_event(self, spi: bytes, ev: Event) -> None:
        """Tally one event of a held SA (subclasses add their own)."""
        if isinstance(ev, ChildSaRekeyed):
            self.rekeyed += 1
            self.rekeyed_sas.add(spi)
        elif isinstance(ev, ChildSaDeleted) and ev.reason != "rekeyed":
            self.children_deleted += 1
        elif isinstance(ev, IkeSaRekeyed):
            self.ike_rekeyed += 1
            for part in ev.new_ike_spi.split("_"):
                self.aliases[bytes.fromhex(part)] = spi
        elif isinstance(ev, IkeSaDeleted) and ev.reason != "rekeyed":
            self.lost[ev.reason] = self.lost.get(ev.reason, 0) + 1
            self.held.pop(spi, None)

    def _dispatch(self, data: bytes, path: Path, now: float) -> None:
        spi = data[:8]
        if spi in self.setups:
            super()._dispatch(data, path, now)
            return
        if spi not in self.held:
            spi = self.aliases.get(spi) or self.aliases.get(data[8:16], spi)
        engine = self.held.get(spi)
        if engine is not None:
            engine.receive_datagram(data, path, now)
            self._after_held(spi, engine, now)

    def _timers(self, now: float) -> float | None:
        nearest = super()._timers(now)
        while self.heap and self.heap[0][0] <= now:
            deadline, spi = heapq.heappop(self.heap)
            engine = self.held.get(spi)
            if engine is None or self.scheduled.get(spi) != deadline:
                continue  # stale entry
            del self.scheduled[spi]
            engine.handle_timer(now)
            self._after_held(spi, engine, now)
        if self.heap and (nearest is None or self.heap[0][0] < nearest):
            nearest = self.heap[0][0]
        return nearest

    def serve_until(self, flag: FsPath, give_up: float) -> None:
        """Answer the responder for the held SAs until ``flag`` exists."""
        end = time.monotonic() + give_up
        while not flag.exists() and time.monotonic() < end:
            now = time.monotonic()
            nearest = self._timers(now)
            wait = POLL_MAX if nearest is None else min(POLL_MAX, max(0.0, nearest - now))
            for key, _mask in self.sel.select(wait):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self._receive(sock, time.monotonic())


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--stages", required=True, help="comma-separated IKE_SA counts")
    ap.add_argument("--setup-timeout", type=float, default=10.0)
    ap.add_argument("--give-up", type=float, default=3600.0)
    args = ap.parse_args(argv)
    holder = Holder(args.config, args.concurrency, args.setup_timeout)
    out = FsPath(args.out)
    stages = [int(s) for s in args.stages.split(",")]
    for i, size in enumerate(stages):
        result = holder.run(max(0, size - len(holder.held)))
        result["held"] = len(holder.held)
        result.pop("latencies")
        result["completed_this_stage"] = result["completed"]
        tmp = FsPath(f"{out}.stage{i}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(f"{out}.stage{i}")
        holder.serve_until(FsPath(f"{out}.go{i}"), args.give_up)
    cpu0 = _cpu()
    holder.serve_until(FsPath(f"{out}.stop"), args.give_up)
    final = {"held": len(holder.held), "child_sas_rekeyed": holder.rekeyed,
             "ike_sas_rekeyed": holder.ike_rekeyed,
             "held_ike_sas_with_a_child_rekey": len(holder.rekeyed_sas & holder.held.keys()),
             "ike_sas_lost": holder.lost, "child_sas_deleted": holder.children_deleted,
             "cpu_s_after_build": _cpu() - cpu0}
    tmp = FsPath(f"{out}.tmp")
    tmp.write_text(json.dumps(final))
    tmp.rename(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
