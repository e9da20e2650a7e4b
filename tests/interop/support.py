"""The interop lab: our daemon in host_a, charon in host_b, and the oracles that compare them.

charon's `list-sas` is the oracle. Our events and `status --json` must name the
same SAs: our ike_spi ``<spi_i>_<spi_r>`` is charon's initiator-spi and
responder-spi; our CHILD_SA spi_in is charon's spi-out and vice versa.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from mobike_vici.lab.charon import Charon, decode, start_charon
from mobike_vici.lab.native import Event, NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.lab.topology import TwoHosts

from .configs import (
    CHARON_ID,
    CHILD,
    CONN,
    INNER_NET,
    NATIVE_ID,
    NATIVE_NET,
    Side,
    swanctl_conf,
)

T = TypeVar("T")

# Functional timeouts only: generous, never asserted on.
ESTABLISH_TIMEOUT = 30.0
CHANGE_TIMEOUT = 40.0

SA = dict[str, Any]


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def ike_spi_of(sa: SA) -> str:
    """charon's SPI pair in our event format."""
    return f"{sa['initiator-spi']}_{sa['responder-spi']}"


def charon_ike_sas(charon: Charon) -> list[SA]:
    """Every IKE_SA charon has, as a list (list_sas() keys by name, hiding duplicates)."""
    out: list[SA] = []
    for entry in charon.session().list_sas():
        for name, sa in decode(entry).items():
            out.append({"name": name, **sa})
    return out


def charon_children(sa: SA) -> list[SA]:
    return list(sa.get("child-sas", {}).values())


@dataclass
class Interop:
    """Two hosts on one link: our daemon on host_a, charon on host_b."""

    lab: Lab
    topo: TwoHosts
    workdir: Path
    charons: list[Charon] = field(default_factory=list)
    natives: list[NativeDaemon] = field(default_factory=list)

    @property
    def native_addr(self) -> str:
        return self.topo.a4

    @property
    def charon_addr(self) -> str:
        return self.topo.b4

    # --- config -------------------------------------------------------------

    def sides(self, *, native_initiates: bool, native: dict[str, Any] | None = None,
              charon: dict[str, Any] | None = None, ipv6: bool = False,
              **common: Any) -> tuple[Side, Side]:
        """(our side, charon's side) of one connection, roles as asked.

        `common` goes to both, `native` and `charon` to one. Our daemon protects
        NATIVE_NET, charon INNER_NET; a side asking for a virtual IP protects
        that instead (dynamic), and a side with a pool accepts the peer's.
        `ipv6` puts the IKE_SA on the hosts' IPv6 addresses (the inner nets stay IPv4).
        """
        native_addr = self.topo.a6 if ipv6 else self.native_addr
        charon_addr = self.topo.b6 if ipv6 else self.charon_addr
        ours = Side(local_addr=native_addr,
                    remote_addr=charon_addr if native_initiates else None,
                    local_id=NATIVE_ID, remote_id=CHARON_ID, local_ts=NATIVE_NET,
                    remote_ts=INNER_NET, initiator=native_initiates, start=native_initiates,
                    **{**common, **(native or {})})
        theirs = Side(local_addr=charon_addr,
                      remote_addr=None if native_initiates else native_addr,
                      local_id=CHARON_ID, remote_id=NATIVE_ID, local_ts=INNER_NET,
                      remote_ts=NATIVE_NET, initiator=not native_initiates,
                      **{**common, **(charon or {})})
        if ours.vips is not None:
            ours, theirs = replace(ours, local_ts="dynamic"), replace(theirs, remote_ts="dynamic")
        if theirs.vips is not None:
            ours, theirs = replace(ours, remote_ts="dynamic"), replace(theirs, local_ts="dynamic")
        return ours, theirs

    # --- processes ----------------------------------------------------------

    def start_charon(self, side: Side, *, extra_charon: str = "") -> Charon:
        charon = start_charon(self.lab, self.topo.host_b, extra_charon=extra_charon,
                              name="charon")
        self.charons.append(charon)
        conf = self.workdir / "charon.conf"
        conf.write_text(swanctl_conf(replace(side, start=False)))
        charon.load_all(conf)
        return charon

    def start_native(self, side: Side) -> NativeDaemon:
        conf = self.workdir / "native.conf"
        conf.write_text(swanctl_conf(side))
        daemon = start_native(self.lab, self.topo.host_a, conf, name="native")
        self.natives.append(daemon)
        return daemon

    def establish(self, native_side: Side, charon_side: Side, *,
                  extra_charon: str = "") -> Tunnel:
        """Start both, let the initiator bring the SA up, wait for both views to agree."""
        charon = self.start_charon(charon_side, extra_charon=extra_charon)
        daemon = self.start_native(native_side)
        if charon_side.initiator:
            charon.initiate(CHILD, ike=CONN)
        tunnel = Tunnel(charon, daemon)
        tunnel.wait_agree()
        return tunnel

    def diagnostics(self) -> str:
        """Tails of every log, printed when a test fails."""
        parts = []
        for charon in self.charons:
            parts.append(f"--- charon log ({charon.log_path})\n{charon.log_text()[-6000:]}")
        for daemon in self.natives:
            daemon.events.poll()
            lines = "\n".join(json.dumps(ev) for ev in daemon.events.events[-60:])
            parts.append(f"--- native events ({daemon.events_path})\n{lines}")
            parts.append(f"--- native stderr\n{daemon.log_text()[-3000:]}")
        return "\n".join(parts)


@dataclass
class Tunnel:
    """One IKE_SA between our daemon and charon, with both views."""

    charon: Charon
    daemon: NativeDaemon
    ike_event: Event = field(default_factory=dict)
    child_event: Event = field(default_factory=dict)

    @property
    def ike_spi(self) -> str:
        return str(self.ike_event["ike_spi"])

    def native_status(self) -> list[SA]:
        proc = self.daemon.status(as_json=True)
        if proc.returncode != 0:
            raise AssertionError(f"status failed ({proc.returncode}): {proc.stderr}")
        answer = json.loads(proc.stdout)
        sas = answer.get("ike_sas")
        assert isinstance(sas, list), answer
        return sas

    def charon_sa(self, ike_spi: str) -> SA | None:
        return next((sa for sa in charon_ike_sas(self.charon) if ike_spi_of(sa) == ike_spi),
                    None)

    def wait_agree(self, timeout: float = ESTABLISH_TIMEOUT) -> None:
        """Wait for our established/installed events and the same SA ESTABLISHED/INSTALLED
        in charon; remember our events."""
        self.ike_event = self.daemon.wait_event(named("ike_sa_established"), timeout)
        self.child_event = self.daemon.wait_event(
            named("child_sa_installed", ike_spi=self.ike_spi), timeout)
        wait_until(lambda: self.agrees(self.ike_spi, self.child_event), timeout,
                   f"charon to show IKE_SA {self.ike_spi} established with our CHILD_SA")

    def agrees(self, ike_spi: str, child: Event) -> bool:
        """charon has `ike_spi` ESTABLISHED with an INSTALLED CHILD_SA of our SPIs, crossed."""
        sa = self.charon_sa(ike_spi)
        if sa is None or sa.get("state") != "ESTABLISHED":
            return False
        return any(c.get("state") == "INSTALLED" and c.get("spi-in") == child["spi_out"]
                   and c.get("spi-out") == child["spi_in"] for c in charon_children(sa))

    def both_show_only(self, ike_spi: str, spi_in: str, spi_out: str) -> bool:
        """Our status and charon's list-sas each show exactly this IKE_SA and CHILD_SA."""
        ours = self.native_status()
        if [sa["ike_spi"] for sa in ours] != [ike_spi] or ours[0]["state"] != "ESTABLISHED":
            return False
        if [(c["spi_in"], c["spi_out"]) for c in ours[0]["children"]] != [(spi_in, spi_out)]:
            return False
        theirs = charon_ike_sas(self.charon)
        if [ike_spi_of(sa) for sa in theirs] != [ike_spi]:
            return False
        if theirs[0].get("state") != "ESTABLISHED":
            return False
        children = [(c.get("spi-in"), c.get("spi-out"), c.get("state"))
                    for c in charon_children(theirs[0])]
        return children == [(spi_out, spi_in, "INSTALLED")]


def count_log(charon: Charon, pattern: str) -> int:
    """Lines of charon's log matching `pattern` (a regular expression)."""
    regex = re.compile(pattern)
    if not charon.log_path.exists():
        return 0
    return sum(1 for line in charon.log_path.read_text(errors="replace").splitlines()
               if regex.search(line))


def assert_alive(daemon: NativeDaemon) -> None:
    if not daemon.alive():
        raise LabError(f"our daemon exited with {daemon.proc.returncode}:\n"
                       + daemon.log_text()[-3000:])
