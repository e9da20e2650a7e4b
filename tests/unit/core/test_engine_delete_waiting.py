"""delete_ike while a request of ours is outstanding (a daemon stopped mid-exchange).

The DELETE may not overtake the outstanding request (window size 1, RFC 7296 §2.3), so
the engine resends that request at once (the peer answers a lost answer from its cache)
and sends the DELETE as soon as it is answered; if no answer comes within
``EngineSettings.delete_wait`` the DELETE goes anyway, with the next message ID.
"""

from __future__ import annotations

from mobike_vici.core.engine import Datagram
from mobike_vici.core.events import ChildSaDeleted, ExchangeFailed, IkeSaDeleted
from mobike_vici.core.settings import EngineSettings
from mobike_vici.ikev2.constants import ExchangeType
from mobike_vici.ikev2.message import decode_header

from .harness import ALICE, Net, established_pair, of_type, rekey_ike


def _answers_from_alice(d: Datagram) -> bool:
    h = decode_header(d.data)
    return d.path.local.addr == ALICE and h.is_response


def _bob_rekeys_with_answer_lost(net: Net, lose_all: bool) -> None:
    """Bob (the gateway) rekeys its CHILD_SA at 1.0; alice's answer is lost (every
    answer of hers when ``lose_all``)."""
    lost = {"n": 0}

    def drop(d: Datagram) -> bool:
        if not _answers_from_alice(d):
            return False
        if lose_all or lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    net.drop = drop
    net.now = 1.0
    net.b.rekey_child(net.b.status()[0].children[0].unique_id, 1.0)
    net.pump()
    assert lost["n"] == 1
    assert net.b.status()[0].children[0].state == "REKEYING"  # not answered yet


def test_delete_behind_a_lost_answer_goes_after_one_resend() -> None:
    net = established_pair(clear_events=True)
    _bob_rekeys_with_answer_lost(net, lose_all=False)
    spi = net.b.status()[0].ike_spi
    net.now = 1.1
    net.b.delete_ike(spi, 1.1)
    net.pump()  # no time passes: the resend's cached answer, then the DELETE
    assert [e.reason for e in of_type(net.events_a, IkeSaDeleted)] == ["deleted_by_peer"]
    assert [e.reason for e in of_type(net.events_b, IkeSaDeleted)] == ["deleted_locally"]
    assert net.a.status() == [] and net.b.status() == []


def test_delete_goes_anyway_when_the_outstanding_request_stays_unanswered() -> None:
    settings = EngineSettings()
    net = established_pair(settings=settings, clear_events=True)
    _bob_rekeys_with_answer_lost(net, lose_all=True)
    spi = net.b.status()[0].ike_spi
    net.now = 1.1
    net.b.delete_ike(spi, 1.1)
    net.pump()
    assert not of_type(net.events_a, IkeSaDeleted)  # still waiting for the answer
    net.advance_to(1.1 + settings.delete_wait)
    # Alice took the rekey request, so the DELETE's message ID is the one she expects.
    assert [e.reason for e in of_type(net.events_a, IkeSaDeleted)] == ["deleted_by_peer"]
    deletes = [d for d in net.log if d.path.local.addr != ALICE
               and decode_header(d.data).exchange == ExchangeType.INFORMATIONAL]
    assert deletes and decode_header(deletes[0].data).message_id == 1
    (failed,) = of_type(net.events_b, ExchangeFailed)
    assert failed.exchange == "CREATE_CHILD_SA" and "deleting" in failed.reason
    # Bob's side goes when the DELETE's own retransmissions end (its answers are lost).
    assert net.b.status()[0].state == "DELETING"


def test_delete_without_outstanding_request_is_unchanged() -> None:
    net = established_pair(clear_events=True)
    spi = net.b.status()[0].ike_spi
    net.b.delete_ike(spi, 1.0)
    net.pump()
    assert [e.reason for e in of_type(net.events_a, IkeSaDeleted)] == ["deleted_by_peer"]
    # Nothing else went before it: no CHILD_SA was deleted on its own first.
    assert [e.reason for e in of_type(net.events_a, ChildSaDeleted)] == ["deleted_by_peer"]
    assert not of_type(net.events_b, ExchangeFailed)


def test_delete_behind_an_ike_rekey_deletes_the_new_ike_sa_too() -> None:
    net = established_pair(clear_events=True)
    lost = {"n": 0}

    def drop(d: Datagram) -> bool:
        if _answers_from_alice(d) and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    net.drop = drop
    spi = net.b.status()[0].ike_spi
    net.now = 1.0
    rekey_ike(net.b, spi, 1.0)
    net.b.handle_timer(1.0)
    net.pump()
    assert lost["n"] == 1 and net.b.status()[0].state == "REKEYING"
    net.now = 1.1
    net.b.delete_ike(spi, 1.1)
    net.pump()
    # The rekey completed with the resend; the IKE_SA it made is deleted as well, so
    # the peer keeps nothing of us.
    assert net.a.status() == [] and net.b.status() == []
    assert "deleted_by_peer" in [e.reason for e in of_type(net.events_a, IkeSaDeleted)]
