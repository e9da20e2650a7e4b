"""IKE fragmentation (RFC 7383) between two native engines on a fake clock: negotiation,
cutting by fragment_size, loss and retransmission of fragments, forged fragments, and a
MOBIKE move of an SA set up in fragments."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    IkeSaEstablished,
    IkeSaMoved,
    MessageFragmented,
    PacketDropped,
)
from mobike_vici.core.settings import EngineSettings
from mobike_vici.ikev2.constants import ExchangeType, PayloadType
from mobike_vici.ikev2.message import decode_header, transport_overhead
from mobike_vici.types import Endpoint, Path

from .harness import ALICE, BOB, Net, config_pair, make_pair, of_type, rekey_ike, seeded

SMALL = EngineSettings(fragment_size=250)
"""Small enough that a PSK IKE_AUTH request and its response both need two fragments."""


def is_fragment(d: Datagram) -> bool:
    return not d.keepalive and decode_header(d.data).next_payload == PayloadType.SKF


def auth_datagrams(net: Net, response: bool) -> list[Datagram]:
    out = []
    for d in net.log:
        if d.keepalive:
            continue
        h = decode_header(d.data)
        if h.exchange == ExchangeType.IKE_AUTH and h.is_response == response:
            out.append(d)
    return out


def established(net: Net) -> bool:
    return bool(of_type(net.events_a, IkeSaEstablished)
                and of_type(net.events_b, IkeSaEstablished))


def start(net: Net) -> Net:
    net.a.initiate("home", None, net.now)
    net.pump()
    return net


def test_both_directions_cut_to_fragment_size_and_reassembled() -> None:
    net = start(make_pair(settings=SMALL))
    assert established(net)
    for response in (False, True):
        sent = auth_datagrams(net, response)
        assert len(sent) >= 2 and all(is_fragment(d) for d in sent)
        for d in sent:
            assert len(d.data) + transport_overhead(4, d.path.natt) <= SMALL.fragment_size
    # In order: the request cut, reassembled, the response cut, reassembled.
    (out_a, in_a) = of_type(net.events_a, MessageFragmented)
    (in_b, out_b) = of_type(net.events_b, MessageFragmented)
    for out, into in ((out_a, in_b), (out_b, in_a)):
        assert out.sent and not into.sent and out.exchange == into.exchange == "IKE_AUTH"
        assert (into.fragments, into.length) == (out.fragments, out.length)


def test_default_size_sends_small_messages_whole() -> None:
    net = start(make_pair())
    assert established(net)
    assert not any(is_fragment(d) for d in net.log)
    assert not of_type(net.events_a + net.events_b, MessageFragmented)


def test_fragmentation_no_is_not_announced_and_nothing_is_cut() -> None:
    net = start(make_pair(settings=SMALL, responder_extra="fragmentation = no"))
    assert established(net)
    assert not any(is_fragment(d) for d in net.log)
    # Both IKE_AUTH messages are larger than the fragment size: they went whole.
    assert all(len(d.data) + 32 > SMALL.fragment_size for d in auth_datagrams(net, False))


def test_accept_takes_fragments_but_sends_whole() -> None:
    net = start(make_pair(settings=SMALL, initiator_extra="fragmentation = accept"))
    assert established(net)
    assert not any(is_fragment(d) for d in auth_datagrams(net, False))
    assert all(is_fragment(d) for d in auth_datagrams(net, True))


def drop_first(match: Callable[[Datagram], bool]) -> Callable[[Datagram], bool]:
    """A drop rule that loses the first datagram ``match`` accepts, once."""
    done = []

    def drop(d: Datagram) -> bool:
        if not done and not d.keepalive and match(d):
            done.append(d)
            return True
        return False
    return drop


def fragment_number(d: Datagram) -> int:
    return int.from_bytes(d.data[28 + 4:28 + 6], "big")


def test_a_lost_request_fragment_is_recovered_by_resending_all_fragments() -> None:
    net = make_pair(settings=SMALL)
    net.drop = drop_first(lambda d: is_fragment(d) and not decode_header(d.data).is_response
                          and fragment_number(d) == 2)
    start(net)
    assert not established(net)
    first_round = len(auth_datagrams(net, False))
    net.advance_to(SMALL.retransmit.timeout + 0.01)
    assert established(net)
    requests = auth_datagrams(net, False)
    assert len(requests) == 2 * first_round  # every fragment again, the same bytes
    assert [d.data for d in requests[first_round:]] == [d.data for d in requests[:first_round]]
    # Fragment 1 arrived twice: the copy is an authentic duplicate, dropped.
    dups = [e for e in of_type(net.events_b, PacketDropped) if e.reason == "duplicate fragment"]
    assert len(dups) == 1 and dups[0].authenticated


def test_a_lost_response_fragment_is_resent_once_per_retransmitted_request() -> None:
    net = make_pair(settings=SMALL)
    net.drop = drop_first(lambda d: is_fragment(d) and decode_header(d.data).is_response
                          and fragment_number(d) == 2)
    start(net)
    responses_before = auth_datagrams(net, True)
    assert not of_type(net.events_a, IkeSaEstablished)
    net.advance_to(SMALL.retransmit.timeout + 0.01)
    assert established(net)
    responses = auth_datagrams(net, True)
    # All request fragments came again, but only fragment 1 made the responder resend
    # its cached response (RFC 7383 §2.6.1): one more copy of each response fragment.
    assert len(responses) == 2 * len(responses_before)
    assert [d.data for d in responses[len(responses_before):]] == [
        d.data for d in responses_before]


def test_forged_fragments_are_dropped_before_they_are_kept() -> None:
    net = make_pair(settings=SMALL)
    forged: list[str] = []

    def inject(d: Datagram) -> bool:
        if is_fragment(d) and not decode_header(d.data).is_response and not forged:
            seen = Path(d.path.remote, d.path.local)
            bad = bytearray(d.data)
            bad[-1] ^= 0xFF  # the ICV
            net.b.receive_datagram(bytes(bad), seen, net.now)
            other = bytearray(d.data)
            other[8:16] = b"\x99" * 8  # a responder SPI nobody holds
            net.b.receive_datagram(bytes(other), seen, net.now)
            # A fragment of another message ID: refused before any cryptography.
            later = bytearray(d.data)
            later[20:24] = (7).to_bytes(4, "big")
            net.b.receive_datagram(bytes(later), seen, net.now)
            forged.append("done")
        return False

    net.drop = inject
    start(net)
    assert forged and established(net)
    reasons = [e.reason for e in of_type(net.events_b, PacketDropped)]
    assert "integrity check failed" in reasons and "unknown SPI" in reasons
    assert "message ID 7 outside the window" in reasons


def test_mobike_move_of_an_sa_set_up_in_fragments() -> None:
    alice2 = ipaddress.ip_address("198.51.100.7")
    tiny = EngineSettings(fragment_size=150)  # the UPDATE_SA_ADDRESSES is cut too
    ca, cb = config_pair()
    net = Net(Engine(ca, seeded(1), lambda r: ALICE, tiny),
              Engine(cb, seeded(1001), lambda r: BOB, tiny))
    net.addrs_a = {ALICE, alice2}
    net.a.set_local_addresses((ALICE, alice2), 0.0)
    start(net)
    assert established(net)
    new = Path(Endpoint(alice2, 4500), Endpoint(BOB, 4500))
    before = len(net.log)
    net.a.move(net.a.status()[0].ike_spi, new, net.now)
    net.pump()
    (moved,) = of_type(net.events_a, IkeSaMoved)
    assert moved.new_path == new
    update_id = decode_header(net.log[before].data).message_id
    update = [d for d in net.log[before:] if not d.keepalive
              and decode_header(d.data).exchange == ExchangeType.INFORMATIONAL
              and decode_header(d.data).from_initiator != decode_header(d.data).is_response
              and decode_header(d.data).message_id == update_id]
    # The UPDATE_SA_ADDRESSES request and its response, both in fragments.
    assert {decode_header(d.data).is_response for d in update} == {False, True}
    assert len(update) > 2 and all(is_fragment(d) for d in update)
    assert net.b.status()[0].path == Path(new.remote, new.local)


def test_an_ike_rekey_keeps_fragmentation() -> None:
    tiny = EngineSettings(fragment_size=150)
    net = start(make_pair(settings=tiny))
    old = net.a.status()[0].ike_spi
    rekey_ike(net.a, old, net.now)
    net.pump()
    (sa,) = net.a.status()
    assert sa.ike_spi != old
    before = len(net.log)
    net.a.rekey_child(sa.children[0].unique_id, net.now)
    net.pump()
    rekey = [d for d in net.log[before:] if not d.keepalive
             and decode_header(d.data).exchange == ExchangeType.CREATE_CHILD_SA]
    assert rekey and all(is_fragment(d) for d in rekey)
