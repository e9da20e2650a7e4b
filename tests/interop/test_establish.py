"""IKE_SA and CHILD_SA setup against real charon, each side initiating, three suites,
and virtual IPs from either side's pool."""

from __future__ import annotations

import ipaddress

import pytest

from .configs import CHARON_POOL, INNER_NET, NATIVE_NET, NATIVE_POOL
from .support import Interop

pytestmark = [pytest.mark.netns, pytest.mark.charon]

# (IKE proposal, ESP proposal, what charon's list-sas must show for the IKE_SA)
SUITES = [
    ("aes128-sha256-x25519", "aes128-sha256",
     {"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128",
      "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "CURVE_25519"}),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16",
     {"encr-alg": "AES_GCM_16", "encr-keysize": "256", "integ-alg": None,
      "prf-alg": "PRF_HMAC_SHA2_384", "dh-group": "ECP_384"}),
    ("aes128-sha1-modp2048", "aes128-sha1",
     {"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA1_96",
      "prf-alg": "PRF_HMAC_SHA1", "dh-group": "MODP_2048"}),
]


@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
@pytest.mark.parametrize(("ike", "esp", "expected"), SUITES, ids=[s[0] for s in SUITES])
def test_establish_with_suite(interop: Interop, native_initiates: bool, ike: str, esp: str,
                              expected: dict[str, str | None]) -> None:
    ours, theirs = interop.sides(native_initiates=native_initiates, proposals=ike,
                                 esp_proposals=esp)
    tunnel = interop.establish(ours, theirs)

    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    for key, value in expected.items():
        assert sa.get(key) == value, (key, sa)
    assert sa["local-host"] == interop.charon_addr and sa["remote-host"] == interop.native_addr
    # charon's role is the opposite of ours.
    assert (sa.get("initiator") == "yes") is not native_initiates
    assert tunnel.ike_event["initiator"] is native_initiates
    assert tunnel.ike_event["proposal"] == ike
    assert tunnel.child_event["proposal"] == esp
    assert tunnel.ike_event["local"].startswith(interop.native_addr)
    assert tunnel.ike_event["remote"].startswith(interop.charon_addr)

    # Both views name the same single SA pair, and our status says so too.
    assert tunnel.both_show_only(tunnel.ike_spi, tunnel.child_event["spi_in"],
                                 tunnel.child_event["spi_out"])
    child = next(iter(sa["child-sas"].values()))
    assert child["mode"] == "TUNNEL"
    assert child["protocol"] == "ESP"
    assert child["local-ts"] == [INNER_NET] and child["remote-ts"] == [NATIVE_NET]
    assert tunnel.child_event["local_ts"] == [NATIVE_NET]
    assert tunnel.child_event["remote_ts"] == [INNER_NET]


@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
def test_esp_default_without_the_key_is_aead_first_on_both(interop: Interop,
                                                           native_initiates: bool) -> None:
    # Neither side names esp_proposals: charon then offers its AEAD proposal first, and
    # so must we. Each responder picks in its own order, so each direction checks one.
    ours, theirs = interop.sides(native_initiates=native_initiates, esp_proposals=None)
    tunnel = interop.establish(ours, theirs)
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    child = next(iter(sa["child-sas"].values()))
    assert (child.get("encr-alg"), child.get("encr-keysize")) == ("AES_GCM_16", "128"), child
    assert tunnel.child_event["proposal"].startswith("aes128gcm16"), tunnel.child_event


@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
def test_establish_over_ipv6(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates, ipv6=True))
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    assert sa["local-host"] == interop.topo.b6 and sa["remote-host"] == interop.topo.a6
    assert tunnel.ike_event["remote"] == f"{interop.topo.b6}[4500]"
    assert tunnel.both_show_only(tunnel.ike_spi, tunnel.child_event["spi_in"],
                                 tunnel.child_event["spi_out"])


def test_virtual_ip_from_charons_pool(interop: Interop) -> None:
    ours, theirs = interop.sides(native_initiates=True, native={"vips": "0.0.0.0"},
                                 charon={"pool": CHARON_POOL})
    tunnel = interop.establish(ours, theirs)

    vips = tunnel.ike_event["virtual_ips"]
    assert len(vips) == 1
    assert ipaddress.ip_address(vips[0]) in ipaddress.ip_network(CHARON_POOL)
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    assert sa.get("remote-vips") == vips
    assert [s["virtual_ips"] for s in tunnel.native_status()] == [vips]


def test_virtual_ip_from_our_pool(interop: Interop) -> None:
    ours, theirs = interop.sides(native_initiates=False, native={"pool": NATIVE_POOL},
                                 charon={"vips": "0.0.0.0"})
    tunnel = interop.establish(ours, theirs)

    vips = tunnel.ike_event["virtual_ips"]
    assert len(vips) == 1
    assert ipaddress.ip_address(vips[0]) in ipaddress.ip_network(NATIVE_POOL)
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    assert sa.get("local-vips") == vips
    assert [s["virtual_ips"] for s in tunnel.native_status()] == [vips]
