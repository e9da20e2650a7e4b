"""The gateway's return-routability verdicts beside charon, on a fake clock (RFC 4555 §5.2)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.config.mobike import RoutabilityMode
from mobike_vici.mobike.gateway_rr import (
    MAX_ATTEMPTS,
    MAX_VERIFIED,
    Failed,
    GatewayRoutability,
    Rekey,
    Verified,
)
from mobike_vici.types import Endpoint

SPI, SPI2, SPI3 = "aa_01", "bb_02", "cc_03"
HOME = Endpoint(ipaddress.ip_address("10.1.0.2"), 4500)
AWAY = Endpoint(ipaddress.ip_address("10.2.0.2"), 4500)
VICTIM = Endpoint(ipaddress.ip_address("198.51.100.7"), 4500)
TIMEOUT = 5.0


def verify(rr: GatewayRoutability, spi: str, now: float) -> str:
    """Both steps answered; the IKE_SA's SPIs after them."""
    rr.armed(spi, stale=0)
    first, second = spi + "1", spi + "2"
    assert rr.rekeyed(spi, first, by_charon=True, now=now) == [Rekey(ike_spi=first)]
    rr.armed(first, stale=0)
    assert [type(a) for a in rr.rekeyed(first, second, by_charon=True, now=now)] == [Verified]
    return second


def checks(mode: RoutabilityMode = RoutabilityMode.ALWAYS) -> GatewayRoutability:
    rr = GatewayRoutability(mode, TIMEOUT)
    rr.seen(SPI, HOME)
    return rr


def test_a_move_asks_charon_for_two_rekeys_and_their_answers_verify() -> None:
    rr = checks()
    assert rr.moved(SPI, AWAY, nat=False, now=100.0) == [Rekey(ike_spi=SPI)]
    assert rr.get_timer() == 100.0 + TIMEOUT
    rr.armed(SPI, stale=0)
    # Step 1 answered (maybe blind): step 2 on the IKE_SA it made.
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=100.25) == [Rekey(ike_spi=SPI2)]
    assert rr.pending(SPI2) == AWAY
    rr.armed(SPI2, stale=0)
    out = rr.rekeyed(SPI2, SPI3, by_charon=True, now=100.5)
    assert out == [Verified(ike_spi=SPI3, remote=AWAY, duration=pytest.approx(0.5))]
    assert rr.get_timer() is None and rr.pending(SPI3) is None
    # The address is known now: going back and forth asks nothing.
    assert rr.moved(SPI3, HOME, nat=False, now=200.0) == []
    assert rr.moved(SPI3, AWAY, nat=False, now=201.0) == []


def test_a_blind_answer_to_the_first_rekey_is_not_enough() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.armed(SPI, stale=0)
    # The peer forged the response to charon's first rekey without seeing it ...
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=0.1) == [Rekey(ike_spi=SPI2)]
    rr.armed(SPI2, stale=0)
    # ... but cannot speak on the IKE_SA that rekey made: the check fails.
    assert rr.handle_timer(TIMEOUT) == [Failed(ike_spi=SPI2, remote=VICTIM, reason="timeout",
                                              duration=pytest.approx(TIMEOUT))]


def test_in_step_two_a_rekey_by_the_peer_proves_it_holds_the_keys() -> None:
    rr = checks()
    rr.moved(SPI, AWAY, nat=False, now=0.0)
    rr.armed(SPI, stale=0)
    rr.rekeyed(SPI, SPI2, by_charon=True, now=0.1)
    out = rr.rekeyed(SPI2, SPI3, by_charon=False, now=0.2)
    assert [type(a) for a in out] == [Verified] and out[0].ike_spi == SPI3


def test_no_answer_within_the_bound_fails_the_check_once() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=10.0)
    rr.armed(SPI, stale=0)
    assert rr.handle_timer(10.0 + TIMEOUT - 0.001) == []
    out = rr.handle_timer(10.0 + TIMEOUT)
    assert out == [Failed(ike_spi=SPI, remote=VICTIM, reason="timeout",
                          duration=pytest.approx(TIMEOUT))]
    assert rr.handle_timer(100.0) == [] and rr.get_timer() is None


def test_the_peers_own_rekey_proves_nothing_and_charons_is_asked_again() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.armed(SPI, stale=0)
    # The peer rekeyed from the victim's address: charon answered it there, blind.
    assert rr.rekeyed(SPI, SPI2, by_charon=False, now=0.1) == [Rekey(ike_spi=SPI2)]
    assert rr.pending(SPI2) == VICTIM
    rr.armed(SPI2, stale=0)
    assert [type(a) for a in rr.handle_timer(TIMEOUT)] == [Failed]


def test_a_rekey_charon_had_in_flight_before_the_move_is_skipped() -> None:
    rr = checks()
    rr.moved(SPI, AWAY, nat=False, now=0.0)
    rr.armed(SPI, stale=1)  # sent to HOME first, retransmitted to AWAY: ambiguous
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=1.0) == []
    assert rr.pending(SPI2) == AWAY
    out = rr.rekeyed(SPI2, SPI3, by_charon=True, now=1.5)  # ours
    assert out == [Rekey(ike_spi=SPI3)]
    out = rr.rekeyed(SPI3, "dd_04", by_charon=True, now=1.6)
    assert [type(a) for a in out] == [Verified] and out[0].ike_spi == "dd_04"


def test_a_rekey_that_completes_before_ours_was_asked_for_counts_for_nothing() -> None:
    rr = checks()
    rr.moved(SPI, AWAY, nat=False, now=0.0)
    # Not armed yet (the adapter still reads list-sas): the request named the old SPIs.
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=0.01) == [Rekey(ike_spi=SPI2)]
    assert rr.pending(SPI2) == AWAY


def test_moving_on_during_a_check_asks_again_but_keeps_the_first_deadline() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.armed(SPI, stale=0)
    # Moving again voids what is in flight (it went to VICTIM too) ...
    assert rr.moved(SPI, AWAY, nat=False, now=4.0) == [Rekey(ike_spi=SPI)]
    assert rr.pending(SPI) == AWAY
    # ... a completion before our new request is queued does not count ...
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=4.1) == [Rekey(ike_spi=SPI2)]
    # ... and the flood stays bounded by the first move's deadline.
    assert rr.get_timer() == TIMEOUT
    out = rr.handle_timer(TIMEOUT)
    assert out == [Failed(ike_spi=SPI2, remote=AWAY, reason="timeout",
                          duration=pytest.approx(TIMEOUT))]


def test_moving_back_home_during_a_check_still_needs_an_answer() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    assert rr.moved(SPI, HOME, nat=False, now=1.0) == [Rekey(ike_spi=SPI)]
    rr.armed(SPI, stale=1)
    assert rr.rekeyed(SPI, SPI2, by_charon=True, now=1.2) == []
    assert rr.rekeyed(SPI2, SPI3, by_charon=True, now=1.3) == [Rekey(ike_spi=SPI3)]
    out = rr.rekeyed(SPI3, "dd_04", by_charon=True, now=1.4)
    assert out == [Verified(ike_spi="dd_04", remote=HOME, duration=pytest.approx(1.4))]


def test_requests_per_check_are_bounded_and_refusals_end_it() -> None:
    rr = checks()
    actions = rr.moved(SPI, VICTIM, nat=False, now=0.0)
    spi = SPI
    for step in range(1, MAX_ATTEMPTS + 1):
        assert actions == [Rekey(ike_spi=spi)]
        actions = rr.rekey_failed(spi, now=step * 0.1)
    # Charon refused every request: no point waiting for the deadline.
    assert actions == [Failed(ike_spi=spi, remote=VICTIM, reason="rekey_refused",
                              duration=pytest.approx(MAX_ATTEMPTS * 0.1))]
    assert rr.get_timer() is None


def test_moves_beyond_the_request_bound_ask_nothing_and_the_deadline_decides() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    for i in range(MAX_ATTEMPTS - 1):
        assert rr.moved(SPI, AWAY if i % 2 else VICTIM, nat=False, now=0.1 * i) != []
    assert rr.moved(SPI, VICTIM, nat=False, now=1.0) == []
    assert [type(a) for a in rr.handle_timer(TIMEOUT)] == [Failed]


@pytest.mark.parametrize(("mode", "nat", "checked"), [
    (RoutabilityMode.ALWAYS, False, True),
    (RoutabilityMode.NAT_ONLY, False, False),
    (RoutabilityMode.NAT_ONLY, True, True),
    (RoutabilityMode.NEVER, True, False),
])
def test_the_mode_decides_which_moves_are_checked(mode: RoutabilityMode, nat: bool,
                                                  checked: bool) -> None:
    rr = checks(mode)
    out = rr.moved(SPI, AWAY, nat=nat, now=0.0)
    assert (out == [Rekey(ike_spi=SPI)]) is checked
    assert (rr.get_timer() is not None) is checked


def test_a_removed_sa_leaves_nothing_behind() -> None:
    rr = checks()
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.removed(SPI)
    assert rr.get_timer() is None and rr.handle_timer(100.0) == []
    assert rr.pending(SPI) is None


def test_verified_addresses_are_bounded_oldest_first() -> None:
    rr = checks()
    spi, now = SPI, 0.0
    addrs = [Endpoint(ipaddress.ip_address(f"10.3.0.{i}"), 4500)
             for i in range(1, MAX_VERIFIED + 1)]
    for addr in addrs:
        assert rr.moved(spi, addr, nat=False, now=now) == [Rekey(ike_spi=spi)]
        spi = verify(rr, spi, now)
        now += 1.0
    # HOME was the oldest of MAX_VERIFIED + 1: forgotten, so checked again.
    assert rr.moved(spi, HOME, nat=False, now=now) == [Rekey(ike_spi=spi)]
    spi = verify(rr, spi, now)
    assert rr.moved(spi, addrs[-1], nat=False, now=now) == []


def test_two_sas_have_their_own_checks_and_one_timer() -> None:
    rr = checks()
    rr.seen(SPI2, HOME)
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.moved(SPI2, AWAY, nat=False, now=1.0)
    verify(rr, SPI2, 1.1)
    assert rr.get_timer() == TIMEOUT
    out = rr.handle_timer(TIMEOUT)
    assert [(type(a), a.ike_spi) for a in out] == [(Failed, SPI)]


def test_charons_ike_rekeys_in_flight_are_read_from_list_sas() -> None:
    from mobike_vici.daemon.gateway_rr import _active_ike_rekeys

    entry = {"dp": {"uniqueid": "3", "tasks-active": ["IKE_REKEY"],
                    "tasks-queued": ["IKE_REKEY", "CHILD_REKEY"]}}
    assert _active_ike_rekeys(entry) == 1  # queued ones go out after the move: they count
    assert _active_ike_rekeys({"dp": {"tasks-active": ["CHILD_REKEY"]}}) == 0
    assert _active_ike_rekeys({"dp": {"uniqueid": "3"}}) == 0


_OPS = st.lists(st.tuples(
    st.sampled_from(["move", "armed", "rekey_charon", "rekey_peer", "refused", "timer",
                     "removed"]),
    st.integers(0, 2),  # which SA
    st.integers(0, 2),  # which address / stale count
    st.floats(0.0, 2.0),  # time that passes first
), max_size=60)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_no_sequence_stretches_a_check_beyond_its_first_deadline(ops: list[tuple[
        str, int, int, float]]) -> None:
    """Whatever the peer and charon do, a check ends (verified or failed) by the deadline
    of the move that started it, and the one timer always names the earliest deadline."""
    rr = GatewayRoutability(RoutabilityMode.ALWAYS, TIMEOUT)
    addrs = (HOME, AWAY, VICTIM)
    spis = [f"{i}" for i in range(3)]
    started: dict[str, float] = {}  # the model: current SPI -> when its check began
    for spi in spis:
        rr.seen(spi, HOME)
    now = 0.0
    for op, which, arg, dt in ops:
        now += dt
        spi = spis[which]
        out: list[object] = []
        if op == "move":
            out = list(rr.moved(spi, addrs[arg], nat=False, now=now))
            if rr.pending(spi) is not None:
                started.setdefault(spi, now)
        elif op == "armed":
            rr.armed(spi, stale=arg)
        elif op in ("rekey_charon", "rekey_peer"):
            new = spi + "'"
            out = list(rr.rekeyed(spi, new, by_charon=op == "rekey_charon", now=now))
            spis[which] = new
            if spi in started:
                started[new] = started.pop(spi)
        elif op == "refused":
            out = list(rr.rekey_failed(spi, now))
        elif op == "removed":
            rr.removed(spi)
            started.pop(spi, None)
        else:
            when = rr.get_timer()
            if when is not None and when <= now:
                out = list(rr.handle_timer(now))
        for action in out:
            if isinstance(action, (Verified, Failed)):
                begun = started.pop(action.ike_spi)
                assert action.duration == pytest.approx(now - begun)
                if isinstance(action, Failed) and action.reason == "timeout":
                    assert now >= begun + TIMEOUT
        for cur in started:
            assert rr.pending(cur) is not None
        deadlines = [begun + TIMEOUT for begun in started.values()]
        assert rr.get_timer() == (min(deadlines) if deadlines else None)
