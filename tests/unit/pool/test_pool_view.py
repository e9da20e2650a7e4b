"""The pool view on a fake clock: who is a target, and how a drain spreads."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.pool import PoolSettings, parse_gateway
from mobike_vici.pool.drain import Drain, DrainSa
from mobike_vici.pool.limit import over_limit
from mobike_vici.pool.load import LoadUnreadable, ike_sa_load
from mobike_vici.pool.view import FORGET, SETTLE_MARGIN, PoolView

A, B, C = (ipaddress.ip_address(f"192.0.2.{n}") for n in (11, 12, 13))
PAGE = """# HELP mobike_ike_sas IKE_SAs by connection and state.
# TYPE mobike_ike_sas gauge
mobike_ike_sas{conn="rw",state="ESTABLISHED"} %d.0
mobike_ike_sas{conn="rw",state="CONNECTING"} 0.0
# HELP mobike_path_up up
# TYPE mobike_path_up gauge
mobike_path_up{conn="rw",local="a",remote="b"} 1.0
"""


def _view(poll: float = 2.0) -> PoolView:
    gws = tuple(parse_gateway(str(a)) for a in (A, B, C))
    return PoolView(PoolSettings(gateways=gws, poll_interval=poll))


def _read(view: PoolView, now: float, loads: dict[object, int | None]) -> None:
    """One poll round through a fake fetch: None is a peer that does not answer."""
    for gw in view.due(now):
        load = loads.get(gw.address)
        if load is None:
            view.on_failure(gw.address, "timed out")
        else:
            view.on_answer(gw.address, ike_sa_load(PAGE % load), now)


def test_load_is_the_sum_of_the_ike_sa_gauge() -> None:
    assert ike_sa_load(PAGE % 7) == 7
    assert ike_sa_load((PAGE % 7).replace("} 0.0", "} 2.0")) == 9
    assert ike_sa_load("# TYPE mobike_ike_sas gauge\n") == 0
    with pytest.raises(LoadUnreadable):
        ike_sa_load("<html>502 Bad Gateway</html>")


def test_a_peer_never_read_or_not_answering_is_never_a_target() -> None:
    view = _view()
    assert view.choose() is None  # nobody read yet
    _read(view, 0.0, {A: 5, B: None, C: None})
    assert [view.choose(exclude=()).address] == [A]  # type: ignore[union-attr]
    assert view.choose(exclude=(A,)) is None


def test_a_peer_that_stops_answering_goes_down_and_back_up() -> None:
    view = _view(poll=1.0)
    _read(view, 0.0, {A: 1, B: 9, C: 9})
    _read(view, 1.0, {A: None, B: 9, C: 9})
    assert not view.is_up(A)
    assert view.choose().address == B  # type: ignore[union-attr]
    _read(view, 2.0, {A: 0, B: 9, C: 9})
    assert view.choose().address == A  # type: ignore[union-attr]


def test_a_load_that_is_not_refreshed_goes_stale() -> None:
    view = _view(poll=1.0)
    _read(view, 0.0, {A: 1, B: 1, C: 1})
    view.due(1.0)  # reads sent, never answered (a hung peer)
    changed = view.expire(10.0)
    assert {c.address for c in changed} == {A, B, C}
    assert view.choose() is None


def test_a_drain_spreads_evenly_between_reads() -> None:
    view = _view()
    _read(view, 0.0, {A: 0, B: 3, C: 0})
    sas = [DrainSa(i, "rw", f"{i:x}_1", A, ipaddress.ip_address(f"10.1.0.{i}"))
           for i in range(1, 12)]
    drain = Drain("d1", sas, rate=100.0, to=None, now=0.0)
    now = 0.0
    while (at := drain.next_at()) is not None:
        now = max(now, at)
        step = drain.take(view, now)
        assert step is not None and step.gateway.address != A  # never its own gateway
        drain.on_result(step, ok=True)
    # B started with 3: C takes 7, B 4, so both end at 7.
    assert drain.by_target == {str(C): 7, str(B): 4}
    assert drain.done and drain.redirected == 11


def test_a_drain_keeps_its_rate() -> None:
    view = _view()
    _read(view, 0.0, {A: 0, B: 0, C: 0})
    sas = [DrainSa(i, "rw", str(i), A, A) for i in range(5)]
    drain = Drain("d", sas, rate=2.0, to=None, now=10.0)
    assert drain.take(view, 10.0) is not None
    assert drain.take(view, 10.4) is None  # 0.5 s per redirect at 2/s
    assert drain.take(view, 10.5) is not None
    # Late by a second: still one at a time, no catch-up burst.
    assert drain.take(view, 11.6) is not None
    assert drain.take(view, 11.6) is None
    assert drain.next_at() == pytest.approx(12.1)


def test_a_drain_skips_a_dead_target_and_stops_when_none_is_left() -> None:
    view = _view(poll=1.0)
    _read(view, 0.0, {A: 0, B: 0, C: 0})
    sas = [DrainSa(i, "rw", str(i), A, A) for i in range(6)]
    drain = Drain("d", sas, rate=10.0, to=(B, C), now=0.0)
    first = drain.take(view, 0.0)
    assert first is not None and first.gateway.address == B
    _read(view, 1.0, {A: 0, B: 0, C: None})  # C dies mid-drain
    for t in (1.1, 1.3):
        step = drain.take(view, t)
        assert step is not None and step.gateway.address == B
    _read(view, 2.0, {A: 0, B: None, C: None})
    assert drain.take(view, 2.1) is None
    assert drain.stopped == "no_target" and drain.remaining == 3


def test_a_redirect_counts_once_on_its_target_until_a_settled_read() -> None:
    view = _view()
    _read(view, 0.0, {A: 0, B: 0, C: 0})
    view.assign(B, "spi1", 0.5)
    assert view.peers[B].effective_load == 1
    # Read while the client is half-way (counted there, still here): not twice.
    _read(view, 2.0, {A: 0, B: 1, C: 0})
    assert view.peers[B].effective_load == 1
    view.left("spi1", 2.5)
    # Sent just after it left: the target's page may lag and show 0; not trusted.
    _read(view, 2.5 + SETTLE_MARGIN / 2, {A: 0, B: 0, C: 0})
    assert view.peers[B].effective_load == 1
    _read(view, 4.0, {A: 0, B: 1, C: 0})
    assert view.peers[B].effective_load == 1
    assert view.pending() == [] and not view.assignments
    # A later settled read shows what happened there since (a client left B).
    view.assign(B, "spi2", 5.0)
    view.left("spi2", 5.2)
    _read(view, 6.0, {A: 0, B: 1, C: 0})
    assert view.peers[B].effective_load == 1 and not view.assignments


def test_a_read_not_settled_keeps_counting_ours_on_the_old_base() -> None:
    view = _view()
    _read(view, 0.0, {A: 0, B: 5, C: 0})
    view.assign(B, "spi1", 0.5)
    view.left("spi1", 1.9)
    _read(view, 2.0, {A: 0, B: 0, C: 0})  # only 0.1 s after it left: not settled
    assert view.peers[B].effective_load == 6
    _read(view, 4.0, {A: 0, B: 2, C: 0})
    assert view.peers[B].effective_load == 2


def test_a_redirect_that_never_leaves_is_forgotten() -> None:
    view = _view()
    _read(view, 0.0, {A: 0, B: 0, C: 0})
    view.assign(B, "spi1", 0.0)
    _read(view, FORGET + 2.0, {A: 0, B: 0, C: 0})
    assert view.peers[B].effective_load == 0


@pytest.mark.parametrize(("clients", "rate"), [(6, 4.0), (7, 4.0), (30, 4.0), (30, 30.0),
                                               (301, 4.0), (301, 100.0)])
def test_a_drain_ends_within_one_of_even_with_reads_and_arrivals_between(
        clients: int, rate: float) -> None:
    """Targets read every 0.5 s at staggered times; each client takes 0.1 to 1.4 s to
    reach its target (counted there from its IKE_SA_INIT, gone from us when it is up),
    and the target's page lags by up to 0.4 s."""
    view = _view(poll=0.5)
    step = 0.01
    delays = [0.1 + (i * 7 % 14) / 10 for i in range(clients)]
    arrive: dict[str, tuple[object, float, float]] = {}  # spi -> (target, counted, left)
    sas = [DrainSa(i, "rw", f"spi{i}", A, A) for i in range(clients)]
    drain = Drain("d", sas, rate=rate, to=None, now=0.0)
    now = 0.0
    view.peers[C].next_poll = 0.25  # C is read a quarter second after B
    while now < clients / rate + 5.0:
        for gw in view.due(now):
            load = sum(1 for t, counted, _ in arrive.values()
                       if t == gw.address and counted <= now)
            view.on_answer(gw.address, load, now)
        for spi, (_, _, left) in arrive.items():
            if left <= now:
                view.left(spi, now)
        redirect = drain.take(view, now)
        if redirect is not None:
            d = delays[len(arrive)]
            lag = (len(arrive) * 3 % 5) / 10
            arrive[redirect.sa.ike_spi] = (redirect.gateway.address, now + d / 2 + lag,
                                           now + d)
            drain.on_result(redirect, ok=True)
        now = round(now + step, 6)
    counts = [drain.by_target.get(str(x), 0) for x in (B, C)]
    assert sum(counts) == clients and max(counts) - min(counts) <= 1, counts


def test_over_limit_picks_the_newest_and_counts_those_in_flight() -> None:
    sas = [DrainSa(i, "rw", str(i), A, A) for i in range(1, 8)]
    assert [sa.ike_id for sa in over_limit(sas, 4)] == [7, 6, 5]
    assert [sa.ike_id for sa in over_limit(sas, 4, busy={7})] == [6, 5]
    assert over_limit(sas, 0) == [] and over_limit(sas, 7) == []


def test_no_address_this_gateway_is_reached_at_is_a_target() -> None:
    # Clients reach this gateway at A and at C (two addresses of one host).
    view = _view()
    _read(view, 0.0, {A: 0, B: 9, C: 0})
    sas = [DrainSa(1, "rw", "1", A, A), DrainSa(2, "rw", "2", C, A)]
    drain = Drain("d", sas, rate=100.0, to=None, now=0.0)
    first = drain.take(view, 0.0)
    second = drain.take(view, 1.0)
    assert first is not None and second is not None
    assert {first.gateway.address, second.gateway.address} == {B}


def test_the_limit_sends_only_to_a_peer_with_room_and_stops_on_a_full_pool() -> None:
    view = _view()
    _read(view, 0.0, {A: 5, B: 3, C: 4})
    sas = [DrainSa(i, "rw", str(i), A, A) for i in range(3)]
    drain = Drain("limit", sas, rate=100.0, to=None, now=0.0, room=4)
    first = drain.take(view, 0.0)
    assert first is not None and first.gateway.address == B  # 3 < 4
    assert drain.take(view, 1.0) is None  # B is at 4 now, C too: nobody has room
    assert drain.stopped == "pool_full" and drain.remaining == 2
