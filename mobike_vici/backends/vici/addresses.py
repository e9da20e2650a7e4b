"""The peer addresses charon lets us see over VICI, from its messages (pure).

``list-sas`` and the SA events show only the address an IKE_SA uses
(``remote-host``), never the ADDITIONAL_*_ADDRESS list charon got from the peer;
charon logs that list only at level 2, which its VICI ``log`` event never carries
(the vici logger stops at level 1). What does reach us at level 1 is every path
charon's MOBIKE checks (``checking path L - R``, group IKE), which names each peer
address charon has a source address for. ``list-conns`` adds the configured
``remote_addrs``, when they are addresses rather than names, ranges or ``%any``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ...types import Endpoint, IPAddress, Path
from .events import PathChecked

LOG_PREFIX = "checking path "
"""The only log lines the client passes on (a cheap test on the reader thread)."""
_CHECKING = re.compile(r"checking path (\S+)\[(\d{1,5})\] - (\S+)\[(\d{1,5})\]\s*$")


def configured_addresses(conn: Mapping[str, Any]) -> list[IPAddress]:
    """The literal addresses among a decoded ``list-conns`` body's ``remote_addrs``."""
    value = conn.get("remote_addrs", [])
    items: Iterable[Any] = value if isinstance(value, list) else [value]
    out: list[IPAddress] = []
    for item in items:
        try:
            out.append(ipaddress.ip_address(str(item).strip()))
        except ValueError:
            continue  # a name, a range, a prefix or %any: not an address of its own
    return out


def path_checked(message: Mapping[str, Any]) -> PathChecked | None:
    """A decoded VICI ``log`` event as ``PathChecked``; None for any other line (or one
    without its IKE_SA, or with a malformed endpoint)."""
    msg = message.get("msg")
    if not isinstance(msg, str) or not msg.startswith(LOG_PREFIX):
        return None
    m = _CHECKING.match(msg)
    name, uid = message.get("ikesa-name"), message.get("ikesa-uniqueid")
    if m is None or not isinstance(name, str) or uid is None:
        return None
    try:
        path = Path(Endpoint(ipaddress.ip_address(m.group(1)), int(m.group(2))),
                    Endpoint(ipaddress.ip_address(m.group(3)), int(m.group(4))))
        unique_id = int(str(uid))
    except ValueError:
        return None
    if path.local.port > 0xFFFF or path.remote.port > 0xFFFF:
        return None
    return PathChecked(conn=name, unique_id=unique_id, path=path)
