"""The controller's decision whether the peer lost charon's IKE_SA (pure, fake clock)."""

from __future__ import annotations

from mobike_vici.core.state_check import LOST_FLOOR, LOST_RTTS
from mobike_vici.mobike.lost_state import (
    CHECK_AFTER,
    MIN_INTERVAL,
    PROBE_WAIT,
    LostStateCheck,
    Step,
)

SPI = "0011223344556677_8899aabbccddeeff"


def _probed(check: LostStateCheck, mid: int = 2, start: float = 0.0) -> float:
    """charon's request ``mid`` unanswered since ``start`` until the probe goes out."""
    assert check.observe(SPI, mid, start) is None
    assert check.observe(SPI, mid, start + CHECK_AFTER / 2) is None
    now = start + CHECK_AFTER
    assert check.observe(SPI, mid, now) is Step.PROBE
    return now


def test_no_probe_while_charon_has_nothing_unanswered() -> None:
    check = LostStateCheck()
    for t in range(30):
        assert check.observe(SPI, None, float(t)) is None


def test_a_request_unanswered_for_check_after_sends_one_probe() -> None:
    check = LostStateCheck()
    now = _probed(check)
    assert check.observe(SPI, 2, now + 0.1) is None  # one at a time


def test_an_answered_probe_and_a_silent_resend_is_a_lost_ike_sa() -> None:
    check = LostStateCheck()
    sent = _probed(check)
    rtt = 0.125  # exact in binary: the bound is compared to the tick
    assert check.answered(SPI, sent + rtt) is Step.RESEND
    verdict_at = sent + rtt + max(LOST_FLOOR, LOST_RTTS * rtt)
    assert check.observe(SPI, 2, verdict_at - 0.01) is None
    assert check.observe(SPI, 2, verdict_at) is Step.LOST


def test_a_resend_the_peer_answers_keeps_the_ike_sa() -> None:
    check = LostStateCheck()
    sent = _probed(check)
    assert check.answered(SPI, sent + 0.05) is Step.RESEND
    assert check.observe(SPI, None, sent + 0.1) is None  # the ledger saw the response
    for t in (1.0, 2.0, 5.0):
        assert check.observe(SPI, None, sent + t) is None


def test_a_new_request_starts_a_new_silence() -> None:
    check = LostStateCheck()
    sent = _probed(check)
    assert check.answered(SPI, sent + 0.05) is Step.RESEND
    # charon's DPD answered, then its next request: no verdict from the old one
    assert check.observe(SPI, 3, sent + 0.1) is None
    assert check.observe(SPI, 3, sent + 1.0) is None


def test_an_unanswered_probe_is_followed_by_another_after_probe_wait() -> None:
    check = LostStateCheck()
    sent = _probed(check)
    assert check.observe(SPI, 2, sent + PROBE_WAIT - 0.01) is None
    assert check.observe(SPI, 2, sent + PROBE_WAIT) is Step.PROBE


def test_answered_probes_are_rate_limited_per_ike_sa() -> None:
    check = LostStateCheck()
    sent = _probed(check)
    assert check.answered(SPI, sent + 0.05) is Step.RESEND
    # the resend was answered: the same peer loses a request again at once
    assert check.observe(SPI, None, sent + 0.1) is None
    assert check.observe(SPI, 3, sent + 0.2) is None
    assert check.observe(SPI, 3, sent + 0.2 + CHECK_AFTER) is None
    assert check.observe(SPI, 3, sent + MIN_INTERVAL - 0.01) is None
    assert check.observe(SPI, 3, sent + MIN_INTERVAL) is Step.PROBE


def test_an_answer_without_a_probe_out_does_nothing() -> None:
    check = LostStateCheck()
    assert check.answered(SPI, 1.0) is None
    sent = _probed(check)
    assert check.answered(SPI, sent + 0.1) is Step.RESEND
    assert check.answered(SPI, sent + 0.2) is None  # a second answer to the same probe


def test_forgotten_and_unlisted_ike_sas_start_over() -> None:
    check = LostStateCheck()
    _probed(check)
    check.retain(set())
    assert check.answered(SPI, CHECK_AFTER + 0.1) is None
    _probed(check, start=5.0)
    check.forget(SPI)
    assert check.answered(SPI, 6.1) is None
