"""The engine's SA index against a full recount of its table (what the index spares)."""

from __future__ import annotations

from mobike_vici.core.engine import Engine
from mobike_vici.core.ike_sa import IkeState

_LIVE = (IkeState.ESTABLISHED, IkeState.REKEYING)


def assert_index_matches(engine: Engine) -> None:
    """Every SA in the table filed as it is now: deadlines, peer counts, lookups."""
    index = engine._index
    sas = dict(engine._sas.items())
    settings = engine._settings
    filed = index._filed
    assert filed.keys() == sas.keys()
    assert all(filed[spi].sa is sa for spi, sa in sas.items())
    deadlines = {spi: sa.deadline(settings.keepalive_interval, settings.half_open_timeout)
                 for spi, sa in sas.items()}
    assert {spi: f.deadline for spi, f in filed.items()} == deadlines
    known = [d for d in deadlines.values() if d is not None]
    assert engine.get_timer() == (min(known) if known else None)
    peers: dict[tuple[object, object], list[int]] = {}
    for sa in sas.values():
        if sa.state in _LIVE:
            counts = peers.setdefault((sa.remote_id, sa.path.remote.addr), [0, 0])
            counts[0] += 1
            counts[1] += len(sa.children)
    assert index._peers == peers
    for sa in sas.values():
        # What Context.peer_load answered before it had an index: one walk.
        ike = children = 0
        for other in sas.values():
            if (other.remote_id, other.path.remote.addr) != (sa.remote_id,
                                                             sa.path.remote.addr):
                continue
            if other is sa:
                children += len(other.children)
            elif other.state in _LIVE:
                ike += 1
                children += len(other.children)
        assert index.peer_load(sa) == (ike, children)
    assert index._by_uid == {uid: spi for spi, sa in sas.items() for uid in sa.children}
    by_peer_spi: dict[bytes, set[bytes]] = {}
    by_remote_id: dict[str, set[bytes]] = {}
    for spi, sa in sas.items():
        for child in sa.children.values():
            by_peer_spi.setdefault(child.spi_out, set()).add(spi)
        by_remote_id.setdefault(sa.remote_id, set()).add(spi)
    assert {k: set(v) for k, v in index._by_peer_spi.items()} == by_peer_spi
    assert {k: set(v) for k, v in index._by_remote_id.items()} == by_remote_id
    order = list(sas)  # the table's insertion order is the registration order
    assert sorted(order, key=lambda spi: filed[spi].order) == order
