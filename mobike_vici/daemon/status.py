"""The ``status`` answer: the engine's SA table as JSON, and that JSON as text for people.

The JSON is what ``mobike-vici status --json`` prints and what scripts read; the
text follows ``swanctl --list-sas`` closely enough that an operator reads it at a glance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..core.engine import ChildStatus, IkeStatus
from ..eventlog import spi_hex
from ..mobike.manager import PathManager

JsonObject = dict[str, object]


def child_json(child: ChildStatus, counters: Mapping[str, int] | None = None) -> JsonObject:
    out: JsonObject = {
        "name": child.name,
        "unique_id": child.unique_id,
        "state": child.state,
        "spi_in": spi_hex(child.spi_in),
        "spi_out": spi_hex(child.spi_out),
        "local_ts": list(child.local_ts),
        "remote_ts": list(child.remote_ts),
        "proposal": child.proposal,
    }
    if counters is not None:
        out["counters"] = dict(counters)
    return out


def ike_json(ike: IkeStatus,
             counters: Mapping[int, Mapping[str, int]] | None = None) -> JsonObject:
    return {
        "conn": ike.conn,
        "ike_spi": ike.ike_spi,
        "state": ike.state,
        "initiator": ike.initiator,
        "local": str(ike.path.local),
        "remote": str(ike.path.remote),
        "local_id": ike.local_id,
        "remote_id": ike.remote_id,
        "proposal": ike.proposal,
        "virtual_ips": [str(ip) for ip in ike.virtual_ips],
        "children": [child_json(c, counters.get(c.unique_id) if counters is not None else None)
                     for c in ike.children],
    }


def status_json(sas: Iterable[IkeStatus], backend: str,
                counters: Mapping[int, Mapping[str, int]] | None = None) -> JsonObject:
    """``counters``: the data plane's per-CHILD_SA counters by unique_id, when there is one."""
    return {"ok": True, "backend": backend,
            "ike_sas": [ike_json(ike, counters) for ike in sas]}


def _s(obj: JsonObject, key: str) -> str:
    value = obj.get(key, "")
    return str(value) if value is not None else ""


def _list(obj: JsonObject, key: str) -> list[object]:
    value = obj.get(key)
    return list(value) if isinstance(value, list) else []


def format_status(answer: JsonObject) -> str:
    """The human view of a status answer (tolerant of missing fields: it is for display)."""
    sas = [sa for sa in _list(answer, "ike_sas") if isinstance(sa, dict)]
    backend = _s(answer, "backend") or "unknown"
    lines = [f"backend {backend}, {len(sas)} IKE_SA{'' if len(sas) == 1 else 's'}"]
    if backend == "vici":
        state = "connected" if answer.get("vici_connected") else "UNREACHABLE"
        lines.append(f"charon   {state} ({_s(answer, 'vici')}), {_s(answer, 'mode')} mode,"
                     f" config {_s(answer, 'config')}")
    for sa in sas:
        role = "initiator" if sa.get("initiator") else "responder"
        lines.append(f"{_s(sa, 'conn')}: {_s(sa, 'state')}, {role}, IKE SPIs {_s(sa, 'ike_spi')}")
        lines.append(f"  path     {_s(sa, 'local')} - {_s(sa, 'remote')}")
        lines.append(f"  ids      {_s(sa, 'local_id')} - {_s(sa, 'remote_id')}")
        if _s(sa, "proposal"):
            lines.append(f"  proposal {_s(sa, 'proposal')}")
        vips = _list(sa, "virtual_ips")
        if vips:
            lines.append(f"  vips     {' '.join(str(v) for v in vips)}")
        if sa.get("preferred_local"):
            lines.append(f"  prefer   {_s(sa, 'preferred_local')} (operator)")
        lines.extend(_path_lines(sa))
        for child in _list(sa, "children"):
            if not isinstance(child, dict):
                continue
            proposal = _s(child, "proposal")
            lines.append(
                f"  {_s(child, 'name')}: #{_s(child, 'unique_id')} {_s(child, 'state')},"
                f" SPIs {_s(child, 'spi_in')}_i {_s(child, 'spi_out')}_o"
                + (f", {proposal}" if proposal else "")
            )
            local_ts = " ".join(str(t) for t in _list(child, "local_ts"))
            remote_ts = " ".join(str(t) for t in _list(child, "remote_ts"))
            lines.append(f"    local  {local_ts}")
            lines.append(f"    remote {remote_ts}")
            counters = child.get("counters")
            if isinstance(counters, dict):
                c = {k: counters.get(k, 0) for k in (
                    "bytes_in", "packets_in", "bytes_out", "packets_out", "replay_failures",
                    "integrity_failures", "decode_failures", "ts_failures")}
                lines.append(
                    f"    esp    in {c['bytes_in']} bytes ({c['packets_in']} packets),"
                    f" out {c['bytes_out']} bytes ({c['packets_out']} packets),"
                    f" dropped: replay {c['replay_failures']}, integrity"
                    f" {c['integrity_failures']}, malformed {c['decode_failures']},"
                    f" selectors {c['ts_failures']}"
                )
    return "\n".join(lines)


def _ms(value: object) -> str:
    return f"{value} ms" if isinstance(value, int | float) else "-"


def _path_lines(sa: JsonObject) -> list[str]:
    """The controller's path table: one line per local -> remote pair, the active one marked."""
    lines: list[str] = []
    paths = [p for p in _list(sa, "paths") if isinstance(p, dict)]
    if paths:
        lines.append("  paths")
    for p in paths:
        mark = "*" if p.get("active") else " "
        loss = p.get("probe_loss")
        loss_text = f"{round(100 * loss, 1)}%" if isinstance(loss, int | float) else "-"
        lines.append(f"   {mark} {_s(p, 'local')} -> {_s(p, 'remote')} ({_s(p, 'ifname')})"
                     f" {_s(p, 'state')}, srtt {_ms(p.get('srtt_ms'))}, loss {loss_text}"
                     f"{', active' if p.get('active') else ''}")
    last = sa.get("last_handover")
    if isinstance(last, dict):
        lines.append(f"  last handover {_s(last, 'at')}: {_s(last, 'from')} -> {_s(last, 'to')}"
                     f" in {_ms(last.get('duration_ms'))}")
    return lines


def paths_json(manager: PathManager) -> list[JsonObject]:
    """One IKE_SA's candidate paths, best first, with health (for status and metrics)."""
    active = manager.active_path
    return [{"local": str(p.path.local), "remote": str(p.path.remote), "ifname": p.ifname,
             "state": p.state.name.lower(),
             "srtt_ms": None if p.srtt is None else round(p.srtt * 1000, 3),
             "probe_loss": None if p.loss is None else round(p.loss, 3),
             "active": p.path == active}
            for p in manager.paths()]


def preferred_json(manager: PathManager) -> str | None:
    pref = manager.preferred_local
    return None if pref is None else str(pref)
