"""Addresses and routes for the userspace data plane's TUN device (the pyroute2 edge for it).

Two things: the virtual IP on the TUN, and a route per remote traffic selector
through the TUN (with ``src`` = our inner address, so locally sent packets match
our local selector). The routes live in our own table, ``TUNNEL_TABLE``, never in
main; ``net.own_routing`` owns the rule that makes the kernel look there (for
every packet but our own marked IKE, ESP and probes) and the ``throw`` routes that
keep the peers' addresses out of it, so a selector that covers a peer (a full
tunnel, ``0.0.0.0/0``) never swallows the outer packets.

Every call is blocking and short; the daemon calls them when a CHILD_SA is
installed or deleted, not per packet. Errors are raised as OSError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute

from ..types import IPAddress
from .numbers import RTPROT_MOBIKE_VICI, TUNNEL_TABLE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _off_loop(func: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``func`` in a short-lived thread when called from a running asyncio loop.

    pyroute2's synchronous IPRoute drives its own asyncio loop and refuses to
    start inside one that is running; the calls are short, so the caller blocks.
    """
    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return func(*args, **kwargs)
        result: list[_T] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(func(*args, **kwargs))
            except BaseException as exc:
                error.append(exc)

        worker = threading.Thread(target=run, name="tun-routes")
        worker.start()
        worker.join()
        if error:
            raise error[0]
        return result[0]
    return wrapper


@contextlib.contextmanager
def _ipr() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise OSError(f"no interface {ifname}")
    return int(found[0])


@_off_loop
def add_address(ifname: str, addr: IPAddress) -> None:
    """Put ``addr`` (host prefix) on ``ifname``; already there is fine."""
    bits = 32 if addr.version == 4 else 128
    with _ipr() as ipr:
        idx = _index(ipr, ifname)
        try:
            ipr.addr("add", index=idx, address=str(addr), prefixlen=bits)
        except Exception as exc:
            if getattr(exc, "code", None) != 17:  # EEXIST
                raise OSError(str(exc)) from exc


@_off_loop
def del_address(ifname: str, addr: IPAddress) -> None:
    bits = 32 if addr.version == 4 else 128
    with _ipr() as ipr, contextlib.suppress(Exception):
        ipr.addr("del", index=_index(ipr, ifname), address=str(addr), prefixlen=bits)


@_off_loop
def local_addresses() -> list[IPAddress]:
    """Every address configured on any interface (to find our inner source address)."""
    out: list[IPAddress] = []
    with _ipr() as ipr:
        for msg in ipr.get_addr():
            value = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if value:
                out.append(ipaddress.ip_address(value))
    return out


@_off_loop
def replace_route(dest: Network, ifname: str, src: IPAddress | None) -> None:
    """Route ``dest`` through ``ifname`` (the TUN) in our tunnel table, optionally with a
    preferred source."""
    kwargs: dict[str, Any] = {"dst": str(dest.network_address), "dst_len": dest.prefixlen,
                              "proto": RTPROT_MOBIKE_VICI, "table": TUNNEL_TABLE}
    if src is not None:
        kwargs["prefsrc"] = str(src)
    with _ipr() as ipr:
        kwargs["oif"] = _index(ipr, ifname)
        try:
            ipr.route("replace", family=2 if dest.version == 4 else 10, **kwargs)
        except Exception as exc:
            raise OSError(str(exc)) from exc


@_off_loop
def del_route(dest: Network, ifname: str) -> None:
    with _ipr() as ipr, contextlib.suppress(Exception):
        ipr.route("del", family=2 if dest.version == 4 else 10, dst=str(dest.network_address),
                  dst_len=dest.prefixlen, oif=_index(ipr, ifname), table=TUNNEL_TABLE)
