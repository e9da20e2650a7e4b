"""Probe overhead as the wire sees it: nftables counters in the router, per uplink address.

The counters sit in their own table in rtr's forward hook, ahead of the lab's blackhole
table, one rule per (direction, address, class); every rule ends in ``accept`` so a
packet lands in exactly one class (accept ends only this table's chain). Classes:

- ``ike``: UDP 500, or UDP 4500 with the non-ESP marker (four zero bytes)
- ``keepalive``: NAT-T keepalive (UDP 4500, one byte of payload)
- ``esp``: ESP, raw or in UDP 4500
- ``icmp_echo``: ICMP/ICMPv6 echo request or reply (the controller's probes)
- ``udp_echo``: UDP 4555 (the UDP echo prober)
- ``other``: anything else to or from that address

``out`` is mob -> gw (source = the uplink address), ``in`` gw -> mob. In a window
without faults or rekeys, ``ike`` + ``keepalive`` + ``icmp_echo`` + ``udp_echo`` are the
probes (liveness checks, path probes, DPD), so ``probe_pps`` counts those.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

TABLE = "mvbench"
PROBE_CLASSES = ("ike", "keepalive", "icmp_echo", "udp_echo")
CLASSES = (*PROBE_CLASSES, "esp", "other")
UDP_ECHO_PORT = 4555


class Runner(Protocol):
    def run(self, *argv: str, check: bool = ..., timeout: float = ...,
            input_text: str | None = ...) -> Any: ...


def _rules(addr: str, direction: str) -> list[str]:
    v6 = ":" in addr
    fam = "ip6" if v6 else "ip"
    who = f"{fam} {'saddr' if direction == 'out' else 'daddr'} {addr}"
    port = "dport" if direction == "out" else "sport"
    icmp = ("icmpv6 type { echo-request, echo-reply }" if v6
            else "icmp type { echo-request, echo-reply }")
    body = [
        ("keepalive", f"udp {port} 4500 udp length 9"),
        ("ike", f"udp {port} 500"),
        ("ike", f"udp {port} 4500 @th,64,32 0"),
        ("esp", f"udp {port} 4500"),
        ("esp", "meta l4proto esp"),
        ("icmp_echo", icmp),
        ("udp_echo", f"udp {port} {UDP_ECHO_PORT}"),
        ("other", ""),
    ]
    return [f'{who} {match} counter accept comment "{direction}|{addr}|{cls}"'.replace("  ", " ")
            for cls, match in body]


def ruleset(addrs: Iterable[str]) -> str:
    """The nft script for counters on ``addrs`` (pure)."""
    lines = [f"table inet {TABLE} {{", "  chain forward {",
             "    type filter hook forward priority -10; policy accept;"]
    for addr in addrs:
        for direction in ("out", "in"):
            lines += [f"    {rule}" for rule in _rules(addr, direction)]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def parse_counters(nft_json: str) -> dict[tuple[str, str, str], int]:
    """Packets per (direction, address, class) from ``nft -j list table`` (pure)."""
    out: dict[tuple[str, str, str], int] = {}
    for item in json.loads(nft_json).get("nftables", []):
        rule = item.get("rule")
        if not isinstance(rule, dict) or rule.get("table") != TABLE:
            continue
        parts = str(rule.get("comment", "")).split("|")
        if len(parts) != 3:
            continue
        packets = sum(int(e["counter"]["packets"]) for e in rule.get("expr", [])
                      if isinstance(e, dict) and "counter" in e)
        key = (parts[0], parts[1], parts[2])
        out[key] = out.get(key, 0) + packets
    return out


def rates(before: Mapping[tuple[str, str, str], int], after: Mapping[tuple[str, str, str], int],
          seconds: float) -> dict[str, Any]:
    """Packets per second per address, direction and class, and the probe share (pure)."""
    if seconds <= 0:
        raise ValueError("a window must last")
    deltas: dict[str, dict[str, dict[str, int]]] = {}
    for (direction, addr, cls), count in after.items():
        side = deltas.setdefault(addr, {}).setdefault(direction, {})
        side[cls] = side.get(cls, 0) + count - before.get((direction, addr, cls), 0)
    per: dict[str, Any] = {}
    for addr in sorted(deltas):
        out: dict[str, Any] = {}
        for direction in ("out", "in"):
            side = deltas[addr].get(direction, {})
            out[f"probe_pps_{direction}"] = round(
                sum(side.get(c, 0) for c in PROBE_CLASSES) / seconds, 2)
            # Only the classes that saw packets, to keep the JSON readable.
            out[direction] = {c: round(side[c] / seconds, 2) for c in CLASSES if side.get(c)}
        per[addr] = out
    return per


class Counters:
    """The counters installed in one router namespace."""

    def __init__(self, router: Runner, addrs: Iterable[str]) -> None:
        self.router = router
        self.addrs = list(addrs)
        router.run("nft", "delete", "table", "inet", TABLE, check=False)
        router.run("nft", "-f", "-", input_text=ruleset(self.addrs))

    def read(self) -> dict[tuple[str, str, str], int]:
        proc = self.router.run("nft", "-j", "list", "table", "inet", TABLE)
        return parse_counters(proc.stdout)

    def window(self, seconds: float, active: str | None = None) -> dict[str, Any]:
        """Rates over the next ``seconds`` (nothing else should happen meanwhile)."""
        before, t0 = self.read(), time.monotonic()
        time.sleep(seconds)
        after, t1 = self.read(), time.monotonic()
        per = rates(before, after, t1 - t0)
        return {"window_s": round(t1 - t0, 2), "active": active,
                "probe_pps_total": round(sum(s["probe_pps_out"] + s["probe_pps_in"]
                                             for s in per.values()), 2),
                "per_address": per}
