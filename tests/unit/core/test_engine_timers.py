"""Retransmissions (charon's timing), the response cache, DPD, deletes and half-open timeouts."""

from __future__ import annotations

import pytest

from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    IkeSaDeleted,
    IkeSaEstablished,
    PacketDropped,
)
from mobike_vici.core.settings import EngineSettings, RetransmitSettings
from mobike_vici.ikev2.constants import ExchangeType
from mobike_vici.ikev2.message import decode_header
from mobike_vici.types import Path

from .harness import ALICE, BOB, Net, config_pair, established_pair, make_pair, of_type, seeded

_of = of_type


def test_charon_retransmit_schedule() -> None:
    s = RetransmitSettings()
    sends, t = [0.0], 0.0
    for n in range(s.tries):
        t += s.wait(n)
        sends.append(t)
    give_up = t + s.wait(s.tries)
    assert sends[1:] == pytest.approx([4.0, 11.2, 24.16, 47.488, 89.4784])
    assert give_up == pytest.approx(165.06112)


def test_lost_packets_retransmitted_on_charons_schedule() -> None:
    net = make_pair()
    net.drop = lambda d: True  # the responder never hears anything
    net.a.initiate("home", None, 0.0)
    send_times: list[float] = []
    seen = 0
    while (t := net.a.get_timer()) is not None and t < 1000:
        net.now = t
        net.a.handle_timer(t)
        net.pump()
        while seen < len(net.log):
            send_times.append(net.now if seen else 0.0)
            seen += 1
        net.collect()
    s = RetransmitSettings()
    expected, t = [0.0], 0.0
    for n in range(s.tries):
        t += s.wait(n)
        expected.append(t)
    assert send_times[1:] == pytest.approx(expected[1:])
    assert len({d.data for d in net.log}) == 1  # resent verbatim
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "retransmits_exceeded"
    assert net.now == pytest.approx(t + s.wait(s.tries))
    assert net.a.status() == [] and net.a.get_timer() is None


def test_retransmitted_request_answered_from_cache() -> None:
    net = make_pair()
    # Lose bob's IKE_AUTH response once: alice resends, bob answers from its cache.
    lost = {"n": 0}

    def drop(d: Datagram) -> bool:
        h = decode_header(d.data)
        if h.exchange == ExchangeType.IKE_AUTH and h.is_response and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    net.drop = drop
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert not _of(net.events_a, IkeSaEstablished)
    assert len(_of(net.events_b, ChildSaInstalled)) == 1
    net.advance_to(4.0)
    assert len(_of(net.events_a, IkeSaEstablished)) == 1
    # Bob did not process the request twice: still one CHILD_SA, one establishment.
    assert len(_of(net.events_b, ChildSaInstalled)) == 1
    assert len(_of(net.events_b, IkeSaEstablished)) == 1
    auth_responses = [d for d in net.log if decode_header(d.data).exchange == 35
                      and decode_header(d.data).is_response]
    assert len(auth_responses) == 2 and auth_responses[0].data == auth_responses[1].data


def test_old_and_future_message_ids_dropped() -> None:
    net = established_pair()
    (sa,) = net.a.status()
    auth_request = next(d for d in net.log if decode_header(d.data).exchange == 35)
    # A request with a message ID from the future: dropped, SA unchanged.
    data = bytearray(auth_request.data)
    data[20:24] = (7).to_bytes(4, "big")
    net.b.receive_datagram(bytes(data), Path(auth_request.path.remote, auth_request.path.local),
                           1.0)
    net.collect()
    assert "outside the window" in _of(net.events_b, PacketDropped)[-1].reason
    assert net.b.datagrams_to_send(1.0) == []
    assert net.a.status() == [sa]


def test_dpd_liveness_check() -> None:
    net = established_pair(initiator_extra="dpd_delay = 30s")
    assert net.a.get_timer() == pytest.approx(30.0)
    net.advance_to(30.0)
    infos = [d for d in net.log if decode_header(d.data).exchange == ExchangeType.INFORMATIONAL]
    assert len(infos) == 2  # an empty request and its answer
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    # Peer gone: DPD retransmits on charon's schedule and then deletes the IKE_SA.
    net.drop = lambda d: True
    net.advance_to(60.0 + 170.0)
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "dpd_timeout"
    assert net.a.status() == []
    assert [e.reason for e in _of(net.events_a, ChildSaDeleted)] == ["dpd_timeout"]


def test_delete_child_then_ike() -> None:
    net = established_pair()
    (ca,) = _of(net.events_a, ChildSaInstalled)
    net.a.delete_child(ca.unique_id, 1.0)
    net.pump()
    (da,) = _of(net.events_a, ChildSaDeleted)
    (db,) = _of(net.events_b, ChildSaDeleted)
    assert (da.spi_in, db.spi_in) == (db.spi_out, da.spi_out)
    assert db.reason == "deleted_by_peer"
    assert net.b.status()[0].children == ()
    net.b.delete_ike(net.b.status()[0].ike_spi, 2.0)
    net.pump()
    assert [e.reason for e in _of(net.events_a, IkeSaDeleted)] == ["deleted_by_peer"]
    assert [e.reason for e in _of(net.events_b, IkeSaDeleted)] == ["deleted_locally"]
    assert net.a.status() == [] and net.b.status() == []
    assert net.a.get_timer() is None and net.b.get_timer() is None


def test_half_open_sa_times_out() -> None:
    net = make_pair()
    net.drop = lambda d: decode_header(d.data).exchange == ExchangeType.IKE_AUTH
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert [s.state for s in net.b.status()] == ["CONNECTING"]
    assert net.b.get_timer() == pytest.approx(30.0)
    net.b.handle_timer(30.0)
    net.collect()
    assert [e.reason for e in _of(net.events_b, IkeSaDeleted)] == ["half_open_timeout"]
    assert net.b.status() == []


def test_late_init_retransmit_answered_from_cache_after_establishment() -> None:
    net = established_pair()
    first = net.log[0]
    assert decode_header(first.data).exchange == ExchangeType.IKE_SA_INIT
    before = net.b.status()
    net.b.receive_datagram(first.data, Path(first.path.remote, first.path.local), 2.0)
    (again,) = net.b.datagrams_to_send(2.0)
    assert again.data == net.log[1].data
    assert net.b.status() == before


def test_initial_contact_replaces_stale_sa() -> None:
    net = established_pair()
    (old,) = net.b.status()
    # Alice restarts (a fresh engine, same config) and connects again.
    ca, _ = config_pair()
    net.a = Engine(ca, seeded(77), lambda r: ALICE)
    net.a.initiate("home", None, 5.0)
    net.now = 5.0
    net.pump()
    (new,) = net.b.status()
    assert new.ike_spi != old.ike_spi and new.state == "ESTABLISHED"
    assert [e.reason for e in _of(net.events_b, IkeSaDeleted)] == ["initial_contact"]


def test_second_sa_to_same_peer_sends_no_initial_contact() -> None:
    net = make_pair()
    # Two IKE_SAs to the same peer, started before either is up.
    net.a.initiate("home", None, 0.0)
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert [s.state for s in net.b.status()] == ["ESTABLISHED", "ESTABLISHED"]
    assert len(net.a.status()) == 2
    assert not _of(net.events_b, IkeSaDeleted)


def _init_sends(eager: bool, peer_back: float) -> tuple[list[float], float | None]:
    """When the IKE_SA_INIT left (the peer hears nothing before ``peer_back``), and when
    the IKE_SA was up."""
    net = make_pair()
    net.drop = lambda d: net.now < peer_back  # the peer's daemon is starting
    net.a.initiate("home", None, 0.0, eager=eager)
    sends: list[float] = []
    up: float | None = None
    seen = 0
    while (t := net.a.get_timer()) is not None and t < 60.0 and up is None:
        net.now = t
        net.a.handle_timer(t)
        net.b.handle_timer(t)
        net.pump()
        for d in net.log[seen:]:
            if decode_header(d.data).exchange == ExchangeType.IKE_SA_INIT \
                    and not decode_header(d.data).is_response:
                sends.append(net.now if seen else 0.0)
            seen += 1
        if _of(net.events_a, IkeSaEstablished):
            up = net.now
    return sends, up


def test_ike_sa_init_to_a_restarting_peer_is_resent_every_quarter_second() -> None:
    # The peer deleted the IKE_SA as it stopped: it answers as soon as it is up again.
    # Charon's schedule (4 s, then 11.2 s) would leave the tunnel down up to 7 s longer.
    sends, up = _init_sends(eager=True, peer_back=6.6)
    assert sends[:8] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    assert up == pytest.approx(6.75)  # the first resend after the peer is back
    plain, plain_up = _init_sends(eager=False, peer_back=6.6)
    assert plain[:3] == pytest.approx([0.0, 4.0, 11.2])
    assert plain_up == pytest.approx(11.2)


def test_eager_resends_end_with_their_window_then_charons_schedule() -> None:
    settings = EngineSettings()
    sends, up = _init_sends(eager=True, peer_back=1000.0)
    assert up is None
    window, resend = settings.eager_window, settings.eager_resend
    last = round(window / resend)
    assert sends[last] == pytest.approx(window)  # every eager_resend within the window
    # the window's last send is charon's first retransmission: 7.2 s, 12.96 s after it
    assert sends[last + 1] == pytest.approx(window + 7.2)
    assert sends[last + 2] == pytest.approx(window + 7.2 + 12.96)


def _dead_after_pair(state_check_after: float = 0.0) -> Net:
    settings = EngineSettings(dead_after=30.0, state_check_after=state_check_after)
    net = make_pair(1, settings, initiator_extra="dpd_delay = 10s")
    net.a.initiate("home", None, 0.0)
    net.pump()
    net.advance_to(10.0)  # the first DPD is answered
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    return net


def test_a_peer_silent_for_dead_after_is_dead_long_before_the_retransmit_bound() -> None:
    net = _dead_after_pair()
    net.drop = lambda d: True  # the peer is gone on every path
    net.advance_to(49.9)  # the DPD at 20 s is unanswered: dead at 50 s
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    net.advance_to(50.1)
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "dead_after"
    assert [e.reason for e in _of(net.events_a, ChildSaDeleted)] == ["dead_after"]
    assert net.a.status() == []


def test_dead_after_counts_from_the_first_request_after_the_peer_last_spoke() -> None:
    net = _dead_after_pair()
    # The DPD at 20 s is lost, its resend at 24 s answered; the DPD at 34 s never is.
    net.drop = lambda d: net.now < 23.0 or net.now > 30.0
    net.advance_to(63.9)
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    net.advance_to(64.1)
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "dead_after"


def _init_to_a_peer_loading_its_config(eager: bool) -> Net:
    """The peer's daemon is up but its connection not loaded before 3.5 s: it answers
    NO_PROPOSAL_CHOSEN (charon between its start and swanctl --load-all)."""
    net = make_pair()
    loaded = net.b
    _, unloaded = config_pair("aes256-sha384-modp3072")
    net.b = Engine(unloaded, seeded(7), lambda r: BOB)
    net.a.initiate("home", None, 0.0, eager=eager)
    net.pump()
    net.advance_to(3.5)
    net.b = loaded
    net.advance_to(10.0)
    return net


def test_a_restarting_peer_that_refuses_before_its_config_is_loaded_is_asked_again() -> None:
    net = _init_to_a_peer_loading_its_config(eager=True)
    assert len(_of(net.events_a, IkeSaEstablished)) == 1
    assert not _of(net.events_a, IkeSaDeleted)
    plain = _init_to_a_peer_loading_its_config(eager=False)
    (deleted,) = _of(plain.events_a, IkeSaDeleted)  # outside a restart: charon's way
    assert deleted.reason == "no_proposal_chosen" and not _of(plain.events_a,
                                                               IkeSaEstablished)


def test_a_responder_keeps_retransmitting_past_dead_after() -> None:
    # RFC 4555 3.11: the initiator detects failures; a responder gives a moving peer time.
    net = make_pair(1, EngineSettings(dead_after=30.0), responder_extra="dpd_delay = 10s")
    net.a.initiate("home", None, 0.0)
    net.pump()
    net.advance_to(10.0)
    net.drop = lambda d: True
    net.advance_to(150.0)
    assert [s.state for s in net.b.status()] == ["ESTABLISHED"]
    net.advance_to(200.0)
    (deleted,) = _of(net.events_b, IkeSaDeleted)
    assert deleted.reason == "dpd_timeout"


def test_a_peer_that_restarted_without_delete_is_noticed_by_its_answer_to_a_new_init() -> None:
    # The peer's daemon stopped with an exchange of its own in flight: no DELETE; the
    # new one drops our requests (unknown SPI) but answers an IKE_SA_INIT.
    net = _dead_after_pair(state_check_after=1.0)
    _, fresh = config_pair()
    net.b = Engine(fresh, seeded(77), lambda r: BOB, EngineSettings())
    net.advance_to(25.0)  # the DPD at 20 s goes unanswered
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "peer_lost_state"
    assert [e.reason for e in _of(net.events_a, ChildSaDeleted)] == ["peer_lost_state"]
    assert net.a.status() == []
    # The check's own half-open SA was dropped quietly, never reported.
    assert len(_of(net.events_a, IkeSaDeleted)) == 1


def test_a_silent_peer_still_costs_the_ike_sa_only_after_dead_after() -> None:
    net = _dead_after_pair(state_check_after=1.0)
    net.drop = lambda d: True  # the peer (or the way to it) answers nothing
    net.advance_to(49.9)
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    assert not _of(net.events_a, IkeSaDeleted)
    net.advance_to(50.1)
    (deleted,) = _of(net.events_a, IkeSaDeleted)
    assert deleted.reason == "dead_after"


def test_an_outage_that_ends_keeps_the_ike_sa_when_the_peer_still_knows_it() -> None:
    # The way to the peer is cut from 19 s to 23.5 s: the check's IKE_SA_INIT is
    # answered once it heals, and so is the old IKE_SA's request resent then.
    net = _dead_after_pair(state_check_after=1.0)
    net.drop = lambda d: 19.0 < net.now < 23.5
    net.advance_to(40.0)
    assert not _of(net.events_a, IkeSaDeleted)
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    inits = [d for d in net.log if d.path.local.addr == ALICE
             and decode_header(d.data).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) >= 2  # the setup's and at least one check's


def test_a_peer_busy_with_our_request_for_a_while_keeps_the_ike_sa() -> None:
    # The peer answers the IKE_SA_INIT at once but our DPD of 20 s only at 21.8 s, busy
    # with it (charon runs an updown script while it installs a CHILD_SA): not a restart.
    net = _dead_after_pair(state_check_after=1.0)
    held: list[Datagram] = []

    def drop(d: Datagram) -> bool:
        header = decode_header(d.data)
        busy = header.is_response and header.exchange != ExchangeType.IKE_SA_INIT
        if busy and d.path.local.addr == BOB and 19.5 < net.now < 21.8:
            held.append(d)
            return True
        return False
    net.drop = drop
    net.advance_to(21.8)
    assert held
    net.a.receive_datagram(held[0].data, Path(held[0].path.remote, held[0].path.local),
                           net.now)
    net.advance_to(40.0)
    assert not _of(net.events_a, IkeSaDeleted)
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]


def test_a_lossy_way_to_a_peer_that_still_knows_the_ike_sa_does_not_cost_it() -> None:
    # Everything lost from 19 s to 23.5 s; then the IKE_SA's retransmission at 24 s and
    # the first copy of it sent on the check's answer are lost too: the others get through.
    net = _dead_after_pair(state_check_after=1.0)
    seen: list[int] = []

    def drop(d: Datagram) -> bool:
        if 19.0 < net.now < 23.5:
            return True
        init = decode_header(d.data).exchange == ExchangeType.IKE_SA_INIT
        if net.now >= 23.5 and d.path.local.addr == ALICE and not init:
            seen.append(1)
            return len(seen) <= 2
        return False
    net.drop = drop
    net.advance_to(40.0)
    assert seen and not _of(net.events_a, IkeSaDeleted)
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
