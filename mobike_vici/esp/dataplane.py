"""The userspace data plane's SA database: CHILD_SAs by inbound SPI and by traffic selector,
their outer endpoints, per-SA counters, and the byte/packet lifetimes.

No I/O and no clock: the daemon's ESP adapter (``daemon/esp_io.py``) feeds TUN
packets to :meth:`DataPlane.protect` and ESP packets to :meth:`DataPlane.unprotect`
and sends or writes what comes back. The SA state (sequence numbers, replay
window, counters) lives in :class:`~mobike_vici.esp.sa.EspSaPair` and is never
rebuilt after installation: a MOBIKE move (:meth:`DataPlane.move`) only swaps
the outer endpoints, so nothing restarts and no packet leaves on the old path
once the move is recorded (packets are protected and addressed in one step).

Outbound lookup (:class:`_Outbound`): SAs whose remote selectors are single hosts are
found by destination, the rest by a scan newest first; every change touches one SA, so
neither a packet nor an install costs more with more SAs.

Rekeying: a new CHILD_SA with ``rekey_of`` becomes the outbound SA at once when
we initiated the rekey; as the responder we keep sending on the old one until
the peer shows it has the new one (a packet arrives on it) or the old one is
deleted, because the initiator installs its new inbound SA only when our
CREATE_CHILD_SA response arrives. Inbound, both SAs work until the old one
is deleted, so nothing in flight is lost.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from ..types import Path
from .errors import EspError, SequenceExhausted
from .packet import NEXT_HEADER_NONE, decapsulate, encapsulate, read_spi
from .replay import DEFAULT_WINDOW
from .sa import ChildSaLike, EspSaPair
from .selector import address_key, flow_of, parse_selector

__all__ = [
    "ChildEntry",
    "DataPlane",
    "Limits",
    "Request",
    "RequestKind",
]

_INF = float("inf")

LINGER = 5.0
"""Seconds a deleted CHILD_SA's inbound SA still decrypts: the peer may have sent on it
until it learned of the delete (a rekey collision's loser is deleted by one side while
the other still sends on it). Inbound only: nothing is sent on it any more."""

CACHE_LIMIT = 4096
"""Outbound selector lookups remembered per flow key; the cache is dropped when full."""


@dataclass(frozen=True, slots=True)
class Limits:
    """swanctl's byte and packet lifetimes of a CHILD_SA; 0 means no limit."""

    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0


class LimitsConfig(Protocol):
    """The fields of a ``ChildConfig`` that :meth:`Limits.of` reads."""

    @property
    def rekey_bytes(self) -> int: ...
    @property
    def life_bytes(self) -> int: ...
    @property
    def rekey_packets(self) -> int: ...
    @property
    def life_packets(self) -> int: ...


def limits_of(config: LimitsConfig) -> Limits:
    return Limits(config.rekey_bytes, config.life_bytes, config.rekey_packets,
                  config.life_packets)


class RequestKind(IntEnum):
    REKEY = 1
    """A soft limit (or the sequence number space) ran out: rekey the CHILD_SA."""
    DELETE = 2
    """A hard limit ran out: the SA carries nothing more; delete the CHILD_SA."""


@dataclass(frozen=True, slots=True)
class Request:
    kind: RequestKind
    unique_id: int


class ChildInstalledLike(ChildSaLike, Protocol):
    """The fields of ``core.events.ChildSaInstalled`` the data plane reads."""

    @property
    def ike_spi(self) -> str: ...
    @property
    def conn(self) -> str: ...
    @property
    def child(self) -> str: ...
    @property
    def unique_id(self) -> int: ...
    @property
    def path(self) -> Path: ...
    @property
    def encap(self) -> bool: ...
    @property
    def local_ts(self) -> tuple[str, ...]: ...
    @property
    def remote_ts(self) -> tuple[str, ...]: ...
    @property
    def rekey_of(self) -> int | None: ...


class ChildEntry:
    """One installed CHILD_SA: its SAs, selectors, outer path and lifetime state."""

    __slots__ = (
        "_in_cache",
        "active",
        "addr_only",
        "child",
        "conn",
        "encap",
        "expired",
        "hard_bytes",
        "hard_packets",
        "ike_spi",
        "last_in",
        "limits",
        "local_ts",
        "pair",
        "path",
        "rekey_of",
        "remote_ts",
        "replaced",
        "soft_bytes",
        "soft_packets",
        "ts_failures",
        "unique_id",
    )

    def __init__(self, event: ChildInstalledLike, limits: Limits, replay_window: int) -> None:
        self.unique_id = event.unique_id
        self.ike_spi = event.ike_spi
        self.conn = event.conn
        self.child = event.child
        self.rekey_of = event.rekey_of
        self.pair = EspSaPair.from_child(event, replay_window)
        self.path = event.path
        self.encap = event.encap
        self.local_ts = tuple(parse_selector(t) for t in event.local_ts)
        self.remote_ts = tuple(parse_selector(t) for t in event.remote_ts)
        self.addr_only = all(s.addr_only for s in self.local_ts + self.remote_ts)
        self.limits = limits
        self.active = True
        """Used for outbound traffic (False: a rekey responder's SA the peer may not have yet)."""
        self.replaced = False
        """A newer CHILD_SA replaces this one: no more rekey requests for it."""
        self.expired = False
        self.ts_failures = 0
        """Inbound packets that decrypted but did not match the selectors."""
        self.last_in: float | None = None
        """When the last packet from the peer decrypted here (the caller's clock; None: never)."""
        self.soft_bytes: float = limits.rekey_bytes or _INF
        self.soft_packets: float = limits.rekey_packets or _INF
        self.hard_bytes: float = limits.life_bytes or _INF
        self.hard_packets: float = limits.life_packets or _INF
        self._in_cache: dict[bytes, bool] = {}

    def inbound_allowed(self, inner: bytes) -> bool:
        """Does a decrypted packet fit (source in remote TS, destination in local TS)?"""
        if self.addr_only:
            cached = self._in_cache.get(address_key(inner))
            if cached is not None:
                return cached
        flow = flow_of(inner)
        if flow is None:
            return False
        version, src, dst, proto, sport, dport, key = flow
        ok = (any(s.matches(version, src, proto, sport) for s in self.remote_ts)
              and any(s.matches(version, dst, proto, dport) for s in self.local_ts))
        if self.addr_only:
            if len(self._in_cache) >= CACHE_LIMIT:
                self._in_cache.clear()
            self._in_cache[key] = ok
        return ok

    def outbound_matches(self, version: int, src: int, dst: int, proto: int,
                         sport: int | None, dport: int | None) -> bool:
        return (any(s.matches(version, src, proto, sport) for s in self.local_ts)
                and any(s.matches(version, dst, proto, dport) for s in self.remote_ts))

    def counters(self) -> dict[str, int]:
        inbound, outbound = self.pair.inbound.counters, self.pair.outbound.counters
        return {
            "bytes_in": inbound.bytes,
            "packets_in": inbound.packets,
            "bytes_out": outbound.bytes,
            "packets_out": outbound.packets,
            "replay_failures": inbound.replay_failures,
            "integrity_failures": inbound.integrity_failures,
            "decode_failures": inbound.decode_failures,
            "ts_failures": self.ts_failures,
        }


def _newest_first(entry: ChildEntry) -> int:
    return -entry.unique_id


def _take_out(entries: list[ChildEntry], entry: ChildEntry) -> None:
    """Remove ``entry`` from a list kept newest first: found by bisection on its unique
    ID, not by comparing it with every SA before it (a gateway's rekey wave would
    otherwise cost the square of its SAs)."""
    at = bisect_left(entries, -entry.unique_id, key=_newest_first)
    if at < len(entries) and entries[at] is entry:
        del entries[at]
    else:  # not filed where its ID says: cannot happen, but never leave it behind
        entries.remove(entry)


class _Outbound:
    """The CHILD_SAs that carry outbound traffic, found by destination.

    An SA whose remote selectors are single hosts (a gateway's SAs towards virtual IPs)
    sits under each of those hosts: a lookup there costs the same whatever the number of
    SAs. The others sit in one list scanned newest first; with several matches the
    newest SA wins, as the peer's rekeys expect.
    """

    def __init__(self) -> None:
        self.hosts: dict[tuple[int, int], list[ChildEntry]] = {}
        self.wide: list[ChildEntry] = []
        self.members: set[int] = set()
        self.not_addr_only = 0

    @staticmethod
    def _hosts_of(entry: ChildEntry) -> set[tuple[int, int]] | None:
        if not entry.remote_ts or any(s.lo != s.hi for s in entry.remote_ts):
            return None
        return {(s.version, s.lo) for s in entry.remote_ts}

    def add(self, entry: ChildEntry) -> None:
        if entry.unique_id in self.members:
            return
        self.members.add(entry.unique_id)
        hosts = self._hosts_of(entry)
        if hosts is None:
            insort(self.wide, entry, key=_newest_first)
        else:
            for host in hosts:
                insort(self.hosts.setdefault(host, []), entry, key=_newest_first)
        if not entry.addr_only:
            self.not_addr_only += 1

    def discard(self, entry: ChildEntry) -> None:
        if entry.unique_id not in self.members:
            return
        self.members.discard(entry.unique_id)
        hosts = self._hosts_of(entry)
        if hosts is None:
            _take_out(self.wide, entry)
        else:
            for host in hosts:
                bucket = self.hosts[host]
                _take_out(bucket, entry)
                if not bucket:
                    del self.hosts[host]
        if not entry.addr_only:
            self.not_addr_only -= 1

    def find(self, version: int, src: int, dst: int, proto: int, sport: int | None,
             dport: int | None) -> ChildEntry | None:
        found = None
        for entry in self.hosts.get((version, dst), ()):
            if entry.outbound_matches(version, src, dst, proto, sport, dport):
                found = entry
                break
        for entry in self.wide:
            if found is not None and entry.unique_id < found.unique_id:
                break
            if entry.outbound_matches(version, src, dst, proto, sport, dport):
                return entry
        return found


class DataPlane:
    """Every CHILD_SA of one daemon as the data plane sees it.

    ``random_bytes`` supplies CBC IVs (unpredictable, RFC 3602); AES-GCM uses
    the sequence number as its IV (unique per key).
    """

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self._random = random_bytes
        self._by_spi: dict[int, ChildEntry] = {}
        self._by_id: dict[int, ChildEntry] = {}
        self._outbound = _Outbound()
        """Active entries by destination; the newest match wins."""
        self._successors: dict[int, set[int]] = {}
        """unique_id -> the CHILD_SAs that rekey it (they take over when it goes)."""
        self._by_ike: dict[str, set[int]] = {}
        """IKE SPI pair -> the unique_ids of its CHILD_SAs."""
        self._cache: dict[bytes, ChildEntry | None] = {}
        self._requests: list[Request] = []
        self._lingering: dict[int, tuple[ChildEntry, float]] = {}
        """Deleted CHILD_SAs by inbound SPI, with the time their inbound SA goes away."""
        self.unknown_spi = 0
        """Inbound ESP packets for no SA we have."""
        self.no_policy = 0
        """Outbound packets no CHILD_SA's selectors cover (dropped, never sent in clear)."""
        self.dropped_out = 0
        """Outbound packets a matching SA could not protect (expired, sequence exhausted)."""
        self.drops: dict[str, int] = {}
        """Inbound drops since start by ``packet_dropped`` reason (survives SA deletion)."""

    # --- the SA database ---------------------------------------------------------

    def install(self, event: ChildInstalledLike, limits: Limits = Limits(),
                replay_window: int = DEFAULT_WINDOW) -> ChildEntry:
        """Add a new CHILD_SA; an event for a unique_id we have is a move (see :meth:`move`)."""
        known = self._by_id.get(event.unique_id)
        if known is not None:
            self.move_child(event.unique_id, event.path, event.encap)
            return known
        entry = ChildEntry(event, limits, replay_window)
        old = self._by_id.get(event.rekey_of) if event.rekey_of is not None else None
        if old is not None:
            old.replaced = True
            entry.last_in = old.last_in  # the peer's traffic goes on on the new SA
            self._successors.setdefault(old.unique_id, set()).add(entry.unique_id)
            # Responder of the rekey: the peer learns of the new SA from our answer.
            entry.active = event.initiator
            if entry.active:
                old.active = False
                self._sync(old)
        self._by_id[entry.unique_id] = entry
        self._by_spi[entry.pair.inbound.spi] = entry
        self._by_ike.setdefault(entry.ike_spi, set()).add(entry.unique_id)
        self._sync(entry)
        return entry

    def remove(self, unique_id: int, now: float | None = None,
               linger: float = LINGER) -> ChildEntry | None:
        """Forget a deleted CHILD_SA; activates a rekey successor still waiting for this.

        With ``now``, its inbound SA keeps decrypting until ``now + linger``.
        """
        entry = self._by_id.pop(unique_id, None)
        if entry is None:
            return None
        spi = entry.pair.inbound.spi
        if self._by_spi.get(spi) is entry:
            del self._by_spi[spi]
            if now is not None and linger > 0:
                self._expire_lingering(now)
                self._lingering.pop(spi, None)  # re-inserted last: the dict stays in time order
                self._lingering[spi] = (entry, now + linger)
        siblings = self._by_ike.get(entry.ike_spi)
        if siblings is not None:
            siblings.discard(unique_id)
            if not siblings:
                del self._by_ike[entry.ike_spi]
        self._sync(entry)
        for uid in self._successors.pop(unique_id, ()):
            other = self._by_id.get(uid)
            if other is not None:
                other.active = True
                self._sync(other)
        return entry

    def _expire_lingering(self, now: float) -> None:
        """Drop the expired ones from the front: insertion order is expiry order when
        every CHILD_SA lingers as long (LINGER), so this stops at the first live one
        instead of walking every SA deleted in the last LINGER seconds on each delete.
        One that lingers past a longer-lived one ahead of it is only dropped later; the
        lookup checks the time itself."""
        lingering = self._lingering
        while lingering:
            spi = next(iter(lingering))
            if lingering[spi][1] > now:
                return
            del lingering[spi]

    def get(self, unique_id: int) -> ChildEntry | None:
        return self._by_id.get(unique_id)

    def entries(self) -> list[ChildEntry]:
        return list(self._by_id.values())

    def children_of(self, ike_spi: str) -> list[ChildEntry]:
        """The CHILD_SAs of one IKE_SA (its own work only, whatever the number of SAs)."""
        return [self._by_id[uid] for uid in self._by_ike.get(ike_spi, ())]

    def packets_of(self, ike_spi: str) -> list[tuple[int, int, int]]:
        """(unique_id, packets in, packets out) of each CHILD_SA of one IKE_SA."""
        out = []
        for uid in self._by_ike.get(ike_spi, ()):
            pair = self._by_id[uid].pair
            out.append((uid, pair.inbound.counters.packets, pair.outbound.counters.packets))
        return out

    def move_child(self, unique_id: int, path: Path, encap: bool | None = None) -> bool:
        """New outer endpoints (and encapsulation) for one CHILD_SA; True if anything changed.

        Sequence numbers, replay window and counters stay as they are.
        """
        entry = self._by_id.get(unique_id)
        if entry is None:
            return False
        changed = entry.path != path or (encap is not None and encap != entry.encap)
        entry.path = path
        if encap is not None:
            entry.encap = encap
        return changed

    def move(self, ike_spi: str, path: Path, encap: bool | None = None) -> int:
        """Move every CHILD_SA of one IKE_SA; returns how many changed."""
        return sum(self.move_child(uid, path, encap)
                   for uid in list(self._by_ike.get(ike_spi, ())))

    def reparent(self, old_ike_spi: str, new_ike_spi: str) -> None:
        """An IKE_SA rekey hands its CHILD_SAs to the new IKE_SA."""
        moved = self._by_ike.pop(old_ike_spi, set())
        for uid in moved:
            self._by_id[uid].ike_spi = new_ike_spi
        if moved:
            self._by_ike.setdefault(new_ike_spi, set()).update(moved)

    @property
    def has_requests(self) -> bool:
        return bool(self._requests)

    def take_requests(self) -> list[Request]:
        """Rekeys and deletes the lifetimes asked for since the last call."""
        out, self._requests = self._requests, []
        return out

    def _sync(self, entry: ChildEntry) -> None:
        """Put ``entry`` in or out of the outbound lookup after a change (one SA's work)."""
        if entry.active and not entry.expired and self._by_id.get(entry.unique_id) is entry:
            self._outbound.add(entry)
        else:
            self._outbound.discard(entry)
        self._cache.clear()

    # --- packets -------------------------------------------------------------------

    def lookup(self, inner: bytes) -> ChildEntry | None:
        """The CHILD_SA whose selectors cover an outbound packet, or None."""
        addr_only = self._outbound.not_addr_only == 0
        if addr_only:
            try:
                return self._cache[address_key(inner)]
            except KeyError:
                pass
        flow = flow_of(inner)
        if flow is None:
            return None
        version, src, dst, proto, sport, dport, key = flow
        found = self._outbound.find(version, src, dst, proto, sport, dport)
        if addr_only:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def protect(self, inner: bytes) -> tuple[ChildEntry, bytes] | None:
        """Encrypt an outbound packet: (entry to send it on, ESP packet), or None to drop it."""
        entry = self.lookup(inner)
        if entry is None:
            self.no_policy += 1
            return None
        sa = entry.pair.outbound
        try:
            esp = encapsulate(sa, inner, None if sa.transform.sequence_iv else self._random)
        except SequenceExhausted:
            self._request(entry, RequestKind.REKEY)
            self._expire(entry)
            self.dropped_out += 1
            return None
        except EspError:
            self.dropped_out += 1
            return None
        counters = sa.counters
        if counters.bytes >= entry.soft_bytes or counters.packets >= entry.soft_packets:
            self._limit_reached(entry)
        return entry, esp

    def unprotect(self, packet: bytes,
                  now: float | None = None) -> tuple[ChildEntry | None, bytes | None]:
        """Check and decrypt an inbound ESP packet: (its entry, inner IP packet).

        ``inner`` is None when the packet is dropped (counted on the entry, or
        in ``unknown_spi`` when there is no entry) or when it was a dummy.
        """
        try:
            spi = read_spi(packet)
        except EspError:
            self.unknown_spi += 1
            self._dropped("malformed")
            return None, None
        entry = self._by_spi.get(spi)
        if entry is None:
            lingering = self._lingering.get(spi)
            if lingering is None or now is None or lingering[1] <= now:
                self.unknown_spi += 1
                self._dropped("unknown_spi")
                return None, None
            entry = lingering[0]
        if entry.expired:
            self._dropped("sa_expired")
            return entry, None
        sa = entry.pair.inbound
        try:
            next_header, inner = decapsulate(sa, packet)
        except EspError as exc:
            self._dropped(exc.reason)
            return entry, None
        if now is not None:
            entry.last_in = now
        if not entry.active and entry.unique_id in self._by_id:
            # The peer sends on the new SA, so it has installed it: we may too.
            entry.active = True
            self._sync(entry)
        counters = sa.counters
        if counters.bytes >= entry.soft_bytes or counters.packets >= entry.soft_packets:
            self._limit_reached(entry)
        if next_header == NEXT_HEADER_NONE:
            return entry, None
        if not entry.inbound_allowed(inner):
            entry.ts_failures += 1
            self._dropped("ts_mismatch")
            return entry, None
        return entry, inner

    def _dropped(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # --- lifetimes -------------------------------------------------------------------

    def _limit_reached(self, entry: ChildEntry) -> None:
        inbound, outbound = entry.pair.inbound.counters, entry.pair.outbound.counters
        used_bytes = max(inbound.bytes, outbound.bytes)
        used_packets = max(inbound.packets, outbound.packets)
        if used_bytes >= entry.hard_bytes or used_packets >= entry.hard_packets:
            self._request(entry, RequestKind.DELETE)
            self._expire(entry)
            return
        if not entry.replaced:
            self._request(entry, RequestKind.REKEY)
        # Next stop: the hard limits (and each soft limit fires once).
        entry.soft_bytes = entry.hard_bytes
        entry.soft_packets = entry.hard_packets

    def _expire(self, entry: ChildEntry) -> None:
        if not entry.expired:
            entry.expired = True
            self._sync(entry)

    def _request(self, entry: ChildEntry, kind: RequestKind) -> None:
        request = Request(kind, entry.unique_id)
        if request not in self._requests:
            self._requests.append(request)
        if kind == RequestKind.REKEY:
            entry.replaced = True
