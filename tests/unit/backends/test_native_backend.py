"""The native backend's mobility glue against a fake engine: probes, moves, addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mobike_vici.backends.native import Mobility
from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.core.events import (
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRekeyed,
    MoveFailed,
    PeerAddressesUpdated,
    ProbeResult,
)
from mobike_vici.types import Endpoint, IPAddress, Path

SPI = "0102030405060708_1112131415161718"
M0, M1 = ipaddress.ip_address("10.1.0.2"), ipaddress.ip_address("10.2.0.2")
M0_6 = ipaddress.ip_address("2001:db8:1::2")
M1_6 = ipaddress.ip_address("2001:db8:2::2")
GW, GW6 = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8:ff::2")
VIP = ipaddress.ip_address("10.99.0.1")


def path(local: IPAddress, remote: IPAddress = GW) -> Path:
    return Path(Endpoint(local, 4500), Endpoint(remote, 4500))


class FakeEngine:
    def __init__(self, peers: tuple[IPAddress, ...] = (GW,)) -> None:
        self.peers = peers
        self.probes: list[tuple[int, str, Path]] = []
        self.moves: list[tuple[str, Path]] = []
        self.local: list[list[IPAddress]] = []
        self.fail_probe = False

    def set_local_addresses(self, addrs: Sequence[IPAddress], now: float) -> None:
        self.local.append(list(addrs))

    def peer_addresses(self, ike_spi: str) -> tuple[IPAddress, ...]:
        return self.peers

    def probe(self, ike_spi: str, path: Path, now: float) -> int:
        if self.fail_probe:
            raise KeyError(ike_spi)
        probe_id = 100 + len(self.probes)
        self.probes.append((probe_id, ike_spi, path))
        return probe_id

    def move(self, ike_spi: str, path: Path, now: float,
             timeout: float | None = None) -> None:
        self.moves.append((ike_spi, path))


def established(local: IPAddress = M0, *, conn: str = "c", initiator: bool = True,
                vips: tuple[IPAddress, ...] = ()) -> IkeSaEstablished:
    remote = GW if local.version == 4 else GW6
    return IkeSaEstablished(conn=conn, ike_spi=SPI, path=path(local, remote),
                            initiator=initiator, local_id="a", remote_id="b",
                            proposal="aes128-sha256-x25519", virtual_ips=vips)


def answer_all(mob: Mobility, engine: FakeEngine, now: float, ok: bool = True,
               skip: IPAddress | None = None) -> list[tuple[str, dict[str, object]]]:
    """Answer every outstanding probe (except those from ``skip``); pump; repeat a bit."""
    logged: list[tuple[str, dict[str, object]]] = []
    for _ in range(10):
        pending, engine.probes = engine.probes, []
        for probe_id, spi, p in pending:
            good = ok and p.local.addr != skip
            mob.on_core_event(ProbeResult(conn="c", ike_spi=spi, path=p, probe_id=probe_id,
                                          ok=good, rtt=0.01 if good else None), now)
        logged += mob.pump(now)
        if not engine.probes:
            break
    return logged


def started(addrs: list[tuple[str, IPAddress]], peers: tuple[IPAddress, ...] = (GW,),
            policy: MobikePolicy | None = None) -> tuple[Mobility, FakeEngine]:
    engine = FakeEngine(peers)
    mob = Mobility(engine, policy or MobikePolicy())
    mob.on_addresses(addrs, 0.0)
    mob.on_core_event(established(), 0.0)
    return mob, engine


def names(logged: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [n for n, _ in logged]


def test_established_sa_is_probed_on_its_path_and_comes_up() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    logged = mob.pump(0.0)
    assert names(logged)[:2] == ["local_addresses", "path_selected"]
    assert engine.probes and engine.probes[0][2] == path(M0)
    # Every path at once, within the policy's in-flight bound (see the module docstring).
    assert [p for _, _, p in engine.probes] == [path(M0), path(M1)]
    logged = answer_all(mob, engine, 0.01)
    ups = [f["local"] for n, f in logged if n == "path_up"]
    assert "10.1.0.2[4500]" in ups and "10.2.0.2[4500]" in ups


def test_link_down_moves_to_the_other_uplink_and_reports_completion() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    mob.on_link("m0", False, 1.0)
    logged = mob.pump(1.0)
    assert engine.moves == [(SPI, path(M1))]
    assert ("path_down", "link_down") in [(n, f.get("reason")) for n, f in logged]
    assert "handover_started" in names(logged)
    mob.on_core_event(IkeSaMoved(conn="c", ike_spi=SPI, old_path=path(M0),
                                 new_path=path(M1), duration=0.005), 1.01)
    done = [f for n, f in mob.pump(1.01) if n == "handover_completed"]
    assert done and done[0]["old_local"] == "10.1.0.2[4500]"
    assert done[0]["local"] == "10.2.0.2[4500]"
    mgr = mob.manager(SPI)
    assert mgr is not None and mgr.active_path == path(M1)


def test_silent_death_fails_over_after_missed_probes() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    now = 0.01
    while not engine.moves and now < 5.0:
        now += 0.05
        mob.handle_timer(now)
        answer_all(mob, engine, now, skip=M0)
    assert engine.moves == [(SPI, path(M1))]
    assert now <= MobikePolicy().probe_interval * 3 + MobikePolicy().probe_timeout * 2


def test_move_failure_is_reported_to_the_manager() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    mob.on_link("m0", False, 1.0)
    mob.pump(1.0)
    mob.on_core_event(MoveFailed(conn="c", ike_spi=SPI, path=path(M1),
                                 reason="unacceptable_addresses"), 1.1)
    logged = mob.pump(1.1)
    assert "handover_failed" in names(logged)


def test_connection_without_mobike_gets_no_manager() -> None:
    engine = FakeEngine()
    mob = Mobility(engine, MobikePolicy(), lambda conn: conn != "plain")
    mob.on_core_event(established(conn="plain"), 0.0)
    assert mob.manager(SPI) is None
    mob.pump(0.0)
    assert engine.probes == []


def test_virtual_ips_and_tunnel_devices_are_not_path_ends() -> None:
    engine = FakeEngine()
    mob = Mobility(engine, MobikePolicy())
    mob.on_addresses([("m0", M0), ("mvici0", ipaddress.ip_address("10.77.0.1")),
                      ("lo", ipaddress.ip_address("10.88.0.1")), ("m1", M1),
                      ("eth9", VIP)], 0.0)
    mob.on_core_event(established(vips=(VIP,)), 0.0)
    assert engine.local[-1] == [M0, M1]
    assert [a.addr for a in mob.local_addresses] == [M0, M1]


def test_family_tie_keeps_the_family_of_the_sa() -> None:
    mob, engine = started([("m0", M0), ("m0", M0_6), ("m1", M1_6), ("m1", M1)],
                          peers=(GW, GW6))
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    mob.on_link("m0", False, 1.0)
    mob.pump(1.0)
    assert engine.moves == [(SPI, path(M1))]


def test_engine_refusal_is_counted_not_raised() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    engine.fail_probe = True
    logged = mob.pump(0.0)
    assert mob.errors >= 1
    assert "mobility_call_failed" in names(logged)


def test_rekeyed_ike_sa_keeps_its_manager_and_deleted_one_is_forgotten() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    new = "aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbb"
    mgr = mob.manager(SPI)
    mob.on_core_event(IkeSaRekeyed(conn="c", ike_spi=SPI, new_ike_spi=new), 0.1)
    assert mob.manager(SPI) is None and mob.manager(new) is mgr
    # A probe sent for the old SPI still lands on the manager under the new one.
    probe_id, _, p = engine.probes[0]
    mob.on_core_event(ProbeResult(conn="c", ike_spi=new, path=p, probe_id=probe_id,
                                  ok=True, rtt=0.01), 0.11)
    assert "path_up" in names(mob.pump(0.11))
    mob.on_core_event(IkeSaDeleted(conn="c", ike_spi=new, path=p, reason="deleted_by_peer"),
                      0.2)
    assert mob.conn_spis("c") == []
    assert mob.get_timer() is None


def test_engine_update_on_the_same_path_is_no_handover() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    # NAT rebinding: the engine updates on the current path by itself (RFC 4555 §3.8).
    mob.on_core_event(IkeSaMoved(conn="c", ike_spi=SPI, old_path=path(M0),
                                 new_path=path(M0), duration=0.001), 0.5)
    assert "handover_completed" not in names(mob.pump(0.5))
    assert engine.moves == []


def test_operator_move_and_a_new_ike_sa_inherits_the_preference() -> None:
    mob, engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    answer_all(mob, engine, 0.01)
    assert mob.move("nonesuch", M1, 0.5) == "no_ike_sa"
    assert mob.move("c", M1, 0.5) is None
    logged = mob.pump(0.5)
    assert engine.moves == [(SPI, path(M1))]
    changed = [f for n, f in logged if n == "preference_changed"]
    assert changed == [{"conn": "c", "ike_spi": SPI, "local": "10.1.0.2[4500]",
                        "remote": "192.0.2.2[4500]", "preferred_local": "10.2.0.2",
                        "source": "move"}]
    # the IKE_SA is gone and set up again: the preference carries over
    mob.on_core_event(IkeSaDeleted(conn="c", ike_spi=SPI, path=path(M1), reason="test"), 1.0)
    mob.on_core_event(established(), 1.0)
    logged = mob.pump(1.0)
    assert ("preference_changed", "inherited") in [(n, f.get("source")) for n, f in logged]
    mgr = mob.manager(SPI)
    assert mgr is not None and mgr.preferred_local == M1
    assert mob.prefer("c", None, 2.0) is None
    mgr = mob.manager(SPI)
    assert mgr is not None and mgr.preferred_local is None


def test_preference_for_an_unknown_connection_is_refused() -> None:
    mob = Mobility(FakeEngine(), MobikePolicy(), lambda conn: conn == "c")
    assert mob.prefer("typo", M1, 0.0) == "unknown_conn"
    assert mob.prefer("c", M1, 0.0) is None  # no IKE_SA yet: kept for the first one
    mob.on_addresses([("m0", M0), ("m1", M1)], 0.0)
    mob.on_core_event(established(), 0.0)
    mgr = mob.manager(SPI)
    assert mgr is not None and mgr.preferred_local == M1


def _counted(calls: dict[str, int], name: str, real: Any) -> Any:
    def counted(*args: object) -> Any:
        calls[name] += 1
        return real(*args)
    return counted


def test_work_per_event_does_not_grow_with_the_sas() -> None:
    """A gateway with many MOBIKE SAs: an event for one of them visits its manager
    alone; pump, get_timer and handle_timer never walk the whole table."""
    engine = FakeEngine()
    mob = Mobility(engine, MobikePolicy())
    mob.on_addresses([("eth0", GW)], 0.0)
    spis = [f"{i:016x}_{i + 1:016x}" for i in range(200)]
    for spi in spis:
        mob.on_core_event(replace(established(initiator=False), ike_spi=spi), 0.0)
    mob.pump(0.0)
    mob.get_timer()
    calls: dict[str, int] = {"probes_to_send": 0, "get_timer": 0, "handle_timer": 0}
    for spi in spis:
        mgr = mob.manager(spi)
        assert mgr is not None
        for name in calls:
            setattr(mgr, name, _counted(calls, name, getattr(mgr, name)))
    mob.on_core_event(PeerAddressesUpdated(conn="c", ike_spi=spis[5],
                                           addresses=(GW, GW6)), 1.0)
    mob.pump(1.0)
    mob.get_timer()
    mob.handle_timer(1.0)
    mob.pump(1.0)
    mob.get_timer()
    assert calls["probes_to_send"] == 1
    assert calls["get_timer"] <= 2 and calls["handle_timer"] <= 1


def test_a_reloaded_policy_reaches_the_live_ike_sas_and_later_ones() -> None:
    mob, _engine = started([("m0", M0), ("m1", M1)])
    mob.pump(0.0)
    live = mob.manager(SPI)
    assert live is not None and live.policy.probe_interval == MobikePolicy().probe_interval
    mob.set_policy(replace(MobikePolicy(), probe_interval=1.5, hold_down=3.0), 1.0)
    live = mob.manager(SPI)
    assert live is not None
    assert (live.policy.probe_interval, live.policy.hold_down) == (1.5, 3.0)
    # What the glue adds per IKE_SA stays: the home family first.
    assert live.policy.family == 4
    mob.on_core_event(IkeSaDeleted(conn="c", ike_spi=SPI, path=path(M0), reason="test"), 2.0)
    mob.on_core_event(established(), 2.0)
    later = mob.manager(SPI)
    assert later is not None and later.policy.probe_interval == 1.5


class _WalkCounter(dict[str, Any]):
    """The backend's SA table, counting whole-table walks."""

    walks = 0

    def items(self) -> Any:
        self.walks += 1
        return super().items()

    def values(self) -> Any:
        self.walks += 1
        return super().values()


def test_the_watched_sas_follow_events_without_a_walk() -> None:
    """The traffic sampling asks for the watched IKE_SAs every 25 ms: on a gateway full
    of responder SAs that answer must come without visiting them, and stay equal to
    the initiator SAs as SAs come, rekey and go."""
    engine = FakeEngine()
    mob = Mobility(engine, MobikePolicy())
    mob.on_addresses([("m0", M0), ("m1", M1)], 0.0)
    table = _WalkCounter()
    mob._sas = table  # type: ignore[assignment]
    ours = "00000000000000aa_00000000000000bb"
    mob.on_core_event(replace(established(), ike_spi=ours), 0.0)
    for i in range(50):
        mob.on_core_event(replace(established(initiator=False), ike_spi=f"{i:016x}_{i:016x}"),
                          0.0)
        assert mob.watched() == {ours}
    renewed = "00000000000000cc_00000000000000dd"
    mob.on_core_event(IkeSaRekeyed(conn="c", ike_spi=ours, new_ike_spi=renewed), 1.0)
    assert mob.watched() == {renewed}
    walks = table.walks
    assert mob.watched() == {spi for spi in mob.conn_spis("c")  # the brute-force answer
                             if (m := mob.manager(spi)) is not None and m.initiator}
    table.walks = walks
    mob.on_core_event(IkeSaDeleted(conn="c", ike_spi=renewed, path=path(M0),
                                   reason="deleted_by_peer"), 2.0)
    assert mob.watched() == frozenset()
    assert table.walks == 0
