"""The outbound lookup of a gateway with many CHILD_SAs: the work per packet does not
grow with the SAs, and the answer is the one a scan of every SA gives (newest wins)."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from mobike_vici.core.events import ChildSaInstalled
from mobike_vici.esp.dataplane import ChildEntry, DataPlane
from mobike_vici.esp.selector import parse_selector

from .support import iv_source
from .test_dataplane import B_NET, installed, udp4

POOL = ipaddress.IPv4Network("10.99.0.0/22")


def _gateway_sa(uid: int, vip: str, remote: str | None = None,
                rekey_of: int | None = None) -> ChildSaInstalled:
    """Side B's CHILD_SA towards one client's virtual IP (or a wider ``remote``)."""
    return dataclasses.replace(installed(initiator=False, unique_id=uid, spi_i=0x1000 + uid,
                                         spi_r=0x100000 + uid, rekey_of=rekey_of,
                                         rekey_initiator=True),
                               local_ts=(B_NET,), remote_ts=(remote or f"{vip}/32",))


def _brute(plane: DataPlane, packet_dst: str) -> int | None:
    """The newest active SA whose selectors cover B_INNER -> ``packet_dst``."""
    dst = int(ipaddress.IPv4Address(packet_dst))
    src = int(ipaddress.IPv4Address("10.88.0.1"))
    best = None
    for e in plane.entries():
        if (e.active and not e.expired and e.outbound_matches(4, src, dst, 17, 1234, 80)
                and (best is None or e.unique_id > best.unique_id)):
            best = e
    return None if best is None else best.unique_id


def test_lookup_cost_does_not_grow_with_the_sas(monkeypatch: pytest.MonkeyPatch) -> None:
    plane = DataPlane(iv_source(1))
    hosts = list(POOL.hosts())[:300]
    for uid, vip in enumerate(hosts, start=1):
        plane.install(_gateway_sa(uid, str(vip)))
    checks = 0
    real = ChildEntry.outbound_matches

    def counted(self: ChildEntry, *args: int | None) -> bool:
        nonlocal checks
        checks += 1
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ChildEntry, "outbound_matches", counted)
    for vip in (hosts[0], hosts[150], hosts[-1]):
        done = plane.protect(udp4("10.88.0.1", str(vip)))
        assert done is not None
        assert done[0].remote_ts[0].lo == int(vip)
    assert checks <= 3  # one candidate per packet, not a scan of 300


@pytest.mark.slow
def test_lookup_agrees_with_a_scan_of_every_sa() -> None:
    rng = random.Random(7)
    plane = DataPlane(iv_source(1))
    hosts = [str(h) for h in list(POOL.hosts())[:40]]
    uid = 0
    live: list[int] = []
    for _ in range(300):
        action = rng.random()
        if action < 0.5 or not live:
            uid += 1
            remote = rng.choice([None, None, None, "10.99.0.0/23", "10.99.0.0/24"])
            plane.install(_gateway_sa(uid, rng.choice(hosts), remote))
            live.append(uid)
        elif action < 0.7:
            old = rng.choice(live)
            uid += 1
            entry = plane.get(old)
            assert entry is not None
            vip = str(ipaddress.IPv4Address(entry.remote_ts[0].lo))
            remote = None if entry.remote_ts[0].lo == entry.remote_ts[0].hi else \
                str(ipaddress.IPv4Network((entry.remote_ts[0].lo, 23), strict=False))
            event = dataclasses.replace(_gateway_sa(uid, vip, remote, rekey_of=old),
                                        initiator=rng.random() < 0.5)
            plane.install(event)
            live.append(uid)
        else:
            gone = rng.choice(live)
            live.remove(gone)
            plane.remove(gone)
        for dst in [*rng.sample(hosts, 5), "10.99.1.7", "10.99.3.9"]:
            done = plane.lookup(udp4("10.88.0.1", dst))
            assert (done.unique_id if done else None) == _brute(plane, dst)


def test_rekey_of_a_wide_sa_does_not_compare_it_with_every_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A gateway whose SAs all have the same wide remote selectors (no virtual IPs):
    # each rekey we initiate takes the old SA out of the one list of such SAs.
    plane = DataPlane(iv_source(1))
    count = 300
    for uid in range(1, count + 1):
        plane.install(_gateway_sa(uid, "", remote="10.99.0.0/23"))
    comparisons = 0

    def counted(self: ChildEntry, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        return self is other

    monkeypatch.setattr(ChildEntry, "__eq__", counted, raising=False)
    # The oldest SA sits last in the newest-first list: the worst case of a scan.
    rekeyed = dataclasses.replace(_gateway_sa(count + 1, "", remote="10.99.0.0/23",
                                              rekey_of=1), initiator=True)
    plane.install(rekeyed)
    old = plane.get(1)
    assert old is not None and not old.active
    assert comparisons <= 2
    done = plane.lookup(udp4("10.88.0.1", "10.99.1.7"))
    assert done is not None and done.unique_id == count + 1


def test_a_selector_text_repeated_by_every_sa_is_parsed_once() -> None:
    plane = DataPlane(iv_source(1))
    entries = [plane.install(_gateway_sa(uid, "", remote="10.99.0.0/23"))
               for uid in range(1, 51)]
    assert all(e.remote_ts[0] is entries[0].remote_ts[0] for e in entries)
    assert all(e.local_ts[0] is entries[0].local_ts[0] for e in entries)
    # What does not parse is refused each time, never remembered as something.
    for _ in range(2):
        with pytest.raises(ValueError):
            parse_selector("10.1.0.0/33")
