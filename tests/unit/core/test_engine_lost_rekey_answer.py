"""Our answer to the peer's CHILD_SA rekey is lost: the peer knows only the old CHILD_SA.

Until its retransmission (charon: 4 s) gets our cached answer, the peer has no idea of
the CHILD_SA that answer made. A rekey we start of that one (the data path repair after
a move) meets CHILD_SA_NOT_FOUND; the engine then rekeys the old CHILD_SA, which the
peer has, and deletes it: the peer installs the new one at once (RFC 7296 §2.8). The
peer's late retransmission completes its own rekey as a collision with that DELETE, and
the CHILD_SA it made is deleted, so both ends keep one pair.
"""

from __future__ import annotations

from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    ChildSaInstalled,
    ChildSaRekeyed,
    ChildSaUpdated,
    ExchangeFailed,
)
from mobike_vici.ikev2.constants import ExchangeType
from mobike_vici.ikev2.message import decode_header

from .harness import ALICE, BOB, Net, established_pair, of_type
from .test_mobike import ALICE2
from .test_mobike import path as mobike_path
from .test_mobike import setup as mobike_setup


def _pairs(engine: Engine) -> set[tuple[int, int]]:
    return {(c.spi_in, c.spi_out) for s in engine.status() for c in s.children}


def _gateway_rekey_answer_lost(net: Net) -> tuple[int, int]:
    """Bob (the gateway) rekeys the CHILD_SA at 1.0 and alice's answer is lost once;
    returns alice's (old, new) CHILD_SA unique IDs."""
    lost = {"n": 0}

    def drop(d: Datagram) -> bool:
        h = decode_header(d.data)
        if (d.path.local.addr == ALICE and h.is_response and lost["n"] == 0
                and h.exchange == ExchangeType.CREATE_CHILD_SA):
            lost["n"] += 1
            return True
        return False

    (old,) = net.a.status()[0].children
    net.drop = drop
    net.now = 1.0
    net.b.rekey_child(net.b.status()[0].children[0].unique_id, 1.0)
    net.pump()
    assert lost["n"] == 1
    (made,) = of_type(net.events_a, ChildSaInstalled)
    assert made.rekey_of == old.unique_id and not made.initiator
    net.events_a.clear()
    net.events_b.clear()
    return old.unique_id, made.unique_id


def test_rekey_of_the_sa_the_peer_lacks_rekeys_the_one_it_has() -> None:
    net = established_pair(clear_events=True)
    old, unknown = _gateway_rekey_answer_lost(net)
    net.now = 1.5
    net.a.rekey_child(unknown, 1.5)  # the repair after a move
    net.pump()  # no time passes: well before bob's retransmission at 5.0
    rekeyed = of_type(net.events_a, ChildSaRekeyed)
    assert [r.old_unique_id for r in rekeyed] == [old]
    new = rekeyed[0].new_unique_id
    # The peer holds the SA we made, with the SPIs swapped, and no longer the old one.
    ours = {c.unique_id: (c.spi_in, c.spi_out) for c in net.a.status()[0].children}
    assert old not in ours
    spi_in, spi_out = ours[new]
    assert (spi_out, spi_in) in _pairs(net.b)
    assert not [e for e in of_type(net.events_a, ExchangeFailed)
                if e.exchange == "CREATE_CHILD_SA"]
    # Bob's retransmission gets the cached answer; the SA it made goes again.
    net.advance_to(30.0)
    assert _pairs(net.a) == {(spi_in, spi_out)}
    assert _pairs(net.b) == {(spi_out, spi_in)}


def test_rekey_of_an_sa_the_peer_lacks_for_another_reason_still_fails() -> None:
    net = established_pair(clear_events=True)
    old, unknown = _gateway_rekey_answer_lost(net)
    net.advance_to(6.0)  # bob's retransmission completed its rekey: the old SA is gone
    assert old not in {c.unique_id for c in net.a.status()[0].children}
    assert unknown in {c.unique_id for c in net.a.status()[0].children}
    before = len(of_type(net.events_a, ChildSaRekeyed))
    net.a.rekey_child(unknown, 6.0)
    net.pump()
    # Here the peer knows it: an ordinary rekey.
    assert len(of_type(net.events_a, ChildSaRekeyed)) == before + 1


def test_a_move_after_the_lost_answer_moves_both_child_sas() -> None:
    net = mobike_setup()
    net.events_a.clear()
    net.events_b.clear()
    old, unknown = _gateway_rekey_answer_lost(net)
    new = mobike_path(ALICE2, BOB)
    net.a.move(net.a.status()[0].ike_spi, new, net.now)
    net.pump()
    # The old CHILD_SA, the only one the peer has, follows the move as well.
    assert {e.unique_id for e in of_type(net.events_a, ChildSaUpdated)
            if e.path == new} == {old, unknown}
