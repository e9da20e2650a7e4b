"""The lab works with real charon: two charons in namespaces establish an IKE_SA and carry pings."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.lab.charon import Charon, decode, start_charon
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.topology import TwoHosts, mobile, two_hosts

pytestmark = [pytest.mark.netns, pytest.mark.charon]

PSK = "lab-only-secret-0123456789"
INNER = "10.88.0.1"  # responder's protected address, on its loopback
POOL = "10.99.0.0/24"


def responder_conf(local: str) -> str:
    return f"""
connections {{
    rw {{
        version = 2
        local_addrs = {local}
        proposals = aes128-sha256-x25519
        pools = vpool
        local {{
            auth = psk
            id = gw@lab
        }}
        remote {{
            auth = psk
            id = mob@lab
        }}
        children {{
            net {{
                local_ts = 10.88.0.0/24
                esp_proposals = aes128-sha256
            }}
        }}
    }}
}}
pools {{
    vpool {{
        addrs = {POOL}
    }}
}}
secrets {{
    ike-lab {{
        id-1 = gw@lab
        id-2 = mob@lab
        secret = "{PSK}"
    }}
}}
"""


def initiator_conf(local: str, remote: str) -> str:
    return f"""
connections {{
    home {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = aes128-sha256-x25519
        vips = 0.0.0.0
        local {{
            auth = psk
            id = mob@lab
        }}
        remote {{
            auth = psk
            id = gw@lab
        }}
        children {{
            net {{
                remote_ts = 10.88.0.0/24
                esp_proposals = aes128-sha256
            }}
        }}
    }}
}}
secrets {{
    ike-lab {{
        id-1 = gw@lab
        id-2 = mob@lab
        secret = "{PSK}"
    }}
}}
"""


@pytest.fixture
def charon_pair(lab: Lab) -> Iterator[tuple[TwoHosts, Charon, Charon]]:
    topo = two_hosts(lab)
    topo.host_b.ip("addr", "add", f"{INNER}/32", "dev", "lo")
    initiator = start_charon(lab, topo.host_a, name="initiator")
    responder = start_charon(lab, topo.host_b, name="responder")
    yield topo, initiator, responder
    initiator.stop()
    responder.stop()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_psk_x25519_tunnel_established_and_carries_ping(
    charon_pair: tuple[TwoHosts, Charon, Charon], tmp_path: Path
) -> None:
    topo, initiator, responder = charon_pair
    responder.load_all(_write(tmp_path / "responder.conf", responder_conf(topo.b4)))
    initiator.load_all(_write(tmp_path / "initiator.conf", initiator_conf(topo.a4, topo.b4)))

    # Before initiating there is nothing to see.
    assert initiator.list_sas() == {}

    initiator.initiate("net", ike="home")
    sa = initiator.wait_established("home")
    assert sa["state"] == "ESTABLISHED"
    assert sa["local-host"] == topo.a4 and sa["remote-host"] == topo.b4
    assert sa["encr-alg"] == "AES_CBC" and sa["encr-keysize"] == "128"
    assert sa["dh-group"] == "CURVE_25519"
    children = list(sa["child-sas"].values())
    assert [c["state"] for c in children] == ["INSTALLED"]
    vips = sa["local-vips"]
    assert len(vips) == 1 and vips[0].startswith("10.99.0.")

    peer = responder.wait_established("rw")
    assert peer["remote-vips"] == vips
    assert peer["initiator-spi"] == sa["initiator-spi"]

    # The data plane is userspace ESP: a ping from the virtual IP reaches the
    # responder's protected address only through the tunnel.
    assert topo.host_a.ping(INNER, source=vips[0], count=2), initiator.log_text()[-3000:]
    child = next(iter(initiator.list_sas()["home"]["child-sas"].values()))
    assert int(child["packets-out"]) >= 2 and int(child["packets-in"]) >= 2

    initiator.terminate("home")
    assert "home" not in initiator.list_sas()
    # The tunnel and its virtual IP are gone, so the protected address is unreachable.
    assert not topo.host_a.ping(INNER, source=vips[0], wait=1)


def test_readme_example_config_loads_into_charon(lab: Lab, tmp_path: Path) -> None:
    """The README's example must be a valid swanctl.conf (the mobike section ignored)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"```\n(connections \{.*?)```", readme, re.S)
    assert match, "README has no connections example"
    conf = _write(tmp_path / "readme.conf", match.group(1))
    ns = lab.netns("readme")
    charon = start_charon(lab, ns)
    out = charon.load_all(conf)
    assert "loaded connection 'home'" in out
    conns = [decode(c) for c in charon.session().list_conns()]
    assert [name for c in conns for name in c] == ["home"]
    charon.stop()


@pytest.mark.parametrize("nat", [False, True], ids=["routed", "nat"])
def test_mobile_topology_tunnel_and_loud_handover(lab: Lab, tmp_path: Path, nat: bool) -> None:
    """charon across the router (and NAT); a downed uplink makes charon's MOBIKE move."""
    topo = mobile(lab, nat=nat)
    topo.gw.ip("addr", "add", f"{INNER}/32", "dev", "lo")
    mob = start_charon(lab, topo.mob)
    gw = start_charon(lab, topo.gw)
    gw.load_all(_write(tmp_path / "gw.conf", responder_conf(topo.gw4)))
    mob.load_all(_write(tmp_path / "mob.conf", initiator_conf("%any", topo.gw4)))
    mob.initiate("net", ike="home")
    sa = mob.wait_established("home")
    assert sa["local-host"] == topo.uplinks[0].addr4  # the preferred uplink
    peer = gw.wait_established("rw")
    assert peer["remote-host"] == (topo.rtr_wan4 if nat else topo.uplinks[0].addr4)
    assert (sa.get("nat-local") == "yes") is nat
    vip = sa["local-vips"][0]
    assert topo.mob.ping(INNER, source=vip)

    moved_to = (topo.uplinks[1].addr4, topo.uplinks[1].addr6)
    topo.link_down(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sa = mob.list_sas()["home"]
        if sa["local-host"] in moved_to:
            break
        time.sleep(0.1)
    # MOBIKE may pick either family on the second uplink (the gw also has IPv6).
    assert sa["local-host"] in moved_to, mob.log_text()[-3000:]
    assert sa["state"] == "ESTABLISHED"
    # kernel-libipsec rekeys the CHILD_SA after every move, from both ends at once;
    # when the rekeys collide, charon may only recover on its retry (up to ~15 s).
    deadline = time.monotonic() + 30
    while not topo.mob.ping(INNER, source=vip) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert topo.mob.ping(INNER, source=vip, count=2), mob.log_text()[-3000:]
