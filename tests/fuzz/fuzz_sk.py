"""Fuzz target: SK payload decryption (RFC 7296 §3.14) with the keys of a real charon run.

The keys are those charon derived in the captured exchange (the known-answer
vector of the crypto tests). Input layout, by the first byte ``mode``:

- bit 0 clear: the rest is a whole message, opened as it is (bit 1 picks the
  direction): mostly integrity failures, plus the framing checks before them.
- bit 0 set: byte 1 names the first inner payload, the rest is the plaintext,
  sealed here under charon's IKE_AUTH header so that it passes the integrity
  check and reaches the padding and inner payload decoding. With bit 2 the
  plaintext is sealed as given (its last byte is the pad length), otherwise it
  is padded correctly first.

Only DecodeError and IntegrityError may escape.
"""

from __future__ import annotations

import struct

import atheris

from .harness import main
from .seeds import charon_message

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.ikev2.buffer import DecodeError
    from mobike_vici.ikev2.constants import PayloadType
    from mobike_vici.ikev2.crypto import IntegrityError, SkCipher, derive_ike_keys, sk_ciphers
    from mobike_vici.ikev2.message import decode_message, decrypt_message

    from ..unit.ikev2.test_crypto import CHARON_KEYS, SUITE_CBC

INIT_REQUEST = charon_message("charon-ike-sa-init-request")
INIT_RESPONSE = charon_message("charon-ike-sa-init-response")
AUTH_REQUEST = charon_message("charon-ike-auth-request")
AUTH_RESPONSE = charon_message("charon-ike-auth-response")


def _nonce(message: bytes) -> bytes:
    kind, off = message[16], 28
    while kind:
        nxt, length = message[off], struct.unpack(">H", message[off + 2:off + 4])[0]
        if kind == PayloadType.NONCE:
            return message[off + 4:off + length]
        kind, off = nxt, off + length
    raise ValueError("no nonce")


KEYS = derive_ike_keys(SUITE_CBC, _nonce(INIT_REQUEST), _nonce(INIT_RESPONSE),
                       bytes.fromhex(CHARON_KEYS["dh_shared"]), INIT_RESPONSE[0:8],
                       INIT_RESPONSE[8:16])
assert KEYS.sk_ei.hex() == CHARON_KEYS["sk_ei"]
OUT_I, IN_I = sk_ciphers(SUITE_CBC, KEYS, initiator=True)
OUT_R, IN_R = sk_ciphers(SUITE_CBC, KEYS, initiator=False)
IV = AUTH_REQUEST[32:48]


def seal(first_payload: int, plaintext: bytes) -> bytes:
    """charon's IKE_AUTH request header around ``plaintext`` (already padded)."""
    cipher: SkCipher = OUT_I
    sk_length = 4 + len(IV) + len(plaintext) + cipher.icv_length
    aad = (AUTH_REQUEST[:24] + (28 + sk_length).to_bytes(4, "big")
           + bytes((first_payload, 0)) + sk_length.to_bytes(2, "big"))
    return aad + IV + cipher.seal(aad, IV, plaintext)


def pad(inner: bytes) -> bytes:
    pad_length = -(len(inner) + 1) % OUT_I.block_size
    return inner + bytes(pad_length) + bytes((pad_length,))


ALLOWED: tuple[type[BaseException], ...] = (DecodeError, IntegrityError)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    if not mode & 1:
        message = data[1:]
        cipher = IN_I if mode & 2 else IN_R
    else:
        if len(data) < 2:
            return
        plaintext = data[2:]
        if mode & 4:
            plaintext += bytes(-len(plaintext) % OUT_I.block_size)
        else:
            plaintext = pad(plaintext)
        message = seal(data[1], plaintext)
        cipher = IN_R
    decrypt_message(message, decode_message(message), cipher)


def _plaintext(message: bytes, cipher: SkCipher) -> bytes:
    sk_length = struct.unpack(">H", message[30:32])[0]
    body = message[32:28 + sk_length]
    return cipher.open(message[:32], body[:16], body[16:])


def charon_inner_chains() -> list[tuple[int, bytes]]:
    """(first payload type, chain) of every SK payload charon sent in the capture."""
    out = []
    for message, cipher in ((AUTH_REQUEST, IN_R), (AUTH_RESPONSE, IN_I)):
        plain = _plaintext(message, cipher)
        out.append((message[28], plain[:len(plain) - plain[-1] - 1]))
    for name in ("charon-informational-request", "charon-informational-response"):
        message = charon_message(name)
        for cipher in (IN_I, IN_R):
            try:
                plain = _plaintext(message, cipher)
            except IntegrityError:
                continue
            out.append((message[28], plain[:len(plain) - plain[-1] - 1]))
    return out


def seeds() -> list[bytes]:
    request_plain = _plaintext(AUTH_REQUEST, IN_R)
    inner = request_plain[:len(request_plain) - request_plain[-1] - 1]
    return [b"\x00" + AUTH_REQUEST, b"\x02" + AUTH_RESPONSE,
            bytes((1, AUTH_REQUEST[28])) + inner,
            bytes((5, AUTH_REQUEST[28])) + request_plain]


if __name__ == "__main__":
    main("sk", target, ALLOWED, seeds)
