"""Fuzz target: ``Engine.receive_datagram`` from an unauthenticated peer.

Each input gets fresh engines with the unit tests' configs and seeded
randomness, so the same input always meets the same state. Input layout: byte 0
``mode``, the rest one datagram. ``mode & 3``:

- 0: to a responder with no SA (an IKE_SA_INIT request, or garbage);
- 1: to an initiator waiting for its IKE_SA_INIT response;
- 2: to a responder that answered a real IKE_SA_INIT request (half-open), so the
  datagram meets the IKE_AUTH path with the keys of that exchange; the seeds
  hold the real IKE_AUTH request, which opens with them;
- 3: to an initiator waiting for its IKE_AUTH response, likewise.

Bit 2 sends on port 4500 instead of 500; bit 3 makes the responders demand a
COOKIE from the first SA on (the seeds hold a real retry with its COOKIE). After
the datagram the timers run once, far ahead, so retransmission and half-open
expiry see the new state.
The engine's contract: these methods raise nothing, so no exception may escape.
"""

from __future__ import annotations

import atheris

from .harness import main
from .seeds import charon_messages

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.core.engine import Engine
    from mobike_vici.core.settings import EngineSettings
    from mobike_vici.ikev2.constants import ExchangeType
    from mobike_vici.ikev2.message import decode_header
    from mobike_vici.types import Endpoint, Path

    from ..unit.core.harness import ALICE, BOB, config_pair, make_pair, seeded

CONFIG_A, CONFIG_B = config_pair()
COOKIES = EngineSettings(cookie_threshold=0)


def _exchange(settings: EngineSettings | None = None) -> list[bytes]:
    """The datagrams of one real setup between engines seeded as below."""
    net = make_pair(settings=settings)
    net.a.initiate("home", None, 0.0)
    net.pump()
    return [d.data for d in net.log]


LOG = _exchange()
INIT_REQUEST, INIT_RESPONSE, AUTH_REQUEST, AUTH_RESPONSE = LOG[:4]
assert decode_header(AUTH_REQUEST).exchange == ExchangeType.IKE_AUTH
COOKIE_REQUEST = _exchange(COOKIES)[2]
"""The initiator's IKE_SA_INIT retry carrying the responder's COOKIE."""


def initiator() -> Engine:
    engine = Engine(CONFIG_A, seeded(1), lambda r: ALICE)
    engine.initiate("home", None, 0.0)
    engine.datagrams_to_send(0.0)
    return engine


def responder(settings: EngineSettings | None = None) -> Engine:
    return Engine(CONFIG_B, seeded(1001), lambda r: BOB, settings)


ALLOWED: tuple[type[BaseException], ...] = ()
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if not data:
        return
    mode, datagram = data[0], data[1:]
    port = 4500 if mode & 4 else 500
    kind = mode & 3
    if kind in (0, 2):
        engine = responder(COOKIES if mode & 8 else None)
        path = Path(Endpoint(BOB, port), Endpoint(ALICE, port))
        if kind == 2:
            engine.receive_datagram(INIT_REQUEST, Path(Endpoint(BOB, 500), Endpoint(ALICE, 500)),
                                    0.0)
    else:
        engine = initiator()
        path = Path(Endpoint(ALICE, port), Endpoint(BOB, port))
        if kind == 3:
            engine.receive_datagram(INIT_RESPONSE, Path(Endpoint(ALICE, 500),
                                                         Endpoint(BOB, 500)), 0.0)
    engine.datagrams_to_send(0.0)
    engine.receive_datagram(datagram, path, 1.0)
    engine.datagrams_to_send(1.0)
    engine.status()
    engine.handle_timer(1000.0)
    engine.datagrams_to_send(1000.0)
    engine.get_timer()
    while engine.next_event() is not None:
        pass


def seeds() -> list[bytes]:
    out = [b"\x00" + INIT_REQUEST, b"\x01" + INIT_RESPONSE, b"\x08" + COOKIE_REQUEST,
           b"\x06" + AUTH_REQUEST, b"\x07" + AUTH_RESPONSE]
    for message in charon_messages():
        out += [b"\x00" + message, b"\x01" + message]
    return out


if __name__ == "__main__":
    main("engine_init", target, ALLOWED, seeds)
