"""The soak's pure helpers: the trend of samples and the routing diff."""

from __future__ import annotations

import pytest

from mobike_vici.lab.faults import slope_per_hour, snapshot_diff


def test_slope_of_a_steady_leak_in_units_per_hour() -> None:
    samples = [(t * 10.0, 1000.0 + t * 10.0) for t in range(30)]  # +1 per second
    slope = slope_per_hour(samples)
    assert slope == pytest.approx(3600.0)


def test_flat_and_noisy_samples_have_no_trend() -> None:
    samples = [(t * 10.0, 500.0 + (4 if t % 2 else -4)) for t in range(40)]
    slope = slope_per_hour(samples)
    assert slope is not None and abs(slope) < 50.0


def test_too_few_samples_give_no_slope() -> None:
    assert slope_per_hour([(0.0, 1.0), (10.0, 2.0)]) is None
    assert slope_per_hour([(5.0, 1.0)] * 4) is None


def test_snapshot_diff_names_what_was_left_and_what_went() -> None:
    before = {"rules-4": ["0: from all lookup local"], "links": ["lo", "m0"]}
    after = {"rules-4": ["0: from all lookup local", "4556: from all lookup 4556"],
             "links": ["lo"]}
    diff = snapshot_diff(before, after)
    assert diff == {"rules-4": {"added": ["4556: from all lookup 4556"], "removed": []},
                    "links": {"added": [], "removed": ["m0"]}}
    assert snapshot_diff(before, before) == {}
