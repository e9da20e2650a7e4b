"""Per-setup work that must not grow with the number of IKE_SAs the engine holds."""
from __future__ import annotations

import pytest

from mobike_vici.core.context import Context
from mobike_vici.core.engine import Engine
from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    ExchangeFailed,
    IkeSaEstablished,
)
from mobike_vici.core.ike_sa import IkeSa
from mobike_vici.core.settings import EngineSettings

from .harness import ALICE, BOB, config_pair, make_pair, of_type, seeded
from .test_engine_dos import Initiator, _drain, _establish


class _NoWalk(dict[bytes, IkeSa]):
    """An SA table that fails any walk over all of its SAs."""

    def values(self):  # type: ignore[override]
        raise AssertionError("walked the whole SA table")


def test_ike_auth_walks_the_sas_for_the_peer_load_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, cb = config_pair(responder_extra="unique = never")
    responder = Engine(cb, seeded(1), lambda r: BOB, EngineSettings(max_child_sas_per_peer=2))
    calls: list[int] = []
    original = Context.peer_load

    def counting(self: Context, sa: IkeSa) -> tuple[int, int]:
        calls.append(1)
        return original(self, sa)

    monkeypatch.setattr(Context, "peer_load", counting)
    for i in range(3):
        calls.clear()
        got = _establish(Initiator(ALICE), responder, 1.0 + i)
        assert of_type(got, IkeSaEstablished)
        assert len(calls) == 1
    # The count taken once still caps: the third IKE_SA comes without its CHILD_SA.
    assert sum(len(s.children) for s in responder.status()) == 2
    events = _drain(responder)
    assert len(of_type(events, ChildSaInstalled)) == 2
    assert [e.reason for e in of_type(events, ExchangeFailed)] == ["NO_ADDITIONAL_SAS"]


def test_sa_lookup_by_name_does_not_walk_the_table() -> None:
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    net.pump()
    name = net.b.status()[0].ike_spi
    assert net.a.status()[0].ike_spi == name
    for engine in (net.a, net.b):
        engine._sas = engine._ctx.sas = _NoWalk(engine._sas)  # the table under test
        assert engine.peer_addresses(name)  # an O(1) lookup on both sides
    with pytest.raises(AssertionError, match="walked"):
        net.b.peer_addresses("00_00")  # an unknown name still falls back to the walk


def test_setups_timers_rekeys_and_deletes_never_walk_the_responders_table() -> None:
    # Each of these is per packet or per timer on a gateway: a walk over every SA
    # would make it grow with the SAs. The table fails any walk; the index must do.
    _, cb = config_pair(responder_extra="unique = never")
    responder = Engine(cb, seeded(1), lambda r: BOB)
    peers = [Initiator(ALICE) for _ in range(3)]
    assert of_type(_establish(peers[0], responder, 1.0), IkeSaEstablished)
    responder._sas = responder._ctx.sas = _NoWalk(responder._sas)
    responder._ctx.sas = responder._sas
    for i, peer in enumerate(peers[1:]):
        assert of_type(_establish(peer, responder, 2.0 + i), IkeSaEstablished)
    assert responder.get_timer() is not None
    # The peer rekeys its CHILD_SA (the old one is deleted by SPI), then deletes the new.
    peer = peers[1]
    (child,) = [c for s in peer.engine.status() for c in s.children]
    peer.engine.rekey_child(child.unique_id, 5.0)
    _establish(peer, responder, 5.0)
    events = _drain(responder)
    assert of_type(events, ChildSaRekeyed)
    assert [e.reason for e in of_type(events, ChildSaDeleted)] == ["rekeyed"]
    (new,) = [c for s in peer.engine.status() for c in s.children]
    peer.engine.delete_child(new.unique_id, 6.0)
    _establish(peer, responder, 6.0)
    assert [e.reason for e in of_type(_drain(responder), ChildSaDeleted)] == [
        "deleted_by_peer"]
    # Far ahead: every DPD and rekey timer fires, and only the due SAs are visited.
    deadline = responder.get_timer()
    assert deadline is not None
    responder.handle_timer(deadline + 1e5)
    assert responder.datagrams_to_send(deadline + 1e5)
