"""Random interleavings of rekeys and deletes on both ends: the two engines always agree."""

from __future__ import annotations

import random

import pytest

from mobike_vici.core.engine import Engine

from .harness import make_pair, rekey_ike


def _mirror(engine: Engine) -> dict[str, list[tuple[int, int]]]:
    return {s.ike_spi: sorted((c.spi_in, c.spi_out) for c in s.children)
            for s in engine.status() if s.state == "ESTABLISHED"}


def _op(rng: random.Random, engine: Engine, now: float, initiator: bool) -> None:
    sas = [s for s in engine.status() if s.state == "ESTABLISHED"]
    if not sas:
        return
    sa = rng.choice(sas)
    choice = rng.randrange(10)
    if choice < 4 and sa.children:
        engine.rekey_child(rng.choice(sa.children).unique_id, now)
    elif choice < 7:
        rekey_ike(engine, sa.ike_spi, now)
    elif choice < 8 and sa.children:
        engine.delete_child(rng.choice(sa.children).unique_id, now)
    elif choice < 9 and initiator:
        engine.initiate("home", None, now)
    # else: nothing this round


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100))
def test_random_concurrent_operations_keep_both_sides_in_sync(seed: int) -> None:
    rng = random.Random(seed)
    net = make_pair(seed=seed, esp=rng.choice(["aes128-sha256", "aes128-sha256-modp2048"]))
    net.a.initiate("home", None, 0.0)
    net.pump()
    for step in range(12):
        net.now = 1.0 + step
        # Both sides may act before either hears from the other: collisions.
        if rng.random() < 0.8:
            _op(rng, net.a, net.now, True)
        if rng.random() < 0.8:
            _op(rng, net.b, net.now, False)
        net.pump()
    net.advance_to(net.now + 100.0)
    a, b = _mirror(net.a), _mirror(net.b)
    assert a.keys() == b.keys()
    for spi, children in a.items():
        assert sorted((o, i) for i, o in children) == b[spi]
    # No request is left hanging once everything was delivered.
    assert all(s.state == "ESTABLISHED" for s in net.a.status() + net.b.status())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(400))
def test_random_operations_with_packet_loss_converge(seed: int) -> None:
    rng = random.Random(1000 + seed)
    loss = random.Random(seed)
    net = make_pair(seed=seed)
    net.a.initiate("home", None, 0.0)
    net.pump()
    net.drop = lambda d: loss.random() < 0.15
    for step in range(10):
        t = 1.0 + 3.0 * step
        net.advance_to(t)
        if rng.random() < 0.7:
            _op(rng, net.a, net.now, True)
        if rng.random() < 0.7:
            _op(rng, net.b, net.now, False)
        net.pump()
    net.drop = lambda d: False
    net.advance_to(net.now + 400.0)
    a, b = _mirror(net.a), _mirror(net.b)
    assert a.keys() == b.keys()
    for spi, children in a.items():
        assert sorted((o, i) for i, o in children) == b[spi]
