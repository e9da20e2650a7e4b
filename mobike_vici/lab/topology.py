"""The lab's topologies as small functions: two hosts, a mobile host with two uplinks, NAT.

Addresses are documentation prefixes (RFC 5737 / RFC 3849) and private
10/8 ranges, so traffic stays inside the namespaces a Lab creates.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobike_vici.lab.netns import Lab, Netns

TABLE_BASE = 100  # the lab's per-uplink source table for charon in mob: TABLE_BASE + index
UNREACHABLE_METRIC = 4096


@dataclass(frozen=True)
class TwoHosts:
    """host_a 192.0.2.1 / 2001:db8::1 and host_b 192.0.2.2 / 2001:db8::2 on one link (eth0)."""

    host_a: Netns
    host_b: Netns
    a4: str = "192.0.2.1"
    b4: str = "192.0.2.2"
    a6: str = "2001:db8::1"
    b6: str = "2001:db8::2"
    ifname: str = "eth0"


def two_hosts(lab: Lab) -> TwoHosts:
    """Topology (a): two hosts on one veth link, IPv4 and IPv6."""
    a = lab.netns("host_a")
    b = lab.netns("host_b")
    topo = TwoHosts(a, b)
    lab.link(a, topo.ifname, b, topo.ifname)
    a.add_address(topo.ifname, f"{topo.a4}/24")
    b.add_address(topo.ifname, f"{topo.b4}/24")
    a.add_address(topo.ifname, f"{topo.a6}/64")
    b.add_address(topo.ifname, f"{topo.b6}/64")
    return topo


@dataclass(frozen=True)
class Routed:
    """Two hosts with a router between them, IPv4 only.

    ```
    host_a eth0 10.1.0.2/24 ---- r0 10.1.0.1  rtr  r1 192.0.2.1/24 ---- eth0 192.0.2.2 host_b
    ```
    """

    host_a: Netns
    rtr: Netns
    host_b: Netns
    a4: str = "10.1.0.2"
    b4: str = "192.0.2.2"
    ifname: str = "eth0"


def routed(lab: Lab) -> Routed:
    """Topology (d): one router between two hosts (e.g. one that drops IP fragments)."""
    a, rtr, b = lab.netns("host_a"), lab.netns("rtr"), lab.netns("host_b")
    topo = Routed(a, rtr, b)
    lab.link(a, topo.ifname, rtr, "r0")
    lab.link(rtr, "r1", b, topo.ifname)
    a.add_address(topo.ifname, f"{topo.a4}/24")
    rtr.add_address("r0", "10.1.0.1/24")
    rtr.add_address("r1", "192.0.2.1/24")
    b.add_address(topo.ifname, f"{topo.b4}/24")
    rtr.enable_forwarding()
    a.add_route("default", via="10.1.0.1")
    b.add_route("10.1.0.0/24", via="192.0.2.1")
    return topo


@dataclass(frozen=True)
class Uplink:
    """One of the mobile host's uplinks: its interface, its address, the router's side."""

    ifname: str
    addr4: str
    gw4: str
    addr6: str
    gw6: str
    metric: int
    router_if: str


@dataclass(frozen=True)
class Mobile:
    """Topology (b)/(c): `mob` with two uplinks through `rtr` to `gw`.

    ```
    mob m0 10.1.0.2/24 ---- r0 10.1.0.1  rtr  g0 192.0.2.1/24 ---- eth0 192.0.2.2 gw
        m1 10.2.0.2/24 ---- r1 10.2.0.1
    ```
    Default routes in `mob` via both uplinks, m0 preferred (lower metric).
    With `nat`, rtr masquerades everything leaving g0, so gw sees 192.0.2.1; with
    `nat_backup`, only what comes from m1 (a carrier NAT on the backup uplink).
    """

    lab: Lab
    mob: Netns
    rtr: Netns
    gw: Netns
    uplinks: tuple[Uplink, Uplink]
    nat: bool
    nat_backup: bool
    gw4: str = "192.0.2.2"
    gw6: str = "2001:db8:ff::2"
    rtr_wan4: str = "192.0.2.1"
    rtr_wan6: str = "2001:db8:ff::1"

    def kill_silently(self, index: int, family: int | None = None) -> None:
        """Uplink `index` stays up but rtr drops everything from and to it (only its
        IPv4 or IPv6 address with `family` 4 or 6)."""
        self.lab.blackhole_all(self.rtr, self._addrs(index, family))

    def revive(self, index: int, family: int | None = None) -> None:
        """Undo kill_silently(index, family)."""
        self.lab.blackhole_all(self.rtr, self._addrs(index, family), heal=True)

    def kill_family(self, family: int) -> None:
        """Every uplink's IPv4 (4) or IPv6 (6) dies silently; the other family stays."""
        self.lab.blackhole_all(self.rtr, self._family_addrs(family))

    def revive_family(self, family: int) -> None:
        """Undo kill_family(family)."""
        self.lab.blackhole_all(self.rtr, self._family_addrs(family), heal=True)

    def _family_addrs(self, family: int) -> list[str]:
        return [a for i in range(len(self.uplinks)) for a in self._addrs(i, family)]

    def _addrs(self, index: int, family: int | None) -> list[str]:
        up = self.uplinks[index]
        return [addr for fam, addr in ((4, up.addr4), (6, up.addr6))
                if family is None or family == fam]

    def link_down(self, index: int) -> None:
        """Take uplink `index` down in mob: its address routes and default route go away."""
        self.mob.set_link(self.uplinks[index].ifname, False)

    def link_up(self, index: int) -> None:
        """Bring uplink `index` back, with its default routes (the kernel dropped them)."""
        up = self.uplinks[index]
        self.mob.set_link(up.ifname, True)
        _default_routes(self.mob, up)


def _default_routes(mob: Netns, up: Uplink) -> None:
    for family, via in (("-4", up.gw4), ("-6", up.gw6)):
        mob.ip(family, "route", "replace", "default", "via", via, "dev", up.ifname,
               "metric", str(up.metric))


def mobile(lab: Lab, *, nat: bool = False, nat_backup: bool = False) -> Mobile:
    """Topology (b), or with `nat=True` topology (c): the router masquerades; with
    `nat_backup=True` it masquerades only the backup uplink m1 (m0 is routed)."""
    mob = lab.netns("mob")
    rtr = lab.netns("rtr")
    gw = lab.netns("gw")
    uplinks = (
        Uplink("m0", "10.1.0.2", "10.1.0.1", "2001:db8:1::2", "2001:db8:1::1", 100, "r0"),
        Uplink("m1", "10.2.0.2", "10.2.0.1", "2001:db8:2::2", "2001:db8:2::1", 200, "r1"),
    )
    topo = Mobile(lab, mob, rtr, gw, uplinks, nat, nat_backup)
    for up in uplinks:
        lab.link(mob, up.ifname, rtr, up.router_if)
        mob.add_address(up.ifname, f"{up.addr4}/24")
        mob.add_address(up.ifname, f"{up.addr6}/64")
        rtr.add_address(up.router_if, f"{up.gw4}/24")
        rtr.add_address(up.router_if, f"{up.gw6}/64")
        _default_routes(mob, up)
    lab.link(rtr, "g0", gw, "eth0")
    rtr.add_address("g0", f"{topo.rtr_wan4}/24")
    rtr.add_address("g0", f"{topo.rtr_wan6}/64")
    gw.add_address("eth0", f"{topo.gw4}/24")
    gw.add_address("eth0", f"{topo.gw6}/64")
    rtr.enable_forwarding()
    # IPv6 is never translated, so gw always routes the uplinks' prefixes back.
    gw.ip("-6", "route", "add", "2001:db8::/32", "via", topo.rtr_wan6)
    if nat:
        lab.masquerade(rtr, "g0")
    else:
        gw.ip("-4", "route", "add", "10.0.0.0/8", "via", topo.rtr_wan4)
        if nat_backup:
            lab.masquerade(rtr, "g0", source=f"{uplinks[1].addr4}/24")
    return topo


def source_routes(topo: Mobile, index: int) -> None:
    """Policy routing in mob for uplink ``index``: from its addresses, via it, and
    nowhere else.

    The ``unreachable`` fallback matters when the uplink's link goes down: without it a
    packet from its address (charon's ESP on the SA that has not moved yet) falls
    through to the main table and leaks out the other uplink. Its ARP request for that
    uplink's gateway then names the dead address as sender, the router (strict
    reverse-path filter) ignores it, and the gateway's neighbour entry fails over and
    over, dropping charon's path probes with it. Seen here with a full tunnel: the move
    took 5-8 s, and in 5 of 10 runs charon gave up after 10 path probings."""
    up = topo.uplinks[index]
    table = str(TABLE_BASE + index)
    for family, addr, via in (("-4", up.addr4, up.gw4), ("-6", up.addr6, up.gw6)):
        topo.mob.ip(family, "route", "replace", "default", "via", via, "dev", up.ifname,
                    "table", table)
        topo.mob.ip(family, "route", "replace", "unreachable", "default", "metric",
                    str(UNREACHABLE_METRIC), "table", table)
        topo.mob.ip(family, "rule", "del", "from", addr, "table", table, check=False)
        topo.mob.ip(family, "rule", "add", "from", addr, "table", table, "pref",
                    str(1000 + index))
