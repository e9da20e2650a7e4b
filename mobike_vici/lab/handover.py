"""The handover lab: the mobile topology with our daemon or charon at each end, a
sequence-numbered UDP stream through the tunnel, faults, and outage arithmetic.

mob (two uplinks m0/m1, m0 preferred) initiates and gets a virtual IP; gw responds
and protects INNER_NET with INNER_ADDR on its loopback. The stream goes from mob to
INNER_ADDR, one datagram per ``INTERVAL``; gw's receiver logs each arrival.

A path really is its uplink: a packet from m1's address leaves through m1 even while
m0's default route is up. Our daemon sees to that itself (its uplink tables, see
net/own_routing.py), so mob has nothing but two default routes, as a user's host
would; charon in mob gets one table per uplink from the lab instead. With
``full_tunnel`` the initiator asks for everything (``0.0.0.0/0`` and ``::/0``, with an
IPv4 and an IPv6 virtual IP), as a roaming client would.

Outage = arrival of the first datagram sent after the fault minus the fault time
(both CLOCK_MONOTONIC, one kernel). The fault time is taken when the command that
injects it returned, so it errs short by that command's own latency (a few ms).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobike_vici.lab.charon import Charon
from mobike_vici.lab.driver import UplinkDriver
from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.lab.topology import Mobile, mobile, source_routes
from mobike_vici.lab.tunnel import (
    INNER_ADDR,
    INNER_NET,
    start_initiator,
    start_responder,
    swanctl_conf,
    wait_ping,
)

PROGRAMS = Path(__file__).resolve().parent / "programs"
STREAM = PROGRAMS / "stream.py"
MOVER = PROGRAMS / "mover.py"
STREAM_PORT = 5301
INTERVAL = 0.01
GW4 = "192.0.2.2"
FULL_TUNNEL = "0.0.0.0/0,::/0"

End = NativeDaemon | Charon
Credentials = Callable[[Lab, str, str], tuple[Path, Path]]
"""(lab, gw config text, mob config text) -> (gw config path, mob config path)."""

MOB_POLICY = """mobike {
  prefer {
    backup {
      interface = m1
      cost = 10
    }
  }
}
"""
"""Our daemon's path policy in mob: m1 is the backup uplink (charon has the route
metrics and ``prefer_best_path`` instead)."""


def read_arrivals(path: Path) -> list[tuple[int, float, float]]:
    """The stream receiver's log: ``(seq, sent, received)`` per datagram, CLOCK_MONOTONIC."""
    out = []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return out


@dataclass
class Handover(UplinkDriver):
    """One running scenario; ``mob`` initiates, ``gw`` responds."""

    lab: Lab
    topo: Mobile
    mob: End
    gw: End
    arrivals_path: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    lab_routes: bool = field(init=False)

    def __post_init__(self) -> None:
        self.lab_routes = not isinstance(self.mob, NativeDaemon)

    @property
    def kind(self) -> str:
        side = {True: "native", False: "charon"}
        return (f"{side[isinstance(self.mob, NativeDaemon)]}-"
                f"{side[isinstance(self.gw, NativeDaemon)]}")

    def close(self) -> None:
        """Stop the stream (the Lab stops the daemons and removes the namespaces)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # -- the stream -------------------------------------------------------------------

    def arrivals(self) -> list[tuple[int, float, float]]:
        return read_arrivals(self.arrivals_path)

    def outage_after(self, fault: float) -> float | None:
        return outage(self.arrivals(), fault)

    # -- where the SA lives -------------------------------------------------------------

    def mob_local(self) -> str | None:
        local = sa_view(self.mob)["local"]
        return str(local) if local is not None else None

    def views(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return sa_view(self.mob), sa_view(self.gw)


def outage(arrivals: list[tuple[int, float, float]], fault: float) -> float | None:
    after = [recv for _, sent, recv in arrivals if sent >= fault]
    return min(after) - fault if after else None


def max_gap(arrivals: list[tuple[int, float, float]], start: float, end: float) -> float:
    """The longest silence between arrivals within [start, end]."""
    times = sorted(r for _, _, r in arrivals if start <= r <= end)
    points = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(points))


def _hostport(text: str) -> str:
    return text.rsplit("[", 1)[0]


def sa_view(end: End) -> dict[str, Any]:
    """{local, remote, ike_spi, child_spis} of the one IKE_SA, from either kind of end.

    ike_spi is ``<spi_i>_<spi_r>`` (hex, no 0x), child_spis a sorted pair of hex SPIs."""
    if isinstance(end, NativeDaemon):
        proc = end.status(as_json=True)
        if proc.returncode != 0:
            raise LabError(f"status failed: {proc.stderr}")
        sas = json.loads(proc.stdout)["ike_sas"]
        sa = sas[0]
        children = sa["children"]
        return {"local": _hostport(sa["local"]), "remote": _hostport(sa["remote"]),
                "ike_spi": sa["ike_spi"].lower(),
                "child_spis": sorted(s.lower().removeprefix("0x") for c in children
                                     for s in (c["spi_in"], c["spi_out"]))}
    sas = end.list_sas()
    sa = next(iter(sas.values()))
    spi = f"{int(sa['initiator-spi'], 16):016x}_{int(sa['responder-spi'], 16):016x}"
    kids = list(sa.get("child-sas", {}).values())
    return {"local": sa.get("local-host"), "remote": sa.get("remote-host"), "ike_spi": spi,
            "child_spis": sorted(f"{int(c[k], 16):08x}" for c in kids
                                 for k in ("spi-in", "spi-out"))}


def build(lab: Lab, *, mob_native: bool, gw_native: bool, nat: bool = False,
          nat_backup: bool = False, encap: bool = False, full_tunnel: bool = False,
          timeout: float = 30.0, mob_args: tuple[str, ...] = (),
          inner_net: str = INNER_NET, mob_program: Sequence[str] | None = None,
          stream: bool = True,
          before_start: Callable[[Mobile], None] | None = None,
          credentials: Credentials | None = None) -> Handover:
    """Topology, both ends, the tunnel up, and the stream flowing (with ``stream``;
    else the test brings its own traffic, and ``arrivals`` stays empty).

    ``mob_program`` replaces ``python -m mobike_vici`` for our daemon in mob.

    Seen in this lab: charon 5.9.8 (kernel-libipsec) as responder rekeys every
    CHILD_SA after accepting UPDATE_SA_ADDRESSES, with or without ``encap``; so
    against charon the CHILD SPIs change on a move, the IKE SPIs do not.

    ``mob_args``: extra command-line arguments for our daemon in mob (e.g. ``--metrics``).
    ``before_start``: called with the topology before either end starts (an early fault).
    ``credentials``: rewrites both configs before start (e.g. certificates instead of the
    PSK), returning the paths to load."""
    topo = mobile(lab, nat=nat, nat_backup=nat_backup)
    if before_start is not None:
        before_start(topo)
    if not mob_native:
        for index in (0, 1):
            source_routes(topo, index)
    # Strict reverse-path filtering in rtr, as an access network does (BCP 38): a
    # packet from m0's address that leaks out through m1 is dropped, so an SA that
    # has not moved yet really is cut off, in both directions.
    topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    conf_gw = lab.workdir / "gw.conf"
    inner = FULL_TUNNEL if full_tunnel else inner_net
    conf_gw.write_text(swanctl_conf(initiator=False, local=GW4, remote="%any", encap=encap,
                                    inner_net=inner, vip6=full_tunnel))
    conf_mob = lab.workdir / "mob.conf"
    conf_mob.write_text(swanctl_conf(initiator=True, local="%any", remote=GW4,
                                     start=mob_native, encap=encap, inner_net=inner,
                                     vip6=full_tunnel)
                        + (MOB_POLICY if mob_native else ""))
    if credentials is not None:
        conf_gw, conf_mob = credentials(lab, conf_gw.read_text(), conf_mob.read_text())
    gw = start_responder(lab, topo.gw, conf_gw, "gw", native=gw_native)
    # prefer_best_path: charon follows route changes back to the better uplink.
    mob = start_initiator(lab, topo.mob, conf_mob, "mob", native=mob_native, timeout=timeout,
                          extra_args=mob_args, program=mob_program,
                          extra_charon="prefer_best_path = yes")
    wait_ping(topo.mob, INNER_ADDR, timeout)
    arrivals = lab.workdir / "arrivals.txt"
    arrivals.write_text("")
    if not stream:
        return Handover(lab, topo, mob, gw, arrivals)
    recv = subprocess.Popen(
        topo.gw.argv([sys.executable, str(STREAM), "recv", INNER_ADDR, str(STREAM_PORT),
                      str(arrivals)]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert recv.stdout is not None
    if recv.stdout.readline().strip() != b"listening":
        recv.kill()
        raise LabError("stream receiver did not start")
    send = lab.spawn(topo.mob, [sys.executable, str(STREAM), "send", INNER_ADDR,
                                str(STREAM_PORT), str(INTERVAL)], lab.workdir / "send.log")
    h = Handover(lab, topo, mob, gw, arrivals, [recv, send])
    if h.wait_resumed(time.monotonic(), timeout) is None:
        h.close()
        raise LabError("no stream through the tunnel")
    return h

