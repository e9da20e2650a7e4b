"""The SA table: charon's IKE_SAs keyed by IKE SPIs, fed by VICI events and reconciled on resync.

Pure: takes decoded VICI messages (``decode``: bytes to str, sections to dicts)
and returns the typed events of ``events.py``; no sockets, no clock. The table
holds IKE_SAs charon reports as up (ESTABLISHED, REKEYING) with their live
CHILD_SAs (INSTALLED, REKEYING, UPDATING); half-open and dying SAs are left
out, because their SPIs are incomplete or they are about to vanish.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ...types import Endpoint, Path
from .events import (
    ChildAdded,
    ChildRekeyed,
    ChildRemoved,
    ChildSaInfo,
    IkeSaInfo,
    SaAdded,
    SaEvent,
    SaRekeyed,
    SaRemoved,
    SaUpdated,
)

IKE_UP_STATES = frozenset({"ESTABLISHED", "REKEYING"})
CHILD_UP_STATES = frozenset({"INSTALLED", "REKEYING", "UPDATING"})
SA_EVENTS = ("ike-updown", "ike-rekey", "ike-update", "child-updown", "child-rekey")
ZERO_SPI = "0" * 16
REKEYED_AWAY = 64
"""CHILD_SAs remembered after charon reported them rekeyed away (``rekey_undone``)."""


class ParseError(ValueError):
    """A VICI message without the fields charon always sends."""


def decode(value: Any) -> Any:
    """A raw VICI message as plain data: bytes to str, sections to dicts, lists to lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _str(d: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise ParseError(f"missing or malformed '{key}'")
    return value


def _int(d: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = d.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(str(value))
    except ValueError:
        raise ParseError(f"'{key}' is not a number: {value!r}") from None


def _strs(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key, [])
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def _endpoint(host: str, port: str) -> Endpoint:
    try:
        return Endpoint(ipaddress.ip_address(host), int(port))
    except ValueError:
        raise ParseError(f"bad endpoint {host!r} port {port!r}") from None


def spi_key(d: Mapping[str, Any]) -> str:
    """The ``<spi_i>_<spi_r>`` key of an IKE_SA entry (charon prints 16 hex digits each)."""
    return f"{_str(d, 'initiator-spi').lower()}_{_str(d, 'responder-spi', ZERO_SPI).lower()}"


def proposal_text(d: Mapping[str, Any]) -> str:
    """An SA's algorithms as swanctl --list-sas joins them: encryption[-keysize],
    integrity[-keysize], PRF, DH group, ``/``-separated; what charon left out is left out."""
    parts: list[str] = []
    for alg, size in (("encr-alg", "encr-keysize"), ("integ-alg", "integ-keysize"),
                      ("prf-alg", None), ("dh-group", None)):
        name = d.get(alg)
        if not isinstance(name, str) or not name:
            continue
        bits = d.get(size) if size is not None else None
        parts.append(f"{name}-{bits}" if isinstance(bits, str) and bits else name)
    return "/".join(parts)


def parse_child(d: Mapping[str, Any]) -> ChildSaInfo:
    """One ``child-sas`` entry of list-sas or a child event."""
    return ChildSaInfo(
        name=_str(d, "name"),
        unique_id=_int(d, "uniqueid"),
        state=_str(d, "state", ""),
        mode=_str(d, "mode", ""),
        protocol=_str(d, "protocol", ""),
        encap=d.get("encap") == "yes",
        spi_in=_str(d, "spi-in", ""),
        spi_out=_str(d, "spi-out", ""),
        local_ts=_strs(d, "local-ts"),
        remote_ts=_strs(d, "remote-ts"),
        proposal=proposal_text(d),
    )


def _children(d: Mapping[str, Any]) -> tuple[ChildSaInfo, ...]:
    section = d.get("child-sas", {})
    if not isinstance(section, Mapping):
        raise ParseError("'child-sas' is not a section")
    return tuple(parse_child(c) for c in section.values() if isinstance(c, Mapping)
                 and "uniqueid" in c)


def parse_ike(conn: str, d: Mapping[str, Any],
              endpoints: Mapping[str, Any] | None = None) -> IkeSaInfo:
    """One IKE_SA entry (list-sas or an event).

    ``endpoints``: where to read local/remote host and port instead; ike-update
    carries the new ones at the top level of the message, beside the SA
    section that still shows the old ones.
    """
    where = endpoints if endpoints is not None else d
    path = Path(
        _endpoint(_str(where, "local-host"), _str(where, "local-port")),
        _endpoint(_str(where, "remote-host"), _str(where, "remote-port")),
    )
    children = tuple(sorted(_children(d), key=lambda c: c.unique_id))
    return IkeSaInfo(
        conn=conn,
        ike_spi=spi_key(d),
        unique_id=_int(d, "uniqueid"),
        state=_str(d, "state", ""),
        path=path,
        initiator=d.get("initiator") == "yes",
        local_id=_str(d, "local-id", ""),
        remote_id=_str(d, "remote-id", ""),
        nat_local=d.get("nat-local") == "yes",
        nat_remote=d.get("nat-remote") == "yes",
        virtual_ips=_strs(d, "local-vips") + _strs(d, "remote-vips"),
        children=children,
        proposal=proposal_text(d),
    )


def responder_only(conns: Mapping[str, Any]) -> frozenset[str]:
    """Connections (decoded ``list-conns``) charon cannot initiate: no single remote host
    (``%any`` or subnets only). Their IKE_SAs are charon's as responder, whatever the
    ``initiator`` flag says after an IKE rekey charon started."""
    out = set()
    for name, body in conns.items():
        addrs = body.get("remote_addrs", []) if isinstance(body, Mapping) else []
        addrs = addrs if isinstance(addrs, list) else [addrs]
        if all(str(a).startswith("%any") or "/" in str(a) for a in addrs):
            out.add(name)
    return frozenset(out)


def parse_list_sas(entries: Iterable[Mapping[str, Any]],
                   responders: Collection[str] = ()) -> dict[str, IkeSaInfo]:
    """Decoded ``list-sas`` answers (one ``{conn: sa}`` per IKE_SA) as the table's view.

    ``responders``: connections whose IKE_SAs are charon's as responder (``responder_only``);
    on a first look after an IKE rekey charon started, its flag says otherwise."""
    out: dict[str, IkeSaInfo] = {}
    for entry in entries:
        for conn, d in entry.items():
            if not isinstance(d, Mapping) or d.get("state") not in IKE_UP_STATES:
                continue
            sa = parse_ike(conn, d)
            live = tuple(c for c in sa.children if c.state in CHILD_UP_STATES)
            out[sa.ike_spi] = dataclasses.replace(
                sa, children=live, initiator=sa.initiator and conn not in responders)
    return out


def _header(sa: IkeSaInfo) -> IkeSaInfo:
    return dataclasses.replace(sa, children=())


def _merge(base: tuple[ChildSaInfo, ...], update: Iterable[ChildSaInfo]) -> tuple[ChildSaInfo, ...]:
    by_id = {c.unique_id: c for c in base}
    for child in update:
        by_id[child.unique_id] = child
    return tuple(sorted(by_id.values(), key=lambda c: c.unique_id))


def _sa_sections(message: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(k, v) for k, v in message.items() if isinstance(v, Mapping)]


class SaTable:
    """charon's SAs as last seen; every change comes back as a list of ``SaEvent``.

    ``apply`` folds one event in, ``reconcile`` a fresh ``list-sas``. Nothing
    is dropped when charon goes away: only a reconcile after reconnecting
    removes what charon no longer has. Only ``ParseError`` escapes ``apply``
    (the table is left unchanged then).
    """

    def __init__(self) -> None:
        self._sas: dict[str, IkeSaInfo] = {}
        self._vips: dict[str, int] = {}  # virtual IP -> IKE_SAs that have it
        self._rekeyed_away: dict[int, None] = {}  # unique ids, oldest first (bounded)

    def virtual_ips(self) -> frozenset[str]:
        """Every virtual IP of every IKE_SA, kept as SAs come and go (no walk of the table)."""
        return frozenset(self._vips)

    def _set(self, sa: IkeSaInfo) -> None:
        old = self._sas.get(sa.ike_spi)
        if old is not None:
            self._drop_vips(old)
        self._sas[sa.ike_spi] = sa
        for vip in sa.virtual_ips:
            self._vips[vip] = self._vips.get(vip, 0) + 1

    def _pop(self, ike_spi: str) -> IkeSaInfo | None:
        old = self._sas.pop(ike_spi, None)
        if old is not None:
            self._drop_vips(old)
        return old

    def _drop_vips(self, sa: IkeSaInfo) -> None:
        for vip in sa.virtual_ips:
            left = self._vips.get(vip, 0) - 1
            if left > 0:
                self._vips[vip] = left
            else:
                self._vips.pop(vip, None)

    def __len__(self) -> int:
        return len(self._sas)

    def __contains__(self, ike_spi: object) -> bool:
        return ike_spi in self._sas

    def get(self, ike_spi: str) -> IkeSaInfo | None:
        return self._sas.get(ike_spi)

    def sas(self) -> tuple[IkeSaInfo, ...]:
        """All IKE_SAs, ordered by charon's unique id (creation order)."""
        return tuple(sorted(self._sas.values(), key=lambda sa: sa.unique_id))

    def by_conn(self, conn: str) -> tuple[IkeSaInfo, ...]:
        return tuple(sa for sa in self.sas() if sa.conn == conn)

    # -- resync --------------------------------------------------------------------------

    def reconcile(self, snapshot: Mapping[str, IkeSaInfo]) -> list[SaEvent]:
        """Make the table equal ``snapshot`` (``parse_list_sas``): removed, added, changed."""
        events: list[SaEvent] = []
        for key in [k for k in self._sas if k not in snapshot]:
            events += self._remove(key, "resync")
        for sa in snapshot.values():
            events += self._upsert(sa, sa.children, child_reason="resync")
        return events

    # -- events --------------------------------------------------------------------------

    def apply(self, name: str, message: Mapping[str, Any]) -> list[SaEvent]:
        """Fold one decoded VICI event (``ike-updown``, ``child-rekey``, ...) into the table."""
        handler = {
            "ike-updown": self._ike_updown,
            "ike-rekey": self._ike_rekey,
            "ike-update": self._ike_update,
            "child-updown": self._child_updown,
            "child-rekey": self._child_rekey,
        }.get(name)
        if handler is None:
            return []
        # Each handler parses its section completely before it touches the table.
        events: list[SaEvent] = []
        for conn, d in _sa_sections(message):
            events += handler(conn, d, message)
        return events

    def _ike_updown(self, conn: str, d: Mapping[str, Any],
                    message: Mapping[str, Any]) -> list[SaEvent]:
        sa = parse_ike(conn, d)
        if message.get("up") != "yes":
            return self._remove(sa.ike_spi, "down")
        old = self._sas.get(sa.ike_spi)
        children = _merge(old.children if old else (), sa.children)
        return self._upsert(sa, children, child_reason="down")

    def _ike_update(self, conn: str, d: Mapping[str, Any],
                    message: Mapping[str, Any]) -> list[SaEvent]:
        # charon 5.9.8 puts the new endpoints beside the SA section (which shows the old).
        sa = parse_ike(conn, d, message if "local-host" in message else None)
        old = self._sas.get(sa.ike_spi)
        children = _merge(old.children if old else (), sa.children)
        return self._upsert(sa, children, child_reason="down")

    def _ike_rekey(self, conn: str, d: Mapping[str, Any],
                   message: Mapping[str, Any]) -> list[SaEvent]:
        old_d, new_d = d.get("old"), d.get("new")
        if not isinstance(old_d, Mapping) or not isinstance(new_d, Mapping):
            raise ParseError("ike-rekey without old and new sections")
        old_parsed, new = parse_ike(conn, old_d), parse_ike(conn, new_d)
        # The new IKE_SA's "initiator" is whoever initiated this rekey (RFC 7296 §2.18).
        by_charon = new.initiator
        old = self._pop(old_parsed.ike_spi)
        if old is None:
            return self._upsert(new, new.children, child_reason="down")
        # charon moves the CHILD_SAs over to the new IKE_SA; the event lists none.
        new = dataclasses.replace(new, children=_merge(old.children, new.children),
                                  initiator=old.initiator)
        self._set(new)
        return [SaRekeyed(conn=conn, ike_spi=old.ike_spi, new_ike_spi=new.ike_spi,
                          old=old, new=new, by_charon=by_charon)]

    def _child_updown(self, conn: str, d: Mapping[str, Any],
                      message: Mapping[str, Any]) -> list[SaEvent]:
        sa = parse_ike(conn, d)
        old = self._sas.get(sa.ike_spi)
        if message.get("up") == "yes":
            children = _merge(old.children if old else (), sa.children)
            return self._upsert(sa, children, child_reason="down")
        if old is None:
            return []
        gone = {c.unique_id for c in sa.children}
        events: list[SaEvent] = []
        for child in old.children:
            if child.unique_id in gone:
                events.append(ChildRemoved(conn=conn, ike_spi=old.ike_spi, child=child,
                                           reason="down"))
        held = {c.unique_id for c in old.children}
        for child in sa.children:
            if child.unique_id not in held and child.unique_id in self._rekeyed_away:
                # Reported rekeyed, now down instead of replaced: the rekey never finished
                # (charon 5.9.8: its own retried rekey met the peer's DELETE), so the new
                # CHILD_SA may lack its outbound half.
                del self._rekeyed_away[child.unique_id]
                events.append(ChildRemoved(conn=conn, ike_spi=old.ike_spi, child=child,
                                           reason="rekey_undone"))
        keep = tuple(c for c in old.children if c.unique_id not in gone)
        self._set(dataclasses.replace(old, children=keep))
        return events

    def _child_rekey(self, conn: str, d: Mapping[str, Any],
                     message: Mapping[str, Any]) -> list[SaEvent]:
        spi = spi_key(d)
        section = d.get("child-sas", {})
        pairs: list[tuple[ChildSaInfo, ChildSaInfo]] = []
        for entry in section.values() if isinstance(section, Mapping) else ():
            if isinstance(entry, Mapping) and isinstance(entry.get("old"), Mapping) \
                    and isinstance(entry.get("new"), Mapping):
                pairs.append((parse_child(entry["old"]), parse_child(entry["new"])))
        sa = self._sas.get(spi)
        if sa is None:
            sa = parse_ike(conn, {k: v for k, v in d.items() if k != "child-sas"})
            events = self._upsert(sa, (), child_reason="down")
            sa = self._sas[spi]
        else:
            events = []
        children = {c.unique_id: c for c in sa.children}
        for old, new in pairs:
            self._rekeyed_away[old.unique_id] = None
            while len(self._rekeyed_away) > REKEYED_AWAY:
                del self._rekeyed_away[next(iter(self._rekeyed_away))]
            known = children.pop(old.unique_id, None)
            children[new.unique_id] = new
            events.append(ChildRekeyed(conn=conn, ike_spi=spi, old=known or old, new=new))
        self._set(dataclasses.replace(
            sa, children=tuple(sorted(children.values(), key=lambda c: c.unique_id))))
        return events

    # -- the two primitives -----------------------------------------------------------------

    def _upsert(self, sa: IkeSaInfo, children: tuple[ChildSaInfo, ...], *,
                child_reason: str) -> list[SaEvent]:
        old = self._sas.get(sa.ike_spi)
        # The original role never changes; charon's flag follows IKE rekeys (see IkeSaInfo).
        new = dataclasses.replace(sa, children=children,
                                  initiator=old.initiator if old else sa.initiator)
        self._set(new)
        conn, spi = sa.conn, sa.ike_spi
        if old is None:
            return [SaAdded(conn=conn, ike_spi=spi, sa=new)] + [
                ChildAdded(conn=conn, ike_spi=spi, child=c) for c in new.children]
        events: list[SaEvent] = []
        if _header(old) != _header(new):
            events.append(SaUpdated(conn=conn, ike_spi=spi, old=old, new=new))
        new_ids = {c.unique_id for c in new.children}
        old_ids = {c.unique_id for c in old.children}
        events += [ChildRemoved(conn=conn, ike_spi=spi, child=c, reason=child_reason)
                   for c in old.children if c.unique_id not in new_ids]
        events += [ChildAdded(conn=conn, ike_spi=spi, child=c)
                   for c in new.children if c.unique_id not in old_ids]
        return events

    def _remove(self, ike_spi: str, reason: str) -> list[SaEvent]:
        old = self._pop(ike_spi)
        if old is None:
            return []
        events: list[SaEvent] = [
            ChildRemoved(conn=old.conn, ike_spi=ike_spi, child=c, reason="ike_removed")
            for c in old.children
        ]
        events.append(SaRemoved(conn=old.conn, ike_spi=ike_spi, sa=old, reason=reason))
        return events
