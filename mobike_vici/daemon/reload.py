"""SIGHUP, for both daemons: reopen the events file (logrotate), re-read the config,
and say what was applied (``config_reloaded``) or why not (``config_rejected``,
``events_reopen_failed``, ``reload_skipped``), with the same fields from either.

What a daemon applies in between is its own: ``native`` the ``mobike { }`` policy
(connections stay as they are), ``run`` the policy and, with ``--load``, the
connections into charon."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from ..config.errors import ConfigError
from ..eventlog import EventLog

C = TypeVar("C")


def reread(log: EventLog, file: str, reload_config: Callable[[], C] | None,
           reopen_events: Callable[[], None] | None) -> C | None:
    """Reopen the events file, then the config re-read; None (and the event that says
    why) when there is none to re-read or it is bad: the running config stays."""
    if reopen_events is not None:
        try:
            reopen_events()
        except OSError as exc:
            log.emit("events_reopen_failed", error=exc.strerror or str(exc))
    if reload_config is None:
        log.emit("reload_skipped", reason="no config file to re-read")
        return None
    try:
        return reload_config()
    except ConfigError as exc:
        log.emit("config_rejected", file=exc.file, line=exc.line, error=str(exc))
    except OSError as exc:
        name = exc.filename or file
        log.emit("config_rejected", file=name, line=0, error=f"{name}:0: {exc.strerror or exc}")
    return None


def reloaded(log: EventLog, file: str, *, policy_changed: bool, conns: Iterable[str],
             connections_unchanged: bool, unloaded: Iterable[str] = ()) -> None:
    """``config_reloaded``: ``connections_unchanged`` when the file changed connections
    (secrets, pools) that this daemon kept as they were; ``unloaded``, what ``run
    --load`` removed from charon."""
    log.emit("config_reloaded", file=file, policy_changed=policy_changed,
             conns=sorted(conns), unloaded=list(unloaded),
             connections_unchanged=connections_unchanged)
