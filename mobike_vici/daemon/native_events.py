"""How the native daemon writes one core event: unauthenticated drops are counted
per reason and summarised (``DropLog``), events the data plane annotates carry its
fields, and the rest go through the event log's one converter."""

from __future__ import annotations

from collections.abc import Mapping

from ..core.events import Event, PacketDropped
from ..eventlog import EventLog, event_fields, level_of
from .drop_log import DropLog


def write_core_event(log: EventLog, drops: DropLog, event: Event,
                     extra: Mapping[str, object], now: float) -> bool:
    """Log ``event`` (with ``extra`` fields); True when it went to the drop log, whose
    flush timer the caller then arms."""
    if isinstance(event, PacketDropped) and not event.authenticated:
        name, fields = event_fields(event)
        del fields["reason"]
        line = drops.record(event.reason, fields, now)
        if line is not None:
            log.write(level_of(name), name, line)
        return True
    if extra:
        name, fields = event_fields(event)
        log.write(level_of(name), name, {**fields, **extra})
    else:
        log.core_event(event)
    return False
