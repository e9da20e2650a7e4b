"""The ICMP prober's sockets: one per local address in use, none left for an address gone.

A raw socket per (address, interface) is opened at the first probe from it; the
controller forgets an address when it leaves the host. Without that a long-running
controller kept one socket for every address the host ever had (a new DHCP lease, IPv6
temporary addresses rotating daily). Real raw sockets on loopback: needs CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os

import pytest

from mobike_vici.net.probes.icmp import IcmpProber
from mobike_vici.types import Endpoint, Path

LOOP4 = ipaddress.ip_address("127.0.0.1")
LOOP4_B = ipaddress.ip_address("127.0.0.2")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")


def _path(local: ipaddress.IPv4Address) -> Path:
    return Path(Endpoint(local, 4500), Endpoint(LOOP4, 4500))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_forgotten_address_closes_its_socket_and_a_new_probe_opens_one() -> None:
    async def run() -> None:
        replies: list[int] = []
        prober = IcmpProber(lambda probe_id, _rtt: replies.append(probe_id),
                            random_bytes=os.urandom, fwmark=None, xfrm_bypass=False)
        before = _open_fds()
        for round_ in range(3):  # the host renumbered: each round a new address
            local = LOOP4 if round_ % 2 == 0 else LOOP4_B
            assert prober.send(_path(local), round_, None)
            assert prober.open_sockets == 1
            assert prober.forget_local(local) == 1
            assert prober.open_sockets == 0
        assert _open_fds() == before
        assert prober.forget_local(LOOP4) == 0  # nothing left to close
        assert prober.send(_path(LOOP4), 9, None)  # opened anew, and it still answers
        for _ in range(50):
            if 9 in replies:
                break
            await asyncio.sleep(0.02)
        assert 9 in replies
        assert _open_fds() == before + 1
        prober.close()

    asyncio.run(run())
