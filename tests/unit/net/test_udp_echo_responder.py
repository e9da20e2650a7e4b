"""The UDP echo responder under abuse: replays, one busy source, many sources.

Pure calls into ``UdpEchoResponder.answer`` with a fake clock (the socket is bound
on loopback only because the class owns one)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from mobike_vici.net.probes.udp_echo import (
    MAX_SOURCES,
    REPLAY_LIFETIME,
    UdpEchoResponder,
)
from mobike_vici.net.probes.wire import Kind, UdpEcho, encode_udp_echo

KEY = b"k" * 32
PEER = ipaddress.ip_address("192.0.2.1")
OTHER = ipaddress.ip_address("192.0.2.77")


@pytest.fixture
def responder() -> Iterator[UdpEchoResponder]:
    r = UdpEchoResponder(KEY, ipaddress.ip_address("127.0.0.1"), port=0, fwmark=None,
                         xfrm_bypass=False, clock=lambda: 0.0)
    yield r
    r.sock.close()


def request(n: int, stamp_s: float) -> bytes:
    msg = UdpEcho(kind=Kind.REQUEST, probe_id=n, timestamp=int(stamp_s * 1e9),
                  nonce=n.to_bytes(16, "big"))
    return encode_udp_echo(msg, KEY)


def spoofed(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.51.100.0")) + i)


def test_a_replayed_request_is_answered_once_whatever_the_source(
        responder: UdpEchoResponder) -> None:
    captured = request(1, 100.0)
    assert responder.answer(captured, PEER, 0.0) is not None
    answered = [responder.answer(captured, spoofed(i), 0.01 * i) for i in range(500)]
    assert answered == [None] * 500
    assert responder.counters.replayed == 500
    # Real probes still get through at once: the replays used no tokens.
    assert responder.answer(request(2, 105.0), PEER, 5.0) is not None


def test_an_old_request_is_refused_after_its_nonce_is_forgotten(
        responder: UdpEchoResponder) -> None:
    old = request(1, 100.0)
    assert responder.answer(old, PEER, 0.0) is not None
    later = REPLAY_LIFETIME + 1
    assert responder.answer(request(2, 100.0 + later), PEER, later) is not None
    # Sent to the real peer's address again: its clock has moved on.
    assert responder.answer(old, PEER, later + 1) is None
    assert responder.counters.replayed == 1


def test_one_busy_source_cannot_starve_another(responder: UdpEchoResponder) -> None:
    # Authentic, fresh requests (a key holder gone wrong) as fast as possible.
    busy = [responder.answer(request(n, 1.0 + n * 1e-6), OTHER, 0.0) for n in range(1, 300)]
    assert 0 < sum(r is not None for r in busy) <= 20
    assert responder.counters.source_limited == 299 - sum(r is not None for r in busy)
    assert responder.answer(request(1000, 50.0), PEER, 0.0) is not None


@pytest.mark.slow
def test_per_source_state_is_bounded(responder: UdpEchoResponder) -> None:
    for i in range(3 * MAX_SOURCES):
        responder.answer(request(i + 1, 1.0), spoofed(i), i * 0.01)
    assert len(responder.sources) <= MAX_SOURCES
    assert len(responder.replay._newest) <= MAX_SOURCES
