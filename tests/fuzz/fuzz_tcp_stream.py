"""Fuzz target: the RFC 9329 stream decoder (``core.tcp_framing.StreamDecoder``).

Input layout: the first byte ``mode``; bit 0 makes it the responder's side (the
"IKETCP" prefix expected), bit 1 puts the real prefix in front of the rest when
it is (so the frames behind it are reached). The second byte seeds the chunk
sizes the rest is fed in (1 to 256 bytes), as a socket would cut it.

Only FramingError may escape. Each frame handed out must re-encode to the bytes
it came from, so nothing is invented, lost or misclassified; the buffer never
holds a whole frame.
"""

from __future__ import annotations

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.core import tcp_framing as tf


ALLOWED: tuple[type[BaseException], ...] = (tf.FramingError,)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, step, body = data[0], data[1], data[2:]
    responder = bool(mode & 1)
    if responder and mode & 2:
        body = tf.STREAM_PREFIX + body
    dec = tf.StreamDecoder(expect_prefix=responder)
    size = 1 + step
    frames: list[tf.Frame] = []
    pos = 0
    while pos < len(body):
        frames += dec.feed(body[pos:pos + size])
        assert dec.buffered < tf.MAX_FRAME
        pos += size
        size = 1 + (size * 37 + step) % 256
    encoded = b"".join(tf.encode_ike(f.data) if f.kind == tf.FrameKind.IKE
                       else tf.encode_esp(f.data) for f in frames)
    assert dec.frames == len(frames)
    if dec.dropped == 0:
        start = len(tf.STREAM_PREFIX) if responder else 0
        assert body[start:start + len(encoded)] == encoded


def seeds() -> list[bytes]:
    ike = bytes(range(8)) + bytes(8) + bytes((33, 0x20, 34, 0x08)) + bytes(4) + bytes(4)
    esp = b"\x00\x00\x10\x01\x00\x00\x00\x01" + bytes(32)
    frames = tf.encode_ike(ike) + tf.encode_esp(esp)
    return [b"\x03\x05" + frames, b"\x00\x00" + frames * 3, b"\x01\x10" + tf.STREAM_PREFIX + frames,
            b"\x03\xff" + b"\x00\x02" + frames + b"\x00\x01"]


if __name__ == "__main__":
    main("tcp_stream", target, ALLOWED, seeds)
