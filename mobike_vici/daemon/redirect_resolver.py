"""A REDIRECT to an FQDN (RFC 5685 GW Ident Type 3), resolved for the sans-I/O core: the
core says ``RedirectResolving``, this looks the name up on the event loop (bounded in time
and in lookups at once) and hands the addresses back (``Engine.redirect_resolved``),
which follows the first usable one or refuses the redirect (``unresolved``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..config.model import Config
from ..core.events import Event, RedirectResolving
from ..eventlog import EventLog
from ..types import IPAddress

RESOLVE_TIMEOUT = 5.0
"""Seconds a lookup may take; a slower name is as good as none (the old IKE_SA stays)."""
MAX_LOOKUPS = 16
"""Lookups at once; a REDIRECT beyond them is refused at once rather than queued."""

Resolve = Callable[[str], Awaitable[Sequence[IPAddress]]]


async def system_resolve(name: str) -> list[IPAddress]:
    """The name's addresses from the system resolver (getaddrinfo, off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if address not in out:
            out.append(address)
    return out


class ResolvingEngine(Protocol):
    def redirect_resolved(self, ike_spi: str, name: str, addresses: Sequence[IPAddress],
                          now: float) -> None: ...


class RedirectResolver:
    """An event hook and a service of the native daemon (its lookups end with it)."""

    def __init__(self, engine: ResolvingEngine, log: EventLog, now: Callable[[], float],
                 after: Callable[[], None], resolve: Resolve = system_resolve,
                 timeout: float = RESOLVE_TIMEOUT) -> None:
        self.engine = engine
        self.log = log
        self._now = now
        self._after = after
        """Flush what the engine sent (the daemon's ``after_engine``)."""
        self._resolve = resolve
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        if not isinstance(event, RedirectResolving):
            return
        self.log.emit("redirect_resolving", conn=event.conn, ike_spi=event.ike_spi,
                      gateway=event.gateway)
        if len(self._tasks) >= MAX_LOOKUPS:
            self._answer(event, [], f"more than {MAX_LOOKUPS} lookups at once")
            return
        task = asyncio.ensure_future(self._lookup(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lookup(self, event: RedirectResolving) -> None:
        try:
            found = list(await asyncio.wait_for(self._resolve(event.gateway), self.timeout))
            error = "" if found else "no address"
        except TimeoutError:
            found, error = [], f"no answer in {self.timeout:g} s"
        except (OSError, ValueError) as exc:  # socket.gaierror is an OSError
            found, error = [], str(exc) or type(exc).__name__
        self._answer(event, found, error)

    def _answer(self, event: RedirectResolving, found: list[IPAddress], error: str) -> None:
        if error:
            self.log.emit("redirect_unresolved", conn=event.conn, ike_spi=event.ike_spi,
                          gateway=event.gateway, error=error)
        with contextlib.suppress(KeyError):  # the IKE_SA went meanwhile
            self.engine.redirect_resolved(event.ike_spi, event.gateway, found, self._now())
        self._after()

    def start(self) -> None:
        pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def reload(self, config: Config) -> None:
        pass
