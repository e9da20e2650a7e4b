"""The operator's ``prefer`` and ``move`` requests on the control socket, for either daemon.

Requests: ``{"cmd": "prefer", "conn": NAME, "local": ADDR}`` (``"local": null``
clears) and ``{"cmd": "move", "conn": NAME, "local": ADDR}``. The daemon's path
managers judge them (``PathManager.set_preferred_local`` / ``request_move``); a
refusal comes back as ``"ok": false`` with a ``reason`` code and a sentence.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from ..types import IPAddress

JsonObject = dict[str, Any]

REFUSALS = {
    "responder": "this side is the responder; RFC 4555 lets only the initiator move",
    "excluded": "the policy excludes that local address",
    "no_such_path": "no candidate path from that local address",
    "already_active": "the IKE_SA already uses that local address",
    "move_in_progress": "a move is in progress",
    "link_down": "that address's link is down",
    "path_down": "that path is down (probes unanswered)",
    "path_unverified": "that path has not answered a probe yet",
    "no_ike_sa": "no MOBIKE IKE_SA of that connection is established here",
    "unknown_conn": "no MOBIKE connection of that name in the config",
}


class Operable(Protocol):
    """What a daemon offers the operator (``backends.protocol.MobilityBackend`` has it)."""

    def prefer(self, conn: str, local: IPAddress | None, now: float) -> str | None: ...
    def move(self, conn: str, local: IPAddress, now: float) -> str | None: ...
    def conn_spis(self, conn: str) -> list[str]: ...


def _refused(reason: str) -> JsonObject:
    return {"ok": False, "reason": reason, "error": REFUSALS.get(reason, reason)}


def operator_request(target: Operable, req: JsonObject, now: float) -> JsonObject:
    cmd = req.get("cmd")
    conn = req.get("conn")
    if not isinstance(conn, str) or not conn:
        return {"ok": False, "error": '"conn" must name a connection'}
    raw = req.get("local")
    local: IPAddress | None = None
    if raw is not None:
        try:
            local = ipaddress.ip_address(str(raw))
        except ValueError:
            return {"ok": False, "error": f"{raw!r} is not an IP address"}
    spis = target.conn_spis(conn)
    if cmd == "move":
        if local is None:
            return {"ok": False, "error": "move needs a local address"}
        refused = target.move(conn, local, now)
    else:
        refused = target.prefer(conn, local, now)
    if refused is not None:
        return _refused(refused)
    return {"ok": True, "conn": conn, "local": None if local is None else str(local),
            "ike_sas": spis}
