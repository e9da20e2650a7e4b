"""The event stream: structlog set up to write JSON lines, the schema of core events, redaction.

Every line is one object with ``timestamp`` (RFC 3339, UTC, microseconds), ``event`` and
``level`` first, then ``conn``, ``ike_spi``, ``local`` and ``remote`` where known. Event
names are an outward contract (README, "Event stream"): add new ones, never rename.

Key material never reaches the output: the redaction processor replaces any field whose
name looks like a key or secret, any raw bytes and any key container (``ChildKeys``,
``IkeKeys``) with ``"<redacted>"``, however deeply nested. ``event_fields`` also
never copies keys out of ``ChildSaInstalled`` in the first place; redaction is the
second line of defence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import ipaddress
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from .core.events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    ChildSaUpdated,
    ClientRedirected,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRedirected,
    IkeSaRekeyed,
    MessageFragmented,
    MoveFailed,
    NatMappingChanged,
    PacketDropped,
    PeerAddressesUpdated,
    PeerMoved,
    ProbeResult,
    RedirectRefused,
    UpdateRejected,
)
from .ikev2.crypto import ChildKeys, IkeKeys
from .mobike import events as pe
from .mobike import health as hm
from .types import Endpoint, Path

REDACTED = "<redacted>"

# Field names that carry secrets: "key", "keys", "secret", "psk", "password" as a whole
# word of a snake/kebab name (so "ike_spi" and "keyingtries" stay), or IKE's SK_* keys.
_SECRET_NAME = re.compile(
    r"(^|[_-])(keys?|secrets?|psks?|passwords?|keymat)([_-]|$)|^sk_", re.IGNORECASE
)

# Front of every line, in this order; the rest follows in insertion order.
_LEADING_KEYS = ("timestamp", "event", "level", "conn", "ike_spi", "local", "remote")

EventDict = MutableMapping[str, Any]
Fields = dict[str, object]


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """True for a field name that may hold key material (cached: names repeat)."""
    return _SECRET_NAME.search(name) is not None


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds always present (isoformat drops a zero fraction)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spi_hex(spi: int) -> str:
    """A 32-bit ESP SPI as charon prints it: eight hex digits."""
    return f"{spi:08x}"


# --- processors ---------------------------------------------------------------------


# Values that are final as they are: most fields, checked before the ABC isinstance chains.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _redact_value(value: object) -> object:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, ChildKeys | IkeKeys | bytes | bytearray | memoryview):
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if is_secret_name(str(k)) else _redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return value


def redact_key_material(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace secrets by ``"<redacted>"`` (see module docstring)."""
    for name in list(event_dict):
        if is_secret_name(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _redact_value(event_dict[name])
    return event_dict


def _plain(value: object) -> object:
    """Turn the project's value types into JSON-ready ones."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Endpoint | Path | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Unknown dataclasses are summarised by type only: their fields may hold keys.
        return f"<{type(value).__name__}>"
    return str(value)


def plain_values(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: endpoints, paths and addresses as strings, tuples as lists."""
    for name, value in list(event_dict.items()):
        event_dict[name] = _plain(value)
    return event_dict


def order_keys(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the fixed leading keys first, for people reading the stream."""
    ordered: dict[str, Any] = {k: event_dict[k] for k in _LEADING_KEYS if k in event_dict}
    ordered.update((k, v) for k, v in event_dict.items() if k not in ordered)
    return ordered


def timestamper(clock: Callable[[], datetime]) -> Callable[[object, str, EventDict], EventDict]:
    def add_timestamp(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = format_timestamp(clock())
        return event_dict

    return add_timestamp


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EventTap:
    """structlog processor: hands each finished event (redacted, plain values) to its
    subscribers, e.g. the metrics and ``mobike-vici events --follow``.

    Subscribers run on the logging thread and must not block; one that raises is
    dropped (a broken observer must not silence the stream).
    """

    def __init__(self) -> None:
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Add ``fn``; returns the call that removes it again."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(fn)
        return unsubscribe

    def __call__(self, _logger: object, _method: str, event_dict: EventDict) -> EventDict:
        for fn in list(self._subscribers):
            try:
                fn(dict(event_dict))
            except Exception:
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(fn)
        return event_dict


SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
"""syslog(3) priorities of our levels, for journald."""


def journal_stream(stream: object, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is a stream systemd connected to journald: ``$JOURNAL_STREAM``
    names its device and inode. Comparing them, not only seeing the variable, tells a
    redirect (``>file``, a pipe) from the journal, as sd_journal_stream_fd(3) asks."""
    env = os.environ if environ is None else environ
    want = env.get("JOURNAL_STREAM", "")
    if ":" not in want:
        return False
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == want


class JsonLines:
    """structlog renderer: the event as one JSON object. With ``syslog_prefix`` (stdout is
    journald) the line starts with its level's ``<N>``: journald strips it and keeps it as
    the entry's PRIORITY, so ``journalctl -p warning`` finds our warnings and the message
    stays pure JSON. Never for a file or a pipe: those lines are JSON alone."""

    def __init__(self, syslog_prefix: bool = False) -> None:
        self._json = structlog.processors.JSONRenderer()
        self._prefix = syslog_prefix

    def __call__(self, logger: object, method: str, event_dict: EventDict) -> str:
        line = str(self._json(logger, method, event_dict))
        if not self._prefix:
            return line
        return f"<{SYSLOG_PRIORITY.get(str(event_dict.get('level')), 6)}>{line}"


class SyslogLines:
    """A text stream that starts every line it passes on with ``<priority>`` (stderr
    under journald: our error messages and any traceback are errors there too)."""

    def __init__(self, stream: TextIO, priority: int) -> None:
        self._stream = stream
        self._prefix = f"<{priority}>"
        self._at_start = True

    def write(self, text: str) -> int:
        out: list[str] = []
        for piece in text.splitlines(keepends=True):
            if self._at_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def processors(clock: Callable[[], datetime] = _utc_now,
               tap: EventTap | None = None, *, syslog_prefix: bool = False) -> list[Any]:
    """The processor chain, ending in the JSON renderer (``tap`` sees what it renders;
    ``syslog_prefix``: see ``JsonLines``)."""
    chain: list[Any] = [
        structlog.processors.add_log_level,
        timestamper(clock),
        redact_key_material,
        plain_values,
        order_keys,
    ]
    if tap is not None:
        chain.append(tap)
    chain.append(JsonLines(syslog_prefix))
    return chain


LOG_LEVELS = ("debug", "info", "warning", "error")


def level_number(level: str) -> int:
    """``--log-level`` as structlog's number; unknown names mean everything (0)."""
    return _LEVELS.get(level, 0)


def make_logger(
    stream: TextIO | None = None, clock: Callable[[], datetime] = _utc_now,
    level: str = "debug", tap: EventTap | None = None,
) -> structlog.typing.FilteringBoundLogger:
    """A logger writing one flushed JSON line per event at ``level`` or above to ``stream``
    (stdout by default).

    Not global: tests and several daemons in one process each get their own. Lines to
    journald carry their priority (``JsonLines``).
    """
    out = stream if stream is not None else sys.stdout
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.PrintLogger(out),
        processors=processors(clock, tap, syslog_prefix=journal_stream(out)),
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        cache_logger_on_first_use=False,
    )


class EventsFileError(OSError):
    """The events file cannot be opened; the message is for the operator (exit code 2)."""


EVENTS_FILE_MODE = 0o600
"""A new events file: SPIs, peers and identities are the operator's business alone."""


def open_events_file(path: str) -> TextIO:
    """Open ``path`` for appending JSON lines, line-buffered.

    A new file is created ``EVENTS_FILE_MODE``; an existing one is appended to and
    keeps its mode. A symbolic link at ``path`` is refused (O_NOFOLLOW): a daemon
    running as root must not be pointed at another file by whoever can write the
    directory. Only a regular file (or a character device such as /dev/null) is
    accepted. Raises EventsFileError.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, EVENTS_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EventsFileError(
                f"{path}: is a symbolic link; refusing to follow it (give the real path)"
            ) from exc
        raise EventsFileError(f"{path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise EventsFileError(f"{path}: not a regular file")
        # Line-buffered so a reader tailing the file sees each event as it happens.
        return open(fd, "a", buffering=1, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def configure(stream: TextIO | None = None, level: str = "debug") -> None:
    """Route every ``structlog.get_logger()`` in the process to the same JSON stream, so
    the daemon's stream is one: the VICI client, the netlink monitor and the steering write
    to it in the same format and under the same ``--log-level`` as the daemon's own events.

    Only the daemon calls this; libraries receive an injected logger or use the global one.
    """
    out = stream if stream is not None else sys.stdout
    structlog.configure(
        processors=processors(syslog_prefix=journal_stream(out)),
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


class EventStream:
    """The events file, reopened on request (SIGHUP after logrotate renamed it).

    Loggers hold this object, not the file: after ``reopen()`` every logger writes to
    the new file. Writes after ``close()`` are dropped.
    """

    def __init__(self, path: str, opener: Callable[[str], TextIO] = open_events_file) -> None:
        self.path = path
        self._opener = opener
        self._file: TextIO | None = opener(path)

    def write(self, text: str) -> int:
        return self._file.write(text) if self._file is not None else len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def reopen(self) -> None:
        """Open ``path`` again (a new file if it was renamed); the old one is closed after.
        Raises ``EventsFileError`` (an ``OSError``) and keeps writing to the old file when
        the open fails."""
        new = self._opener(self.path)
        old, self._file = self._file, new
        if old is not None:
            old.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- schema of core events ----------------------------------------------------------

# Events that point at trouble; everything else is informational.
_WARNING_EVENTS = frozenset({
    "packet_dropped", "exchange_failed", "auth_failed", "path_down", "update_rejected",
    "redirect_refused",
    "send_failed", "receive_failed", "shutdown_incomplete", "reload_skipped",
    "socket_unavailable",
    "vici_disconnected", "config_rejected", "events_reopen_failed", "charon_unreachable",
    "control_refused", "data_path_repair_started",
})
# A bug in our own code, caught by a safety net.
_ERROR_EVENTS = frozenset({"engine_error"})
# Several a second per IKE_SA: only for debugging.
_DEBUG_EVENTS = frozenset({"probe_result"})


def level_of(event_name: str) -> str:
    if event_name in _ERROR_EVENTS:
        return "error"
    if event_name in _DEBUG_EVENTS:
        return "debug"
    return "warning" if event_name in _WARNING_EVENTS else "info"


def _path_fields(path: Path) -> Fields:
    return {"local": str(path.local), "remote": str(path.remote)}


def event_fields(event: Event | pe.Event | hm.Event, /, **context: object
                 ) -> tuple[str, Fields]:
    """The stream name and fields of any event the daemons log: the engine's
    (``core.events``), a path manager's (``mobike.events``) and a data path check's
    (``mobike.health``); ``context`` (``conn``, ``ike_spi``) comes first. The one
    schema of ``docs/events.md``. Pure; never copies key material."""
    named = _path_event(event) or _check_event(event) or _core_event(event)
    if named is None:
        # An event class newer than this table: say so instead of guessing its fields,
        # which may include keys.
        family = "path_event" if type(event).__module__ == pe.__name__ else "core_event"
        named = family, {"type": type(event).__name__}
    name, fields = named
    return name, {**context, **fields}


def _path_event(event: object) -> tuple[str, Fields] | None:
    """A path manager's event (``MoveRequested`` is acted on, logged as its handover)."""
    if not isinstance(event, pe.PathUp | pe.PathDown | pe.PathSelected | pe.HandoverStarted
                      | pe.MoveRequested | pe.HandoverCompleted | pe.HandoverFailed
                      | pe.PreferenceChanged | pe.PathStalled):
        return None
    base = _path_fields(event.path)
    match event:
        case pe.PathUp():
            return "path_up", {**base, "rtt_ms": round(event.rtt_ms, 3)}
        case pe.PathDown():
            return "path_down", {**base, "reason": event.reason}
        case pe.PathSelected():
            return "path_selected", {**base, "reason": event.reason}
        case pe.MoveRequested():
            return "move_requested", {**base, "reason": event.reason}
        case pe.PathStalled():
            return "path_stalled", {**base, "silent_ms": round(event.silent_ms, 3)}
        case pe.PreferenceChanged():
            pref = event.preferred_local
            return "preference_changed", {**base, "source": event.source,
                                          "preferred_local": None if pref is None else str(pref)}
    old = {"old_local": str(event.old_path.local), "old_remote": str(event.old_path.remote)}
    match event:
        case pe.HandoverStarted():
            return "handover_started", {**base, **old, "reason": event.reason}
        case pe.HandoverCompleted():
            return "handover_completed", {**base, **old,
                                          "duration_ms": round(event.duration_ms, 3)}
    return "handover_failed", {**base, **old, "reason": event.reason}


def _check_event(event: object) -> tuple[str, Fields] | None:
    """A data path check's event (after a move: did the peer's ESP follow?)."""
    match event:
        case hm.DataPathVerified():
            return "data_path_verified", {**_path_fields(event.path), "after_ms": event.after_ms}
        case hm.DataPathUnverified():
            return "data_path_unverified", {**_path_fields(event.path), "reason": event.reason}
        case hm.RepairRequested():
            return "data_path_repair_started", {**_path_fields(event.path),
                                                "waited_ms": event.waited_ms,
                                                "attempt": event.attempt}
        case hm.DataPathRepaired():
            return "data_path_repaired", {**_path_fields(event.path), "dead_ms": event.dead_ms,
                                          "repair_ms": event.repair_ms}
        case hm.DataPathDead():
            return "handover_failed", {**_path_fields(event.path),
                                       "old_local": str(event.old_path.local),
                                       "old_remote": str(event.old_path.remote),
                                       "reason": event.reason, "rekeyed": event.rekeyed,
                                       "dead_ms": event.dead_ms}
    return None


def _core_event(event: object) -> tuple[str, Fields] | None:
    """An engine's event (``core.events``)."""
    match event:
        case IkeSaEstablished():
            return "ike_sa_established", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "initiator": event.initiator,
                "local_id": event.local_id,
                "remote_id": event.remote_id,
                "proposal": event.proposal,
                "nat_local": event.nat_local,
                "nat_remote": event.nat_remote,
                "virtual_ips": [str(ip) for ip in event.virtual_ips],
            }
        case IkeSaDeleted():
            return "ike_sa_deleted", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "reason": event.reason,
            }
        case IkeSaRekeyed():
            return "ike_sa_rekeyed", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                "new_ike_spi": event.new_ike_spi,
            }
        case ChildSaInstalled():
            fields: Fields = {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "child": event.child,
                "unique_id": event.unique_id,
                "spi_in": spi_hex(event.spi_in),
                "spi_out": spi_hex(event.spi_out),
                "local_ts": list(event.local_ts),
                "remote_ts": list(event.remote_ts),
                "proposal": event.proposal,
                "encap": event.encap,
                "initiator": event.initiator,
            }
            if event.rekey_of is not None:
                fields["rekey_of"] = event.rekey_of
            return "child_sa_installed", fields
        case ChildSaDeleted():
            return "child_sa_deleted", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                "child": event.child,
                "unique_id": event.unique_id,
                "spi_in": spi_hex(event.spi_in),
                "spi_out": spi_hex(event.spi_out),
                "reason": event.reason,
            }
        case ChildSaRekeyed():
            return "child_sa_rekeyed", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                "child": event.child,
                "old_unique_id": event.old_unique_id,
                "new_unique_id": event.new_unique_id,
                "old_spi_in": spi_hex(event.old_spi_in),
                "new_spi_in": spi_hex(event.new_spi_in),
            }
        case PacketDropped():
            dropped: Fields = {**_path_fields(event.path), "reason": event.reason}
            if event.ike_spi is not None:
                dropped["ike_spi"] = event.ike_spi
            return "packet_dropped", dropped
        case ExchangeFailed():
            return "exchange_failed", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                "exchange": event.exchange,
                "reason": event.reason,
            }
        case AuthenticationFailed():
            failed: Fields = {"conn": event.conn, "ike_spi": event.ike_spi,
                              "reason": event.reason, "detail": event.detail}
            if event.remote_id:
                failed["remote_id"] = event.remote_id
            return "auth_failed", failed
        case IkeSaMoved():
            # Our UPDATE_SA_ADDRESSES was answered (the path manager's handover_completed
            # follows when one asked for the move).
            return "ike_sa_moved", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.new_path),
                "old_local": str(event.old_path.local),
                "old_remote": str(event.old_path.remote),
                "duration_ms": round(event.duration * 1000.0, 3),
            }
        case PeerMoved():
            return "peer_moved", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.new_path),
                "old_local": str(event.old_path.local),
                "old_remote": str(event.old_path.remote),
            }
        case ChildSaUpdated():
            return "child_sa_updated", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "child": event.child,
                "unique_id": event.unique_id,
                "spi_in": spi_hex(event.spi_in),
                "spi_out": spi_hex(event.spi_out),
                "encap": event.encap,
            }
        case MoveFailed():
            return "move_failed", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "reason": event.reason,
            }
        case UpdateRejected():
            return "update_rejected", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "reason": event.reason,
            }
        case PeerAddressesUpdated():
            return "addresses_updated", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                "addresses": [str(a) for a in event.addresses],
            }
        case NatMappingChanged():
            return "nat_mapping_changed", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
            }
        case ProbeResult():
            return "probe_result", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "probe_id": event.probe_id,
                "ok": event.ok,
                "rtt_ms": None if event.rtt is None else round(event.rtt * 1000.0, 3),
            }
        case MessageFragmented():
            return "fragments_sent" if event.sent else "fragments_reassembled", {
                "conn": event.conn,
                "ike_spi": event.ike_spi,
                **_path_fields(event.path),
                "exchange": event.exchange,
                "fragments": event.fragments,
                "length": event.length,
            }
        case IkeSaRedirected():
            redirected: Fields = {"conn": event.conn, "ike_spi": event.ike_spi,
                                  "new_ike_spi": event.new_ike_spi,
                                  "gateway": str(event.gateway),
                                  "from_gateway": str(event.from_gateway),
                                  "phase": event.phase}
            if event.outage is not None:
                redirected["outage_ms"] = round(event.outage * 1000.0, 3)
            return "ike_sa_redirected", redirected
        case RedirectRefused():
            return "redirect_refused", {"conn": event.conn, "ike_spi": event.ike_spi,
                                        "gateway": event.gateway, "reason": event.reason}
        case ClientRedirected():
            return "client_redirected", {"ike_spi": event.ike_spi,
                                         **_path_fields(event.path),
                                         "gateway": str(event.gateway)}
    return None


class EventLog:
    """What the daemon writes to: named events with fields, and core events.

    ``tap``: the ``EventTap`` in ``logger``'s chain, for observers of the stream
    (None when the logger has none).
    """

    def __init__(self, logger: structlog.typing.FilteringBoundLogger,
                 tap: EventTap | None = None) -> None:
        self._logger = logger
        self.tap = tap

    @classmethod
    def to_stream(cls, stream: TextIO | None = None, level: str = "debug") -> EventLog:
        """An event log on ``stream`` (events at ``level`` or above) with a tap for observers."""
        tap = EventTap()
        return cls(make_logger(stream, level=level, tap=tap), tap)

    def emit(self, event_name: str, /, **fields: object) -> None:
        """Log ``event_name`` at its usual level (see ``level_of``)."""
        self.write(level_of(event_name), event_name, fields)

    def write(self, level: str, event_name: str, fields: Mapping[str, object]) -> None:
        self._logger.log(_LEVELS.get(level, _LEVELS["info"]), event_name, **fields)

    def core_event(self, event: Event) -> None:
        name, fields = event_fields(event)
        self.write(level_of(name), name, fields)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
