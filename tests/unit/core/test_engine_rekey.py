"""CREATE_CHILD_SA: CHILD_SA and IKE_SA rekeying from either side, PFS, collisions, timers."""

from __future__ import annotations

import pytest

from mobike_vici.core.engine import Engine
from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from mobike_vici.core.exchanges.create_child import lowest_nonce_loses
from mobike_vici.ikev2.message import decode_header

from .harness import established_pair, make_pair, of_type, rekey_ike

_of = of_type


def _child_ids(engine: Engine) -> list[tuple[int, int]]:
    return [(c.spi_in, c.spi_out) for s in engine.status() for c in s.children]


@pytest.mark.parametrize("esp", ["aes128-sha256", "aes128-sha256-modp2048",
                                 "aes256gcm16-x25519"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_child_rekey_either_side(esp: str, side: str) -> None:
    net = established_pair(clear_events=True, esp=esp)
    us, peer = (net.a, net.b) if side == "a" else (net.b, net.a)
    (old,) = _child_ids(us)
    uid = us.status()[0].children[0].unique_id
    us.rekey_child(uid, 1.0)
    net.pump()
    ours_ev, peer_ev = ((net.events_a, net.events_b) if side == "a"
                        else (net.events_b, net.events_a))
    (new,) = _child_ids(us)
    assert new != old
    assert _child_ids(peer) == [(new[1], new[0])]
    (ins_us,) = _of(ours_ev, ChildSaInstalled)
    (ins_peer,) = _of(peer_ev, ChildSaInstalled)
    assert ins_us.keys == ins_peer.keys
    assert ins_us.initiator and not ins_peer.initiator  # the rekey's initiator
    assert ins_us.rekey_of == uid
    assert ins_us.proposal == esp
    (rk,) = _of(ours_ev, ChildSaRekeyed)
    assert (rk.old_spi_in, rk.new_spi_in) == (old[0], new[0])
    assert [e.reason for e in _of(ours_ev, ChildSaDeleted)] == ["rekeyed"]
    assert [e.reason for e in _of(peer_ev, ChildSaDeleted)] == ["rekeyed"]
    assert [s.state for s in us.status()] == ["ESTABLISHED"]


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_either_side_moves_children(side: str) -> None:
    net = established_pair(clear_events=True)
    us, peer = (net.a, net.b) if side == "a" else (net.b, net.a)
    children = _child_ids(us)
    old_spi = us.status()[0].ike_spi
    rekey_ike(us, old_spi, 1.0)
    net.pump()
    ours_ev, peer_ev = ((net.events_a, net.events_b) if side == "a"
                        else (net.events_b, net.events_a))
    (rk_us,) = _of(ours_ev, IkeSaRekeyed)
    (rk_peer,) = _of(peer_ev, IkeSaRekeyed)
    assert rk_us.ike_spi == rk_peer.ike_spi == old_spi
    assert rk_us.new_ike_spi == rk_peer.new_ike_spi != old_spi
    (st_us,) = us.status()
    (st_peer,) = peer.status()
    assert st_us.ike_spi == st_peer.ike_spi == rk_us.new_ike_spi
    # The rekey's initiator sends the I flag now, but RFC 4555's roles (what status
    # says, as charon's list-sas) stay with the side that set the IKE_SA up.
    assert net.a.status()[0].initiator and not net.b.status()[0].initiator
    assert _child_ids(us) == children
    assert [e.reason for e in _of(ours_ev, IkeSaDeleted)] == ["rekeyed"]
    assert [e.reason for e in _of(peer_ev, IkeSaDeleted)] == ["rekeyed"]
    assert not _of(ours_ev, ChildSaDeleted) and not _of(peer_ev, ChildSaDeleted)
    # The new IKE_SA works: a CHILD_SA rekey and a delete run over it.
    peer.rekey_child(peer.status()[0].children[0].unique_id, 2.0)
    net.pump()
    assert len(_child_ids(us)) == 1 and _child_ids(us) != children
    us.delete_ike(st_us.ike_spi, 3.0)
    net.pump()
    assert us.status() == [] and peer.status() == []


def test_child_rekey_collision_leaves_one_sa() -> None:
    net = established_pair(clear_events=True, esp="aes128-sha256")
    ua = net.a.status()[0].children[0].unique_id
    ub = net.b.status()[0].children[0].unique_id
    # Both start a rekey before either hears from the other.
    net.a.rekey_child(ua, 1.0)
    net.b.rekey_child(ub, 1.0)
    net.pump()
    assert len(_child_ids(net.a)) == 1
    assert _child_ids(net.b) == [(o, i) for i, o in _child_ids(net.a)]
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    assert [s.state for s in net.b.status()] == ["ESTABLISHED"]


def test_lowest_nonce_loses() -> None:
    assert lowest_nonce_loses((b"\x01" * 32, b"\x09" * 32), (b"\x05" * 32, b"\x06" * 32))
    assert not lowest_nonce_loses((b"\x05" * 32, b"\x09" * 32), (b"\x02" * 32, b"\x06" * 32))


def test_rekey_timers_fire_between_rekey_and_rand_time() -> None:
    net = established_pair(
        clear_events=True,
        child_initiator="rekey_time = 100s\n life_time = 200s\n rand_time = 10s",
        child_responder="rekey_time = 1000s")
    t = net.a.get_timer()
    assert t is not None and 90.0 <= t <= 100.0
    net.advance_to(101.0)
    assert len(_of(net.events_a, ChildSaRekeyed)) == 1
    assert len(_child_ids(net.a)) == 1


def test_replaced_sa_retired_when_peer_never_deletes_it() -> None:
    net = established_pair(clear_events=True)
    # The Delete for the old IKE_SA gets lost for good.
    net.drop = lambda d: decode_header(d.data).exchange == 37
    rekey_ike(net.a, net.a.status()[0].ike_spi, 1.0)
    net.pump()
    assert sorted(s.state for s in net.b.status()) == ["ESTABLISHED", "REKEYED"]
    net.b.handle_timer(166.0)
    net.collect()
    assert [s.state for s in net.b.status()] == ["ESTABLISHED"]
    assert [e.reason for e in _of(net.events_b, IkeSaDeleted)] == ["rekeyed"]
    # The rekey initiator gives up on its unanswered Delete; the reason stays "rekeyed".
    net.advance_to(200.0)
    assert [e.reason for e in _of(net.events_a, IkeSaDeleted)] == ["rekeyed"]
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_ike_rekey_collision_leaves_one_sa(seed: int) -> None:
    net = make_pair(seed=seed)
    net.a.initiate("home", None, 0.0)
    net.pump()
    children = _child_ids(net.a)
    rekey_ike(net.a, net.a.status()[0].ike_spi, 1.0)
    rekey_ike(net.b, net.b.status()[0].ike_spi, 1.0)
    net.pump()
    (sa,) = net.a.status()
    (sb,) = net.b.status()
    assert sa.ike_spi == sb.ike_spi
    assert sa.state == sb.state == "ESTABLISHED"
    assert _child_ids(net.a) == children
    assert _child_ids(net.b) == [(o, i) for i, o in children]
    # Each side reported exactly one hand-over, to the SA that survived.
    assert [e.new_ike_spi for e in _of(net.events_a, IkeSaRekeyed)] == [sa.ike_spi]
    assert [e.new_ike_spi for e in _of(net.events_b, IkeSaRekeyed)] == [sb.ike_spi]
    assert not _of(net.events_a, ChildSaDeleted)


@pytest.mark.parametrize("esp", ["aes128-sha256", "aes128-sha256-modp2048"])
def test_additional_child_sa_on_established_ike_sa(esp: str) -> None:
    net = established_pair(clear_events=True, esp=esp)
    (ike,) = net.a.status()
    net.a.initiate("home", "net", 1.0)
    net.pump()
    (ike_a,) = net.a.status()
    (ike_b,) = net.b.status()
    assert ike_a.ike_spi == ike.ike_spi  # no second IKE_SA
    assert len(ike_a.children) == len(ike_b.children) == 2
    assert sorted(_child_ids(net.a)) == sorted((o, i) for i, o in _child_ids(net.b))
    (ins_a,) = _of(net.events_a, ChildSaInstalled)
    (ins_b,) = _of(net.events_b, ChildSaInstalled)
    assert ins_a.keys == ins_b.keys and ins_a.proposal == esp
    assert ins_a.rekey_of is None
