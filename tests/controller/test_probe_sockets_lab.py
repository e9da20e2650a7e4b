"""The controller's probe sockets follow the host's addresses: one renumbered uplink
leaves no socket bound to its old address behind.

The ICMP prober opens a raw socket per local address at its first probe from it. It
kept every one: on a host that renumbers (a new DHCP lease, IPv6 temporary addresses)
the controller's descriptors grew by one per address it ever had."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Iterator

import pytest

from mobike_vici.lab.charon_controller import Setup, build
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1, M1_NEW = "10.1.0.2", "10.2.0.2", "10.2.0.3"


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


def _probe_sockets(pid: int) -> list[str]:
    """The local IPv4 addresses of the raw ICMP sockets the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    out = []
    with open(f"/proc/{pid}/net/raw") as f:  # the process's namespace
        for line in f.readlines()[1:]:
            fields = line.split()
            local, inode = fields[1], fields[9]
            if inode in inodes:
                addr = bytes.fromhex(local.split(":")[0])[::-1]
                out.append(str(ipaddress.IPv4Address(socket.inet_ntoa(addr))))
    return sorted(out)


def _wait_for(pid: int, addr: str, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while addr not in (found := _probe_sockets(pid)):
        assert time.monotonic() < deadline, f"no probe socket from {addr}: {found}"
        time.sleep(0.1)
    return found


def test_a_renumbered_uplink_leaves_no_probe_socket_behind(setup: Setup) -> None:
    proc = setup.start_controller()
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    before = _wait_for(proc.pid, M1)
    up = setup.topo.uplinks[1]
    setup.topo.mob.ip("addr", "del", f"{M1}/24", "dev", up.ifname)
    setup.topo.mob.add_address(up.ifname, f"{M1_NEW}/24")
    setup.topo.mob.ip("-4", "route", "replace", "default", "via", up.gw4, "dev", up.ifname,
                      "metric", str(up.metric))
    after = _wait_for(proc.pid, M1_NEW)
    assert M1 not in after, f"the old address's probe socket is still open: {after}"
    assert len(after) == len(before), (before, after)
