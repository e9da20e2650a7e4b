"""Which authenticated requests move an SA to the path they arrived on (RFC 7296 §2.23,
RFC 4555 §3.3 and §3.5): an on-path attacker can race a copy of any request from a
spoofed source, so integrity alone never moves an SA."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from mobike_vici.core.engine import Datagram
from mobike_vici.core.events import ChildSaInstalled, ChildSaUpdated, PeerMoved
from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag
from mobike_vici.ikev2.message import decode_header
from mobike_vici.types import Endpoint, Path

from .harness import ALICE, BOB, Net, make_pair, of_type

EVE = ipaddress.ip_address("203.0.113.66")


def _request_of(d: Datagram, exchange: ExchangeType) -> bool:
    if d.keepalive:
        return False
    header = decode_header(d.data)  # the engine's datagrams carry no non-ESP marker
    return header.exchange == exchange and not header.flags & HeaderFlag.RESPONSE


def _race_copy(net: Net, spoofed: Endpoint, exchange: ExchangeType,
               then: Callable[[], None] | None = None) -> list[Datagram]:
    """Deliver to bob, before the real one, a copy of alice's next ``exchange`` request
    from ``spoofed`` (bob's answers to it are lost); returns the copies sent."""
    copied: list[Datagram] = []

    def drop(d: Datagram) -> bool:
        if not copied and d.path.local.addr == ALICE and _request_of(d, exchange):
            copied.append(d)
            net.b.receive_datagram(d.data, Path(Endpoint(BOB, 4500), spoofed), net.now)
        return False

    net.drop = drop
    if then is not None:
        then()
    net.pump()
    net.drop = lambda d: False
    return copied


def _established(net: Net) -> None:
    net.a.initiate("home", None, net.now)
    net.pump()
    assert net.a.status()[0].state == net.b.status()[0].state == "ESTABLISHED"


def _rekey(net: Net) -> Callable[[], None]:
    uid = of_type(net.events_a, ChildSaInstalled)[0].unique_id
    return lambda: net.a.rekey_child(uid, net.now)


def test_spoofed_copy_on_4500_does_not_move_an_sa_on_500() -> None:
    """Without MOBIKE and without NAT the SA stays on 500; a copy of an authenticated
    request raced from a spoofed source on 4500 used to switch it there."""
    net = make_pair(initiator_extra="mobike = no", responder_extra="mobike = no")
    _established(net)
    before = net.b.status()[0].path
    assert before == Path(Endpoint(BOB, 500), Endpoint(ALICE, 500))
    assert _race_copy(net, Endpoint(EVE, 4500), ExchangeType.CREATE_CHILD_SA, _rekey(net))
    assert net.b.status()[0].path == before
    assert not of_type(net.events_b, PeerMoved)
    assert not of_type(net.events_b, ChildSaUpdated)
    # The real request went through: the rekeyed CHILD_SA is on the old path.
    assert [e.path for e in of_type(net.events_b, ChildSaInstalled)] == [before, before]


def test_spoofed_copy_does_not_move_a_mobike_sa() -> None:
    """RFC 4555 §3.5: with MOBIKE only UPDATE_SA_ADDRESSES moves an SA, NAT or not."""
    net = make_pair(initiator_extra="encap = yes")
    _established(net)
    before = net.b.status()[0].path
    assert before.local.port == 4500
    assert _race_copy(net, Endpoint(EVE, 4500), ExchangeType.CREATE_CHILD_SA, _rekey(net))
    assert net.b.status()[0].path == before
    assert not of_type(net.events_b, ChildSaUpdated)


def test_spoofed_ike_auth_copy_does_not_take_the_float() -> None:
    """The float to 4500 in IKE_AUTH (RFC 4555 §3.3) changes ports, not the peer's address
    (unless a NAT sits before the peer): a raced copy from elsewhere is not followed."""
    net = make_pair()
    copies = _race_copy(net, Endpoint(EVE, 4500), ExchangeType.IKE_AUTH,
                        lambda: net.a.initiate("home", None, net.now))
    assert copies
    (sa,) = net.b.status()
    assert sa.state == "ESTABLISHED"
    assert all(e.path.remote.addr == ALICE for e in of_type(net.events_b, ChildSaInstalled))
    # Alice's own IKE_AUTH came second (a retransmission to bob): that float is followed,
    # CHILD_SA included, so both ends agree on 4500.
    assert sa.path == Path(Endpoint(BOB, 4500), Endpoint(ALICE, 4500))
    assert [e.path for e in of_type(net.events_b, ChildSaUpdated)] == [sa.path]
    assert net.a.status()[0].path == Path(Endpoint(ALICE, 4500), Endpoint(BOB, 4500))


def test_the_float_to_4500_is_followed() -> None:
    net = make_pair()
    _established(net)
    assert net.b.status()[0].path == Path(Endpoint(BOB, 4500), Endpoint(ALICE, 4500))
    (child,) = of_type(net.events_b, ChildSaInstalled)
    assert child.path == net.b.status()[0].path


def test_nat_rebinding_is_followed_without_mobike() -> None:
    """RFC 7296 §2.23: a NAT before the peer (here faked by ``encap = yes``) rebinds; the
    responder follows the latest authenticated request, CHILD_SAs included."""
    net = make_pair(initiator_extra="mobike = no\n    encap = yes", responder_extra="mobike = no")
    _established(net)
    old = net.b.status()[0].path
    assert old.remote == Endpoint(ALICE, 4500)
    rebound = Endpoint(ALICE, 40001)
    net.nat = {Endpoint(ALICE, 4500): rebound}
    _rekey(net)()
    net.pump()
    new = Path(old.local, rebound)
    assert net.b.status()[0].path == new
    (moved,) = of_type(net.events_b, PeerMoved)
    assert moved.old_path == old and moved.new_path == new
    assert [e.path for e in of_type(net.events_b, ChildSaUpdated)] == [new]


def test_no_nat_no_follow_without_mobike() -> None:
    """Without a NAT before the peer, a request from another address is answered there
    but never followed."""
    net = make_pair(initiator_extra="mobike = no", responder_extra="mobike = no")
    _established(net)
    old = net.b.status()[0].path
    net.nat = {Endpoint(ALICE, 500): Endpoint(ALICE, 40001)}
    _rekey(net)()
    net.pump()
    assert net.b.status()[0].path == old
    assert not of_type(net.events_b, PeerMoved)
