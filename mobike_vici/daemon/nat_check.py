"""A NAT that rebinds under charon: our ESP goes out, the peer's stops coming back, and
the path itself still answers.

charon (5.9.8) with MOBIKE makes no implicit address update, and RFC 4555 (3.8) leaves
noticing a NAT's new mapping to the initiator: charon notices only by the NAT detection
its MOBIKE DPD carries, once ``dpd_delay`` passed without inbound traffic. Until then
the peer sends its ESP to the public port the NAT no longer maps.

The data-plane watch (``esp_watch``) tells this apart from a dead path and from a quiet
peer: inbound ESP stopped while ours flows (a stall), the path's burst of probes was
answered (the path works), and the peer had been sending until the stall (not a
download that ended: then nothing of ours flows either). When charon then says its
IKE_SA is behind a NAT on our side, the controller starts charon's path check by a
route event (``ViciMobility.prearm_roam``); with ``charon.check_current_path = yes`` (the
shipped strongswan.d snippet) charon checks the unchanged path with a DPD that carries
NAT detection, and a changed mapping makes it send UPDATE_SA_ADDRESSES. A mapping that
did not change costs one empty INFORMATIONAL exchange, at most once per answered burst
(bursts are at most one per ``health.REARM_GAP``).

charon compares the DPD's NAT detection with what the last INFORMATIONAL exchange of the
IKE_SA brought back and keeps none from IKE_SA_INIT: the first check of an IKE_SA set up
(or rekeyed) behind a NAT only records the mapping, a rebind's new one included, and
sends no update. So a new IKE_SA behind a NAT is checked once as soon as it is tracked
(``EspWatch.track``): one more empty INFORMATIONAL exchange per such IKE_SA. A rebind
just before charon's IKE rekey is past that: the baseline takes the new mapping while the
peer keeps the old one, and charon sends no UPDATE_SA_ADDRESSES on an unchanged path. The
watch then leaves the path (``EspWatch._stale_since_rekey``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..backends.vici import ViciError


class _Lister(Protocol):
    async def stream(self, command: str, event: str,
                     message: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


def nat_here(entries: list[dict[str, Any]], ike_spi: str) -> bool:
    """Whether ``list-sas`` entries show the IKE_SA ``ike_spi`` behind a NAT on our side."""
    for entry in entries:
        for sa in entry.values():
            if isinstance(sa, Mapping) and \
                    f"{sa.get('initiator-spi')}_{sa.get('responder-spi')}" == ike_spi:
                return sa.get("nat-local") == "yes"
    return False


async def behind_nat(client: _Lister, ike_spi: str, unique_id: int) -> bool:
    """charon's own word now: the SA table's copy of the NAT flags dates from the last
    SA event, and charon learns of a NAT on a new path only after its update exchange."""
    try:
        entries = await client.stream("list-sas", "list-sa",
                                      {"ike-id": str(unique_id), "noblock": "yes"})
    except (ViciError, OSError):
        return False
    return nat_here(entries, ike_spi)
