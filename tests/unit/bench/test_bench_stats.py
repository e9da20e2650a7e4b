"""The handover benches' pure helpers: order statistics with lost runs, the nftables
counters' script and arithmetic."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from .test_bench_logic import load


@pytest.fixture(scope="module")
def stats() -> ModuleType:
    return load("_stats")


@pytest.fixture(scope="module")
def overhead() -> ModuleType:
    return load("_overhead")


def test_nearest_rank_p95_of_ten_is_the_max_and_of_forty_the_38th(stats: ModuleType) -> None:
    assert stats.nearest_rank(10, 0.95) == 9
    assert stats.nearest_rank(40, 0.95) == 37
    assert stats.nearest_rank(1, 0.5) == 0
    with pytest.raises(ValueError):
        stats.nearest_rank(0, 0.95)


def test_describe_gives_median_p95_max_in_ms(stats: ModuleType) -> None:
    samples = [0.010, 0.030, 0.020, 0.040]
    assert stats.describe_ms(samples) == {"median_ms": 25.0, "p95_ms": 40.0, "max_ms": 40.0}


def test_a_lost_run_ranks_last_not_dropped(stats: ModuleType) -> None:
    got = stats.describe_ms([0.1] * 9 + [None])
    assert got["median_ms"] == 100.0
    assert got["p95_ms"] == "lost" and got["max_ms"] == "lost"
    # Most runs lost: the median is lost too, not the best of the survivors.
    assert stats.describe_ms([0.1, None, None])["median_ms"] == "lost"


def test_handover_cell_reports_median_p95_max_with_lost_runs_as_the_cap() -> None:
    handover = load("handover")
    out = handover.cell_stats([0.005, 0.9, 0.02], 3.0)
    assert (out["n"], out["median"], out["p95"], out["max"], out["lost"]) == (
        3, 0.02, 0.9, 0.9, 0)
    lost = handover.cell_stats([0.5, None, 0.1, 0.2], 3.0)
    assert (lost["median"], lost["max"], lost["lost"]) == (0.35, 3.0, 1)
    assert lost["samples"] == [0.5, "lost", 0.1, 0.2]


def test_counter_rules_classify_each_address_and_direction(overhead: ModuleType) -> None:
    script = overhead.ruleset(["10.1.0.2", "2001:db8:1::2"])
    assert "priority -10" in script
    assert 'ip saddr 10.1.0.2 udp dport 4500 @th,64,32 0 counter accept comment ' \
           '"out|10.1.0.2|ike"' in script
    assert 'ip6 daddr 2001:db8:1::2 icmpv6 type { echo-request, echo-reply } counter ' \
           'accept comment "in|2001:db8:1::2|icmp_echo"' in script
    # Every rule accepts: a packet is counted once, in the first class it fits.
    rules = [line for line in script.splitlines() if "counter" in line]
    assert len(rules) == 2 * 2 * 8 and all("counter accept" in r for r in rules)


def _nft(rules: list[tuple[str, int]]) -> str:
    items: list[dict[str, object]] = [{"metainfo": {"version": "1.0.6"}}]
    items += [{"rule": {"family": "inet", "table": "mvbench", "chain": "forward",
                        "comment": comment,
                        "expr": [{"match": {}}, {"counter": {"packets": n, "bytes": 0}},
                                 {"accept": None}]}} for comment, n in rules]
    items.append({"rule": {"table": "other", "comment": "out|10.1.0.2|ike",
                           "expr": [{"counter": {"packets": 99, "bytes": 0}}]}})
    return json.dumps({"nftables": items})


def test_counters_are_summed_per_class_and_other_tables_ignored(overhead: ModuleType) -> None:
    got = overhead.parse_counters(_nft([("out|10.1.0.2|ike", 3), ("out|10.1.0.2|ike", 4),
                                        ("in|10.1.0.2|esp", 7), ("no comment", 1)]))
    assert got == {("out", "10.1.0.2", "ike"): 7, ("in", "10.1.0.2", "esp"): 7}


def test_rates_split_probes_from_esp(overhead: ModuleType) -> None:
    before = {("out", "a", "ike"): 10, ("out", "a", "esp"): 0, ("in", "a", "ike"): 10}
    after = {("out", "a", "ike"): 20, ("out", "a", "esp"): 1000, ("in", "a", "ike"): 20,
             ("out", "a", "keepalive"): 2, ("out", "b", "other"): 5}
    per = overhead.rates(before, after, 10.0)
    assert per["a"]["probe_pps_out"] == 1.2  # ike 1.0 + keepalive 0.2, not the ESP
    assert per["a"]["probe_pps_in"] == 1.0
    assert per["a"]["out"] == {"ike": 1.0, "keepalive": 0.2, "esp": 100.0}
    assert per["b"] == {"probe_pps_out": 0.0, "out": {"other": 0.5},
                        "probe_pps_in": 0.0, "in": {}}
    with pytest.raises(ValueError):
        overhead.rates(before, after, 0.0)
