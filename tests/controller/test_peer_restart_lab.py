"""`mobike-vici run` beside charon: the gateway's charon restarts without a DELETE.

The gateway's charon is killed (SIGKILL: no DELETE leaves) and started again with its
configuration. The mobile charon's IKE_SA is gone at the gateway, which answers its
DPD with nothing; charon alone keeps the IKE_SA through its whole retransmission
schedule (and with ``dpd_action = clear`` never sets it up again). The controller sees
the DPD unanswered, asks the gateway's IKE port with a throwaway IKE_SA_INIT, gets an
answer, resends the DPD, gets none: the IKE_SA is ended (``ike_sa_deleted``,
``peer_lost_state``) and initiated again (``start_action = start``)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from mobike_vici.lab.charon import start_charon
from mobike_vici.lab.charon_controller import Setup, build, mobile_conf
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

BACK_WITHIN = 20.0  # generous; charon alone retransmits its DPD for about 40 s, then clears
DPD_CONF = mobile_conf().replace("version = 2", "version = 2\n    dpd_delay = 2s", 1)


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, mob_conf=DPD_CONF)


def _restart_gateway(setup: Setup) -> None:
    os.kill(setup.gw.proc.pid, signal.SIGKILL)
    setup.gw.proc.wait(timeout=10)
    setup.gw.close_session()
    setup.gw = start_charon(setup.lab, setup.topo.gw, name="gw")
    setup.gw.load_all(setup.lab.workdir / "gw-swanctl.conf")


def _established_anew(setup: Setup, old_spi: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sa = setup.sa()
        if sa.get("state") == "ESTABLISHED" and setup.spi() != old_spi \
                and setup.gw.list_sas():
            return setup.spi()
        time.sleep(0.2)
    return None


def test_a_gateway_restarted_without_a_delete_gets_the_tunnel_back_in_seconds(
        setup: Setup) -> None:
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    assert setup.tunnel_ping(), "no traffic through the tunnel before the restart"
    old_spi = setup.spi()

    _restart_gateway(setup)

    new_spi = _established_anew(setup, old_spi, BACK_WITHIN)
    assert new_spi is not None, (
        f"the IKE_SA was not set up again within {BACK_WITHIN}s: {setup.sa()}\n"
        + setup.mob.log_text()[-3000:])
    deleted = [e for e in setup.event_list() if e["event"] == "ike_sa_deleted"]
    assert any(e["ike_spi"] == old_spi and e["reason"] == "peer_lost_state"
               for e in deleted), deleted
    assert setup.tunnel_ping(), "no traffic through the new tunnel"
