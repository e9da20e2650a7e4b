"""The IKE_SA+CHILD_SA load generator: one process, one initiator, a fixed number in flight.

Runs inside the initiator's namespace (started by ``ike_setup.py``), on the
native core's sans-I/O Engine. Each setup gets a fresh Engine: the engine
already makes a new IKE_SA per ``initiate()``, but its timer scan covers every
SA it holds, and an initiator that kept thousands of established SAs would
measure itself rather than the responder. So an established setup's engine is
simply dropped (the responder keeps its SAs, as with strongSwan's load-tester),
or with ``--delete`` it first deletes its IKE_SA and is dropped once that is done.

Datagrams are demultiplexed to their engine by the initiator SPI (the first 8
bytes of every IKE header). Connections (one per local address) are used round
robin, so the half-open SAs per source address stay low and no responder's
per-address COOKIE threshold punishes one side only.

Protocol with the parent: bind, run ``--warmup`` setups, write ``<out>.ready``,
wait for ``<out>.go``, run, write one JSON object to ``<out>``. Standard output is not used (the lab
sends it to a log file).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import resource
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath

from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    ChildSaInstalled,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
)
from mobike_vici.daemon import udp
from mobike_vici.daemon.credentials import load_native
from mobike_vici.daemon.framing import NattKind, classify_natt, frame_natt
from mobike_vici.types import IKE_PORT, NATT_PORT, Endpoint, Path

IKE_SA_INIT = 34
HEADER_LEN = 28
BATCH = 64
"""Datagrams read per socket per wakeup."""
POLL_MAX = 0.05
"""Longest select() wait, so the duration limit and setup timeouts are checked."""


@dataclass
class Setup:
    """One IKE_SA+CHILD_SA being set up (or, with --delete, being deleted)."""

    engine: Engine
    started: float
    deleting: bool = False


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    deleted: int = 0

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


def ike_datagrams(sock: socket.socket) -> Iterator[tuple[bytes, Path]]:
    """Up to BATCH waiting IKE messages on ``sock`` (NAT-T framing removed), with their path."""
    for _ in range(BATCH):
        try:
            data, local, remote = udp.receive(sock)
        except BlockingIOError:
            return
        if local.port == NATT_PORT:
            kind, data = classify_natt(data)
            if kind != NattKind.IKE:
                continue
        if len(data) >= HEADER_LEN:
            yield data, Path(local, remote)


class Generator:
    def __init__(self, config_path: str, concurrency: int, duration: float,
                 setup_timeout: float, delete: bool) -> None:
        # As the daemon reads it: certificates and keys beside the file (--auth ecdsa).
        self.config = load_native(config_path)
        self.wall = time.time() - time.monotonic()
        self.conns = [c.name for c in self.config.connections]
        if not self.conns:
            raise SystemExit("load generator: the config has no connection")
        self.concurrency = concurrency
        self.count = 0
        self.duration = duration
        self.setup_timeout = setup_timeout
        self.delete = delete
        self.setups: dict[bytes, Setup] = {}
        self.tally = Tally()
        self.initiated = 0
        self.sel = selectors.DefaultSelector()
        self.socks: dict[Endpoint, socket.socket] = {}
        for conn in self.config.connections:
            for spec in conn.local_addrs:
                addr = ipaddress.ip_address(spec)
                family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
                for port in (IKE_PORT, NATT_PORT):
                    ep = Endpoint(addr, port)
                    if ep not in self.socks:
                        sock = udp.open_udp(family, str(addr), port)
                        self.socks[ep] = sock
                        self.sel.register(sock, selectors.EVENT_READ)

    # ----------------------------------------------------------------- I/O

    def _flush(self, engine: Engine, now: float) -> None:
        self._send(engine.datagrams_to_send(now))

    def _send(self, datagrams: list[Datagram]) -> None:
        for dg in datagrams:
            sock = self.socks.get(dg.path.local)
            if sock is None:
                continue  # a path we have no socket for: the engine will retransmit
            data = frame_natt(dg.data, dg.keepalive) if dg.path.natt else dg.data
            # A full socket buffer is a lost datagram; retransmission covers it.
            with contextlib.suppress(OSError):
                udp.send(sock, data, dg.path.local.addr, dg.path.remote)

    def _receive(self, sock: socket.socket, now: float) -> None:
        for data, path in ike_datagrams(sock):
            self._dispatch(data, path, now)

    def _dispatch(self, data: bytes, path: Path, now: float) -> None:
        """One IKE message to the engine its SPI belongs to."""
        setup = self.setups.get(data[:8])
        if setup is None:
            return  # an SA whose engine we dropped already (e.g. a late retransmit)
        setup.engine.receive_datagram(data, path, now)
        self._after(data[:8], setup, now)

    # ----------------------------------------------------------------- setups

    def _start(self, now: float) -> None:
        engine = Engine(self.config, os.urandom, lambda _remote: None)
        engine.set_wall_clock(self.wall)
        engine.initiate(self.conns[self.initiated % len(self.conns)], None, now)
        self.initiated += 1
        out = engine.datagrams_to_send(now)
        spi = next((dg.data[:8] for dg in out
                    if len(dg.data) >= HEADER_LEN and dg.data[18] == IKE_SA_INIT), None)
        if spi is None:
            self.tally.fail("no_ike_sa_init_request")
            return
        self.setups[spi] = Setup(engine, now)
        self._send(out)

    def _after(self, spi: bytes, setup: Setup, now: float) -> None:
        """Read the engine's events, settle the setup, send what it queued."""
        engine = setup.engine
        done = False
        while (ev := engine.next_event()) is not None:
            if isinstance(ev, ChildSaInstalled) and not setup.deleting:
                self.tally.latencies.append(now - setup.started)
                if self.delete:
                    setup.deleting = True
                    engine.delete_ike(ev.ike_spi, now)
                else:
                    done = True
            elif isinstance(ev, IkeSaDeleted):
                if setup.deleting:
                    self.tally.deleted += 1
                elif not done:
                    self.tally.fail(ev.reason)
                done = True
            elif isinstance(ev, ExchangeFailed) and not setup.deleting and not done:
                self.tally.fail(f"{ev.exchange}: {ev.reason}")
                done = True
            elif isinstance(ev, IkeSaEstablished):
                pass  # the CHILD_SA event that follows is what counts
        self._flush(engine, now)
        if done:
            self.setups.pop(spi, None)

    def _timers(self, now: float) -> float | None:
        """Fire due engine timers, expire stuck setups; the next deadline."""
        nearest: float | None = None
        for spi, setup in list(self.setups.items()):
            if not setup.deleting and now - setup.started > self.setup_timeout:
                self.tally.fail("setup_timeout")
                del self.setups[spi]
                continue
            deadline = setup.engine.get_timer()
            if deadline is not None and deadline <= now:
                setup.engine.handle_timer(now)
                self._after(spi, setup, now)
                deadline = setup.engine.get_timer()
            if deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        return nearest

    def _setting_up(self) -> int:
        return sum(1 for s in self.setups.values() if not s.deleting)

    def run(self, count: int) -> dict[str, object]:
        """Run ``count`` setups (or until the duration is up); a fresh tally each time."""
        self.count = count
        self.initiated = 0
        self.setups.clear()
        self.tally = Tally()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        stop_at = start + self.duration
        last_done = start
        idle = 0.0
        while True:
            now = time.monotonic()
            open_for_new = self.initiated < self.count and now < stop_at
            while open_for_new and self._setting_up() < self.concurrency:
                self._start(now)
                open_for_new = self.initiated < self.count
            if not open_for_new and not self.setups:
                break
            if now >= stop_at + self.setup_timeout:
                for setup in self.setups.values():
                    self.tally.fail("unfinished" if not setup.deleting else "delete_unfinished")
                break
            nearest = self._timers(now)
            wait = POLL_MAX if nearest is None else min(POLL_MAX, max(0.0, nearest - now))
            before = len(self.tally.latencies)
            t0 = time.monotonic()
            ready = self.sel.select(wait)
            idle += time.monotonic() - t0
            for key, _mask in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self._receive(sock, time.monotonic())
            if len(self.tally.latencies) != before:
                last_done = time.monotonic()
        end = time.monotonic()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {
            "started": start,
            "last_setup": last_done,
            "ended": end,
            "initiated": self.initiated,
            "completed": len(self.tally.latencies),
            "latencies": self.tally.latencies,
            "failures": self.tally.failures,
            "deleted": self.tally.deleted,
            "cpu_s": cpu,
            "idle_s": idle,
        }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--setup-timeout", type=float, default=10.0)
    ap.add_argument("--delete", action="store_true")
    ap.add_argument("--warmup", type=int, default=0)
    args = ap.parse_args(argv)
    gen = Generator(args.config, args.concurrency, args.duration, args.setup_timeout,
                    args.delete)
    out = FsPath(args.out)
    # Warm-up setups, not counted: the first setups of a fresh process (ours and
    # the responder's) pay for lazy imports and cold caches.
    warmup = gen.run(args.warmup) if args.warmup > 0 else None
    FsPath(f"{out}.ready").touch()
    go = FsPath(f"{out}.go")
    give_up = time.monotonic() + 60.0
    while not go.exists():
        if time.monotonic() > give_up:
            return 1
        time.sleep(0.001)
    result = gen.run(args.count)
    if warmup is not None:
        result["warmup_completed"] = warmup["completed"]
        result["warmup_failures"] = warmup["failures"]
    tmp = FsPath(f"{out}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(out)  # the parent never reads a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
