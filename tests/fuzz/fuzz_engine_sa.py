"""Fuzz target: ``Engine.receive_datagram`` past authentication, with a live SA's keys.

Two engines set up one MOBIKE IKE_SA with a CHILD_SA in memory, as the unit tests
do. The input is the plaintext inside a validly sealed SK payload, so every
input reaches the authenticated code: the exchange handlers, MOBIKE, rekeys,
deletes, notifies. Input layout: byte 0 ``mode``, byte 1 the first inner payload
type, the rest the inner payload chain (bit 3 of ``mode``: the chain is sealed as
given, its last byte the pad length; otherwise it is padded correctly).
``mode & 7``:

- 0, 1, 2: a request from the initiator to the responder (INFORMATIONAL,
  CREATE_CHILD_SA, IKE_AUTH) with the next message ID;
- 3, 4: a response to the initiator's outstanding request (a CHILD_SA rekey or
  a liveness probe is started first when none is outstanding);
- 5, 6: a request from the responder to the initiator (INFORMATIONAL, CREATE_CHILD_SA);
- 7: like 0.

Bit 4 sends it from another of the peer's addresses (MOBIKE). The pair is set
up again when an input tore the SA down (or every RESET_EVERY inputs), so inputs
see the same state as far as possible. The engine's contract: receive_datagram
raises nothing for any input, so no exception may escape.
"""

from __future__ import annotations

import atheris

from .harness import main

with atheris.instrument_imports(include=["mobike_vici"]):
    from mobike_vici.ikev2.constants import ExchangeType
    from mobike_vici.ikev2.crypto import SkCipher
    from mobike_vici.types import Endpoint, Path

    from ..unit.core.harness import rekey_ike
    from ..unit.core.test_mobike import ALICE2, BOB6
    from .engine_support import (
        EXCHANGES,
        NOW,
        LivePair,
        align,
        drain,
        inner_of,
        pad,
        seal_raw,
    )

RESET_EVERY = 500
_live: LivePair | None = None
_uses = 0


def live() -> LivePair:
    global _live, _uses
    if _live is None or _uses >= RESET_EVERY or not _live.intact():
        _live = LivePair.establish()
        _uses = 0
    _uses += 1
    return _live


ALLOWED: tuple[type[BaseException], ...] = ()
"""What may escape the target for bad input; anything else is a crash."""


def target(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, first, body = data[0], data[1], data[2:]
    pair = live()
    net, kind = pair.net, mode & 7
    cipher: SkCipher | None
    if kind in (0, 1, 2, 7):
        sa, engine, response = pair.sa_b, net.b, False
        exchange, mid, cipher = EXCHANGES[kind % 7], sa.peer_next_id, pair.sa_a.cipher_out
    elif kind in (5, 6):
        sa, engine, response = pair.sa_a, net.a, False
        exchange, mid, cipher = EXCHANGES[kind - 5], sa.peer_next_id, pair.sa_b.cipher_out
    else:
        sa, engine, response = pair.sa_a, net.a, True
        if sa.pending is None:
            if kind == 3:
                net.a.rekey_child(next(iter(sa.children)), NOW)
            else:
                net.a.probe(sa.spi_str, sa.path, NOW)
            drain(net.a)
        if sa.pending is None:
            return
        exchange, mid, cipher = sa.pending.exchange, sa.pending.message_id, pair.sa_b.cipher_out
    assert cipher is not None
    path = sa.path
    if mode & 16:
        other = ALICE2 if sa is pair.sa_b else BOB6
        remote = Endpoint(other, path.remote.port)
        if other.version != path.local.addr.version:
            return
        path = Path(path.local, remote)
    plaintext = align(body, cipher) if mode & 8 else pad(body, cipher)
    engine.receive_datagram(seal_raw(sa, exchange, mid, response, first, plaintext, cipher),
                            path, NOW)
    engine.get_timer()
    engine.status()
    drain(net.a)
    drain(net.b)


def _seeds_of(op: str) -> list[bytes]:
    """The inner chains of every protected message one operation exchanges."""
    pair = LivePair.establish()
    net, sa_a, sa_b = pair.net, pair.sa_a, pair.sa_b
    net.log.clear()
    uid = next(iter(sa_a.children))
    if op == "probe":
        net.a.probe(sa_a.spi_str, sa_a.path, net.now)
    elif op == "rekey_child":
        net.a.rekey_child(uid, net.now)
    elif op == "rekey_child_b":
        net.b.rekey_child(next(iter(sa_b.children)), net.now)
    elif op == "rekey_ike":
        rekey_ike(net.a, sa_a.spi_str, net.now)
    elif op == "delete_child":
        net.a.delete_child(uid, net.now)
    elif op == "delete_ike":
        net.a.delete_ike(sa_a.spi_str, net.now)
    elif op == "move":
        net.a.move(sa_a.spi_str, Path(Endpoint(ALICE2, 4500), sa_a.path.remote), net.now)
    elif op == "addresses":
        net.b.set_local_addresses((sa_b.path.local.addr,), net.now)
    net.pump()
    out: list[bytes] = []
    for d in net.log:
        from_a = d.path.local.addr in net.addrs_a
        try:
            exchange, first, inner = inner_of(d.data, (sa_b if from_a else sa_a).cipher_in)
        except Exception:
            continue  # a successor SA's message, or a keepalive
        is_response = bool(d.data[19] & 0x20)
        if from_a and not is_response:
            kind = {ExchangeType.INFORMATIONAL: 0, ExchangeType.CREATE_CHILD_SA: 1}.get(
                ExchangeType(exchange), 2)
        elif not from_a and is_response:
            kind = 3 if exchange == ExchangeType.CREATE_CHILD_SA else 4
        elif not from_a:
            kind = 6 if exchange == ExchangeType.CREATE_CHILD_SA else 5
        else:
            continue
        out.append(bytes((kind, first)) + inner)
    return out


def seeds() -> list[bytes]:
    from .fuzz_sk import AUTH_REQUEST, IN_R

    out: list[bytes] = []
    for op in ("probe", "rekey_child", "rekey_child_b", "rekey_ike", "delete_child",
               "delete_ike", "move", "addresses"):
        out += _seeds_of(op)
    _, first, inner = inner_of(AUTH_REQUEST, IN_R)
    out.append(bytes((2, first)) + inner)  # charon's IKE_AUTH request, inner chain
    return out


if __name__ == "__main__":
    main("engine_sa", target, ALLOWED, seeds)
