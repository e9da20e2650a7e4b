"""Benchmark: a drain of a native gateway (RFC 5685), clients native, at a bounded rate.

In one process, sans-I/O: one native gateway engine holding ``--sas`` client IKE_SAs
(each client its own native engine with its own identity and address), two native
target gateways, and an in-memory network. The drain is the daemon's own planner
(``pool.drain.Drain`` over a ``pool.view.PoolView`` that sees both targets up and
empty), paced in real time at ``--rate``; every redirect is the engine's INFORMATIONAL
REDIRECT, and each client follows it make-before-break (new IKE_SA and CHILD_SA at the
target, then the old IKE_SA deleted). The network has no latency and loses nothing:
what is measured is the cost of the protocol on this machine (the engines' CPU), not
a network.

Prints one JSON object: ``lost`` (clients without exactly one established IKE_SA, at a
target, at the end), ``drain_s`` (first redirect to the last old IKE_SA gone),
``cpu_s`` for the drain (all engines: gateway, targets and clients share this one
process, so this is the whole system's work), ``cpu_per_redirect_ms``, the clients'
``outage_ms`` from each REDIRECT to its new IKE_SA being up (median, p99, max), and the
split between targets. Never judges the numbers.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobike_vici.config import load_string
from mobike_vici.config.pool import PoolGateway, PoolSettings
from mobike_vici.core.engine import Engine
from mobike_vici.core.events import IkeSaRedirected
from mobike_vici.core.settings import EngineSettings
from mobike_vici.pool.drain import Drain, DrainSa
from mobike_vici.pool.view import PoolView
from mobike_vici.types import IPAddress
from mobike_vici.types import Path as IkePath

PSK = "bench-lab-only-not-a-secret-drain"
GATEWAYS = [ipaddress.ip_address(f"10.20.{n}.2") for n in (1, 2, 3)]
SOURCE, TARGETS = GATEWAYS[0], GATEWAYS[1:]


def client_address(k: int) -> IPAddress:
    return ipaddress.ip_address(int(ipaddress.ip_address("10.64.0.0")) + k)


def gateway_conf(addr: IPAddress, clients: int) -> str:
    secrets = "\n".join(f"  ike-c{k} {{ id = c{k}@bench\n    secret = {PSK} }}"
                        for k in range(clients))
    return f"""
connections {{ rw {{ local_addrs = {addr}
    proposals = aes128-sha256-x25519
    local {{ auth = psk
        id = gw@bench }}
    remote {{ auth = psk }}
    children {{ net {{ local_ts = 10.88.0.0/24
        esp_proposals = aes128gcm16 }} }} }} }}
secrets {{
  ike-gw {{ id = gw@bench
    secret = {PSK} }}
{secrets}
}}
"""


def client_conf(k: int) -> str:
    return f"""
connections {{ home {{ local_addrs = {client_address(k)}
    remote_addrs = {SOURCE}
    proposals = aes128-sha256-x25519
    local {{ auth = psk
        id = c{k}@bench }}
    remote {{ auth = psk
        id = gw@bench }}
    children {{ net {{ local_ts = {client_address(k)}/32
        remote_ts = 10.88.0.0/24
        esp_proposals = aes128gcm16 }} }} }} }}
secrets {{ ike-s {{ id-1 = c{k}@bench
    id-2 = gw@bench
    secret = {PSK} }} }}
"""


LOAD_SETTINGS = EngineSettings(cookie_threshold=1_000_000, block_threshold=1_000_000,
                               half_open_limit=1_000_000, dh_budget=1e9)


def _fixed(addr: IPAddress) -> Callable[[IPAddress], IPAddress]:
    return lambda remote: addr


class Net:
    """Every engine by address; delivers until quiet. No latency, no loss."""

    def __init__(self) -> None:
        self.by_addr: dict[IPAddress, Engine] = {}
        self.busy: set[IPAddress] = set()
        self.redirected: list[IkeSaRedirected] = []

    def add(self, addr: IPAddress, engine: Engine) -> None:
        self.by_addr[addr] = engine
        self.busy.add(addr)

    def pump(self) -> None:
        """Each datagram is handed over at the time it is (the clock is read for each):
        the outage the clients report is then the engines' processing time."""
        while self.busy:
            senders, self.busy = self.busy, set()
            for addr in senders:
                engine = self.by_addr[addr]
                for d in engine.datagrams_to_send(time.monotonic()):
                    target = self.by_addr.get(d.path.remote.addr)
                    if target is None or d.keepalive:
                        continue
                    target.receive_datagram(d.data, IkePath(d.path.remote, d.path.local),
                                            time.monotonic())
                    self.busy.add(d.path.remote.addr)
                while (ev := engine.next_event()) is not None:
                    if isinstance(ev, IkeSaRedirected):
                        self.redirected.append(ev)


def run(sas: int, rate: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)

    def randbytes(n: int) -> bytes:
        return rng.randbytes(n)

    net = Net()
    gws = {}
    for addr in GATEWAYS:
        # One gateway takes every client of the run within seconds: the DoS defaults
        # (cookies, the DH budget) would rightly throttle that; they are not measured here.
        engine = Engine(load_string(gateway_conf(addr, sas)), randbytes,
                        _fixed(addr), LOAD_SETTINGS)
        gws[addr] = engine
        net.add(addr, engine)
    clients = []
    t0 = time.monotonic()
    for k in range(sas):
        engine = Engine(load_string(client_conf(k)), randbytes, _fixed(client_address(k)))
        net.add(client_address(k), engine)
        engine.initiate("home", "net", time.monotonic())
        net.pump()
        clients.append(engine)
    setup_s = time.monotonic() - t0
    source = gws[SOURCE]
    listed = [s for s in source.status() if s.state == "ESTABLISHED" and not s.initiator]
    view = PoolView(PoolSettings(gateways=tuple(PoolGateway(a, str(a), 9474)
                                                for a in GATEWAYS)))
    for addr in TARGETS:
        view.on_answer(addr, 0, time.monotonic())
    drain_sas = [DrainSa(i, s.conn, s.ike_spi, s.path.local.addr, s.path.remote.addr)
                 for i, s in enumerate(listed)]
    start = time.monotonic()
    cpu0 = time.process_time()
    drain = Drain("bench", drain_sas, rate=rate, to=None, now=start, own=frozenset({SOURCE}))
    failed = 0
    while (at := drain.next_at()) is not None:
        now = time.monotonic()
        if now < at:
            time.sleep(at - now)
            continue
        step = drain.take(view, now)
        if step is None:
            continue
        try:
            source.redirect(step.sa.ike_spi, step.gateway.address, now)
            drain.on_result(step, True)
        except (KeyError, ValueError):
            drain.on_result(step, False)
            failed += 1
        view.left(step.sa.ike_spi, now)
        net.busy.add(SOURCE)
        net.pump()
    deadline = time.monotonic() + 30
    while source.status() and time.monotonic() < deadline:
        net.pump()
        time.sleep(0.01)
    drain_s = time.monotonic() - start
    cpu_s = time.process_time() - cpu0
    where: dict[str, int] = {}
    lost = 0
    for engine in clients:
        up = [s for s in engine.status() if s.state == "ESTABLISHED"]
        if len(up) != 1 or up[0].path.remote.addr not in TARGETS or not up[0].children:
            lost += 1
            continue
        key = str(up[0].path.remote.addr)
        where[key] = where.get(key, 0) + 1
    outages = sorted(1000.0 * (e.outage or 0.0) for e in net.redirected
                     if e.phase == "established")
    return {
        "bench": "drain", "ike_sas": sas, "rate_per_s": rate, "setup_s": round(setup_s, 2),
        "redirected": drain.redirected, "failed": failed, "lost": lost,
        "left_at_source": len(source.status()),
        "drain_s": round(drain_s, 3), "ideal_drain_s": round(sas / rate, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_per_redirect_ms": round(1000.0 * cpu_s / max(1, drain.redirected), 3),
        "outage_ms": {
            "median": round(statistics.median(outages), 3) if outages else None,
            "p99": round(outages[int(0.99 * (len(outages) - 1))], 3) if outages else None,
            "max": round(outages[-1], 3) if outages else None},
        "by_target": where,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sas", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.sas, args.rate, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
