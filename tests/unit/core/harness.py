"""Two native engines wired through an in-memory network, a fake clock, seeded randomness."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from mobike_vici.config import Config, load_string
from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import Event, IkeSaEstablished
from mobike_vici.core.ike_sa import IkeState
from mobike_vici.core.settings import EngineSettings
from mobike_vici.types import Endpoint, IPAddress, Path

ALICE = ipaddress.ip_address("192.0.2.1")
BOB = ipaddress.ip_address("192.0.2.2")


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def config_pair(proposal: str = "aes128-sha256-x25519", *, initiator_extra: str = "",
                responder_extra: str = "", child_initiator: str = "",
                child_responder: str = "", pools: str = "", esp: str = "aes128-sha256",
                init_local_ts: str = "10.1.0.0/24", resp_remote_ts: str = "10.1.0.0/24",
                ) -> tuple[Config, Config]:
    init = f"""
connections {{
  home {{
    local_addrs = {ALICE}
    remote_addrs = {BOB}
    proposals = {proposal}
    {initiator_extra}
    local {{ auth = psk
            id = alice@example.com }}
    remote {{ auth = psk
             id = bob.example.com }}
    children {{
      net {{ local_ts = {init_local_ts}
            remote_ts = 10.2.0.0/24
            esp_proposals = {esp}
            {child_initiator} }}
    }}
  }}
}}
secrets {{ ike-a {{ id-a = alice@example.com
                  id-b = bob.example.com
                  secret = "topsecret-psk" }} }}
"""
    resp = f"""
connections {{
  gw {{
    local_addrs = {BOB}
    proposals = {proposal}
    {responder_extra}
    local {{ auth = psk
            id = bob.example.com }}
    remote {{ auth = psk
             id = alice@example.com }}
    children {{
      net {{ local_ts = 10.2.0.0/24
            remote_ts = {resp_remote_ts}
            esp_proposals = {esp}
            {child_responder} }}
    }}
  }}
}}
secrets {{ ike-a {{ id-a = alice@example.com
                  id-b = bob.example.com
                  secret = "topsecret-psk" }} }}
{pools}
"""
    return load_string(init), load_string(resp)


@dataclass
class Net:
    """Delivers datagrams between the two engines; ``drop`` decides which get lost."""

    a: Engine
    b: Engine
    now: float = 0.0
    drop: Callable[[Datagram], bool] = lambda d: False
    log: list[Datagram] = field(default_factory=list)
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)
    addrs_a: set[IPAddress] = field(default_factory=lambda: {ALICE})
    """Every address of engine ``a`` (MOBIKE tests add more); the rest is ``b``'s."""
    down: set[IPAddress] = field(default_factory=set)
    """Addresses whose link is down: datagrams from or to them are lost."""
    nat: dict[Endpoint, Endpoint] = field(default_factory=dict)
    """Source NAT for ``a``: its private endpoint -> the public one ``b`` sees."""

    def engine_for(self, addr: IPAddress) -> Engine:
        return self.a if addr in self.addrs_a else self.b

    def _translate(self, d: Datagram) -> Path | None:
        """The path as the receiver sees it (after NAT), or None when lost."""
        if d.path.local.addr in self.down or d.path.remote.addr in self.down:
            return None
        local, remote = d.path.local, d.path.remote
        if local.addr in self.addrs_a:
            local = self.nat.get(local, local)
            if remote.addr in self.addrs_a:
                return None
        else:
            back = {pub: priv for priv, pub in self.nat.items()}
            remote = back.get(remote, remote)
            if remote.addr not in self.addrs_a:
                return None  # e.g. a NAT mapping that no longer exists
        return Path(remote, local)

    def pump(self, rounds: int = 50) -> None:
        """Deliver until quiet (no datagram in flight)."""
        for _ in range(rounds):
            moved = False
            for eng in (self.a, self.b):
                for d in eng.datagrams_to_send(self.now):
                    self.log.append(d)
                    moved = True
                    if d.keepalive or self.drop(d):
                        continue
                    # The receiver sees the path from its side.
                    seen = self._translate(d)
                    if seen is None:
                        continue
                    self.engine_for(seen.local.addr).receive_datagram(d.data, seen, self.now)
            self.collect()
            if not moved:
                return

    def collect(self) -> None:
        for eng, sink in ((self.a, self.events_a), (self.b, self.events_b)):
            while (ev := eng.next_event()) is not None:
                sink.append(ev)

    def advance_to(self, t: float) -> None:
        """Run timers up to ``t`` as an event loop would."""
        while True:
            timers = [x for x in (self.a.get_timer(), self.b.get_timer()) if x is not None]
            nxt = min(timers) if timers else None
            if nxt is None or nxt > t:
                break
            self.now = max(self.now, nxt)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = t
        self.pump()


def make_pair(seed: int = 1, settings: EngineSettings | None = None, **kw: str) -> Net:
    ca, cb = config_pair(**kw)
    a = Engine(ca, seeded(seed), lambda r: ALICE, settings)
    b = Engine(cb, seeded(seed + 1000), lambda r: BOB, settings)
    return Net(a, b)


def established_pair(seed: int = 1, settings: EngineSettings | None = None, *,
                     clear_events: bool = False, **kw: str) -> Net:
    """A pair whose first IKE_SA and CHILD_SA are up (alice initiated at time 0);
    ``clear_events`` forgets the setup's events so a test sees only its own."""
    net = make_pair(seed, settings, **kw)
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert of_type(net.events_a, IkeSaEstablished) and of_type(net.events_b, IkeSaEstablished)
    if clear_events:
        net.events_a.clear()
        net.events_b.clear()
    return net


def rekey_ike(engine: Engine, ike_spi: str, now: float) -> None:
    """Start a rekey of an established IKE_SA the way the product does: its rekey time
    comes now and the engine's timer runs (the engine has no call for it)."""
    sa = engine._ctx.sa_named(ike_spi)
    if sa.state != IkeState.ESTABLISHED:
        return
    sa.rekey_at = now
    engine._index.refile(sa)
    engine.handle_timer(now)


T = TypeVar("T")


def of_type(events: Iterable[object], cls: type[T]) -> list[T]:
    """The events of one class, in order."""
    return [e for e in events if isinstance(e, cls)]
