"""The daemon's ESP adapter without a TUN: events drive the SA database, lifetimes and
replay windows come from the config, counters ride on child_sa_deleted, moves follow
the core's ChildSaUpdated events alone, and each SA is sent the way it was negotiated."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from mobike_vici.config.model import ChildConfig, Config, ConnectionConfig
from mobike_vici.core.engine import ChildStatus, IkeStatus
from mobike_vici.core.events import ChildSaDeleted, ChildSaUpdated, IkeSaMoved, PeerMoved
from mobike_vici.daemon.esp_io import UserspaceEsp
from mobike_vici.esp.dataplane import Limits, RequestKind
from mobike_vici.eventlog import EventLog
from tests.unit.daemon.fakes import RecordingLog

from .support import iv_source
from .test_dataplane import A_INNER, B_INNER, installed, path, udp4

CONFIG = Config(connections=(ConnectionConfig(name="c", children=(
    ChildConfig(name="net", rekey_bytes=1000, life_bytes=5000, rekey_packets=7,
                replay_window=64),)),))


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendmsg(self, buffers: list[bytes], ancillary: object, flags: int,
                target: Any) -> int:
        self.sent.append((buffers[0], target))
        return len(buffers[0])


class FakeHost:
    natt_port = 4500

    def __init__(self) -> None:
        self.natt = FakeSocket()
        self.requests: list[tuple[RequestKind, int]] = []
        self.records = RecordingLog()
        self.log: EventLog = self.records

    def natt_socket(self, family: socket.AddressFamily) -> Any:
        return self.natt if family == socket.AF_INET else None

    def child_request(self, kind: RequestKind, unique_id: int) -> None:
        self.requests.append((kind, unique_id))


def adapter() -> tuple[UserspaceEsp, FakeHost, FakeSocket]:
    esp = UserspaceEsp(CONFIG, random_bytes=iv_source(1), manage_routes=False,
                       clock=lambda: 100.0)
    host, raw = FakeHost(), FakeSocket()
    esp._host = host  # what open() does, minus the TUN and the real sockets
    esp._raw[socket.AF_INET] = raw  # type: ignore[assignment]
    return esp, host, raw


def test_install_takes_limits_and_replay_window_from_the_child_config() -> None:
    esp, _, _ = adapter()
    assert esp.on_event(installed(initiator=True)) == {}
    entry = esp.plane.get(1)
    assert entry is not None
    assert entry.limits == Limits(rekey_bytes=1000, life_bytes=5000, rekey_packets=7)
    assert entry.pair.inbound.replay is not None and entry.pair.inbound.replay.size == 64


def test_deleted_event_gets_the_counters_and_the_sa_is_gone() -> None:
    esp, _, _ = adapter()
    esp.on_event(installed(initiator=True))
    assert esp.plane.protect(udp4(A_INNER, B_INNER)) is not None
    extra = esp.on_event(ChildSaDeleted(conn="c", ike_spi="1_2", child="net", unique_id=1,
                                        spi_in=0x1000, spi_out=0x2000, reason="deleted_locally"))
    assert extra["packets_out"] == 1 and extra["bytes_out"] == 78
    assert extra["replay_failures"] == 0 and "integrity_failures" in extra
    assert esp.plane.get(1) is None and esp.counters() == {}


def test_encapsulated_sa_goes_out_on_the_natt_socket_plain_on_the_raw_one() -> None:
    esp, host, raw = adapter()
    esp.on_event(installed(initiator=True))
    done = esp.plane.protect(udp4(A_INNER, B_INNER))
    assert done is not None
    esp._sender(done[0])(done[1])
    assert host.natt.sent == [(done[1], ("192.0.2.2", 4500))]
    esp.plane.move_child(1, path("192.0.2.1", "192.0.2.9", 500), encap=False)
    again = esp.plane.protect(udp4(A_INNER, B_INNER))
    assert again is not None
    esp._sender(again[0])(again[1])
    assert raw.sent == [(again[1], ("192.0.2.9", 0))]


def test_child_sa_updated_moves_the_child_in_place() -> None:
    esp, _, _ = adapter()
    esp.on_event(installed(initiator=True))
    before = esp.plane.get(1)
    assert before is not None
    assert esp.plane.protect(udp4(A_INNER, B_INNER)) is not None
    seq = before.pair.outbound.seq
    moved = path("198.51.100.1", "192.0.2.2")
    esp.on_event(ChildSaUpdated(conn="c", ike_spi="1_2", child="net", unique_id=1,
                                spi_in=0x1000, spi_out=0x2000, path=moved, encap=False))
    entry = esp.plane.get(1)
    assert entry is before and entry.path == moved and not entry.encap
    assert entry.pair.outbound.seq == seq


def test_ike_sa_events_alone_never_move_a_child() -> None:
    """An IKE_SA that follows the peer at once (RFC 4555 §3.5) leaves its CHILD_SAs where
    they are until the core says they moved (after return routability, §3.7)."""
    esp, _, _ = adapter()
    event = installed(initiator=True)
    esp.on_event(event)
    elsewhere = path("203.0.113.66", "192.0.2.2")
    esp.on_event(PeerMoved(conn="c", ike_spi="1_2", old_path=event.path, new_path=elsewhere))
    esp.on_event(IkeSaMoved(conn="c", ike_spi="1_2", old_path=event.path,
                            new_path=elsewhere, duration=0.1))
    entry = esp.plane.get(1)
    assert entry is not None and entry.path == event.path


def test_soft_limit_reaches_the_host_as_a_rekey_request() -> None:
    esp, host, _ = adapter()
    esp.on_event(installed(initiator=True))
    for _ in range(7):
        assert esp.plane.protect(udp4(A_INNER, B_INNER)) is not None
    esp._requests()
    assert host.requests == [(RequestKind.REKEY, 1)]


def test_status_carries_the_counters_per_child() -> None:
    from mobike_vici.daemon.status import format_status, status_json

    esp, _, _ = adapter()
    esp.on_event(installed(initiator=True))
    assert esp.plane.protect(udp4(A_INNER, B_INNER)) is not None
    child = ChildStatus(name="net", unique_id=1, state="INSTALLED", spi_in=0x1000,
                        spi_out=0x2000, local_ts=(), remote_ts=(), proposal="x")
    other = dataclasses.replace(child, unique_id=2)
    ike = IkeStatus(conn="c", ike_spi="1_2", state="ESTABLISHED", initiator=True,
                    path=path("192.0.2.1", "192.0.2.2"), local_id="", remote_id="",
                    proposal="", virtual_ips=(), children=(child, other))
    answer = status_json([ike], backend="native", counters=esp.counters())
    children = answer["ike_sas"][0]["children"]  # type: ignore[index]
    assert children[0]["counters"]["packets_out"] == 1
    assert "counters" not in children[1]  # no data-plane SA for it
    assert "out 78 bytes (1 packets)" in format_status(answer)


def test_inbound_drops_are_reported_as_one_event_per_reason() -> None:
    esp, host, _ = adapter()
    esp.on_event(installed(initiator=True))
    for _ in range(3):
        esp.receive_esp(b"\x00\x00\x77\x77" + bytes(40), 100.0)
    esp.report_drops()
    esp.report_drops()  # nothing new: nothing emitted
    assert host.records.named("packet_dropped") == [
        {"protocol": "esp", "reason": "unknown_spi", "count": 3}]


def test_child_sas_behind_one_selector_share_one_route(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's CHILD_SAs towards one remote selector: one route, one source lookup
    (a netlink dump), not one per SA; the route goes with the last of them."""
    from mobike_vici.net import tun_routes

    calls: list[str] = []
    monkeypatch.setattr(tun_routes, "local_addresses", lambda: calls.append("dump") or [])
    monkeypatch.setattr(tun_routes, "replace_route",
                        lambda *args: calls.append(f"add {args[0]}"))
    monkeypatch.setattr(tun_routes, "del_route", lambda *args: calls.append(f"del {args[0]}"))
    esp, _, _ = adapter()
    esp.manage_routes = True
    for uid in range(1, 51):
        esp.on_event(installed(initiator=True, unique_id=uid, spi_i=0x1000 + uid,
                               spi_r=0x2000 + uid))
    assert calls == ["dump", "add 10.88.0.0/24"]
    for uid in range(1, 51):
        esp.on_event(ChildSaDeleted(conn="c", ike_spi="1_2", child="net", unique_id=uid,
                                    spi_in=0x1000 + uid, spi_out=0x2000 + uid,
                                    reason="deleted_locally"))
    assert calls == ["dump", "add 10.88.0.0/24", "del 10.88.0.0/24"]


def test_a_redirected_ike_sa_brings_the_route_to_its_own_virtual_ip(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5685: the new IKE_SA at the new gateway has another virtual IP; the shared route
    takes it as source when that CHILD_SA comes, so deleting the old IKE_SA (and its
    address, which takes the kernel's route with it) leaves traffic flowing."""
    import ipaddress

    from mobike_vici.core.events import IkeSaEstablished
    from mobike_vici.net import tun_routes
    from mobike_vici.types import Endpoint, Path

    calls: list[str] = []
    monkeypatch.setattr(tun_routes, "local_addresses", lambda: [])
    monkeypatch.setattr(tun_routes, "add_address", lambda *args: None)
    monkeypatch.setattr(tun_routes, "del_address", lambda *args: None)
    monkeypatch.setattr(tun_routes, "replace_route",
                        lambda *args: calls.append(f"add {args[0]} src {args[2]}"))
    monkeypatch.setattr(tun_routes, "del_route", lambda *args: calls.append(f"del {args[0]}"))
    esp, _, _ = adapter()
    esp.manage_routes = True
    ends = Path(Endpoint(ipaddress.ip_address("10.30.1.2"), 4500),
                Endpoint(ipaddress.ip_address("10.20.1.2"), 4500))
    for uid, (spi, vip) in enumerate((("1_2", "10.99.1.2"), ("3_4", "10.99.2.2")), start=1):
        esp.on_event(IkeSaEstablished(conn="c", ike_spi=spi, path=ends, initiator=True,
                                      local_id="a", remote_id="b", proposal="x",
                                      virtual_ips=(ipaddress.ip_address(vip),)))
        child = dataclasses.replace(installed(initiator=True, unique_id=uid,
                                              spi_i=0x1000 + uid, spi_r=0x2000 + uid),
                                    ike_spi=spi, local_ts=(f"{vip}/32",))
        esp.on_event(child)
    assert calls == ["add 10.88.0.0/24 src 10.99.1.2", "add 10.88.0.0/24 src 10.99.2.2"]
