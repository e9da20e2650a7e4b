"""The RFC 9329 transport on real loopback sockets: both roles, bounds, reopen, fallback."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from mobike_vici.config.tcp import TcpMode, TcpSettings
from mobike_vici.core.engine import Datagram
from mobike_vici.core.tcp_framing import STREAM_PREFIX, encode_ike
from mobike_vici.daemon import tcp_transport
from mobike_vici.daemon.tcp_stream import Pair
from mobike_vici.daemon.tcp_transport import TcpTransport
from mobike_vici.types import Endpoint, Path

from .fakes import RecordingLog

LO = ipaddress.ip_address("127.0.0.1")
BIND = ((socket.AF_INET, "127.0.0.1"),)
UDP_PATH = Path(Endpoint(LO, 4500), Endpoint(LO, 4500))


SPI_I = bytes(range(1, 9))


def ike(request: bool, from_initiator: bool, mid: int = 0, body: bytes = b"",
        spi_i: bytes = SPI_I) -> bytes:
    flags = (0 if request else 0x20) | (0x08 if from_initiator else 0)
    length = 28 + len(body)
    return (spi_i + bytes(range(9, 17)) + bytes((46, 0x20, 37, flags))
            + mid.to_bytes(4, "big") + length.to_bytes(4, "big") + body)


ESP = b"\x00\x00\x10\x01\x00\x00\x00\x01" + b"payload"


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]
    return run


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Side:
    transport: TcpTransport
    log: RecordingLog
    ike: list[tuple[bytes, Path]] = field(default_factory=list)
    esp: list[bytes] = field(default_factory=list)
    switches: list[tuple[Pair, str]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)


def side(settings: TcpSettings) -> Side:
    log = RecordingLog()
    holder: list[Side] = []

    def on_ike(data: bytes, path: Path, now: float) -> None:
        holder[0].ike.append((data, path))
        holder[0].got.set()

    def on_esp(data: bytes, now: float) -> None:
        holder[0].esp.append(data)
        holder[0].got.set()

    def on_switch(pair: Pair, transport: str, now: float) -> None:
        holder[0].switches.append((pair, transport))
        holder[0].got.set()

    s = Side(TcpTransport(settings, log, on_ike, on_esp, on_switch), log)
    holder.append(s)
    return s


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def opened(initiator_settings: TcpSettings, responder_settings: TcpSettings
                 ) -> AsyncIterator[tuple[Side, Side]]:
    """An initiator and a responder (bound to BIND), closed on the way out."""
    initiator, responder = side(initiator_settings), side(responder_settings)
    loop = asyncio.get_running_loop()
    responder.transport.open(loop, BIND)
    initiator.transport.open(loop, ())
    try:
        yield initiator, responder
    finally:
        initiator.transport.close()
        responder.transport.close()


@asynccontextmanager
async def pair_of(mode: TcpMode, **kw: object) -> AsyncIterator[tuple[Side, Side]]:
    port = free_tcp_port()
    settings = replace(TcpSettings(mode=mode, ports=(port,)), **kw)  # type: ignore[arg-type]
    async with opened(settings, settings) as pair:
        yield pair


def now() -> float:
    return asyncio.get_running_loop().time()


@in_loop
async def test_always_carries_ike_and_esp_both_ways() -> None:
    async with pair_of(TcpMode.ALWAYS) as (i, r):
        init = ike(True, True)
        assert i.transport.send_ike(Datagram(init, Path(Endpoint(LO, 500), Endpoint(LO, 500))),
                                    now())
        await until(lambda: r.ike)
        data, rpath = r.ike[0]
        assert data == init and rpath.local.port == r.transport.settings.ports[0]
        assert r.transport.transport_of(rpath) == "tcp"
        # The responder answers on the stream's path; the initiator sees its own path.
        assert r.transport.send_ike(Datagram(ike(False, False), rpath), now())
        await until(lambda: i.ike)
        assert i.ike[0] == (ike(False, False), Path(Endpoint(LO, 500), Endpoint(LO, 500)))
        # The engine floats to 4500: same pair, same stream.
        assert i.transport.send_esp(UDP_PATH, ESP)
        assert r.transport.send_esp(rpath, ESP[::-1])
        await until(lambda: r.esp and i.esp)
        assert r.esp == [ESP] and i.esp == [ESP[::-1]]
        assert len(i.transport.streams()) == 1 and len(r.transport.streams()) == 1
        # Events name paths as text: the transport is found from that too.
        assert i.transport.transport_of_fields(
            {"local": "127.0.0.1[4500]", "remote": "127.0.0.1[4500]"}) == "tcp"
        assert r.transport.transport_of_fields(
            {"local": "127.0.0.1[4500]", "remote": "127.0.0.2[4500]"}) == "udp"
        assert i.transport.transport_of_fields({"reason": "x"}) is None
        assert i.transport.transport_of_fields({"local": "nonsense", "remote": "x[1]"}) is None
        # No NAT keepalives on a stream.
        assert i.transport.send_ike(Datagram(b"\xff", UDP_PATH, keepalive=True), now())


@in_loop
async def test_responder_never_connects() -> None:
    async with pair_of(TcpMode.ALWAYS) as (_i, r):
        assert not r.transport.send_ike(Datagram(ike(True, False), UDP_PATH), now())
        assert r.transport.streams() == []


@in_loop
async def test_bad_prefix_is_closed() -> None:
    async with pair_of(TcpMode.ALWAYS) as (_i, r):
        reader, writer = await asyncio.open_connection("127.0.0.1", r.transport.settings.ports[0])
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the responder
        writer.close()
        assert r.ike == []


@in_loop
async def test_slow_sender_and_silent_connections_are_closed() -> None:
    async with pair_of(TcpMode.ALWAYS, slow_timeout=0.3) as (_i, r):
        port = r.transport.settings.ports[0]
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(STREAM_PREFIX + encode_ike(ike(True, True))[:10])
        # Whole frames that look like IKE but that the engine never answers.
        fake_r, fake_w = await asyncio.open_connection("127.0.0.1", port)
        fake_w.write(STREAM_PREFIX + encode_ike(ike(True, True)))
        for reader in (silent_r, slow_r, fake_r):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        for writer in (silent_w, slow_w, fake_w):
            writer.close()
        assert len(r.ike) == 1  # the fake frame did reach the engine
        assert r.transport.streams() == []


@in_loop
async def test_caps_per_source_and_in_all() -> None:
    async with pair_of(TcpMode.ALWAYS, max_per_source=2, max_streams=3) as (_i, r):
        port = r.transport.settings.ports[0]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await until(lambda: len(r.transport.streams()) == 2)
        assert await asyncio.wait_for(conns[2][0].read(), 5) == b""  # refused
        assert r.log.named("tcp_refused")[0]["reason"] == "max_per_source"
        for _, writer in conns:
            writer.close()


@in_loop
async def test_broken_stream_is_reopened_and_the_request_resent() -> None:
    async with pair_of(TcpMode.ALWAYS) as (i, r):
        request = ike(True, True, mid=5)
        i.transport.send_ike(Datagram(request, UDP_PATH), now())
        await until(lambda: r.ike)
        (stream,) = list(r.transport._streams)
        r.transport._close(stream, "test")
        await until(lambda: len(r.ike) == 2)
        assert r.ike[1][0] == request
        assert i.log.named("tcp_stream_reopened")
        # Answered: a stream that breaks now is not reopened until the engine sends.
        r_path = r.ike[1][1]
        assert r.transport.send_ike(Datagram(ike(False, False, mid=5), r_path), now())
        await until(lambda: i.ike)
        (stream,) = list(r.transport._streams)
        r.transport._close(stream, "test")
        await asyncio.sleep(0.3)
        assert len(i.log.named("tcp_stream_reopened")) == 1 and i.transport.streams() == []
        # Each connection asked the daemon to update the IKE_SAs on the pair over it.
        assert i.switches == [((LO, LO), "tcp")] * 2
        i.transport.send_ike(Datagram(ike(True, True, mid=6), UDP_PATH), now())
        await until(lambda: len(i.switches) == 3)


@in_loop
async def test_peer_without_listener_is_said_once() -> None:
    port = free_tcp_port()  # nobody listens: charon's case
    settings = TcpSettings(mode=TcpMode.ALWAYS, ports=(port,), fallback_after=0.05)
    i = side(settings)
    i.transport.open(asyncio.get_running_loop(), ())
    try:
        for _ in range(5):
            i.transport.send_ike(Datagram(ike(True, True), UDP_PATH), now())
            await asyncio.sleep(0.1)
        await until(lambda: i.log.named("tcp_unavailable"))
        await asyncio.sleep(0.2)
        assert len(i.log.named("tcp_unavailable")) == 1
    finally:
        i.transport.close()


@in_loop
async def test_fallback_moves_an_unanswered_pair_to_tcp_and_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_transport, "CLOSE_AFTER_RETURN", 0.1)
    async with pair_of(TcpMode.FALLBACK, fallback_after=0.2) as (i, r):
        pair = (LO, LO)
        request = ike(True, True, mid=1)
        # Over UDP (the daemon sends it), unanswered.
        assert not i.transport.send_ike(Datagram(request, UDP_PATH), now())
        await until(lambda: i.switches)
        assert i.switches == [(pair, "tcp")]
        await until(lambda: r.ike)
        assert r.ike[0][0] == request  # the request in flight went over the stream
        assert i.transport.transport_of(UDP_PATH) == "tcp"
        # Every 5 * fallback_after a trial sends requests over UDP as well.
        await until(lambda: pair in i.transport._trial, timeout=3)
        assert not i.transport.send_ike(Datagram(ike(True, True, mid=2), UDP_PATH), now())
        i.transport.udp_ike_received(UDP_PATH, now())  # UDP answered
        assert i.switches[-1] == (pair, "udp")
        assert i.transport.transport_of(UDP_PATH) == "udp"
        await until(lambda: not i.transport.streams())
        assert i.log.named("tcp_stream_closed")[0]["reason"] == "returned_to_udp"


@in_loop
async def test_fallback_leaves_answered_udp_alone() -> None:
    async with pair_of(TcpMode.FALLBACK, fallback_after=0.2) as (i, _r):
        for mid in range(6):
            assert not i.transport.send_ike(Datagram(ike(True, True, mid), UDP_PATH), now())
            await asyncio.sleep(0.1)
            i.transport.udp_ike_received(UDP_PATH, now())
        assert i.switches == [] and i.transport.streams() == []


@in_loop
async def test_a_peer_without_tcp_is_asked_less_and_less_often() -> None:
    settings = TcpSettings(mode=TcpMode.FALLBACK, ports=(free_tcp_port(),), fallback_after=0.1)
    i = side(settings)
    i.transport.open(asyncio.get_running_loop(), ())
    try:
        assert not i.transport.send_ike(Datagram(ike(True, True), UDP_PATH), now())
        await asyncio.sleep(3.0)  # unanswered all along: a retry each housekeeping would be 12
        assert 3 <= i.transport.counters["connects"] <= 6
        assert len(i.log.named("tcp_unavailable")) == 1 and i.switches == []
    finally:
        i.transport.close()


@in_loop
async def test_a_fallback_connection_is_dropped_when_udp_answered_meanwhile() -> None:
    async with pair_of(TcpMode.FALLBACK, fallback_after=0.2) as (i, r):
        assert not i.transport.send_ike(Datagram(ike(True, True), UDP_PATH), now())
        i.transport._connect((LO, LO), UDP_PATH, SPI_I.hex(), now())  # as housekeeping would
        i.transport.udp_ike_received(UDP_PATH, now())  # before the stream is up
        await until(lambda: i.log.named("tcp_stream_closed"))
        assert i.log.named("tcp_stream_closed")[0]["reason"] == "udp_answered"
        assert i.switches == [] and i.transport.transport_of(UDP_PATH) == "udp"
        assert r.ike == []


def engine_spi(spi_i: bytes) -> str:
    return f"{spi_i.hex()}_{bytes(range(9, 17)).hex()}"


@in_loop
async def test_each_ike_sa_gets_its_own_stream() -> None:
    """RFC 9329 section 6: IKE_SAs between the same two addresses never share a stream,
    but a rekey successor rides its predecessor's; ESP rides its IKE_SA's."""
    async with pair_of(TcpMode.ALWAYS) as (i, r):
        spi_a, spi_b, spi_a2 = b"\xaa" * 8, b"\xbb" * 8, b"\xa2" * 8
        for spi in (spi_a, spi_b):
            assert i.transport.send_ike(Datagram(ike(True, True, spi_i=spi), UDP_PATH), now())
        await until(lambda: len(r.ike) == 2)
        paths = {data[:8]: path for data, path in r.ike}
        assert set(paths) == {spi_a, spi_b} and paths[spi_a] != paths[spi_b]
        assert sorted(len(s["ike_sas"]) for s in i.transport.streams()) == [1, 1]  # type: ignore[arg-type]
        assert len(r.transport.streams()) == 2
        # The successor of A (rekeyed by the engine) goes on A's stream.
        i.transport.rekeyed(engine_spi(spi_a), engine_spi(spi_a2))
        assert i.transport.send_ike(Datagram(ike(True, True, mid=1, spi_i=spi_a2), UDP_PATH),
                                    now())
        await until(lambda: len(r.ike) == 3)
        assert r.ike[2][1] == paths[spi_a] and len(i.transport.streams()) == 2
        # A answered, then its stream closed: B's stream still carries B's ESP, and
        # A's ESP is no longer the transport's to send.
        assert r.transport.send_ike(Datagram(ike(False, False, mid=1, spi_i=spi_a2),
                                             paths[spi_a]), now())
        await until(lambda: i.ike)
        (stream_a,) = [s for s in r.transport._streams if s.remote == paths[spi_a].remote]
        r.transport._close(stream_a, "test")
        await until(lambda: len(i.transport.streams()) == 1)
        assert not i.transport.send_esp(UDP_PATH, ESP, engine_spi(spi_a2))
        assert i.transport.send_esp(UDP_PATH, ESP, engine_spi(spi_b))
        await until(lambda: r.esp)
        assert r.esp == [ESP]


@asynccontextmanager
async def initiator_with_ports(ports: tuple[int, ...], live: int) -> AsyncIterator[
        tuple[Side, Side]]:
    """An initiator offered ``ports`` in turn, a responder listening on ``live`` only."""
    async with opened(TcpSettings(mode=TcpMode.ALWAYS, ports=ports),
                      TcpSettings(mode=TcpMode.ALWAYS, ports=(live,))) as pair:
        yield pair


@in_loop
async def test_a_refused_port_makes_way_for_the_next_and_the_good_one_is_kept() -> None:
    refused, live = free_tcp_port(), free_tcp_port()  # nobody listens on ``refused``
    async with initiator_with_ports((refused, live), live) as (i, r):
        request = ike(True, True, spi_i=b"\x01" * 8)
        assert i.transport.send_ike(Datagram(request, UDP_PATH), now())
        await until(lambda: r.ike)
        assert r.ike[0][0] == request  # queued on the refused attempt, sent on the next
        assert i.transport.counters["connects"] == 2
        assert not i.log.named("tcp_unavailable")
        # Another IKE_SA to the same peer goes straight to the port that worked.
        assert i.transport.send_ike(Datagram(ike(True, True, spi_i=b"\x02" * 8), UDP_PATH),
                                    now())
        await until(lambda: len(r.ike) == 2)
        assert i.transport.counters["connects"] == 3
        assert {s["remote"] for s in i.transport.streams()} == {f"127.0.0.1[{live}]"}


@in_loop
async def test_a_port_that_never_answers_times_out_to_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_transport, "CONNECT_TIMEOUT", 0.3)
    # A listener that never accepts, its backlog full: SYNs to it go unanswered.
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    filler = []
    for _ in range(4):
        conn = socket.socket()
        conn.setblocking(False)
        conn.connect_ex(black.getsockname())
        filler.append(conn)
    live = free_tcp_port()
    try:
        async with initiator_with_ports((black.getsockname()[1], live), live) as (i, r):
            request = ike(True, True)
            assert i.transport.send_ike(Datagram(request, UDP_PATH), now())
            await until(lambda: r.ike)
            assert r.ike[0][0] == request and i.transport.counters["connects"] == 2
            assert not i.log.named("tcp_unavailable")
    finally:
        for conn in [*filler, black]:
            conn.close()


@in_loop
async def test_wire_path_is_the_streams_for_nat_detection() -> None:
    """The engine hashes NAT detection over a stream's own ends (RFC 9329): the initiator
    opens it while building IKE_SA_INIT, the message then goes on that same stream."""
    async with pair_of(TcpMode.ALWAYS) as (i, r):
        wire = i.transport.wire_path(SPI_I, UDP_PATH, True)
        (stream,) = i.transport.streams()
        assert wire != UDP_PATH and wire.remote.port == i.transport.settings.ports[0]
        assert (str(wire.local), str(wire.remote)) == (stream["local"], stream["remote"])
        assert i.transport.send_ike(Datagram(ike(True, True), UDP_PATH), now())
        await until(lambda: r.ike)
        rpath = r.ike[0][1]
        assert (rpath.remote, rpath.local) == (wire.local, wire.remote)  # same ends both sides
        assert len(i.transport.streams()) == 1
        # The responder's engine already sees the stream's ends; a pair not bound for a
        # stream (the peer's side of it as original responder) keeps its path.
        assert r.transport.wire_path(SPI_I, rpath, False) == rpath
        assert r.transport.wire_path(SPI_I, UDP_PATH, False) == UDP_PATH and \
            r.transport.streams()[0]["role"] == "responder" and len(r.transport.streams()) == 1


@in_loop
async def test_one_ike_sa_on_two_pairs_has_a_stream_on_each() -> None:
    """MOBIKE gives an IKE_SA several paths: a probe on another pair opens that pair's
    stream and leaves the active one alone."""
    other = Path(Endpoint(ipaddress.ip_address("127.0.0.2"), 4500), UDP_PATH.remote)
    async with pair_of(TcpMode.ALWAYS) as (i, r):
        assert i.transport.send_ike(Datagram(ike(True, True, mid=1), UDP_PATH), now())
        await until(lambda: r.ike)
        assert i.transport.send_ike(Datagram(ike(True, True, mid=2), other), now())
        await until(lambda: len(r.ike) == 2)
        assert [str(p.remote.addr) for _, p in r.ike] == ["127.0.0.1", "127.0.0.2"]
        assert len(i.transport.streams()) == 2 and not i.log.named("tcp_stream_closed")
        assert i.transport.transport_of(UDP_PATH) == i.transport.transport_of(other) == "tcp"
