"""Candidate paths of one IKE_SA (every local x peer address pair) and each one's health.

A path is keyed by its two addresses, not by ports: a NAT mapping or a switch to
port 4500 changes the ports of every path at once (``set_ports``), never the set.
Candidates pair addresses of one family only and leave out what policy excludes
(interface globs, local prefixes, peer addresses outside ``allowed_peer_prefixes``).
Health transitions live here; the path manager turns them into events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from ..config.mobike import MAX_PEER_ADDRESSES_PER_FAMILY, MobikePolicy
from ..types import Endpoint, IPAddress, Path

Key = tuple[IPAddress, IPAddress]  # (local address, peer address)

# RFC 6298 §2 gains for the smoothed RTT and its variation, as TCP uses them.
_ALPHA = 1 / 8
_BETA = 1 / 4
# An adaptive probe timeout never exceeds this: a path slower than 3 s is no uplink.
MAX_PROBE_TIMEOUT = 3.0
LOSS_WINDOW = 20
"""Probe outcomes kept per path for its loss ratio (the last this many probes)."""


class PathState(IntEnum):
    UNKNOWN = 0  # never probed (new, or its link just came back)
    PROBING = 1  # probed, no verdict yet
    UP = 2
    DOWN = 3


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """A local address and the interface it lives on (policy matches interface names)."""

    addr: IPAddress
    ifname: str


@dataclass(slots=True)
class RttEstimator:
    """Smoothed RTT and variation as TCP keeps them (RFC 6298), in seconds."""

    srtt: float | None = None
    rttvar: float = 0.0
    last: float | None = None
    """The newest sample: ``srtt`` lags it by many samples after a latency spike ends."""

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        self.last = rtt
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
        self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt

    def timeout(self, floor: float) -> float:
        """The configured timeout, stretched for a path that is simply slow."""
        if self.srtt is None:
            return floor
        return min(max(floor, self.srtt + 4 * self.rttvar), max(floor, MAX_PROBE_TIMEOUT))


@dataclass(slots=True)
class PathHealth:
    """What probes and the network told us about one path."""

    state: PathState = PathState.UNKNOWN
    rtt: RttEstimator = field(default_factory=RttEstimator)
    misses: int = 0  # consecutive
    last_success: float | None = None
    healthy_since: float | None = None  # first success after the last miss or failure
    last_probe: float | None = None  # when the latest probe left; None: probe at once
    in_flight: int = 0
    link_down: bool = False
    unusable_until: float | None = None  # the peer refused it (UNACCEPTABLE_ADDRESSES)
    down_reason: str | None = None
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=LOSS_WINDOW))
    """The last probes' fates (True: answered), for ``loss_ratio``."""

    def loss_ratio(self) -> float | None:
        """Share of the last ``LOSS_WINDOW`` probes that went unanswered; None: no probes."""
        if not self.outcomes:
            return None
        return sum(1 for ok in self.outcomes if not ok) / len(self.outcomes)

    def success(self, rtt: float | None, now: float) -> bool:
        """A reply (or a completed exchange) on this path; True when it just came up."""
        if rtt is not None:
            self.rtt.sample(rtt)
        self.misses = 0
        self.last_success = now
        if self.healthy_since is None:
            self.healthy_since = now
        if self.state == PathState.UP:
            return False
        self.state, self.down_reason = PathState.UP, None
        return True

    def miss(self, limit: int) -> bool:
        """An unanswered probe; True when the path just went down."""
        self.misses += 1
        self.healthy_since = None  # hold-down wants continuous health
        if self.misses >= limit and self.state != PathState.DOWN:
            self.state, self.down_reason = PathState.DOWN, "probe_timeout"
            return True
        return False

    def fail(self, reason: str) -> bool:
        """Down for a reason other than probes; True when it was not down already."""
        self.healthy_since = None
        if self.state == PathState.DOWN:
            return False
        self.state, self.down_reason = PathState.DOWN, reason
        return True

    def usable(self, now: float) -> bool:
        """Whether the path may be probed or chosen at all (DOWN paths may be probed)."""
        return not self.link_down and (self.unusable_until is None or now >= self.unusable_until)


class PathTable:
    """The candidate paths of one IKE_SA and their health, in a stable order.

    Order: local addresses as given, then peer addresses with the current one first;
    the ranking falls back to it, so equal paths keep their relative order.
    """

    def __init__(self, policy: MobikePolicy, local_port: int, remote_port: int) -> None:
        self.policy = policy
        self.local_port = local_port
        self.remote_port = remote_port
        self._locals: dict[IPAddress, str] = {}
        self._peers: list[IPAddress] = []
        self._down_links: set[str] = set()
        self._health: dict[Key, PathHealth] = {}

    # -- inputs -----------------------------------------------------------------------

    def set_local_addresses(self, addrs: Iterable[LocalAddress]) -> list[Key]:
        """Replace the local address set; returns the keys that are no longer candidates."""
        self._locals = {a.addr: a.ifname for a in addrs}
        return self._rebuild()

    def add_local_address(self, addr: LocalAddress) -> list[Key]:
        self._locals[addr.addr] = addr.ifname
        return self._rebuild()

    def remove_local_address(self, addr: IPAddress) -> list[Key]:
        self._locals.pop(addr, None)
        return self._rebuild()

    def set_peer_addresses(self, addrs: Iterable[IPAddress], current: IPAddress) -> list[Key]:
        """The peer's announced list plus the address it uses now (RFC 4555 §3.6).

        Linear in the list; at most MAX_PEER_ADDRESSES_PER_FAMILY of each family are
        kept besides ``current`` (whatever backend reported the list)."""
        peers: dict[IPAddress, None] = {current: None}
        kept = {4: 0, 6: 0}
        for a in addrs:
            if a in peers or kept[a.version] >= MAX_PEER_ADDRESSES_PER_FAMILY:
                continue
            kept[a.version] += 1
            peers[a] = None
        self._peers = list(peers)
        return self._rebuild()

    def set_link(self, ifname: str, up: bool) -> list[Key]:
        """Mark an interface up or down; returns the keys of the paths on it."""
        if up:
            self._down_links.discard(ifname)
        else:
            self._down_links.add(ifname)
        keys = [k for k in self._health if self._locals.get(k[0]) == ifname]
        for k in keys:
            self._health[k].link_down = not up
        return keys

    def set_ports(self, local_port: int, remote_port: int) -> None:
        self.local_port, self.remote_port = local_port, remote_port

    # -- queries ----------------------------------------------------------------------

    def candidate_keys(self) -> list[Key]:
        return list(self._health)

    def candidates(self) -> list[Path]:
        return [self.path(k) for k in self._health]

    def __contains__(self, key: object) -> bool:
        return key in self._health

    def health(self, key: Key) -> PathHealth:
        return self._health[key]

    def ifname(self, key: Key) -> str:
        return self._locals.get(key[0], "")

    def path(self, key: Key) -> Path:
        return Path(Endpoint(key[0], self.local_port), Endpoint(key[1], self.remote_port))

    def local_addresses(self) -> list[LocalAddress]:
        return [LocalAddress(a, i) for a, i in self._locals.items()]

    def peer_addresses(self) -> list[IPAddress]:
        return list(self._peers)

    @staticmethod
    def key_of(path: Path) -> Key:
        return (path.local.addr, path.remote.addr)

    # -- internals --------------------------------------------------------------------

    def _candidate_keys(self) -> list[Key]:
        out: list[Key] = []
        for local, ifname in self._locals.items():
            if self.policy.excludes_local(local, ifname):
                continue
            for peer in self._peers:
                if peer.version == local.version and self.policy.allows_peer(peer):
                    out.append((local, peer))
        return out

    def _rebuild(self) -> list[Key]:
        wanted = self._candidate_keys()
        keep = set(wanted)
        removed = [k for k in self._health if k not in keep]
        health: dict[Key, PathHealth] = {}
        for k in wanted:
            h = self._health.get(k)
            if h is None:
                h = PathHealth(link_down=self._locals[k[0]] in self._down_links)
            health[k] = h
        self._health = health
        return removed
