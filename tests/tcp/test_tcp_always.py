"""``tcp = always`` between two of our daemons on one link: IKE and ESP over one stream
from the first message, and a stream killed under the tunnel is opened again.

The kill is ``ss -K`` on the initiator's socket (the kernel aborts it, as a middlebox
reset would): the initiator connects again, sends UPDATE_SA_ADDRESSES over the new
stream, and the responder's IKE_SA follows it to the new port; same SPIs throughout.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.tunnel import INNER_ADDR, build, wait_ping

pytestmark = pytest.mark.netns

ALWAYS = "mobike {\n  tcp = always\n}\n"
TIMEOUT = 20.0


def sa(end: NativeDaemon) -> dict[str, Any]:
    proc = end.status(as_json=True)
    assert proc.returncode == 0, proc.stderr
    (ike,) = json.loads(proc.stdout)["ike_sas"]
    return dict(ike)


def test_always_carries_the_tunnel_and_survives_a_killed_stream(lab: Lab) -> None:
    tunnel = build(lab, a_native=True, b_native=True, mobike_conf=ALWAYS)
    a, b = tunnel.a, tunnel.b
    assert isinstance(a, NativeDaemon) and isinstance(b, NativeDaemon)
    before_a, before_b = sa(a), sa(b)
    assert before_a["transport"] == before_b["transport"] == "tcp"
    # Nothing of IKE went over UDP: the initiator's first stream opened before the SA.
    assert a.events.find(named("tcp_stream_opened", role="initiator")) is not None
    # NAT detection hashed the stream's own ends (RFC 9329): no NAT on this link.
    for end in (a, b):
        up = end.events.find(named("ike_sa_established"))
        assert up is not None and not up["nat_local"] and not up["nat_remote"], up
    old_remote = str(before_b["remote"])
    killed = tunnel.topo.host_a.run("ss", "-K", "-t", "dst", tunnel.topo.b4, "dport", "=",
                                    "4500", check=False)
    assert killed.returncode == 0, killed.stderr
    a.wait_event(named("tcp_stream_closed", role="initiator"), TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and str(sa(b)["remote"]) == old_remote:
        time.sleep(0.2)
    after_a, after_b = sa(a), sa(b)
    assert str(after_b["remote"]) != old_remote  # followed the new stream's port
    assert after_a["transport"] == after_b["transport"] == "tcp"
    assert after_a["ike_spi"] == before_a["ike_spi"] == after_b["ike_spi"]
    wait_ping(tunnel.topo.host_a, INNER_ADDR, TIMEOUT)
    assert sum(tunnel.topo.host_a.ping(INNER_ADDR, count=1, wait=1.0) for _ in range(5)) >= 4
