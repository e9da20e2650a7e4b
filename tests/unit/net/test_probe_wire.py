"""Pure parts of the probes: UDP echo format and MAC, ICMP echo, the outstanding table, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.net.probes import wire
from mobike_vici.net.probes.bypass import (
    XFRM_POLICY_ALLOW,
    XFRM_POLICY_OUT,
    xfrm_bypass_policy,
)
from mobike_vici.net.probes.outstanding import Outstanding, Sent
from mobike_vici.net.probes.udp_echo import TokenBucket, UdpEchoProber, UdpEchoResponder
from mobike_vici.types import Endpoint, Path

KEY = b"k" * 32
NONCE = bytes(range(16))


@pytest.mark.slow
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16),
       st.sampled_from(list(wire.Kind)))
def test_udp_echo_round_trip(probe_id: int, ts: int, nonce: bytes, kind: wire.Kind) -> None:
    msg = wire.UdpEcho(kind=kind, probe_id=probe_id, timestamp=ts, nonce=nonce)
    data = wire.encode_udp_echo(msg, KEY)
    assert len(data) == wire.UDP_ECHO_LEN == 56
    assert data[:4] == b"MVPR" and data[4] == wire.VERSION and data[5] == kind
    assert wire.decode_udp_echo(data, KEY) == msg


def test_udp_echo_rejects_wrong_key_tampering_and_junk() -> None:
    msg = wire.UdpEcho(kind=wire.Kind.REQUEST, probe_id=7, timestamp=9, nonce=NONCE)
    data = wire.encode_udp_echo(msg, KEY)
    with pytest.raises(wire.DecodeError, match="mac"):
        wire.decode_udp_echo(data, b"other key")
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with pytest.raises(wire.DecodeError):
            wire.decode_udp_echo(bytes(flipped), KEY)
    for junk in (b"", data[:-1], data + b"\0"):
        with pytest.raises(wire.DecodeError, match="length"):
            wire.decode_udp_echo(junk, KEY)
    with pytest.raises(ValueError):
        wire.encode_udp_echo(wire.UdpEcho(kind=wire.Kind.REQUEST, probe_id=1, timestamp=0,
                                          nonce=b"short"), KEY)


def test_response_mac_differs_from_request_so_it_cannot_be_reflected() -> None:
    req = wire.UdpEcho(kind=wire.Kind.REQUEST, probe_id=3, timestamp=4, nonce=NONCE)
    resp = wire.response_to(req)
    assert (resp.probe_id, resp.timestamp, resp.nonce) == (3, 4, NONCE)
    assert resp.kind == wire.Kind.RESPONSE
    assert wire.encode_udp_echo(req, KEY)[-16:] != wire.encode_udp_echo(resp, KEY)[-16:]


def test_icmp_echo_checksum_and_round_trip() -> None:
    msg = wire.IcmpEcho(type=wire.ICMP_ECHO_REQUEST, ident=0x1234, seq=5, token=NONCE)
    data = wire.encode_icmp_echo(msg)
    assert wire.inet_checksum(data) == 0  # a correct checksum sums to zero
    assert wire.decode_icmp_echo(data) == msg
    ip_header = bytes([0x45]) + bytes(19)
    assert wire.decode_icmp_echo(ip_header + data, ipv4_header=True) == msg
    with pytest.raises(wire.DecodeError):
        wire.decode_icmp_echo(data[:20])
    with pytest.raises(wire.DecodeError):
        wire.decode_icmp_echo(data, ipv4_header=True)  # no IPv4 header there


def test_inet_checksum_known_vector() -> None:
    # RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
    assert wire.inet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_outstanding_matches_token_expires_and_is_bounded() -> None:
    table: Outstanding[int] = Outstanding(limit=2, timeout=1.0)
    table.add(1, Sent(probe_id=10, token=b"a", sent=0.0))
    assert table.pop(1, b"b", 0.1) is None  # wrong token: stray, kept
    hit = table.pop(1, b"a", 0.2)
    assert hit is not None and hit.probe_id == 10
    assert table.pop(1, b"a", 0.3) is None  # a replayed reply finds nothing

    table.add(2, Sent(probe_id=20, token=b"x", sent=1.0))
    assert table.pop(2, b"x", 2.5) is None and table.expired == 1

    for key in range(3, 6):
        table.add(key, Sent(probe_id=key, token=b"t", sent=3.0))
    assert len(table) == 2 and table.pop(3, b"t", 3.0) is None  # oldest forgotten


def test_token_bucket_limits_bursts_and_refills() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_xfrm_bypass_policy_layout() -> None:
    blob = xfrm_bypass_policy(XFRM_POLICY_OUT, socket.AF_INET6)
    assert len(blob) == 168
    assert struct.unpack_from("=H", blob, 40)[0] == socket.AF_INET6
    assert blob[:40] == bytes(40)  # any address, any port
    assert struct.unpack_from("=Q", blob, 56)[0] == 2**64 - 1  # no lifetime limit
    assert blob[160] == XFRM_POLICY_OUT and blob[161] == XFRM_POLICY_ALLOW


def _counter_bytes() -> Callable[[int], bytes]:
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return random_bytes


def test_udp_echo_over_loopback_and_wrong_key() -> None:
    """End to end without root: no mark, no XFRM bypass, no device."""

    async def run() -> tuple[dict[int, float], int, int, int]:
        responder = UdpEchoResponder(KEY, ipaddress.ip_address("127.0.0.1"), port=0,
                                     fwmark=None, xfrm_bypass=False)
        responder.start()
        port = responder.sock.getsockname()[1]
        got: dict[int, float] = {}
        done = asyncio.get_running_loop().create_future()

        def on_reply(probe_id: int, rtt: float) -> None:
            got[probe_id] = rtt
            if len(got) == 2 and not done.done():
                done.set_result(None)

        rb = _counter_bytes()
        prober = UdpEchoProber(on_reply, KEY, random_bytes=rb, port=port,
                               fwmark=None, xfrm_bypass=False)
        bad = UdpEchoProber(lambda *_: None, b"wrong", random_bytes=rb,
                            port=port, fwmark=None, xfrm_bypass=False)
        path = Path(Endpoint(ipaddress.ip_address("127.0.0.1"), 0),
                    Endpoint(ipaddress.ip_address("127.0.0.1"), port))
        assert bad.send(path, 99, None)
        assert prober.send(path, 1, None) and prober.send(path, 2, None)
        await asyncio.wait_for(done, 5.0)
        prober.close()
        bad.close()
        responder.close()
        return got, responder.counters.answered, responder.counters.unauthenticated, \
            prober.counters.replies

    got, answered, unauth, replies = asyncio.run(run())
    assert set(got) == {1, 2} and all(rtt >= 0 for rtt in got.values())
    assert answered == 2 and unauth == 1 and replies == 2
