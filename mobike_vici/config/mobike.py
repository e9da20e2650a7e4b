"""The typed ``mobike { }`` policy: probe timing, path preferences, hold-down, routability.

``from_section`` turns the parsed section into a validated ``MobikePolicy``, each error
located at its key's own file and line. Only ``ConfigError`` escapes it.

Keys (a time is a number with ``ms``, ``s``, ``m`` or ``h``; bare: seconds, fractions
allowed). This table is the reference; docs/config.md carries a copy a test keeps equal.

.. mobike-keys-begin

=========================  ==========  ===============  ====================================
key                        default     range            meaning
=========================  ==========  ===============  ====================================
probe_interval             200ms       >0 .. 24h        probe cadence on the active path
                                                        (and on every path while the active
                                                        one is not up)
probe_timeout              300ms       >0 .. 24h        a probe unanswered this long is a
                                                        miss (the floor; slow paths get
                                                        SRTT + 4 RTTVAR, at most 3 s)
probe_misses               2           1 .. 100         consecutive misses that make a path
                                                        down
stall_timeout              100ms       >0 .. 24h        outbound ESP flowing and nothing in
                                                        for this long (at least; else 4
                                                        SRTT, or 3 times the flow's own wait
                                                        for an answer) probes the active
                                                        path at once; doubles per answered
                                                        stall probe up to probe_interval
                                                        (run: plus stall_probe_timeout)
stall_probe_timeout        50ms        >0 .. 24h        native: a probe of a stalled active
                                                        path unanswered this long is a miss
                                                        (the floor, doubled for a peer known
                                                        to be quiet; else SRTT + 4 RTTVAR,
                                                        at most probe_timeout's value);
                                                        run: the least wait for the last
                                                        of a stall's 3 probes (else 3 SRTTs)
standby_probe_interval     2s          >0 .. 24h        probe cadence on idle standby paths
max_probes_in_flight       4           1 .. 64          per IKE_SA, all paths together
hold_down                  10s         0 .. 24h         a better path must be healthy this
                                                        long, without a single miss, before
                                                        we return to it
max_moves_per_minute       6           0 .. 10000       discretionary moves per sliding
                                                        minute; leaving a failed path is
                                                        never damped (0: only failovers)
handover_timeout           10s         >0 .. 24h        a move the backend never reports on
                                                        has failed; beside a gateway's
                                                        charon also the time a moved peer
                                                        has to answer at its new address;
                                                        the bound of one native move
                                                        attempt (which is 4 RTOs of the
                                                        target path, at least probe_timeout)
escalate_after             10s         >0 .. 24h        run: a move charon does not make is
                                                        escalated (reauthentication, then
                                                        reinitiation: both delete the
                                                        IKE_SA) only once the IKE_SA's path
                                                        has shown no sign of life (answered
                                                        probe, ESP from the peer, MOBIKE
                                                        update) for this long
verify_timeout             200ms       0 .. 24h         after a move, ESP from a peer that
                                                        was sending must arrive within this
                                                        (or 4 SRTTs of the new path, or 3
                                                        times the flow's wait, if longer)
                                                        while ours flows, else the CHILD_SAs
                                                        are rekeyed (0: no check)
repair_timeout             2s          >0 .. 24h        after that rekey, the peer's ESP
                                                        must arrive within this (or 4
                                                        SRTTs), else handover_failed
return_routability         always      always,          RFC 4555 3.7: when a new peer
                                       nat-only, never  address must answer a COOKIE2 check
                                                        (native responder: an address and
                                                        port that set the IKE_SA up or
                                                        answered a check, the last 16, is
                                                        not checked again)
family                     any         any, ipv4, ipv6  which family wins a cost tie
exclude                    (none)      list             interface globs and local prefixes
                                                        never used
allowed_peer_prefixes      (any)       list of          a peer address must be in one
                                       prefixes         (gateway side: refuse other moves)
announce                   all         all, preferred-  which local addresses go to the
                                       only, prefixes   peer as ADDITIONAL_*_ADDRESS
prefer.NAME.interface      (any)       glob             interface this rule matches
prefer.NAME.prefix         (any)       prefix           local prefix this rule matches
prefer.NAME.remote_prefix  (any)       prefix           peer prefix this rule matches
prefer.NAME.family         (any)       ipv4, ipv6       address family this rule matches
prefer.NAME.cost           0           0 .. 1000000     added to the cost of every path the
                                                        rule matches
cookie_threshold           10          0 .. 1000000     native responder: half-open IKE_SAs
                                                        from which every IKE_SA_INIT must
                                                        carry a COOKIE (0: always)
block_threshold            5           0 .. 1000000     native: half-open IKE_SAs one source
                                                        address may hold; more of its
                                                        IKE_SA_INITs are dropped (0: no cap)
init_limit_half_open       1000        1 .. 1000000     native: half-open IKE_SAs in all;
                                                        beyond it even requests with a valid
                                                        COOKIE are dropped
init_dh_budget             100         0 .. 1000000     native: milliseconds of responder DH
                                                        work per second for new IKE_SAs,
                                                        priced per group; a source with no
                                                        half-open SA may overdraw 100 ms
                                                        (0: no budget)
max_ike_sas_per_peer       256         1 .. 1000000     native: IKE_SAs one peer (identity
                                                        at an address) may hold; IKE_AUTH
                                                        beyond fails
max_child_sas_per_peer     1024        1 .. 1000000     native: CHILD_SAs of one peer; more
                                                        are refused (NO_ADDITIONAL_SAS);
                                                        rekeys do not count
drop_log_interval          1s          >0 .. 24h        native: unauthenticated drops are
                                                        logged as one packet_dropped per
                                                        reason per interval
fragment_size              1280        0, 300 .. 65535  native: largest IP datagram of an
                                                        IKE message (charon.fragment_size);
                                                        larger ones are cut into RFC 7383
                                                        fragments where fragmentation was
                                                        negotiated (0: 576 on IPv4, 1280 on
                                                        IPv6)
tcp                        no          no, fallback,    native: IKE and ESP over TCP (RFC
                                       always           9329) as the initiator: never; only
                                                        where UDP goes unanswered (and back
                                                        to UDP when it answers again); or
                                                        always. A responder listens on
                                                        tcp_port unless this is no
tcp_port                   4500        list of ports    native: TCP ports: the responder
                                                        listens on all, the initiator
                                                        tries them in turn
tcp_fallback_after         1s          >0 .. 24h        native, tcp = fallback: IKE requests
                                                        on a path unanswered over UDP this
                                                        long move the path to TCP; UDP is
                                                        tried again every 5 times this
tcp_max_streams            256         1 .. 100000      native: TCP streams in all; more
                                                        connections are refused
tcp_max_per_source         8           1 .. 100000      native: TCP streams from one address
tcp_idle_timeout           60s         >0 .. 24h        native: a stream without a frame
                                                        either way this long is closed
tcp_slow_timeout           5s          >0 .. 24h        native: a stream without the
                                                        prefix and an IKE message we
                                                        answered, or with a frame left
                                                        unfinished, this long is closed
dead_after                 30s         0 .. 24h         native initiator: an IKE_SA whose
                                                        requests the peer has answered on no
                                                        path for this long is dead
                                                        (ike_sa_deleted reason dead_after,
                                                        then dpd_action), well before
                                                        charon's 165 s retransmission bound
                                                        (0: that bound only); a responder
                                                        keeps to that bound (RFC 4555 3.11)
=========================  ==========  ===============  ====================================

.. mobike-keys-end

A rule matches a path when all of its selectors match; a path's cost is the sum of
the costs of the rules it matches, so ``wwan* cost 100`` and ``ipv6 cost 5``
compose without caring about order. Lower cost wins, then ``family``, then RTT.

With the defaults a silently dead active path is down at most
``probe_interval * probe_misses + probe_timeout`` = 0.7 s after it died (the first
unanswered probe leaves at most one interval after the death, the second one
interval later, and the second times out 300 ms after that), and the move to the
best standby is requested at that instant. Both daemons also watch the ESP (one model,
``mobike.health``): while packets leave and none come in for ``stall_timeout`` (or
longer, by the path's RTT and the flow's own pace) the active path is probed at once
with ``stall_probe_timeout``, so under traffic a dead path is down
about ``stall_timeout + probe_misses * stall_probe_timeout`` = 0.2 s after it died.
A peer that answers those probes stays (one-way traffic never moves anything).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .bounds import uint_in_range
from .errors import ConfigError
from .parser import Section
from .pool import PoolSettings, pool_settings
from .tcp import NO_TCP, TCP_KEYS, TcpSettings, tcp_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


MAX_PEER_ADDRESSES_PER_FAMILY = 32
"""Peer addresses kept per family from an ADDITIONAL_*_ADDRESS list (RFC 4555 §3.6
sets no bound; the rest of the list is ignored). Each one is a path per local
address of its family to probe, so the list is the peer's lever on our work."""


class RoutabilityMode(Enum):
    """When a new peer address must answer a COOKIE2 check before IPsec SAs move."""

    ALWAYS = "always"
    NAT_ONLY = "nat-only"
    NEVER = "never"


class AnnounceMode(Enum):
    ALL = "all"
    PREFERRED_ONLY = "preferred-only"
    PREFIXES = "prefixes"  # only addresses inside ``announce_prefixes``


@dataclass(frozen=True, slots=True)
class PreferRule:
    """One ``prefer.NAME`` section: selectors (all must match) and the cost they add."""

    name: str
    interface: str | None = None  # fnmatch glob
    prefix: Network | None = None  # local address
    remote_prefix: Network | None = None
    family: int | None = None  # 4 or 6
    cost: int = 0

    def matches(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address, ifname: str,
                remote: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.interface is not None and not fnmatch.fnmatchcase(ifname, self.interface):
            return False
        if self.prefix is not None and not _inside(local, self.prefix):
            return False
        if self.remote_prefix is not None and not _inside(remote, self.remote_prefix):
            return False
        return self.family is None or local.version == self.family


@dataclass(frozen=True, slots=True)
class MobikePolicy:
    """The controller's path policy; see the module docstring for every key."""

    probe_interval: float = 0.2
    probe_timeout: float = 0.3
    probe_misses: int = 2
    standby_probe_interval: float = 2.0
    stall_timeout: float = 0.1
    stall_probe_timeout: float = 0.05
    max_probes_in_flight: int = 4
    hold_down: float = 10.0
    max_moves_per_minute: int = 6
    handover_timeout: float = 10.0
    escalate_after: float = 10.0
    verify_timeout: float = 0.2
    repair_timeout: float = 2.0
    return_routability: RoutabilityMode = RoutabilityMode.ALWAYS
    family: int | None = None  # preferred family on a cost tie; None: no preference
    prefer: tuple[PreferRule, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    exclude_prefixes: tuple[Network, ...] = ()
    allowed_peer_prefixes: tuple[Network, ...] = ()  # empty: any peer address
    announce: AnnounceMode = AnnounceMode.ALL
    announce_prefixes: tuple[Network, ...] = ()
    # Denial-of-service limits of the native daemon (see the table).
    cookie_threshold: int = 10
    block_threshold: int = 5
    half_open_limit: int = 1000
    dh_budget: int = 100
    max_ike_sas_per_peer: int = 256
    max_child_sas_per_peer: int = 1024
    drop_log_interval: float = 1.0
    fragment_size: int = 1280
    tcp: TcpSettings = NO_TCP
    dead_after: float = 30.0
    pool: PoolSettings = field(default_factory=PoolSettings)  # see config/pool.py

    def excludes_local(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
                       ifname: str) -> bool:
        """Whether policy forbids ever using this local address."""
        if any(fnmatch.fnmatchcase(ifname, glob) for glob in self.exclude_interfaces):
            return True
        return any(_inside(addr, net) for net in self.exclude_prefixes)

    def allows_peer(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if not self.allowed_peer_prefixes:
            return True
        return any(_inside(addr, net) for net in self.allowed_peer_prefixes)

    def cost(self, local: ipaddress.IPv4Address | ipaddress.IPv6Address, ifname: str,
             remote: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        return sum(r.cost for r in self.prefer if r.matches(local, ifname, remote))


def _inside(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, net: Network) -> bool:
    return addr.version == net.version and addr in net


# -- parsing --------------------------------------------------------------------------

_TIME = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")
_TIME_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}
_MAX_TIME = 86400.0
_TOP_KEYS = frozenset({
    "probe_interval", "probe_timeout", "probe_misses", "standby_probe_interval",
    "stall_timeout", "stall_probe_timeout", "max_probes_in_flight", "hold_down",
    "max_moves_per_minute", "handover_timeout", "escalate_after",
    "return_routability", "family", "exclude", "allowed_peer_prefixes", "announce",
    "drop_log_interval", "cookie_threshold", "block_threshold", "init_limit_half_open",
    "init_dh_budget",
    "max_ike_sas_per_peer", "max_child_sas_per_peer", "verify_timeout", "repair_timeout",
    "fragment_size", "dead_after", *TCP_KEYS,
})
_RULE_KEYS = frozenset({"interface", "prefix", "remote_prefix", "family", "cost"})
_FAMILIES = {"ipv4": 4, "ipv6": 6, "4": 4, "6": 6, "any": None}
_ROUTABILITY = {"always": RoutabilityMode.ALWAYS, "yes": RoutabilityMode.ALWAYS,
                "nat-only": RoutabilityMode.NAT_ONLY, "nat_only": RoutabilityMode.NAT_ONLY,
                "never": RoutabilityMode.NEVER, "no": RoutabilityMode.NEVER}
# The bound on rule costs keeps sums far from anything surprising.
_MAX_COST = 1_000_000
_MAX_IN_FLIGHT = 64
# Below this an IPv6 fragment has room for little beyond its headers.
_MIN_FRAGMENT_SIZE = 300


# Denial-of-service limits of the native daemon (charon's names where charon has them);
# read at start-up. Key -> (MobikePolicy field, lowest, highest).
_LIMIT_KEYS: dict[str, tuple[str, int, int]] = {
    "cookie_threshold": ("cookie_threshold", 0, 1_000_000),
    "block_threshold": ("block_threshold", 0, 1_000_000),
    "init_limit_half_open": ("half_open_limit", 1, 1_000_000),
    "init_dh_budget": ("dh_budget", 0, 1_000_000),
    "max_ike_sas_per_peer": ("max_ike_sas_per_peer", 1, 1_000_000),
    "max_child_sas_per_peer": ("max_child_sas_per_peer", 1, 1_000_000),
}


Locate = Callable[[str], tuple[str, int]]


def from_section(sec: Section | None) -> MobikePolicy:
    """Validate the parsed ``mobike { }`` section; errors name each key's own file:line."""
    if sec is None:
        return MobikePolicy()
    raw: dict[str, str] = {}
    where: dict[str, tuple[str, int]] = {}
    for key, value, file, line in _walk(sec, ""):
        raw[key] = value
        where[key] = (file, line)
    return _build(raw, lambda key: where.get(key, (sec.file, sec.line)))


def _walk(sec: Section, prefix: str) -> Iterable[tuple[str, str, str, int]]:
    for key, v in sec.keys.items():
        yield prefix + key, v.value, v.file, v.line
    for sub in sec.sections.values():
        yield from _walk(sub, f"{prefix}{sub.name}.")


def _build(raw: Mapping[str, str], locate: Locate) -> MobikePolicy:

    def err(key: str, message: str) -> ConfigError:
        file, line = locate(key)
        return ConfigError(file, line, f"mobike: {key}: {message}")

    kw: dict[str, object] = {}
    rules: dict[str, dict[str, str]] = {}
    pool: dict[str, str] = {}
    for key, value in raw.items():
        parts = key.split(".")
        if parts[0] == "pool" and len(parts) > 1:
            pool[key.removeprefix("pool.")] = value
        elif len(parts) == 3 and parts[0] == "prefer" and parts[2] in _RULE_KEYS:
            rules.setdefault(parts[1], {})[parts[2]] = value
        elif key not in _TOP_KEYS:
            raise err(key, "unknown key")

    def text(key: str) -> str | None:
        # An empty value restores the default, as everywhere in swanctl.conf.
        v = raw.get(key)
        return v.strip() if v is not None and v.strip() else None

    for key, (field_name, lo, hi) in _LIMIT_KEYS.items():
        if (t := text(key)) is not None:
            kw[field_name] = uint_in_range(t, key, lo, hi, err)
    for key in ("probe_interval", "probe_timeout", "standby_probe_interval",
                "stall_timeout", "stall_probe_timeout", "hold_down", "handover_timeout",
                "escalate_after", "drop_log_interval", "verify_timeout", "repair_timeout",
                "dead_after"):
        if (t := text(key)) is not None:
            kw[key] = _time(t, key, err,
                            zero_ok=key in ("hold_down", "verify_timeout", "dead_after"))
    if (t := text("fragment_size")) is not None:
        size = uint_in_range(t, "fragment_size", 0, 65535, err)
        if 0 < size < _MIN_FRAGMENT_SIZE:
            raise err("fragment_size", f"{size} is out of range (0 or "
                      f"{_MIN_FRAGMENT_SIZE}..65535)")
        kw["fragment_size"] = size
    for key, lo, hi in (("probe_misses", 1, 100), ("max_probes_in_flight", 1, _MAX_IN_FLIGHT),
                        ("max_moves_per_minute", 0, 10_000)):
        if (t := text(key)) is not None:
            kw[key] = uint_in_range(t, key, lo, hi, err)
    if (t := text("return_routability")) is not None:
        if t.lower() not in _ROUTABILITY:
            raise err("return_routability", f"'{t}' is not always, nat-only or never")
        kw["return_routability"] = _ROUTABILITY[t.lower()]
    if (t := text("family")) is not None:
        kw["family"] = _family(t, "family", err)
    if (t := text("exclude")) is not None:
        globs: list[str] = []
        nets: list[Network] = []
        for item in _items(t):
            net = _maybe_net(item)
            if net is not None:
                nets.append(net)
            elif re.fullmatch(r"[A-Za-z0-9_.:@*?\[\]!-]{1,64}", item):
                globs.append(item)
            else:
                raise err("exclude", f"'{item}' is neither a prefix nor an interface glob")
        kw["exclude_interfaces"], kw["exclude_prefixes"] = tuple(globs), tuple(nets)
    if (t := text("allowed_peer_prefixes")) is not None:
        kw["allowed_peer_prefixes"] = _nets(t, "allowed_peer_prefixes", err)
    if (t := text("announce")) is not None:
        if t.lower() in ("all", "preferred-only", "preferred_only"):
            kw["announce"] = AnnounceMode.ALL if t.lower() == "all" else AnnounceMode.PREFERRED_ONLY
        else:
            kw["announce"] = AnnounceMode.PREFIXES
            kw["announce_prefixes"] = _nets(t, "announce", err)
    kw["prefer"] = tuple(_rule(name, keys, err) for name, keys in rules.items())
    kw["tcp"] = tcp_settings(text, lambda t, k, lo, hi: uint_in_range(t, k, lo, hi, err),
                             lambda t, k: _time(t, k, err, zero_ok=False), err)
    if pool:
        kw["pool"] = pool_settings(pool, err, lambda t, key: _time(t, key, err, zero_ok=False))

    return MobikePolicy(**kw)  # type: ignore[arg-type]


def _rule(name: str, keys: Mapping[str, str], err: Callable[[str, str], ConfigError]
          ) -> PreferRule:
    def key(k: str) -> str:
        return f"prefer.{name}.{k}"

    kw: dict[str, object] = {}
    if (t := keys.get("interface", "").strip()):
        kw["interface"] = t
    for sel in ("prefix", "remote_prefix"):
        if (t := keys.get(sel, "").strip()):
            net = _maybe_net(t)
            if net is None:
                raise err(key(sel), f"'{t}' is not a prefix")
            kw[sel] = net
    if (t := keys.get("family", "").strip()):
        kw["family"] = _family(t, key("family"), err)
    if (t := keys.get("cost", "").strip()):
        kw["cost"] = uint_in_range(t, key("cost"), 0, _MAX_COST, err)
    return PreferRule(name=name, **kw)  # type: ignore[arg-type]


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _maybe_net(item: str) -> Network | None:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        return None


def _nets(text: str, key: str, err: Callable[[str, str], ConfigError]) -> tuple[Network, ...]:
    out: list[Network] = []
    for item in _items(text):
        net = _maybe_net(item)
        if net is None:
            raise err(key, f"'{item}' is not a prefix")
        out.append(net)
    return tuple(out)


def _family(text: str, key: str, err: Callable[[str, str], ConfigError]) -> int | None:
    if text.lower() not in _FAMILIES:
        raise err(key, f"'{text}' is not ipv4, ipv6 or any")
    return _FAMILIES[text.lower()]


def _time(text: str, key: str, err: Callable[[str, str], ConfigError], *,
          zero_ok: bool) -> float:
    m = _TIME.fullmatch(text)
    if m is None:
        raise err(key, f"'{text}' is not a time (a number with ms, s, m or h)")
    seconds = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if seconds > _MAX_TIME or (seconds <= 0 and not zero_ok):
        raise err(key, f"'{text}' is out of range (more than 0, at most 24h)")
    return seconds
