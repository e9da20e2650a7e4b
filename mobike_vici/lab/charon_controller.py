"""The controller's lab: charon at both ends of the mobile topology, `mobike-vici run` beside
the mobile charon, and helpers to read its event stream and charon's SAs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.lab.topology import Mobile, mobile

REPO = Path(__file__).resolve().parents[2]  # a source checkout: the lab runs from one
PSK = "lab-only-secret-controller"
INNER = "10.88.0.1"
SNIPPET = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
TABLE = 4555


def read_events(path: Path) -> list[dict[str, Any]]:
    """A controller's JSON-lines event file so far; a line still being written is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def snippet_body() -> str:
    """The charon { } body of the shipped strongswan.d snippet, to put into the lab's conf."""
    text = SNIPPET.read_text()
    body = text[text.index("{") + 1:text.rindex("}")]
    return "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))


def gateway_conf(allowed: str = "", local: str = "192.0.2.2") -> str:
    """gw's swanctl.conf: responder for mob@lab with a virtual IP pool, PSK; ``allowed``:
    ``mobike { allowed_peer_prefixes }``."""
    mobike = f"mobike {{ allowed_peer_prefixes = {allowed} }}" if allowed else ""
    return f"""
connections {{ rw {{ version = 2
    local_addrs = {local}
    proposals = aes128-sha256-x25519
    pools = vpool
    local {{ auth = psk
        id = gw@lab }}
    remote {{ auth = psk
        id = mob@lab }}
    children {{ net {{ local_ts = 10.88.0.0/24
        esp_proposals = aes128-sha256 }} }} }} }}
pools {{ vpool {{ addrs = 10.99.0.0/24 }} }}
secrets {{ ike-lab {{ id-1 = gw@lab
    id-2 = mob@lab
    secret = {PSK} }} }}
{mobike}
"""


def mobile_conf(*, remote_ts: str = "10.88.0.0/24", hold_down: str = "2s",
                probe_interval: str = "200ms", probe_timeout: str = "300ms") -> str:
    return f"""
connections {{ home {{ version = 2
    remote_addrs = 192.0.2.2
    proposals = aes128-sha256-x25519
    vips = 0.0.0.0
    local {{ auth = psk
        id = mob@lab }}
    remote {{ auth = psk
        id = gw@lab }}
    children {{ net {{ remote_ts = {remote_ts}
        esp_proposals = aes128-sha256
        start_action = start }} }} }} }}
secrets {{ ike-lab {{ id-1 = gw@lab
    id-2 = mob@lab
    secret = {PSK} }} }}
mobike {{
    probe_interval = {probe_interval}
    probe_timeout = {probe_timeout}
    hold_down = {hold_down}
    prefer {{ primary {{ interface = m0
        cost = 0 }}
        backup {{ interface = m1
        cost = 10 }} }}
}}
"""


def full_tunnel_confs() -> tuple[str, str]:
    """(mob, gw) swanctl.conf of a full tunnel: 0.0.0.0/0 and ::/0, virtual IPs of both
    families (charon then installs ``::/0`` and ``0.0.0.0/0`` into its table 220)."""
    mob = mobile_conf(remote_ts="0.0.0.0/0, ::/0").replace("vips = 0.0.0.0",
                                                           "vips = 0.0.0.0, ::")
    gw = (gateway_conf()
          .replace("local_ts = 10.88.0.0/24", "local_ts = 0.0.0.0/0, ::/0")
          .replace("pools = vpool", "pools = vpool, vpool6")
          .replace("pools { vpool { addrs = 10.99.0.0/24 } }",
                   "pools { vpool { addrs = 10.99.0.0/24 }\n"
                   "    vpool6 { addrs = 2001:db8:99::/120 } }"))
    return mob, gw


@dataclass
class Setup:
    lab: Lab
    topo: Mobile
    gw: Charon
    mob: Charon
    conf: Path
    events: Path
    control: Path
    controller: subprocess.Popen[bytes] | None = None
    gw_controller: subprocess.Popen[bytes] | None = None

    # -- the controller -------------------------------------------------------------

    def start_controller(self, *extra_args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "mobike_vici", "run", "--load", "--config", str(self.conf),
                "--vici", self.mob.uri, "--events", str(self.events),
                "--control", str(self.control),
                "--strongswan-conf", str(self.mob.rundir / "strongswan.conf"), *extra_args]
        env = {"PYTHONPATH": str(REPO)}
        self.controller = self.lab.spawn(self.topo.mob, argv,
                                         self.lab.workdir / "controller.out", env=env)
        return self.controller

    def start_gw_controller(self, conf: Path) -> subprocess.Popen[bytes]:
        """A controller beside the gateway's charon (responder side: address policy)."""
        argv = [sys.executable, "-m", "mobike_vici", "run", "--load", "--config", str(conf),
                "--vici", self.gw.uri, "--events", str(self.gw_events),
                "--control", str(self.lab.workdir / "gw-ctl.sock"),
                "--strongswan-conf", str(self.gw.rundir / "strongswan.conf")]
        self.gw_controller = self.lab.spawn(self.topo.gw, argv,
                                            self.lab.workdir / "gw-controller.out",
                                            env={"PYTHONPATH": str(REPO)})
        return self.gw_controller

    @property
    def gw_events(self) -> Path:
        return self.lab.workdir / "gw-events.jsonl"

    def stop_controller(self) -> int | None:
        assert self.controller is not None
        return self.lab.stop(self.controller, grace=10.0)

    def kill_controller(self) -> None:
        assert self.controller is not None
        os.kill(self.controller.pid, signal.SIGKILL)
        self.controller.wait(timeout=10)

    def output(self) -> str:
        path = self.lab.workdir / "controller.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def event_list(self, path: Path | None = None) -> list[dict[str, Any]]:
        return read_events(path or self.events)

    def wait_event(self, name: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True,
                   timeout: float = 30.0, after: int = 0, path: Path | None = None
                   ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.event_list(path)[after:]:
                if ev.get("event") == name and pred(ev):
                    return ev
            if self.controller is not None and self.controller.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {name} event within {timeout}s; controller output:\n"
                             + self.output()[-3000:] + "\nevents:\n"
                             + "\n".join(json.dumps(e) for e in self.event_list()[-40:])
                             + "\ncharon:\n" + self.mob.log_text()[-3000:])

    # -- charon's view --------------------------------------------------------------

    def sa(self) -> dict[str, Any]:
        return self.mob.list_sas().get("home", {})

    def spi(self) -> str:
        sa = self.sa()
        return f"{sa.get('initiator-spi')}_{sa.get('responder-spi')}"

    def wait_local(self, addr: str | tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
        addrs = (addr,) if isinstance(addr, str) else addr
        deadline = time.monotonic() + timeout
        sa: dict[str, Any] = {}
        while time.monotonic() < deadline:
            sa = self.sa()
            if sa.get("local-host") in addrs and sa.get("state") == "ESTABLISHED":
                return sa
            time.sleep(0.1)
        raise AssertionError(f"charon not on {addr} within {timeout}s: {sa}\n"
                             + self.output()[-2000:] + "\n" + self.mob.log_text()[-3000:])

    def vip(self) -> str:
        vips = self.sa().get("local-vips", [])
        assert vips, f"no virtual IP: {self.sa()}"
        return str(vips[0])

    def tunnel_ping(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        vip = self.vip()
        while time.monotonic() < deadline:
            if self.topo.mob.ping(INNER, source=vip, wait=1.0):
                return True
        return False

    def our_rules_and_routes(self) -> str:
        rules = self.topo.mob.ip("rule", "show").stdout
        mine = [line for line in rules.splitlines() if str(TABLE) in line]
        routes = self.topo.mob.ip("route", "show", "table", str(TABLE), check=False).stdout
        return "\n".join(mine) + routes.strip()


def build(lab: Lab, *, mob_conf: str | None = None, gw_conf: str | None = None,
          prefer_best_path: bool = True, nat_backup: bool = False, mob_charon: str = ""
          ) -> Generator[Setup, None, None]:
    """``mob_charon``: settings after the snippet's in the mobile charon's section (a
    key set twice: the later wins)."""
    topo = mobile(lab, nat_backup=nat_backup)
    topo.gw.ip("addr", "add", f"{INNER}/32", "dev", "lo")
    extra = (snippet_body() if prefer_best_path else "") + mob_charon
    gw = start_charon(lab, topo.gw, name="gw")
    mob = start_charon(lab, topo.mob, name="mob", extra_charon=extra)
    gw_file = lab.workdir / "gw-swanctl.conf"
    gw_file.write_text(gw_conf or gateway_conf())
    gw.load_all(gw_file)
    conf = lab.workdir / "mob-swanctl.conf"
    conf.write_text(mob_conf or mobile_conf())
    setup = Setup(lab, topo, gw, mob, conf, lab.workdir / "events.jsonl",
                  lab.workdir / "ctl.sock")
    try:
        yield setup
    finally:
        for proc in (setup.controller, setup.gw_controller):
            if proc is not None:
                lab.stop(proc, grace=10.0)
        mob.stop()
        gw.stop()


__all__ = ["LabError", "Setup", "build", "full_tunnel_confs", "read_events", "snippet_body"]
