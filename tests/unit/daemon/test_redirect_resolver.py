"""A REDIRECT's FQDN resolved beside the core: the answer, a name that does not resolve,
one that takes too long, the bound on lookups at once, and the system resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from mobike_vici.core.events import RedirectResolving
from mobike_vici.daemon.redirect_resolver import (
    MAX_LOOKUPS,
    RedirectResolver,
    system_resolve,
)
from mobike_vici.types import IPAddress

from .fakes import RecordingLog

GW = ipaddress.ip_address("203.0.113.3")


class Engine:
    def __init__(self) -> None:
        self.answers: list[tuple[str, str, list[IPAddress]]] = []

    def redirect_resolved(self, ike_spi: str, name: str, addresses: Sequence[IPAddress],
                          now: float) -> None:
        if ike_spi == "gone":
            raise KeyError(ike_spi)
        self.answers.append((ike_spi, name, list(addresses)))


def asked(name: str, spi: str = "a_1") -> RedirectResolving:
    return RedirectResolving(conn="home", ike_spi=spi, gateway=name)


async def _run(resolver: RedirectResolver, *events: RedirectResolving) -> None:
    for event in events:
        resolver.on_event(event)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not resolver._tasks:
            break
    await resolver.close()


def make(table: dict[str, object], delay: float = 0.0, timeout: float = 1.0
         ) -> tuple[RedirectResolver, Engine, RecordingLog, list[int]]:
    async def resolve(name: str) -> list[IPAddress]:
        await asyncio.sleep(delay)
        found = table.get(name)
        if isinstance(found, Exception):
            raise found
        return list(found) if isinstance(found, list) else []

    engine, log, flushed = Engine(), RecordingLog(), []
    resolver = RedirectResolver(engine, log, lambda: 7.0, lambda: flushed.append(1),
                                resolve=resolve, timeout=timeout)
    return resolver, engine, log, flushed


def test_the_addresses_go_back_to_the_engine() -> None:
    resolver, engine, log, flushed = make({"gw-c.example": [GW]})
    asyncio.run(_run(resolver, asked("gw-c.example")))
    assert engine.answers == [("a_1", "gw-c.example", [GW])]
    assert flushed == [1] and log.named("redirect_unresolved") == []
    assert log.named("redirect_resolving") == [
        {"conn": "home", "ike_spi": "a_1", "gateway": "gw-c.example"}]


def test_a_name_that_does_not_resolve_is_said_and_refused() -> None:
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    resolver, engine, log, _ = make({"nowhere.example": error})
    asyncio.run(_run(resolver, asked("nowhere.example"), asked("empty.example", "b_1")))
    assert engine.answers == [("a_1", "nowhere.example", []), ("b_1", "empty.example", [])]
    errors = {e["gateway"]: e["error"] for e in log.named("redirect_unresolved")}
    assert errors == {"nowhere.example": "[Errno -2] Name or service not known",
                      "empty.example": "no address"}


def test_a_slow_name_is_given_up_after_the_timeout() -> None:
    resolver, engine, log, _ = make({"slow.example": [GW]}, delay=5.0, timeout=0.05)
    asyncio.run(_run(resolver, asked("slow.example")))
    assert engine.answers == [("a_1", "slow.example", [])]
    assert log.named("redirect_unresolved")[0]["error"] == "no answer in 0.05 s"


def test_lookups_at_once_are_bounded_and_a_gone_sa_is_no_error() -> None:
    resolver, engine, log, _ = make({"gw.example": [GW]}, delay=0.05)
    events = [asked("gw.example", f"{k}_1") for k in range(MAX_LOOKUPS + 1)]
    asyncio.run(_run(resolver, *events, asked("gw.example", "gone")))
    followed = [spi for spi, _, found in engine.answers if found == [GW]]
    assert len(followed) == MAX_LOOKUPS
    assert ("16_1", "gw.example", []) in engine.answers  # beyond the bound: refused
    assert [e["ike_spi"] for e in log.named("redirect_unresolved")] == [
        f"{MAX_LOOKUPS}_1", "gone"]


def test_the_system_resolver_reads_the_hosts_file() -> None:
    found = asyncio.run(system_resolve("localhost"))
    assert ipaddress.ip_address("127.0.0.1") in found
    assert len(found) == len(set(found))
