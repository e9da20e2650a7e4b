"""The controller's table of probe ids awaiting a reply stays small over a long run."""

from __future__ import annotations

import ipaddress

from mobike_vici.backends.vici.mobility import MAX_WIRE_IDS, WIRE_ID_TTL, ViciMobility
from mobike_vici.mobike.paths import MAX_PROBE_TIMEOUT
from mobike_vici.types import Endpoint, Path

PATH = Path(Endpoint(ipaddress.ip_address("10.1.0.2"), 4500),
            Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))


def _table(sent: list[float]) -> ViciMobility:
    # Only the id table is exercised: no charon, no netlink.
    table = ViciMobility.__new__(ViciMobility)
    table._wire_ids = {n: ("spi", n, PATH, at) for n, at in enumerate(sent)}
    return table


def test_probes_unanswered_for_longer_than_the_ttl_are_forgotten() -> None:
    table = _table([0.0, 10.0, 35.0])
    table.forget_old_wire_ids(10.0 + WIRE_ID_TTL)
    assert list(table._wire_ids) == [2]
    table.forget_old_wire_ids(35.0 + WIRE_ID_TTL - 1)
    assert list(table._wire_ids) == [2]  # still within its time


def test_the_count_bound_still_holds_for_fresh_probes() -> None:
    table = _table([5.0] * MAX_WIRE_IDS)
    table.forget_old_wire_ids(6.0)
    assert len(table._wire_ids) == MAX_WIRE_IDS - 1 and 0 not in table._wire_ids
    assert WIRE_ID_TTL > MAX_PROBE_TIMEOUT  # a late reply within any probe's time counts
