"""The anti-replay window on its own, against a reference model and RFC 4303 Appendix A."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.esp.replay import MAX_WINDOW, ReplayWindow


def accept(window: ReplayWindow, seq: int) -> bool:
    """check + update as decapsulate does with an authentic packet."""
    if not window.check(seq):
        return False
    window.update(seq)
    return True


def test_in_order_then_duplicate() -> None:
    window = ReplayWindow(32)
    assert [accept(window, s) for s in (1, 2, 3)] == [True, True, True]
    assert not accept(window, 2)
    assert not accept(window, 3)
    assert window.top == 3


def test_out_of_order_inside_window_is_accepted_once() -> None:
    window = ReplayWindow(32)
    order = [5, 3, 4, 1, 2]
    assert [accept(window, s) for s in order] == [True] * 5
    assert [window.check(s) for s in order] == [False] * 5


def test_window_edge() -> None:
    window = ReplayWindow(32)
    assert accept(window, 40)
    assert window.check(9)  # 40 - 31: the oldest slot still in the window
    assert not window.check(8)  # 40 - 32: just left of it
    assert accept(window, 9)
    assert not window.check(9)


def test_zero_is_never_valid() -> None:
    assert not ReplayWindow(32).check(0)
    assert not ReplayWindow(0).check(0)


def test_window_zero_disables_replay_protection() -> None:
    window = ReplayWindow(0)
    assert accept(window, 10)
    assert accept(window, 10)
    assert accept(window, 1)
    assert window.top == 10


def test_32_bit_sequence_numbers_end_without_esn() -> None:
    window = ReplayWindow(32)
    assert window.check(2**32 - 1)
    assert not window.check(2**32)


def test_huge_jump_is_cheap_and_clears_the_window() -> None:
    window = ReplayWindow(MAX_WINDOW, esn=True)
    assert accept(window, 1)
    assert accept(window, 2**60)
    assert not window.check(1)
    assert window.check(2**60 - 1)
    assert not window.check(2**60)


@pytest.mark.parametrize("size", [-1, MAX_WINDOW + 1])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)


class Model:
    """The RFC 4303 §3.4.3 rule spelled out with a set."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = 0
        self.seen: set[int] = set()

    def accept(self, seq: int) -> bool:
        if seq == 0:
            return False
        if self.size and seq <= self.top and (self.top - seq >= self.size or seq in self.seen):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


@pytest.mark.slow
@settings(max_examples=300)
@given(st.sampled_from([0, 1, 2, 32, 64, 100]),
       st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_matches_reference_model(size: int, seqs: list[int]) -> None:
    window, model = ReplayWindow(size), Model(size)
    for seq in seqs:
        assert accept(window, seq) == model.accept(seq), seq


def test_failed_integrity_leaves_window_unchanged() -> None:
    window = ReplayWindow(32)
    accept(window, 5)
    assert window.check(100)  # checked, then (in decapsulate) the ICV fails: no update
    assert window.top == 5
    assert window.check(4)


# ----------------------------------------------------------- ESN (Appendix A2.2)

HI = 1 << 32


def esn_window_at(top: int, size: int = 32) -> ReplayWindow:
    window = ReplayWindow(size, esn=True)
    window.update(top)
    return window


def test_esn_without_esn_is_identity() -> None:
    assert ReplayWindow(32).infer(0xFFFFFFF0) == 0xFFFFFFF0


@pytest.mark.parametrize(
    ("top", "seq_lo", "expected"),
    [
        # Case A: window within one subspace.
        (5 * HI + 1000, 1001, 5 * HI + 1001),  # ahead
        (5 * HI + 1000, 969, 5 * HI + 969),  # oldest slot in the window
        (5 * HI + 1000, 968, 6 * HI + 968),  # left of the window: read as wrapped ahead
        (5 * HI + 0xFFFFFFFE, 3, 6 * HI + 3),  # crossing into the next subspace
        # Case B: window spans the previous subspace.
        (6 * HI + 1, 0xFFFFFFFF, 5 * HI + 0xFFFFFFFF),  # late packet from before the wrap
        (6 * HI + 1, 2, 6 * HI + 2),
        (6 * HI + 1, 0xFFFFFF00, 6 * HI + 0xFFFFFF00),  # far ahead, same subspace
        # Case B at the very start: there is no previous subspace.
        (5, 0xFFFFFFFE, 0xFFFFFFFE),
    ],
)
def test_esn_inference(top: int, seq_lo: int, expected: int) -> None:
    assert esn_window_at(top).infer(seq_lo) == expected


def test_esn_inference_without_window_picks_nearest() -> None:
    window = esn_window_at(3 * HI + 10, size=0)
    assert window.infer(0xFFFFFFF0) == 2 * HI + 0xFFFFFFF0
    assert window.infer(5) == 3 * HI + 5
    window = esn_window_at(3 * HI + 0xFFFFFFF0, size=0)
    assert window.infer(5) == 4 * HI + 5


def test_esn_window_across_the_wrap() -> None:
    window = ReplayWindow(32, esn=True)
    for seq in (HI - 2, HI + 1):
        assert accept(window, window.infer(seq & 0xFFFFFFFF))
    assert window.top == HI + 1
    late = window.infer(0xFFFFFFFF)
    assert late == HI - 1
    assert accept(window, late)
    assert not window.check(window.infer(0xFFFFFFFE))  # HI - 2 again: replay
