"""UDP echo probes for networks that drop ICMP: the prober and the peer's responder.

Both ends share a configured key (``mobike { probe_key }``); see ``wire`` for the
format. The responder answers only authentic requests, silently (unauthenticated
ones are counted, never answered), each request once (``ReplayWindow``: a captured
request replayed from spoofed sources is not reflected), at most ``source_rate``
per second to one source address (``SourceBuckets``, so one source cannot use up
the rest) and at most ``rate`` per second in all (token bucket, burst ``burst``),
so it cannot be used as an amplifier or a CPU sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ...types import IPAddress, Path
from .bypass import PROBE_FWMARK, apply_socket_bypass
from .icmp import Counters, ReplyCallback
from .outstanding import MAX_OUTSTANDING, Outstanding, Sent
from .wire import (
    NONCE_LEN,
    DecodeError,
    Kind,
    UdpEcho,
    decode_udp_echo,
    encode_udp_echo,
    response_to,
)

DEFAULT_PORT = 4555


def _open(local: IPAddress, port: int, ifname: str | None, fwmark: int | None,
          xfrm_bypass: bool) -> socket.socket:
    family = socket.AF_INET if local.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        apply_socket_bypass(sock, family=family, ifname=ifname, fwmark=fwmark,
                            xfrm_bypass=xfrm_bypass)
        sock.bind((str(local), port))
    except OSError:
        sock.close()
        raise
    return sock


class UdpEchoProber:
    """Sends authenticated echo requests for (path, probe_id) to the peer's `port`."""

    def __init__(self, on_reply: ReplyCallback, key: bytes, *,
                 random_bytes: Callable[[int], bytes], port: int = DEFAULT_PORT,
                 clock: Callable[[], float] = time.monotonic, fwmark: int | None = PROBE_FWMARK,
                 xfrm_bypass: bool = True, max_outstanding: int = MAX_OUTSTANDING,
                 timeout: float = 5.0) -> None:
        if not key:
            raise ValueError("probe key must not be empty")
        self.on_reply = on_reply
        self._key = key
        self.random_bytes = random_bytes
        self.port = port
        self.clock = clock
        self.fwmark = fwmark
        self.xfrm_bypass = xfrm_bypass
        self._outstanding: Outstanding[bytes] = Outstanding(max_outstanding, timeout)
        self._socks: dict[tuple[IPAddress, str | None], socket.socket] = {}
        self.counters = Counters()

    def send(self, path: Path, probe_id: int, ifname: str | None) -> bool:
        key = (path.local.addr, ifname)
        sock = self._socks.get(key)
        if sock is None:
            try:
                sock = _open(path.local.addr, 0, ifname, self.fwmark, self.xfrm_bypass)
            except OSError:
                self.counters.send_errors += 1
                return False
            self._socks[key] = sock
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        nonce = self.random_bytes(NONCE_LEN)
        now = self.clock()
        msg = UdpEcho(kind=Kind.REQUEST, probe_id=probe_id,
                      timestamp=int(now * 1e9) & 0xFFFFFFFFFFFFFFFF, nonce=nonce)
        self._outstanding.add(nonce, Sent(probe_id=probe_id, token=nonce, sent=now))
        try:
            sock.sendto(encode_udp_echo(msg, self._key), (str(path.remote.addr), self.port))
        except OSError:
            self.counters.send_errors += 1
            return False
        self.counters.sent += 1
        return True

    def close(self) -> None:
        loop = asyncio.get_event_loop()
        for sock in self._socks.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data = sock.recv(2048)
            except OSError:
                return
            self._on_datagram(data)

    def _on_datagram(self, data: bytes) -> None:
        try:
            msg = decode_udp_echo(data, self._key)
        except DecodeError:
            self.counters.dropped += 1
            return
        if msg.kind != Kind.RESPONSE:
            self.counters.dropped += 1
            return
        now = self.clock()
        sent = self._outstanding.pop(msg.nonce, msg.nonce, now)
        if sent is None or sent.probe_id != msg.probe_id:
            self.counters.dropped += 1
            return
        self.counters.replies += 1
        self.on_reply(sent.probe_id, now - sent.sent)


@dataclass(slots=True)
class ResponderCounters:
    answered: int = 0
    unauthenticated: int = 0
    rate_limited: int = 0
    replayed: int = 0
    source_limited: int = 0


class TokenBucket:
    """At most `rate` per second on average, `burst` at once; pure given `now`."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


REPLAY_LIFETIME = 60.0
"""Seconds a request's nonce is remembered: a replay within it is never answered."""
MAX_NONCES = 16384
"""Bound on remembered nonces (the oldest go first): 60 s at 270 requests/s. Only
authentic requests get in, so only holders of the key can churn it."""
TIMESTAMP_WINDOW_NS = 5_000_000_000
"""From a source seen before, a request stamped more than 5 s before the newest one
is refused: an old request replayed to a real peer's address, after its nonce was
forgotten. (The stamp is the prober's own clock: only comparable per source.)"""
MAX_SOURCES = 1024
"""Bound on per-source state (timestamps, buckets); the least recently seen go first."""


class ReplayWindow:
    """Answer each authentic request once; pure given ``now``.

    A nonce seen in the last REPLAY_LIFETIME seconds is refused whatever the source
    claims to be, and a source's requests may not go back in time by more than
    TIMESTAMP_WINDOW_NS (paths reorder probes a little, never by seconds).
    """

    def __init__(self, lifetime: float = REPLAY_LIFETIME, max_nonces: int = MAX_NONCES,
                 window_ns: int = TIMESTAMP_WINDOW_NS, max_sources: int = MAX_SOURCES) -> None:
        self.lifetime = lifetime
        self.max_nonces = max_nonces
        self.window_ns = window_ns
        self.max_sources = max_sources
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._newest: OrderedDict[IPAddress, int] = OrderedDict()

    def accept(self, nonce: bytes, timestamp: int, source: IPAddress, now: float) -> bool:
        while self._nonces:
            oldest, seen = next(iter(self._nonces.items()))
            if now - seen < self.lifetime and len(self._nonces) < self.max_nonces:
                break
            del self._nonces[oldest]
        if nonce in self._nonces:
            return False
        newest = self._newest.get(source)
        if newest is not None and timestamp < newest - self.window_ns:
            return False
        self._nonces[nonce] = now
        self._newest[source] = timestamp if newest is None else max(newest, timestamp)
        self._newest.move_to_end(source)
        if len(self._newest) > self.max_sources:
            self._newest.popitem(last=False)
        return True


class SourceBuckets:
    """One token bucket per source address, at most ``max_sources`` of them (the least
    recently used is forgotten): a busy or spoofed source cannot starve the others."""

    def __init__(self, rate: float, burst: int, max_sources: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[IPAddress, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: IPAddress, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.take(now)


class UdpEchoResponder:
    """Answers authentic echo requests on (address, port), bound like the prober."""

    def __init__(self, key: bytes, local: IPAddress, *, port: int = DEFAULT_PORT,
                 ifname: str | None = None, rate: float = 200.0, burst: int = 50,
                 source_rate: float = 50.0, source_burst: int = 20,
                 clock: Callable[[], float] = time.monotonic, fwmark: int | None = PROBE_FWMARK,
                 xfrm_bypass: bool = True) -> None:
        if not key:
            raise ValueError("probe key must not be empty")
        self._key = key
        self.clock = clock
        self.bucket = TokenBucket(rate, burst, clock())
        self.sources = SourceBuckets(source_rate, source_burst)
        self.replay = ReplayWindow()
        self.counters = ResponderCounters()
        self.sock = _open(local, port, ifname, fwmark, xfrm_bypass)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        asyncio.get_event_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def answer(self, data: bytes, source: IPAddress, now: float) -> bytes | None:
        """The response to `data` from `source`, or None (unauthenticated, not a
        request, a replay, rate-limited for its source or in all)."""
        try:
            msg = decode_udp_echo(data, self._key)
        except DecodeError:
            self.counters.unauthenticated += 1
            return None
        if msg.kind != Kind.REQUEST:
            self.counters.unauthenticated += 1
            return None
        if not self.replay.accept(msg.nonce, msg.timestamp, source, now):
            self.counters.replayed += 1
            return None
        if not self.sources.take(source, now):
            self.counters.source_limited += 1
            return None
        if not self.bucket.take(now):
            self.counters.rate_limited += 1
            return None
        self.counters.answered += 1
        return encode_udp_echo(response_to(msg), self._key)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                return
            try:
                source = ipaddress.ip_address(addr[0].split("%", 1)[0])
            except ValueError:
                continue
            reply = self.answer(data, source, self.clock())
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, addr)
