"""Stateless COOKIEs (RFC 7296 §2.6) with a rotating secret.

Cookie = version (2 bytes) | HMAC-SHA-256(secret, Ni | IPi | SPIi), each input
preceded by its length so that no two different inputs (say a longer nonce and
an IPv4 address against a shorter nonce and an IPv6 address) hash the same
bytes. The cookie is opaque to the peer, which only echoes it. The previous
secret stays valid for one rotation so a cookie issued just before a rotation
still works.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from ..types import IPAddress

SECRET_SIZE = 32


class CookieJar:
    def __init__(self, random_bytes: Callable[[int], bytes], lifetime: float) -> None:
        self._random_bytes = random_bytes
        self._lifetime = lifetime
        self._version = 0
        self._secret: bytes | None = None
        self._previous: bytes | None = None
        self._created = 0.0

    def _rotate(self, now: float) -> None:
        if self._secret is None or now - self._created >= self._lifetime:
            self._previous = self._secret
            self._secret = self._random_bytes(SECRET_SIZE)
            self._version = (self._version + 1) & 0xFFFF
            self._created = now

    @staticmethod
    def _digest(secret: bytes, nonce: bytes, addr: IPAddress, spi_i: bytes) -> bytes:
        framed = b"".join(len(part).to_bytes(2, "big") + part
                          for part in (nonce, addr.packed, spi_i))
        return hmac.new(secret, framed, hashlib.sha256).digest()

    def make(self, nonce: bytes, addr: IPAddress, spi_i: bytes, now: float) -> bytes:
        self._rotate(now)
        assert self._secret is not None
        return self._version.to_bytes(2, "big") + self._digest(self._secret, nonce, addr, spi_i)

    def verify(self, cookie: bytes, nonce: bytes, addr: IPAddress, spi_i: bytes,
               now: float) -> bool:
        self._rotate(now)
        if len(cookie) != 34:
            return False
        version = int.from_bytes(cookie[:2], "big")
        if version == self._version:
            secret = self._secret
        elif version == (self._version - 1) & 0xFFFF:
            secret = self._previous
        else:
            return False
        if secret is None:
            return False
        return hmac.compare_digest(cookie[2:], self._digest(secret, nonce, addr, spi_i))
