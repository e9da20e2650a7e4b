"""The small buffer type every IKEv2 decoder reads from, and the one DecodeError.

A :class:`Reader` checks each read against the bytes that remain, so a length field
that lies raises :class:`DecodeError` before anything is allocated.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar


class DecodeError(ValueError):
    """The bytes are not a well-formed IKEv2 message or payload."""


E = TypeVar("E", bound=IntEnum)


def to_enum(cls: type[E], value: int) -> E | int:
    """The enum member for ``value``, or the plain int when the IANA added it later."""
    try:
        return cls(value)
    except ValueError:
        return value


class Reader:
    """Bounds-checked big-endian reads over a byte string; overruns raise DecodeError."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise DecodeError(f"need {n} bytes at offset {self._pos}, have {self.remaining}")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def sub(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes; this reader skips past them."""
        if n < 0 or n > self.remaining:
            raise DecodeError(f"need {n} bytes at offset {self._pos}, have {self.remaining}")
        reader = Reader(self._data, self._pos, self._pos + n)
        self._pos += n
        return reader

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def skip(self, n: int) -> None:
        self.take(n)


def u8(value: int) -> bytes:
    """One byte, for the encoders."""
    return value.to_bytes(1, "big")


def u16(value: int) -> bytes:
    """Two bytes, big-endian, for the encoders."""
    return value.to_bytes(2, "big")
