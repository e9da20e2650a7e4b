"""The RFC 9329 stream codec: prefix, length framing, IKE vs ESP, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.core.tcp_framing import (
    MAX_FRAME,
    MIN_IKE,
    NON_ESP_MARKER,
    STREAM_PREFIX,
    Frame,
    FrameKind,
    FramingError,
    StreamDecoder,
    encode_esp,
    encode_ike,
)

IKE = bytes(range(8)) + bytes(8) + bytes((33, 0x20, 34, 0x08)) + bytes(4) + (28).to_bytes(4, "big")
ESP = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x07" + b"payload"


def test_prefix_is_the_rfc_bytes() -> None:
    assert bytes((0x49, 0x4B, 0x45, 0x54, 0x43, 0x50)) == STREAM_PREFIX


def test_ike_frame_carries_length_and_marker() -> None:
    framed = encode_ike(IKE)
    assert framed[:2] == (2 + 4 + len(IKE)).to_bytes(2, "big")
    assert framed[2:6] == NON_ESP_MARKER and framed[6:] == IKE


def test_esp_frame_has_no_marker() -> None:
    assert encode_esp(ESP) == (2 + len(ESP)).to_bytes(2, "big") + ESP


def test_esp_with_spi_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_esp(NON_ESP_MARKER + b"x" * 8)


def test_oversized_message_is_refused() -> None:
    encode_esp(b"\x01" * (MAX_FRAME - 2))
    with pytest.raises(ValueError):
        encode_esp(b"\x01" * (MAX_FRAME - 1))
    with pytest.raises(ValueError):
        encode_ike(b"\x01" * (MAX_FRAME - 5))


def test_responder_reads_prefix_then_frames() -> None:
    dec = StreamDecoder(expect_prefix=True)
    frames = dec.feed(STREAM_PREFIX + encode_ike(IKE) + encode_esp(ESP))
    assert frames == [Frame(FrameKind.IKE, IKE), Frame(FrameKind.ESP, ESP)]
    assert dec.buffered == 0
    assert dec.feed(encode_ike(IKE)) == [Frame(FrameKind.IKE, IKE)]  # the prefix only once


def test_bad_prefix_breaks_the_stream_at_the_first_wrong_byte() -> None:
    dec = StreamDecoder(expect_prefix=True)
    assert dec.feed(b"IKE") == []
    with pytest.raises(FramingError):
        dec.feed(b"X")
    with pytest.raises(FramingError):
        dec.feed(b"TCP")  # broken for good


def test_initiator_side_expects_no_prefix() -> None:
    dec = StreamDecoder(expect_prefix=False)
    assert dec.feed(encode_esp(ESP)) == [Frame(FrameKind.ESP, ESP)]


@pytest.mark.parametrize("length", [0, 1])
def test_length_below_two_breaks_the_stream(length: int) -> None:
    dec = StreamDecoder(expect_prefix=False)
    with pytest.raises(FramingError):
        dec.feed(encode_esp(ESP) + length.to_bytes(2, "big") + b"rest")
    assert dec.broken


def test_too_short_frames_are_dropped_and_the_stream_goes_on() -> None:
    dec = StreamDecoder(expect_prefix=False)
    empty = (2).to_bytes(2, "big")
    short_ike = (2 + MIN_IKE - 1).to_bytes(2, "big") + NON_ESP_MARKER + bytes(MIN_IKE - 5)
    short_esp = (2 + 7).to_bytes(2, "big") + b"\x01" * 7
    frames = dec.feed(empty + short_ike + short_esp + encode_ike(IKE))
    assert frames == [Frame(FrameKind.IKE, IKE)]
    assert dec.dropped == 3


def test_buffer_holds_at_most_one_partial_frame() -> None:
    dec = StreamDecoder(expect_prefix=False)
    big = encode_esp(b"\x01" * (MAX_FRAME - 2))
    assert dec.feed(big[:-1]) == []
    assert dec.buffered == MAX_FRAME - 1 and dec.mid_frame
    frames = dec.feed(big[-1:] + encode_esp(ESP)[:1])
    assert frames == [Frame(FrameKind.ESP, b"\x01" * (MAX_FRAME - 2))]
    assert dec.buffered == 1


def test_many_small_frames_in_one_chunk() -> None:
    dec = StreamDecoder(expect_prefix=False)
    frames = dec.feed(encode_esp(ESP) * 5000)
    assert len(frames) == 5000 and dec.frames == 5000 and dec.buffered == 0


@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=8, max_size=300)), max_size=20),
       st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=50))
def test_any_split_gives_the_same_frames(messages: list[tuple[bool, bytes]],
                                         cuts: list[int]) -> None:
    want = []
    stream = STREAM_PREFIX
    for is_ike, body in messages:
        if is_ike:
            body = NON_ESP_MARKER + body + bytes(MIN_IKE)
            want.append(Frame(FrameKind.IKE, body[4:]))
            stream += encode_ike(body[4:])
        else:
            body = b"\x01" + body
            want.append(Frame(FrameKind.ESP, body))
            stream += encode_esp(body)
    dec = StreamDecoder(expect_prefix=True)
    got: list[Frame] = []
    pos = 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        got += dec.feed(stream[pos:pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    got += dec.feed(stream[pos:])
    assert got == want and dec.buffered == 0
