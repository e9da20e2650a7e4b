"""The loop-lag sampler: its figures from fed samples, its window bound, its metric."""

from __future__ import annotations

from mobike_vici.daemon.loop_lag import LoopLag
from mobike_vici.daemon.metrics import status_metrics


def test_p99_and_max_over_the_window() -> None:
    lag = LoopLag(window=200)
    for i in range(200):
        lag.record(0.050 if i < 3 else 0.001)  # three stalls of 50 ms in 200 samples
    snap = lag.snapshot()
    assert snap["samples"] == 200
    assert snap["p99_ms"] == 50.0  # the 198th of 200 ranked is a stall
    assert snap["max_ms"] == 50.0


def test_window_is_bounded_but_the_worst_is_remembered() -> None:
    lag = LoopLag(window=10)
    lag.record(0.5)
    for _ in range(10):
        lag.record(0.002)
    snap = lag.snapshot()
    assert snap["samples"] == 10
    assert snap["max_ms"] == 2.0
    assert snap["max_ever_ms"] == 500.0


def test_empty_snapshot_has_no_figures() -> None:
    snap = LoopLag().snapshot()
    assert snap["samples"] == 0 and snap["p99_ms"] is None and snap["max_ms"] is None


def test_metric_from_the_status_answer() -> None:
    status = {"ok": True, "ike_sas": [], "loop_lag": {"p99_ms": 12.5}}
    fams = {f.name: f for f in status_metrics(status)}
    sample = fams["mobike_loop_lag_p99_seconds"].samples[0]
    assert abs(sample.value - 0.0125) < 1e-9
    assert "mobike_loop_lag_p99_seconds" not in {
        f.name for f in status_metrics({"ok": True, "ike_sas": []})}
