"""Per-setup work that must not grow with the number of IKE_SAs the engine holds."""
from __future__ import annotations

import pytest

from mobike_vici.core.context import Context
from mobike_vici.core.engine import Engine
from mobike_vici.core.events import ChildSaInstalled, ExchangeFailed, IkeSaEstablished
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
        engine._sas = _NoWalk(engine._sas)  # the table under test
        assert engine.peer_addresses(name)  # an O(1) lookup on both sides
    with pytest.raises(AssertionError, match="walked"):
        net.b.peer_addresses("00_00")  # an unknown name still falls back to the walk
