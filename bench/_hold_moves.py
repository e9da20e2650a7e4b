"""The attached-controller bench's initiator: holds SAs like ``_hold.py``, and on command
moves them (MOBIKE UPDATE_SA_ADDRESSES) at a set rate, or sets them all up again.

Runs inside the initiator's namespace (started by ``_attached.py``) on the native
sans-I/O Engine, one process. Every held IKE_SA answers the responder as in
``_hold.py``. A move takes an SA to the next of the initiator's source addresses, so
the responder (charon) reports a peer move: one ``ike-update`` event per move. One
move per SA at a time: an SA whose last move is not answered yet is skipped.

Protocol with the parent, one numbered command after the other: the parent writes
``<out>.cmd<k>`` (JSON, written whole), the holder serves its SAs until it appears,
runs it and writes ``<out>.done<k>`` (JSON). Commands:
- ``{"op": "grow", "size": N}``: set up SAs until N are held;
- ``{"op": "rebuild", "size": N}``: forget every held SA (the responder lost them) and
  set up N new ones;
- ``{"op": "moves", "rate": R, "duration": D}``: R moves per second for D seconds, then
  up to ``settle`` seconds for the last answers; the result lists every answered move
  (IKE SPIs, new address, wall-clock send and answer time) for the parent to match
  with the controller's ``addresses_updated`` events;
- ``{"op": "stop"}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path as FsPath
from typing import Any

from _hold import Holder
from _load import POLL_MAX

from mobike_vici.core.events import Event, IkeSaDeleted, IkeSaMoved, MoveFailed
from mobike_vici.types import Endpoint, IPAddress, Path

SETTLE = 5.0
"""Seconds after the last move to wait for outstanding answers."""


class Mover(Holder):
    def __init__(self, config_path: str, concurrency: int, setup_timeout: float) -> None:
        super().__init__(config_path, concurrency, setup_timeout)
        self.sources: list[IPAddress] = sorted(
            {ep.addr for ep in self.socks}, key=lambda a: (a.version, int(a)))
        self.pending: dict[bytes, tuple[str, str, float]] = {}  # spi -> (ike_spi, to, sent)
        self.answered: list[tuple[str, str, float, float]] = []
        self.move_failures: dict[str, int] = {}

    def drop_all(self) -> None:
        self.held.clear()
        self.aliases.clear()
        self.scheduled.clear()
        self.heap.clear()
        self.pending.clear()

    def _on_held_event(self, spi: bytes, ev: Event) -> None:
        if isinstance(ev, IkeSaMoved):
            sent = self.pending.pop(spi, None)
            if sent is not None:
                self.answered.append((sent[0], sent[1], sent[2], time.time()))
        elif isinstance(ev, MoveFailed):
            self.pending.pop(spi, None)
            self.move_failures[ev.reason] = self.move_failures.get(ev.reason, 0) + 1
        else:
            super()._on_held_event(spi, ev)
            if isinstance(ev, IkeSaDeleted) and ev.reason != "rekeyed":
                self.pending.pop(spi, None)

    def _move_one(self, spi: bytes, now: float) -> bool:
        engine = self.held.get(spi)
        if engine is None or spi in self.pending:
            return False
        status = engine.status()
        if not status:
            return False
        sa = status[0]
        here = sa.path.local.addr
        same = [a for a in self.sources if a.version == here.version]
        if len(same) < 2:
            return False
        to = same[(same.index(here) + 1) % len(same)] if here in same else same[0]
        target = Path(Endpoint(to, sa.path.local.port), sa.path.remote)
        self.pending[spi] = (sa.ike_spi, str(to), time.time())
        engine.move(sa.ike_spi, target, now)
        self._after_held(spi, engine, now)
        return True

    def moves(self, rate: float, duration: float) -> dict[str, Any]:
        self.answered = []
        self.move_failures = {}
        self.pending.clear()
        order = list(self.held)
        issued = skipped = 0
        cursor = 0
        cpu0 = _cpu()
        start = time.monotonic()
        end = start + duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = min(int((now - start) * rate) + 1, int(duration * rate)) - issued - skipped
            for _ in range(max(0, due)):
                if not order:
                    break
                spi = order[cursor % len(order)]
                cursor += 1
                if self._move_one(spi, now):
                    issued += 1
                else:
                    skipped += 1
            nearest = self._timers(now)
            next_move = start + (issued + skipped) / rate
            wait = min(POLL_MAX, max(0.0, next_move - time.monotonic()))
            if nearest is not None:
                wait = min(wait, max(0.0, nearest - time.monotonic()))
            for key, _mask in self.sel.select(wait):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self._receive(sock, time.monotonic())
        issue_end = time.monotonic()
        settle_end = issue_end + SETTLE
        while self.pending and time.monotonic() < settle_end:
            now = time.monotonic()
            self._timers(now)
            for key, _mask in self.sel.select(POLL_MAX):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self._receive(sock, time.monotonic())
        return {"rate": rate, "duration": duration, "issued": issued, "skipped_busy": skipped,
                "issue_s": issue_end - start, "answered": len(self.answered),
                "unanswered": len(self.pending), "failures": self.move_failures,
                "ike_sas_rekeyed": self.ike_rekeyed, "ike_sas_lost": dict(self.lost),
                "cpu_s": _cpu() - cpu0,
                "moves": [list(m) for m in self.answered]}


def _cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _grow(mover: Mover, size: int) -> dict[str, Any]:
    result = mover.run(max(0, size - len(mover.held)))
    result.pop("latencies")
    result["held"] = len(mover.held)
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--setup-timeout", type=float, default=10.0)
    ap.add_argument("--give-up", type=float, default=3600.0)
    args = ap.parse_args(argv)
    mover = Mover(args.config, args.concurrency, args.setup_timeout)
    out = FsPath(args.out)
    k = 0
    while True:
        cmd_path = FsPath(f"{out}.cmd{k}")
        mover.serve_until(cmd_path, args.give_up)
        if not cmd_path.exists():
            return 1  # the parent went away
        cmd = json.loads(cmd_path.read_text())
        op = cmd.get("op")
        result: dict[str, Any]
        if op == "grow":
            result = _grow(mover, int(cmd["size"]))
        elif op == "rebuild":
            mover.drop_all()
            result = _grow(mover, int(cmd["size"]))
        elif op == "moves":
            result = mover.moves(float(cmd["rate"]), float(cmd["duration"]))
        else:
            result = {"held": len(mover.held)}
        tmp = FsPath(f"{out}.done{k}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(f"{out}.done{k}")
        k += 1
        if op == "stop":
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
