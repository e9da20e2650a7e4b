"""Native <-> native IKE_SA_INIT + IKE_AUTH in memory: proposals, VIPs, INVALID_KE, COOKIE."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from mobike_vici.core.engine import Engine
from mobike_vici.core.events import (
    ChildSaInstalled,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    PacketDropped,
)
from mobike_vici.core.settings import EngineSettings
from mobike_vici.ikev2.constants import ExchangeType, NotifyType
from mobike_vici.ikev2.message import decode_message
from mobike_vici.ikev2.payloads import KE, Notify
from mobike_vici.types import Endpoint, Path

from .harness import ALICE, BOB, Net, config_pair, make_pair, of_type, seeded

_of = of_type


@pytest.mark.parametrize("proposal", [
    "aes128-sha256-x25519", "aes256gcm16-prfsha384-ecp384", "aes128-sha1-modp2048",
])
def test_setup_both_roles_agree(proposal: str) -> None:
    net = make_pair(proposal=proposal)
    net.a.initiate("home", None, 0.0)
    net.pump()
    (ia,) = _of(net.events_a, IkeSaEstablished)
    (ib,) = _of(net.events_b, IkeSaEstablished)
    assert ia.initiator and not ib.initiator
    assert ia.ike_spi == ib.ike_spi
    assert ia.proposal == ib.proposal == proposal
    assert (ia.local_id, ia.remote_id) == ("alice@example.com", "bob.example.com")
    assert (ib.local_id, ib.remote_id) == ("bob.example.com", "alice@example.com")
    (ca,) = _of(net.events_a, ChildSaInstalled)
    (cb,) = _of(net.events_b, ChildSaInstalled)
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert ca.keys == cb.keys  # both derive the same KEYMAT
    assert ca.local_ts == cb.remote_ts == ("10.1.0.0/24",)
    assert ca.remote_ts == cb.local_ts == ("10.2.0.0/24",)
    # MOBIKE is on by default, so IKE_AUTH floated to 4500 on both sides.
    assert ia.path.local.port == ia.path.remote.port == 4500
    assert ib.path.local.port == ib.path.remote.port == 4500
    assert not ia.nat_local and not ia.nat_remote and not ca.encap
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    assert [c.state for s in net.b.status() for c in s.children] == ["INSTALLED"]


def test_virtual_ip_from_pool() -> None:
    net = make_pair(initiator_extra="vips = 0.0.0.0", responder_extra="pools = p4",
                    pools="pools { p4 { addrs = 10.9.0.0/28 } }")
    net.a.initiate("home", "net", 0.0)
    net.pump()
    (ia,) = _of(net.events_a, IkeSaEstablished)
    (ib,) = _of(net.events_b, IkeSaEstablished)
    assert ia.virtual_ips == ib.virtual_ips == (ipaddress.ip_address("10.9.0.1"),)
    (cb,) = _of(net.events_b, ChildSaInstalled)
    assert cb.remote_ts == ("10.1.0.0/24",)


def test_virtual_ip_narrows_dynamic_selector() -> None:
    net = make_pair(initiator_extra="vips = 0.0.0.0", responder_extra="pools = p4",
                    pools="pools { p4 { addrs = 10.9.0.5-10.9.0.9 } }",
                    init_local_ts="dynamic", resp_remote_ts="dynamic")
    net.a.initiate("home", "net", 0.0)
    net.pump()
    assert _of(net.events_a, IkeSaEstablished)[0].virtual_ips == (
        ipaddress.ip_address("10.9.0.5"),)
    (ca,) = _of(net.events_a, ChildSaInstalled)
    (cb,) = _of(net.events_b, ChildSaInstalled)
    assert ca.local_ts == cb.remote_ts == ("10.9.0.5/32",)


def test_invalid_ke_retry_same_spi() -> None:
    # The initiator proposes x25519 first, the responder only accepts modp2048.
    ca, _ = config_pair(proposal="aes128-sha256-x25519-modp2048")
    _, cb = config_pair(proposal="aes128-sha256-modp2048")

    net = Net(Engine(ca, seeded(5), lambda r: ALICE), Engine(cb, seeded(6), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()
    inits = [decode_message(d.data) for d in net.log
             if decode_message(d.data).header.exchange == ExchangeType.IKE_SA_INIT]
    requests = [m for m in inits if not m.header.is_response]
    assert len(requests) == 2
    assert requests[0].header.spi_i == requests[1].header.spi_i
    assert [p.group for m in requests for p in m.payloads if isinstance(p, KE)] == [31, 14]
    first_answer = inits[1]
    assert any(isinstance(p, Notify) and p.type == NotifyType.INVALID_KE_PAYLOAD
               and p.data == (14).to_bytes(2, "big") for p in first_answer.payloads)
    assert _of(net.events_a, IkeSaEstablished)[0].proposal == "aes128-sha256-modp2048"


def test_cookie_demanded_above_threshold() -> None:
    settings = EngineSettings(cookie_threshold=0)  # demand a COOKIE from the first SA
    net = make_pair(settings=settings)
    net.a.initiate("home", None, 0.0)
    net.pump()
    msgs = [decode_message(d.data) for d in net.log[:3]]
    assert isinstance(msgs[1].payloads[0], Notify)
    assert msgs[1].payloads[0].type == NotifyType.COOKIE
    retry = msgs[2]
    assert retry.header.exchange == ExchangeType.IKE_SA_INIT and not retry.header.is_response
    assert isinstance(retry.payloads[0], Notify) and retry.payloads[0].type == NotifyType.COOKIE
    assert retry.payloads[0].data == msgs[1].payloads[0].data
    assert _of(net.events_a, IkeSaEstablished) and _of(net.events_b, IkeSaEstablished)


def test_forged_cookie_rejected() -> None:
    settings = EngineSettings(cookie_threshold=0)
    net = make_pair(settings=settings)
    net.a.initiate("home", None, 0.0)
    first = net.a.datagrams_to_send(0.0)[0]
    back = Path(first.path.remote, first.path.local)
    net.b.receive_datagram(first.data, back, 0.0)
    (reply,) = net.b.datagrams_to_send(0.0)
    cookie = decode_message(reply.data).payloads[0]
    assert isinstance(cookie, Notify) and cookie.type == NotifyType.COOKIE
    assert net.b.status() == []  # stateless: no SA for a COOKIE answer


def test_no_proposal_chosen() -> None:
    ca, _ = config_pair(proposal="aes128-sha256-x25519")
    _, cb = config_pair(proposal="aes256-sha512-modp4096")

    net = Net(Engine(ca, seeded(7), lambda r: ALICE), Engine(cb, seeded(8), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert [e.reason for e in _of(net.events_a, ExchangeFailed)] == ["NO_PROPOSAL_CHOSEN"]
    assert [e.reason for e in _of(net.events_a, IkeSaDeleted)] == ["no_proposal_chosen"]
    assert net.a.status() == [] and net.b.status() == []


def test_wrong_psk_fails_authentication() -> None:
    ca, cb = config_pair()
    cb = replace(cb, secrets=(replace(cb.secrets[0], secret=b"other"),))
    net = Net(Engine(ca, seeded(9), lambda r: ALICE), Engine(cb, seeded(10), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert not _of(net.events_a, IkeSaEstablished)
    assert not _of(net.events_b, IkeSaEstablished)
    assert "authentication_failed" in [e.reason for e in _of(net.events_a, IkeSaDeleted)]
    assert net.a.status() == [] and net.b.status() == []


def test_nat_detected_sets_encap() -> None:
    net = make_pair()
    # A NAT in front of alice: bob sees her packets from another address and port.
    nat = Endpoint(ipaddress.ip_address("198.51.100.7"), 61000)
    nat_4500 = Endpoint(nat.addr, 61001)
    net.a.initiate("home", None, 0.0)
    for _ in range(4):
        for d in net.a.datagrams_to_send(0.0):
            outer = nat if d.path.local.port == 500 else nat_4500
            net.b.receive_datagram(d.data, Path(d.path.remote, outer), 0.0)
        for d in net.b.datagrams_to_send(0.0):
            assert d.path.remote in (nat, nat_4500)
            real = Endpoint(ALICE, 500 if d.path.remote == nat else 4500)
            net.a.receive_datagram(d.data, Path(real, d.path.local), 0.0)
    net.collect()
    (ia,) = _of(net.events_a, IkeSaEstablished)
    (ib,) = _of(net.events_b, IkeSaEstablished)
    assert ia.nat_local and not ia.nat_remote
    assert ib.nat_remote and not ib.nat_local
    assert ib.path.remote == nat_4500
    assert _of(net.events_a, ChildSaInstalled)[0].encap
    assert _of(net.events_b, ChildSaInstalled)[0].encap
    # Alice is behind the NAT: she sends keepalives every 20 s when idle.
    t = net.a.get_timer()
    assert t is not None and t == pytest.approx(20.0)
    net.a.handle_timer(20.0)
    (ka,) = net.a.datagrams_to_send(20.0)
    assert ka.keepalive and ka.data == b"\xff" and ka.path.local.port == 4500
    assert not _of([e for e in [net.a.next_event()] if e], PacketDropped)


def test_child_ts_unacceptable_keeps_ike_sa() -> None:
    net = make_pair(init_local_ts="10.99.0.0/24")
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert _of(net.events_a, IkeSaEstablished) and _of(net.events_b, IkeSaEstablished)
    assert not _of(net.events_a, ChildSaInstalled) and not _of(net.events_b, ChildSaInstalled)
    assert "TS_UNACCEPTABLE" in _of(net.events_a, ExchangeFailed)[0].reason
    assert _of(net.events_b, ExchangeFailed)[0].reason == "TS_UNACCEPTABLE"
    assert [s.state for s in net.a.status()] == ["ESTABLISHED"]
    assert [s.children for s in net.b.status()] == [()]


def test_initiator_floats_to_4500_without_mobike_only_on_nat() -> None:
    net = make_pair(initiator_extra="mobike = no", responder_extra="mobike = no")
    net.a.initiate("home", None, 0.0)
    net.pump()
    (ia,) = _of(net.events_a, IkeSaEstablished)
    assert ia.path.local.port == ia.path.remote.port == 500


def test_encap_fakes_nat_so_both_ends_encapsulate() -> None:
    net = make_pair(initiator_extra="encap = yes")
    net.a.initiate("home", None, 0.0)
    net.pump()
    (ib,) = _of(net.events_b, IkeSaEstablished)
    assert ib.nat_remote and not ib.nat_local  # bob believes alice is behind a NAT
    assert _of(net.events_a, ChildSaInstalled)[0].encap
    assert _of(net.events_b, ChildSaInstalled)[0].encap


def test_unencodable_config_identity_fails_cleanly_in_both_roles() -> None:
    # A DN identity passes the config loader but the native core cannot encode it.
    ca, cb = config_pair()
    dn_local = replace(cb.connections[0].local[0], id="C=CH, O=example, CN=bob")
    cb = replace(cb, connections=(replace(cb.connections[0], local=(dn_local,)),))
    net = Net(Engine(ca, seeded(11), lambda r: ALICE), Engine(cb, seeded(12), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()  # must not raise
    assert "authentication_failed" in [e.reason for e in _of(net.events_a, IkeSaDeleted)]
    assert net.b.status() == []
    ca = replace(ca, connections=(replace(ca.connections[0], local=(dn_local,)),))
    net = Net(Engine(ca, seeded(13), lambda r: ALICE), Engine(cb, seeded(14), lambda r: BOB))
    net.a.initiate("home", None, 0.0)
    net.pump()
    assert _of(net.events_a, IkeSaDeleted) and net.a.status() == []


@pytest.mark.parametrize("proposal", ["aes128-sha256-x25519", "aes128-sha256-modp3072"])
def test_ke_of_the_wrong_length_is_dropped_before_any_key_generation(
        proposal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobike_vici.core.exchanges import ike_init
    from mobike_vici.ikev2.message import encode_message

    net = make_pair(proposal=proposal)
    net.a.initiate("home", None, 0.0)
    (request,) = net.a.datagrams_to_send(0.0)
    msg = decode_message(request.data)
    payloads = [replace(p, data=p.data + b"\x01") if isinstance(p, KE) else p
                for p in msg.payloads]
    bad = encode_message(msg.header, payloads)
    generated: list[object] = []
    real = ike_init.dh_generate

    def spy(*args: Any) -> Any:
        generated.append(args)
        return real(*args)

    monkeypatch.setattr(ike_init, "dh_generate", spy)
    seen = Path(request.path.remote, request.path.local)
    net.b.receive_datagram(bad, seen, 0.0)
    net.collect()
    assert generated == []  # no key generation for a KE that cannot be valid
    assert [e.reason for e in of_type(net.events_b, PacketDropped)] == ["invalid DH public value"]
    assert net.b.datagrams_to_send(0.0) == [] and net.b.status() == []
    net.b.receive_datagram(request.data, seen, 0.0)  # the intact one still works
    assert len(generated) == 1 and len(net.b.status()) == 1
