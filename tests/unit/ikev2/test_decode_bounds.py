"""Decoders pay by the byte: what a decoder builds is bounded by the bytes it was given.

Work is measured by structure (how many objects a decode produced), never by the
clock: a count field that does not consume input is refused before anything is built.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mobike_vici.core.events import PacketDropped
from mobike_vici.ikev2.buffer import DecodeError
from mobike_vici.ikev2.constants import ExchangeType, PayloadType, ProtocolId
from mobike_vici.ikev2.message import MAX_MESSAGE_LENGTH, decode_header, decode_message
from mobike_vici.ikev2.payloads import (
    CP,
    SA,
    Delete,
    Payload,
    TSi,
    TSr,
    decode_payloads,
)
from mobike_vici.types import Endpoint, Path

from ..core.harness import ALICE, BOB, make_pair
from .test_message import ALL_FIXTURES, fixture


def decoded_objects(payloads: tuple[Payload, ...]) -> int:
    """Every object a decode built: payloads and the repeated items inside them."""
    total = 0
    for p in payloads:
        total += 1
        if isinstance(p, Delete):
            total += len(p.spis)
        elif isinstance(p, SA):
            for prop in p.proposals:
                total += 1
                for t in prop.transforms:
                    total += 1 + len(t.unknown_attrs)
        elif isinstance(p, TSi | TSr):
            total += len(p.selectors)
        elif isinstance(p, CP):
            total += len(p.attributes)
    return total


def _delete_flood(count: int = 180) -> bytes:
    """The datagram of the report: IKE_SA_INIT request of Delete(SPI size 0, count 65535)s."""
    chain = b"".join(
        bytes((PayloadType.DELETE if i < count - 1 else 0, 0, 0, 8,
               ProtocolId.IKE, 0, 0xFF, 0xFF))
        for i in range(count))
    header = (bytes(range(1, 9)) + bytes(8)
              + bytes((PayloadType.DELETE, 0x20, ExchangeType.IKE_SA_INIT, 0x08))
              + bytes(4) + (28 + len(chain)).to_bytes(4, "big"))
    return header + chain


def test_delete_of_empty_spis_with_a_count_is_refused() -> None:
    # §3.11: SPI size 0 is an IKE SA delete, whose count must be 0.
    body = bytes((ProtocolId.IKE, 0, 0xFF, 0xFF))
    with pytest.raises(DecodeError, match="SPIs of 0 bytes"):
        decode_payloads(PayloadType.DELETE, b"\x00\x00\x00\x08" + body)
    ike_delete = decode_payloads(PayloadType.DELETE, b"\x00\x00\x00\x08"
                                 + bytes((ProtocolId.IKE, 0, 0, 0)))
    assert ike_delete == (Delete(ProtocolId.IKE),)


def test_the_reported_delete_flood_is_refused_by_the_decoder() -> None:
    data = _delete_flood()
    assert len(data) == 1468
    with pytest.raises(DecodeError):
        decode_message(data)


def test_the_reported_delete_flood_is_dropped_by_the_engine() -> None:
    net = make_pair()
    path = Path(Endpoint(BOB, 500), Endpoint(ALICE, 500))
    net.b.receive_datagram(_delete_flood(), path, 0.0)
    events = []
    while (e := net.b.next_event()) is not None:
        events.append(e)
    assert [type(e) for e in events] == [PacketDropped]
    # Dropped by the header walk before any decode (no Nonce among the payload headers)
    # or by the decoder itself: either way unauthenticated, and nothing else happens.
    assert isinstance(events[0], PacketDropped) and not events[0].authenticated
    assert "Nonce" in events[0].reason or "malformed" in events[0].reason
    assert net.b.datagrams_to_send(0.0) == []
    assert net.b.status() == []


def _nonce_message(length: int) -> bytes:
    body = length - 28 - 4
    return (bytes(range(1, 9)) + bytes(8)
            + bytes((PayloadType.NONCE, 0x20, ExchangeType.IKE_SA_INIT, 0x08)) + bytes(4)
            + length.to_bytes(4, "big") + b"\x00\x00" + (4 + body).to_bytes(2, "big")
            + bytes(body))


def test_messages_are_bounded_as_charon_bounds_them() -> None:
    assert MAX_MESSAGE_LENGTH == 10000  # charon.max_packet's default
    assert decode_message(_nonce_message(MAX_MESSAGE_LENGTH)).payloads
    too_long = _nonce_message(MAX_MESSAGE_LENGTH + 1)
    for data in (too_long, too_long[:28]):  # by its bytes, and by its length field alone
        with pytest.raises(DecodeError, match="longer than"):
            decode_header(data)


def test_a_64k_datagram_is_dropped_at_the_header() -> None:
    net = make_pair()
    net.b.receive_datagram(_nonce_message(65535), Path(Endpoint(BOB, 500),
                                                       Endpoint(ALICE, 500)), 0.0)
    event = net.b.next_event()
    assert isinstance(event, PacketDropped) and "malformed header" in event.reason
    assert net.b.next_event() is None and net.b.status() == []


def test_payloads_per_chain_are_bounded() -> None:
    def chain(n: int) -> bytes:
        return b"".join(bytes((PayloadType.NONCE if i < n - 1 else 0, 0, 0, 4))
                        for i in range(n))
    assert len(decode_payloads(PayloadType.NONCE, chain(128))) == 128
    with pytest.raises(DecodeError, match="more than 128 payloads"):
        decode_payloads(PayloadType.NONCE, chain(129))


def _bounded(first: int, data: bytes) -> None:
    try:
        payloads = decode_payloads(first, data)
    except DecodeError:
        return
    # Every object consumed at least one byte of input.
    assert decoded_objects(payloads) <= len(data)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_charon_messages_decode_within_their_size(name: str) -> None:
    data = fixture(name)
    msg = decode_message(data)
    assert 0 < decoded_objects(msg.payloads) <= len(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_FIXTURES), st.integers(0, 2**32))
def test_mutated_charon_messages_decode_within_their_size(name: str, seed: int) -> None:
    rng = random.Random(seed)
    data = bytearray(fixture(name)[28:])
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] = rng.choice((0, 0xFF, rng.randrange(256)))
    _bounded(fixture(name)[16], bytes(data))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.sampled_from([PayloadType.DELETE, PayloadType.SA, PayloadType.TSi,
                        PayloadType.CP, PayloadType.NOTIFY]),
       st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=64))
@example(PayloadType.DELETE, 0, 0xFFFF, b"")
def test_count_fields_never_outgrow_the_bytes(ptype: PayloadType, small: int, count: int,
                                              tail: bytes) -> None:
    # Body: a few fixed bytes whose count-like fields are set from the strategy.
    body = bytes((small & 0xFF, small, count >> 8, count & 0xFF)) + tail
    _bounded(ptype, b"\x00\x00" + (4 + len(body)).to_bytes(2, "big") + body)
