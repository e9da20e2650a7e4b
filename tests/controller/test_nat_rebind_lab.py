"""`mobike-vici run` on the carrier-NAT uplink: the NAT rebinds (a new public port for
the same flow) while ESP flows both ways.

charon (5.9.8) with MOBIKE makes no implicit address update: the gateway keeps sending
ESP to the old public port, which the NAT no longer maps, until the mobile charon's own
NAT detection runs, and that only comes with its DPD (``dpd_delay``; none configured
here). The controller sees its ESP go out and nothing come back while the path itself
answers its probes, and makes charon check the path's NAT mapping at once."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.daemon.control import request
from mobike_vici.lab.charon_controller import INNER, Setup, build, mobile_conf
from mobike_vici.lab.faults import RouterFaults
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M1 = "10.2.0.2"
RECOVERED_WITHIN_S = 5.0
"""A functional bound: the probe burst and one MOBIKE exchange, under CI load; before,
nothing but charon's DPD (here: never) brought the gateway's ESP back."""
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab, mob_conf=mobile_conf(), nat_backup=True)


def _last_reply(log: Path) -> float | None:
    stamps = [float(m.group(1)) for line in log.read_text().splitlines()
              if (m := _REPLY.match(line))]
    return stamps[-1] if stamps else None


def _wait_reply_after(log: Path, since: float, timeout: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        last = _last_reply(log)
        if last is not None and last > since:
            return last
        time.sleep(0.05)
    return None


def _rebind_under_stream(setup: Setup, seed: int, then: Callable[[], object] | None = None
                         ) -> tuple[float | None, list[dict[str, Any]]]:
    """A 100 Hz ping through the tunnel on m1, then the carrier NAT rebinds (and ``then``
    runs at once): when the replies came back (None: not within RECOVERED_WITHIN_S), and
    the events since."""
    log = setup.lab.workdir / "stream.txt"
    setup.lab.spawn(setup.topo.mob, ["ping", "-D", "-n", "-i", "0.01", "-I", setup.vip(),
                                     INNER], log)
    assert _wait_reply_after(log, time.time(), 10) is not None, log.read_text()[-2000:]
    time.sleep(2.0)
    mark = len(setup.event_list())
    RouterFaults(setup.lab, setup.topo.rtr).nat_rebind("g0", f"{M1}/24", random.Random(seed))
    rebound = time.time()
    if then is not None:
        then()
    time.sleep(0.5)  # the gateway's ESP to the old port is lost by now
    back = _wait_reply_after(log, rebound + 0.5, RECOVERED_WITHIN_S)
    return back, setup.event_list()[mark:]


def test_a_nat_rebind_on_the_active_path_is_recovered_without_dpd(setup: Setup) -> None:
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.topo.kill_silently(1, family=6)  # m1's IPv6 (no NAT) is no way out
    setup.topo.link_down(0)  # charon is moved onto m1's IPv4, behind the carrier NAT
    setup.wait_local(M1, timeout=30)
    assert setup.tunnel_ping(), "no traffic through the tunnel on m1"
    spi = setup.spi()
    back, events = _rebind_under_stream(setup, seed=24)
    assert back is not None, json.dumps([events, setup.sa()])
    assert setup.spi() == spi  # the same IKE_SA: updated, not set up again
    names = [e["event"] for e in events]
    assert "nat_mapping_check" in names, names


def test_a_nat_rebind_under_an_ike_sa_set_up_behind_the_nat_is_recovered(setup: Setup) -> None:
    """charon compares a DPD's NAT detection with the one its last INFORMATIONAL exchange
    brought back; an IKE_SA set up behind the NAT has none yet (IKE_SA_INIT's is not kept),
    so its first check only records the mapping, the new one after a rebind. The
    controller has charon check the path once as soon as it tracks such an IKE_SA."""
    setup.topo.kill_silently(1, family=6)  # m1's IPv6 (no NAT) is no way out
    setup.topo.link_down(0)  # charon sets the IKE_SA up on m1's IPv4, behind the NAT
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M1, timeout=30)
    assert setup.tunnel_ping(), "no traffic through the tunnel on m1"
    spi = setup.spi()
    back, events = _rebind_under_stream(setup, seed=25)
    assert back is not None, json.dumps([events, setup.mob.log_text()[-4000:]])
    assert setup.spi() == spi  # the same IKE_SA: updated, not set up again
    assert setup.sa().get("local-host") == M1


def test_a_nat_rebind_just_before_an_ike_rekey_is_recovered(setup: Setup) -> None:
    """The NAT rebinds, then charon rekeys the IKE_SA before anything checked the
    mapping (the 30-minute soak's 2.18 s, 250 ms apart): the new IKE_SA's first check
    records the new mapping, so charon never sees a change and never tells the gateway,
    which keeps sending ESP to the old port. The controller leaves the path (to m1's
    IPv6 here); each move is a MOBIKE update from where we are."""
    setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.topo.link_down(0)
    setup.wait_local(("2001:db8:2::2", M1), timeout=30)
    deadline = time.monotonic() + 20
    while True:  # onto m1's IPv4, behind the carrier NAT (its IPv6 stays a way out)
        got = request(str(setup.control), "move", args={"conn": "home", "local": M1})
        if got.get("ok") or got.get("reason") == "already_active" \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got.get("ok") or got.get("reason") == "already_active", got
    setup.wait_local(M1, timeout=30)
    assert setup.tunnel_ping(), "no traffic through the tunnel on m1's IPv4"
    back, events = _rebind_under_stream(
        setup, seed=26, then=lambda: setup.mob.swanctl("--rekey", "--ike", "home"))
    assert "ike_sa_rekeyed" in [e["event"] for e in events], events
    assert back is not None, json.dumps([events, setup.mob.log_text()[-4000:]])
    checks = [e for e in events if e["event"] == "nat_mapping_check"]
    assert [e.get("rekeyed") for e in checks] == [True], checks
