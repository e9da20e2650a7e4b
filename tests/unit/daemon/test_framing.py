"""NAT-T port demultiplexing (RFC 3948): IKE behind the marker, keepalives, ESP."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.daemon.framing import (
    KEEPALIVE,
    NON_ESP_MARKER,
    NattKind,
    classify_natt,
    frame_natt,
)


def test_marker_is_stripped_from_ike() -> None:
    assert classify_natt(NON_ESP_MARKER + b"IKEMSG") == (NattKind.IKE, b"IKEMSG")


def test_single_ff_is_keepalive() -> None:
    assert classify_natt(b"\xff")[0] is NattKind.KEEPALIVE


def test_ff_followed_by_more_is_esp() -> None:
    assert classify_natt(b"\xff\x00\x00\x01")[0] is NattKind.ESP


def test_nonzero_spi_is_esp_and_untouched() -> None:
    esp = b"\x00\x00\x10\x01" + b"\x00" * 8
    assert classify_natt(esp) == (NattKind.ESP, esp)


def test_short_datagram_is_not_ike() -> None:
    assert classify_natt(b"\x00\x00\x00")[0] is NattKind.ESP


def test_ike_gets_marker_keepalive_does_not() -> None:
    assert frame_natt(b"IKE", keepalive=False) == NON_ESP_MARKER + b"IKE"
    assert frame_natt(KEEPALIVE, keepalive=True) == KEEPALIVE


@given(st.binary(max_size=200))
def test_framing_round_trip(payload: bytes) -> None:
    assert classify_natt(frame_natt(payload, keepalive=False)) == (NattKind.IKE, payload)
