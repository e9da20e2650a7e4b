"""In-memory virtual-IP pools: leases keyed by peer identity, like charon's mem_pool.

A peer that comes back gets its old address: releasing a lease only marks it
offline, and the next acquire by the same identity revives it. Fresh addresses
are handed out in order from ``first``; when the range is used up, the oldest
offline lease of *another* identity is taken over. Memory is bounded by the
range size: at most one lease record per address, plus one extra online
reference per concurrent SA of the same identity and peer.

Pure and synchronous; callers serialize access.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from ..config.model import PoolConfig
from ..types import IPAddress

# charon refuses ranges that differ in more than the last 32 bits.
MAX_POOL_SIZE = 2**32


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease as ``swanctl --list-pools --leases`` shows it."""

    identity: str
    """The peer identity the address is (or was) leased to."""
    address: IPAddress
    """The leased virtual IP."""
    online: bool
    """True while an SA uses it; offline leases are kept for the identity's return."""


@dataclass(slots=True)
class _OnlineRef:
    offset: int
    peer: Hashable | None


@dataclass(slots=True)
class _Entry:
    online: list[_OnlineRef] = field(default_factory=list)
    offline: list[int] = field(default_factory=list)


class AddressPool:
    """Leases addresses ``first..last`` (inclusive) to identities.

    ``acquire`` tries, in charon's order: an offline lease of the identity; an
    online lease of the identity from the same ``peer`` (a re-authentication or
    a second SA from the same host shares the address); a fresh address; the
    oldest offline lease of another identity. It returns None when all fail.
    """

    def __init__(self, name: str, first: IPAddress, last: IPAddress) -> None:
        if first.version != last.version:
            raise ValueError(f"pool {name}: {first} and {last} are of different families")
        size = int(last) - int(first) + 1
        if size <= 0:
            raise ValueError(f"pool {name}: {first} is above {last}")
        if size > MAX_POOL_SIZE:
            raise ValueError(f"pool {name}: range {first}-{last} is too large")
        self.name = name
        self.first = first
        self.last = last
        self._size = size
        self._unused = 0  # offsets 0.._unused-1 have been handed out at least once
        # Insertion order is the scan order for take-overs (charon: hash table order).
        self._leases: dict[str, _Entry] = {}

    @classmethod
    def from_config(cls, config: PoolConfig) -> AddressPool:
        return cls(config.name, config.first, config.last)

    @property
    def size(self) -> int:
        """How many addresses the pool can lease."""
        return self._size

    @property
    def online(self) -> int:
        """Online lease references (an address shared by two SAs counts twice, as in charon)."""
        return sum(len(e.online) for e in self._leases.values())

    @property
    def offline(self) -> int:
        """Leases kept for identities that are not connected."""
        return sum(len(e.offline) for e in self._leases.values())

    def _address(self, offset: int) -> IPAddress:
        return ipaddress.ip_address(int(self.first) + offset)

    def _offset(self, address: IPAddress) -> int | None:
        if address.version != self.first.version:
            return None
        offset = int(address) - int(self.first)
        return offset if 0 <= offset < self._size else None

    def _family_ok(self, requested: IPAddress | None) -> bool:
        return requested is None or requested.version == self.first.version

    def acquire(
        self,
        identity: str,
        *,
        peer: Hashable | None = None,
        requested: IPAddress | None = None,
    ) -> IPAddress | None:
        """Lease an address to ``identity``; None if the pool is exhausted or the wrong family.

        ``peer`` identifies the remote host (e.g. its IKE address) so that a
        second SA from the same host may share the online lease; ``requested``
        is the address from the CP request (``0.0.0.0``/``::`` for any).
        """
        for step in (self.acquire_existing, self.acquire_new, self.acquire_reassigned):
            address = step(identity, peer=peer, requested=requested)
            if address is not None:
                return address
        return None

    def acquire_existing(
        self,
        identity: str,
        *,
        peer: Hashable | None = None,
        requested: IPAddress | None = None,
    ) -> IPAddress | None:
        """Revive the identity's offline lease, or share its online one from the same peer."""
        entry = self._leases.get(identity)
        if entry is None or not self._family_ok(requested):
            return None
        if entry.offline:
            offset = entry.offline.pop(0)
            entry.online.append(_OnlineRef(offset, peer))
            return self._address(offset)
        if peer is None:
            return None
        wanted = None
        if requested is not None and not requested.is_unspecified:
            wanted = self._offset(requested)
            if wanted is None:
                return None
        for ref in entry.online:
            if ref.peer == peer and (wanted is None or ref.offset == wanted):
                entry.online.append(_OnlineRef(ref.offset, peer))
                return self._address(ref.offset)
        return None

    def acquire_new(
        self,
        identity: str,
        *,
        peer: Hashable | None = None,
        requested: IPAddress | None = None,
    ) -> IPAddress | None:
        """Hand out the next never-used address."""
        if self._unused >= self._size or not self._family_ok(requested):
            return None
        offset = self._unused
        self._unused += 1
        self._leases.setdefault(identity, _Entry()).online.append(_OnlineRef(offset, peer))
        return self._address(offset)

    def acquire_reassigned(
        self,
        identity: str,
        *,
        peer: Hashable | None = None,
        requested: IPAddress | None = None,
    ) -> IPAddress | None:
        """Take over the first offline lease of any identity (the pool is full)."""
        if not self._family_ok(requested):
            return None
        offset = None
        for owner, entry in list(self._leases.items()):
            if entry.offline:
                offset = entry.offline.pop(0)
            if not entry.online and not entry.offline:
                del self._leases[owner]
            if offset is not None:
                break
        if offset is None:
            return None
        self._leases.setdefault(identity, _Entry()).online.append(_OnlineRef(offset, peer))
        return self._address(offset)

    def release(self, identity: str, address: IPAddress | None = None) -> bool:
        """Drop one online reference; the lease goes offline when none is left.

        Without ``address`` the identity's most recent online lease is released.
        Returns False if the identity holds no such online lease.
        """
        entry = self._leases.get(identity)
        if entry is None or not entry.online:
            return False
        if address is None:
            index = len(entry.online) - 1
        else:
            offset = self._offset(address)
            matches = [i for i, ref in enumerate(entry.online) if ref.offset == offset]
            if not matches:
                return False
            index = matches[0]
        offset = entry.online.pop(index).offset
        if all(ref.offset != offset for ref in entry.online):
            entry.offline.append(offset)
        return True

    def leases(self) -> list[Lease]:
        """All leases, online ones of an identity first, then its offline ones."""
        out: list[Lease] = []
        for identity, entry in self._leases.items():
            seen: set[int] = set()
            for ref in entry.online:
                if ref.offset not in seen:
                    seen.add(ref.offset)
                    out.append(Lease(identity, self._address(ref.offset), True))
            out.extend(Lease(identity, self._address(o), False) for o in entry.offline)
        return out


def acquire_from(
    pools: Sequence[AddressPool],
    identity: str,
    *,
    peer: Hashable | None = None,
    requested: IPAddress | None = None,
) -> tuple[AddressPool, IPAddress] | None:
    """Lease from a connection's ``pools`` in charon's order.

    Every pool is first asked for an existing lease, then for a new address,
    then for a take-over, so a returning peer finds its old lease even when it
    lives in a later pool.
    """
    steps = (
        AddressPool.acquire_existing,
        AddressPool.acquire_new,
        AddressPool.acquire_reassigned,
    )
    for step in steps:
        for pool in pools:
            address = step(pool, identity, peer=peer, requested=requested)
            if address is not None:
                return pool, address
    return None
