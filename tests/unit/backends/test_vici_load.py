"""load-conn / load-shared / load-pool messages as swanctl builds them, and load/reload order."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.backends.vici.errors import CommandFailed, LoadError
from mobike_vici.backends.vici.load import (
    conn_message,
    format_spec,
    initiate_start,
    load,
    pool_message,
    proposal_list,
    reload,
    shared_message,
    start_children,
)
from mobike_vici.config import load_config, load_string
from mobike_vici.config.model import PoolConfig
from mobike_vici.ikev2.constants import ProtocolId
from mobike_vici.ikev2.proposals import parse_proposal, parse_proposals

EXAMPLES = Path(__file__).resolve().parents[3] / "swanctl"


# What swanctl --load-all sends for the examples (load_conns.c: lists for the list
# keys, strings otherwise, sections as written), minus the keys that restate
# swanctl's default (local_addrs = %any, mobike = yes, rekey_time = 4h / 1h).
CLIENT_HOME = {
    "home": {
        "version": "2",
        "remote_addrs": ["192.0.2.2"],
        "proposals": ["aes128gcm16-prfsha256-x25519", "default"],
        "vips": ["0.0.0.0"],
        "dpd_delay": "10s",
        "keyingtries": "0",
        "local": {"auth": "psk", "id": "client@example.org"},
        "remote": {"auth": "psk", "id": "gw.example.org"},
        "children": {
            "home-net": {
                "remote_ts": ["10.10.0.0/16", "192.0.2.2/32[icmp]"],
                "esp_proposals": ["aes128gcm16", "default"],
                "start_action": "start",
                "dpd_action": "restart",
                "close_action": "start",
            },
        },
    },
}
GATEWAY_RW = {
    "rw-psk": {
        "version": "2",
        "local_addrs": ["192.0.2.2"],
        "proposals": ["aes128gcm16-prfsha256-x25519", "default"],
        "pools": ["rw-v4"],
        "dpd_delay": "30s",
        "unique": "replace",
        "local": {"auth": "psk", "id": "gw.example.org"},
        "remote": {"auth": "psk"},
        "children": {
            "rw-net": {
                "local_ts": ["10.10.0.0/16", "192.0.2.2/32[icmp]"],
                "esp_proposals": ["aes128gcm16", "default"],
            },
        },
    },
}


def test_client_example_conn_message() -> None:
    config = load_config(str(EXAMPLES / "client.conf"))
    assert [conn_message(c) for c in config.connections] == [CLIENT_HOME]


def test_gateway_example_messages() -> None:
    config = load_config(str(EXAMPLES / "gateway.conf"))
    assert [conn_message(c) for c in config.connections] == [GATEWAY_RW]
    assert [pool_message(p) for p in config.pools] == [
        {"rw-v4": {"addrs": "10.10.8.0/24", "dns": ["10.10.0.53"]}}]
    (secret,) = config.secrets
    assert shared_message(secret) == {
        "id": "ike-rw", "type": "IKE", "data": b"correct horse battery staple",
        "owners": ["gw.example.org", "client@example.org"],
    }


def test_non_default_values_and_passthrough_keys_are_sent() -> None:
    config = load_string("""
connections { c {
    local_port = 4500
    remote_addrs = 198.51.100.1, peer.example
    rekey_time = 1h
    over_time = 5m
    reauth_time = 2h
    mobike = no
    encap = yes
    fragmentation = yes
    if_id_in = 42
    local-1 { auth = psk
        id = me }
    remote-1 { auth = psk
        round = 1
        groups = a, b }
    children { x {
        local_ts = 10.0.0.0/8[tcp/80-90], dynamic[udp/53]
        mode = transport
        start_action = trap
        life_time = 2h
        rekey_bytes = 1000
        updown = /bin/true
    } }
} }
secrets { ike-1 { secret = 0x0102 } }
""")
    (conn,) = config.connections
    body = conn_message(conn)["c"]
    assert body["local_port"] == "4500"
    assert body["remote_addrs"] == ["198.51.100.1", "peer.example"]
    assert (body["rekey_time"], body["reauth_time"], body["over_time"]) == ("3600s", "7200s",
                                                                          "300s")
    assert "rand_time" not in body  # its default follows over_time, as in charon
    spread = load_string("connections { c { over_time = 5m\n rand_time = 1m } }")
    assert conn_message(spread.connections[0])["c"]["rand_time"] == "60s"
    assert (body["mobike"], body["encap"]) == ("no", "yes")
    assert (body["fragmentation"], body["if_id_in"]) == ("yes", "42")
    assert body["local-1"] == {"auth": "psk", "id": "me"}
    assert body["remote-1"] == {"auth": "psk", "round": "1", "groups": ["a", "b"]}
    child = body["children"]["x"]
    assert child["local_ts"] == ["10.0.0.0/8[tcp/80-90]", "dynamic[udp/53]"]
    assert "remote_ts" not in child and "esp_proposals" not in child
    assert (child["mode"], child["start_action"]) == ("transport", "trap")
    assert "rekey_time" not in child  # 1h is the default
    assert child["life_time"] == "7200s"
    assert "rand_time" not in child  # its default, life_time - rekey_time, follows
    assert child["rekey_bytes"] == "1000" and "life_bytes" not in child
    assert child["updown"] == "/bin/true"
    assert shared_message(config.secrets[0])["data"] == b"\x01\x02"


PROPOSALS_IKE = ["aes128-sha256-x25519", "aes256gcm16-prfsha384-ecp384",
                 "aes128-aes256-sha1-sha256-modp2048-ecp256", "aes192-sha512-prfsha256-modp3072"]
PROPOSALS_ESP = ["aes128gcm16", "aes128-sha256", "aes256-sha384-modp4096-esn",
                 "aes128-sha1-esn-noesn"]


@pytest.mark.parametrize("text", PROPOSALS_IKE)
def test_ike_proposal_strings_round_trip(text: str) -> None:
    spec = parse_proposal(text, ProtocolId.IKE)
    assert format_spec(spec) == text
    assert parse_proposal(format_spec(spec), ProtocolId.IKE) == spec


@pytest.mark.parametrize("text", PROPOSALS_ESP)
def test_esp_proposal_strings_round_trip(text: str) -> None:
    spec = parse_proposal(text, ProtocolId.ESP)
    assert parse_proposal(format_spec(spec), ProtocolId.ESP) == spec


_ENCR = st.sampled_from(["aes128", "aes192", "aes256"])
_INTEG = st.sampled_from(["sha1", "sha256", "sha384", "sha512"])
_PRF = st.sampled_from(["prfsha1", "prfsha256", "prfsha384", "prfsha512"])
_DH = st.sampled_from(["modp2048", "ecp256", "ecp384", "x25519", "modp4096"])


@pytest.mark.slow
@given(st.lists(_ENCR, min_size=1, max_size=3), st.lists(_INTEG, min_size=1, max_size=3),
       st.lists(_PRF, max_size=2), st.lists(_DH, min_size=1, max_size=3))
def test_any_classic_ike_proposal_round_trips(encr: list[str], integ: list[str],
                                              prf: list[str], dh: list[str]) -> None:
    spec = parse_proposal("-".join(encr + integ + prf + dh), ProtocolId.IKE)
    assert parse_proposal(format_spec(spec), ProtocolId.IKE) == spec


def test_default_set_is_folded_back_into_the_keyword() -> None:
    specs = parse_proposals("aes128-sha256-x25519, default, aes256gcm16-prfsha256-ecp256",
                            ProtocolId.IKE)
    assert proposal_list(specs, ProtocolId.IKE) == [
        "aes128-sha256-x25519", "default", "aes256gcm16-prfsha256-ecp256"]
    esp = parse_proposals("default", ProtocolId.ESP)
    assert proposal_list(esp, ProtocolId.ESP) == ["default"]


@pytest.mark.parametrize(("line", "sent"), [("", None), ("esp_proposals = default", ["default"])])
def test_esp_default_reaches_charon_in_the_order_the_config_gives(line: str,
                                                                  sent: list[str] | None) -> None:
    # Absent, charon itself puts the AEAD proposal first; the keyword puts it second.
    config = load_string(f"connections {{ c {{ children {{ x {{ {line} }} }} }} }}")
    child = conn_message(config.connection("c"))["c"]["children"]["x"]
    assert child.get("esp_proposals") == sent


@pytest.mark.parametrize(("addrs", "expected"), [
    ("10.10.8.0/24", "10.10.8.0/24"),
    ("10.3.0.10-10.3.0.20", "10.3.0.10-10.3.0.20"),
    ("10.4.0.7", "10.4.0.7"),
    ("2001:db8::/112", "2001:db8::/112"),
])
def test_pool_addresses(addrs: str, expected: str) -> None:
    (pool,) = load_string(f"pools {{ p {{ addrs = {addrs}\n dns = 10.0.0.1, 10.0.0.2 }} }}").pools
    assert pool_message(pool) == {"p": {"addrs": expected, "dns": ["10.0.0.1", "10.0.0.2"]}}


def test_pool_odd_range_is_sent_as_a_range() -> None:
    pool = PoolConfig("p", ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.5"))
    assert pool_message(pool) == {"p": {"addrs": "10.0.0.1-10.0.0.5"}}


# ------------------------------------------------------------------------ against a fake charon


class FakeCharon:
    """Records commands; answers get-* from its state; refuses what ``refuse`` names."""

    def __init__(self, conns: list[str] = [], shared: list[str] = [],  # noqa: B006
                 pools: list[str] = [], refuse: str = "") -> None:  # noqa: B006
        self.calls: list[tuple[str, Any]] = []
        self.conns, self.shared, self.pools = list(conns), list(shared), list(pools)
        self.refuse = refuse
        self.initiated: list[tuple[str, str | None, int]] = []

    async def call(self, command: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((command, message))
        if self.refuse and self.refuse in repr(message):
            raise CommandFailed(f"{command} failed: refused")
        if command == "get-conns":
            return {"conns": self.conns}
        if command == "get-shared":
            return {"keys": self.shared}
        if command == "get-pools":
            return {p: {} for p in self.pools}
        return {"success": "yes"}

    async def initiate(self, child: str, ike: str | None = None, *,
                       timeout_ms: int = 10000, init_limits: bool = True) -> list[str]:
        self.initiated.append((child, ike, timeout_ms))
        if child == self.refuse:
            raise CommandFailed("establishing CHILD_SA failed")
        return []


def test_load_sends_pools_secrets_conns_and_prunes_the_rest() -> None:
    config = load_config(str(EXAMPLES / "gateway.conf"))
    charon = FakeCharon(conns=["rw-psk", "old-conn"], shared=["ike-rw", "ike-old"],
                        pools=["old-pool"])
    result = asyncio.run(load(charon, config))
    commands = [c for c, _ in charon.calls]
    assert commands[:3] == ["load-pool", "load-shared", "load-conn"]
    assert ("unload-conn", {"name": "old-conn"}) in charon.calls
    assert ("unload-shared", {"id": "ike-old"}) in charon.calls
    assert ("unload-pool", {"name": "old-pool"}) in charon.calls
    assert ("unload-conn", {"name": "rw-psk"}) not in charon.calls
    assert result.unloaded_conns == ("old-conn",) and result.conns == ("rw-psk",)


def test_load_without_prune_touches_nothing_else() -> None:
    charon = FakeCharon(conns=["other"])
    asyncio.run(load(charon, load_config(str(EXAMPLES / "client.conf")), prune=False))
    assert [c for c, _ in charon.calls] == ["load-shared", "load-conn"]


def test_reload_unloads_what_disappeared() -> None:
    old = load_string("""
connections { a { remote_addrs = 1.2.3.4 }
              b { remote_addrs = 1.2.3.5 } }
pools { p1 { addrs = 10.0.0.0/24 } }
secrets { ike-x { secret = abc } }
""")
    new = load_string("connections { a { remote_addrs = 1.2.3.9 } }")
    charon = FakeCharon()
    result = asyncio.run(reload(charon, old, new))
    assert charon.calls == [
        ("load-conn", {"a": {"remote_addrs": ["1.2.3.9"]}}),
        ("unload-conn", {"name": "b"}),
        ("unload-shared", {"id": "ike-x"}),
        ("unload-pool", {"name": "p1"}),
    ]
    assert result.unloaded_conns == ("b",)


def test_a_refusal_becomes_a_load_error_naming_it() -> None:
    charon = FakeCharon(refuse="home-net")
    with pytest.raises(LoadError, match="load-conn failed"):
        asyncio.run(load(charon, load_config(str(EXAMPLES / "client.conf"))))


def test_start_children_are_initiated_unless_skipped() -> None:
    config = load_string("""
connections {
  a { remote_addrs = 1.2.3.4
      children { x { start_action = start }
                 y { start_action = trap }
                 z { start_action = trap|start } } }
  b { remote_addrs = 1.2.3.5
      children { w { start_action = start } } } }
""")
    assert start_children(config) == [("a", "x"), ("a", "z"), ("b", "w")]
    charon = FakeCharon(refuse="z")
    outcome = asyncio.run(initiate_start(charon, config, skip={"b"}, timeout_ms=500))
    assert [(c, i) for c, i, _ in charon.initiated] == [("x", "a"), ("z", "a")]
    assert outcome["x"] is None and "failed" in str(outcome["z"])
