"""MOBIKE (RFC 4555) between two native engines: moves, COOKIE2, NAT prohibition,
return routability, stale updates, address lists, probes and NAT rebinding."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    ChildSaInstalled,
    ChildSaUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    MoveFailed,
    NatMappingChanged,
    PacketDropped,
    PeerAddressesUpdated,
    PeerMoved,
    ProbeResult,
    UpdateRejected,
)
from mobike_vici.core.exchanges import mobike as mobike_mod
from mobike_vici.core.exchanges.mobike import no_nats_data, parse_addresses
from mobike_vici.core.mobike_paths import MAX_RIDES
from mobike_vici.core.settings import EngineSettings
from mobike_vici.ikev2.constants import ExchangeType, NotifyType
from mobike_vici.ikev2.message import decode_header
from mobike_vici.ikev2.payloads import Notify, Payload
from mobike_vici.types import Endpoint, IPAddress, Path

from .harness import ALICE, BOB, Net, config_pair, of_type, rekey_ike, seeded

ALICE2 = ipaddress.ip_address("198.51.100.7")
ALICE6 = ipaddress.ip_address("2001:db8:a::1")
BOB6 = ipaddress.ip_address("2001:db8:b::2")
EVE = ipaddress.ip_address("203.0.113.66")


def ep(addr: IPAddress, port: int = 4500) -> Endpoint:
    return Endpoint(addr, port)


def path(local: IPAddress, remote: IPAddress) -> Path:
    return Path(ep(local), ep(remote))


def setup(mobike_section: str = "", initiator_extra: str = "", responder_extra: str = "",
          alice_addrs: tuple[IPAddress, ...] = (ALICE, ALICE2, ALICE6),
          nat: dict[Endpoint, Endpoint] | None = None,
          settings: EngineSettings | None = None) -> Net:
    """``settings``: alice's engine tunables (the initiator's)."""
    ca, cb = config_pair(initiator_extra=initiator_extra, responder_extra=responder_extra)
    if mobike_section:
        from mobike_vici.config import load_string  # the policy comes with the config
        text_b = _resp_text(mobike_section)
        cb = load_string(text_b)
    a = Engine(ca, seeded(1), lambda r: ALICE, settings)
    b = Engine(cb, seeded(1001), lambda r: BOB)
    net = Net(a, b)
    net.addrs_a = set(alice_addrs) | {EVE}
    if nat:
        net.nat = dict(nat)
    a.set_local_addresses(alice_addrs, 0.0)
    b.set_local_addresses((BOB, BOB6), 0.0)
    a.initiate("home", None, 0.0)
    net.pump()
    assert of_type(net.events_a, IkeSaEstablished) and of_type(net.events_b, IkeSaEstablished)
    return net


def _resp_text(mobike_section: str) -> str:
    return f"""
connections {{
  gw {{
    local_addrs = {BOB}
    local {{ auth = psk
            id = bob.example.com }}
    remote {{ auth = psk
             id = alice@example.com }}
    children {{ net {{ local_ts = 10.2.0.0/24
                      remote_ts = 10.1.0.0/24 }} }}
  }}
}}
secrets {{ ike-a {{ id-a = alice@example.com
                  id-b = bob.example.com
                  secret = "topsecret-psk" }} }}
mobike {{
{mobike_section}
}}
"""


def spi(net: Net) -> str:
    return net.a.status()[0].ike_spi


def moved_to(net: Net, new: Path) -> None:
    net.a.move(spi(net), new, net.now)
    net.pump()


def child_spis(eng: Engine) -> list[tuple[int, int]]:
    return [(c.spi_in, c.spi_out) for s in eng.status() for c in s.children]


def test_mobike_negotiated_on_4500_with_address_lists() -> None:
    net = setup()
    sa_a, sa_b = net.a.status()[0], net.b.status()[0]
    assert sa_a.path.natt and sa_b.path.natt
    assert net.b.peer_addresses(sa_b.ike_spi) == (ALICE, ALICE2, ALICE6)
    assert net.a.peer_addresses(sa_a.ike_spi) == (BOB, BOB6)


@pytest.mark.parametrize("target", [ALICE2, ALICE6])
def test_initiator_move_moves_ike_and_child_sas_both_sides(target: IPAddress) -> None:
    net = setup()
    before = child_spis(net.a)
    remote = BOB if target.version == 4 else BOB6
    new = path(target, remote)
    moved_to(net, new)
    (m,) = of_type(net.events_a, IkeSaMoved)
    assert m.new_path == new and m.old_path == path(ALICE, BOB)
    (upd_a,) = of_type(net.events_a, ChildSaUpdated)
    assert (upd_a.spi_in, upd_a.spi_out) == before[0] and upd_a.path == new
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)
    (upd_b,) = of_type(net.events_b, ChildSaUpdated)
    assert upd_b.path == pm.new_path
    assert net.a.status()[0].path == new and net.b.status()[0].path == pm.new_path
    assert child_spis(net.a) == before  # same SPIs: moved in place
    # And back across the family.
    moved_to(net, path(ALICE, BOB))
    assert net.a.status()[0].path == path(ALICE, BOB)
    assert net.b.status()[0].path == path(BOB, ALICE)
    assert len(of_type(net.events_b, PeerMoved)) == 2


@pytest.mark.parametrize("rekeyed_by", ["a", "b"])
def test_the_first_initiator_still_moves_after_either_side_rekeyed_the_ike_sa(
        rekeyed_by: str) -> None:
    # RFC 4555 §2: "initiator" is who started the first IKE_SA of the rekey series, not
    # RFC 7296's original initiator, which the responder becomes by rekeying it.
    net = setup()
    rekey_ike(net.a if rekeyed_by == "a" else net.b, spi(net), net.now)
    net.pump()
    assert spi(net) == net.b.status()[0].ike_spi
    assert net.a.status()[0].initiator and not net.b.status()[0].initiator
    new = path(ALICE2, BOB)
    moved_to(net, new)
    assert not of_type(net.events_a, MoveFailed)
    assert not of_type(net.events_b, UpdateRejected)
    (m,) = of_type(net.events_a, IkeSaMoved)
    assert m.new_path == new
    assert net.b.status()[0].path == Path(new.remote, new.local)
    # And the responder still never moves it itself.
    net.b.move(net.b.status()[0].ike_spi, path(BOB6, ALICE6), net.now)
    net.pump()
    (failed,) = of_type(net.events_b, MoveFailed)
    assert failed.reason == "not_initiator"


def test_return_routability_check_precedes_child_move() -> None:
    net = setup()
    new = path(ALICE2, BOB)
    # Lose every request bob sends: its COOKIE2 check cannot come back.
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    moved_to(net, new)
    assert of_type(net.events_a, IkeSaMoved)  # bob answered the update itself
    assert not of_type(net.events_b, PeerMoved) and not of_type(net.events_b, ChildSaUpdated)
    assert net.b.status()[0].path == Path(new.remote, new.local)  # the IKE_SA follows at once
    net.drop = lambda d: False
    net.advance_to(5.0)  # bob retransmits its check
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)
    assert of_type(net.events_b, ChildSaUpdated)


def test_return_routability_never_moves_at_once() -> None:
    net = setup("return_routability = never")
    moved_to(net, path(ALICE2, BOB))
    sent_by_bob = [d for d in net.log if d.path.local.addr == BOB
                   and not decode_header(d.data).is_response
                   and decode_header(d.data).exchange == ExchangeType.INFORMATIONAL]
    assert not sent_by_bob
    assert of_type(net.events_b, PeerMoved)


def test_cookie2_mismatch_closes_ike_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    net = setup()
    real = mobike_mod.respond_mobike

    def bad_cookie(*args: object, **kw: object) -> list[Payload]:
        reply = real(*args, **kw)  # type: ignore[arg-type]
        return [Notify(NotifyType.COOKIE2, b"\0" * 16) if isinstance(p, Notify)
                and p.type == NotifyType.COOKIE2 else p for p in reply]

    monkeypatch.setattr("mobike_vici.core.exchanges.responder.respond_mobike", bad_cookie)
    moved_to(net, path(ALICE2, BOB))
    (gone,) = of_type(net.events_a, IkeSaDeleted)
    assert gone.reason == "cookie2_mismatch"
    assert not of_type(net.events_a, IkeSaMoved)


def test_unacceptable_addresses_keeps_sa_and_next_path_works() -> None:
    net = setup("allowed_peer_prefixes = 192.0.2.0/24, 2001:db8::/32")
    moved_to(net, path(ALICE2, BOB))
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "unacceptable_addresses"
    (rej,) = of_type(net.events_b, UpdateRejected)
    assert rej.reason == "unacceptable_addresses"
    assert net.a.status()[0].path == path(ALICE, BOB)
    assert not of_type(net.events_b, PeerMoved)
    moved_to(net, path(ALICE6, BOB6))
    assert net.a.status()[0].path == path(ALICE6, BOB6)
    assert of_type(net.events_b, PeerMoved)


def _no_natt(net: Net) -> None:
    for eng in (net.a, net.b):
        for sa in eng._sas.values():
            sa.natt_supported = False


def test_no_nats_allowed_passes_without_nat() -> None:
    net = setup()
    _no_natt(net)
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)
    assert of_type(net.events_b, PeerMoved)


def test_no_nats_allowed_with_nat_answers_unexpected_nat_detected() -> None:
    net = setup()
    _no_natt(net)
    net.nat = {ep(ALICE2): ep(EVE, 31000)}
    moved_to(net, path(ALICE2, BOB))
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "unexpected_nat_detected"
    (rej,) = of_type(net.events_b, UpdateRejected)
    assert rej.reason == "unexpected_nat_detected"
    assert net.b.status()[0].path == path(BOB, ALICE)
    assert not of_type(net.events_b, ChildSaUpdated)


def _capture_updates(net: Net) -> list[Datagram]:
    return [d for d in net.log if d.path.local.addr in net.addrs_a
            and decode_header(d.data).exchange == ExchangeType.INFORMATIONAL
            and not decode_header(d.data).is_response]


def test_forged_update_is_dropped_and_moves_nothing() -> None:
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    update = _capture_updates(net)[-1]
    forged = bytearray(update.data)
    forged[-1] ^= 1
    net.b.receive_datagram(bytes(forged), path(BOB, EVE), net.now)
    net.pump()
    drops = of_type(net.events_b, PacketDropped)
    assert drops and drops[-1].path == path(BOB, EVE)
    assert net.b.status()[0].path == path(BOB, ALICE2)
    assert len(of_type(net.events_b, PeerMoved)) == 1


def test_replayed_and_out_of_order_updates_never_move() -> None:
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    first = _capture_updates(net)[-1]
    # The last request replayed from elsewhere: answered from the cache, not followed.
    net.b.receive_datagram(first.data, path(BOB, EVE), net.now)
    net.pump()
    assert of_type(net.events_b, UpdateRejected)[-1].reason == "stale"
    assert net.b.status()[0].path == path(BOB, ALICE2)
    moved_to(net, path(ALICE6, BOB6))
    assert net.b.status()[0].path == path(BOB6, ALICE6)
    # The older update arrives late from its original path: never moves back.
    net.b.receive_datagram(first.data, path(BOB, ALICE2), net.now)
    net.pump()
    assert [r.reason for r in of_type(net.events_b, UpdateRejected)] == ["stale", "stale"]
    assert net.b.status()[0].path == path(BOB6, ALICE6)
    assert len(of_type(net.events_b, PeerMoved)) == 2


def test_address_list_replaced_whole_and_announce_policy() -> None:
    net = setup()
    sb = net.b.status()[0].ike_spi
    net.a.set_local_addresses((ALICE, ALICE6), net.now)
    net.pump()
    assert net.b.peer_addresses(sb) == (ALICE, ALICE6)
    net.a.set_local_addresses((ALICE,), net.now)
    net.pump()
    assert net.b.peer_addresses(sb) == (ALICE,)
    assert of_type(net.events_b, PeerAddressesUpdated)[-1].addresses == (ALICE,)
    # announce = preferred-only: bob discloses none of its other addresses.
    net2 = setup("announce = preferred-only")
    assert net2.a.peer_addresses(spi(net2)) == (BOB,)


def test_responder_losing_its_address_announces_from_a_new_one() -> None:
    net = setup()
    net.b.set_local_addresses((BOB6,), net.now)
    net.down.add(BOB)
    net.pump()
    (upd,) = of_type(net.events_a, PeerAddressesUpdated)
    assert upd.addresses == (BOB6,)
    assert net.a.peer_addresses(spi(net)) == (BOB, BOB6)
    moved_to(net, path(ALICE6, BOB6))
    assert of_type(net.events_b, PeerMoved)[-1].new_path == path(BOB6, ALICE6)


def test_probe_ok_and_timeout_without_killing_sa() -> None:
    net = setup()
    s = spi(net)
    pid = net.a.probe(s, path(ALICE2, BOB), net.now)
    net.pump()
    (ok,) = of_type(net.events_a, ProbeResult)
    assert ok.ok and ok.probe_id == pid and ok.rtt == 0.0
    net.down.add(ALICE6)
    bad = net.a.probe(s, path(ALICE6, BOB6), net.now)
    # A second probe while the first request is outstanding shares its message ID.
    good = net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    results = {r.probe_id: r for r in of_type(net.events_a, ProbeResult)}
    assert results[good].ok and bad not in results
    net.advance_to(net.now + 0.31)
    results = {r.probe_id: r for r in of_type(net.events_a, ProbeResult)}
    assert not results[bad].ok and results[bad].rtt is None
    net.advance_to(net.now + 200)
    assert not of_type(net.events_a, IkeSaDeleted)
    assert net.a.status()[0].state == "ESTABLISHED"


def test_dead_active_path_pending_request_resent_on_move() -> None:
    net = setup(initiator_extra="dpd_delay = 10s")
    net.down.add(ALICE)
    net.advance_to(40.0)  # DPD outstanding, retransmitting into the void
    assert not of_type(net.events_a, IkeSaDeleted)
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)
    net.advance_to(400.0)
    assert not of_type(net.events_a, IkeSaDeleted)


def test_move_timeout_fails_and_sa_stays() -> None:
    net = setup()
    net.down.add(ALICE6)
    net.a.move(spi(net), path(ALICE6, BOB6), net.now)
    net.advance_to(10.5)
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "timeout"
    assert net.a.status()[0].path == path(ALICE, BOB)
    net.advance_to(20.0)
    assert not of_type(net.events_a, IkeSaDeleted)
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)


def test_nat_rebinding_detected_in_liveness_check() -> None:
    private = ep(ALICE)
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), private: ep(EVE, 40000)})
    s = spi(net)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert not of_type(net.events_a, NatMappingChanged)
    net.nat[private] = ep(EVE, 40001)  # the NAT rebinds
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert of_type(net.events_a, NatMappingChanged)
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(ep(BOB), ep(EVE, 40001))
    (upd,) = of_type(net.events_b, ChildSaUpdated)
    assert upd.encap


def test_mobike_no_is_respected() -> None:
    net = setup(initiator_extra="mobike = no")
    net.a.move(spi(net), path(ALICE2, BOB), net.now)
    net.pump()
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "not_mobike"
    assert net.a.status()[0].path.local.port == 500  # no float without NAT or MOBIKE


def test_parse_addresses_and_no_nats_data() -> None:
    payloads: list[Payload] = [Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, ALICE.packed),
                               Notify(NotifyType.ADDITIONAL_IP6_ADDRESS, ALICE6.packed),
                               Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\1")]
    assert parse_addresses(payloads) == (ALICE, ALICE6)
    assert parse_addresses([Notify(NotifyType.NO_ADDITIONAL_ADDRESSES)]) == ()
    assert parse_addresses([]) is None
    data = no_nats_data(Path(Endpoint(ALICE, 4500), Endpoint(BOB, 500)))
    assert data == ALICE.packed + BOB.packed + bytes([0x11, 0x94, 0x01, 0xF4])


def test_probe_never_resends_an_outstanding_update_elsewhere() -> None:
    net = setup()
    net.down.add(ALICE6)
    net.a.move(spi(net), path(ALICE6, BOB6), net.now)
    pid = net.a.probe(spi(net), path(ALICE2, BOB), net.now)
    net.pump()
    assert net.b.status()[0].path == path(BOB, ALICE)  # bob never saw the update
    assert not of_type(net.events_b, PeerMoved)
    net.advance_to(net.now + 0.31)
    (res,) = of_type(net.events_a, ProbeResult)
    assert res.probe_id == pid and not res.ok
    net.advance_to(net.now + 11.0)  # the move fails; the queued probe goes out then
    assert of_type(net.events_a, MoveFailed)[0].reason == "timeout"
    assert net.b.status()[0].path == path(BOB, ALICE)


def test_update_carries_our_address_list() -> None:
    net = setup()
    sb = net.b.status()[0].ike_spi
    net.a.set_local_addresses((ALICE2, ALICE6), net.now)  # ALICE is gone
    net.pump()
    assert net.b.peer_addresses(sb) == (ALICE, ALICE2, ALICE6)  # nothing sent yet
    moved_to(net, path(ALICE2, BOB))
    assert net.b.peer_addresses(sb) == (ALICE2, ALICE6)


def test_transport_mode_does_not_offer_mobike() -> None:
    ca, cb = config_pair(child_initiator="mode = transport", child_responder="mode = transport")
    net = Net(Engine(ca, seeded(1), lambda r: ALICE), Engine(cb, seeded(2), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert of_type(net.events_a, IkeSaEstablished), "transport mode was not negotiated"
    net.a.move(spi(net), path(ALICE2, BOB), net.now)
    net.pump()
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "not_mobike"


def test_newer_update_replaces_pending_routability_check() -> None:
    net = setup()
    # Bob's checks are lost until the second move: only the newest path counts.
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    moved_to(net, path(ALICE2, BOB))
    net.drop = lambda d: False
    moved_to(net, path(ALICE6, BOB6))
    net.advance_to(net.now + 30.0)
    moves = of_type(net.events_b, PeerMoved)
    assert [m.new_path for m in moves] == [path(BOB6, ALICE6)]
    assert net.b.status()[0].path == path(BOB6, ALICE6)
    assert not of_type(net.events_b, IkeSaDeleted)


def test_child_sa_made_during_routability_check_stays_on_the_checked_path() -> None:
    """RFC 4555 §3.7: until the peer answers at its new address, no ESP goes there, not
    even for a CHILD_SA created (here: rekeyed) while the check is outstanding."""
    net = setup()
    old, new = path(BOB, ALICE), path(BOB, ALICE2)
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    moved_to(net, path(ALICE2, BOB))
    assert net.b.status()[0].path == new  # the IKE_SA follows at once
    (first,) = of_type(net.events_b, ChildSaInstalled)
    net.a.rekey_child(first.unique_id, net.now)
    net.pump()
    rekeyed = of_type(net.events_b, ChildSaInstalled)[1:]
    assert [e.path for e in rekeyed] == [old]
    assert not of_type(net.events_b, ChildSaUpdated)
    net.drop = lambda d: False
    net.advance_to(net.now + 5.0)  # bob's check gets through now
    updated = of_type(net.events_b, ChildSaUpdated)
    assert updated and all(u.path == new for u in updated)
    assert rekeyed[0].unique_id in {u.unique_id for u in updated}


def test_repeated_update_to_the_same_address_checks_again() -> None:
    """A second update from the address under check voids the first check and asks
    again; the CHILD_SAs must not stay behind for good."""
    net = setup()
    new = path(BOB, ALICE2)
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    moved_to(net, path(ALICE2, BOB))
    moved_to(net, path(ALICE2, BOB))
    assert len(of_type(net.events_a, IkeSaMoved)) == 2  # bob answered both updates
    assert not of_type(net.events_b, ChildSaUpdated)
    net.drop = lambda d: False
    net.advance_to(net.now + 30.0)
    assert [u.path for u in of_type(net.events_b, ChildSaUpdated)] == [new]
    assert not of_type(net.events_b, IkeSaDeleted)


def test_cookie2_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = mobike_mod.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        if sys._getframe(1).f_globals["__name__"] == mobike_mod.__name__:
            compared.append((a, b))  # not the ICV checks of the SK payloads
        return real(a, b)

    monkeypatch.setattr(mobike_mod.hmac, "compare_digest", spy)
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)
    assert compared and all(a == b for a, b in compared)


def test_move_with_an_rtt_timeout_fails_at_that_bound_and_resends_within() -> None:
    net = setup()
    net.down.add(ALICE6)
    start = net.now
    sent_before = len(net.log)
    net.a.move(spi(net), path(ALICE6, BOB6), net.now, timeout=0.3)
    net.advance_to(start + 0.29)
    assert not of_type(net.events_a, MoveFailed)
    net.advance_to(start + 0.31)
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "timeout"
    updates = [d for d in net.log[sent_before:] if d.path.local.addr == ALICE6]
    assert len(updates) >= 3  # the first send and resends a third of the bound apart
    # The next attempt on a live path goes through at once.
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)


def test_move_timeout_is_capped_by_the_engines_move_timeout() -> None:
    net = setup()
    net.down.add(ALICE6)
    start = net.now
    net.a.move(spi(net), path(ALICE6, BOB6), net.now, timeout=1000.0)
    net.advance_to(start + 10.05)
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "timeout"


def _to_path(d: Datagram, local: IPAddress) -> bool:
    return local in (d.path.local.addr, d.path.remote.addr)


def test_a_probe_whose_copy_the_peer_dropped_rides_the_next_request() -> None:
    # The peer drops a copy that arrives while it processes the first one (charon:
    # "already processing"): the waiting probe is not judged by that one copy.
    net = setup()
    s = spi(net)
    lost: list[Datagram] = []

    def drop_first(d: Datagram) -> bool:
        if d.path.local.addr == ALICE6 and not lost:
            lost.append(d)
            return True
        return False

    net.drop = drop_first
    on_a = net.a.probe(s, path(ALICE, BOB), net.now)
    on_6 = net.a.probe(s, path(ALICE6, BOB6), net.now)
    net.pump()
    results = {r.probe_id: r for r in of_type(net.events_a, ProbeResult)}
    assert lost and results[on_a].ok and results[on_6].ok


def test_a_late_answer_to_an_older_copy_still_proves_the_path() -> None:
    net = setup()
    s = spi(net)
    held: list[Datagram] = []

    def hold_path6(d: Datagram) -> bool:
        if _to_path(d, ALICE6):
            if d.path.local.addr == BOB6 and not held:
                held.append(d)  # the first answer on that path comes late
            return not (d.path.local.addr == ALICE6 and not held)
        return False

    net.drop = hold_path6
    net.a.probe(s, path(ALICE, BOB), net.now)
    on_6 = net.a.probe(s, path(ALICE6, BOB6), net.now)
    net.pump()
    assert held and on_6 not in {r.probe_id for r in of_type(net.events_a, ProbeResult)}
    seen = Path(held[0].path.remote, held[0].path.local)
    net.now += 0.1
    net.a.receive_datagram(held[0].data, seen, net.now)
    net.collect()
    (res,) = [r for r in of_type(net.events_a, ProbeResult) if r.probe_id == on_6]
    assert res.ok


def test_a_spent_update_does_not_hold_probes_back() -> None:
    net = setup()
    s = spi(net)
    net.down |= {ALICE6, ALICE}  # the path the SA is on is dead too (a failover)
    net.a.move(s, path(ALICE6, BOB6), net.now, timeout=0.3)
    net.advance_to(0.35)
    assert of_type(net.events_a, MoveFailed)[0].reason == "timeout"
    pid = net.a.probe(s, path(ALICE2, BOB), net.now)
    net.pump()
    results = {r.probe_id: r for r in of_type(net.events_a, ProbeResult)}
    assert results[pid].ok


def test_a_move_is_no_nat_rebinding_on_the_next_liveness_check() -> None:
    # The peer's hash of us changes with our address: after a move the first answer on
    # the new path is the new baseline, not a NAT that rebound (no update follows).
    net = setup()
    s = spi(net)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    moved_to(net, path(ALICE2, BOB))
    assert of_type(net.events_a, IkeSaMoved)
    net.a.probe(s, path(ALICE2, BOB), net.now)
    net.pump()
    assert not of_type(net.events_a, NatMappingChanged)
    assert len(of_type(net.events_a, IkeSaMoved)) == 1


def test_a_probe_on_a_dead_path_rides_a_bounded_number_of_requests() -> None:
    net = setup()
    s = spi(net)
    net.down.add(ALICE6)
    dead = net.a.probe(s, path(ALICE6, BOB6), net.now)  # its own request, lost
    for _ in range(6):
        net.a.probe(s, path(ALICE, BOB), net.now)  # each answered at once
        net.pump()
    on_dead = [d for d in net.log if d.path.local.addr == ALICE6]
    assert len(on_dead) == MAX_RIDES
    assert dead not in {r.probe_id for r in of_type(net.events_a, ProbeResult)}


def test_a_probe_s_rtt_counts_from_the_copy_that_was_answered() -> None:
    net = setup()
    s = spi(net)
    lost: list[Datagram] = []

    def drop_first(d: Datagram) -> bool:
        if d.path.local.addr == ALICE6 and not lost:
            lost.append(d)  # its own request is lost
            return True
        return False

    net.drop = drop_first
    on_6 = net.a.probe(s, path(ALICE6, BOB6), net.now)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert len(lost) == 1 and not [r for r in of_type(net.events_a, ProbeResult)
                                   if r.probe_id == on_6]
    net.now += 0.2
    net.a.probe(s, path(ALICE, BOB), net.now)  # a new request: the probe rides it
    net.pump()
    (res,) = [r for r in of_type(net.events_a, ProbeResult) if r.probe_id == on_6]
    assert res.ok and res.rtt == 0.0  # not the 0.2 s it waited for a copy to get through


def _peer_path_of_a(net: Net) -> Path:
    """The path ``b`` (the responder) holds for the IKE_SA: where it sends ESP and IKE."""
    (sa,) = net.b.status()
    return sa.path


def test_nat_rebinding_right_after_an_ike_rekey_is_detected() -> None:
    # The rekeyed IKE_SA has new SPIs, so the peer's NAT hash of us changes with them: the
    # old baseline means nothing. Before, the new IKE_SA took the first answer it got as
    # its baseline, so a NAT that rebound between the rekey and that answer was never
    # noticed and the peer's ESP went on to the old public port (24 s in the soak).
    private = ep(ALICE)
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), private: ep(EVE, 40000)})
    net.a.probe(spi(net), path(ALICE, BOB), net.now)
    net.pump()
    rekey_ike(net.a, spi(net), net.now)
    net.pump()
    net.nat[private] = ep(EVE, 40001)  # the NAT rebinds right after the rekey
    net.a.probe(spi(net), path(ALICE, BOB), net.now)
    net.pump()
    assert of_type(net.events_a, NatMappingChanged)
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 40001))


def test_nat_rebinding_right_before_an_ike_rekey_is_followed() -> None:
    # The NAT rebinds after the old IKE_SA's last check and before the rekey: the new
    # IKE_SA's first NAT detection already shows the new mapping, so no check can see
    # a change (soak: the peer's ESP went to the old public port for 35.8 s). The update
    # after the rekey makes the peer follow.
    private = ep(ALICE)
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), private: ep(EVE, 40000)})
    net.a.probe(spi(net), path(ALICE, BOB), net.now)
    net.pump()
    net.nat[private] = ep(EVE, 40001)
    rekey_ike(net.a, spi(net), net.now)
    net.pump()
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 40001))


def test_nat_rebinding_right_after_a_move_is_detected() -> None:
    # The update's answer carries the peer's hash of us on the new path: the baseline,
    # so a rebinding before the next liveness check is noticed by that check.
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), ep(ALICE): ep(EVE, 40000),
                     ep(ALICE2): ep(EVE, 41000)})
    moved_to(net, path(ALICE2, BOB))
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 41000))
    net.nat[ep(ALICE2)] = ep(EVE, 41001)
    net.a.probe(spi(net), path(ALICE2, BOB), net.now)
    net.pump()
    assert of_type(net.events_a, NatMappingChanged)
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 41001))


DAEMON_ENGINE = EngineSettings(probe_timeout=3.0)
"""The engine as the daemon runs it: its probes stay open for late answers (the path
manager judges misses by its own timeouts)."""


def test_a_lost_update_after_a_nat_rebinding_is_resent_soon() -> None:
    # The path was proven by the very answer that showed the new mapping: an update on
    # it that goes unanswered is resent after rebind_resend, not move_retransmit (1 s),
    # since the peer's ESP goes to the old port until it follows; then the usual pace.
    settings = DAEMON_ENGINE
    private = ep(ALICE)
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), private: ep(EVE, 40000)},
                settings=settings)
    net.a.probe(spi(net), path(ALICE, BOB), net.now)
    net.pump()
    requests: list[float] = []

    def lose_the_update(d: Datagram) -> bool:
        if d.path.local.addr != ALICE or decode_header(d.data).is_response:
            return False
        requests.append(net.now)
        return len(requests) == 2  # the probe's request passes, the update is lost

    net.drop = lose_the_update
    net.nat[private] = ep(EVE, 40001)  # the NAT rebinds
    start = net.now
    net.a.probe(spi(net), path(ALICE, BOB), net.now)
    net.pump()
    assert of_type(net.events_a, NatMappingChanged)
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 40000))  # the update was lost
    net.advance_to(start + settings.rebind_resend + 0.01)
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 40001))
    assert requests[2] - requests[1] == pytest.approx(settings.rebind_resend)


def test_a_lost_check_after_a_nat_rebinding_is_sent_again_by_the_next_probe() -> None:
    # The answer to the liveness check that would show the new mapping is lost: the next
    # probe of the path sends the outstanding request there again (the peer answers from
    # its cache), instead of riding it in silence until its retransmission 4 s later.
    private = ep(ALICE)
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), private: ep(EVE, 40000)},
                settings=DAEMON_ENGINE)
    s = spi(net)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    answers: list[Datagram] = []

    def lose_the_first_answer(d: Datagram) -> bool:
        if d.path.local.addr != BOB or not decode_header(d.data).is_response:
            return False
        answers.append(d)
        return len(answers) == 1

    net.drop = lose_the_first_answer
    net.nat[private] = ep(EVE, 40001)  # the NAT rebinds
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert answers and not of_type(net.events_a, NatMappingChanged)
    net.advance_to(net.now + DAEMON_ENGINE.overdue_after + 0.01)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert of_type(net.events_a, NatMappingChanged)
    assert _peer_path_of_a(net) == Path(ep(BOB), ep(EVE, 40001))


def test_a_request_answered_in_time_is_not_sent_again_for_a_probe() -> None:
    net = setup(settings=DAEMON_ENGINE)
    s = spi(net)
    net.drop = lambda d: d.path.local.addr == BOB  # nothing comes back: all outstanding
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    net.log.clear()
    net.a.probe(s, path(ALICE, BOB), net.now + 0.01)  # too soon to be overdue
    net.pump()
    assert not [d for d in net.log if d.path.local.addr == ALICE]


def test_an_ike_sa_whose_moves_all_fail_is_declared_dead_within_charons_bound() -> None:
    # The peer lost the IKE_SA silently: every move and probe goes unanswered. The path
    # manager keeps trying every pair (a move or a probe each second here), yet the
    # request outstanding keeps charon's retransmission count, so the IKE_SA dies
    # (dpd_action applies to retransmits_exceeded) within charon's bound, not never.
    net = setup()
    s = spi(net)
    net.drop = lambda d: True
    paths = [path(ALICE2, BOB), path(ALICE, BOB), path(ALICE6, BOB6)]
    settings = EngineSettings()  # setup() runs the defaults
    bound = settings.retransmit.give_up_after() + settings.move_timeout
    t = net.now
    while not of_type(net.events_a, IkeSaDeleted) and t < 2 * bound:
        p = paths[int(t) % len(paths)]
        net.a.move(s, p, t)
        for q in paths:
            net.a.probe(s, q, t)
        t += 1.0
        net.advance_to(t)
    (gone,) = of_type(net.events_a, IkeSaDeleted)
    assert gone.reason == "retransmits_exceeded"
    assert t <= bound + 1.0
    assert len(of_type(net.events_a, MoveFailed)) > 100


def test_a_ridden_copy_answered_for_another_path_is_no_nat_rebinding() -> None:
    # A probe of the active path rides the liveness check of a standby path. The peer
    # answers the copy it sees first (the standby path's) and resends that answer, NAT
    # detection and all, to the copy on the active path. Before, that answer (the
    # standby's own was lost) looked like a rebinding of the active path: a
    # nat_mapping_changed and an update for nothing, seen after moves in the soak.
    net = setup(nat={Endpoint(ALICE, 500): ep(EVE, 500), ep(ALICE): ep(EVE, 40000),
                     ep(ALICE2): ep(EVE, 41000)})
    s = spi(net)
    net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    net.drop = lambda d: d.path.remote == ep(EVE, 41000)  # answers on the standby path
    net.a.probe(s, path(ALICE2, BOB), net.now)
    active = net.a.probe(s, path(ALICE, BOB), net.now)
    net.pump()
    assert any(r.probe_id == active and r.ok for r in of_type(net.events_a, ProbeResult))
    assert not of_type(net.events_a, NatMappingChanged)
    assert not of_type(net.events_a, IkeSaMoved)


def test_a_responder_request_stuck_on_the_dead_path_follows_the_peers_update_at_once() -> None:
    # Bob probes the path to alice's dead address; alice moves away before the probe's
    # retransmission (4 s). Bob's return routability check waits behind that request:
    # resent on the new path at once, the CHILD_SAs move within round trips, not seconds.
    net = setup()
    bob_spi = net.b.status()[0].ike_spi
    net.down = {ALICE}
    net.b.probe(bob_spi, path(BOB, ALICE), net.now)
    net.pump()
    new = path(ALICE2, BOB)
    moved_to(net, new)
    net.advance_to(net.now + 0.5)
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)
    assert of_type(net.events_b, ChildSaUpdated)


def test_an_ike_sa_whose_moves_all_fail_is_dead_after_dead_after() -> None:
    # The same silent peer as above with mobike { dead_after = 30s }: moves and probes on
    # every path each second never restart the count, so the IKE_SA dies 30 s after its
    # first unanswered request instead of at charon's bound.
    net = setup(settings=EngineSettings(dead_after=30.0))
    s = spi(net)
    net.drop = lambda d: True
    paths = [path(ALICE2, BOB), path(ALICE, BOB), path(ALICE6, BOB6)]
    t = net.now
    while not of_type(net.events_a, IkeSaDeleted) and t < 100.0:
        net.a.move(s, paths[int(t) % len(paths)], t)
        for q in paths:
            net.a.probe(s, q, t)
        t += 1.0
        net.advance_to(t)
    (gone,) = of_type(net.events_a, IkeSaDeleted)
    assert gone.reason == "dead_after"
    assert 30.0 <= t <= 32.0


def test_the_initiator_s_child_sas_move_with_the_update_not_after_its_answer() -> None:
    # RFC 4555 §3.5: the initiator updates its IPsec SAs when it decides on the new
    # addresses; its ESP then leaves on the new path with the update, a round trip
    # (and the peer's processing) sooner than when the answer comes.
    net = setup()
    new = path(ALICE2, BOB)
    net.a.move(spi(net), new, net.now)
    net.collect()  # nothing delivered yet
    assert not of_type(net.events_a, IkeSaMoved)
    (early,) = of_type(net.events_a, ChildSaUpdated)
    assert early.path == new
    net.pump()
    assert of_type(net.events_a, IkeSaMoved)
    # Once per move: the answer changed nothing the data plane had not got already.
    assert of_type(net.events_a, ChildSaUpdated) == [early]
    assert net.a.status()[0].path == new


def test_a_failed_move_takes_the_child_sas_back_to_the_ike_sa_s_path() -> None:
    net = setup()
    net.down.add(ALICE6)
    net.a.move(spi(net), path(ALICE6, BOB6), net.now, timeout=0.3)
    net.advance_to(net.now + 0.31)
    (fail,) = of_type(net.events_a, MoveFailed)
    assert fail.reason == "timeout"
    updates = [e.path for e in of_type(net.events_a, ChildSaUpdated)]
    assert updates == [path(ALICE6, BOB6), path(ALICE, BOB)]
    # A newer decision replaces the attempt without a detour through the old path.
    net.a.move(spi(net), path(ALICE6, BOB6), net.now, timeout=0.3)
    net.a.move(spi(net), path(ALICE2, BOB), net.now)
    net.pump()
    updates = [e.path for e in of_type(net.events_a, ChildSaUpdated)]
    assert updates[2:] == [path(ALICE6, BOB6), path(ALICE2, BOB)]
    assert net.a.status()[0].path == path(ALICE2, BOB)


def _check_lost_then_address_gone(net: Net) -> None:
    """Bob's check of alice's new address is lost (a lossy link), then that address
    becomes unreachable (its NAT mapping flushed) and alice moves on again: the
    voided check is bob's request outstanding, on a path that will never answer."""
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    moved_to(net, path(ALICE2, BOB))
    assert not of_type(net.events_b, PeerMoved)
    net.drop = lambda d: False
    net.down = {ALICE2}


def test_a_check_voided_by_a_newer_update_goes_to_the_new_address_at_once() -> None:
    # The soak's native gateway: its CHILD_SAs stayed on alice's old address, behind a
    # voided check retransmitting (every 4 s and more) to an address gone for good.
    net = setup()
    _check_lost_then_address_gone(net)
    new = path(ALICE6, BOB6)
    moved_to(net, new)
    net.advance_to(net.now + 0.5)
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)
    assert [u.path for u in of_type(net.events_b, ChildSaUpdated)] == [pm.new_path]


def test_the_voided_check_s_answer_does_not_move_the_child_sas() -> None:
    # Only the check of the new address proves it (§3.7): when its answer is lost, the
    # answer to the voided check, resent on the same path, moves nothing.
    net = setup()
    _check_lost_then_address_gone(net)
    answers: list[Datagram] = []

    def lose_second_answer(d: Datagram) -> bool:
        if d.path.local.addr != ALICE6 or not decode_header(d.data).is_response:
            return False
        answers.append(d)
        return len(answers) == 2  # the voided check's answer passes, the new one's not

    net.drop = lose_second_answer
    new = path(ALICE6, BOB6)
    net.a.move(spi(net), new, net.now)
    net.pump()
    assert len(answers) == 2
    assert not of_type(net.events_b, PeerMoved)
    assert not of_type(net.events_b, ChildSaUpdated)
    net.advance_to(net.now + 5.0)  # the new check's retransmission is answered
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)


def test_a_lost_check_is_resent_like_an_update_not_after_charons_4_s() -> None:
    # The CHILD_SAs wait for the check on alice's old address, here a dead one: a lost
    # check resent only after charon's 4 s would hold the traffic that long.
    net = setup()
    lost: list[Datagram] = []

    def lose_first_check(d: Datagram) -> bool:
        if d.path.local.addr == BOB and not decode_header(d.data).is_response and not lost:
            lost.append(d)
            return True
        return False

    net.drop = lose_first_check
    net.down = {ALICE}
    new = path(ALICE2, BOB)
    moved_to(net, new)
    assert lost and not of_type(net.events_b, PeerMoved)
    net.advance_to(net.now + 1.5)
    (pm,) = of_type(net.events_b, PeerMoved)
    assert pm.new_path == Path(new.remote, new.local)
    assert [u.path for u in of_type(net.events_b, ChildSaUpdated)] == [pm.new_path]


def test_an_unanswered_check_falls_back_to_charons_schedule() -> None:
    # Resent every move_retransmit only for move_timeout: an address that never
    # answers does not get a check each second for ever.
    settings = EngineSettings()
    net = setup()
    net.drop = lambda d: d.path.local.addr == BOB and not decode_header(d.data).is_response
    start = net.now
    moved_to(net, path(ALICE2, BOB))

    def checks_sent_until(until: float) -> int:
        net.log.clear()
        net.advance_to(start + until)
        return sum(1 for d in net.log if d.path.local.addr == BOB
                   and not decode_header(d.data).is_response)

    window = settings.move_timeout
    assert checks_sent_until(window - 0.5) >= 8
    assert checks_sent_until(window + 0.5) == 1  # the window's end: charon's first resend
    assert checks_sent_until(window + settings.retransmit.wait(1) - 0.5) == 0
    assert not of_type(net.events_b, PeerMoved)


def _bob_requests_lost(net: Net) -> None:
    net.drop = lambda d: (d.path.local.addr in (BOB, BOB6)
                          and not decode_header(d.data).is_response)


def test_an_update_back_to_a_verified_address_moves_the_child_sas_at_once() -> None:
    # The soak's mob flips between its uplinks: the gateway's CHILD_SAs waited for a
    # check of an address that had answered one a few seconds earlier (§3.7 asks for
    # a check of the new address, not of one already proven).
    net = setup()
    moved_to(net, path(ALICE2, BOB))  # checked and answered: verified
    assert len(of_type(net.events_b, ChildSaUpdated)) == 1
    _bob_requests_lost(net)  # from here no check of bob's can be answered
    moved_to(net, path(ALICE, BOB))  # where the IKE_SA was set up
    moved_to(net, path(ALICE2, BOB))
    assert [u.path for u in of_type(net.events_b, ChildSaUpdated)] == [
        path(BOB, ALICE2), path(BOB, ALICE), path(BOB, ALICE2)]
    moved_to(net, path(ALICE6, BOB6))  # never checked: still asked first
    assert net.b.status()[0].path == path(BOB6, ALICE6)
    assert len(of_type(net.events_b, ChildSaUpdated)) == 3


def test_a_port_the_address_never_answered_from_is_checked() -> None:
    # Behind a carrier NAT one address holds many peers: the endpoint is what answered.
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    _bob_requests_lost(net)
    moved_to(net, Path(ep(ALICE2, 4501), ep(BOB)))
    assert len(of_type(net.events_b, ChildSaUpdated)) == 1


def test_verified_addresses_outlive_an_ike_rekey() -> None:
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    rekey_ike(net.a, spi(net), net.now)
    net.pump()
    _bob_requests_lost(net)
    moved_to(net, path(ALICE, BOB))
    moved_to(net, path(ALICE2, BOB))
    assert [u.path for u in of_type(net.events_b, ChildSaUpdated)][-2:] == [
        path(BOB, ALICE), path(BOB, ALICE2)]


def test_a_voided_check_s_answer_verifies_no_address() -> None:
    # It may have been resent to the newer address (resend_after_peer_moved): its
    # answer does not show that the address it was first sent to receives.
    net = setup()
    _check_lost_then_address_gone(net)
    moved_to(net, path(ALICE6, BOB6))
    net.advance_to(net.now + 0.5)
    assert len(of_type(net.events_b, PeerMoved)) == 1
    net.down = set()
    _bob_requests_lost(net)
    moved_to(net, path(ALICE2, BOB))  # the voided check's address
    assert len(of_type(net.events_b, PeerMoved)) == 1


def test_the_responder_s_child_sas_move_before_the_rest_of_the_update_is_reported() -> None:
    # The daemon hands events on in order: the data plane takes the new path before the
    # peer routes and path managers follow the move and redo their sets for the list
    # the update carried (§3.6).
    net = setup()
    moved_to(net, path(ALICE2, BOB))
    _bob_requests_lost(net)
    net.events_b.clear()
    moved_to(net, path(ALICE, BOB))
    kinds = [type(e) for e in net.events_b
             if isinstance(e, PeerMoved | ChildSaUpdated | PeerAddressesUpdated)]
    assert kinds == [ChildSaUpdated, PeerMoved, PeerAddressesUpdated]
