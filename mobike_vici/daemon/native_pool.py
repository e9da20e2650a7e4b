"""The pool beside the native daemon (``mobike-vici native`` as a pool gateway, RFC 5685):
the same ``PoolService`` as beside charon (peers' load, ``drain``, ``max_ike_sas``), on
the engine's IKE_SAs, plus what only the native engine can do: redirect a new client in
IKE_SA_INIT when this gateway holds ``max_ike_sas`` already, before any state is spent.

The IKE_SAs a drain may move are followed from the core's events (established, rekeyed,
deleted), never by walking the engine's table per redirect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from ..config.model import Config
from ..config.pool import PoolSettings
from ..core.events import Event, IkeSaDeleted, IkeSaEstablished, IkeSaMoved, IkeSaRekeyed
from ..eventlog import EventLog
from ..pool.drain import DrainSa
from ..types import IPAddress, Path
from .pool_service import COMMANDS, JsonObject, PoolService, RedirectFailed

INIT_SETUP = 2.0
"""Seconds a client redirected in IKE_SA_INIT takes, as a rule, to have its IKE_SA up at
the target (IKE_SA_INIT and IKE_AUTH there, on a busy host). A read of the target's load
sent sooner may not count it yet, so it does not settle the redirect (``pool.view``):
with the redirect's own time as its leaving, a read 0.5 s later on a loaded host reset
the target's load to what it was, and the next client went there too."""


class RedirectingEngine(Protocol):
    def redirect(self, ike_spi: str, gateway: IPAddress, now: float) -> None: ...
    def set_redirect_policy(self, policy: Callable[[Path, int], IPAddress | None] | None
                            ) -> None: ...


class NativeRedirects:
    """The engine's clients' IKE_SAs, redirected with an INFORMATIONAL REDIRECT."""

    def __init__(self, engine: RedirectingEngine, now: Callable[[], float],
                 after: Callable[[], None]) -> None:
        self.engine = engine
        self._now = now
        self._after = after
        """Flush what the engine sent (the daemon's ``after_engine``)."""
        self._sas: dict[str, DrainSa] = {}
        self._ids = 0

    def on_event(self, event: Event) -> None:
        if isinstance(event, IkeSaEstablished):
            if not event.initiator:  # the client started it: ours to redirect
                self._ids += 1
                self._sas[event.ike_spi] = DrainSa(self._ids, event.conn, event.ike_spi,
                                                   event.path.local.addr,
                                                   event.path.remote.addr)
        elif isinstance(event, IkeSaRekeyed):
            old = self._sas.pop(event.ike_spi, None)
            if old is not None:
                self._sas[event.new_ike_spi] = DrainSa(old.ike_id, old.conn, event.new_ike_spi,
                                                       old.local, old.remote)
        elif isinstance(event, IkeSaMoved):
            old = self._sas.get(event.ike_spi)
            if old is not None:
                self._sas[event.ike_spi] = DrainSa(old.ike_id, old.conn, old.ike_spi,
                                                   event.new_path.local.addr,
                                                   event.new_path.remote.addr)
        elif isinstance(event, IkeSaDeleted):
            self._sas.pop(event.ike_spi, None)

    def drain_sas(self) -> list[DrainSa]:
        return list(self._sas.values())

    def established(self, ike_spi: str) -> bool | None:
        return True if ike_spi in self._sas else None

    def ike_sas(self) -> int:
        return len(self._sas)

    async def redirect(self, sa: DrainSa, gateway: IPAddress) -> None:
        try:
            self.engine.redirect(sa.ike_spi, gateway, self._now())
        except (KeyError, ValueError) as exc:
            raise RedirectFailed(str(exc).strip("'")) from None
        finally:
            self._after()


class NativePool:
    """``PoolService`` on the engine, the IKE_SA_INIT policy, and the control commands."""

    def __init__(self, engine: RedirectingEngine, log: EventLog, settings: PoolSettings,
                 now: Callable[[], float], after: Callable[[], None], *,
                 registry: CollectorRegistry | None = None) -> None:
        self.backend = NativeRedirects(engine, now, after)
        self.service = PoolService(self.backend, log, settings, registry=registry)
        self._now = now
        self._seq = 0
        engine.set_redirect_policy(self.init_policy)

    commands = COMMANDS

    def start(self) -> None:
        self.service.start()

    async def close(self) -> None:
        await self.service.close()

    def control(self, req: JsonObject) -> JsonObject:
        return self.service.control(req)

    def set_settings(self, settings: PoolSettings) -> None:
        self.service.set_settings(settings)

    def reload(self, config: Config) -> None:
        """SIGHUP: the file's ``pool { }`` (peers, limit, rate) from now on; a drain under
        way keeps its own rate. A gateway started without a pool needs a restart for one."""
        if config.mobike.policy.pool != self.service.settings:
            self.set_settings(config.mobike.policy.pool)

    def on_event(self, event: Event) -> None:
        self.backend.on_event(event)

    def init_policy(self, path: Path, ike_sas: int) -> IPAddress | None:
        """At ``max_ike_sas`` IKE_SAs (half-open ones too), a new client goes to the least
        loaded peer that is under the same limit; with none, it is served here."""
        settings = self.service.settings
        limit = settings.max_ike_sas
        if limit <= 0 or ike_sas < limit:
            return None
        view = self.service.view
        target = view.choose(exclude={path.local.addr}, below=limit)
        if target is None:
            return None
        self._seq += 1
        key = f"init-{self._seq}"
        now = self._now()
        view.assign(target.address, key, now)
        view.left(key, now + INIT_SETUP)  # never here; at the target once set up there
        metrics = self.service.metrics
        if metrics is not None:
            metrics.redirects.labels("out", "max_ike_sas").inc()
        return target.address
