"""charon's own moves and the escalation gate, on a fake clock."""

from __future__ import annotations

import ipaddress

from mobike_vici.mobike.follow import Follow, OwnMove
from mobike_vici.types import Endpoint, Path

V4_M0 = Path(Endpoint(ipaddress.ip_address("10.1.0.2"), 4500),
             Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))
V4_M1 = Path(Endpoint(ipaddress.ip_address("10.2.0.2"), 4500),
             Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))
V6_M0 = Path(Endpoint(ipaddress.ip_address("2001:db8:1::2"), 4500),
             Endpoint(ipaddress.ip_address("2001:db8:ff::2"), 4500))
V6_M1 = Path(Endpoint(ipaddress.ip_address("2001:db8:2::2"), 4500),
             Endpoint(ipaddress.ip_address("2001:db8:ff::2"), 4500))
AFTER = 10.0


def test_a_move_charon_made_itself_is_adopted_once_its_data_path_verifies() -> None:
    f = Follow(V4_M0, now=0.0)
    f.on_moved(V4_M0, V6_M0, 5.1, steered=False)
    assert f.own_move == OwnMove(V4_M0, V6_M0, 5.1)
    assert f.on_verified(V4_M0, 5.11) is None  # not where charon put it
    assert f.on_verified(V6_M0, 5.12) == OwnMove(V4_M0, V6_M0, 5.1)
    assert f.own_move is None
    assert f.on_verified(V6_M0, 5.2) is None  # adopted once


def test_a_move_the_controller_steered_is_not_charons_own() -> None:
    f = Follow(V4_M0, now=0.0)
    f.on_moved(V4_M0, V4_M1, 1.0, steered=True)
    assert f.own_move is None
    assert f.on_verified(V4_M1, 1.1) is None


def test_an_own_move_superseded_before_it_verified_is_judged_where_charon_is_now() -> None:
    f = Follow(V4_M0, now=0.0)
    f.on_moved(V4_M0, V6_M1, 2.0, steered=False)
    f.on_moved(V6_M1, V6_M0, 2.5, steered=False)
    assert f.on_verified(V6_M1, 2.6) is None  # charon left that path
    move = f.on_verified(V6_M0, 2.7)
    assert move is not None and move.old == V4_M0 and move.at == 2.0
    # A steered move after an unverified own one: the controller's, nothing to adopt.
    f.on_moved(V6_M0, V6_M1, 3.0, steered=False)
    f.on_moved(V6_M1, V4_M1, 3.5, steered=True)
    assert f.on_verified(V4_M1, 3.6) is None


def test_no_escalation_while_charons_path_shows_life() -> None:
    f = Follow(V4_M0, now=0.0)
    f.on_alive(V4_M0, 3.0)  # an answered probe where charon is
    assert f.escalation_hold(5.0, AFTER) == 13.0
    f.on_moved(V4_M0, V6_M0, 5.1, steered=False)  # charon's exchange answered on IPv6
    assert f.escalation_hold(7.0, AFTER) == 15.1
    assert f.escalation_hold(7.0, AFTER, last_inbound=6.9) == 16.9  # the peer's ESP there
    assert f.escalation_hold(16.9, AFTER, last_inbound=6.9) is None


def test_life_on_another_path_does_not_hold_the_escalation() -> None:
    """charon stuck on a dead path while the target works: the controller must push."""
    f = Follow(V4_M0, now=0.0)
    f.on_alive(V4_M0, 1.0)  # last answer before m0 died
    for t in (2.0, 4.0, 8.0, 10.5):
        f.on_alive(V4_M1, t)  # the target answers, charon is not there
    assert f.escalation_hold(10.5, AFTER) == 11.0
    assert f.escalation_hold(11.0, AFTER) is None


def test_signs_of_life_never_go_back_in_time() -> None:
    f = Follow(V4_M0, now=4.0)
    f.on_alive(V4_M0, 3.0)  # a late report of an older answer
    assert f.alive_at == 4.0
    f.on_moved(V4_M0, V4_M0, 5.0, steered=False)  # not a move at all
    assert f.own_move is None and f.alive_at == 4.0
