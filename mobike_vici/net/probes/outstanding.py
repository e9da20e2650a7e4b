"""The bounded table of probes in flight, shared by both probers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

MAX_OUTSTANDING = 64
"""Default bound on probes in flight per prober; the oldest is forgotten first."""


@dataclass(frozen=True, slots=True)
class Sent:
    probe_id: int
    token: bytes
    sent: float


class Outstanding(Generic[K]):
    """Probes waiting for a reply; expired ones (older than `timeout`) are dropped."""

    def __init__(self, limit: int = MAX_OUTSTANDING, timeout: float = 5.0) -> None:
        self.limit = limit
        self.timeout = timeout
        self._table: OrderedDict[K, Sent] = OrderedDict()
        self.expired = 0

    def __len__(self) -> int:
        return len(self._table)

    def add(self, key: K, sent: Sent) -> None:
        self._expire(sent.sent)
        while len(self._table) >= self.limit:
            self._table.popitem(last=False)
            self.expired += 1
        self._table[key] = sent

    def pop(self, key: K, token: bytes, now: float) -> Sent | None:
        """The probe `key` if `token` matches and it has not expired, else None."""
        self._expire(now)
        entry = self._table.get(key)
        if entry is None or entry.token != token:
            return None
        del self._table[key]
        return entry

    def _expire(self, now: float) -> None:
        while self._table:
            key, entry = next(iter(self._table.items()))
            if now - entry.sent <= self.timeout:
                break
            del self._table[key]
            self.expired += 1
