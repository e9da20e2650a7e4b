"""NAT detection when IKE rides a TCP stream (RFC 9329): the hashes cover the stream's
addresses and ports, which the transport tells the engine; the engine's own paths stay
UDP-shaped on the stream's initiator."""

from __future__ import annotations

from mobike_vici.core.events import ChildSaInstalled, IkeSaEstablished
from mobike_vici.types import Endpoint, Path

from .harness import ALICE, BOB, Net, make_pair, of_type

ALICE_TCP = Endpoint(ALICE, 40123)
"""The stream's ephemeral port on alice (the initiator, who connects)."""
BOB_TCP = Endpoint(BOB, 443)
"""Bob's listening tcp_port."""


def over_a_stream(net: Net, rounds: int = 6) -> None:
    """Carry alice's datagrams to bob over the stream, and bob's answers back to the
    path alice's engine sent on (what the transport hands it)."""
    engine_path: Path | None = None
    for _ in range(rounds):
        for d in net.a.datagrams_to_send(0.0):
            if d.keepalive:
                continue
            engine_path = d.path
            net.b.receive_datagram(d.data, Path(BOB_TCP, ALICE_TCP), 0.0)
        for d in net.b.datagrams_to_send(0.0):
            assert d.path == Path(BOB_TCP, ALICE_TCP) and engine_path is not None
            net.a.receive_datagram(d.data, engine_path, 0.0)
    net.collect()


def stream_ends(spi_i: bytes, path: Path, initiator: bool) -> Path:
    assert initiator
    return Path(ALICE_TCP, BOB_TCP)


def test_hashes_over_the_stream_find_no_nat() -> None:
    net = make_pair()
    net.a.set_wire_view(stream_ends)
    net.a.initiate("home", None, 0.0)
    over_a_stream(net)
    (ia,) = of_type(net.events_a, IkeSaEstablished)
    (ib,) = of_type(net.events_b, IkeSaEstablished)
    assert not ia.nat_local and not ia.nat_remote
    assert not ib.nat_local and not ib.nat_remote
    assert not of_type(net.events_a, ChildSaInstalled)[0].encap


def test_without_the_view_the_stream_looks_like_a_nat() -> None:
    """What the view fixes: the engine's UDP-shaped ports never match the stream's."""
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    over_a_stream(net)
    (ia,) = of_type(net.events_a, IkeSaEstablished)
    (ib,) = of_type(net.events_b, IkeSaEstablished)
    assert ia.nat_local and ia.nat_remote and ib.nat_remote
