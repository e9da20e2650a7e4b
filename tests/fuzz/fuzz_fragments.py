"""Fuzz target: IKE fragment reassembly (RFC 7383) in ``Engine.receive_datagram``.

Two engines as the unit tests wire them, in one of two states chosen by the first
record: an established MOBIKE IKE_SA, or a half-open one (IKE_SA_INIT done, the
initiator's IKE_AUTH request outstanding and never delivered), so fragments reach
a responder that has not authenticated its peer yet. The input is a sequence of
records, each one datagram (at most MAX_RECORDS):

``flags, number, total, first, length, chunk[length]``

``flags & 3``: 0 a fragment of a request to the responder, 1 a fragment of a
response to the initiator's outstanding request, both sealed with the live keys
(``chunk`` is the fragment's plaintext, padded here), so they pass the integrity
check and reach reassembly; 2 a forged datagram (the live SPIs and an SKF header,
then ``chunk`` unsealed); 3 like 0 with a broken ICV. Bit 2 of the first record
picks the half-open pair. Bits 3-4: the exchange (0 the expected one, then
INFORMATIONAL, CREATE_CHILD_SA, IKE_SA_INIT); bit 5 the next message ID (outside
the window); bit 6 from another of the peer's addresses; bit 7 of a forged record
first advances the clock by TICK and runs the timers.

The engine's contract: receive_datagram raises nothing for any input, so no
exception may escape.
"""

from __future__ import annotations

from dataclasses import dataclass

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.config import Config
    from mobike_vici.core.engine import Datagram, Engine
    from mobike_vici.core.ike_sa import IkeSa, IkeState
    from mobike_vici.core.settings import EngineSettings
    from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag, PayloadType
    from mobike_vici.ikev2.crypto import SkCipher
    from mobike_vici.ikev2.message import decode_header, decode_message, decrypt_fragment
    from mobike_vici.types import Endpoint, Path

    from ..unit.core.harness import ALICE, BOB, Net, config_pair, seeded
    from ..unit.core.test_mobike import ALICE2, BOB6
    from .engine_support import pad

MAX_RECORDS = 8
"""Datagrams per input: enough for out-of-order, duplicate and changed-total runs of
a message cut in a few pieces, few enough to keep inputs fast."""
RESET_EVERY = 500
START = 10.0
TICK = 5.0
"""Seconds one clock step advances; the pair's clock runs on across inputs, so the
reassembly (30 s) and half-open (30 s) timeouts are reached now and then."""
_EXCHANGES = (ExchangeType.INFORMATIONAL, ExchangeType.CREATE_CHILD_SA,
              ExchangeType.IKE_SA_INIT)


@dataclass
class Pair:
    net: Net
    sa_a: IkeSa
    sa_b: IkeSa
    half_open: bool
    now: float = START

    def intact(self) -> bool:
        a, b = self.net.a, self.net.b
        want = IkeState.CONNECTING if self.half_open else IkeState.ESTABLISHED
        return (list(a._sas.values()) == [self.sa_a] and list(b._sas.values()) == [self.sa_b]
                and self.sa_a.state == want and self.sa_b.state == want)


_CONFIGS: list[tuple[Config, Config]] = []


def configs() -> tuple[Config, Config]:
    """The unit tests' configs, parsed once (parsing costs more than a handshake)."""
    if not _CONFIGS:
        _CONFIGS.append(config_pair())
    return _CONFIGS[0]


def _net(settings: EngineSettings | None) -> Net:
    ca, cb = configs()
    net = Net(Engine(ca, seeded(1), lambda r: ALICE, settings),
              Engine(cb, seeded(1001), lambda r: BOB, settings))
    net.addrs_a = {ALICE, ALICE2}
    net.a.set_local_addresses((ALICE, ALICE2), 0.0)
    net.b.set_local_addresses((BOB, BOB6), 0.0)
    return net


def _half_open(settings: EngineSettings | None = None) -> Pair:
    """IKE_SA_INIT done both ways; the IKE_AUTH request (whole or in fragments) lost."""
    net = _net(settings)
    net.drop = lambda d: decode_header(d.data).exchange == ExchangeType.IKE_AUTH
    net.a.initiate("home", None, 0.0)
    net.pump()
    net.collect()
    (sa_a,) = net.a._sas.values()
    (sa_b,) = net.b._sas.values()
    net.log.clear()
    return Pair(net, sa_a, sa_b, half_open=True)


def _established(settings: EngineSettings | None = None) -> Pair:
    net = _net(settings)
    net.a.initiate("home", None, 0.0)
    net.pump()
    net.collect()
    (sa_a,) = net.a._sas.values()
    (sa_b,) = net.b._sas.values()
    net.log.clear()
    return Pair(net, sa_a, sa_b, half_open=False)


_pairs: dict[bool, Pair] = {}
_uses: dict[bool, int] = {}


def pair_for(half_open: bool) -> Pair:
    current = _pairs.get(half_open)
    if current is None or _uses.get(half_open, 0) >= RESET_EVERY or not current.intact():
        current = _half_open() if half_open else _established()
        _pairs[half_open] = current
        _uses[half_open] = 0
    _uses[half_open] += 1
    return current


def seal_fragment(sa: IkeSa, exchange: int, message_id: int, response: bool, first: int,
                  number: int, total: int, chunk: bytes, cipher: SkCipher) -> bytes:
    """An SKF-protected datagram around ``chunk`` as ``sa``'s peer sends it."""
    plaintext = pad(chunk, cipher)
    iv = bytes(cipher.iv_length)
    skf_length = 8 + len(iv) + len(plaintext) + cipher.icv_length
    aad = (_header(sa, exchange, message_id, response, 28 + skf_length)
           + bytes((first, 0)) + skf_length.to_bytes(2, "big")
           + number.to_bytes(2, "big") + total.to_bytes(2, "big"))
    return aad + iv + cipher.seal(aad, iv, plaintext)


def _header(sa: IkeSa, exchange: int, message_id: int, response: bool, length: int) -> bytes:
    flags = HeaderFlag.NONE if sa.initiator else HeaderFlag.INITIATOR
    if response:
        flags |= HeaderFlag.RESPONSE
    return (sa.spi_i + sa.spi_r + bytes((PayloadType.SKF, 0x20, exchange & 0xFF, flags))
            + (message_id & 0xFFFFFFFF).to_bytes(4, "big") + length.to_bytes(4, "big"))


def _drain(engine: Engine, now: float) -> None:
    engine.datagrams_to_send(now)
    while engine.next_event() is not None:
        pass


def one_record(pair: Pair, flags: int, number: int, total: int, first: int,
               chunk: bytes) -> None:
    net, kind = pair.net, flags & 3
    if kind == 2 and flags & 0x80:
        pair.now += TICK
        net.a.handle_timer(pair.now)
        net.b.handle_timer(pair.now)
    response = kind == 1
    if response:
        sa, engine, sender = pair.sa_a, net.a, pair.sa_b
        pending = sa.pending
        if pending is None and sa.state == IkeState.ESTABLISHED:
            net.a.probe(sa.spi_str, sa.path, pair.now)
            pending = sa.pending
        if pending is None:
            return
        expected, mid = pending.exchange, pending.message_id
    else:
        sa, engine, sender = pair.sa_b, net.b, pair.sa_a
        expected = ExchangeType.IKE_AUTH if pair.half_open else ExchangeType.INFORMATIONAL
        mid = sa.peer_next_id
    choice = (flags >> 3) & 3
    exchange = expected if choice == 0 else _EXCHANGES[choice - 1]
    if flags & 0x20:
        mid += 1
    cipher = sender.cipher_out
    if cipher is None:
        return
    if kind == 2:
        data = _header(sa, exchange, mid, response, 28 + len(chunk)) + chunk
    else:
        data = seal_fragment(sa, exchange, mid, response, first, number, total, chunk, cipher)
        if kind == 3:
            data = data[:-1] + bytes((data[-1] ^ 1,))
    path = sa.path
    if flags & 0x40:
        other = ALICE2 if sa is pair.sa_b else BOB6
        if other.version == path.local.addr.version:
            path = Path(path.local, Endpoint(other, path.remote.port))
    engine.receive_datagram(data, path, pair.now)
    engine.get_timer()
    _drain(net.a, pair.now)
    _drain(net.b, pair.now)


ALLOWED: tuple[type[BaseException], ...] = ()
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if len(data) < 5:
        return
    pair = pair_for(bool(data[0] & 4))
    pos = 0
    for _ in range(MAX_RECORDS):
        if pos + 5 > len(data):
            break
        flags, number, total, first, length = data[pos:pos + 5]
        chunk = data[pos + 5:pos + 5 + length]
        pos += 5 + length
        one_record(pair, flags, number, total, first, chunk)
        if not pair.intact():
            break
    pair.net.a.status()
    pair.net.b.status()


def _records(datagrams: list[Datagram], net: Net, flags: int, sas: dict[bool, IkeSa]) -> bytes:
    """Seed records: the opened fragments of ``datagrams`` (from ``a`` when requests)."""
    out = b""
    for d in datagrams:
        from_a = d.path.local.addr in net.addrs_a
        receiver = sas[from_a]
        assert receiver.cipher_in is not None
        frag = decrypt_fragment(d.data, decode_message(d.data), receiver.cipher_in)
        if len(frag.data) > 255:
            continue
        out += bytes((flags, frag.number, frag.total, frag.first_payload, len(frag.data)))
        out += frag.data
    return out


def seeds() -> list[bytes]:
    """Real fragments, opened: an IKE_AUTH request and response cut at 250 bytes (to the
    half-open pair), a MOBIKE update and its response cut at 150 (to the established one)."""
    out: list[bytes] = []
    small = EngineSettings(fragment_size=250)
    ho = _half_open(small)
    ho.net.drop = lambda d: False
    ho.net.a.handle_timer(ho.sa_a.pending.deadline if ho.sa_a.pending else 4.0)
    ho.net.pump()
    by_side = {True: ho.sa_b, False: ho.sa_a}
    frags = [d for d in ho.net.log if decode_header(d.data).next_payload == PayloadType.SKF]
    requests = [d for d in frags if not decode_header(d.data).is_response]
    responses = [d for d in frags if decode_header(d.data).is_response]
    out.append(_records(requests, ho.net, 4, by_side))
    out.append(_records(list(reversed(requests)), ho.net, 4, by_side))
    out.append(_records(requests + requests[:1], ho.net, 4, by_side))
    out.append(_records(responses, ho.net, 4 | 1, by_side))
    est = _established(EngineSettings(fragment_size=150))
    net, sa_a, sa_b = est.net, est.sa_a, est.sa_b
    net.a.move(sa_a.spi_str, Path(Endpoint(ALICE2, 4500), sa_a.path.remote), net.now)
    net.pump()
    frags = [d for d in net.log if not d.keepalive
             and decode_header(d.data).next_payload == PayloadType.SKF]
    sides = {True: sa_b, False: sa_a}
    out.append(_records([d for d in frags if not decode_header(d.data).is_response],
                        net, 0, sides))
    out.append(_records([d for d in frags if decode_header(d.data).is_response],
                        net, 1, sides))
    return [s for s in out if s]


if __name__ == "__main__":
    main("fragments", target, ALLOWED, seeds)
