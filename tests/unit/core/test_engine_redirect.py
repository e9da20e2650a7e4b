"""RFC 5685 between native engines in memory: a client, and two gateways of one pool."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mobike_vici.config import load_string
from mobike_vici.core.engine import Datagram, Engine
from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ClientRedirected,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaMoved,
    IkeSaRedirected,
    PacketDropped,
    RedirectRefused,
    RedirectResolving,
)
from mobike_vici.core.redirects import (
    GatewayIdentityError,
    RedirectState,
    decode_gateway,
    encode_gateway,
)
from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag, NotifyType
from mobike_vici.ikev2.message import Header, decode_message, encode_message
from mobike_vici.ikev2.payloads import Nonce, Notify, find_notify, find_payload
from mobike_vici.types import Endpoint, IPAddress, Path

from .harness import of_type, seeded

CLIENT = ipaddress.ip_address("192.0.2.1")
CLIENT2 = ipaddress.ip_address("198.51.100.1")
GW_B = ipaddress.ip_address("203.0.113.2")
GW_C = ipaddress.ip_address("203.0.113.3")


def client_conf(remote_id: str = "gw.example.com") -> str:
    return f"""
connections {{ home {{ remote_addrs = {GW_B}
    proposals = aes128-sha256-x25519
    local {{ auth = psk
        id = alice@example.com }}
    remote {{ auth = psk
        id = {remote_id} }}
    children {{ net {{ local_ts = 10.1.0.0/24
        remote_ts = 10.2.0.0/24
        esp_proposals = aes128-sha256 }}
      web {{ local_ts = 10.1.1.0/24
        remote_ts = 10.2.1.0/24
        esp_proposals = aes128-sha256 }} }} }} }}
secrets {{ ike-a {{ id-a = alice@example.com
    id-b = gw.example.com
    id-c = other.example.com
    secret = "pool-test-psk" }} }}
"""


def gateway_conf(addr: IPAddress, gw_id: str = "gw.example.com") -> str:
    return f"""
connections {{ rw {{ local_addrs = {addr}
    proposals = aes128-sha256-x25519
    local {{ auth = psk
        id = {gw_id} }}
    remote {{ auth = psk
        id = alice@example.com }}
    children {{ net {{ local_ts = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = aes128-sha256 }}
      web {{ local_ts = 10.2.1.0/24
        remote_ts = 10.1.1.0/24
        esp_proposals = aes128-sha256 }} }} }} }}
secrets {{ ike-a {{ id-a = alice@example.com
    id-b = {gw_id}
    secret = "pool-test-psk" }} }}
"""


@dataclass
class Mesh:
    """Engines by address; every datagram goes to the engine owning its destination."""

    engines: dict[str, Engine]
    owners: dict[IPAddress, str]
    now: float = 0.0
    events: dict[str, list[Event]] = field(default_factory=dict)
    sent: list[tuple[int, Datagram]] = field(default_factory=list)
    """(round, datagram) for every datagram sent."""
    seen: list[tuple[int, str, Event]] = field(default_factory=list)
    rounds: int = 0
    tamper: Callable[[Datagram], Datagram | None] = lambda d: d

    def pump(self, limit: int = 80) -> None:
        for _ in range(limit):
            self.rounds += 1
            moved = False
            for engine in list(self.engines.values()):
                for d in engine.datagrams_to_send(self.now):
                    moved = True
                    self.sent.append((self.rounds, d))
                    out = self.tamper(d)
                    if out is None or d.keepalive:
                        continue
                    owner = self.owners.get(out.path.remote.addr)
                    if owner is not None:
                        self.engines[owner].receive_datagram(
                            out.data, Path(out.path.remote, out.path.local), self.now)
            for name, engine in self.engines.items():
                while (ev := engine.next_event()) is not None:
                    self.events.setdefault(name, []).append(ev)
                    self.seen.append((self.rounds, name, ev))
            if not moved:
                return

    def of(self, name: str, cls: type[Event]) -> list[Event]:
        return of_type(self.events.get(name, []), cls)  # type: ignore[arg-type]


def mesh(client_remote_id: str = "gw.example.com", c_id: str = "gw.example.com") -> Mesh:
    engines = {
        "a": Engine(load_string(client_conf(client_remote_id)), seeded(1),
                    lambda r: CLIENT if r.version == 4 else None),
        "b": Engine(load_string(gateway_conf(GW_B)), seeded(2), lambda r: GW_B),
        "c": Engine(load_string(gateway_conf(GW_C, c_id)), seeded(3), lambda r: GW_C),
    }
    return Mesh(engines, {CLIENT: "a", CLIENT2: "a", GW_B: "b", GW_C: "c"})


def established(net: Mesh) -> Mesh:
    net.engines["a"].initiate("home", "net", net.now)
    net.pump()
    net.engines["a"].initiate("home", "web", net.now)  # on the same IKE_SA
    net.pump()
    assert [s.state for s in net.engines["b"].status()] == ["ESTABLISHED"]
    return net


def test_gateway_identity_round_trip() -> None:
    for addr in (GW_B, ipaddress.ip_address("2001:db8::7")):
        gw = decode_gateway(encode_gateway(addr, b"n" * 16))
        assert (gw.address, gw.nonce) == (addr, b"n" * 16)
    assert decode_gateway(bytes((3, 4)) + b"gw.x").fqdn == "gw.x"
    for bad in (b"", b"\x01", b"\x01\x05" + bytes(4), b"\x02\x04" + bytes(4), b"\x09\x00"):
        with pytest.raises(GatewayIdentityError):
            decode_gateway(bad)


def test_loop_limit_counts_within_the_period() -> None:
    state = RedirectState()
    for t in range(5):
        assert state.allows(float(t))
        state.history = state.followed(float(t))
    assert not state.allows(10.0)
    assert state.allows(301.0)  # the first ones are older than 300 s by then


def test_init_redirect_over_the_limit_lands_at_the_other_gateway() -> None:
    net = mesh()
    asked: list[int] = []

    def policy(path: Path, ike_sas: int) -> IPAddress | None:
        asked.append(ike_sas)
        return GW_C
    net.engines["b"].set_redirect_policy(policy)
    net.engines["a"].initiate("home", "net", 0.0)
    net.pump()
    assert asked == [0]
    (sent,) = net.of("b", ClientRedirected)
    assert sent.gateway == GW_C  # type: ignore[attr-defined]
    (followed,) = net.of("a", IkeSaRedirected)
    assert (followed.gateway, followed.from_gateway, followed.phase) == (  # type: ignore[attr-defined]
        GW_C, GW_B, "ike_sa_init")
    (up,) = net.of("a", IkeSaEstablished)
    assert up.path.remote.addr == GW_C  # type: ignore[attr-defined]
    assert net.engines["b"].status() == []
    assert [s.state for s in net.engines["c"].status()] == ["ESTABLISHED"]
    # The second IKE_SA_INIT says where the client came from.
    inits = [decode_message(d.data) for _, d in net.sent
             if d.path.remote.addr == GW_C and d.data[18] == ExchangeType.IKE_SA_INIT]
    came = find_notify(inits[0].payloads, NotifyType.REDIRECTED_FROM)
    assert came is not None and decode_gateway(came.data).address == GW_B


def test_init_redirect_without_our_nonce_is_dropped() -> None:
    """Someone who never saw our request cannot send us elsewhere: the forged answer is
    dropped and the real gateway's answer still sets the IKE_SA up."""
    net = mesh()

    def forge(d: Datagram) -> Datagram | None:
        if d.path.remote.addr != GW_B or d.data[18] != ExchangeType.IKE_SA_INIT:
            return d
        msg = decode_message(d.data)
        if msg.header.flags & HeaderFlag.RESPONSE:
            return d
        header = Header(msg.header.spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT,
                        HeaderFlag.RESPONSE, 0)
        forged = encode_message(header, [Notify(NotifyType.REDIRECT,
                                                encode_gateway(GW_C, b"x" * 32))])
        net.engines["a"].receive_datagram(forged, Path(d.path.local, d.path.remote), net.now)
        return d
    net.tamper = forge
    net.engines["a"].initiate("home", "net", 0.0)
    net.pump()
    assert any("nonce" in e.reason for e in net.of("a", PacketDropped))  # type: ignore[attr-defined]
    assert net.of("a", IkeSaRedirected) == []
    (up,) = net.of("a", IkeSaEstablished)
    assert up.path.remote.addr == GW_B  # type: ignore[attr-defined]


def test_gateway_redirects_only_clients_that_support_it() -> None:
    net = mesh()
    net.engines["b"].set_redirect_policy(lambda path, n: GW_C)
    sent: list[bytes] = []

    def strip(d: Datagram) -> Datagram | None:
        if d.data[18] == ExchangeType.IKE_SA_INIT and d.path.remote.addr == GW_B:
            msg = decode_message(d.data)
            kept = [p for p in msg.payloads if not (
                isinstance(p, Notify) and p.type == NotifyType.REDIRECT_SUPPORTED)]
            data = encode_message(msg.header, kept)
            sent.append(data)
            return Datagram(data, d.path)
        return d
    net.tamper = strip
    net.engines["a"].initiate("home", "net", 0.0)
    net.pump()
    assert sent and net.of("b", ClientRedirected) == []
    answer = next(d for _, d in net.sent if d.path.local.addr == GW_B)
    payloads = decode_message(answer.data).payloads
    assert find_notify(payloads, NotifyType.REDIRECT) is None
    assert find_payload(payloads, Nonce) is not None  # served, not redirected


def test_established_redirect_is_make_before_break() -> None:
    net = established(mesh())
    old = net.engines["a"].status()[0].ike_spi
    with pytest.raises(ValueError, match="client"):
        net.engines["a"].redirect(old, GW_C, net.now)  # only a gateway redirects
    net.now = 1.0
    net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, GW_C, net.now)
    net.pump()
    (moved,) = net.of("a", IkeSaRedirected)
    assert (moved.ike_spi, moved.gateway, moved.phase) == (old, GW_C, "established")  # type: ignore[attr-defined]
    status = net.engines["a"].status()
    assert [(s.path.remote.addr, s.state) for s in status] == [(GW_C, "ESTABLISHED")]
    assert sorted(c.name for c in status[0].children) == ["net", "web"]
    assert net.engines["b"].status() == []
    # Both CHILD_SAs at the new gateway were installed before the old ones went.
    order = [(type(e).__name__, getattr(e, "ike_spi", "")) for _, n, e in net.seen
             if n == "a" and isinstance(e, ChildSaInstalled | ChildSaDeleted)]
    new_installed = [i for i, (k, spi) in enumerate(order)
                     if k == "ChildSaInstalled" and spi != old]
    old_deleted = [i for i, (k, spi) in enumerate(order)
                   if k == "ChildSaDeleted" and spi == old]
    assert len(new_installed) == 2 and len(old_deleted) == 2
    assert max(new_installed) < min(old_deleted)
    gone = [e for e in net.of("a", IkeSaDeleted) if e.ike_spi == old]  # type: ignore[attr-defined]
    assert [e.reason for e in gone] == ["redirected"]  # type: ignore[attr-defined]


def test_failed_new_ike_sa_keeps_the_old_one() -> None:
    net = established(mesh())
    old = net.engines["a"].status()[0].ike_spi
    del net.owners[GW_C]  # the target never answers
    net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, GW_C, net.now)
    net.pump()
    for t in range(1, 200, 5):
        net.now = float(t)
        for engine in net.engines.values():
            engine.handle_timer(net.now)
        net.pump()
    (refused,) = net.of("a", RedirectRefused)
    assert refused.reason == "new_ike_sa_failed"  # type: ignore[attr-defined]
    assert [(s.ike_spi, s.state) for s in net.engines["a"].status()] == [
        (old, "ESTABLISHED")]


def test_new_gateway_with_another_identity_is_refused() -> None:
    """remote id %any accepts anyone: the new gateway must be who the old one was."""
    net = established(mesh(client_remote_id="%any", c_id="other.example.com"))
    old = net.engines["a"].status()[0].ike_spi
    net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, GW_C, net.now)
    net.pump()
    (refused,) = net.of("a", RedirectRefused)
    assert refused.reason == "identity_changed"  # type: ignore[attr-defined]
    assert [(s.ike_spi, s.state) for s in net.engines["a"].status()] == [
        (old, "ESTABLISHED")]


def test_redirect_loop_is_refused_after_five() -> None:
    net = established(mesh())
    targets = [GW_C, GW_B] * 3
    for hop, target in enumerate(targets, start=1):
        net.now = float(hop)
        here = "b" if target == GW_C else "c"
        net.engines[here].redirect(net.engines[here].status()[0].ike_spi, target, net.now)
        net.pump()
    assert len(net.of("a", IkeSaRedirected)) == 5
    (refused,) = net.of("a", RedirectRefused)
    assert refused.reason == "loop_detected"  # type: ignore[attr-defined]
    assert len(net.engines["a"].status()) == 1


def test_redirect_during_a_move_waits_for_it() -> None:
    net = established(mesh())
    a, b = net.engines["a"], net.engines["b"]
    spi = a.status()[0].ike_spi
    path = a.status()[0].path
    new_path = Path(Endpoint(CLIENT2, path.local.port), path.remote)
    net.now = 1.0
    a.move(spi, new_path, net.now)
    b.redirect(b.status()[0].ike_spi, GW_C, net.now)
    net.pump()
    moved_round = min(r for r, n, e in net.seen if n == "a" and isinstance(e, IkeSaMoved))
    first_init = min(r for r, d in net.sent if d.path.remote.addr == GW_C)
    assert first_init > moved_round
    assert [s.path.remote.addr for s in a.status()] == [GW_C]
    assert not net.of("a", ExchangeFailed)


def test_init_redirect_echoes_the_request_nonce() -> None:
    net = mesh()
    net.engines["b"].set_redirect_policy(lambda path, n: GW_C)
    net.engines["a"].initiate("home", "net", 0.0)
    net.pump()
    first = next(d for _, d in net.sent if d.path.remote.addr == GW_B)
    answer = next(d for _, d in net.sent if d.path.local.addr == GW_B)
    nonce = find_payload(decode_message(first.data).payloads, Nonce)
    notify = find_notify(decode_message(answer.data).payloads, NotifyType.REDIRECT)
    assert nonce is not None and notify is not None
    assert decode_gateway(notify.data).nonce == nonce.data


def _redirect_to_name(net: Mesh, name: str) -> tuple[str, RedirectResolving]:
    old = net.engines["a"].status()[0].ike_spi
    net.now = 1.0
    net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, name, net.now)
    net.pump()
    (asked,) = net.of("a", RedirectResolving)
    assert (asked.ike_spi, asked.gateway) == (old, name)  # type: ignore[attr-defined]
    assert not net.of("a", RedirectRefused)
    return old, asked  # type: ignore[return-value]


def test_redirect_to_an_fqdn_is_followed_once_the_daemon_resolves_it() -> None:
    net = established(mesh())
    old, _ = _redirect_to_name(net, "gw-c.example.com")
    assert [s.path.remote.addr for s in net.engines["a"].status()] == [GW_B]  # waits
    v6 = ipaddress.ip_address("2001:db8::3")
    net.now = 1.5  # the answer: an address of the path's family is preferred
    net.engines["a"].redirect_resolved(old, "gw-c.example.com", [v6, GW_C], net.now)
    net.pump()
    (moved,) = net.of("a", IkeSaRedirected)
    assert (moved.ike_spi, moved.gateway) == (old, GW_C)  # type: ignore[attr-defined]
    assert [(s.path.remote.addr, s.state) for s in net.engines["a"].status()] == [
        (GW_C, "ESTABLISHED")]
    assert moved.outage == pytest.approx(0.5)  # type: ignore[attr-defined]


def test_an_fqdn_that_does_not_resolve_is_refused_and_the_old_sa_stays() -> None:
    net = established(mesh())
    old, _ = _redirect_to_name(net, "nowhere.example.com")
    loopback = ipaddress.ip_address("127.0.0.1")  # not followable, like no answer
    v6 = ipaddress.ip_address("2001:db8::3")  # the client has no IPv6 source address
    net.engines["a"].redirect_resolved(old, "nowhere.example.com", [loopback, v6], net.now)
    net.pump()
    (refused,) = net.of("a", RedirectRefused)
    assert (refused.gateway, refused.reason) == ("nowhere.example.com", "unresolved")  # type: ignore[attr-defined]
    assert [(s.ike_spi, s.state) for s in net.engines["a"].status()] == [(old, "ESTABLISHED")]
    # A late answer for the same name changes nothing; a new REDIRECT is taken again.
    net.engines["a"].redirect_resolved(old, "nowhere.example.com", [GW_C], net.now)
    net.pump()
    assert not net.of("a", IkeSaRedirected)
    net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, GW_C, net.now)
    net.pump()
    assert [s.path.remote.addr for s in net.engines["a"].status()] == [GW_C]


def test_an_fqdn_too_long_for_the_notify_is_refused_at_the_gateway() -> None:
    net = established(mesh())
    with pytest.raises(ValueError, match="FQDN"):
        net.engines["b"].redirect(net.engines["b"].status()[0].ike_spi, "x" * 256, net.now)
