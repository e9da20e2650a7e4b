"""The pool beside a charon gateway (``mobike-vici run``): peers' load read over HTTP,
``drain`` and ``max_ike_sas`` carried out with VICI's ``redirect`` (RFC 5685).

Owns the asyncio side only: reading each peer's ``--metrics`` page on a thread, the
pace of redirects, events and metrics. The decisions are ``pool.view`` (who is up,
who is least loaded) and ``pool.drain`` (order and rate).

Control requests: ``{"cmd": "drain", "to": [ADDR...] | null, "rate": N | null}``
starts a drain and answers at once with its id (progress follows as events:
``drain_started``, ``sa_redirected`` / ``sa_redirect_failed``, ``drain_completed``);
``{"cmd": "pool"}`` answers the peers as this gateway sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..backends.vici import IkeSaInfo, ViciClient, ViciError
from ..config.pool import PoolGateway, PoolSettings
from ..eventlog import EventLog
from ..pool.drain import Drain, DrainSa, Redirect
from ..pool.limit import over_limit
from ..pool.load import LoadUnreadable, ike_sa_load
from ..pool.view import PeerChanged, PoolView
from ..types import IPAddress

JsonObject = dict[str, Any]
COMMANDS = frozenset({"drain", "pool"})
MAX_PAGE = 4 * 1024 * 1024
"""Bound on a peer's metrics page read (a 10,000-SA gateway's page is well under)."""
LEAVE_WAIT = 30.0
"""Seconds a drain waits, after its last redirect, for the redirected IKE_SAs to leave:
one IKE_SA_INIT and IKE_AUTH at the target, with retransmits on a lossy path."""
DEPARTURE_CHECK = 0.1
"""Seconds between looks for redirected IKE_SAs that left, while some are pending."""
IDLE_WAKE = 1.0
"""The poll loop wakes at least this often (stale loads, ``max_ike_sas``)."""

Fetch = Callable[[PoolGateway, float], str]
# Straight to the peer: an http_proxy in the daemon's environment is not for the pool.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_page(gateway: PoolGateway, timeout: float) -> str:
    """GET the gateway's metrics page (blocking; run on a thread)."""
    with _DIRECT.open(gateway.metrics_url, timeout=timeout) as answer:
        return str(answer.read(MAX_PAGE).decode("utf-8", "replace"))


def drain_sas(sas: tuple[IkeSaInfo, ...]) -> list[DrainSa]:
    """The IKE_SAs a drain moves: clients' (responder) SAs that are established."""
    return [DrainSa(sa.unique_id, sa.conn, sa.ike_spi, sa.path.local.addr, sa.path.remote.addr)
            for sa in sas if not sa.initiator and sa.state == "ESTABLISHED"]


class RedirectFailed(Exception):
    """The backend would not send the redirect (the text says why)."""


class RedirectBackend(Protocol):
    """The gateway whose IKE_SAs the pool moves: charon over VICI, or the native engine."""

    def drain_sas(self) -> list[DrainSa]:
        """Clients' established IKE_SAs here."""
        ...

    def established(self, ike_spi: str) -> bool | None:
        """True: still here and established; False: here, not established; None: gone."""
        ...

    def ike_sas(self) -> int: ...

    async def redirect(self, sa: DrainSa, gateway: IPAddress) -> None:
        """Send the client of ``sa`` to ``gateway``; RedirectFailed when refused."""
        ...


class ViciRedirects:
    """charon's IKE_SAs, redirected with VICI ``redirect``."""

    def __init__(self, client: ViciClient) -> None:
        self.client = client

    def drain_sas(self) -> list[DrainSa]:
        return drain_sas(self.client.table.sas())

    def established(self, ike_spi: str) -> bool | None:
        live = self.client.table.get(ike_spi)
        return None if live is None else live.state == "ESTABLISHED"

    def ike_sas(self) -> int:
        return len(self.client.table.sas())

    async def redirect(self, sa: DrainSa, gateway: IPAddress) -> None:
        try:
            await self.client.call("redirect", {"ike-id": str(sa.ike_id),
                                                "gateway": str(gateway)})
        except ViciError as exc:
            raise RedirectFailed(str(exc)) from None


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.redirects = Counter("mobike_redirects", "IKE_SAs redirected (RFC 5685), by "
                                 "direction (out: away from this gateway) and reason.",
                                 ("direction", "reason"), registry=registry)
        self.peer_up = Gauge("mobike_pool_peer_up", "1 while a pool peer's metrics answer.",
                             ("gateway",), registry=registry)
        self.peer_load = Gauge("mobike_pool_peer_load", "IKE_SAs a pool peer reported.",
                               ("gateway",), registry=registry)
        self.drain = Gauge("mobike_drain_ike_sas", "The current (or last) drain's IKE_SAs "
                           "by state: total, redirected, failed, remaining.",
                           ("state",), registry=registry)


class PoolService:
    def __init__(self, client: ViciClient | RedirectBackend, log: EventLog,
                 settings: PoolSettings, *, registry: CollectorRegistry | None = None,
                 fetch: Fetch = fetch_page) -> None:
        self.backend: RedirectBackend = (client if not isinstance(client, ViciClient)
                                         else ViciRedirects(client))
        self.log = log
        self.view = PoolView(settings)
        self.metrics = PoolMetrics(registry) if registry is not None else None
        self._fetch = fetch
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.drain: Drain | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._limit_busy: set[int] = set()  # ike ids redirected for max_ike_sas
        self._limit_task: asyncio.Task[None] | None = None
        self._full = False  # pool_full reported, until a limit redirect goes through again

    @property
    def settings(self) -> PoolSettings:
        return self.view.settings

    def start(self) -> None:
        if self.settings.gateways and self._task is None:
            self._task = asyncio.ensure_future(self._poll_loop())
            self._spawn(self._watch_departures())

    async def close(self) -> None:
        for task in (self._task, self._drain_task, self._limit_task, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._task = self._drain_task = self._limit_task = None

    def set_settings(self, settings: PoolSettings) -> None:
        self.view.set_settings(settings)
        if self._task is None:
            self.start()
        self._wake.set()

    # -- reading the peers --------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for gw in self.view.due(now):
                self._spawn(self._read(gw, now))
            for change in self.view.expire(now):
                self._changed(change)
            self._enforce_limit(now)
            deadline = self.view.next_deadline()
            wait = IDLE_WAKE if deadline is None else min(IDLE_WAKE, max(0.0, deadline - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _watch_departures(self) -> None:
        """Tell the view when a redirected IKE_SA leaves (its client is up at the target),
        so the target's next read is trusted to count it (``PoolView.left``)."""
        loop = asyncio.get_running_loop()
        while True:
            pending = self.view.pending()
            now = loop.time()
            for spi in pending:
                if self.backend.established(spi) is None:
                    self.view.left(spi, now)
            await asyncio.sleep(DEPARTURE_CHECK if pending else IDLE_WAKE)

    async def _read(self, gw: PoolGateway, sent_at: float) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.settings.peer_timeout
        try:
            page = await asyncio.wait_for(
                loop.run_in_executor(None, self._fetch, gw, timeout), timeout + 0.5)
            load = ike_sa_load(page)
        except (OSError, TimeoutError, LoadUnreadable, ValueError) as exc:
            change = self.view.on_failure(gw.address, _reason(exc))
        else:
            change = self.view.on_answer(gw.address, load, sent_at)
            if self.metrics is not None:
                self.metrics.peer_load.labels(str(gw.address)).set(load)
        if change is not None:
            self._changed(change)

    def _changed(self, change: PeerChanged) -> None:
        gw = str(change.address)
        if change.up:
            self.log.emit("pool_peer_up", gateway=gw, load=change.load)
        else:
            self.log.emit("pool_peer_down", gateway=gw, error=change.error)
        if self.metrics is not None:
            self.metrics.peer_up.labels(gw).set(1 if change.up else 0)

    # -- control requests ---------------------------------------------------------------

    def control(self, req: JsonObject) -> JsonObject:
        if req.get("cmd") == "pool":
            return {"ok": True, "peers": self.view.snapshot(),
                    "max_ike_sas": self.settings.max_ike_sas,
                    "drain": None if self.drain is None else self.drain.progress()}
        return self._start_drain(req)

    def _start_drain(self, req: JsonObject) -> JsonObject:
        if self.drain is not None and not self.drain.done:
            return _refused("drain_in_progress", f"drain {self.drain.id} is still running")
        rate = req.get("rate")
        if rate is None:
            rate = self.settings.rate
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= 10_000:
            return {"ok": False, "error": '"rate" must be a number of redirects per second'
                    " (more than 0, at most 10000)"}
        to: tuple[IPAddress, ...] | None = None
        raw = req.get("to")
        if raw is not None:
            if not isinstance(raw, list) or not raw:
                return {"ok": False, "error": '"to" must be a list of gateway addresses'}
            try:
                to = tuple(ipaddress.ip_address(str(a)) for a in raw)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            strangers = [str(a) for a in to if a not in self.view.peers]
            if strangers:
                return _refused("not_in_pool", f"{', '.join(strangers)} not in mobike {{ pool "
                                "{ gateways } } (its load cannot be read)")
            down = [str(a) for a in to if not self.view.is_up(a)]
            if down:
                return _refused("target_down", f"target {', '.join(down)} is down: "
                                + "; ".join(f"{p['gateway']}: {p['error']}"
                                            for p in self.view.snapshot()
                                            if p["gateway"] in down))
        if not self.settings.gateways:
            return _refused("no_pool", "no mobike { pool { gateways } } in the config")
        sas = self.backend.drain_sas()
        if sas and self.view.choose(exclude={sa.local for sa in sas}, among=to) is None:
            return _refused("no_target", "no other gateway of the pool answers")
        loop = asyncio.get_running_loop()
        drain = Drain(f"drain-{next(self._ids)}", sas, rate=float(rate), to=to, now=loop.time())
        self.drain = drain
        self._drain_task = asyncio.ensure_future(self._run(drain, "drain", announce=True))
        return {"ok": True, "drain": drain.id, "ike_sas": drain.total, "rate": drain.rate,
                "to": None if to is None else [str(a) for a in to],
                "targets": [p for p in self.view.snapshot() if p["up"]]}

    # -- carrying out redirects ---------------------------------------------------------

    async def _run(self, drain: Drain, reason: str, *, announce: bool) -> None:
        loop = asyncio.get_running_loop()
        if announce:
            self.log.emit("drain_started", drain=drain.id, ike_sas=drain.total,
                          rate=drain.rate, to=None if drain.to is None
                          else [str(a) for a in drain.to])
        self._gauge(drain)
        while (at := drain.next_at()) is not None:
            now = loop.time()
            if now < at:
                await asyncio.sleep(at - now)
                continue
            head = drain.queue[0]
            if not self.backend.established(head.ike_spi):
                drain.skip_gone(head)
                continue
            step = drain.take(self.view, now)
            if step is None:
                continue
            ok = await self._redirect(step, drain, reason)
            drain.on_result(step, ok)
            if reason == "max_ike_sas":  # tried once: never chosen again while it stays
                self._limit_busy.add(step.sa.ike_id)
            self._gauge(drain)
        if not announce:
            if drain.stopped and not self._full:
                self.log.write("warning", "pool_full", {
                    "ike_sas": self.backend.ike_sas(),
                    "max_ike_sas": self.settings.max_ike_sas, "reason": drain.stopped})
            self._full = drain.stopped is not None
        if announce:
            stayed = await self._stayed(drain)
            ok = drain.stopped is None and drain.failed == 0 and not stayed
            self.log.emit("drain_completed", **drain.progress(), stayed=len(stayed),
                          result="completed" if ok else "incomplete",
                          duration_ms=round((loop.time() - drain.started) * 1000))

    async def _stayed(self, drain: Drain) -> list[str]:
        """The redirected IKE_SAs still here after ``LEAVE_WAIT``: charon's client deletes
        its old IKE_SA only once the new one is up at the target, so one that stays
        never arrived there (a target that died after the redirect, a refusal there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAVE_WAIT
        while True:
            stayed = [spi for spi in drain.sent if self.backend.established(spi) is not None]
            if not stayed or loop.time() >= deadline:
                return stayed
            await asyncio.sleep(0.2)

    async def _redirect(self, step: Redirect, drain: Drain, reason: str) -> bool:
        sa, gw = step.sa, str(step.gateway.address)
        fields = {"drain": drain.id, "conn": sa.conn, "ike_spi": sa.ike_spi,
                  "ike_id": sa.ike_id, "remote": str(sa.remote), "gateway": gw,
                  "reason": reason}
        try:
            await self.backend.redirect(sa, step.gateway.address)
        except RedirectFailed as exc:
            self.log.emit("sa_redirect_failed", **fields, error=str(exc))
            return False
        drain.sent.append(sa.ike_spi)
        self.log.emit("sa_redirected", **fields, done=drain.redirected + drain.failed + 1,
                      total=drain.total)
        if self.metrics is not None:
            self.metrics.redirects.labels("out", reason).inc()
        return True

    def _gauge(self, drain: Drain) -> None:
        if self.metrics is None or drain is not self.drain:  # the operator's drain only
            return
        for state, n in (("total", drain.total), ("redirected", drain.redirected),
                         ("failed", drain.failed), ("remaining", drain.remaining)):
            self.metrics.drain.labels(state).set(n)

    def _enforce_limit(self, now: float) -> None:
        """``max_ike_sas``: the newest IKE_SAs beyond it go to the least loaded peer that
        is under the same limit (one ``pool { }`` for the pool), at the pool's rate, never
        while an operator's drain runs. A full pool keeps them (no bouncing between
        gateways: charon's client gives up after 5 redirects in 300 s)."""
        limit = self.settings.max_ike_sas
        if limit <= 0 or any(t is not None and not t.done()
                             for t in (self._drain_task, self._limit_task)):
            return
        sas = self.backend.drain_sas()
        self._limit_busy &= {sa.ike_id for sa in sas}
        excess = over_limit(sas, limit, self._limit_busy)
        if not excess:
            return
        drain = Drain(f"limit-{next(self._ids)}", excess, rate=self.settings.rate, to=None,
                      now=now, own=frozenset(sa.local for sa in sas), room=limit)
        self._limit_task = asyncio.ensure_future(self._run(drain, "max_ike_sas",
                                                           announce=False))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _refused(reason: str, error: str) -> JsonObject:
    return {"ok": False, "reason": reason, "error": error}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(text) or type(exc).__name__
