"""Whether a peer's new address must answer a return routability check before the
IPsec SAs move there (RFC 4555 §3.5, §5.2): one rule for every place that decides it,
the native responder (``core/exchanges/mobike.py``) and the checks beside charon
(``mobike/gateway_rr.py``)."""

from __future__ import annotations

from .config.mobike import RoutabilityMode


def check_needed(mode: RoutabilityMode, *, nat: bool, verified: bool) -> bool:
    """``mode`` is the ``return_routability`` policy, ``nat`` whether a NAT was detected
    on the IKE_SA, ``verified`` whether that address already answered a check (or set
    the IKE_SA up)."""
    if mode == RoutabilityMode.NEVER or verified:
        return False
    return mode == RoutabilityMode.ALWAYS or nat
