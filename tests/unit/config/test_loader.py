"""The typed model: swanctl's defaults, value forms, and errors located at FILE:LINE."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.config import load_config, load_string
from mobike_vici.config.model import (
    AuthClass,
    CloseAction,
    ConfigError,
    DpdAction,
    Fragmentation,
    StartAction,
    TrafficSelectorSpec,
    Unique,
)
from mobike_vici.ikev2.constants import EncrId, ProtocolId
from mobike_vici.ikev2.proposals import parse_proposals

MINIMAL = """
connections {
   c {
      remote_addrs = 192.0.2.1
      children {
         net { }
      }
   }
}
"""


def one_error(text: str, file: str = "t.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_string(text, file)
    return info.value


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle`` (keeps tests honest on edits)."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_connection_and_child_defaults_are_swanctls() -> None:
    conn = load_string(MINIMAL).connection("c")
    assert conn.version == 0
    assert conn.local_addrs == ("%any",)
    assert conn.remote_addrs == ("192.0.2.1",)
    assert (conn.local_port, conn.remote_port) == (500, 500)
    assert conn.proposals == parse_proposals("default", ProtocolId.IKE)
    assert conn.proposals  # the default set is filled in, not left empty
    assert (conn.dpd_delay, conn.dpd_timeout) == (0.0, 0.0)
    assert conn.rekey_time == 4 * 3600
    assert conn.reauth_time == 0
    assert conn.over_time == pytest.approx(0.1 * 4 * 3600)
    assert conn.rand_time == conn.over_time
    assert conn.keyingtries == 1
    assert conn.unique is Unique.NO
    assert conn.mobike is True
    assert conn.encap is False
    assert conn.vips == () and conn.pools == ()
    assert [a.auth for a in conn.local] == [AuthClass.PUBKEY]
    assert conn.local[0].id is None and conn.remote[0].id is None
    (child,) = conn.children
    assert child.local_ts == child.remote_ts == (TrafficSelectorSpec(None),)
    classic, aead = parse_proposals("default", ProtocolId.ESP)
    assert child.esp_proposals == (aead, classic)  # charon's order without the key, below
    assert child.mode == "tunnel"
    assert child.start_action is StartAction.NONE
    assert child.dpd_action is DpdAction.CLEAR
    assert child.close_action is CloseAction.NONE
    assert child.rekey_time == 3600
    assert child.life_time == pytest.approx(3960)
    assert child.rand_time == pytest.approx(360)
    assert (child.rekey_bytes, child.life_bytes, child.rekey_packets, child.life_packets) == (
        0, 0, 0, 0)
    assert child.replay_window == 32
    assert (child.file, child.line) == ("<string>", line_of(MINIMAL, "net { }"))


def test_derived_times_follow_the_keys_they_derive_from() -> None:
    text = """
connections {
   c {
      rekey_time = 10m
      reauth_time = 2h
      children {
         net {
            rekey_time = 20m
            rekey_bytes = 1m
            rekey_packets = 1000
         }
      }
   }
}
"""
    conn = load_string(text).connection("c")
    assert (conn.rekey_time, conn.reauth_time) == (600, 7200)
    assert conn.over_time == 720  # 10% of the larger one
    assert conn.rand_time == 720
    child = conn.children[0]
    assert child.rekey_time == 1200
    assert child.life_time == pytest.approx(1320)
    assert child.rand_time == pytest.approx(120)
    assert child.rekey_bytes == 1 << 20
    assert child.life_bytes == (1 << 20) * 11 // 10
    assert (child.rekey_packets, child.life_packets) == (1000, 1100)


def test_explicit_values_and_forms() -> None:
    text = """
connections {
   c {
      version = 2
      local_addrs = 10.1.0.2, 10.2.0.2
      remote_addrs = gw.example.org, 192.0.2.0/24, 198.51.100.1-198.51.100.9
      local_port = 4500
      remote_port = 4500
      vips = 0.0.0.0, ::
      pools = p4
      dpd_delay = 1m
      dpd_timeout = 1d
      over_time = 30s
      rand_time = 0
      keyingtries = 0
      unique = replace
      mobike = no
      encap = true
      fragmentation = yes
      local-1 {
         auth = psk
         id = me@example.org
         round = 1
      }
      local-0 {
         auth = pubkey
         certs = me.pem
         round = 0
      }
      remote {
         auth = eap-mschapv2
         id = %any
      }
      children {
         net {
            local_ts = dynamic, 10.0.0.0/24[tcp/80], 10.0.0.1[udp], ::/0[icmp]
            remote_ts = 10.9.0.0/16[%any/1000-2000], 10.8.0.0/16[6/https], 1.2.3.4/8
            mode = transport
            start_action = trap|start
            dpd_action = restart
            close_action = trap
            life_time = 2h
            replay_window = 0
            updown = /usr/local/bin/updown
         }
      }
   }
}
pools {
   p4 { addrs = 10.3.0.0/24 }
}
secrets {
   ike { secret = x }
}
"""
    conn = load_string(text).connection("c")
    assert conn.version == 2
    assert conn.local_addrs == ("10.1.0.2", "10.2.0.2")
    assert conn.remote_addrs == ("gw.example.org", "192.0.2.0/24", "198.51.100.1-198.51.100.9")
    assert (conn.local_port, conn.remote_port) == (4500, 4500)
    assert conn.vips == (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))
    assert conn.pools == ("p4",)
    assert (conn.dpd_delay, conn.dpd_timeout) == (60, 86400)
    assert (conn.over_time, conn.rand_time) == (30, 0)
    assert conn.keyingtries == 0
    assert conn.unique is Unique.REPLACE
    assert conn.mobike is False and conn.encap is True
    assert conn.extra == (("fragmentation", "yes"),)
    # auth rounds ordered by `round`, not by name or position
    assert [(a.name, a.auth, a.round) for a in conn.local] == [
        ("local-0", AuthClass.PUBKEY, 0), ("local-1", AuthClass.PSK, 1)]
    assert conn.local[0].extra == (("certs", "me.pem"),)
    assert conn.local[1].id == "me@example.org"
    (remote,) = conn.remote
    assert (remote.auth, remote.method, remote.id) == (AuthClass.EAP, "eap-mschapv2", None)
    child = conn.children[0]
    assert child.local_ts == (
        TrafficSelectorSpec(None),
        TrafficSelectorSpec(ipaddress.ip_network("10.0.0.0/24"), 6, 80, 80),
        TrafficSelectorSpec(ipaddress.ip_network("10.0.0.1/32"), 17, 0, 65535),
        TrafficSelectorSpec(ipaddress.ip_network("::/0"), 1, 0, 65535),
    )
    assert child.remote_ts == (
        TrafficSelectorSpec(ipaddress.ip_network("10.9.0.0/16"), 0, 1000, 2000),
        TrafficSelectorSpec(ipaddress.ip_network("10.8.0.0/16"), 6, 443, 443),
        TrafficSelectorSpec(ipaddress.ip_network("1.0.0.0/8"), 0, 0, 65535),
    )
    assert child.mode == "transport"
    assert child.start_action is StartAction.TRAP_START and child.start_action.starts
    assert child.dpd_action is DpdAction.RESTART
    assert child.close_action is CloseAction.TRAP
    assert (child.life_time, child.rand_time) == (7200, 3600)
    assert child.replay_window == 0
    assert child.extra == (("updown", "/usr/local/bin/updown"),)


@pytest.mark.parametrize("line", ["", "esp_proposals =", "esp_proposals = default"])
def test_default_esp_proposals_order_is_charons(line: str) -> None:
    # charon 5.9.8 (vici_config.c): a child without esp_proposals gets
    # proposal_create_default_aead(PROTO_ESP) and then proposal_create_default(PROTO_ESP);
    # the keyword "default" expands to the classic proposal first, then the AEAD one.
    # IKE has classic first either way.
    conn = load_string(MINIMAL.replace("net { }", f"net {{ {line} }}")).connection("c")
    classic, aead = parse_proposals("default", ProtocolId.ESP)
    assert [e for e, _ in classic.encr] == [EncrId.AES_CBC] * 3
    assert [e for e, _ in aead.encr] == [EncrId.AES_GCM_16] * 3
    expected = (classic, aead) if "default" in line else (aead, classic)
    assert conn.children[0].esp_proposals == expected
    assert conn.proposals == parse_proposals("default", ProtocolId.IKE)
    assert [e for e, _ in conn.proposals[0].encr] == [EncrId.AES_CBC] * 3


def test_empty_value_restores_the_default() -> None:
    text = MINIMAL.replace("remote_addrs = 192.0.2.1", "remote_addrs = 192.0.2.1\n rekey_time =")
    assert load_string(text).connection("c").rekey_time == 4 * 3600


def test_secrets_forms() -> None:
    raw = bytes(range(20))
    text = f"""
secrets {{
   ike-plain {{
      id = a@example.org
      id-2 = 192.0.2.1
      secret = "with # and space"
   }}
   ike-hex {{ secret = 0x{raw.hex()} }}
   ike-b64 {{ secret = 0s{base64.b64encode(raw).decode()} }}
   eap-user {{
      id = user
      secret = ignored-here
   }}
}}
"""
    secrets = {s.name: s for s in load_string(text).secrets}
    assert set(secrets) == {"ike-plain", "ike-hex", "ike-b64"}
    assert secrets["ike-plain"].ids == ("a@example.org", "192.0.2.1")
    assert secrets["ike-plain"].secret == b"with # and space"
    assert secrets["ike-hex"].secret == raw
    assert secrets["ike-b64"].secret == raw
    assert secrets["ike-hex"].ids == ()
    assert "with #" not in repr(secrets["ike-plain"])  # key material stays out of reprs


@pytest.mark.parametrize(
    ("addrs", "first", "last"),
    [
        ("10.3.0.0/24", "10.3.0.1", "10.3.0.254"),  # network and broadcast excluded
        ("10.3.0.100/24", "10.3.0.100", "10.3.0.254"),  # starts at the given host
        ("10.3.0.5/32", "10.3.0.5", "10.3.0.5"),
        ("10.3.0.4/31", "10.3.0.4", "10.3.0.5"),  # too small to lose two addresses
        ("10.3.0.10-10.3.0.20", "10.3.0.10", "10.3.0.20"),  # ranges are inclusive
        ("fd00::/120", "fd00::1", "fd00::fe"),
        ("fd00::/64", "fd00::1", "fd00::7fff:fffe"),  # capped at 2^31 as strongSwan does
    ],
)
def test_pool_leases(addrs: str, first: str, last: str) -> None:
    (pool,) = load_string(f"pools {{\n p {{\n  addrs = {addrs}\n  dns = 10.0.0.53\n }}\n}}\n").pools
    assert (str(pool.first), str(pool.last)) == (first, last)
    assert pool.attributes == (("dns", "10.0.0.53"),)
    assert (pool.file, pool.line) == ("<string>", 2)


def test_mobike_section_becomes_the_policy() -> None:
    text = ("mobike {\n probe_interval = 1s\n prefer { wwan { interface = wwan*\n cost = 100 }"
            " }\n}\nfoo { bar = baz }\n")
    config = load_string(text)
    assert config.mobike.policy.probe_interval == 1.0
    assert [(rule.interface, rule.cost) for rule in config.mobike.policy.prefer] == [("wwan*", 100)]


def test_unknown_top_level_sections_are_ignored() -> None:
    config = load_string("charon { whatever = 1 }\n" + MINIMAL)
    assert [c.name for c in config.connections] == ["c"]


ERRORS: list[tuple[str, str, str]] = [
    # (config, a substring of the line the error must name, message fragment)
    (MINIMAL.replace("children {", "rekey_tme = 1h\n children {"), "rekey_tme", "unknown key"),
    (MINIMAL.replace("net { }", "net { mode = beet }"), "mode = beet", "not supported"),
    (MINIMAL.replace("net { }", "net { mode = tunel }"), "mode = tunel", "unknown value"),
    (MINIMAL.replace("net { }", "net { rekey_time = 1y }"), "rekey_time", "not a time"),
    (MINIMAL.replace("net { }", "net { rekey_bytes = lots }"), "rekey_bytes", "not a size"),
    (MINIMAL.replace("net { }", "net { start_action = go }"), "start_action", "unknown value"),
    (MINIMAL.replace("net { }", "net { local_ts = 10.0.0.0/33 }"), "local_ts", "not a subnet"),
    (MINIMAL.replace("net { }", "net { local_ts = 10.0.0.0/8[tcp/99999] }"), "local_ts",
     "not a port"),
    (MINIMAL.replace("net { }", "net { local_ts = 10.0.0.0/8[bogus] }"), "local_ts",
     "unknown protocol"),
    (MINIMAL.replace("net { }", "net { esp_proposals = aes999-nonsense }"), "esp_proposals",
     "esp_proposals"),
    (MINIMAL.replace("net { }", "net { life_time = 10m }"), "life_time", "shorter"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n proposals = bogus-algo"), "proposals =",
     "proposals"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.999"), "remote_addrs", "not an address"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n vips = 0.0.0"), "vips", "not an IP address"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n local_port = 70000"), "local_port", "out of range"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n mobike = maybe"), "mobike =", "not yes or no"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n version = 1"), "version", "IKEv1"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n unique = sometimes"), "unique", "unknown value"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n fragmentation = maybe"), "fragmentation",
     "unknown value"),
    (MINIMAL + "mobike {\n fragment_size = 100\n}\n", "fragment_size", "out of range"),
    (MINIMAL + "mobike {\n fragment_size = 1k\n}\n", "fragment_size", "not a number"),
    (MINIMAL + "mobike {\n dead_after = soon\n}\n", "dead_after", "not a time"),
    (MINIMAL + "mobike {\n dead_after = 25h\n}\n", "dead_after", "out of range"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n pools = nowhere"), "pools", "not defined"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n child { }"), "child {", "unknown section"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n local { auth = xauth }"), "local {", "IKEv1"),
    (MINIMAL.replace("192.0.2.1", "192.0.2.1\n local { auth = psk }"), "local {",
     "no ike secret"),
    (MINIMAL.replace("192.0.2.1", "%any").replace("net { }", "net {\n start_action = start\n}"),
     "start_action", "cannot initiate"),
    (MINIMAL.replace("192.0.2.1", "10.0.0.0/8").replace(
        "net { }", "net {\n start_action = trap|start\n}"), "start_action", "cannot initiate"),
    ("secrets {\n ike {\n  id = x\n }\n}\n", "ike {", "no 'secret'"),
    ("secrets {\n ike {\n  secret = 0xabc\n }\n}\n", "secret =", "invalid hex"),
    ("secrets {\n ike {\n  secret = 0s!!!\n }\n}\n", "secret =", "invalid base64"),
    ("secrets {\n ike {\n  secret = x\n  scret = y\n }\n}\n", "scret", "unknown key"),
    ("secrets {\n bogus { secret = x }\n}\n", "bogus", "unknown secret type"),
    ("pools {\n p {\n  dns = 1.2.3.4\n }\n}\n", "p {", "no 'addrs'"),
    ("pools {\n p {\n  addrs = 10.0.0.0/24\n  dnss = 1.2.3.4\n }\n}\n", "dnss", "unknown key"),
    ("pools {\n p { addrs = 10.0.0.0/24 }\n q {\n  addrs = 10.0.0.128/25\n }\n}\n",
     "10.0.0.128", "overlaps"),
    ("pools {\n p { addrs = 10.0.0.9-10.0.0.1 }\n}\n", "addrs", "not a range"),
    ("connections {\n stray = 1\n}\n", "stray", "unknown key"),
]


@pytest.mark.parametrize(("text", "needle", "fragment"), ERRORS)
def test_errors_name_file_and_line(text: str, needle: str, fragment: str) -> None:
    err = one_error(text, "/etc/swanctl/swanctl.conf")
    assert err.file == "/etc/swanctl/swanctl.conf"
    assert err.line == line_of(text, needle), str(err)
    assert fragment in err.message, str(err)
    assert str(err) == f"/etc/swanctl/swanctl.conf:{err.line}: {err.message}"


def test_error_in_included_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "swanctl.conf"
    main.write_text("connections {\n   include conf.d/*.conf\n}\n")
    inc = tmp_path / "conf.d" / "gw.conf"
    inc.write_text("gw {\n   remote_addrs = 192.0.2.1\n\n   dpd_delay = soon\n}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    assert (info.value.file, info.value.line) == (str(inc), 4)
    assert "dpd_delay" in info.value.message


def test_psk_with_secret_in_another_file_loads(tmp_path: Path) -> None:
    main = tmp_path / "swanctl.conf"
    main.write_text(
        MINIMAL.replace("192.0.2.1", "192.0.2.1\n local { auth = psk }") + "include secrets.conf\n"
    )
    (tmp_path / "secrets.conf").write_text("secrets {\n ike-1 { secret = s3cret }\n}\n")
    config = load_config(str(main))
    assert config.connection("c").local[0].auth is AuthClass.PSK
    assert config.secrets[0].secret == b"s3cret"
    assert config.secrets[0].file == str(tmp_path / "secrets.conf")


_WORDS = st.sampled_from([
    "connections", "children", "secrets", "pools", "mobike", "c", "net", "ike", "local",
    "remote", "addrs", "auth", "psk", "secret", "id", "rekey_time", "remote_addrs", "mode",
    "local_ts", "start_action", "start", "%any", "10.0.0.0/24[tcp/80]", "1h", "0x1", "0s==",
    "10.0.0.1-10.0.0.0", "yes", " = ", " { ", " } ", "\n", ",", '"', "#", ":",
])


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=40).map("".join))
def test_random_configs_load_or_raise_config_error(text: str) -> None:
    try:
        load_string(text, "/nonexistent-dir/fuzz.conf")
    except ConfigError as exc:
        assert exc.file.startswith("/nonexistent-dir/")


@pytest.mark.parametrize(("value", "expected"), [
    (None, Fragmentation.YES), ("yes", Fragmentation.YES), ("accept", Fragmentation.ACCEPT),
    ("force", Fragmentation.FORCE), ("NO", Fragmentation.NO)])
def test_fragmentation_keeps_swanctls_values_and_default(value: str | None,
                                                        expected: Fragmentation) -> None:
    text = MINIMAL if value is None else MINIMAL.replace(
        "192.0.2.1", f"192.0.2.1\n fragmentation = {value}")
    conn = load_string(text).connections[0]
    assert conn.fragmentation == expected
    # Still handed to charon as written.
    assert conn.extra == (() if value is None else (("fragmentation", value),))


@pytest.mark.parametrize(("value", "size"), [(None, 1280), ("0", 0), ("300", 300),
                                             ("9000", 9000)])
def test_fragment_size(value: str | None, size: int) -> None:
    text = MINIMAL + ("" if value is None else f"mobike {{ fragment_size = {value} }}\n")
    assert load_string(text).mobike.policy.fragment_size == size


@pytest.mark.parametrize(("value", "seconds"), [(None, 30.0), ("0", 0.0), ("45s", 45.0),
                                                ("2m", 120.0)])
def test_dead_after(value: str | None, seconds: float) -> None:
    text = MINIMAL + ("" if value is None else f"mobike {{ dead_after = {value} }}\n")
    assert load_string(text).mobike.policy.dead_after == seconds
