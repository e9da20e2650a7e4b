"""The VICI backend against real charons: config loading as swanctl does, SA events, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from mobike_vici.backends.vici import (
    Backoff,
    ChildAdded,
    ChildRemoved,
    SaAdded,
    SaRemoved,
    ViciClient,
    ViciConnected,
    ViciDisconnected,
    ViciEvent,
    load,
)
from mobike_vici.config import load_config, load_string
from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.charon_controller import PSK, gateway_conf
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.topology import TwoHosts, two_hosts

pytestmark = [pytest.mark.netns, pytest.mark.charon]

REPO = Path(__file__).resolve().parents[2]
E = TypeVar("E", bound=ViciEvent)
INNER = "10.88.0.1"


def client_conf(local: str, remote: str) -> str:
    return f"""
connections {{ home {{ version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = aes128-sha256-x25519
    vips = 0.0.0.0
    local {{ auth = psk
        id = mob@lab }}
    remote {{ auth = psk
        id = gw@lab }}
    children {{ net {{ remote_ts = 10.88.0.0/24
        esp_proposals = aes128-sha256 }} }} }} }}
secrets {{ ike-lab {{ id-1 = gw@lab
    id-2 = mob@lab
    secret = {PSK} }} }}
"""


@pytest.fixture
def pair(lab: Lab) -> Iterator[tuple[TwoHosts, Charon, Charon]]:
    topo = two_hosts(lab)
    topo.host_b.ip("addr", "add", f"{INNER}/32", "dev", "lo")
    a = start_charon(lab, topo.host_a, name="a")
    b = start_charon(lab, topo.host_b, name="b")
    yield topo, a, b
    a.stop()
    b.stop()


async def _next(client: ViciClient, kind: type[E], timeout: float = 20.0) -> E:
    """The next event of type ``kind``; the ones before it are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout}s")
        event = await asyncio.wait_for(client.events.get(), left)
        if isinstance(event, kind):
            return event


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 90))


def _initiated(charon: Charon, conn: str, wait: bool) -> bool:
    """Whether charon's log shows it initiating ``conn`` (waiting up to 5 s if ``wait``)."""
    deadline = time.monotonic() + (5.0 if wait else 0.0)
    while True:
        if f"initiating IKE_SA {conn}[" in charon.log_text():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _conns_listing(charon: Charon) -> str:
    return charon.swanctl("--list-conns").stdout


# Keys off their defaults, to see times, selectors and modes arrive as swanctl sends them.
BUSY_CONF = """
connections {
   busy {
      version = 2
      local_addrs = 192.0.2.1, 2001:db8::1
      remote_addrs = 198.51.100.7
      local_port = 4510
      remote_port = 4520
      proposals = aes256-sha384-ecp384, aes128gcm16-prfsha256-x25519
      rekey_time = 2h
      reauth_time = 8h
      over_time = 10m
      rand_time = 3m
      dpd_delay = 15s
      dpd_timeout = 60s
      keyingtries = 3
      unique = keep
      mobike = no
      encap = yes
      fragmentation = yes
      local-a { auth = psk
         id = busy@lab }
      remote-a { auth = psk
         }
      children {
         one {
            local_ts = 10.1.0.0/16[tcp/80-90], 10.2.0.1[udp/53]
            remote_ts = 10.3.0.0/24[icmp/8], 10.4.0.0/24[tcp], 10.5.0.0/24[47]
            esp_proposals = aes256-sha512-modp4096-esn, aes128gcm16
            mode = transport
            start_action = trap
            dpd_action = trap
            close_action = trap
            rekey_time = 30m
            life_time = 50m
            rekey_bytes = 100m
            rekey_packets = 100000
            life_packets = 200000
            replay_window = 64
            updown = /bin/true
            priority = 1234
         }
         two {
            rand_time = 5m
         }
      }
   }
}
secrets { ike-busy { id = busy@lab
   secret = 0sYnVzeS1zZWNyZXQ= } }
pools {
   range { addrs = 10.70.0.10-10.70.0.20
      dns = 10.70.0.53, 10.70.0.54 }
   one { addrs = 10.71.0.5 }
}
"""


@pytest.mark.parametrize("example", ["client.conf", "gateway.conf", "busy"])
def test_loading_an_example_gives_what_swanctl_load_all_gives(
        pair: tuple[TwoHosts, Charon, Charon], example: str, tmp_path: Path) -> None:
    _, ours, theirs = pair
    path = REPO / "swanctl" / example
    if example == "busy":
        path = tmp_path / "busy.conf"
        path.write_text(BUSY_CONF)
    # client.conf starts its child on load; the peer is unreachable here, and
    # both charons get the same treatment either way.
    theirs.load_all(path)

    async def body() -> None:
        client = ViciClient(ours.uri)
        task = asyncio.create_task(client.run())
        await client.wait_connected(10)
        result = await load(client, load_config(str(path)))
        assert result.conns, result
        await client.close()
        await task

    _run(body)
    listing = _conns_listing(ours)
    assert listing == _conns_listing(theirs)
    # Not trivially equal: both list the example's connections and children.
    config = load_config(str(path))
    for conn in config.connections:
        assert f"{conn.name}:" in listing
        for child in conn.children:
            assert f"{child.name}:" in listing
    assert ours.swanctl("--list-pools").stdout == theirs.swanctl("--list-pools").stdout
    assert ours.session().get_shared() == theirs.session().get_shared()
    # charon runs start_action = start itself on load-conn (as for swanctl): the
    # controller must not initiate those children a second time.
    for conn in config.connections:
        starts = any(ch.start_action.starts for ch in conn.children)
        for charon in (ours, theirs):
            assert _initiated(charon, conn.name, wait=starts) == starts


def test_sa_events_arrive_in_the_table_and_a_restart_is_reconciled(
        lab: Lab, pair: tuple[TwoHosts, Charon, Charon]) -> None:
    topo, a, b = pair
    restarted: list[Charon] = []

    async def body() -> None:
        gw_config = load_string(gateway_conf(local=topo.b4))
        mob_config = load_string(client_conf(topo.a4, topo.b4))

        async def load_mob(c: ViciClient) -> None:
            await load(c, mob_config)

        mob = ViciClient(a.uri, backoff=Backoff(0.1, 1.0), on_connect=load_mob)
        gw = ViciClient(b.uri)
        tasks = [asyncio.create_task(mob.run()), asyncio.create_task(gw.run())]
        assert isinstance(await _next(mob, ViciConnected), ViciConnected)
        await gw.wait_connected(10)
        await mob.wait_connected(10)
        await load(gw, gw_config)
        assert len(mob.table) == 0

        logs = await mob.initiate("net", "home", timeout_ms=15000)
        assert any("established" in line for line in logs), logs
        added = await _next(mob, SaAdded)
        child = await _next(mob, ChildAdded)
        charon_view = a.list_sas()["home"]
        spi = f"{charon_view['initiator-spi']}_{charon_view['responder-spi']}"
        assert added.ike_spi == spi and added.conn == "home"
        assert str(added.sa.path.local.addr) == topo.a4
        assert str(added.sa.path.remote.addr) == topo.b4
        (charon_child,) = charon_view["child-sas"].values()
        assert child.ike_spi == spi
        assert child.child.spi_in == charon_child["spi-in"]
        assert child.child.spi_out == charon_child["spi-out"]
        assert mob.table.get(spi) is not None
        # The responder's table holds the same IKE_SA under the same key.
        await _next(gw, ChildAdded)
        assert gw.table.get(spi) is not None and not gw.table.get(spi).initiator  # type: ignore[union-attr]

        # charon dies without a word (SIGKILL): the table keeps what it had...
        os.kill(a.proc.pid, signal.SIGKILL)
        a.stop()
        gone = await _next(mob, ViciDisconnected)
        assert gone.uri == mob.uri
        assert mob.table.get(spi) is not None
        await asyncio.sleep(0.5)  # a few failed reconnects with backoff
        assert not mob.connected
        # ...and a new charon in the same namespace (same socket path) is found again,
        # the config reloaded by on_connect, and the resync drops the dead SA.
        restarted.append(await asyncio.to_thread(start_charon, lab, topo.host_a, name="a"))
        await _next(mob, ViciConnected)
        removed_child = await _next(mob, ChildRemoved)
        removed = await _next(mob, SaRemoved)
        assert removed.ike_spi == spi and removed.reason == "resync"
        assert removed_child.child.spi_in == charon_child["spi-in"]
        await mob.wait_connected(10)
        assert len(mob.table) == 0
        assert "home" in mob.conns  # on_connect loaded the config into the new charon

        # The gateway still believes in the old SA; a new one comes up beside it.
        await mob.initiate("net", "home", timeout_ms=15000)
        new = await _next(mob, SaAdded)
        assert new.ike_spi != spi and mob.table.get(new.ike_spi) is not None
        for c in (mob, gw):
            await c.close()
        for t in tasks:
            await t

    try:
        _run(body)
    finally:
        for charon in restarted:
            charon.stop()
