"""IKE_SA_INIT floods against the responder: COOKIEs from a threshold on, a per-source
cap on half-open SAs, the global cap only after the COOKIE (charon's receiver order)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from mobike_vici.core.engine import Engine
from mobike_vici.core.events import (
    ChildSaRekeyed,
    ExchangeFailed,
    IkeSaEstablished,
    PacketDropped,
)
from mobike_vici.core.settings import EngineSettings
from mobike_vici.ikev2.constants import ExchangeType, NotifyType
from mobike_vici.ikev2.message import Message, decode_header, decode_message
from mobike_vici.ikev2.payloads import Notify
from mobike_vici.types import IKE_PORT, Endpoint, IPAddress, Path

from .harness import ALICE, BOB, config_pair, make_pair, of_type, seeded

_seeds = itertools.count(100)


def _responder(settings: EngineSettings) -> Engine:
    _, cb = config_pair(responder_extra="remote_addrs = %any")
    return Engine(cb, seeded(1), lambda r: BOB, settings)


def _drain(engine: Engine) -> list[object]:
    out = []
    while (e := engine.next_event()) is not None:
        out.append(e)
    return out


class Initiator:
    """A real initiator engine whose packets reach the responder from ``source``
    (a spoofed or extra address); it answers COOKIEs only when ``returns`` is set."""

    def __init__(self, source: IPAddress) -> None:
        ca, _ = config_pair()
        self.engine = Engine(ca, seeded(next(_seeds)), lambda r: ALICE)
        self.source = source
        self.engine.initiate("home", None, 0.0)

    @property
    def seen_path(self) -> Path:
        return Path(Endpoint(BOB, IKE_PORT), Endpoint(self.source, IKE_PORT))

    def send(self, responder: Engine, now: float) -> list[bytes]:
        """Deliver what the initiator has to send; the responder's answers, as bytes."""
        for d in self.engine.datagrams_to_send(now):
            responder.receive_datagram(d.data, self.seen_path, now)
        return [d.data for d in responder.datagrams_to_send(now)]

    def answer(self, replies: list[bytes], now: float) -> None:
        back = Path(Endpoint(ALICE, IKE_PORT), Endpoint(BOB, IKE_PORT))
        for r in replies:
            self.engine.receive_datagram(r, back, now)


def _is_cookie(reply: bytes) -> bool:
    msg = decode_message(reply)
    first = msg.payloads[0] if msg.payloads else None
    return isinstance(first, Notify) and first.type == NotifyType.COOKIE


def _half_open(engine: Engine) -> int:
    return sum(1 for s in engine.status() if s.state == "CONNECTING")


@pytest.mark.slow
def test_spoofed_flood_gets_cookies_and_no_state() -> None:
    responder = _responder(EngineSettings(cookie_threshold=10))
    for i in range(200):
        flooder = Initiator(ipaddress.ip_address(f"198.51.100.{i % 250 + 1}"))
        replies = flooder.send(responder, 1.0)
        assert len(replies) == 1  # answered, never silently dropped
        if i >= 10:
            assert _is_cookie(replies[0])
    assert _half_open(responder) == 10  # only those below the threshold
    assert not of_type(_drain(responder), PacketDropped)


@pytest.mark.slow
def test_one_source_holds_at_most_block_threshold_half_open_sas() -> None:
    # An attacker at one real address answers COOKIEs: each answered request costs
    # the responder a DH. From block_threshold half-open SAs on it is dropped.
    settings = EngineSettings(cookie_threshold=0, block_threshold=5)
    responder = _responder(settings)
    attacker = ipaddress.ip_address("198.51.100.7")
    for _ in range(40):
        flooder = Initiator(attacker)
        flooder.answer(flooder.send(responder, 1.0), 1.0)  # the COOKIE
        flooder.send(responder, 1.0)
    assert _half_open(responder) == 5
    dropped = of_type(_drain(responder), PacketDropped)
    assert len(dropped) == 35
    assert {d.reason for d in dropped} == {"too many half-open IKE_SAs from this address"}
    # Another address is not locked out: it sets up a whole IKE_SA.
    legit = Initiator(ipaddress.ip_address("203.0.113.9"))
    for _ in range(6):
        replies = legit.send(responder, 2.0)
        if not replies:
            break
        legit.answer(replies, 2.0)
    assert of_type(_drain(legit.engine), IkeSaEstablished)
    # When the attacker's half-open SAs time out, it may try again.
    responder.handle_timer(40.0)
    assert _half_open(responder) == 0
    again = Initiator(attacker)
    again.answer(again.send(responder, 41.0), 41.0)
    assert decode_header(again.send(responder, 41.0)[0]).exchange == ExchangeType.IKE_SA_INIT
    assert _half_open(responder) == 1


def test_global_limit_answers_cookies_first() -> None:
    # Full table: a request without a COOKIE is answered with one (it may come from
    # a spoofed source), not dropped; a valid COOKIE then meets the global limit.
    settings = EngineSettings(cookie_threshold=3, half_open_limit=3, block_threshold=0)
    responder = _responder(settings)
    for i in range(3):
        Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}")).send(responder, 1.0)
    assert _half_open(responder) == 3
    _drain(responder)
    late = Initiator(ipaddress.ip_address("203.0.113.9"))
    replies = late.send(responder, 1.0)
    assert len(replies) == 1 and _is_cookie(replies[0])
    late.answer(replies, 1.0)
    assert late.send(responder, 1.0) == []
    assert [d.reason for d in of_type(_drain(responder), PacketDropped)] == [
        "too many half-open IKE_SAs"]


def test_cookies_stay_on_for_the_calmdown() -> None:
    settings = EngineSettings(cookie_threshold=2, cookie_calmdown=10.0)
    responder = _responder(settings)
    for i in range(2):
        Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}")).send(responder, 0.0)
    assert _is_cookie(Initiator(ipaddress.ip_address("198.51.100.9")).send(responder, 1.0)[0])
    responder.handle_timer(31.0)  # both half-open SAs time out
    assert _half_open(responder) == 0
    # The threshold was last reached at t=1: the calmdown is over, no COOKIE.
    assert not _is_cookie(Initiator(ipaddress.ip_address("198.51.100.10"))
                          .send(responder, 31.0)[0])
    responder2 = _responder(settings)
    for i in range(2):
        Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}")).send(responder2, 0.0)
    assert _is_cookie(Initiator(ipaddress.ip_address("198.51.100.9")).send(responder2, 25.0)[0])
    responder2.handle_timer(31.0)
    assert _is_cookie(Initiator(ipaddress.ip_address("198.51.100.10")).send(responder2, 31.0)[0])
    assert not _is_cookie(Initiator(ipaddress.ip_address("198.51.100.11"))
                          .send(responder2, 36.0)[0])


def _establish(initiator: Initiator, responder: Engine, now: float) -> list[object]:
    for _ in range(6):
        replies = initiator.send(responder, now)
        if not replies:
            break
        initiator.answer(replies, now)
    return _drain(initiator.engine)


def test_ike_sas_per_authenticated_peer_are_capped() -> None:
    # unique = never: the peer may hold several IKE_SAs, but not without bound.
    _, cb = config_pair(responder_extra="unique = never")
    responder = Engine(cb, seeded(1), lambda r: BOB, EngineSettings(max_ike_sas_per_peer=3))
    got = [of_type(_establish(Initiator(ALICE), responder, 1.0 + i), IkeSaEstablished)
           for i in range(5)]
    assert [bool(g) for g in got] == [True, True, True, False, False]
    assert sum(1 for s in responder.status() if s.state == "ESTABLISHED") == 3
    failed = [e for e in _drain(responder) if isinstance(e, ExchangeFailed)]
    assert [e.reason for e in failed] == [
        "authentication_failed: too many IKE_SAs for this peer"] * 2
    # Another peer address with the same identity is another peer.
    other = Initiator(ipaddress.ip_address("192.0.2.99"))
    assert of_type(_establish(other, responder, 9.0), IkeSaEstablished)


def test_child_sas_per_authenticated_peer_are_capped() -> None:
    net = make_pair(settings=EngineSettings(max_child_sas_per_peer=3))
    # IKE_AUTH brings one, CREATE_CHILD_SA two more; the next two are refused.
    net.a.initiate("home", None, 0.0)
    net.pump()
    for i in range(4):
        net.a.initiate("home", "net", 1.0 + i)
        net.pump()
    (sa,) = net.b.status()
    assert len(sa.children) == 3
    assert [e.reason for e in of_type(net.events_b, ExchangeFailed)] == [
        "NO_ADDITIONAL_SAS"] * 2
    # Rekeys do not count against the cap.
    uid = net.a.status()[0].children[0].unique_id
    net.a.rekey_child(uid, 10.0)
    net.pump()
    assert of_type(net.events_b, ChildSaRekeyed)
    assert len(net.b.status()[0].children) == 3


def test_child_cap_applies_to_the_child_of_ike_auth() -> None:
    _, cb = config_pair(responder_extra="unique = never")
    responder = Engine(cb, seeded(1), lambda r: BOB, EngineSettings(max_child_sas_per_peer=1))
    assert of_type(_establish(Initiator(ALICE), responder, 1.0), IkeSaEstablished)
    _drain(responder)
    second = _establish(Initiator(ALICE), responder, 2.0)
    assert of_type(second, IkeSaEstablished)  # the IKE_SA, without its CHILD_SA
    assert sum(len(s.children) for s in responder.status()) == 1
    assert [e.reason for e in of_type(_drain(responder), ExchangeFailed)] == [
        "NO_ADDITIONAL_SAS"]


@pytest.mark.slow
def test_cookie_demands_do_not_decode_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under a flood the SA payload is what costs: a request without a valid COOKIE is
    # answered from a walk over the payload headers, never fully decoded.
    import mobike_vici.core.admission as admission_module

    decoded = [0]
    real = admission_module.decode_message

    def counting(data: bytes) -> Message:
        decoded[0] += 1
        return real(data)

    monkeypatch.setattr(admission_module, "decode_message", counting)
    responder = _responder(EngineSettings(cookie_threshold=10))
    for i in range(100):
        replies = Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}")).send(responder, 1.0)
        assert len(replies) == 1
    assert decoded[0] == 10
    # With the COOKIE it asked for, a request is decoded and answered in full.
    legit = Initiator(ipaddress.ip_address("203.0.113.9"))
    assert of_type(_establish(legit, responder, 2.0), IkeSaEstablished)


@pytest.mark.parametrize("cut", [29, 31, 40, 100])
def test_truncated_requests_under_cookies_are_dropped(cut: int) -> None:
    responder = _responder(EngineSettings(cookie_threshold=0))
    flooder = Initiator(ipaddress.ip_address("198.51.100.1"))
    (request,) = flooder.engine.datagrams_to_send(0.0)
    data = request.data[:cut]
    # The header's length field still says the full size, or is made to fit.
    for datagram in (data, data[:24] + len(data).to_bytes(4, "big") + data[28:]):
        responder.receive_datagram(datagram, flooder.seen_path, 1.0)
        assert responder.datagrams_to_send(1.0) == []
    assert len(of_type(_drain(responder), PacketDropped)) == 2


class Modp4096Initiator(Initiator):
    def __init__(self, source: IPAddress, proposal: str = "aes128-sha256-modp4096") -> None:
        ca, _ = config_pair(proposal=proposal)
        self.engine = Engine(ca, seeded(next(_seeds)), lambda r: ALICE)
        self.source = source
        self.engine.initiate("home", None, 0.0)


def _with_cookie(initiator: Initiator, responder: Engine, now: float) -> list[bytes]:
    """The first request, the COOKIE it earns, the request again with it."""
    initiator.answer(initiator.send(responder, now), now)
    return initiator.send(responder, now)


@pytest.mark.slow
def test_dh_work_is_priced_and_newcomers_keep_a_reserve() -> None:
    # Flooders that answer COOKIEs make the responder compute a DH each (MODP-4096,
    # 5.5 ms): the budget caps that work at dh_budget ms per second.
    _, cb = config_pair(proposal="aes128-sha256-x25519-modp4096")
    settings = EngineSettings(cookie_threshold=0, dh_budget=250.0, dh_reserve=100.0)
    responder = Engine(cb, seeded(1), lambda r: BOB, settings)
    flooders = [Modp4096Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}"))
                for i in range(120)]
    for f in flooders:
        _with_cookie(f, responder, 1.0)
    admitted = _half_open(responder)
    assert admitted == int((250.0 + 100.0) // 5.5)  # budget plus the newcomers' reserve
    dropped = of_type(_drain(responder), PacketDropped)
    assert {d.reason for d in dropped} == {"DH budget spent"}
    assert len(dropped) == 120 - admitted
    # The admitted sources keep at it (new SPIs, with COOKIEs) every 10 ms...
    t = 1.0
    for step in range(1, 80):
        t = 1.0 + step * 0.01
        for i in range(3):
            source = f"198.51.100.{(3 * step + i) % admitted + 1}"  # under block_threshold
            _with_cookie(Modp4096Initiator(ipaddress.ip_address(source)), responder, t)
    # ... and take what the budget gives them, not more: 0.8 s of budget, no reserve.
    more = _half_open(responder) - admitted
    assert 0 < more <= int(0.8 * 250.0 // 5.5) + 1
    assert len(of_type(_drain(responder), PacketDropped)) == 237 - more
    # A new peer (no half-open SA at its address) still gets in at once.
    legit = Initiator(ipaddress.ip_address("203.0.113.9"))
    assert of_type(_establish(legit, responder, t), IkeSaEstablished)


def test_refused_requests_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A source over block_threshold, with valid COOKIEs: refused from the payload
    # headers alone, like requests that find the DH budget spent.
    import mobike_vici.core.admission as admission_module

    decoded = [0]
    real = admission_module.decode_message

    def counting(data: bytes) -> Message:
        if not data[19] & 0x20:  # requests only (the initiators decode the answers)
            decoded[0] += 1
        return real(data)

    monkeypatch.setattr(admission_module, "decode_message", counting)
    responder = _responder(EngineSettings(cookie_threshold=0, block_threshold=5))
    for _ in range(40):
        _with_cookie(Initiator(ipaddress.ip_address("198.51.100.7")), responder, 1.0)
    assert _half_open(responder) == 5
    assert decoded[0] == 5


@pytest.mark.slow
def test_answers_without_dh_cost_no_budget() -> None:
    # INVALID_KE_PAYLOAD needs no DH: a newcomer asking for a group we do not take
    # cannot drain the reserve that way.
    _, cb = config_pair(proposal="aes128-sha256-x25519")
    settings = EngineSettings(cookie_threshold=1000, dh_budget=10.0, dh_reserve=0.0)
    responder = Engine(cb, seeded(1), lambda r: BOB, settings)
    for i in range(200):
        flooder = Modp4096Initiator(ipaddress.ip_address(f"198.51.100.{i + 1}"),
                                    "aes128-sha256-modp4096-x25519")
        (reply,) = flooder.send(responder, 1.0)
        first = decode_message(reply).payloads[0]
        assert isinstance(first, Notify) and first.type == NotifyType.INVALID_KE_PAYLOAD
    assert _half_open(responder) == 0
    legit = Initiator(ipaddress.ip_address("203.0.113.9"))
    assert of_type(_establish(legit, responder, 1.0), IkeSaEstablished)
