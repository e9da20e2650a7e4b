"""What the fault tests look at: the operator's routes and rules (which no crash and no
cleanup may touch), ours (which must be gone after a clean stop), and events after a mark."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mobike_vici.lab.native import NativeDaemon
from mobike_vici.lab.netns import LabError, Netns
from mobike_vici.net.steering import DEFAULT_TABLE, RTPROT_MOBIKE_VICI

OPERATOR_TABLE = "300"
OPERATOR_PREF = "2000"

# Routes and rules that are not the operator's: ours, charon's, the kernel's own.
_NOT_OPERATORS = (f"proto {RTPROT_MOBIKE_VICI}", f"table {DEFAULT_TABLE}",
                  "lookup 220", "table 220", "table local", "dev mvici", "dev ipsec",
                  "proto kernel", "fe80::", "ff00::", "multicast")


def add_operator_routing(ns: Netns, via: str, dev: str) -> None:
    """An operator's own table, route and rule, set before any daemon starts."""
    ns.ip("route", "add", "198.51.100.0/24", "via", via, "dev", dev, "table", OPERATOR_TABLE)
    ns.ip("route", "add", "203.0.113.0/24", "via", via, "dev", dev, "proto", "static")
    ns.ip("rule", "add", "to", "198.51.100.0/24", "lookup", OPERATOR_TABLE,
          "pref", OPERATOR_PREF)


def operator_view(ns: Netns) -> list[str]:
    """Every route (all tables) and rule that is not ours, charon's or the kernel's."""
    lines: list[str] = []
    for family in ("-4", "-6"):
        lines += ns.ip(family, "route", "show", "table", "all").stdout.splitlines()
        lines += ns.ip(family, "-d", "rule", "show").stdout.splitlines()
    kept = sorted(" ".join(line.replace("linkdown", "").split()) for line in lines)
    return [line for line in kept if line and not any(m in line for m in _NOT_OPERATORS)]


def ours(ns: Netns, protocol: int) -> list[str]:
    """Routes (all tables) and rules carrying ``protocol``."""
    out: list[str] = []
    for family in ("-4", "-6"):
        out += [line for line in ns.ip(family, "route", "show", "table", "all").stdout
                .splitlines() if f"proto {protocol} " in line + " "]
        out += [line for line in ns.ip(family, "-d", "rule", "show").stdout.splitlines()
                if f"proto {protocol}" in line]
    return out


def wait_new(daemon: NativeDaemon, mark: int, pred: Callable[[dict[str, Any]], bool],
             timeout: float = 30.0) -> dict[str, Any]:
    """The first event after index ``mark`` of the daemon's event file that matches."""
    deadline = time.monotonic() + timeout
    while True:
        daemon.events.poll()
        for event in daemon.events.events[mark:]:
            if pred(event):
                return event
        if not daemon.alive():
            raise LabError(f"daemon exited:\n{daemon.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            seen = [e.get("event") for e in daemon.events.events[mark:]]
            raise LabError(f"no matching event within {timeout}s; seen after mark: {seen}")
        time.sleep(0.05)


def is_event(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        return event.get("event") == name and all(
            str(event.get(k, "")).startswith(str(v)) for k, v in fields.items())
    return match
