"""Messages: header, charon byte fixtures, SK sealing/opening, and robustness properties."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.ikev2 import crypto
from mobike_vici.ikev2.buffer import DecodeError
from mobike_vici.ikev2.constants import (
    DhId,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from mobike_vici.ikev2.crypto import IntegrityError
from mobike_vici.ikev2.message import (
    Header,
    Message,
    UnsupportedVersionError,
    decode_header,
    decode_message,
    decrypt_message,
    encode_encrypted,
    encode_message,
)
from mobike_vici.ikev2.payloads import (
    KE,
    SA,
    Delete,
    Encrypted,
    Nonce,
    Notify,
    Payload,
    Transform,
    encode_payloads,
    find_notify,
    find_payload,
    first_error,
    notify_data,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return bytes.fromhex((FIXTURES / f"{name}.hex").read_text().replace("\n", ""))


ALL_FIXTURES = sorted(p.stem for p in FIXTURES.glob("*.hex"))


# --- SK ciphers for the tests -----------------------------------------------------------


class FakeCipher:
    """XOR keystream + truncated HMAC-SHA256: enough to check framing, lengths and AAD."""

    def __init__(self, key: bytes, iv_length: int = 8, block_size: int = 16,
                 icv_length: int = 16) -> None:
        self.key = key
        self.iv_length = iv_length
        self.block_size = block_size
        self.icv_length = icv_length
        self.sealed_plaintexts: list[bytes] = []

    def _stream(self, iv: bytes, n: int) -> bytes:
        out = b""
        counter = 0
        while len(out) < n:
            out += hashlib.sha256(self.key + iv + counter.to_bytes(4, "big")).digest()
            counter += 1
        return out[:n]

    def _icv(self, aad: bytes, iv: bytes, ct: bytes) -> bytes:
        return hmac.new(self.key, aad + iv + ct, hashlib.sha256).digest()[:self.icv_length]

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        self.sealed_plaintexts.append(plaintext)
        ct = bytes(a ^ b for a, b in zip(plaintext, self._stream(iv, len(plaintext)),
                                         strict=True))
        return ct + self._icv(aad, iv, ct)

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        ct, icv = sealed[:-self.icv_length], sealed[-self.icv_length:]
        if not hmac.compare_digest(icv, self._icv(aad, iv, ct)):
            raise IntegrityError("ICV mismatch")
        return bytes(a ^ b for a, b in zip(ct, self._stream(iv, len(ct)), strict=True))


class NullCipher:
    """No integrity at all: lets arbitrary plaintext reach the inner-payload parser."""

    iv_length = 0
    block_size = 1
    icv_length = 0

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        return sealed


class AesCbcHmacSha256:
    """ENCR_AES_CBC + AUTH_HMAC_SHA2_256_128 written from RFC 3602/4868, independent of
    crypto.py, to open what charon sealed."""

    iv_length = 16
    block_size = 16
    icv_length = 16

    def __init__(self, sk_e: bytes, sk_a: bytes) -> None:
        self.sk_e = sk_e
        self.sk_a = sk_a

    def _icv(self, aad: bytes, iv: bytes, ct: bytes) -> bytes:
        return hmac.new(self.sk_a, aad + iv + ct, hashlib.sha256).digest()[:16]

    def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        enc = Cipher(algorithms.AES(self.sk_e), modes.CBC(iv)).encryptor()
        ct = enc.update(plaintext) + enc.finalize()
        return ct + self._icv(aad, iv, ct)

    def open(self, aad: bytes, iv: bytes, sealed: bytes) -> bytes:
        ct, icv = sealed[:-16], sealed[-16:]
        if not hmac.compare_digest(icv, self._icv(aad, iv, ct)):
            raise IntegrityError("ICV mismatch")
        dec = Cipher(algorithms.AES(self.sk_e), modes.CBC(iv)).decryptor()
        return dec.update(ct) + dec.finalize()


def kinds(payloads: tuple[Payload, ...]) -> list[object]:
    """charon's log notation, roughly: payload type, or the notify type for notifies."""
    return [p.type if isinstance(p, Notify) else p.payload_type for p in payloads]


HEADER = Header(bytes(range(1, 9)), bytes(range(11, 19)), 0, ExchangeType.INFORMATIONAL,
                HeaderFlag.INITIATOR, 7)


# --- header ------------------------------------------------------------------------------


def test_header_fields_and_wire_layout() -> None:
    data = encode_message(HEADER, [Notify(NotifyType.COOKIE2, b"c" * 8)])
    assert data[:28] == (bytes(range(1, 9)) + bytes(range(11, 19))
                         + bytes([41, 0x20, 37, 0x08]) + (7).to_bytes(4, "big")
                         + len(data).to_bytes(4, "big"))
    header = decode_header(data)
    assert header == Header(HEADER.spi_i, HEADER.spi_r, PayloadType.NOTIFY,
                            ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR, 7, len(data))
    assert header.from_initiator and not header.is_response


def test_decode_header_needs_28_bytes() -> None:
    data = encode_message(HEADER, [])
    assert decode_header(data).length == 28
    with pytest.raises(DecodeError):
        decode_header(data[:27])


def test_wrong_major_version_exposes_the_header() -> None:
    data = bytearray(encode_message(HEADER, [Nonce(b"n" * 16)]))
    data[17] = 0x30
    with pytest.raises(UnsupportedVersionError) as info:
        decode_message(bytes(data))
    assert info.value.header.version == 0x30
    assert info.value.header.spi_i == HEADER.spi_i
    assert isinstance(info.value, DecodeError)


def test_higher_minor_version_and_reserved_flags_are_ignored() -> None:
    data = bytearray(encode_message(HEADER, []))
    data[17] = 0x21
    data[19] = 0x08 | 0x20 | 0x01 | 0x80
    header = decode_header(bytes(data))
    assert header.version == 0x21
    assert header.flags == HeaderFlag.INITIATOR | HeaderFlag.RESPONSE


@pytest.mark.parametrize("delta", [-1, 1])
def test_length_field_must_match_the_datagram(delta: int) -> None:
    data = encode_message(HEADER, [Nonce(b"n" * 16)])
    with pytest.raises(DecodeError, match="header says"):
        decode_message(data[:-1] if delta < 0 else data + b"\x00")


def test_length_field_below_header_size_is_refused() -> None:
    data = bytearray(encode_message(HEADER, []))
    data[24:28] = (27).to_bytes(4, "big")
    with pytest.raises(DecodeError):
        decode_header(bytes(data))


def test_payload_lookups() -> None:
    chain = (Nonce(b"n"), Notify(NotifyType.COOKIE2, b"a"), Notify(NotifyType.UPDATE_SA_ADDRESSES),
             Notify(NotifyType.COOKIE2, b"b"), Notify(NotifyType.INVALID_SYNTAX))
    assert find_payload(chain, Nonce) == Nonce(b"n")
    assert find_payload(chain, KE) is None
    assert find_notify(chain, NotifyType.COOKIE2) == Notify(NotifyType.COOKIE2, b"a")
    assert find_notify(chain, NotifyType.NO_ADDITIONAL_ADDRESSES) is None
    assert notify_data(chain, NotifyType.COOKIE2) == [b"a", b"b"]
    assert first_error(chain) == Notify(NotifyType.INVALID_SYNTAX)
    assert first_error(chain[:4]) is None
    assert first_error((Notify(16383),)) == Notify(16383)  # unknown, still an error
    assert first_error((Notify(16384),)) is None


# --- charon fixtures (tests/unit/ikev2/fixtures, see capture_charon.sh, charon-enc.log) ----


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_charon_messages_re_encode_byte_for_byte(name: str) -> None:
    data = fixture(name)
    m = decode_message(data)
    assert m.header.length == len(data)
    assert encode_message(m.header, m.payloads) == data


def test_charon_ike_sa_init_request() -> None:
    m = decode_message(fixture("charon-ike-sa-init-request"))
    assert m.header.exchange == ExchangeType.IKE_SA_INIT
    assert m.header.flags == HeaderFlag.INITIATOR
    assert m.header.message_id == 0 and m.header.spi_r == bytes(8)
    # charon-enc.log: [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG) N(REDIR_SUP) ]
    assert kinds(m.payloads) == [
        PayloadType.SA, PayloadType.KE, PayloadType.NONCE,
        NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.IKEV2_FRAGMENTATION_SUPPORTED, NotifyType.SIGNATURE_HASH_ALGORITHMS,
        NotifyType.REDIRECT_SUPPORTED,
    ]
    sa, ke, nonce, nat_src, *_ = m.payloads
    assert isinstance(sa, SA) and [p.num for p in sa.proposals] == [1, 2]
    first = sa.proposals[0]
    assert first.protocol == ProtocolId.IKE and first.spi == b""
    # charon's default IKE proposal opens with aes128/192/256 CBC and offers x25519 first.
    assert first.transforms[:3] == tuple(
        Transform(TransformType.ENCR, EncrId.AES_CBC, bits) for bits in (128, 192, 256))
    dh = [t.id for t in first.transforms if t.type == TransformType.DH]
    assert dh[0] == DhId.CURVE_25519
    assert all(t.key_length is None for t in first.transforms if t.type != TransformType.ENCR)
    assert isinstance(ke, KE) and ke.group == DhId.CURVE_25519 and len(ke.data) == 32
    assert isinstance(nonce, Nonce) and len(nonce.data) == 32
    assert isinstance(nat_src, Notify) and len(nat_src.data) == 20 and nat_src.spi == b""


def test_charon_ike_sa_init_response_keeps_unknown_notify_as_int() -> None:
    m = decode_message(fixture("charon-ike-sa-init-response"))
    assert m.header.is_response and not m.header.from_initiator
    sa = find_payload(m.payloads, SA)
    assert sa is not None and len(sa.proposals) == 1
    chosen = {t.type: (t.id, t.key_length) for t in sa.proposals[0].transforms}
    # charon-enc.log: selected IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519
    assert chosen == {TransformType.ENCR: (EncrId.AES_CBC, 128),
                      TransformType.INTEG: (IntegId.HMAC_SHA2_256_128, None),
                      TransformType.PRF: (PrfId.HMAC_SHA2_256, None),
                      TransformType.DH: (DhId.CURVE_25519, None)}
    # charon calls 16418 CHDLESS_SUP (RFC 6023); decoded by name.
    types = [p.type for p in m.payloads if isinstance(p, Notify)]
    assert 16418 in types
    assert find_notify(m.payloads, NotifyType.MULTIPLE_AUTH_SUPPORTED) is not None


# --- SK sealing with the fake cipher -----------------------------------------------------

INNER: list[Payload] = [
    Notify(NotifyType.UPDATE_SA_ADDRESSES),
    Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
    Notify(NotifyType.COOKIE2, bytes(range(16))),
    Delete(ProtocolId.ESP, (b"\x01\x02\x03\x04",)),
]


@pytest.mark.parametrize("block_size", [1, 4, 8, 16])
@pytest.mark.parametrize("n_inner", [0, 1, 2, 4])
def test_encrypted_round_trip_and_padding(block_size: int, n_inner: int) -> None:
    cipher = FakeCipher(b"k" * 32, iv_length=8, block_size=block_size)
    inner = INNER[:n_inner]
    data = encode_encrypted(HEADER, inner, cipher, b"\x11" * 8)
    (plaintext,) = cipher.sealed_plaintexts
    assert len(plaintext) % block_size == 0
    pad_length = plaintext[-1]
    assert pad_length < block_size  # minimal padding, and the pad length byte is present
    assert plaintext[len(plaintext) - 1 - pad_length:-1] == bytes(pad_length)
    m = decode_message(data)
    assert m.header.length == len(data)
    assert m.header.next_payload == PayloadType.SK
    (sk,) = m.payloads
    assert isinstance(sk, Encrypted)
    assert sk.first_payload == (PayloadType.NOTIFY if inner else PayloadType.NONE)
    assert len(sk.body) == 8 + len(plaintext) + 16
    opened = decrypt_message(data, m, cipher)
    assert opened.payloads == tuple(inner)
    assert opened.header == m.header


def test_every_authenticated_byte_is_covered() -> None:
    cipher = FakeCipher(b"k" * 32)
    data = encode_encrypted(HEADER, INNER, cipher, b"\x22" * 8)
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            m = decode_message(bytes(tampered))
        except DecodeError:
            continue  # e.g. the length field: dropped before any crypto
        with pytest.raises((IntegrityError, DecodeError)):
            decrypt_message(bytes(tampered), m, cipher)


def test_aad_ends_at_the_sk_generic_header() -> None:
    seen: list[bytes] = []

    class Spy(FakeCipher):
        def seal(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
            seen.append(aad)
            return super().seal(aad, iv, plaintext)

    data = encode_encrypted(HEADER, INNER, Spy(b"k"), b"\x00" * 8)
    assert seen == [data[:28 + 4]]


def test_outer_payloads_before_sk_are_kept() -> None:
    cipher = FakeCipher(b"k", block_size=1)
    plaintext = encode_payloads(INNER[:1]) + b"\x00"  # pad length 0
    iv = b"\x01" * 8
    placeholder = Encrypted(PayloadType.NOTIFY, bytes(8 + len(plaintext) + 16))
    outer = Nonce(b"v" * 16)
    draft = encode_message(HEADER, [outer, placeholder])
    aad = draft[:len(draft) - len(placeholder.body)]  # covers the outer Nonce too
    data = aad + iv + cipher.seal(aad, iv, plaintext)
    m = decrypt_message(data, decode_message(data), cipher)
    assert m.payloads == (outer, INNER[0])


def test_bad_pad_length_is_a_decode_error() -> None:
    cipher = NullCipher()
    data = encode_encrypted(HEADER, [Nonce(b"abc")], cipher, b"")
    tampered = data[:-1] + bytes([200])
    with pytest.raises(DecodeError, match="pad length"):
        decrypt_message(tampered, decode_message(tampered), cipher)


def test_ciphertext_not_a_multiple_of_the_block_is_a_decode_error() -> None:
    cipher = FakeCipher(b"k", block_size=16)
    data = encode_encrypted(HEADER, INNER, cipher, b"\x00" * 8)
    m = decode_message(data)
    sk = m.payloads[-1]
    assert isinstance(sk, Encrypted)
    short = encode_message(HEADER, [Encrypted(sk.first_payload, sk.body[:-1])])
    with pytest.raises(DecodeError, match="block size"):
        decrypt_message(short, decode_message(short), cipher)


def test_sk_inside_sk_is_refused() -> None:
    cipher = NullCipher()
    data = encode_encrypted(HEADER, [Encrypted(PayloadType.NONE, b"x")], cipher, b"")
    with pytest.raises(DecodeError, match="inside"):
        decrypt_message(data, decode_message(data), cipher)


def test_decrypt_needs_an_sk_payload() -> None:
    data = encode_message(HEADER, [Nonce(b"n")])
    with pytest.raises(DecodeError, match="no SK"):
        decrypt_message(data, decode_message(data), FakeCipher(b"k"))


def test_encode_encrypted_checks_the_iv_length() -> None:
    with pytest.raises(ValueError, match="IV"):
        encode_encrypted(HEADER, INNER, FakeCipher(b"k", iv_length=8), b"\x00" * 7)


# --- real ciphers from crypto.py ----------------------------------------------------------


@pytest.mark.parametrize(("encr", "bits", "integ"), [
    (EncrId.AES_GCM_16, 128, None),
    (EncrId.AES_GCM_16, 256, None),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128),
])
def test_crypto_ciphers_round_trip_between_peers(
    encr: EncrId, bits: int, integ: IntegId | None
) -> None:
    suite = crypto.IkeSuite(encr, bits, integ, PrfId.HMAC_SHA2_256, DhId.CURVE_25519)
    enc_len = bits // 8 + (4 if integ is None else 0)  # AEAD keys end with a 4-byte salt
    keys = crypto.IkeKeys(sk_d=bytes(32), sk_ai=bytes(32), sk_ar=bytes([1]) * 32,
                          sk_ei=bytes([2]) * enc_len, sk_er=bytes([3]) * enc_len,
                          sk_pi=bytes(32), sk_pr=bytes(32))
    out_i, _ = crypto.sk_ciphers(suite, keys, initiator=True)
    _, in_r = crypto.sk_ciphers(suite, keys, initiator=False)
    data = encode_encrypted(HEADER, INNER, out_i, b"\x07" * out_i.iv_length)
    assert decrypt_message(data, decode_message(data), in_r).payloads == tuple(INNER)
    tampered = data[:40] + bytes([data[40] ^ 1]) + data[41:]
    with pytest.raises(IntegrityError):
        decrypt_message(tampered, decode_message(tampered), in_r)


# --- properties --------------------------------------------------------------------------


def _header_matches_the_bytes(header: Header, data: bytes) -> None:
    """What decoded is what the fixed header says, at RFC 7296 §3.1's offsets."""
    assert (header.spi_i, header.spi_r) == (data[:8], data[8:16])
    assert header.next_payload == data[16] and header.exchange == data[18]
    assert int(header.flags) & ~data[19] == 0  # reserved bits are dropped, never added
    assert header.message_id == int.from_bytes(data[20:24], "big")
    assert header.length == int.from_bytes(data[24:28], "big")


def _decode_or_decode_error(data: bytes) -> None:
    try:
        m = decode_message(data)
    except DecodeError:
        return
    _header_matches_the_bytes(m.header, data)
    assert m.header.length == len(data)


@given(st.binary(max_size=300))
def test_decode_message_raises_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@pytest.mark.slow
@given(st.binary(min_size=28, max_size=28), st.binary(max_size=100))
def test_decode_message_with_a_consistent_length_field(head: bytes, rest: bytes) -> None:
    data = head[:24] + (28 + len(rest)).to_bytes(4, "big") + rest
    _decode_or_decode_error(data)


@given(st.binary(max_size=60))
def test_decode_header_raises_only_decode_error(data: bytes) -> None:
    try:
        header = decode_header(data)
    except DecodeError:
        return
    _header_matches_the_bytes(header, data)


_VALID = [fixture(n) for n in ALL_FIXTURES] + [
    encode_encrypted(HEADER, INNER, NullCipher(), b""),
    encode_message(HEADER, INNER),
]


@pytest.mark.slow
@given(st.sampled_from(_VALID), st.data())
def test_mutated_messages_raise_only_decode_error(valid: bytes, data: st.DataObject) -> None:
    mutated = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "extend", "set_length"]))
        if action == "flip" and mutated:
            i = data.draw(st.integers(0, len(mutated) - 1))
            mutated[i] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del mutated[data.draw(st.integers(0, len(mutated))):]
        elif action == "extend":
            mutated += data.draw(st.binary(min_size=1, max_size=16))
        elif len(mutated) >= 28:
            mutated[24:28] = len(mutated).to_bytes(4, "big")
    _decode_or_decode_error(bytes(mutated))
    with contextlib.suppress(DecodeError):
        decode_header(bytes(mutated))


@given(st.binary(max_size=120), st.integers(0, 255))
def test_decrypt_of_arbitrary_plaintext_raises_only_decode_error(
    plaintext: bytes, first: int
) -> None:
    body = plaintext
    data = encode_message(HEADER, [Encrypted(first, body)])
    try:
        m = decrypt_message(data, decode_message(data), NullCipher())
    except DecodeError:
        return
    assert isinstance(m, Message)
