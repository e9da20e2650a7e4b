"""NAT detection (RFC 7296 §2.23): the NAT_DETECTION_*_IP hashes."""

from __future__ import annotations

import hashlib

from ..types import Endpoint


def nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port); SPIr is zero in an IKE_SA_INIT request."""
    data = spi_i + spi_r + endpoint.addr.packed + endpoint.port.to_bytes(2, "big")
    return hashlib.sha1(data).digest()
