"""NAT detection in one place (core/nat.py): the hashes, the notify pair, the verdict."""

from __future__ import annotations

import ipaddress

from mobike_vici.core.nat import (
    NAT_HASH_LENGTH,
    nat_hash,
    nat_verdict,
    natd_notifies,
    peer_saw_us,
)
from mobike_vici.ikev2.constants import NotifyType
from mobike_vici.ikev2.payloads import Notify, Payload
from mobike_vici.types import Endpoint, Path

SPI_I, SPI_R = bytes(range(8)), bytes(range(8, 16))
US = Endpoint(ipaddress.ip_address("192.0.2.1"), 500)
PEER = Endpoint(ipaddress.ip_address("192.0.2.2"), 500)
NATTED = Endpoint(ipaddress.ip_address("198.51.100.7"), 40123)


def _as_peer_sends(seen_us: Endpoint, itself: Endpoint) -> list[Payload]:
    """The peer's pair: its source hash over itself, its destination hash over us."""
    return [Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(SPI_I, SPI_R, itself)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(SPI_I, SPI_R, seen_us))]


def test_the_pair_we_send_hashes_our_view_of_the_path() -> None:
    src, dst = natd_notifies(SPI_I, SPI_R, Path(US, PEER))
    assert src == Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(SPI_I, SPI_R, US))
    assert dst == Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(SPI_I, SPI_R, PEER))
    assert len(nat_hash(SPI_I, SPI_R, US)) == NAT_HASH_LENGTH
    forced, _ = natd_notifies(SPI_I, SPI_R, Path(US, PEER), source=b"\x01" * NAT_HASH_LENGTH)
    assert isinstance(forced, Notify) and forced.data == b"\x01" * NAT_HASH_LENGTH


def test_no_nat_on_either_side() -> None:
    verdict = nat_verdict(_as_peer_sends(US, PEER), SPI_I, SPI_R, Path(US, PEER))
    assert verdict is not None and not verdict.local and not verdict.remote
    assert verdict.peer_saw_us == nat_hash(SPI_I, SPI_R, US)


def test_the_peer_saw_another_address_of_ours_so_we_are_behind_a_nat() -> None:
    verdict = nat_verdict(_as_peer_sends(NATTED, PEER), SPI_I, SPI_R, Path(US, PEER))
    assert verdict is not None and verdict.local and not verdict.remote
    assert peer_saw_us(_as_peer_sends(NATTED, PEER)) == nat_hash(SPI_I, SPI_R, NATTED)


def test_the_peer_hashed_another_address_of_its_own_so_it_is_behind_a_nat() -> None:
    verdict = nat_verdict(_as_peer_sends(US, NATTED), SPI_I, SPI_R, Path(US, PEER))
    assert verdict is not None and not verdict.local and verdict.remote


def test_any_of_several_source_hashes_may_match() -> None:
    """RFC 7296 §2.23: a peer with several addresses sends one source hash for each."""
    payloads = [Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(SPI_I, SPI_R, NATTED)),
                *_as_peer_sends(US, PEER)]
    verdict = nat_verdict(payloads, SPI_I, SPI_R, Path(US, PEER))
    assert verdict is not None and not verdict.remote


def test_half_a_pair_is_no_nat_detection() -> None:
    half = _as_peer_sends(US, PEER)[:1]
    assert nat_verdict(half, SPI_I, SPI_R, Path(US, PEER)) is None
    assert nat_verdict([], SPI_I, SPI_R, Path(US, PEER)) is None
    assert peer_saw_us(half) is None
