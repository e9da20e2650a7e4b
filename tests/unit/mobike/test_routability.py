"""COOKIE2 bookkeeping and the return-routability check (RFC 4555 §3.5, §3.7)."""

from __future__ import annotations

import itertools

import pytest

from mobike_vici.config.mobike import RoutabilityMode
from mobike_vici.mobike.routability import (
    COOKIE2_LEN,
    MAX_OUTSTANDING,
    MAX_VERIFIED,
    CheckState,
    Cookie2Book,
    ReturnRoutability,
    Verdict,
)

from .sim import ip, path

A = path("10.1.0.2", "192.0.2.1")
B = path("10.2.0.2", "192.0.2.1")
C = path("10.2.0.2", "198.51.100.1")


def counter_random() -> tuple[list[int], object]:
    calls: list[int] = []
    seq = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        calls.append(n)
        return next(seq).to_bytes(n, "big")

    return calls, random_bytes


def test_issue_uses_injected_randomness_and_matches_once() -> None:
    calls, rnd = counter_random()
    book = Cookie2Book(rnd)  # type: ignore[arg-type]
    c1 = book.issue(7, A, 0.0)
    c2 = book.issue(8, B, 0.0)
    assert calls == [COOKIE2_LEN, COOKIE2_LEN] and c1 != c2
    r = book.check(7, c1, 1.0)
    assert r.verdict == Verdict.MATCHED and r.path == A
    assert book.check(7, c1, 1.0).verdict == Verdict.UNKNOWN  # consumed


def test_wrong_or_missing_echo_is_a_mismatch() -> None:
    _, rnd = counter_random()
    book = Cookie2Book(rnd)  # type: ignore[arg-type]
    c = book.issue(1, A, 0.0)
    assert book.check(1, bytes(len(c)), 0.5).verdict == Verdict.MISMATCH
    book.issue(2, A, 0.0)
    assert book.check(2, None, 0.5).verdict == Verdict.MISMATCH


def test_request_sent_to_several_addresses_proves_nothing() -> None:
    _, rnd = counter_random()
    book = Cookie2Book(rnd)  # type: ignore[arg-type]
    c = book.issue(3, A, 0.0)
    book.resent(3, A)
    book.resent(3, C)
    assert book.check(3, c, 1.0).verdict == Verdict.AMBIGUOUS


def test_bounded_and_expiring() -> None:
    _, rnd = counter_random()
    book = Cookie2Book(rnd, lifetime=10.0)  # type: ignore[arg-type]
    cookies = {mid: book.issue(mid, A, float(mid)) for mid in range(MAX_OUTSTANDING + 2)}
    assert len(book) == MAX_OUTSTANDING
    assert book.check(0, cookies[0], 9.0).verdict == Verdict.UNKNOWN  # evicted, oldest first
    assert book.check(5, cookies[5], 9.0).verdict == Verdict.MATCHED
    assert book.next_expiry() == 2.0 + 10.0
    assert book.check(2, cookies[2], 12.0).verdict == Verdict.UNKNOWN  # expired


def test_cookie_length_is_checked() -> None:
    with pytest.raises(ValueError):
        Cookie2Book(lambda n: bytes(n), length=4)
    book = Cookie2Book(lambda n: b"short")
    with pytest.raises(ValueError):
        book.issue(1, A, 0.0)


@pytest.mark.parametrize(("mode", "nat", "needed"), [
    (RoutabilityMode.ALWAYS, False, True),
    (RoutabilityMode.ALWAYS, True, True),
    (RoutabilityMode.NAT_ONLY, False, False),
    (RoutabilityMode.NAT_ONLY, True, True),
    (RoutabilityMode.NEVER, True, False),
])
def test_needed_by_mode(mode: RoutabilityMode, nat: bool, needed: bool) -> None:
    rr = ReturnRoutability(lambda n: bytes(n), mode)
    assert rr.needed(B, nat_detected=nat) is needed


def test_check_verifies_and_remembers_address() -> None:
    _, rnd = counter_random()
    rr = ReturnRoutability(rnd, RoutabilityMode.ALWAYS)  # type: ignore[arg-type]
    cookie, superseded = rr.start(10, C, 1.0)
    assert superseded is None and rr.pending_path == C
    assert rr.state == CheckState.PENDING
    assert rr.on_response(11, cookie, 1.1) is None  # another exchange's response
    result = rr.on_response(10, cookie, 1.2)
    assert result is not None and result.ok and result.path == C
    assert rr.state.value == "ok" and rr.verified(C.remote.addr)
    assert not rr.needed(C, nat_detected=False)


def test_mismatch_closes_sa_and_timeout_fails() -> None:
    _, rnd = counter_random()
    rr = ReturnRoutability(rnd, RoutabilityMode.ALWAYS, timeout=2.0)  # type: ignore[arg-type]
    rr.start(1, C, 0.0)
    bad = rr.on_response(1, b"\x00" * COOKIE2_LEN, 0.5)
    assert bad is not None and not bad.ok and bad.close_sa and bad.reason == "cookie_mismatch"
    rr.start(2, C, 1.0)
    assert rr.get_timer() == 3.0
    assert rr.handle_timer(2.9) is None
    late = rr.handle_timer(3.0)
    assert late is not None and late.reason == "timeout" and not late.close_sa
    assert rr.state == CheckState.FAILED and rr.get_timer() is None
    assert not rr.verified(C.remote.addr)


def test_new_check_supersedes_and_old_cookie_no_longer_counts() -> None:
    _, rnd = counter_random()
    rr = ReturnRoutability(rnd, RoutabilityMode.ALWAYS)  # type: ignore[arg-type]
    old_cookie, _ = rr.start(1, B, 0.0)
    new_cookie, superseded = rr.start(2, C, 0.1)
    assert superseded is not None and superseded.path == B and superseded.reason == "superseded"
    assert rr.on_response(1, old_cookie, 0.2) is None
    result = rr.on_response(2, new_cookie, 0.2)
    assert result is not None and result.ok and result.path == C


def test_verified_addresses_bounded() -> None:
    rr = ReturnRoutability(lambda n: bytes(n), RoutabilityMode.ALWAYS)
    for i in range(MAX_VERIFIED + 1):
        rr.mark_verified(ip(f"192.0.2.{i + 1}"))
    assert not rr.verified(ip("192.0.2.1"))
    assert rr.verified(ip(f"192.0.2.{MAX_VERIFIED + 1}"))
