"""Secrets live no longer than their use; AUTH is compared in constant time; COOKIE inputs
are framed."""

from __future__ import annotations

import gc
import ipaddress
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mobike_vici.config.model import Config, ConnectionConfig
from mobike_vici.core.cookies import CookieJar
from mobike_vici.core.engine import Engine
from mobike_vici.core.events import IkeSaEstablished, IkeSaRekeyed
from mobike_vici.core.exchanges import create_child, ike_auth, ike_init
from mobike_vici.core.ike_sa import IkeSa
from mobike_vici.ikev2 import crypto
from mobike_vici.ikev2.crypto import IkeKeys

from .harness import Net, make_pair, of_type, rekey_ike, seeded

_DH_CLASSES = (crypto._ModpExchange, crypto._EcpExchange, crypto._X25519Exchange)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, Engine, Config, ConnectionConfig)


def _reachable(root: object) -> Iterator[object]:
    """Everything an IKE_SA keeps alive (the engine and the config aside)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if not isinstance(obj, _OPAQUE):
            stack.extend(gc.get_referents(obj))


def _record_keys(monkeypatch: pytest.MonkeyPatch) -> list[IkeKeys]:
    derived: list[IkeKeys] = []
    for module in (ike_init, create_child):
        original: Callable[..., IkeKeys] = module.derive_ike_keys

        def spy(*args: Any, _original: Callable[..., IkeKeys] = original,
                **kw: Any) -> IkeKeys:
            keys = _original(*args, **kw)
            derived.append(keys)
            return keys

        monkeypatch.setattr(module, "derive_ike_keys", spy)
    return derived


def _sas(net: Net) -> list[IkeSa]:
    return [*net.a._sas.values(), *net.b._sas.values()]


def _assert_no_auth_secrets(net: Net, derived: list[IkeKeys]) -> None:
    secrets = {k.sk_pi for k in derived} | {k.sk_pr for k in derived}
    assert secrets
    for sa in _sas(net):
        assert sa.sk_d  # still there: CHILD_SAs and rekeys need it
        for obj in _reachable(sa):
            assert not isinstance(obj, _DH_CLASSES), f"DH private value kept by {sa.spi_str}"
            assert not (isinstance(obj, bytes) and obj in secrets), (
                f"SK_pi/SK_pr kept by {sa.spi_str}")


def test_established_sas_drop_the_dh_private_value_and_sk_p(
        monkeypatch: pytest.MonkeyPatch) -> None:
    derived = _record_keys(monkeypatch)
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert len(of_type(net.events_a, IkeSaEstablished)) == 1
    assert len(of_type(net.events_b, IkeSaEstablished)) == 1
    assert len(derived) == 2  # one IKE_SA_INIT, seen from both ends
    _assert_no_auth_secrets(net, derived)

    # An IKE rekey derives new keys from the kept SK_d; the new SA keeps no SK_p either.
    rekey_ike(net.a, net.a.status()[0].ike_spi, net.now)
    net.pump()
    assert of_type(net.events_a, IkeSaRekeyed) and of_type(net.events_b, IkeSaRekeyed)
    assert len(derived) == 4
    _assert_no_auth_secrets(net, derived)
    # And the rekeyed SA still works: a CHILD_SA rekey over it succeeds.
    uid = net.a.status()[0].children[0].unique_id
    before = [c.spi_in for s in net.a.status() for c in s.children]
    net.a.rekey_child(uid, net.now)
    net.pump()
    after = [c.spi_in for s in net.a.status() for c in s.children]
    assert len(after) == 1 and after != before


def test_auth_payloads_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = ike_auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        if sys._getframe(1).f_globals["__name__"] == ike_auth.__name__:
            compared.append((a, b))  # not the ICV checks of the SK payloads
        return real(a, b)

    monkeypatch.setattr(ike_auth.hmac, "compare_digest", spy)
    net = make_pair()
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert of_type(net.events_a, IkeSaEstablished) and of_type(net.events_b, IkeSaEstablished)
    # The responder checked the initiator's AUTH and the initiator the responder's.
    assert len(compared) == 2
    assert all(a == b and len(a) == 32 for a, b in compared)
    assert compared[0][0] != compared[1][0]


V6 = ipaddress.IPv6Address("2001:db8::1:2:3:4")
SPI = bytes(range(8))


def test_cookie_inputs_are_length_framed() -> None:
    # Nonce1 || IPv4 == Nonce2 || IPv6 byte for byte: unframed, one cookie fits both.
    nonce2 = bytes(range(100, 120))
    nonce1 = nonce2 + V6.packed[:12]
    v4 = ipaddress.IPv4Address(V6.packed[12:])
    assert nonce1 + v4.packed == nonce2 + V6.packed
    jar = CookieJar(seeded(3), lifetime=60.0)
    cookie = jar.make(nonce1, v4, SPI, 0.0)
    assert len(cookie) == 34  # the size charon and we always sent
    assert jar.verify(cookie, nonce1, v4, SPI, 1.0)
    assert not jar.verify(cookie, nonce2, V6, SPI, 1.0)
    # Likewise between the nonce and the SPI.
    assert not jar.verify(jar.make(nonce2 + SPI[:4], V6, SPI[4:] * 2, 0.0),
                          nonce2, V6, SPI[:4] + SPI[4:] * 2, 1.0)


def test_cookie_still_round_trips_across_one_rotation() -> None:
    jar = CookieJar(seeded(4), lifetime=10.0)
    cookie = jar.make(b"n" * 32, V6, SPI, 0.0)
    assert jar.verify(cookie, b"n" * 32, V6, SPI, 15.0)  # previous secret
    assert not jar.verify(cookie, b"n" * 32, V6, SPI, 35.0)  # two rotations later
