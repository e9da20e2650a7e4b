"""Faults a router namespace can inject beyond a blackhole, and what a soak run samples.

- ``RouterFaults``: in the router (e.g. the mobile topology's ``rtr``), a guard that
  drops the tunnel's inner prefixes in the clear (so a ping that leaks outside the
  tunnel never counts as an answer), random loss (the kernels here have no netem:
  ``numgen random mod 100 < P drop``), a carrier NAT's rebinding (a new port range and
  a conntrack flush: the next packet gets a new public port), and a latency spike (one
  uplink's packets routed through a userspace delay line, ``lab.delay_line``).
- ``proc_sample``: a process's resident memory and open descriptors, from /proc.
- ``slope_per_hour``: the least-squares trend of such samples.
- ``routing_snapshot``: a namespace's rules, routes of every table and links, to
  compare before a daemon started and after it stopped.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mobike_vici.lab.netns import Lab, LabError, Netns

TABLE = "mvsoak"
DELAY_DEVICE = "mvdelay"
DELAY_TABLE = "77"
DELAY_RULE_PREF = "90"
DELAY_MARK = "0x4d4c"
DELAY_ADDRESS = "169.254.77.1/32"


class RouterFaults:
    """Loss and NAT rebinding in ``router``; ``install`` first (idempotent per router)."""

    def __init__(self, lab: Lab, router: Netns) -> None:
        self.lab = lab
        self.router = router
        self.loss_percent = 0
        self.delayed_if: str | None = None

    def install(self, inner_prefixes: Sequence[str]) -> None:
        """The guard against inner prefixes in the clear, and an empty loss chain."""
        guard = "\n".join(f"        ip saddr {p} drop\n        ip daddr {p} drop"
                          for p in inner_prefixes)
        script = f"""
table inet {TABLE} {{
    chain loss {{
    }}
    chain untracked {{
        type filter hook prerouting priority raw; policy accept;
    }}
    chain forward {{
        type filter hook forward priority -5; policy accept;
{guard}
        jump loss
    }}
}}
"""
        self.router.run("nft", "-f", "-", input_text=script)

    def loss_on(self, percent: int) -> None:
        """Drop ``percent`` % of every forwarded packet, each direction, at random."""
        if not 0 < percent < 100:
            raise ValueError(f"loss of {percent}%")
        self.loss_off()
        self.router.run("nft", "add", "rule", "inet", TABLE, "loss", "numgen", "random",
                        "mod", "100", "<", str(percent), "drop")
        self.loss_percent = percent

    def loss_off(self) -> None:
        self.router.run("nft", "flush", "chain", "inet", TABLE, "loss")
        self.loss_percent = 0

    def install_delay_line(self, delay: float) -> None:
        """Start the delay line (``delay`` seconds) and its routing table; no traffic
        goes through it before ``latency_on``."""
        self.lab.spawn(self.router, [sys.executable, "-m", "mobike_vici.lab.delay_line",
                                     DELAY_DEVICE, str(delay)],
                       self.lab.workdir / f"{self.router.name}-delay-line.out")
        deadline = time.monotonic() + 10.0
        while self.router.run("ip", "link", "show", DELAY_DEVICE, check=False).returncode:
            if time.monotonic() > deadline:
                raise LabError(f"no {DELAY_DEVICE} in {self.router.name} after 10 s")
            time.sleep(0.05)
        # Packets come back out of the device with their original source: the strict
        # reverse-path filter (routes back through the uplink) would drop them, and so
        # would the loose one on a device without an IPv4 address.
        self.router.sysctl(f"net.ipv4.conf.{DELAY_DEVICE}.rp_filter", "2")
        self.router.ip("addr", "add", DELAY_ADDRESS, "dev", DELAY_DEVICE)
        for family in ("-4", "-6"):
            self.router.ip(family, "route", "replace", "default", "dev", DELAY_DEVICE,
                           "table", DELAY_TABLE)

    def latency_on(self, in_if: str) -> None:
        """Everything the router receives on ``in_if`` (both families) crosses the delay
        line before it is forwarded; the other direction is not delayed."""
        self.latency_off()
        # Untracked on the way into the line, tracked (and NATed) on the way out of it:
        # else conntrack would bind the flow to the delay device, without the NAT. A mark,
        # not ``iif``, picks the table: the reverse-path check of the answers looks up
        # their source as if they had come in on the uplink, and must not find the line.
        self.router.run("nft", "add", "rule", "inet", TABLE, "untracked", "iifname",
                        in_if, "notrack", "meta", "mark", "set", DELAY_MARK)
        for family in ("-4", "-6"):
            self.router.ip(family, "rule", "add", "fwmark", DELAY_MARK, "lookup",
                           DELAY_TABLE, "pref", DELAY_RULE_PREF)
        self.delayed_if = in_if

    def latency_off(self) -> None:
        if self.delayed_if is None:
            return
        for family in ("-4", "-6"):
            self.router.ip(family, "rule", "del", "pref", DELAY_RULE_PREF, check=False)
        self.router.run("nft", "flush", "chain", "inet", TABLE, "untracked")
        self.delayed_if = None

    def nat_rebind(self, out_if: str, source: str, rng: random.Random) -> tuple[int, int]:
        """The NAT for ``source`` maps to a fresh port range and forgets every mapping:
        a flow's public port changes with its next packet. Returns the new range."""
        low = rng.randrange(20000, 60000, 1000)
        ports = (low, low + 999)
        self.lab.masquerade(self.router, out_if, ports=ports, source=source)
        self.lab.flush_conntrack(self.router)
        return ports


def proc_sample(pid: int) -> tuple[int, int] | None:
    """(resident KiB, open descriptors) of ``pid``; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]), fds
    return None


def slope_per_hour(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, in value per hour."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 3600.0


def routing_snapshot(ns: Netns) -> dict[str, list[str]]:
    """Rules and routes (every table, both families) and link names of ``ns``, sorted."""
    out: dict[str, list[str]] = {}
    for fam in ("-4", "-6"):
        out[f"rules{fam}"] = sorted(ns.ip(fam, "rule", "show").stdout.splitlines())
        routes = ns.ip(fam, "route", "show", "table", "all").stdout.splitlines()
        out[f"routes{fam}"] = sorted(line.strip() for line in routes if line.strip())
    links = ns.ip("-o", "link", "show").stdout.splitlines()
    out["links"] = sorted(line.split(":")[1].strip().split("@")[0] for line in links)
    return out


def snapshot_diff(before: dict[str, list[str]], after: dict[str, list[str]]
                  ) -> dict[str, dict[str, list[str]]]:
    """What ``after`` has that ``before`` had not (``added``), and the reverse."""
    diff: dict[str, dict[str, list[str]]] = {}
    for key in sorted(set(before) | set(after)):
        b, a = set(before.get(key, [])), set(after.get(key, []))
        if a != b:
            diff[key] = {"added": sorted(a - b), "removed": sorted(b - a)}
    return diff
