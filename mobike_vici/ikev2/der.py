"""The little DER that IKE handles by hand: RFC 7427's AlgorithmIdentifier and the
ID_DER_ASN1_DN identity. Definite-length TLVs, bounds-checked before anything is sliced,
and OBJECT IDENTIFIERs; certificates themselves are parsed by ``cryptography``."""

from __future__ import annotations

MAX_LENGTH_OCTETS = 3
"""Long-form lengths of at most 3 octets (16 MiB): far beyond any IKE payload."""


class DerError(ValueError):
    """Not the DER expected: truncated, an indefinite or oversized length, an empty OID."""


def encode_tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, next position) of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise DerError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length >= 0x80:
        count = length & 0x7F
        if count == 0 or count > MAX_LENGTH_OCTETS or pos + count > len(data):
            raise DerError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise DerError("truncated DER")
    return tag, data[pos:pos + length], pos + length


OID_TAG = 0x06


def encode_oid(dotted: str) -> bytes:
    """The OBJECT IDENTIFIER TLV of ``dotted`` (e.g. ``1.2.840.113549.1.1.11``)."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return encode_tlv(OID_TAG, bytes(body))


def oid_text(body: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not body:
        raise DerError("empty OID")
    first = min(body[0] // 40, 2)
    parts = [first, body[0] - 40 * first]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)
