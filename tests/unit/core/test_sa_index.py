"""The engine's SA index alone: its deadline heap and counts against brute force."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from mobike_vici.core.child_sa import ChildSa, ChildState
from mobike_vici.core.ike_sa import IkeSa, IkeState
from mobike_vici.core.sa_index import SaIndex
from mobike_vici.types import Endpoint, Path

from .harness import BOB, config_pair

KEEPALIVE, HALF_OPEN = 20.0, 30.0
CONN = config_pair()[1].connections[0]
PEERS = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 4)]


def _sa(n: int, remote: int = 0) -> IkeSa:
    path = Path(Endpoint(BOB, 500), Endpoint(PEERS[remote], 500))
    return IkeSa(conn=CONN, initiator=False, spi_i=n.to_bytes(8, "big"),
                 spi_r=(n + 1 << 32).to_bytes(8, "big"), path=path, created=0.0,
                 state=IkeState.ESTABLISHED, remote_id="peer")


def _child(uid: int, peer_spi: int, rekey_at: float | None = None) -> ChildSa:
    fake: Any = None  # the index reads SPIs, state and deadlines only
    return ChildSa(config=fake, unique_id=uid, spi_in=uid.to_bytes(4, "big"),
                   spi_out=peer_spi.to_bytes(4, "big"), suite=fake, proposal="", keys=fake,
                   local_ts=(), remote_ts=(), rekey_at=rekey_at)


def _deadline(sa: IkeSa) -> float | None:
    return sa.deadline(KEEPALIVE, HALF_OPEN)


def test_timers_fire_in_order_and_once_after_reschedule_and_removal() -> None:
    index = SaIndex(KEEPALIVE, HALF_OPEN)
    sas = [_sa(i) for i in range(1, 7)]
    for i, sa in enumerate(sas):
        sa.rekey_at = 10.0 * (i + 1)  # 10, 20, ... 60
        index.add(sa)
    sas[0].rekey_at = 35.0  # later than it was
    index.refile(sas[0])
    sas[5].rekey_at = 5.0  # earlier than everything
    index.refile(sas[5])
    index.remove(sas[2])  # 30: never fires
    sas[3].rekey_at = None  # 40: no timer any more
    index.refile(sas[3])
    fired: list[tuple[float, int]] = []
    now = 0.0
    while (deadline := index.next_deadline()) is not None:
        now = deadline
        for sa in index.due(now):
            fired.append((now, sas.index(sa)))
            sa.rekey_at = None  # its timer work done, nothing left to schedule
            index.refile(sa)
    assert fired == [(5.0, 5), (20.0, 1), (35.0, 0), (50.0, 4)]
    assert index.due(1e9) == []


def test_due_sas_come_in_registration_order_whatever_their_deadlines() -> None:
    index = SaIndex(KEEPALIVE, HALF_OPEN)
    sas = [_sa(i) for i in range(1, 5)]
    for sa, at in zip(sas, (4.0, 1.0, 3.0, 2.0), strict=True):
        sa.rekey_at = at
        index.add(sa)
    assert index.next_deadline() == 1.0
    assert index.due(3.5) == [sas[1], sas[2], sas[3]]
    assert index.next_deadline() == 4.0


def test_a_deadline_moved_later_unfiled_is_still_answered_right() -> None:
    index = SaIndex(KEEPALIVE, HALF_OPEN)
    sa = _sa(1)
    sa.rekey_at = 5.0
    index.add(sa)
    sa.rekey_at = 9.0  # not re-filed: the heap's top is checked before it is answered
    assert index.next_deadline() == 9.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(30))
def test_random_operations_agree_with_a_full_recount(seed: int) -> None:
    rng = random.Random(seed)
    index = SaIndex(KEEPALIVE, HALF_OPEN)
    table: dict[bytes, IkeSa] = {}
    next_spi, next_uid = 1, 1
    fired: set[bytes] = set()
    now = 0.0
    for _ in range(400):
        op = rng.randrange(9)
        sa = rng.choice(list(table.values())) if table else None
        if op == 0 or sa is None:
            sa = _sa(next_spi, rng.randrange(len(PEERS)))
            next_spi += 1
            sa.rekey_at = now + rng.uniform(0, 50)
            table[sa.our_spi] = sa
            index.add(sa)
        elif op == 1:
            del table[sa.our_spi]
            index.remove(sa)
        elif op == 2:
            sa.children[next_uid] = _child(next_uid, rng.randrange(1, 20),
                                           now + rng.uniform(0, 50))
            next_uid += 1
        elif op == 3 and sa.children:
            del sa.children[rng.choice(list(sa.children))]
        elif op == 4:
            sa.state = rng.choice(list(IkeState))
        elif op == 5:
            sa.path = Path(sa.path.local, Endpoint(rng.choice(PEERS), 500))
        elif op == 6:
            sa.remote_id = rng.choice(["peer", "other"])
        elif op == 7 and sa.children:
            child = rng.choice(list(sa.children.values()))
            child.state = rng.choice(list(ChildState))
        elif op == 8:
            # The clock moves: every SA due fires once, then has its timer work done.
            now += rng.uniform(0, 10)
            due = index.due(now)
            expected = [s for s in table.values()
                        if (d := _deadline(s)) is not None and d <= now]
            assert due == expected
            for s in due:
                fired.add(s.our_spi)
                s.rekey_at = None
                for child in s.children.values():
                    child.rekey_at = None
                index.refile(s)
        if op != 1 and op != 8:
            index.refile(sa)
        _agrees(index, table)
    assert fired  # the clock did reach some deadlines


def _agrees(index: SaIndex, table: dict[bytes, IkeSa]) -> None:
    known = [d for s in table.values() if (d := _deadline(s)) is not None]
    assert index.next_deadline() == (min(known) if known else None)
    assert len(index) == len(table)
    live = (IkeState.ESTABLISHED, IkeState.REKEYING)
    for sa in table.values():
        key = (sa.remote_id, sa.path.remote.addr)
        same = [o for o in table.values() if (o.remote_id, o.path.remote.addr) == key]
        others = [o for o in same if o is not sa and o.state in live]
        assert index.peer_load(sa) == (len(others),
                                       sum(len(o.children) for o in others) + len(sa.children))
        for uid in sa.children:
            assert index.holder_of_child(uid) is sa
        assert index.with_remote_id(sa.remote_id) == [
            o for o in table.values() if o.remote_id == sa.remote_id]
    for peer_spi in range(1, 20):
        spi = peer_spi.to_bytes(4, "big")
        assert index.holders_of_peer_spi(spi) == [
            o for o in table.values() if any(c.spi_out == spi for c in o.children.values())]
