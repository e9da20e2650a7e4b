"""A netlink overrun (ENOBUFS) in the native daemon during a burst of address changes.

A test hook gives the daemon's netlink monitor a tiny receive buffer; hundreds of
address adds and deletes in one burst then overflow it. The monitor must resync
from a fresh dump, the daemon's view must equal the kernel's afterwards, and the
next handover must work.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mobike_vici.daemon.native_api import NETLINK_RCVBUF_ENV
from mobike_vici.lab.handover import build
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, Netns

from .support import is_event, wait_new

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M1 = "10.2.0.2"
BURST = 300  # addresses added, then every other one deleted again


def status(daemon: NativeDaemon) -> dict[str, Any]:
    proc = daemon.status(as_json=True)
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def kernel_addresses(ns: Netns) -> list[str]:
    """``ifname addr/prefix`` of every address in the namespace, as the daemon reports it."""
    out = []
    for link in json.loads(ns.ip("-j", "addr", "show").stdout):
        for info in link.get("addr_info", []):
            out.append(f"{link['ifname']} {info['local']}/{info['prefixlen']}")
    return sorted(out)


def test_enobufs_during_an_address_burst_resyncs_and_the_next_handover_works(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NETLINK_RCVBUF_ENV, "4096")
    h = build(lab, mob_native=True, gw_native=False)
    try:
        mob = h.mob
        assert isinstance(mob, NativeDaemon)
        ns = h.topo.mob
        # A link that is down: its addresses make netlink traffic but no candidate paths.
        ns.ip("link", "add", "burst0", "type", "veth", "peer", "name", "burst1")
        before = status(mob)["net"]
        usable_before = before["usable"]
        adds = "".join(f"addr add 10.77.{i // 250}.{i % 250 + 1}/32 dev burst0\n"
                       for i in range(BURST))
        dels = "".join(f"addr del 10.77.{i // 250}.{i % 250 + 1}/32 dev burst0\n"
                       for i in range(0, BURST, 2))
        mark = len(mob.events.events)
        for _ in range(5):  # bounded: one burst nearly always overruns a 4 KiB buffer
            ns.run("ip", "-batch", "-", input_text=adds + dels)
            deadline = time.monotonic() + 20
            while status(mob)["net"]["overruns"] == before["overruns"] and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            if status(mob)["net"]["overruns"] > before["overruns"]:
                break
            ns.ip("addr", "flush", "dev", "burst0")
        net = status(mob)["net"]
        assert net["overruns"] > before["overruns"], "no ENOBUFS: the test checked nothing"
        wait_new(mob, mark, is_event("net_resynced", reason="overrun"), timeout=60)
        # The daemon's view converges on the kernel's (the resync may still be under way).
        deadline = time.monotonic() + 20
        while status(mob)["net"]["addresses"] != kernel_addresses(ns) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        net = status(mob)["net"]
        kernel = kernel_addresses(ns)
        assert net["addresses"] == kernel, sorted(set(net["addresses"]) ^ set(kernel))
        assert sum(" 10.77." in a for a in net["addresses"]) == BURST // 2
        assert net["usable"] == usable_before  # addresses on a down link are no paths
        assert mob.alive()

        # The next handover works.
        mark = len(mob.events.events)
        fault = h.link_down(0)
        wait_new(mob, mark, is_event("handover_completed", local=M1), timeout=20)
        assert h.wait_resumed(fault, 20.0) is not None
    finally:
        h.close()
