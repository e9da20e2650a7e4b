"""Faults a router namespace can inject beyond a blackhole, and what a soak run samples.

- ``RouterFaults``: in the router (e.g. the mobile topology's ``rtr``), a guard that
  drops the tunnel's inner prefixes in the clear (so a ping that leaks outside the
  tunnel never counts as an answer), random loss (the kernels here have no netem:
  ``numgen random mod 100 < P drop``), and a carrier NAT's rebinding (a new port range
  and a conntrack flush: the next packet gets a new public port).
- ``proc_sample``: a process's resident memory and open descriptors, from /proc.
- ``slope_per_hour``: the least-squares trend of such samples.
- ``routing_snapshot``: a namespace's rules, routes of every table and links, to
  compare before a daemon started and after it stopped.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from mobike_vici.lab.netns import Lab, Netns

TABLE = "mvsoak"


class RouterFaults:
    """Loss and NAT rebinding in ``router``; ``install`` first (idempotent per router)."""

    def __init__(self, lab: Lab, router: Netns) -> None:
        self.lab = lab
        self.router = router
        self.loss_percent = 0

    def install(self, inner_prefixes: Sequence[str]) -> None:
        """The guard against inner prefixes in the clear, and an empty loss chain."""
        guard = "\n".join(f"        ip saddr {p} drop\n        ip daddr {p} drop"
                          for p in inner_prefixes)
        script = f"""
table inet {TABLE} {{
    chain loss {{
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
