"""Userspace ESP against charon (kernel-libipsec), both roles: ping, 20 MB TCP byte for byte."""

from __future__ import annotations

import pytest

from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.tunnel import INNER_ADDR, MB20, build, native_children, native_totals, transfer

pytestmark = [pytest.mark.netns, pytest.mark.charon]


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes128-sha256"])
@pytest.mark.parametrize("native_initiates", [True, False], ids=["native-init", "charon-init"])
def test_transfer_native_charon(lab: Lab, native_initiates: bool, esp: str) -> None:
    tunnel = build(lab, a_native=native_initiates, b_native=not native_initiates, esp=esp)
    topo = tunnel.topo
    # Toward the responder, and back toward the initiator's virtual IP.
    sent, received = transfer(topo.host_a, topo.host_b, INNER_ADDR, MB20, seed=5)
    assert received["bytes"] == sent["bytes"] == MB20
    assert received["sha256"] == sent["sha256"]

    native = tunnel.a if native_initiates else tunnel.b
    assert isinstance(native, NativeDaemon)
    (child,) = native_children(native)
    counters = child["counters"]
    moved = counters["bytes_out"] if native_initiates else counters["bytes_in"]
    assert moved >= MB20
    assert counters["integrity_failures"] == counters["replay_failures"] == 0


@pytest.mark.parametrize("native_initiates", [True, False], ids=["native-init", "charon-init"])
def test_rekey_on_bytes_during_transfer_with_charon(lab: Lab, native_initiates: bool) -> None:
    # Both ends count bytes; whichever reaches rekey_bytes first rekeys (or both: a collision).
    limits = "rekey_bytes = 5000000\n        life_bytes = 50000000"
    tunnel = build(lab, a_native=native_initiates, b_native=not native_initiates,
                   child_extra=limits)
    topo = tunnel.topo
    sent, received = transfer(topo.host_a, topo.host_b, INNER_ADDR, MB20, seed=8)
    assert received["sha256"] == sent["sha256"] and received["bytes"] == MB20

    native = tunnel.a if native_initiates else tunnel.b
    assert isinstance(native, NativeDaemon)
    native.events.poll()
    rekeyed = [ev for ev in native.events.events
               if ev["event"] == "child_sa_installed" and ev.get("rekey_of") is not None]
    assert len(rekeyed) >= 3
    deleted = [ev for ev in native.events.events if ev["event"] == "child_sa_deleted"]
    assert deleted and all("bytes_in" in ev and "integrity_failures" in ev for ev in deleted)
    assert native_totals(native)["unknown_spi"] == 0
