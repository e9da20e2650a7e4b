"""What exchange handlers may use of the engine: config, randomness, events, pools, IDs.

Kept apart from the engine so exchanges/ never import engine.py (one-way imports).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config.model import Config, ConnectionConfig, Unique
from ..ikev2.constants import ProtocolId
from ..ikev2.proposals import ProposalSpec, absent_default, parse_proposals
from ..types import Endpoint, IPAddress, Path
from .cookies import CookieJar
from .events import Event
from .ike_sa import IkeState
from .pool import AddressPool
from .sa_index import SaIndex

if TYPE_CHECKING:
    from .ike_sa import IkeSa
from .settings import EngineSettings

RandomBytes = Callable[[int], bytes]


class Context:
    def __init__(
        self,
        config: Config,
        settings: EngineSettings,
        random_bytes: RandomBytes,
        source_address: Callable[[IPAddress], IPAddress | None],
    ) -> None:
        self.config = config
        self.settings = settings
        self.random_bytes = random_bytes
        self.source_address = source_address
        self.events: deque[Event] = deque(maxlen=settings.max_events)
        self._next_unique_id = 1
        self.sas: dict[bytes, IkeSa] = {}
        """Every IKE_SA by our SPI (the engine's table, shared read-only with exchanges)."""
        self.index = SaIndex(settings.keepalive_interval, settings.half_open_timeout)
        """The table's deadline heap, peer counts and CHILD_SA lookups (the engine's)."""
        self.touched: dict[int, IkeSa] = {}
        """SAs changed during the current engine call, by id(): re-filed when it ends."""
        self.orphan_spis: deque[bytes] = deque(maxlen=64)
        """Peer SPIs named in a Delete before we knew them (bounded): a CHILD_SA that
        shows up with one later (its rekey response was late) is deleted at once."""
        self.new_sas: list[IkeSa] = []
        """IKE_SAs created by a rekey, for the engine to register."""
        self.used_child_spis: set[bytes] = set()
        self.used_ike_spis: set[bytes] = set()
        self.pools = {p.name: AddressPool.from_config(p) for p in config.pools}
        self.cookies = CookieJar(random_bytes, settings.cookie_secret_lifetime)
        self.wall_offset: float | None = None
        """UNIX time minus ``now`` (Engine.set_wall_clock): certificate validity is
        judged at ``now + wall_offset``; None until the caller tells."""
        self.local_addresses: tuple[IPAddress, ...] = ()
        """Our usable addresses (Engine.set_local_addresses), announced per MOBIKE policy."""

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def new_unique_id(self) -> int:
        uid = self._next_unique_id
        self._next_unique_id += 1
        return uid

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.random_bytes(8)
            if spi != bytes(8) and spi not in self.used_ike_spis:
                self.used_ike_spis.add(spi)
                return spi

    def release_ike_spi(self, spi: bytes) -> None:
        self.used_ike_spis.discard(spi)

    def new_child_spi(self) -> bytes:
        while True:
            spi = self.random_bytes(4)
            # SPIs 0..255 are reserved by the IANA (RFC 4303 §2.1).
            if int.from_bytes(spi, "big") > 255 and spi not in self.used_child_spis:
                self.used_child_spis.add(spi)
                return spi

    def release_child_spi(self, spi: bytes) -> None:
        self.used_child_spis.discard(spi)

    def touch(self, sa: IkeSa) -> None:
        """``sa`` changed (its deadline, state, path or CHILD_SAs may have): the engine
        re-files it in the index when the current call ends. Exchanges call this for
        any SA other than the one they run on and its successors."""
        self.touched[id(sa)] = sa

    def sa_named(self, ike_spi: str) -> IkeSa:
        """The IKE_SA named ``SPIi_SPIr`` (touched: the caller is about to change it);
        KeyError when there is none."""
        # The table is keyed by our SPI, one of the two halves: two lookups instead of a
        # walk over every SA on each call.
        spi_i, sep, spi_r = ike_spi.partition("_")
        if sep:
            for half in (spi_i, spi_r):
                try:
                    sa = self.sas.get(bytes.fromhex(half))
                except ValueError:
                    break
                if sa is not None and sa.spi_str == ike_spi:
                    self.touch(sa)
                    return sa
        for sa in self.sas.values():
            if sa.spi_str == ike_spi:
                self.touch(sa)
                return sa
        raise KeyError(ike_spi)

    def older_twins(self, sa: IkeSa) -> list[IkeSa]:
        """The other set-up IKE_SAs of ``sa``'s connection with its identities, which
        INITIAL_CONTACT replaces (none when the connection's ``unique`` is never)."""
        if sa.conn.unique == Unique.NEVER:
            return []
        return [other for other in self.index.with_remote_id(sa.remote_id)
                if other is not sa and other.conn.name == sa.conn.name
                and other.state != IkeState.CONNECTING
                and (other.local_id, other.remote_id) == (sa.local_id, sa.remote_id)]

    def peer_load(self, sa: IkeSa) -> tuple[int, int]:
        """(other live IKE_SAs, CHILD_SAs of all of them and ``sa``) of ``sa``'s
        authenticated peer: the same remote identity at the same address. Counted as
        SAs are added, removed and changed; asked only in authenticated exchanges that
        would add one."""
        return self.index.peer_load(sa)

    def random_fraction(self) -> float:
        """A deterministic-per-source float in [0, 1): for rekey jitter."""
        return int.from_bytes(self.random_bytes(4), "big") / 2**32


def ike_proposals(conn: ConnectionConfig) -> tuple[ProposalSpec, ...]:
    return conn.proposals or parse_proposals("default", ProtocolId.IKE)


def esp_proposals(specs: tuple[ProposalSpec, ...]) -> tuple[ProposalSpec, ...]:
    return specs or absent_default(ProtocolId.ESP)


def addr_matches(specs: tuple[str, ...], addr: IPAddress) -> bool:
    """Does ``addr`` fall under swanctl's local_addrs/remote_addrs (%any, IPs, CIDR, ranges)?"""
    for spec in specs:
        text = spec.strip()
        if text in ("%any", "%any4", "%any6", "", "0.0.0.0", "::"):
            if text == "%any4" and addr.version != 4:
                continue
            if text == "%any6" and addr.version != 6:
                continue
            return True
        try:
            if "/" in text:
                if addr in ipaddress.ip_network(text, strict=False):
                    return True
            elif "-" in text:
                low, high = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
                if low.version == addr.version and int(low) <= int(addr) <= int(high):
                    return True
            elif ipaddress.ip_address(text) == addr:
                return True
        except ValueError:
            continue  # a host name: the native core does not resolve names
    return False


def candidates(config: Config, path: Path) -> list[ConnectionConfig]:
    """Connections whose addresses fit ``path``, exact matches before wildcards (charon
    prefers the most specific ike_cfg)."""
    def specific(specs: tuple[str, ...]) -> bool:
        return not any(s.strip() in ("%any", "%any4", "%any6", "") for s in specs)

    found = [
        conn for conn in config.connections
        if conn.version in (0, 2)
        and addr_matches(conn.local_addrs, path.local.addr)
        and addr_matches(conn.remote_addrs, path.remote.addr)
    ]
    found.sort(key=lambda c: -(specific(c.local_addrs) + specific(c.remote_addrs)))
    return found


def initial_path(ctx: Context, conn: ConnectionConfig) -> Path:
    """Where an IKE_SA we initiate for ``conn`` starts: its first remote address, from
    its first local one (or the route's source address for %any). ValueError when
    neither is known."""
    remote = _first_address(conn.remote_addrs)
    if remote is None:
        raise ValueError(f"connection {conn.name}: no remote address to initiate to")
    local = _first_address(conn.local_addrs) or ctx.source_address(remote)
    if local is None:
        raise ValueError(f"connection {conn.name}: no route to {remote}")
    return Path(Endpoint(local, conn.local_port), Endpoint(remote, conn.remote_port))


def _first_address(specs: tuple[str, ...]) -> IPAddress | None:
    for spec in specs:
        try:
            return ipaddress.ip_address(spec.strip())
        except ValueError:
            continue
    return None
