"""Hostile input (garbage, mutated messages, valid SPIs + garbage): dropped, SA unchanged."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.core.events import ExchangeFailed, PacketDropped
from mobike_vici.core.ike_sa import IkeSa
from mobike_vici.core.protection import encode
from mobike_vici.ikev2.constants import ExchangeType, NotifyType
from mobike_vici.ikev2.message import Message, decode_header, decode_message, decrypt_message
from mobike_vici.ikev2.payloads import Nonce, Notify, Payload, UnknownPayload
from mobike_vici.types import Path

from .harness import Net, established_pair, make_pair

NET = established_pair()
AUTH_REQ = next(d for d in NET.log if decode_header(d.data).exchange == 35)
BACK = Path(AUTH_REQ.path.remote, AUTH_REQ.path.local)


def _snapshot(net: Net) -> tuple[object, float | None]:
    return net.b.status(), net.b.get_timer()


def _feed_and_check(data: bytes) -> None:
    before = _snapshot(NET)
    NET.b.receive_datagram(data, BACK, 5.0)
    out = NET.b.datagrams_to_send(5.0)
    events = []
    while (e := NET.b.next_event()) is not None:
        events.append(e)
    # Either answered from the response cache (an exact retransmission) or dropped.
    if data == AUTH_REQ.data:
        assert len(out) == 1
    else:
        assert out == []
        assert events and all(isinstance(e, PacketDropped) for e in events)
    assert _snapshot(NET) == before


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_dropped(data: bytes) -> None:
    _feed_and_check(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9))
def test_mutated_valid_messages_dropped(seed: int) -> None:
    rng = random.Random(seed)
    data = bytearray(AUTH_REQ.data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    _feed_and_check(bytes(data))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_valid_spis_with_garbage_dropped(tail: bytes) -> None:
    _feed_and_check(AUTH_REQ.data[:28] + tail)


def test_truncated_messages_dropped() -> None:
    for n in range(len(AUTH_REQ.data)):
        _feed_and_check(AUTH_REQ.data[:n])


def test_init_request_garbage_never_raises_and_never_authenticates() -> None:
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    (first,) = net.a.datagrams_to_send(0.0)
    back = Path(first.path.remote, first.path.local)
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(first.data)
        i = rng.randrange(28, len(data))
        data[i] ^= 1 << rng.randrange(8)
        net.b.receive_datagram(bytes(data), back, 0.0)
        for d in net.b.datagrams_to_send(0.0):
            # Whatever was answered, it is an IKE_SA_INIT response.
            assert decode_header(d.data).is_response
    # Mutations that still parse may open half-open SAs (bounded, same SPIi so at most
    # one), but nothing is ever established.
    assert all(s.state == "CONNECTING" for s in net.b.status())
    assert len(net.b.status()) <= 1


def _authenticated_request(net: Net, payloads: list[Payload]) -> tuple[IkeSa, bytes]:
    """A request alice's engine seals with the real keys (white-box: the SA's own encoder)."""
    sa = next(iter(net.a._sas.values()))
    mid = sa.next_request_id
    data = encode(net.a._ctx, sa, ExchangeType.CREATE_CHILD_SA, mid, False, payloads)
    sa.next_request_id += 1
    return sa, data


def _answer(net: Net, sa: IkeSa, data: bytes) -> Message:
    net.b.receive_datagram(data, Path(sa.path.remote, sa.path.local), 3.0)
    (reply,) = net.b.datagrams_to_send(3.0)
    msg = decode_message(reply.data)
    assert sa.cipher_in is not None
    return decrypt_message(reply.data, msg, sa.cipher_in)


def test_authenticated_but_malformed_request_gets_invalid_syntax() -> None:
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    net.pump()
    before = net.b.status()
    sa, data = _authenticated_request(net, [Nonce(b"\x01" * 32)])  # no SA payload
    answer = _answer(net, sa, data)
    assert [(p.type) for p in answer.payloads if isinstance(p, Notify)] == [
        NotifyType.INVALID_SYNTAX]
    assert net.b.status() == before
    assert any(isinstance(e, ExchangeFailed) for e in iter(net.b.next_event, None))


def test_unknown_critical_payload_rejected() -> None:
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    net.pump()
    before = net.b.status()
    sa, data = _authenticated_request(net, [UnknownPayload(200, True, b"x")])
    answer = _answer(net, sa, data)
    (notify,) = [p for p in answer.payloads if isinstance(p, Notify)]
    assert notify.type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and notify.data == bytes([200])
    assert net.b.status() == before
