"""RFC 7383 wire format: SKF payloads, cutting a message to a datagram size, opening and
joining the pieces."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mobike_vici.ikev2.constants import (
    HEADER_LENGTH,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
)
from mobike_vici.ikev2.crypto import IntegrityError, SkCipher, make_cipher
from mobike_vici.ikev2.message import (
    DecodeError,
    Header,
    decode_header,
    decode_message,
    decrypt_fragment,
    encode_encrypted,
    encode_fragments,
    fragment_capacity,
    join_fragments,
    transport_overhead,
)
from mobike_vici.ikev2.payloads import (
    EncryptedFragment,
    IDi,
    Notify,
    Payload,
    decode_payloads,
    encode_payloads,
)

HEADER = Header(b"\x11" * 8, b"\x22" * 8, 0, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
PAYLOADS: list[Payload] = [
    IDi(IdType.ID_FQDN, b"alice.example.com" * 40),
    *(Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, bytes([10, 0, 0, n])) for n in range(60)),
    Notify(NotifyType.MOBIKE_SUPPORTED),
]


def cbc() -> SkCipher:
    return make_cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, b"k" * 16, b"i" * 32)


def gcm() -> SkCipher:
    return make_cipher(EncrId.AES_GCM_16, 256, None, b"g" * 36, b"")


def randomness(seed: int = 7) -> random.Random:
    return random.Random(seed)


@pytest.mark.parametrize("make", [cbc, gcm])
@pytest.mark.parametrize(("size", "version", "natt"), [(300, 4, True), (576, 4, False),
                                                     (400, 6, True), (1280, 6, False)])
def test_fragments_fit_the_datagram_size_and_join_to_the_message(
        make: Callable[[], SkCipher], size: int, version: int, natt: bool) -> None:
    cipher = make()
    rng = randomness()
    capacity = fragment_capacity(size, version, natt, cipher)
    fragments = encode_fragments(HEADER, PAYLOADS, cipher, rng.randbytes, capacity)
    inner = encode_payloads(PAYLOADS)
    assert len(fragments) == -(-len(inner) // capacity) > 1
    pieces = []
    for number, data in enumerate(fragments, 1):
        # The whole IP datagram fits; a fuller fragment would not (the budget is tight).
        assert len(data) + transport_overhead(version, natt) <= size
        header = decode_header(data)
        assert header.next_payload == PayloadType.SKF and header.length == len(data)
        assert (header.spi_i, header.message_id) == (HEADER.spi_i, HEADER.message_id)
        frag = decrypt_fragment(data, decode_message(data), cipher)
        assert (frag.number, frag.total) == (number, len(fragments))
        assert frag.first_payload == (PayloadType.IDi if number == 1 else 0)
        pieces.append(frag.data)
    assert b"".join(pieces) == inner
    whole = join_fragments(HEADER, PayloadType.IDi, pieces)
    assert list(whole.payloads) == PAYLOADS
    # A capacity one block larger would overflow the size: the budget is not wasteful.
    bigger = encode_fragments(HEADER, PAYLOADS, cipher, rng.randbytes,
                              capacity + max(cipher.block_size, 1))
    assert len(bigger[0]) + transport_overhead(version, natt) > size


def test_each_fragment_is_protected_on_its_own() -> None:
    cipher = cbc()
    fragments = encode_fragments(HEADER, PAYLOADS, cipher, randomness().randbytes, 200)
    second = bytearray(fragments[1])
    second[-20] ^= 1  # ciphertext
    with pytest.raises(IntegrityError):
        decrypt_fragment(bytes(second), decode_message(bytes(second)), cipher)
    # Number and total are authenticated: a changed Total Fragments does not verify.
    changed = bytearray(fragments[1])
    changed[HEADER_LENGTH + 7] += 1
    with pytest.raises(IntegrityError):
        decrypt_fragment(bytes(changed), decode_message(bytes(changed)), cipher)
    # Another SA's keys do not open it.
    with pytest.raises(IntegrityError):
        decrypt_fragment(fragments[0], decode_message(fragments[0]), gcm())


@pytest.mark.parametrize(("number", "total"), [(0, 3), (4, 3), (1, 0)])
def test_fragment_numbers_outside_one_to_total_are_refused(number: int, total: int) -> None:
    cipher = cbc()
    data = encode_fragments(HEADER, PAYLOADS[:1], cipher, randomness().randbytes, 1000)[0]
    forged = bytearray(data)
    forged[HEADER_LENGTH + 4:HEADER_LENGTH + 8] = (number.to_bytes(2, "big")
                                                    + total.to_bytes(2, "big"))
    with pytest.raises(DecodeError):
        decrypt_fragment(bytes(forged), decode_message(bytes(forged)), cipher)


def test_skf_payload_round_trip_and_bounds() -> None:
    skf = EncryptedFragment(PayloadType.IDi, 2, 5, b"\x01" * 40)
    chain = encode_payloads([skf])
    (back,) = decode_payloads(PayloadType.SKF, chain)
    assert back == skf
    with pytest.raises(DecodeError):  # no room for number and total
        decode_payloads(PayloadType.SKF, b"\x00\x00\x00\x06\x00\x01")
    with pytest.raises(DecodeError):  # SKF must end the chain
        decode_payloads(PayloadType.SKF, chain + chain)


def test_an_sk_message_is_no_fragment() -> None:
    cipher = cbc()
    data = encode_encrypted(HEADER, PAYLOADS[:2], cipher, b"\x00" * 16)
    with pytest.raises(DecodeError):
        decrypt_fragment(data, decode_message(data), cipher)


def test_tiny_capacity_still_progresses_and_total_is_bounded() -> None:
    cipher = gcm()
    assert fragment_capacity(10, 6, True, cipher) == 1
    with pytest.raises(ValueError):
        encode_fragments(HEADER, [IDi(IdType.ID_KEY_ID, bytes(70000))], cipher,
                         randomness().randbytes, 1)
