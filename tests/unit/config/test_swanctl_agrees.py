"""Real swanctl/charon 5.9.8 reads the shipped examples and pool sizes as our loader does.

Needs root and strongSwan (marked; tests/conftest.py skips loudly without them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici.config import load_config
from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

EXAMPLES = Path(__file__).resolve().parents[3] / "swanctl"

POOLS = """
pools {
   p-net   { addrs = 10.3.0.0/24 }
   p-host  { addrs = 10.4.0.100/24 }
   p-31    { addrs = 10.5.0.4/31 }
   p-32    { addrs = 10.6.0.5/32 }
   p-range { addrs = 10.7.0.10-10.7.0.20 }
   p-v6    { addrs = fd00::/120 }
   p-big   { addrs = fd01::/64 }
}
"""


@pytest.fixture(scope="module")
def charon() -> Iterator[Charon]:
    with Lab() as lab:
        ns = lab.netns("cfg")
        yield start_charon(lab, ns)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["client.conf", "gateway.conf"])
def test_swanctl_loads_the_examples_as_we_do(charon: Charon, name: str) -> None:
    ours = load_config(str(EXAMPLES / name))
    out = charon.load_all(EXAMPLES / name)
    assert f"successfully loaded {len(ours.connections)} connections" in out, out
    listed = charon.swanctl("--list-conns").stdout
    for conn in ours.connections:
        assert re.search(rf"^{re.escape(conn.name)}: IKEv2", listed, re.M), listed
        for child in conn.children:
            assert f"  {child.name}: TUNNEL" in listed, listed
    for secret in ours.secrets:
        assert f"loaded ike secret '{secret.name}'" in out, out


@pytest.mark.slow
def test_pool_sizes_match_strongswan(charon: Charon, tmp_path: Path) -> None:
    conf = tmp_path / "pools.conf"
    conf.write_text(POOLS)
    ours = {p.name: int(p.last) - int(p.first) + 1 for p in load_config(str(conf)).pools}
    charon.load_all(conf)
    listed = charon.swanctl("--list-pools").stdout
    # "<name>   <base>   <online> / <offline> / <size>"
    theirs = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+)\s+\S+\s+\d+ / \d+ / (\d+)$", listed, re.M)
    }
    assert theirs == ours
