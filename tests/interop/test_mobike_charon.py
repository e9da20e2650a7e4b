"""MOBIKE against charon 5.9.8 in the mobile topology (mob -- two uplinks -- rtr -- gw).

(1) Our engine initiates from mob and moves to the second uplink by
``Engine.move`` (IPv4, and across families to IPv6); charon (responder in gw)
must show the new endpoints with the same IKE SPIs. The daemon has no move
command yet, so the engine runs here under a small driver (this file run as a
script inside mob: UDP sockets, select loop).
(2) charon initiates from mob, our daemon answers in gw; the first uplink goes
down, charon moves on its own, our responder checks return routability and
follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import select
import socket
import sys
import time
from pathlib import Path as FsPath
from typing import Any

import pytest

NON_ESP = b"\0\0\0\0"
DRIVER_ADDRS = ("10.1.0.2", "10.2.0.2", "2001:db8:1::2", "2001:db8:2::2")
GW = "192.0.2.2"
GW6 = "2001:db8:ff::2"


# ---------------------------------------------------------------- the driver (in mob)


def _event_record(event: object) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(event).__name__}
    for f in dataclasses.fields(event):  # type: ignore[arg-type]
        if f.name in ("keys", "suite"):
            continue  # never key material in logs
        value = getattr(event, f.name)
        record[f.name] = value if isinstance(value, bool | int | float | None) else str(value)
    return record


def drive(conf: str, events_path: str, commands_path: str) -> None:
    """Run one Engine over real sockets until killed; commands: ``move LOCAL REMOTE``."""
    from mobike_vici.config import load_string
    from mobike_vici.core.engine import Engine
    from mobike_vici.types import Endpoint, Path

    engine = Engine(load_string(FsPath(conf).read_text()), os.urandom,
                    lambda remote: ipaddress.ip_address(DRIVER_ADDRS[0]))
    socks: dict[socket.socket, Endpoint] = {}
    by_local: dict[Endpoint, socket.socket] = {}
    for addr in DRIVER_ADDRS:
        for port in (500, 4500):
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            local = Endpoint(ipaddress.ip_address(addr), port)
            socks[sock] = local
            by_local[local] = sock
    engine.set_local_addresses([ipaddress.ip_address(a) for a in DRIVER_ADDRS], time.monotonic())
    engine.initiate("interop", "net", time.monotonic())
    done_commands = 0
    with open(events_path, "a", encoding="utf-8") as out:
        while True:
            now = time.monotonic()
            for d in engine.datagrams_to_send(now):
                out_sock = by_local.get(d.path.local)
                if out_sock is None:
                    continue
                data = d.data if d.keepalive or d.path.local.port == 500 else NON_ESP + d.data
                with contextlib.suppress(OSError):  # a path that went away: MOBIKE's business
                    out_sock.sendto(data, (str(d.path.remote.addr), d.path.remote.port))
            while (event := engine.next_event()) is not None:
                out.write(json.dumps(_event_record(event)) + "\n")
                out.flush()
            lines = FsPath(commands_path).read_text().splitlines() if os.path.exists(
                commands_path) else []
            for line in lines[done_commands:]:
                words = line.split()
                spi = engine.status()[0].ike_spi
                if words[:1] == ["move"]:
                    path = Path(Endpoint(ipaddress.ip_address(words[1]), 4500),
                                Endpoint(ipaddress.ip_address(words[2]), 4500))
                    engine.move(spi, path, now)
                elif words[:1] == ["probe"]:
                    path = Path(Endpoint(ipaddress.ip_address(words[1]), 4500),
                                Endpoint(ipaddress.ip_address(words[2]), 4500))
                    engine.probe(spi, path, now)
            done_commands = len(lines)
            timer = engine.get_timer()
            wait = 0.05 if timer is None else max(0.0, min(0.05, timer - now))
            ready, _, _ = select.select(list(socks), [], [], wait)
            now = time.monotonic()
            for sock in ready:
                data, source = sock.recvfrom(65535)
                addr, port = source[0], source[1]
                local = socks[sock]
                if local.port == 4500:
                    if data[:4] != NON_ESP:
                        continue  # ESP or a keepalive: no data plane here
                    data = data[4:]
                remote = Endpoint(ipaddress.ip_address(addr), port)
                engine.receive_datagram(data, Path(local, remote), now)
            timer = engine.get_timer()
            if timer is not None and timer <= time.monotonic():
                engine.handle_timer(time.monotonic())


if __name__ == "__main__":
    drive(*sys.argv[1:4])
    sys.exit(0)


# ---------------------------------------------------------------- the tests

from mobike_vici.lab.charon import Charon, start_charon  # noqa: E402
from mobike_vici.lab.native import NativeDaemon, start_native  # noqa: E402
from mobike_vici.lab.netns import Lab  # noqa: E402
from mobike_vici.lab.topology import Mobile, mobile  # noqa: E402

from .configs import (  # noqa: E402
    CHARON_ID,
    CHILD,
    CONN,
    INNER_NET,
    NATIVE_ID,
    NATIVE_NET,
    Side,
    swanctl_conf,
)
from .support import CHANGE_TIMEOUT, ESTABLISH_TIMEOUT, charon_ike_sas, wait_until  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.charon]


def _events(path: FsPath) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _charon_sa(charon: Any) -> dict[str, Any] | None:
    sas = charon_ike_sas(charon)
    return sas[0] if len(sas) == 1 and sas[0].get("state") == "ESTABLISHED" else None


def _child_spis(sa: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(c.get("spi-in")), str(c.get("spi-out")))
            for c in sa.get("child-sas", {}).values() if c.get("state") == "INSTALLED"]


def _topology(lab: Lab) -> Mobile:
    topo = mobile(lab)
    # charon as responder installs routes with a source address inside its local_ts.
    topo.gw.add_address("lo", f"{ipaddress.ip_network(INNER_NET)[1]}/32")
    return topo


def _charon_gateway_and_driver(lab: Lab) -> tuple[Charon, FsPath, FsPath]:
    """charon as gateway, our engine (``drive``) as the mobile initiator on mob:
    charon, the driver's events file and its commands file."""
    topo = _topology(lab)
    charon = start_charon(lab, topo.gw, name="gw")
    conf = lab.workdir / "charon.conf"
    conf.write_text(swanctl_conf(Side(local_addr=GW, remote_addr=None, local_id=CHARON_ID,
                                      remote_id=NATIVE_ID, local_ts=INNER_NET,
                                      remote_ts=NATIVE_NET)))
    charon.load_all(conf)
    ours = lab.workdir / "driver.conf"
    ours.write_text(swanctl_conf(Side(local_addr=DRIVER_ADDRS[0], remote_addr=GW,
                                      local_id=NATIVE_ID, remote_id=CHARON_ID,
                                      local_ts=NATIVE_NET, remote_ts=INNER_NET,
                                      initiator=True)))
    events = lab.workdir / "driver-events.jsonl"
    commands = lab.workdir / "driver-commands"
    pkg_root = str(FsPath(__file__).resolve().parents[2])
    lab.spawn(topo.mob, [sys.executable, __file__, str(ours), str(events), str(commands)],
              lab.workdir / "driver.log", env={"PYTHONPATH": pkg_root})
    return charon, events, commands


def _native_gateway_and_charon(lab: Lab, ike_rekey_time: str | None = None,
                               ike_rand_time: str | None = None
                               ) -> tuple[Mobile, NativeDaemon, Charon]:
    """Our daemon as gateway (its IKE rekey timing as given), charon on mob initiating
    the IKE_SA."""
    topo = _topology(lab)
    conf = lab.workdir / "native.conf"
    conf.write_text(swanctl_conf(Side(local_addr=GW, remote_addr=None, local_id=NATIVE_ID,
                                      remote_id=CHARON_ID, local_ts=NATIVE_NET,
                                      remote_ts=INNER_NET, ike_rekey_time=ike_rekey_time,
                                      ike_rand_time=ike_rand_time)))
    daemon = start_native(lab, topo.gw, conf, name="gw")
    charon = start_charon(lab, topo.mob, name="mob")
    cconf = lab.workdir / "charon.conf"
    cconf.write_text(swanctl_conf(Side(local_addr="%any", remote_addr=GW, local_id=CHARON_ID,
                                       remote_id=NATIVE_ID, local_ts=INNER_NET,
                                       remote_ts=NATIVE_NET, initiator=True)))
    charon.load_all(cconf)
    topo.mob.add_address("lo", f"{ipaddress.ip_network(INNER_NET)[1]}/32")
    charon.initiate(CHILD, ike=CONN)
    return topo, daemon, charon


@pytest.mark.parametrize(("target", "gw"), [(DRIVER_ADDRS[1], GW), (DRIVER_ADDRS[3], GW6)],
                         ids=["ipv4-uplink2", "ipv6-uplink2"])
def test_native_initiator_moves_charon_follows(lab: Lab, target: str, gw: str) -> None:
    charon, events, commands = _charon_gateway_and_driver(lab)

    est = wait_until(lambda: next((e for e in _events(events)
                                   if e["type"] == "IkeSaEstablished"), None),
                     ESTABLISH_TIMEOUT, "our engine to establish with charon")
    sa = wait_until(lambda: _charon_sa(charon), ESTABLISH_TIMEOUT, "charon's IKE_SA")
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == est["ike_spi"]
    assert sa["remote-host"] == DRIVER_ADDRS[0]
    children = wait_until(lambda: _child_spis(_charon_sa(charon) or {}), ESTABLISH_TIMEOUT,
                          "charon's CHILD_SA")

    commands.write_text(f"move {target} {gw}\n")
    moved = wait_until(lambda: next((e for e in _events(events) if e["type"] in (
        "IkeSaMoved", "MoveFailed", "IkeSaDeleted")), None), CHANGE_TIMEOUT, "the move")
    assert moved["type"] == "IkeSaMoved", moved
    assert target in moved["new_path"]
    # Every CHILD_SA we held moved with the IKE_SA.
    installed = {e["unique_id"] for e in _events(events) if e["type"] == "ChildSaInstalled"}
    updated = {e["unique_id"] for e in _events(events) if e["type"] == "ChildSaUpdated"
               and target in e["path"]}
    assert updated and updated <= installed

    def charon_moved() -> dict[str, Any] | None:
        now_sa = _charon_sa(charon)
        return now_sa if now_sa and now_sa.get("remote-host") == target else None

    after = wait_until(charon_moved, CHANGE_TIMEOUT, "charon to show our new address")
    assert (after["initiator-spi"], after["responder-spi"]) == (sa["initiator-spi"],
                                                                sa["responder-spi"])
    assert after["local-host"] == gw
    # charon with kernel-libipsec cannot move an ESP SA in place and rekeys it after
    # an address update (charon's choice, same IKE_SA): its CHILD_SA must be one of ours.
    ours_now = wait_until(lambda: _live_children(events) or None, CHANGE_TIMEOUT,
                          "our CHILD_SAs")
    wait_until(lambda: set(_child_spis(_charon_sa(charon) or {})) == ours_now,
               CHANGE_TIMEOUT, "charon's CHILD_SAs to match ours")
    assert children  # charon had one before the move
    time.sleep(2.0)  # nothing falls apart after the move (no delete, no DPD failure)
    assert not [e for e in _events(events) if e["type"] == "IkeSaDeleted"]
    assert _charon_sa(charon) is not None


def test_native_initiator_still_moves_after_charon_rekeyed_the_ike_sa(lab: Lab) -> None:
    """RFC 4555 §2: the initiator is who set up the first IKE_SA of the rekey series.
    Once charon (responder) has rekeyed the IKE_SA it sends the I flag, yet the move
    stays ours to make and charon follows it, as charon's own role survives rekeys."""
    charon, events, commands = _charon_gateway_and_driver(lab)
    wait_until(lambda: next((e for e in _events(events) if e["type"] == "ChildSaInstalled"),
                            None), ESTABLISH_TIMEOUT, "our engine to establish with charon")
    before = wait_until(lambda: _charon_sa(charon), ESTABLISH_TIMEOUT, "charon's IKE_SA")

    charon.swanctl("--rekey", "--ike", CONN)
    rekeyed = wait_until(lambda: next((e for e in _events(events)
                                       if e["type"] == "IkeSaRekeyed"), None),
                         CHANGE_TIMEOUT, "charon's IKE rekey")
    new_spi = rekeyed["new_ike_spi"]
    sa = wait_until(lambda: (now_sa if (now_sa := _charon_sa(charon)) and
                             f"{now_sa['initiator-spi']}_{now_sa['responder-spi']}" == new_spi
                             else None), CHANGE_TIMEOUT, "charon to list the new IKE_SA")
    assert sa["initiator-spi"] != before["initiator-spi"]  # charon chose SPIi: it rekeyed

    target = DRIVER_ADDRS[1]
    commands.write_text(f"move {target} {GW}\n")
    moved = wait_until(lambda: next((e for e in _events(events) if e["type"] in (
        "IkeSaMoved", "MoveFailed") or (e["type"] == "IkeSaDeleted"
                                        and e["reason"] != "rekeyed")), None),
                       CHANGE_TIMEOUT, "the move")
    assert moved["type"] == "IkeSaMoved", moved
    after = wait_until(lambda: (now_sa if (now_sa := _charon_sa(charon)) and
                                now_sa.get("remote-host") == target else None),
                       CHANGE_TIMEOUT, "charon to follow the move")
    assert (after["initiator-spi"], after["responder-spi"]) == (sa["initiator-spi"],
                                                                sa["responder-spi"])


def _live_children(events: FsPath) -> set[tuple[str, str]]:
    """(charon's spi-in, spi-out) of every CHILD_SA we hold, from our events."""
    live: dict[int, tuple[str, str]] = {}
    for e in _events(events):
        if e["type"] == "ChildSaInstalled":
            live[e["unique_id"]] = (f"{e['spi_out']:08x}", f"{e['spi_in']:08x}")
        elif e["type"] == "ChildSaDeleted":
            live.pop(e["unique_id"], None)
    return set(live.values())


def test_charon_initiator_moves_native_responder_follows(lab: Lab) -> None:
    topo, daemon, charon = _native_gateway_and_charon(lab)
    est = daemon.wait_event(lambda ev: ev.get("event") == "ike_sa_established",
                            ESTABLISH_TIMEOUT)
    sa = wait_until(lambda: _charon_sa(charon), ESTABLISH_TIMEOUT, "charon's IKE_SA")
    assert f"{sa['initiator-spi']}_{sa['responder-spi']}" == est["ike_spi"]
    assert sa["local-host"] == topo.uplinks[0].addr4
    children = wait_until(lambda: _child_spis(_charon_sa(charon) or {}), ESTABLISH_TIMEOUT,
                          "charon's CHILD_SA")

    topo.link_down(0)
    # Our responder: return-routability check, then the move (core event PeerMoved).
    daemon.wait_event(lambda ev: ev.get("type") == "PeerMoved"
                      or ev.get("event") == "peer_moved", CHANGE_TIMEOUT)

    # MOBIKE may pick either family on the second uplink: our responder announces its
    # IPv6 address too, and charon takes whichever of its paths answers first.
    second = (topo.uplinks[1].addr4, topo.uplinks[1].addr6)

    def charon_moved() -> dict[str, Any] | None:
        now_sa = _charon_sa(charon)
        return now_sa if now_sa and now_sa.get("local-host") in second else None

    after = wait_until(charon_moved, CHANGE_TIMEOUT, "charon on its second uplink")
    assert (after["initiator-spi"], after["responder-spi"]) == (sa["initiator-spi"],
                                                                sa["responder-spi"])
    assert children  # charon had one before the move

    def agree() -> bool:
        status = json.loads(daemon.status(as_json=True).stdout)["ike_sas"]
        if len(status) != 1 or status[0]["ike_spi"] != est["ike_spi"]:
            return False
        if after["local-host"] not in json.dumps(status[0]):
            return False
        ours = {(c["spi_out"], c["spi_in"]) for c in status[0]["children"]}
        return ours == set(_child_spis(_charon_sa(charon) or {}))

    # charon (kernel-libipsec) may rekey the CHILD_SA after a move; both must agree.
    wait_until(agree, CHANGE_TIMEOUT, "our status and charon's list-sas to agree")
    time.sleep(2.0)
    daemon.events.poll()
    assert not [ev for ev in daemon.events.events if ev.get("event") == "ike_sa_deleted"]


def test_native_responder_still_follows_after_it_rekeyed_the_ike_sa(lab: Lab) -> None:
    """The other role of RFC 4555 §2: our responder rekeys the IKE_SA (it sends the I
    flag from then on), and charon, the initiator, still moves it: accepted, no reject."""
    topo, daemon, charon = _native_gateway_and_charon(lab, ike_rekey_time="3s",
                                                      ike_rand_time="0s")
    est = daemon.wait_event(lambda ev: ev.get("event") == "ike_sa_established",
                            ESTABLISH_TIMEOUT)
    rekeyed = daemon.wait_event(lambda ev: ev.get("event") == "ike_sa_rekeyed",
                                ESTABLISH_TIMEOUT)
    new_spi = str(rekeyed["new_ike_spi"])
    wait_until(lambda: (now_sa if (now_sa := _charon_sa(charon)) and
                             f"{now_sa['initiator-spi']}_{now_sa['responder-spi']}" == new_spi
                             else None), CHANGE_TIMEOUT, "charon to list the rekeyed IKE_SA")

    topo.link_down(0)
    moved = daemon.wait_event(lambda ev: ev.get("event") in ("peer_moved", "update_rejected"),
                              CHANGE_TIMEOUT)
    assert moved["event"] == "peer_moved", moved
    second = (topo.uplinks[1].addr4, topo.uplinks[1].addr6)
    after = wait_until(lambda: (now_sa if (now_sa := _charon_sa(charon)) and
                                now_sa.get("local-host") in second else None),
                       CHANGE_TIMEOUT, "charon on its second uplink")
    assert after["local-host"] in str(moved["remote"])
    assert moved["ike_spi"] != est["ike_spi"]  # a generation our responder rekeyed
    daemon.events.poll()
    assert not [ev for ev in daemon.events.events if ev.get("event") == "update_rejected"]
