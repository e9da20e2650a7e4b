"""The data plane's SA database: selector lookup, inbound checks, counters, moves,
lifetimes and the switch to a rekeyed SA (no I/O: two DataPlanes talk to each other)."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest

from mobike_vici.core.events import ChildSaInstalled
from mobike_vici.esp.dataplane import (
    DataPlane,
    Limits,
    Request,
    RequestKind,
)
from mobike_vici.ikev2.constants import EncrId, IntegId
from mobike_vici.ikev2.crypto import EspSuite
from mobike_vici.types import Endpoint, Path

from .support import iv_source, make_keys

GCM = EspSuite(EncrId.AES_GCM_16, 128, None)
CBC = EspSuite(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
A, B = "192.0.2.1", "192.0.2.2"
A_INNER, B_NET, B_INNER = "10.99.0.1", "10.88.0.0/24", "10.88.0.1"


def path(local: str, remote: str, port: int = 4500) -> Path:
    return Path(Endpoint(ipaddress.ip_address(local), port),
                Endpoint(ipaddress.ip_address(remote), port))


def installed(*, initiator: bool, unique_id: int = 1, spi_i: int = 0x1000, spi_r: int = 0x2000,
              suite: EspSuite = GCM, rekey_of: int | None = None, seed: int = 1,
              rekey_initiator: bool | None = None) -> ChildSaInstalled:
    """Side A (the IKE initiator, 10.99.0.1) or side B (10.88.0.0/24) of one CHILD_SA."""
    local_ts, remote_ts = ((f"{A_INNER}/32",), (B_NET,)) if initiator else \
        ((B_NET,), (f"{A_INNER}/32",))
    exchange_initiator = initiator if rekey_initiator is None else rekey_initiator
    return ChildSaInstalled(
        conn="c", ike_spi="1_2", child="net", unique_id=unique_id,
        spi_in=spi_i if initiator else spi_r, spi_out=spi_r if initiator else spi_i,
        path=path(A, B) if initiator else path(B, A), encap=True,
        local_ts=local_ts, remote_ts=remote_ts, suite=suite, proposal="x",
        keys=make_keys(suite, seed), initiator=exchange_initiator, rekey_of=rekey_of,
    )


def udp4(src: str, dst: str, sport: int = 1234, dport: int = 80, payload: bytes = b"x" * 50,
         proto: int = 17) -> bytes:
    total = 28 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def pair(**kwargs: object) -> tuple[DataPlane, DataPlane]:
    a, b = DataPlane(iv_source(1)), DataPlane(iv_source(2))
    a.install(installed(initiator=True), **kwargs)  # type: ignore[arg-type]
    b.install(installed(initiator=False), **kwargs)  # type: ignore[arg-type]
    return a, b


@pytest.mark.parametrize("suite", [GCM, CBC], ids=["gcm", "cbc"])
def test_round_trip_both_directions(suite: EspSuite) -> None:
    a, b = DataPlane(iv_source(1)), DataPlane(iv_source(2))
    a.install(installed(initiator=True, suite=suite))
    b.install(installed(initiator=False, suite=suite))
    packet = udp4(A_INNER, B_INNER)
    done = a.protect(packet)
    assert done is not None
    entry, esp = done
    assert entry.path == path(A, B) and packet not in esp
    assert b.unprotect(esp)[1] == packet
    reply = udp4(B_INNER, A_INNER, 80, 1234)
    back = b.protect(reply)
    assert back is not None and a.unprotect(back[1])[1] == reply
    counters = b.get(1).counters()  # type: ignore[union-attr]
    assert counters["packets_in"] == 1 and counters["packets_out"] == 1
    assert counters["bytes_in"] == len(packet)


def test_packets_outside_the_selectors_are_never_protected() -> None:
    a, _ = pair()
    assert a.protect(udp4(A_INNER, "10.77.0.1")) is None  # destination not in remote TS
    assert a.protect(udp4("10.99.0.2", B_INNER)) is None  # source not in local TS
    assert a.protect(b"\x00" * 40) is None  # not IP at all
    assert a.no_policy == 3


def test_inbound_selector_check_drops_spoofed_inner_source() -> None:
    _a, b = pair()
    # A protects a packet whose source B never agreed to: A's own selectors would stop
    # that, so build it with a second plane whose selectors are wider.
    wide = DataPlane(iv_source(3))
    event = installed(initiator=True)
    wide_event = dataclasses.replace(event, local_ts=("10.99.0.0/16",))
    wide.install(wide_event)
    done = wide.protect(udp4("10.99.5.5", B_INNER))
    assert done is not None
    entry, inner = b.unprotect(done[1])
    assert inner is None and entry is not None and entry.ts_failures == 1
    assert entry.counters()["packets_in"] == 1  # authentic, just not allowed


def test_replayed_corrupted_truncated_and_unknown_are_counted() -> None:
    a, b = pair()
    done = a.protect(udp4(A_INNER, B_INNER))
    assert done is not None
    esp = done[1]
    assert b.unprotect(esp)[1] is not None
    assert b.unprotect(esp)[1] is None  # replay
    corrupt = bytearray(a.protect(udp4(A_INNER, B_INNER))[1])  # type: ignore[index]
    corrupt[-1] ^= 1
    assert b.unprotect(bytes(corrupt))[1] is None
    assert b.unprotect(esp[:12])[1] is None  # truncated
    assert b.unprotect(b"\x00\x00\x99\x99" + esp[4:])[1] is None  # unknown SPI
    assert b.unprotect(b"\x01")[1] is None
    counters = b.get(1).counters()  # type: ignore[union-attr]
    assert counters["replay_failures"] == 1
    assert counters["integrity_failures"] == 1
    assert counters["decode_failures"] == 1
    assert counters["packets_in"] == 1
    assert b.unknown_spi == 2
    assert b.drops == {"replayed": 1, "integrity_check_failed": 1, "malformed": 2,
                       "unknown_spi": 1}


def test_move_keeps_sequence_numbers_and_replay_state() -> None:
    a, b = pair()
    for _ in range(3):
        done = a.protect(udp4(A_INNER, B_INNER))
        assert done is not None and b.unprotect(done[1])[1] is not None
    old = a.protect(udp4(A_INNER, B_INNER))
    assert old is not None
    new_path = path("198.51.100.7", B)
    assert a.move("1_2", new_path, encap=False) == 1
    done = a.protect(udp4(A_INNER, B_INNER))
    assert done is not None
    entry, esp = done
    assert entry.path == new_path and entry.encap is False
    # Sequence numbers go on (5 after 4), and the peer's replay window still knows 1..3.
    assert struct.unpack("!I", esp[4:8])[0] == 5
    assert b.unprotect(esp)[1] is not None
    assert b.unprotect(old[1])[1] is not None  # 4 arrives late: inside the window, still new
    assert b.unprotect(old[1])[1] is None
    assert a.move("other", new_path) == 0


def test_ike_rekey_hands_the_child_sas_over() -> None:
    a = DataPlane(iv_source(1))
    a.install(installed(initiator=True, unique_id=1))
    a.install(installed(initiator=True, unique_id=2, spi_i=0x1001, spi_r=0x2001))
    a.install(dataclasses.replace(installed(initiator=True, unique_id=3, spi_i=0x1002,
                                            spi_r=0x2002), ike_spi="3_4"))
    a.reparent("1_2", "5_6")
    new_path = path("198.51.100.7", B)
    assert a.move("1_2", new_path) == 0
    assert a.move("5_6", new_path) == 2
    assert {e.unique_id: e.ike_spi for e in a.entries()} == {1: "5_6", 2: "5_6", 3: "3_4"}
    a.remove(1)
    assert a.move("5_6", path(A, B)) == 1


def test_soft_byte_limit_requests_one_rekey_then_hard_limit_deletes() -> None:
    a = DataPlane(iv_source(1))
    a.install(installed(initiator=True), Limits(rekey_bytes=1000, life_bytes=3000))
    packet = udp4(A_INNER, B_INNER, payload=b"y" * 472)  # 500 bytes
    assert a.protect(packet) is not None
    assert a.take_requests() == []
    assert a.protect(packet) is not None  # 1000 bytes: soft limit
    assert a.take_requests() == [Request(RequestKind.REKEY, 1)]
    for _ in range(3):
        assert a.protect(packet) is not None
    assert a.take_requests() == []
    assert a.protect(packet) is not None  # 3000 bytes: hard limit, this one still went out
    assert a.take_requests() == [Request(RequestKind.DELETE, 1)]
    assert a.protect(packet) is None  # expired: nothing more on it


def test_packet_limit_counts_inbound_too() -> None:
    a, b = DataPlane(iv_source(1)), DataPlane(iv_source(2))
    a.install(installed(initiator=True))
    b.install(installed(initiator=False), Limits(rekey_packets=2))
    for _ in range(2):
        done = a.protect(udp4(A_INNER, B_INNER))
        assert done is not None
        b.unprotect(done[1])
    assert b.take_requests() == [Request(RequestKind.REKEY, 1)]


def test_rekey_switches_outbound_without_losing_packets() -> None:
    a, b = pair()
    packet = udp4(A_INNER, B_INNER)
    # A initiates the rekey: B (responder) installs first and answers, then A installs.
    b.install(installed(initiator=False, unique_id=2, spi_i=0x3000, spi_r=0x4000, seed=2,
                        rekey_of=1, rekey_initiator=False))
    # B keeps sending on the old SA until A shows it has the new one.
    reply = b.protect(udp4(B_INNER, A_INNER))
    assert reply is not None and reply[0].unique_id == 1
    a.install(installed(initiator=True, unique_id=2, spi_i=0x3000, spi_r=0x4000, seed=2,
                        rekey_of=1, rekey_initiator=True))
    assert a.unprotect(reply[1])[1] is not None  # the old inbound SA still works
    done = a.protect(packet)
    assert done is not None and done[0].unique_id == 2
    assert b.unprotect(done[1])[1] == packet
    # Now B has seen traffic on the new SA and answers on it.
    reply = b.protect(udp4(B_INNER, A_INNER))
    assert reply is not None and reply[0].unique_id == 2
    assert a.unprotect(reply[1])[1] is not None


def test_deleted_sa_lingers_inbound_only() -> None:
    a, b = pair()
    late = a.protect(udp4(A_INNER, B_INNER))
    assert late is not None
    removed = b.remove(1, now=100.0, linger=5.0)
    assert removed is not None
    assert b.protect(udp4(B_INNER, A_INNER)) is None  # nothing sent on a deleted SA
    assert b.unprotect(late[1], now=101.0)[1] is not None
    late2 = a.protect(udp4(A_INNER, B_INNER))
    assert late2 is not None
    assert b.unprotect(late2[1], now=106.0)[1] is None
    assert b.unknown_spi == 1


class _NoWalk(dict[int, object]):
    """Fails a walk over every entry (what a delete must not do per delete)."""

    def items(self):  # type: ignore[override]
        raise AssertionError("walked every lingering SA")


def test_deletes_expire_lingering_sas_without_walking_them_all() -> None:
    plane = DataPlane(iv_source(1))
    for uid in range(1, 41):
        plane.install(installed(initiator=False, unique_id=uid, spi_i=0x1000 + uid,
                                spi_r=0x100000 + uid, seed=uid))
    plane._lingering = _NoWalk()  # type: ignore[assignment]
    for uid in range(1, 41):
        plane.remove(uid, now=float(uid), linger=5.0)  # a rekey wave: one delete a second
        # Only those deleted in the last 5 s are kept (and they are oldest first).
        assert [until for _e, until in dict.values(plane._lingering)] == [
            float(u) + 5.0 for u in range(max(1, uid - 4), uid + 1)]


def test_responder_successor_activates_when_old_sa_is_deleted() -> None:
    _, b = pair()
    b.install(installed(initiator=False, unique_id=2, spi_i=0x3000, spi_r=0x4000, seed=2,
                        rekey_of=1, rekey_initiator=False))
    b.remove(1)
    done = b.protect(udp4(B_INNER, A_INNER))
    assert done is not None and done[0].unique_id == 2


def test_narrowed_selector_matches_ports() -> None:
    a = DataPlane(iv_source(1))
    event = installed(initiator=True)
    narrowed = dataclasses.replace(event, remote_ts=(f"{B_NET}[tcp/80]",))
    a.install(narrowed)
    assert a.protect(udp4(A_INNER, B_INNER, dport=80, proto=6)) is not None
    assert a.protect(udp4(A_INNER, B_INNER, dport=81, proto=6)) is None
    assert a.protect(udp4(A_INNER, B_INNER, dport=80, proto=17)) is None


def test_lost_rekey_answer_then_our_rekey_of_the_old_sa() -> None:
    """B rekeyed SA 1 and A's answer (SA 2) got lost; A then rekeyed SA 1 itself (SA 3)
    and deleted it. A sends on SA 1, then on SA 3, never on SA 2 (B may not have it),
    and takes what B sends on any of the three."""
    a, b = pair()
    x = dict(unique_id=2, spi_i=0x3000, spi_r=0x4000, seed=2, rekey_of=1)
    r = dict(unique_id=3, spi_i=0x5000, spi_r=0x6000, seed=3, rekey_of=1)
    a.install(installed(initiator=True, rekey_initiator=False, **x))  # type: ignore[arg-type]
    out = a.protect(udp4(A_INNER, B_INNER))
    assert out is not None and out[0].unique_id == 1
    a.install(installed(initiator=True, rekey_initiator=True, **r))  # type: ignore[arg-type]
    b.install(installed(initiator=False, rekey_initiator=False, **r))  # type: ignore[arg-type]
    out = a.protect(udp4(A_INNER, B_INNER))
    assert out is not None and out[0].unique_id == 3
    on_old = b.protect(udp4(B_INNER, A_INNER))
    assert on_old is not None and on_old[0].unique_id == 1
    assert a.unprotect(on_old[1])[1] is not None
    b.remove(1)  # A's DELETE of SA 1: B sends on SA 3
    on_new = b.protect(udp4(B_INNER, A_INNER))
    assert on_new is not None and on_new[0].unique_id == 3
    assert a.unprotect(on_new[1])[1] is not None
    a.remove(1)
    out = a.protect(udp4(A_INNER, B_INNER))
    assert out is not None and out[0].unique_id == 3  # the newest, not the lost one
    # B's retransmission got A's cached answer: what it sends on SA 2 is taken too.
    late = DataPlane(iv_source(3))
    late.install(installed(initiator=False, rekey_initiator=True, **x))  # type: ignore[arg-type]
    on_lost = late.protect(udp4(B_INNER, A_INNER))
    assert on_lost is not None and a.unprotect(on_lost[1])[1] is not None
