"""The VICI backend: charon attached over its VICI socket.

``session.ViciClient`` keeps one charon attached (commands, events, reconnects)
and its SAs in ``table.SaTable``; ``load`` puts our Config into charon as
``swanctl --load-all`` does; ``events`` holds the typed events both produce.
"""

from __future__ import annotations

from .errors import CommandFailed, LoadError, ViciError, ViciUnavailable
from .events import (
    ChildAdded,
    ChildRekeyed,
    ChildRemoved,
    ChildSaInfo,
    IkeSaInfo,
    PathChecked,
    SaAdded,
    SaEvent,
    SaRekeyed,
    SaRemoved,
    SaUpdated,
    ViciConnected,
    ViciDisconnected,
    ViciEvent,
)
from .load import LoadResult, initiate_start, load, reload
from .session import Backoff, ViciClient
from .table import SaTable

__all__ = [
    "Backoff", "ChildAdded", "ChildRekeyed", "ChildRemoved", "ChildSaInfo", "CommandFailed",
    "IkeSaInfo", "LoadError", "LoadResult", "PathChecked", "SaAdded", "SaEvent", "SaRekeyed",
    "SaRemoved",
    "SaTable", "SaUpdated", "ViciClient", "ViciConnected", "ViciDisconnected", "ViciError",
    "ViciEvent", "ViciUnavailable", "initiate_start", "load", "reload",
]
