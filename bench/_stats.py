"""Order statistics for the benchmarks' samples, with lost samples ranked last.

A lost sample (None: nothing came back within the cap) is worse than any number, so a
rank that lands on one reports "lost" rather than the best of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LOST = "lost"


def nearest_rank(count: int, q: float) -> int:
    """0-based index of the nearest-rank ``q`` quantile (0 < q <= 1) of ``count`` values."""
    if count < 1 or not 0.0 < q <= 1.0:
        raise ValueError(f"no {q} quantile of {count} values")
    return max(0, math.ceil(q * count) - 1)


def _ranked(samples: Sequence[float | None]) -> list[float | None]:
    got = sorted(s for s in samples if s is not None)
    return [*got, *([None] * (len(samples) - len(got)))]


def describe_ms(samples: Sequence[float | None]) -> dict[str, float | str]:
    """median_ms, p95_ms, max_ms of samples in seconds (None = lost), rounded to 0.1 ms.

    The median of an even count is the mean of the middle two (lost if either is)."""
    if not samples:
        return {"median_ms": LOST, "p95_ms": LOST, "max_ms": LOST}
    ranked = _ranked(samples)

    def ms(value: float | None) -> float | str:
        return LOST if value is None else round(value * 1000.0, 1)

    n = len(ranked)
    lo, hi = ranked[(n - 1) // 2], ranked[n // 2]
    median = None if lo is None or hi is None else (lo + hi) / 2.0
    return {"median_ms": ms(median), "p95_ms": ms(ranked[nearest_rank(n, 0.95)]),
            "max_ms": ms(ranked[-1])}
