"""The daemon's throw routes for peer addresses follow IKE_SA events one address at a
time: the set always equals the configured peers plus the live SAs' peers."""

from __future__ import annotations

import io
import ipaddress
import random

import pytest

from mobike_vici.config import load_string
from mobike_vici.core.events import IkeSaDeleted, IkeSaEstablished, IkeSaRekeyed, PeerMoved
from mobike_vici.daemon.routing import DaemonRouting
from mobike_vici.eventlog import EventLog, make_logger
from mobike_vici.types import Endpoint, IPAddress, Path

GATEWAY = ipaddress.ip_address("192.0.2.2")
PEERS = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 5)]
CONFIG = load_string("""
connections { gw { remote_addrs = 198.51.100.1
                   local { auth = psk }
                   remote { auth = psk } } }
secrets { ike-1 { secret = "x-psk" } }
""")


class _Owner:
    """Records what the routing asks of the kernel side, one call at a time."""

    def __init__(self) -> None:
        self.peers: set[IPAddress] = set()
        self.whole_set_calls = 0

    def exclude_peers(self, peers: object) -> None:
        self.whole_set_calls += 1
        self.peers = set(peers)  # type: ignore[call-overload]

    def exclude_peer(self, peer: IPAddress, excluded: bool) -> None:
        assert (peer in self.peers) != excluded, "a call that changes nothing"
        (self.peers.add if excluded else self.peers.discard)(peer)


def _path(remote: IPAddress) -> Path:
    return Path(Endpoint(GATEWAY, 500), Endpoint(remote, 500))


@pytest.mark.parametrize("seed", range(20))
def test_throw_routes_follow_random_sa_events(seed: int) -> None:
    rng = random.Random(seed)
    routing = DaemonRouting(CONFIG, EventLog(make_logger(io.StringIO())))
    owner = _Owner()
    routing.owner = owner  # type: ignore[assignment]
    routing._update_peers()  # start-up: the configured peer
    live: dict[str, IPAddress] = {}
    n = 0
    for _ in range(300):
        op = rng.randrange(4)
        spi = rng.choice(list(live)) if live else None
        if op == 0 or spi is None:
            n += 1
            spi, live[f"{n}_x"] = f"{n}_x", rng.choice(PEERS)
            routing.on_core_event(IkeSaEstablished(
                conn="gw", ike_spi=spi, path=_path(live[spi]), initiator=False,
                local_id="gw", remote_id="peer", proposal=""))
        elif op == 1:
            new = rng.choice(PEERS)
            routing.on_core_event(PeerMoved(conn="gw", ike_spi=spi, old_path=_path(live[spi]),
                                            new_path=_path(new)))
            live[spi] = new
        elif op == 2:
            n += 1
            live[f"{n}_x"] = live.pop(spi)
            routing.on_core_event(IkeSaRekeyed(conn="gw", ike_spi=spi, new_ike_spi=f"{n}_x"))
        else:
            routing.on_core_event(IkeSaDeleted(conn="gw", ike_spi=spi, path=_path(live[spi]),
                                               reason="deleted_by_peer"))
            del live[spi]
        assert owner.peers == {PEERS[0], *live.values()}
    assert owner.whole_set_calls == 1  # events never hand over the whole set
