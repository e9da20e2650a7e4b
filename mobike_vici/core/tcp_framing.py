"""The byte stream of IKE and ESP over TCP (RFC 9329), sans-I/O: prefix, frames, bounds.

RFC 9329 section 3: every message on the stream is a 16-bit length (counting
itself) and the message; an IKE message carries the 4-byte non-ESP marker in
front, as on UDP 4500, so the first four bytes tell IKE from ESP (SPI 0 is never
ESP). Section 4: the initiator of the TCP connection starts the stream with the
6-byte "IKETCP" prefix, once; the responder checks it before anything else.

The decoder takes whatever chunks the socket hands over and returns whole frames.
It pays by the byte: its buffer never holds more than one frame plus the chunk
being fed, and a length field below its own size breaks the framing, so it ends
the stream (``FramingError``); a frame too short to be either message is dropped
and counted, the stream goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

STREAM_PREFIX = b"IKETCP"
"""RFC 9329 section 4: what the TCP initiator sends first (0x49 0x4b 0x45 0x54 0x43 0x50)."""

NON_ESP_MARKER = b"\x00\x00\x00\x00"
LENGTH_SIZE = 2
MAX_FRAME = 0xFFFF
"""The largest length field, its own two bytes included."""

MIN_IKE = len(NON_ESP_MARKER) + 28
"""Marker plus an IKE header (RFC 7296 3.1): anything shorter is no IKE message."""
MIN_ESP = 8
"""SPI and sequence number (RFC 4303 2): anything shorter is no ESP packet."""


class FramingError(ValueError):
    """The stream cannot be parsed any further (bad prefix, length below 2): close it."""


class FrameKind(IntEnum):
    IKE = 1
    ESP = 2


@dataclass(frozen=True, slots=True)
class Frame:
    """One message taken off the stream."""

    kind: FrameKind
    """IKE (the marker removed) or ESP."""
    data: bytes
    """The IKE message or the ESP packet, as on UDP without the NAT-T marker."""


def encode_ike(message: bytes) -> bytes:
    """One IKE message framed for the stream. Raises ValueError when it cannot fit."""
    return _frame(NON_ESP_MARKER + message)


def encode_esp(packet: bytes) -> bytes:
    """One ESP packet framed for the stream. Raises ValueError when it cannot fit or
    starts like the marker (it would be read as IKE)."""
    if packet[:4] == NON_ESP_MARKER:
        raise ValueError("an ESP packet cannot carry SPI 0")
    return _frame(packet)


def _frame(body: bytes) -> bytes:
    length = LENGTH_SIZE + len(body)
    if length > MAX_FRAME:
        raise ValueError(f"{len(body)} bytes do not fit one frame")
    return length.to_bytes(LENGTH_SIZE, "big") + body


class StreamDecoder:
    """Frames out of one direction of one TCP stream.

    ``expect_prefix``: the responder's side, which must see "IKETCP" first.
    Only ``FramingError`` escapes ``feed``; after it the decoder stays broken.
    """

    def __init__(self, *, expect_prefix: bool) -> None:
        self._buf = bytearray()
        self._need_prefix = expect_prefix
        self.broken = False
        self.dropped = 0
        """Frames too short to be IKE or ESP, dropped (the stream went on)."""
        self.frames = 0
        """Frames handed out so far."""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete prefix or frame held (at most MAX_FRAME - 1)."""
        return len(self._buf)

    @property
    def mid_frame(self) -> bool:
        """Some bytes of a frame (or of the prefix) arrived and the rest has not."""
        return bool(self._buf)

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames completed by ``chunk``. Raises FramingError (then for good)."""
        if self.broken:
            raise FramingError("stream already broken")
        buf = self._buf
        buf += chunk
        pos = 0
        end = len(buf)
        if self._need_prefix:
            have = min(end, len(STREAM_PREFIX))
            if bytes(buf[:have]) != STREAM_PREFIX[:have]:
                self._break()
            if have < len(STREAM_PREFIX):
                return []
            self._need_prefix = False
            pos = len(STREAM_PREFIX)
        out: list[Frame] = []
        view = memoryview(buf)
        try:
            while end - pos >= LENGTH_SIZE:
                length = (buf[pos] << 8) | buf[pos + 1]
                if length < LENGTH_SIZE:
                    self._break()
                if end - pos < length:
                    break
                frame = self._classify(view[pos + LENGTH_SIZE:pos + length])
                pos += length
                if frame is None:
                    self.dropped += 1
                else:
                    out.append(frame)
        finally:
            view.release()
        # One compaction per chunk, not per frame: many small frames stay linear.
        del buf[:pos]
        self.frames += len(out)
        return out

    def _break(self) -> None:
        self.broken = True
        self._buf = bytearray()  # a new one: a view of the old may still be held
        raise FramingError("bad stream prefix" if self._need_prefix else "length below 2")

    @staticmethod
    def _classify(body: memoryview) -> Frame | None:
        if body[:4] == NON_ESP_MARKER:
            if len(body) < MIN_IKE:
                return None
            return Frame(FrameKind.IKE, bytes(body[4:]))
        if len(body) < MIN_ESP:
            return None
        return Frame(FrameKind.ESP, bytes(body))
