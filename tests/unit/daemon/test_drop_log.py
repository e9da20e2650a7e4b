"""DropLog: one packet_dropped per reason per interval, with a count; bounded table."""

from __future__ import annotations

import pytest

from mobike_vici.daemon.drop_log import OTHER, DropLog


def test_first_drop_at_once_then_one_summary_per_interval() -> None:
    log = DropLog(interval=1.0)
    first = log.record("unknown SPI", {"remote": "a"}, 0.0)
    assert first == {"remote": "a", "reason": "unknown SPI", "count": 1, "interval": 0.0}
    lines = []
    t = 0.0
    for i in range(2999):  # 1000 a second for 3 s
        t = (i + 1) / 1000
        assert log.record("unknown SPI", {"remote": str(i)}, t) is None
        deadline = log.next_deadline()
        assert deadline is not None
        if t >= deadline:
            lines += log.flush(t)
    lines += log.flush(t + 1.0)
    assert [line["reason"] for line in lines] == ["unknown SPI"] * len(lines)
    assert 3 <= len(lines) <= 4
    assert sum(int(str(line["count"])) for line in lines) == 2999
    assert all(line["interval"] == 1.0 for line in lines)
    assert lines[0]["remote"] == "0"  # a sample: the first drop of the window
    assert log.total == 3000


def test_quiet_reason_starts_afresh() -> None:
    log = DropLog(interval=1.0)
    assert log.record("r", {}, 0.0) is not None
    assert log.flush(1.0) == []  # nothing more in the interval: nothing to say
    assert log.next_deadline() is None
    assert log.record("r", {}, 5.0) == {"reason": "r", "count": 1, "interval": 0.0}


def test_reasons_table_is_bounded() -> None:
    log = DropLog(interval=1.0, max_reasons=4)
    shown = [log.record(f"malformed header: {i}", {}, 0.0) for i in range(100)]
    # Four reasons of their own, then one shared line for the rest.
    assert [s["reason"] for s in shown if s is not None][-1] == OTHER
    assert len([s for s in shown if s is not None]) == 5
    lines = log.flush(1.0)
    assert [(line["reason"], line["count"]) for line in lines] == [(OTHER, 96 - 1)]


def test_bad_settings_rejected() -> None:
    with pytest.raises(ValueError):
        DropLog(interval=0)
