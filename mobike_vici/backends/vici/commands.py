"""The VICI commands the mobility glue sends when routes are not enough: terminate an
IKE_SA the policy refuses, reauthenticate or reinitiate one charon did not move
(``mobike.steer_plan``'s escalation). Each failure is an event, never an exception."""

from __future__ import annotations

from collections.abc import Sequence

from ...eventlog import EventLog
from .errors import ViciError
from .events import IkeSaInfo
from .session import ViciClient


async def terminate(client: ViciClient, log: EventLog, info: IkeSaInfo, reason: str) -> None:
    try:
        await client.call("terminate", {"ike-id": str(info.unique_id), "timeout": "-1"})
        log.emit("ike_sa_terminated", conn=info.conn, ike_spi=info.ike_spi, reason=reason)
    except ViciError as exc:
        log.emit("terminate_failed", conn=info.conn, ike_spi=info.ike_spi, error=str(exc))


async def reauth(client: ViciClient, log: EventLog, info: IkeSaInfo) -> None:
    try:
        await client.call("rekey", {"ike-id": str(info.unique_id), "reauth": "yes"})
    except ViciError as exc:
        log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                 stage="reauth", error=str(exc))


async def reinitiate(client: ViciClient, log: EventLog, info: IkeSaInfo,
                     configured: Sequence[str]) -> None:
    """Terminate, then initiate the first child of the connection: ``configured`` (the
    file's children), else those charon lists for it."""
    try:
        await client.call("terminate", {"ike-id": str(info.unique_id), "timeout": "-1"})
    except ViciError as exc:
        log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                 stage="terminate", error=str(exc))
    children = configured or charon_children(client, info.conn)
    for child in children[:1]:
        try:
            await client.initiate(child, info.conn, timeout_ms=0)
        except ViciError as exc:
            log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                     stage="initiate", error=str(exc))


def charon_children(client: ViciClient, conn: str) -> tuple[str, ...]:
    """The children charon has for ``conn`` (list-conns at the last resync): attached,
    the file may not name every connection swanctl loaded."""
    body = client.conns.get(conn)
    children = body.get("children") if isinstance(body, dict) else None
    return tuple(str(name) for name in children) if isinstance(children, dict) else ()
