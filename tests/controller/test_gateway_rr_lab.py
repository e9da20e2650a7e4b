"""`mobike-vici run` at both ends of a charon tunnel: the gateway's return-routability check
(IKE rekeys charon initiates as responder) does not take the client's IKE_SA away from
the client's controller, which keeps steering it afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mobike_vici.lab.charon_controller import Setup, build, gateway_conf
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M0_ANY = (M0, "2001:db8:1::2")
M1_ANY = (M1, "2001:db8:2::2")


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


def test_a_verified_move_leaves_the_client_sa_with_its_controller(setup: Setup) -> None:
    conf = setup.lab.workdir / "gw-rr.conf"
    conf.write_text(gateway_conf() + "mobike {\n  return_routability = always\n"
                    "  handover_timeout = 10s\n}\n")
    setup.start_gw_controller(conf)
    setup.wait_event("config_loaded", path=setup.gw_events)
    setup.start_controller()
    tracked = setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    assert setup.tunnel_ping(), "no traffic through the tunnel before the test"
    # A silent failure of m0: the client's controller moves charon to m1; the gateway's
    # checks the new address with IKE rekeys that charon on gw initiates.
    setup.topo.kill_silently(0)
    setup.wait_local(M1_ANY, timeout=30)
    ok = setup.wait_event("return_routability_ok", path=setup.gw_events, timeout=30)
    assert ok["remote"].split("[")[0] in M1_ANY
    rekeyed = setup.wait_event("ike_sa_rekeyed", timeout=10)
    assert rekeyed["ike_spi"] == tracked["ike_spi"]
    assert setup.tunnel_ping(), "no traffic on m1 after the check"
    # The rekeyed SA is still the client's: its controller takes m0 back after hold-down.
    mark = len(setup.event_list())
    setup.topo.revive(0)
    back = setup.wait_event("handover_completed", lambda e: e["local"].split("[")[0] in M0_ANY,
                            after=mark, timeout=40)
    assert back["ike_spi"] == ok["ike_spi"]  # the same IKE_SA at both ends
    setup.wait_local(M0_ANY, timeout=10)
    assert setup.tunnel_ping()
    names = [e.get("event") for e in setup.event_list(setup.gw_events)]
    assert "return_routability_failed" not in names and "ike_sa_terminated" not in names
    assert "ike_sa_tracked" not in names  # the gateway steers none of its peers' SAs
