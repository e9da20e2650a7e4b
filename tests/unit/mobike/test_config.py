"""The mobike { } section into a typed MobikePolicy; errors located at FILE:LINE."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.mobike import (
    AnnounceMode,
    MobikePolicy,
    PreferRule,
    RoutabilityMode,
    from_section,
)
from mobike_vici.config.model import ConfigError
from mobike_vici.config.parser import parse_string

FULL = """\
mobike {
    probe_interval = 150ms
    probe_timeout = 0.25s
    probe_misses = 3
    standby_probe_interval = 5
    max_probes_in_flight = 2
    hold_down = 30s
    max_moves_per_minute = 4
    handover_timeout = 1m
    escalate_after = 30s
    return_routability = nat-only
    family = ipv6
    exclude = docker*, 172.16.0.0/12
    allowed_peer_prefixes = 192.0.2.0/24, 2001:db8::/32
    announce = 10.0.0.0/8
    prefer {
        wired {
            interface = eth*
            cost = 10
        }
        lte {
            interface = wwan*
            family = ipv4
            cost = 100
        }
        office {
            prefix = 10.1.0.0/16
            remote_prefix = 192.0.2.0/25
        }
    }
}
"""


def section(text: str, file: str = "m.conf") -> MobikePolicy:
    return from_section(parse_string(text, file).sections.get("mobike"))


def test_defaults_leave_a_dead_path_within_a_second() -> None:
    p = MobikePolicy()
    assert p.probe_interval * p.probe_misses + p.probe_timeout < 1.0
    assert section("mobike { }\n") == p
    assert from_section(None) == p
    assert p.return_routability == RoutabilityMode.ALWAYS
    assert p.announce == AnnounceMode.ALL
    assert p.escalate_after == 10.0  # a working IKE_SA is never reauthenticated before


def test_every_key_parsed() -> None:
    p = section(FULL)
    assert (p.probe_interval, p.probe_timeout, p.probe_misses) == (0.15, 0.25, 3)
    assert (p.standby_probe_interval, p.max_probes_in_flight, p.hold_down) == (5.0, 2, 30.0)
    assert (p.max_moves_per_minute, p.handover_timeout) == (4, 60.0)
    assert p.escalate_after == 30.0
    assert p.return_routability == RoutabilityMode.NAT_ONLY
    assert p.family == 6
    assert p.exclude_interfaces == ("docker*",)
    assert p.exclude_prefixes == (ipaddress.ip_network("172.16.0.0/12"),)
    assert len(p.allowed_peer_prefixes) == 2
    assert p.announce == AnnounceMode.PREFIXES
    assert p.announce_prefixes == (ipaddress.ip_network("10.0.0.0/8"),)
    assert p.prefer == (
        PreferRule("wired", interface="eth*", cost=10),
        PreferRule("lte", interface="wwan*", family=4, cost=100),
        PreferRule("office", prefix=ipaddress.ip_network("10.1.0.0/16"),
                   remote_prefix=ipaddress.ip_network("192.0.2.0/25")),
    )


def test_empty_value_restores_default() -> None:
    assert section("mobike {\n probe_interval =\n}\n").probe_interval == 0.2


@pytest.mark.parametrize(("body", "line", "words"), [
    ("probe_interval = fast", 3, "is not a time"),
    ("probe_interval = 0", 3, "out of range"),
    ("probe_misses = 0", 3, "out of range"),
    ("escalate_after = 0", 3, "escalate_after: '0' is out of range"),
    ("escalate_after = later", 3, "is not a time"),
    ("probe_misses = two", 3, "is not a number"),
    ("max_probes_in_flight = 1000", 3, "out of range"),
    ("return_routability = sometimes", 3, "always, nat-only or never"),
    ("family = ipx", 3, "ipv4, ipv6 or any"),
    ("exclude = eth0, 10.0.0.0/33 x", 3, "neither a prefix nor an interface glob"),
    ("allowed_peer_prefixes = 10.0.0.0/8, nonsense", 3, "is not a prefix"),
    ("announce = some", 3, "is not a prefix"),
    ("probe_intervall = 1s", 3, "unknown key"),
    ("prefer {\n  a {\n    cost = -1\n  }\n}", 5, "prefer.a.cost"),
    ("prefer {\n  a {\n    prefix = 10.0.0.0/99\n  }\n}", 5, "is not a prefix"),
    ("prefer {\n  a {\n    colour = red\n  }\n}", 5, "unknown key"),
])
def test_errors_name_file_and_line(body: str, line: int, words: str) -> None:
    text = f"# header\nmobike {{\n{body}\n}}\n"
    with pytest.raises(ConfigError) as info:
        section(text, "gw.conf")
    assert info.value.file == "gw.conf"
    assert info.value.line == line
    assert words in str(info.value)
    assert str(info.value).startswith(f"gw.conf:{line}: mobike: ")


def test_hold_down_may_be_zero() -> None:
    assert section("mobike {\n hold_down = 0\n}\n").hold_down == 0.0
