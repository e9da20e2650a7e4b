"""IKE and ESP over TCP (RFC 9329) for the native daemon: listeners, streams, bounds, fallback.

The engine keeps speaking in UDP-shaped paths; TCP is a transport under an
address pair (local address, peer address). On the TCP initiator's side (the
original IKE initiator: RFC 9329 says the responder never connects), a pair is
carried over streams, one per IKE_SA (a rekey successor shares its predecessor's),
each to the first ``tcp_port`` that accepts, when ``tcp = always``, or with ``tcp = fallback`` once
IKE requests on it went unanswered over UDP for ``fallback_after`` and a stream
connects; the engine's path stays what it was, its datagrams and the data
plane's ESP simply leave by the stream, and what arrives on the stream is handed
to the engine with that same path. A MOBIKE update over the stream then makes
the peer's SA follow (the daemon asks for it through ``on_switch``). While a
pair runs over TCP in fallback mode its IKE requests are also sent over UDP,
one window every ``retry_udp_every``: a UDP answer moves the pair back and the
stream is closed once the update has had time to go out.

The responder side listens on every ``tcp_port``; a stream's own path (local
address and port, peer address and ephemeral port) is what the engine sees, so
its answers and, after a MOBIKE update, its ESP find the stream again.

Bounds (RFC 9329 section 9's denial-of-service advice): streams in all and per
source address, a stream that has not finished its prefix, its first IKE
message or a started frame within ``slow_timeout`` is closed, and one without a
frame either way for ``idle_timeout``; each stream queues at most
``MAX_QUEUED`` bytes (ESP beyond ``MAX_QUEUED_ESP`` is dropped: TCP below it
resends anyway). NAT keepalives never go over TCP (section 7.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..config.tcp import TcpMode, TcpSettings
from ..core.engine import Datagram
from ..core.tcp_framing import (
    STREAM_PREFIX,
    FrameKind,
    FramingError,
    StreamDecoder,
    encode_esp,
    encode_ike,
)
from ..eventlog import EventLog
from ..types import Endpoint, IPAddress, Path
from . import udp
from .tcp_stream import (
    MAX_SAS_PER_STREAM,
    Pair,
    SaKey,
    Stream,
    from_original_initiator,
    is_request,
    sa_key,
    sa_key_of,
)

MAX_QUEUED = 1 << 20
"""Bytes one stream may hold unsent; beyond it the stream is closed (the peer reads nothing)."""
MAX_QUEUED_ESP = 256 << 10
"""Above this much unsent, outgoing ESP is dropped rather than queued."""
READ_SIZE = 65536
READS_PER_WAKEUP = 16
ACCEPTS_PER_WAKEUP = 64
HOUSEKEEPING = 0.25
"""Seconds between checks of the timeouts and of the pairs waiting for an answer."""
CONNECT_TIMEOUT = 5.0
MAX_RETRY_WAIT = 60.0
"""Seconds at most between attempts to connect to a peer whose TCP port failed us."""
UDP_TRIAL = 1.0
"""Seconds a trial of UDP lasts (requests duplicated over UDP) while on TCP."""
CLOSE_AFTER_RETURN = 3.0
"""Seconds the stream stays after a pair went back to UDP (answers still in flight)."""
REFUSED_LOG_INTERVAL = 1.0
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3
"""TCP keepalives (seconds, seconds, probes): a dead peer ends the stream within 25 s."""

IkeSink = Callable[[bytes, Path, float], None]
EspSink = Callable[[bytes, float], None]
SwitchSink = Callable[[Pair, str, float], None]
"""Told (pair, "tcp" or "udp", now) when a pair changes transport."""


@dataclass
class _Pending:
    """A pair whose IKE requests over UDP have gone unanswered since ``since``."""

    since: float
    request: bytes
    path: Path


class TcpTransport:
    """All TCP streams of one daemon, both roles."""

    def __init__(self, settings: TcpSettings, log: EventLog, on_ike: IkeSink, on_esp: EspSink,
                 on_switch: SwitchSink, *, fwmark: int | None = None) -> None:
        self.settings = settings
        self.log = log
        self.on_ike, self.on_esp, self.on_switch = on_ike, on_esp, on_switch
        self.fwmark = fwmark
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[socket.socket] = []
        self._streams: set[Stream] = set()
        self._responder: dict[tuple[IPAddress, Endpoint], Stream] = {}
        self._initiator: dict[tuple[Pair, SaKey], Stream] = {}
        """Initiator streams by pair and IKE_SA (a rekey successor maps to its
        predecessor's)."""
        self._per_source: dict[IPAddress, int] = {}
        self._tcp_pairs: set[Pair] = set()
        """Pairs carried over TCP (fallback mode; ``always`` carries every initiator pair)."""
        self._pending: dict[Pair, _Pending] = {}
        self._trial: dict[Pair, float] = {}
        """Pairs on TCP whose requests also go over UDP until the value (a deadline)."""
        self._next_trial: dict[Pair, float] = {}
        self._unavailable: set[IPAddress] = set()
        """Peers whose TCP port refused us (``tcp_unavailable`` is said once each)."""
        self._retry_after: dict[IPAddress, float] = {}
        self._failures: dict[IPAddress, int] = {}
        """Connection failures to a peer address in a row (reset by a connection)."""
        self._good_port: dict[IPAddress, int] = {}
        """The ``tcp_port`` a peer last accepted us on: tried first next time."""
        self._refused = 0
        self._refused_logged_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.counters = {"accepted": 0, "refused": 0, "connects": 0, "frames_in": 0,
                         "frames_out": 0, "esp_dropped": 0, "dropped_frames": 0}

    # --- lifecycle -------------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop,
             bind: tuple[tuple[socket.AddressFamily, str], ...]) -> None:
        """Listen on every ``tcp_port`` of every family in ``bind``."""
        self._loop = loop
        for family, addr in bind:
            for port in self.settings.ports:
                try:
                    sock = self._listener(family, addr, port)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno in (
                            errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                        break
                    self.close()
                    raise OSError(exc.errno, f"cannot listen on TCP {addr} port {port}: "
                                  f"{exc.strerror}") from exc
                self._listeners.append(sock)
                loop.add_reader(sock.fileno(), self._on_accept, sock)
        self._timer = loop.call_later(HOUSEKEEPING, self._housekeeping)
        self.log.emit("tcp_listening", mode=self.settings.mode.value,
                      ports=list(self.settings.ports))

    def _listener(self, family: socket.AddressFamily, addr: str, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.fwmark is not None:
                sock.setsockopt(socket.SOL_SOCKET, udp.SO_MARK, self.fwmark)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            sock.bind((addr, port))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self._listeners:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for stream in list(self._streams):
            self._close(stream, "daemon_stopped", log=False)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("TCP transport not open")
        return self._loop

    # --- what the daemon asks ----------------------------------------------------------

    def transport_of(self, path: Path) -> str:
        """"tcp" when ``path``'s traffic goes over a stream now, else "udp"."""
        return "tcp" if self._route(path) is not None else "udp"

    def transport_of_fields(self, fields: dict[str, object]) -> str | None:
        """The transport of the path an event names with ``local`` and ``remote`` in the
        stream's "addr[port]" form; None when it names none."""
        ends = []
        for key in ("local", "remote"):
            text = fields.get(key)
            if not isinstance(text, str) or not text.endswith("]") or "[" not in text:
                return None
            addr, _, port = text[:-1].rpartition("[")
            try:
                ends.append(Endpoint.parse(addr, int(port)))
            except ValueError:
                return None
        return self.transport_of(Path(ends[0], ends[1]))

    def streams(self) -> list[dict[str, object]]:
        """For ``status``: each stream's ends, role and queue."""
        return [{"local": str(s.local), "remote": str(s.remote),
                 "role": "initiator" if s.initiator else "responder",
                 "ike_sas": sorted(s.sas),
                 "connected": s.connected, "queued": len(s.out)}
                for s in sorted(self._streams, key=lambda s: (str(s.local), str(s.remote)))]

    def wire_path(self, spi_i: bytes, path: Path, initiator: bool) -> Path:
        """The engine's ``WireView``: the ends of the stream IKE_SA ``spi_i`` uses on
        ``path``, which NAT detection must hash (RFC 9329), else ``path``. The original
        initiator of a pair bound for TCP opens its stream here, so that the
        IKE_SA_INIT being built already hashes its ports."""
        sa = spi_i.hex()
        stream = self._route(path, sa)
        pair = (path.local.addr, path.remote.addr)
        if stream is None and initiator and self._loop is not None and (
                self.settings.mode == TcpMode.ALWAYS or pair in self._tcp_pairs):
            stream = self._connect(pair, path, sa, self._loop.time())
        return path if stream is None else stream.path

    def send_ike(self, datagram: Datagram, now: float) -> bool:
        """Carry one of the engine's datagrams; False: it is UDP's to send."""
        path, data = datagram.path, datagram.data
        sa = sa_key(data)
        stream = self._route(path, sa)
        pair = (path.local.addr, path.remote.addr)
        if stream is None:
            if datagram.keepalive or sa is None or not self._opens_tcp(pair, data):
                self._note_udp(pair, path, data, now)
                return False
            stream = self._connect(pair, path, sa, now)
            if stream is None:
                return self.settings.mode == TcpMode.ALWAYS  # never leak to UDP there
        if datagram.keepalive:
            return True  # RFC 9329 7.1: no NAT keepalives on a stream
        if stream.initiator:
            stream.engine_path = path
            if is_request(data):
                stream.inflight = data
        stream.ike_sent += 1
        if sa is not None:
            self._associate(stream, sa)
        self._write(stream, encode_ike(data))
        # During a trial a request goes over UDP too: an answer there brings the pair back.
        return not (pair in self._trial and is_request(data))

    def send_esp(self, path: Path, packet: bytes, ike_spi: str | None = None) -> bool:
        """Carry one ESP packet of the data plane (of a CHILD_SA of ``ike_spi``, the
        engine's name of the IKE_SA); False: UDP's (or raw ESP's) to send."""
        stream = self._route(path, None if ike_spi is None else sa_key_of(ike_spi))
        if stream is None:
            return False
        if len(stream.out) > MAX_QUEUED_ESP:
            self.counters["esp_dropped"] += 1
            return True
        try:
            self._write(stream, encode_esp(packet))
        except ValueError:
            self.counters["esp_dropped"] += 1
        return True

    def udp_ike_received(self, path: Path, now: float) -> None:
        """An IKE message came over UDP on ``path``: that pair's UDP works."""
        pair = (path.local.addr, path.remote.addr)
        self._pending.pop(pair, None)
        if pair in self._trial and pair in self._tcp_pairs:
            self._trial.pop(pair, None)
            self._tcp_pairs.discard(pair)
            self.log.emit("tcp_path_returned", local=str(pair[0]), remote=str(pair[1]))
            self.on_switch(pair, "udp", now)
            for stream in self._streams_of(pair):
                self.loop.call_later(CLOSE_AFTER_RETURN, self._close_if_udp, stream)

    def rekeyed(self, ike_spi: str, new_ike_spi: str) -> None:
        """The engine rekeyed an IKE_SA: its successor rides the same stream."""
        old = sa_key_of(ike_spi)
        for stream in [s for s in self._streams if s.initiator and old in s.sas]:
            self._associate(stream, sa_key_of(new_ike_spi))

    def _close_if_udp(self, stream: Stream) -> None:
        if not stream.closed and stream.pair not in self._tcp_pairs:
            self._close(stream, "returned_to_udp")

    # --- routing -------------------------------------------------------------------------

    def _route(self, path: Path, sa: SaKey | None = None) -> Stream | None:
        """The stream for ``path`` (a responder's own path), else for IKE_SA ``sa`` if its
        pair is on TCP; without ``sa``, any stream of the pair (what status asks)."""
        stream = self._responder.get((path.local.addr, path.remote))
        if stream is not None:
            return stream
        pair = (path.local.addr, path.remote.addr)
        if self.settings.mode == TcpMode.ALWAYS or pair in self._tcp_pairs:
            if sa is not None:
                return self._initiator.get((pair, sa))
            return next(iter(self._streams_of(pair)), None)
        return None

    def _streams_of(self, pair: Pair) -> list[Stream]:
        """The initiator streams of a pair, one per IKE_SA."""
        return [s for s in set(self._initiator.values()) if s.route == pair]

    def _associate(self, stream: Stream, sa: SaKey) -> None:
        if sa in stream.sas or len(stream.sas) >= MAX_SAS_PER_STREAM:
            return
        stream.sas.add(sa)
        if stream.route is not None and (stream.route, sa) not in self._initiator:
            self._initiator[(stream.route, sa)] = stream

    def _opens_tcp(self, pair: Pair, data: bytes) -> bool:
        """Whether this datagram makes us connect: only as the original initiator."""
        if not from_original_initiator(data):
            return False
        return self.settings.mode == TcpMode.ALWAYS or pair in self._tcp_pairs

    def _note_udp(self, pair: Pair, path: Path, data: bytes, now: float) -> None:
        """Fallback mode: remember requests going unanswered over UDP."""
        if self.settings.mode != TcpMode.FALLBACK or not is_request(data) \
                or not from_original_initiator(data):
            return
        pending = self._pending.get(pair)
        if pending is None:
            self._pending[pair] = _Pending(now, data, path)
        else:
            pending.request, pending.path = data, path

    # --- initiator: connect, reopen ---------------------------------------------------------

    def _port_order(self, remote: IPAddress) -> list[int]:
        """The ``tcp_port``s to try in turn: the one that last worked, then the list's."""
        ports = list(self.settings.ports)
        good = self._good_port.get(remote)
        return ports if good not in ports else [good] + [p for p in ports if p != good]

    def _next_port(self, remote: Endpoint) -> int | None:
        """The port to try after ``remote``'s failed; None once every port failed."""
        order = self._port_order(remote.addr)
        at = order.index(remote.port) + 1 if remote.port in order else len(order)
        return order[at] if at < len(order) else None

    def _connect(self, pair: Pair, path: Path, sa: SaKey, now: float,
                 port: int | None = None) -> Stream | None:
        """Connect for IKE_SA ``sa``: to ``port`` (the next one of a round), or else to
        the peer's preferred port if it is not waiting out failures."""
        local, remote = pair
        if (port is None and now < self._retry_after.get(remote, 0.0)) or \
                len(self._streams) >= self.settings.max_streams:
            return None
        family = socket.AF_INET6 if isinstance(remote, ipaddress.IPv6Address) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.counters["connects"] += 1
        target = Endpoint(remote, port if port is not None else self._port_order(remote)[0])
        try:
            self._tune(sock)
            if self.fwmark is not None:
                sock.setsockopt(socket.SOL_SOCKET, udp.SO_MARK, self.fwmark)
            sock.setblocking(False)
            if not local.is_unspecified:
                sock.bind((str(local), 0))
            err = sock.connect_ex((str(remote), target.port))
        except OSError as exc:
            sock.close()
            self.log.emit("tcp_connect_failed", local=str(local), remote=str(target),
                          error=errno.errorcode.get(exc.errno or 0, str(exc)))
            return None
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            following = self._next_port(target)
            if following is not None:
                return self._connect(pair, path, sa, now, following)
            self._connect_failed(local, target, err, now)
            return None
        bound = sock.getsockname()
        stream = Stream(sock, True, Endpoint(ipaddress.ip_address(bound[0]), bound[1]), target,
                        now, StreamDecoder(expect_prefix=False), last_frame_at=now,
                        engine_path=path, sa=sa, route=pair)
        stream.out += STREAM_PREFIX
        self._streams.add(stream)
        old = self._initiator.get((pair, sa))
        if old is not None:
            self._close(old, "replaced")
        self._associate(stream, sa)
        self.loop.add_writer(sock.fileno(), self._on_connected, stream)
        stream.writing = True
        return stream

    def _on_connected(self, stream: Stream) -> None:
        self.loop.remove_writer(stream.sock.fileno())
        stream.writing = False
        now = self.loop.time()
        err = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._attempt_failed(stream, err, "connect_failed", now)
            return
        stream.connected = True
        self._good_port[stream.remote.addr] = stream.remote.port
        self._failures.pop(stream.remote.addr, None)
        self._retry_after.pop(stream.remote.addr, None)
        self.loop.add_reader(stream.sock.fileno(), self._on_readable, stream)
        self.log.emit("tcp_stream_opened", role="initiator", local=str(stream.local),
                      remote=str(stream.remote))
        pair = stream.pair
        if self.settings.mode == TcpMode.FALLBACK and pair not in self._tcp_pairs:
            if pair not in self._pending:
                # UDP answered while we were connecting: no reason to leave it.
                self._close(stream, "udp_answered")
                return
            self._tcp_pairs.add(pair)
            pending = self._pending.pop(pair, None)
            self._next_trial[pair] = now + self.settings.retry_udp_every
            self.log.emit("tcp_path_fallback", local=str(pair[0]), remote=str(pair[1]))
            if pending is not None and sa_key(pending.request) in stream.sas:
                stream.engine_path = pending.path
                stream.inflight = pending.request
                stream.out += encode_ike(pending.request)
        # On every connection, first or again: the peer knows an IKE_SA of ours on this
        # pair by the stream it came in on, so each one updates its addresses over the
        # new stream (a no-op while none is established on the pair).
        self.on_switch(pair, "tcp", now)
        self._flush(stream)

    def _attempt_failed(self, stream: Stream, err: int, reason: str, now: float) -> None:
        """A connection refused or timed out: try the next ``tcp_port`` with what the
        stream held (prefix, queued frames); after the last one, wait (doubling)."""
        self._close(stream, reason, log=False)
        following = self._next_port(stream.remote)
        new = None
        if following is not None and stream.sa is not None and stream.engine_path is not None:
            new = self._connect(stream.pair, stream.engine_path, stream.sa, now, following)
        if new is None:
            self._connect_failed(stream.local.addr, stream.remote, err, now)
            return
        for sa in stream.sas:
            self._associate(new, sa)
        new.out[:] = stream.out  # nothing of it was sent: the prefix comes first again
        new.inflight = stream.inflight

    def _connect_failed(self, local: IPAddress, remote: Endpoint, err: int, now: float) -> None:
        # Doubling waits: a peer without TCP (charon) is not asked every second forever.
        failures = self._failures.get(remote.addr, 0)
        self._failures[remote.addr] = failures + 1
        self._retry_after[remote.addr] = now + min(
            MAX_RETRY_WAIT, self.settings.fallback_after * 2 ** min(failures, 16))
        name = errno.errorcode.get(err, str(err))
        if remote.addr not in self._unavailable:
            self._unavailable.add(remote.addr)
            self.log.emit("tcp_unavailable", local=str(local), remote=str(remote), error=name)

    def _reopen(self, old: Stream, now: float) -> None:
        """A broken initiator stream of a pair still on TCP: connect again, resend the
        request in flight (the engine would, but only at its next retransmission)."""
        pair, path = old.pair, old.engine_path
        if path is None or old.inflight is None or not (
                self.settings.mode == TcpMode.ALWAYS or pair in self._tcp_pairs):
            return  # nothing waits: the engine's next message reconnects if need be
        if old.sa is None:
            return
        new = self._connect(pair, path, old.sa, now)
        if new is None:
            return
        for sa in old.sas:
            self._associate(new, sa)
        new.inflight = old.inflight
        new.out += encode_ike(old.inflight)
        self.log.emit("tcp_stream_reopened", local=str(pair[0]), remote=str(new.remote))

    # --- responder: accept ------------------------------------------------------------------

    def _on_accept(self, listener: socket.socket) -> None:
        now = self.loop.time()
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # EMFILE and the like: the backlog keeps them for later
            remote = Endpoint(ipaddress.ip_address(peer[0]), peer[1])
            reason = None
            if len(self._streams) >= self.settings.max_streams:
                reason = "max_streams"
            elif self._per_source.get(remote.addr, 0) >= self.settings.max_per_source:
                reason = "max_per_source"
            if reason is not None:
                sock.close()
                self._note_refused(reason, now)
                continue
            try:
                self._tune(sock)
                sock.setblocking(False)
                host, port = sock.getsockname()[:2]
            except OSError:
                sock.close()
                continue
            local = Endpoint(ipaddress.ip_address(host), port)
            stream = Stream(sock, False, local, remote, now,
                            StreamDecoder(expect_prefix=True), connected=True,
                            last_frame_at=now)
            self._streams.add(stream)
            self._responder[(local.addr, remote)] = stream
            self._per_source[remote.addr] = self._per_source.get(remote.addr, 0) + 1
            self.counters["accepted"] += 1
            self.loop.add_reader(sock.fileno(), self._on_readable, stream)

    def _note_refused(self, reason: str, now: float) -> None:
        self._refused += 1
        self.counters["refused"] += 1
        if self._refused_logged_at is None or now - self._refused_logged_at >= \
                REFUSED_LOG_INTERVAL:
            self.log.emit("tcp_refused", reason=reason, count=self._refused)
            self._refused, self._refused_logged_at = 0, now

    # --- both: read, write, close -------------------------------------------------------------

    def _tune(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        with contextlib.suppress(AttributeError, OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)

    def _on_readable(self, stream: Stream) -> None:
        now = self.loop.time()
        for _ in range(READS_PER_WAKEUP):
            if stream.closed:
                return
            try:
                chunk = stream.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._broken(stream, errno.errorcode.get(exc.errno or 0, "error"), now)
                return
            if not chunk:
                self._broken(stream, "closed_by_peer", now)
                return
            dropped = stream.decoder.dropped
            try:
                frames = stream.decoder.feed(chunk)
            except FramingError:
                self._close(stream, "framing")
                return
            self.counters["dropped_frames"] += stream.decoder.dropped - dropped
            if not frames:
                continue
            stream.last_frame_at = now
            self.counters["frames_in"] += len(frames)
            for frame in frames:
                if stream.closed:
                    return
                if frame.kind == FrameKind.ESP:
                    self.on_esp(frame.data, now)
                    continue
                stream.ike_frames += 1
                if stream.ike_frames == 1 and not stream.initiator:
                    self.log.emit("tcp_stream_opened", role="responder",
                                  local=str(stream.local), remote=str(stream.remote))
                if stream.initiator and not is_request(frame.data):
                    stream.inflight = None
                sa = sa_key(frame.data)
                if sa is not None:
                    # A rekey successor the peer created speaks first here (RFC 9329 6).
                    self._associate(stream, sa)
                path = stream.engine_path if stream.initiator and stream.engine_path \
                    else stream.path
                self.on_ike(frame.data, path, now)

    def _write(self, stream: Stream, frame: bytes) -> None:
        if stream.closed:
            return
        if len(stream.out) + len(frame) > MAX_QUEUED:
            self._close(stream, "send_queue_full")
            return
        stream.out += frame
        self.counters["frames_out"] += 1
        if stream.connected and not stream.writing:
            self._flush(stream)

    def _flush(self, stream: Stream) -> None:
        if stream.writing and stream.connected:
            self.loop.remove_writer(stream.sock.fileno())
            stream.writing = False
        while stream.out:
            try:
                sent = stream.sock.send(stream.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._broken(stream, errno.errorcode.get(exc.errno or 0, "error"),
                             self.loop.time())
                return
            del stream.out[:sent]
        if stream.out and not stream.closed:
            self.loop.add_writer(stream.sock.fileno(), self._flush, stream)
            stream.writing = True

    def _broken(self, stream: Stream, reason: str, now: float) -> None:
        self._close(stream, reason)
        if stream.initiator:
            self._reopen(stream, now)

    def _close(self, stream: Stream, reason: str, *, log: bool = True) -> None:
        if stream.closed:
            return
        stream.closed = True
        fd = stream.sock.fileno()
        if self._loop is not None and fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        stream.sock.close()
        self._streams.discard(stream)
        if stream.initiator:
            for sa in stream.sas:
                if stream.route is not None and self._initiator.get((stream.route, sa)) is stream:
                    del self._initiator[(stream.route, sa)]
        else:
            key = (stream.local.addr, stream.remote)
            if self._responder.get(key) is stream:
                del self._responder[key]
            left = self._per_source.get(stream.remote.addr, 1) - 1
            if left > 0:
                self._per_source[stream.remote.addr] = left
            else:
                self._per_source.pop(stream.remote.addr, None)
        if log and (stream.initiator or stream.ike_frames):
            self.log.emit("tcp_stream_closed", role="initiator" if stream.initiator
                          else "responder", local=str(stream.local), remote=str(stream.remote),
                          reason=reason)

    # --- timers -----------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = self.loop.time()
        self._timer = self.loop.call_later(HOUSEKEEPING, self._housekeeping)
        settings = self.settings
        for stream in list(self._streams):
            if not stream.connected:
                if now - stream.opened_at > CONNECT_TIMEOUT:
                    self._attempt_failed(stream, errno.ETIMEDOUT, "connect_timeout", now)
                continue
            quiet = now - stream.last_frame_at
            slow = not stream.initiator and (stream.decoder.mid_frame or stream.ike_frames == 0
                                             or stream.ike_sent == 0)
            if slow and quiet > settings.slow_timeout:
                self._close(stream, "slow_sender")
            elif quiet > settings.idle_timeout:
                self._close(stream, "idle")
        if settings.mode != TcpMode.FALLBACK:
            return
        for pair, pending in list(self._pending.items()):
            if pair in self._tcp_pairs:
                self._pending.pop(pair, None)
            elif now - pending.since >= settings.fallback_after \
                    and not self._streams_of(pair):
                sa = sa_key(pending.request)
                if sa is not None:
                    self._connect(pair, pending.path, sa, now)
        for pair, deadline in list(self._trial.items()):
            if now >= deadline:
                del self._trial[pair]
        for pair in list(self._tcp_pairs):
            if not self._streams_of(pair) and pair not in self._trial:
                continue
            if now >= self._next_trial.get(pair, 0.0) and pair not in self._trial:
                self._trial[pair] = now + UDP_TRIAL
                self._next_trial[pair] = now + settings.retry_udp_every
