"""A peer's load, read from its ``--metrics`` page (the Prometheus text format).

The load is the number of IKE_SAs the peer holds: the sum of its ``mobike_ike_sas``
gauge over connections and states. A page without that family (a daemon with no
status yet) is load 0; a page that does not parse is no answer at all.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

LOAD_FAMILY = "mobike_ike_sas"


class LoadUnreadable(ValueError):
    """The page is not the Prometheus text format."""


def ike_sa_load(page: str) -> int:
    """IKE_SAs the page reports; ``LoadUnreadable`` when it cannot be parsed."""
    total = 0.0
    try:
        for family in text_string_to_metric_families(page):
            if family.name != LOAD_FAMILY:
                continue
            total += sum(s.value for s in family.samples if s.name == LOAD_FAMILY)
    except (ValueError, TypeError, IndexError) as exc:
        raise LoadUnreadable(str(exc) or type(exc).__name__) from None
    if total != total or total < 0:  # NaN or negative: not a count
        raise LoadUnreadable(f"{LOAD_FAMILY} is {total}")
    return int(total)
