"""Fuzz target: the IKE message and payload decoders (header, payload chain, every payload).

Input: a whole message for decode_message; the same bytes also go to the bare
chain decoder as (first payload type, chain). Only DecodeError may escape.
Seeds: charon's captured messages, and the payload chains it sealed inside SK.
"""

from __future__ import annotations

import contextlib

import atheris

from .harness import main
from .seeds import charon_messages

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.ikev2.buffer import DecodeError
    from mobike_vici.ikev2.message import decode_header, decode_message
    from mobike_vici.ikev2.payloads import decode_payloads


ALLOWED: tuple[type[BaseException], ...] = (DecodeError,)
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    try:
        decode_header(data)
    finally:
        if data:
            # The chain decoder alone, with any first payload type and SK allowed or not.
            with contextlib.suppress(DecodeError):
                decode_payloads(data[0], data[1:], allow_encrypted=bool(len(data) & 1))
    decode_message(data)


def seeds() -> list[bytes]:
    from .fuzz_sk import charon_inner_chains

    messages = charon_messages()
    # The same chains as the bare payload decoder sees them (first type, then the chain),
    # and the chains charon sealed inside SK (IDi, AUTH, SA, TSi, TSr, CP, notifies).
    return (messages + [m[16:17] + m[28:] for m in messages]
            + [bytes((first,)) + chain for first, chain in charon_inner_chains()])


if __name__ == "__main__":
    main("message", target, ALLOWED, seeds)
