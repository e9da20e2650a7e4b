"""``pool { max_ike_sas }`` on a charon gateway: which established IKE_SAs go elsewhere.

charon admits every client (no VICI hook decides at IKE_SA_INIT), so the limit acts
after the fact: the newest established IKE_SAs beyond it are redirected, the ones
that arrived last and have the least to lose. Pure; the daemon paces them as a drain.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from .drain import DrainSa


def over_limit(sas: Iterable[DrainSa], limit: int, busy: Collection[int] = ()
               ) -> list[DrainSa]:
    """The IKE_SAs beyond ``limit``, newest (highest unique id) first; those in ``busy``
    (a redirect already sent) count toward the load but are not chosen again. 0: none."""
    if limit <= 0:
        return []
    ordered = sorted(sas, key=lambda sa: sa.ike_id, reverse=True)
    excess = len(ordered) - limit
    if excess <= 0:
        return []
    pending = sum(1 for sa in ordered if sa.ike_id in busy)
    fresh = [sa for sa in ordered if sa.ike_id not in busy]
    return fresh[:max(0, excess - pending)]
