"""Every address the controller knows for the peer of one connection, sans I/O.

charon learns a peer's addresses in IKE_AUTH and later INFORMATIONALs
(ADDITIONAL_IP4/IP6_ADDRESS, RFC 4555 §3.6) and tells nobody: VICI's ``list-sas``
shows only the address in use. The controller gathers what it can see instead:
the connection's configured ``remote_addrs`` that are addresses (``config``), every
endpoint charon reports for an IKE_SA of it (``charon``: list-sas, ike-updown,
ike-update), and the peer addresses charon's MOBIKE path checks name in its log
(``mobike``). The path table of each IKE_SA of the connection gets them all, so a
path charon may take by itself (the gateway's IPv6 address, say) is probed too.

Kept by connection, not by IKE_SA: a reinitiated IKE_SA talks to the same peer.
Only connections charon initiates belong here (a responder's connection has many
peers). Addresses are never dropped while the connection exists: one that stops
working is a down path, not a wrong address. Bounded: ``max_per_family`` addresses
of each family per connection, first come first kept (the rest are ignored).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config.mobike import MAX_PEER_ADDRESSES_PER_FAMILY
from ..types import IPAddress

SOURCES = ("config", "charon", "mobike")
"""Where an address came from (see the module docstring), for the event stream."""


class PeerAddresses:
    """The address book: ``learn`` returns what was new, ``of`` the whole list."""

    def __init__(self, max_per_family: int = MAX_PEER_ADDRESSES_PER_FAMILY) -> None:
        self.max_per_family = max_per_family
        self._by_conn: dict[str, dict[IPAddress, str]] = {}

    def learn(self, conn: str, addrs: Iterable[IPAddress], source: str) -> list[IPAddress]:
        """Add ``addrs`` (from ``source``) to ``conn``'s list; the ones it did not have.

        Unspecified, loopback, multicast and link-local addresses are never a peer's
        address for IKE (charon may list a link-local one it cannot use)."""
        known = self._by_conn.setdefault(conn, {})
        new: list[IPAddress] = []
        for addr in addrs:
            if addr in known or not _usable(addr):
                continue
            if sum(1 for a in known if a.version == addr.version) >= self.max_per_family:
                continue
            known[addr] = source
            new.append(addr)
        return new

    def of(self, conn: str) -> list[IPAddress]:
        """Every address known for ``conn``'s peer, in the order learnt."""
        return list(self._by_conn.get(conn, ()))

    def source(self, conn: str, addr: IPAddress) -> str | None:
        return self._by_conn.get(conn, {}).get(addr)

    def retain(self, conns: Iterable[str]) -> None:
        """Forget the connections not in ``conns`` (a reload removed them)."""
        keep = set(conns)
        for conn in [c for c in self._by_conn if c not in keep]:
            del self._by_conn[conn]

    def __contains__(self, conn: object) -> bool:
        return conn in self._by_conn


def _usable(addr: IPAddress) -> bool:
    return not (addr.is_unspecified or addr.is_loopback or addr.is_multicast
                or addr.is_link_local)
