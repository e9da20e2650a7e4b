"""The typed ``mobike { pool { } }`` section: the gateways of a pool and the load limit.

Every gateway of a pool carries the same list; each one reads its peers' load from
their ``--metrics`` endpoints and redirects IKE_SAs (RFC 5685) to the least loaded.
``mobike.from_section`` hands the section's keys here; only ``ConfigError`` escapes.

.. pool-keys-begin

====================  ==========  ===============  ========================================
key                   default     range            meaning
====================  ==========  ===============  ========================================
pool.gateways         (none)      list             the pool's gateways: ``ADDRESS`` (the
                                                   address clients are redirected to; its
                                                   metrics at ``ADDRESS:metrics_port``) or
                                                   ``ADDRESS@HOST:PORT`` (metrics there)
pool.metrics_port     9474        1 .. 65535       the ``--metrics`` port of a gateway
                                                   listed by address alone
pool.poll_interval    2s          >0 .. 24h        how often each peer's metrics are read
pool.peer_timeout     1s          >0 .. 24h        a peer whose metrics take longer is
                                                   down (never a redirect target)
pool.max_ike_sas      0           0 .. 1000000     run: above this many IKE_SAs the newest
                                                   established ones are redirected to the
                                                   least loaded peer (0: no limit)
pool.rate             10          >0 .. 10000      redirects per second, a drain's default
                                                   and the bound for ``max_ike_sas``
====================  ==========  ===============  ========================================

.. pool-keys-end

The gateway this file is on is in the list too (one list for the whole pool); it is
never its own target: no address its clients reached it at is one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..types import IPAddress
from .bounds import uint_in_range
from .errors import ConfigError

DEFAULT_METRICS_PORT = 9474
MAX_GATEWAYS = 64
"""Bound on a pool's size: every peer is polled each interval."""

POOL_KEYS = frozenset({"gateways", "metrics_port", "poll_interval", "peer_timeout",
                       "max_ike_sas", "rate"})

Err = Callable[[str, str], ConfigError]
Time = Callable[[str, str], float]


@dataclass(frozen=True, slots=True)
class PoolGateway:
    """One gateway of the pool: where clients go, and where its load is read."""

    address: IPAddress
    metrics_host: str
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        host = self.metrics_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.metrics_port}/metrics"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """``mobike { pool { } }``; see the module docstring for every key."""

    gateways: tuple[PoolGateway, ...] = ()
    poll_interval: float = 2.0
    peer_timeout: float = 1.0
    max_ike_sas: int = 0
    rate: float = 10.0

    def gateway(self, address: IPAddress) -> PoolGateway | None:
        return next((g for g in self.gateways if g.address == address), None)


_HOSTPORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d+)")


def pool_settings(raw: Mapping[str, str], err: Err, time: Time) -> PoolSettings:
    """``raw`` holds the section's keys without the ``pool.`` prefix; ``err(key, msg)`` and
    ``time(text, key)`` come from the caller, so errors read like every other mobike key's."""

    def key(k: str) -> str:
        return f"pool.{k}"

    for k in raw:
        if k not in POOL_KEYS:
            raise err(key(k), "unknown key")

    def text(k: str) -> str | None:
        v = raw.get(k)
        return v.strip() if v is not None and v.strip() else None

    kw: dict[str, object] = {}
    port = DEFAULT_METRICS_PORT
    if (t := text("metrics_port")) is not None:
        port = uint_in_range(t, key("metrics_port"), 1, 65535, err)
    for k in ("poll_interval", "peer_timeout"):
        if (t := text(k)) is not None:
            kw[k] = time(t, key(k))
    if (t := text("max_ike_sas")) is not None:
        kw["max_ike_sas"] = uint_in_range(t, key("max_ike_sas"), 0, 1_000_000, err)
    if (t := text("rate")) is not None:
        try:
            rate = float(t)
        except ValueError:
            raise err(key("rate"), f"'{t}' is not a number") from None
        if not 0 < rate <= 10_000:
            raise err(key("rate"), f"{t} is out of range (more than 0, at most 10000)")
        kw["rate"] = rate
    if (t := text("gateways")) is not None:
        kw["gateways"] = _gateways(t, port, lambda m: err(key("gateways"), m))
    return PoolSettings(**kw)  # type: ignore[arg-type]


def parse_gateway(item: str, metrics_port: int = DEFAULT_METRICS_PORT) -> PoolGateway:
    """``ADDRESS`` or ``ADDRESS@HOST:PORT``; ValueError with a reason otherwise."""
    addr_text, at, metrics = item.partition("@")
    try:
        address = ipaddress.ip_address(addr_text.strip())
    except ValueError:
        raise ValueError(f"'{addr_text.strip()}' is not an IP address") from None
    if not at:
        return PoolGateway(address, str(address), metrics_port)
    m = _HOSTPORT.fullmatch(metrics.strip())
    if m is None or not 0 < int(m.group("port")) < 65536:
        raise ValueError(f"'{metrics.strip()}' is not HOST:PORT (a metrics endpoint)")
    return PoolGateway(address, m.group("v6") or m.group("host"), int(m.group("port")))


def _gateways(text: str, port: int, err: Callable[[str], ConfigError]
              ) -> tuple[PoolGateway, ...]:
    out: list[PoolGateway] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        try:
            gw = parse_gateway(item, port)
        except ValueError as exc:
            raise err(str(exc)) from None
        if any(g.address == gw.address for g in out):
            raise err(f"{gw.address} is listed twice")
        out.append(gw)
    if len(out) > MAX_GATEWAYS:
        raise err(f"{len(out)} gateways (at most {MAX_GATEWAYS})")
    return tuple(out)
