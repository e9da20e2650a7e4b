"""SourcePins: the path a move leaves keeps its uplink for the traffic still sent from it.

The controller steers charon by a host route to the peer in its table (``steering``),
which every packet to that peer follows, whatever its source. Until charon has moved
and the CHILD_SAs followed (on kernel-libipsec the peer rekeys them after the update),
charon still sends ESP from the old address; a same-family move routes it out of the new
uplink, where a reverse-path filter or a NAT drops it, and a lost MOBIKE check or rekey
message turns that into seconds (charon retries a path check after 2.5 s, a stock peer
its rekey after 4 s). A pin is one rule before the steering rule,
``from OLD_SRC to PEER lookup T``, and one route in T by the old uplink: only packets
that name the old source match (charon's own lookup for a new path names none).

Tables ``PIN_TABLE_FIRST`` .. ``+ MAX_PINS - 1``, one per pin, rules at
``PIN_PRIORITY``, all with ``RTPROT_MOBIKE_VICI``: what a crashed run left is found by
those. Synchronous, on the steering's IPRoute (``PolicyRouting.ipr``: each IPRoute
costs four descriptors): call it from that executor thread in async code.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..types import IPAddress
from .numbers import MAX_PINS, PIN_PRIORITY, PIN_TABLE_FIRST, RTPROT_MOBIKE_VICI

PIN_TABLES = range(PIN_TABLE_FIRST, PIN_TABLE_FIRST + MAX_PINS)


class SourcePins:
    """Owner of the pin rules and tables in the namespace of ``ipr`` (not its owner)."""

    def __init__(self, ipr: IPRoute) -> None:
        self._ipr = ipr
        self._pins: dict[tuple[IPAddress, IPAddress], int] = {}  # (src, peer) -> table

    @property
    def pinned(self) -> list[tuple[IPAddress, IPAddress]]:
        return sorted(self._pins, key=lambda k: (k[0].version, str(k[0]), str(k[1])))

    def pin(self, src: IPAddress, peer: IPAddress, *, via: IPAddress | None, dev: str
            ) -> bool:
        """Keep packets from ``src`` to ``peer`` on ``dev`` (via ``via``); False when no
        table is free. Replaces an earlier pin of the same pair. OSError: refused."""
        if src.version != peer.version or (via is not None and via.version != peer.version):
            raise ValueError(f"{src}, {peer} and {via} are not of one IP version")
        key = (src, peer)
        table = self._pins.get(key)
        if table is None:
            free = [t for t in PIN_TABLES if t not in self._pins.values()]
            if not free:
                return False
            table = free[0]
        found = [msg["index"] for msg in self._ipr.get_links() if msg.get("IFLA_IFNAME") == dev]
        if not found:
            raise LookupError(f"no such device: {dev}")
        family = _family(peer)
        spec: dict[str, Any] = {"dst": f"{peer}/{peer.max_prefixlen}", "oif": found[0],
                                "table": table, "proto": RTPROT_MOBIKE_VICI, "family": family}
        if via is not None:
            spec["gateway"] = str(via)
        try:
            self._ipr.route("replace", **spec)
            if key not in self._pins:
                self._ipr.rule("add", family=family, table=table, priority=PIN_PRIORITY,
                               protocol=RTPROT_MOBIKE_VICI, src=str(src),
                               src_len=src.max_prefixlen, dst=str(peer),
                               dst_len=peer.max_prefixlen)
        except NetlinkError as exc:
            self._flush(table, family)
            raise OSError(exc.code, f"pin {src} -> {peer} via {dev}: {exc}") from exc
        self._pins[key] = table
        return True

    def unpin(self, src: IPAddress, peer: IPAddress) -> bool:
        """Remove the pin of the pair; False when there was none."""
        table = self._pins.pop((src, peer), None)
        if table is None:
            return False
        family = _family(peer)
        try:
            self._ipr.rule("del", family=family, table=table, priority=PIN_PRIORITY,
                           src=str(src), src_len=src.max_prefixlen, dst=str(peer),
                           dst_len=peer.max_prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                raise
        self._flush(table, family)
        return True

    def clear(self) -> int:
        """Remove every pin rule and pin route of ours (a crashed run's too); how many."""
        self._pins.clear()
        removed = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_rules(family=family):
                table = msg.get("FRA_TABLE") or msg["table"]
                if msg.get("FRA_PRIORITY") == PIN_PRIORITY and table in PIN_TABLES \
                        and msg.get("FRA_PROTOCOL") == RTPROT_MOBIKE_VICI:
                    self._ipr.rule("del", family=family, table=table, priority=PIN_PRIORITY,
                                   src=msg.get("FRA_SRC"), src_len=msg["src_len"],
                                   dst=msg.get("FRA_DST"), dst_len=msg["dst_len"])
                    removed += 1
            for table in PIN_TABLES:
                removed += self._flush(table, family)
        return removed

    def _flush(self, table: int, family: int) -> int:
        removed = 0
        for msg in self._ipr.route("dump", family=family, table=table):
            if msg.get("RTA_TABLE") != table or msg["proto"] != RTPROT_MOBIKE_VICI:
                continue
            dst = msg.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            try:
                self._ipr.route("del", family=family, table=table,
                                dst=f"{dst}/{msg['dst_len']}")
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ESRCH):
                    raise
                continue
            removed += 1
        return removed


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6
