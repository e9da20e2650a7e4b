"""The gateway's return-routability verdicts beside charon, on a fake clock (RFC 4555 §5.2)."""

from __future__ import annotations

import ipaddress

import pytest

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


def checks(mode: RoutabilityMode = RoutabilityMode.ALWAYS) -> GatewayRoutability:
    rr = GatewayRoutability(mode, TIMEOUT)
    rr.seen(SPI, HOME)
    return rr


def test_a_move_asks_charon_for_a_rekey_and_its_answer_verifies() -> None:
    rr = checks()
    assert rr.moved(SPI, AWAY, nat=False, now=100.0) == [Rekey(ike_spi=SPI)]
    assert rr.get_timer() == 100.0 + TIMEOUT
    rr.armed(SPI, stale=0)
    out = rr.rekeyed(SPI, SPI2, by_charon=True, now=100.25)
    assert out == [Verified(ike_spi=SPI2, remote=AWAY, duration=pytest.approx(0.25))]
    assert rr.get_timer() is None and rr.pending(SPI2) is None
    # The address is known now: going back and forth asks nothing.
    assert rr.moved(SPI2, HOME, nat=False, now=200.0) == []
    assert rr.moved(SPI2, AWAY, nat=False, now=201.0) == []


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
    assert [type(a) for a in out] == [Verified] and out[0].ike_spi == SPI3


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
    out = rr.rekeyed(SPI2, SPI3, by_charon=True, now=1.3)
    assert out == [Verified(ike_spi=SPI3, remote=HOME, duration=pytest.approx(1.3))]


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
    for i, addr in enumerate(addrs):
        assert rr.moved(spi, addr, nat=False, now=now) == [Rekey(ike_spi=spi)]
        rr.armed(spi, stale=0)
        new = f"{i:02x}_ff"
        assert [type(a) for a in rr.rekeyed(spi, new, by_charon=True, now=now)] == [Verified]
        spi, now = new, now + 1.0
    # HOME was the oldest of MAX_VERIFIED + 1: forgotten, so checked again.
    assert rr.moved(spi, HOME, nat=False, now=now) == [Rekey(ike_spi=spi)]
    rr.armed(spi, stale=0)
    rr.rekeyed(spi, "zz_00", by_charon=True, now=now)
    assert rr.moved("zz_00", addrs[-1], nat=False, now=now) == []


def test_two_sas_have_their_own_checks_and_one_timer() -> None:
    rr = checks()
    rr.seen(SPI2, HOME)
    rr.moved(SPI, VICTIM, nat=False, now=0.0)
    rr.moved(SPI2, AWAY, nat=False, now=1.0)
    rr.armed(SPI2, stale=0)
    assert [type(a) for a in rr.rekeyed(SPI2, SPI3, by_charon=True, now=1.1)] == [Verified]
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
