"""Candidate paths, per-path health transitions and TCP-style RTT smoothing."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.mobike.paths import (
    MAX_PROBE_TIMEOUT,
    LocalAddress,
    PathHealth,
    PathState,
    PathTable,
    RttEstimator,
)

from .sim import path

ip = ipaddress.ip_address


def test_rtt_follows_rfc6298() -> None:
    r = RttEstimator()
    r.sample(0.1)
    assert r.srtt == pytest.approx(0.1)
    assert r.rttvar == pytest.approx(0.05)
    r.sample(0.2)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)


def test_timeout_floor_stretch_and_cap() -> None:
    r = RttEstimator()
    assert r.timeout(0.3) == 0.3
    r.sample(0.02)
    assert r.timeout(0.3) == 0.3  # fast path: the configured timeout
    slow = RttEstimator()
    slow.sample(0.5)
    assert slow.timeout(0.3) == pytest.approx(0.5 + 4 * 0.25)
    awful = RttEstimator()
    awful.sample(10.0)
    assert awful.timeout(0.3) == MAX_PROBE_TIMEOUT


def test_health_transitions() -> None:
    h = PathHealth()
    assert h.success(0.01, 1.0) is True and h.state == PathState.UP
    assert h.success(0.01, 1.2) is False and h.healthy_since == 1.0
    assert h.miss(2) is False and h.healthy_since is None and h.state == PathState.UP
    assert h.miss(2) is True and h.state == PathState.DOWN and h.down_reason == "probe_timeout"
    assert h.miss(2) is False
    assert h.success(0.01, 3.0) is True and h.healthy_since == 3.0 and h.misses == 0
    assert h.fail("link_down") is True and h.fail("link_down") is False


def test_candidates_cross_product_same_family_minus_exclusions() -> None:
    policy = MobikePolicy(exclude_interfaces=("docker*",))
    t = PathTable(policy, 4500, 4500)
    t.set_local_addresses([
        LocalAddress(ip("10.1.0.2"), "eth0"),
        LocalAddress(ip("2001:db8:1::2"), "eth0"),
        LocalAddress(ip("172.17.0.1"), "docker0"),
    ])
    t.set_peer_addresses([ip("198.51.100.1"), ip("2001:db8:ff::1"), ip("192.0.2.1")],
                         ip("192.0.2.1"))
    assert t.candidates() == [
        path("10.1.0.2", "192.0.2.1"),
        path("10.1.0.2", "198.51.100.1"),
        path("2001:db8:1::2", "2001:db8:ff::1"),
    ]


def test_health_survives_rebuild_and_removal_is_reported() -> None:
    t = PathTable(MobikePolicy(), 500, 500)
    t.set_local_addresses([LocalAddress(ip("10.1.0.2"), "eth0")])
    t.set_peer_addresses([], ip("192.0.2.1"))
    k = (ip("10.1.0.2"), ip("192.0.2.1"))
    t.health(k).success(0.01, 1.0)
    assert t.add_local_address(LocalAddress(ip("10.2.0.2"), "wwan0")) == []
    assert t.health(k).state == PathState.UP
    assert t.remove_local_address(ip("10.1.0.2")) == [k]
    assert k not in t


def test_link_state_marks_paths_and_new_paths_inherit_it() -> None:
    t = PathTable(MobikePolicy(), 500, 500)
    t.set_local_addresses([LocalAddress(ip("10.1.0.2"), "eth0")])
    t.set_peer_addresses([], ip("192.0.2.1"))
    (k,) = t.set_link("eth0", up=False)
    assert not t.health(k).usable(0.0)
    t.set_peer_addresses([ip("192.0.2.7")], ip("192.0.2.1"))
    assert all(not t.health(x).usable(0.0) for x in t.candidate_keys())
    t.set_link("eth0", up=True)
    assert all(t.health(x).usable(0.0) for x in t.candidate_keys())
