"""The engine's secondary indexes over its IKE_SA table: one deadline heap, per-peer
counts, and CHILD_SA lookups by unique ID and by the peer's SPI.

They are kept current by re-filing the SAs an engine call touched (``refile``), never
by walking the table, so the work per packet, per timer and per IKE_AUTH does not
grow with the number of SAs. Between two engine calls every SA in the table is filed
as it is now; ``tests/unit/core`` checks that against a full recount after every call.

The heap invalidates lazily: an SA whose deadline moved leaves its old entry behind,
which is skipped when it surfaces (its deadline or registration no longer matches);
stale entries are bounded (a rebuild when they outnumber the live ones).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..types import IPAddress
from .ike_sa import IkeSa, IkeState

PeerKey = tuple[str, IPAddress]
"""An authenticated peer as ``peer_load`` counts it: remote identity and address."""

_LIVE = (IkeState.ESTABLISHED, IkeState.REKEYING)

STALE_SLACK = 64
"""Stale heap entries allowed beyond the number of filed SAs before a rebuild."""


@dataclass(slots=True, eq=False)
class _Filed:
    """What the indexes hold about one SA, as of its last (re)filing."""

    sa: IkeSa
    order: int
    """Registration order: the table's own order, for callers that must keep it."""
    deadline: float | None = None
    peer: PeerKey | None = None
    """Counted under this peer while live (ESTABLISHED or REKEYING), else None."""
    children: int = 0
    uids: tuple[int, ...] = ()
    peer_spis: tuple[bytes, ...] = ()
    remote_id: str | None = None


class SaIndex:
    def __init__(self, keepalive_interval: float, half_open_timeout: float) -> None:
        self._keepalive = keepalive_interval
        self._half_open = half_open_timeout
        self._filed: dict[bytes, _Filed] = {}
        """By our SPI, like the engine's table."""
        self._next_order = 0
        self._heap: list[tuple[float, int, bytes]] = []
        """(deadline, order, our SPI); an entry that disagrees with ``_filed`` is stale."""
        self._peers: dict[PeerKey, list[int]] = {}
        """[live IKE_SAs, their CHILD_SAs] per peer; no entry at zero."""
        self._by_uid: dict[int, bytes] = {}
        self._by_peer_spi: dict[bytes, dict[bytes, None]] = {}
        """The peer's CHILD_SA SPI -> our SPIs of the IKE_SAs holding such a CHILD_SA."""
        self._by_remote_id: dict[str, dict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    # ------------------------------------------------------------------ filing

    def add(self, sa: IkeSa) -> None:
        """A newly registered SA (after any SA filed under the same SPI was removed)."""
        spi = sa.our_spi
        old = self._filed.get(spi)
        if old is not None:
            self._unfile(spi, old)
        self._filed[spi] = _Filed(sa, self._next_order)
        self._next_order += 1
        self.refile(sa)

    def remove(self, sa: IkeSa) -> None:
        spi = sa.our_spi
        filed = self._filed.get(spi)
        if filed is not None and filed.sa is sa:
            self._unfile(spi, filed)
            del self._filed[spi]

    def refile(self, sa: IkeSa) -> None:
        """File ``sa`` as it is now (a no-op for an SA not registered)."""
        spi = sa.our_spi
        filed = self._filed.get(spi)
        if filed is None or filed.sa is not sa:
            return
        deadline = sa.deadline(self._keepalive, self._half_open)
        if deadline != filed.deadline:
            filed.deadline = deadline
            if deadline is not None:
                self._push(deadline, filed.order, spi)
        peer = (sa.remote_id, sa.path.remote.addr) if sa.state in _LIVE else None
        children = len(sa.children)
        if peer != filed.peer or children != filed.children:
            self._count(filed.peer, -1, -filed.children)
            self._count(peer, 1, children)
            filed.peer, filed.children = peer, children
        uids = tuple(sa.children)
        if uids != filed.uids:
            for uid in filed.uids:
                if uid not in sa.children and self._by_uid.get(uid) == spi:
                    del self._by_uid[uid]
            for uid in uids:
                self._by_uid[uid] = spi
            filed.uids = uids
        peer_spis = tuple(c.spi_out for c in sa.children.values())
        if peer_spis != filed.peer_spis:
            _unlink(self._by_peer_spi, filed.peer_spis, spi)
            _link(self._by_peer_spi, peer_spis, spi)
            filed.peer_spis = peer_spis
        if sa.remote_id != filed.remote_id:
            if filed.remote_id is not None:
                _unlink(self._by_remote_id, (filed.remote_id,), spi)
            _link(self._by_remote_id, (sa.remote_id,), spi)
            filed.remote_id = sa.remote_id

    def _unfile(self, spi: bytes, filed: _Filed) -> None:
        self._count(filed.peer, -1, -filed.children)
        for uid in filed.uids:
            if self._by_uid.get(uid) == spi:
                del self._by_uid[uid]
        _unlink(self._by_peer_spi, filed.peer_spis, spi)
        if filed.remote_id is not None:
            _unlink(self._by_remote_id, (filed.remote_id,), spi)

    def _count(self, peer: PeerKey | None, ike: int, children: int) -> None:
        if peer is None:
            return
        counts = self._peers.setdefault(peer, [0, 0])
        counts[0] += ike
        counts[1] += children
        if counts[0] == 0:
            del self._peers[peer]

    # ------------------------------------------------------------------ timers

    def _push(self, deadline: float, order: int, spi: bytes) -> None:
        heapq.heappush(self._heap, (deadline, order, spi))
        if len(self._heap) > 2 * len(self._filed) + STALE_SLACK:
            self._heap = [(f.deadline, f.order, s) for s, f in self._filed.items()
                          if f.deadline is not None]
            heapq.heapify(self._heap)

    def _live_top(self) -> tuple[float, _Filed] | None:
        heap = self._heap
        while heap:
            deadline, order, spi = heap[0]
            filed = self._filed.get(spi)
            if filed is not None and filed.order == order and filed.deadline == deadline:
                return deadline, filed
            heapq.heappop(heap)
        return None

    def next_deadline(self) -> float | None:
        """The earliest deadline of any filed SA."""
        while (top := self._live_top()) is not None:
            deadline, filed = top
            # Cheap insurance: the top SA's deadline is recomputed, so one that moved
            # later without being re-filed costs a re-file here, not a wrong answer.
            if filed.sa.deadline(self._keepalive, self._half_open) == deadline:
                return deadline
            self.refile(filed.sa)
        return None

    def due(self, now: float) -> list[IkeSa]:
        """The SAs whose deadline has come, in registration order; they leave the heap
        (the caller re-files them after their timer work)."""
        due: list[_Filed] = []
        while (top := self._live_top()) is not None and top[0] <= now:
            heapq.heappop(self._heap)
            filed = top[1]
            filed.deadline = None
            due.append(filed)
        due.sort(key=lambda f: f.order)
        return [f.sa for f in due]

    # ------------------------------------------------------------------ lookups

    def peer_load(self, sa: IkeSa) -> tuple[int, int]:
        """(other live IKE_SAs, CHILD_SAs of all of them and ``sa``) of ``sa``'s peer:
        the same remote identity at the same address. ``sa`` itself is counted as it is
        now; the others as filed."""
        key = (sa.remote_id, sa.path.remote.addr)
        ike, children = self._peers.get(key, (0, 0))
        filed = self._filed.get(sa.our_spi)
        if filed is not None and filed.sa is sa:
            if filed.peer == key:
                ike -= 1
                children -= filed.children
            children += len(sa.children)
        return ike, children

    def holder_of_child(self, unique_id: int) -> IkeSa | None:
        spi = self._by_uid.get(unique_id)
        filed = self._filed.get(spi) if spi is not None else None
        return filed.sa if filed is not None and unique_id in filed.sa.children else None

    def holders_of_peer_spi(self, peer_spi: bytes) -> list[IkeSa]:
        """The SAs filed with a CHILD_SA whose outbound SPI is ``peer_spi``, in
        registration order (the caller checks their children: filed, not live)."""
        return self._in_order(self._by_peer_spi.get(peer_spi, {}))

    def with_remote_id(self, remote_id: str) -> list[IkeSa]:
        """The SAs filed with ``remote_id``, in registration order."""
        return self._in_order(self._by_remote_id.get(remote_id, {}))

    def _in_order(self, spis: dict[bytes, None]) -> list[IkeSa]:
        filed = [self._filed[s] for s in spis if s in self._filed]
        filed.sort(key=lambda f: f.order)
        return [f.sa for f in filed]


_K = TypeVar("_K", bytes, str)


def _link(table: dict[_K, dict[bytes, None]], keys: Iterable[_K], spi: bytes) -> None:
    for key in keys:
        table.setdefault(key, {})[spi] = None


def _unlink(table: dict[_K, dict[bytes, None]], keys: Iterable[_K], spi: bytes) -> None:
    for key in keys:
        holders = table.get(key)
        if holders is not None:
            holders.pop(spi, None)
            if not holders:
                del table[key]
