"""``mobike-vici run``'s data-plane signals: ESP to and from the peers of charon's IKE_SAs.

charon (kernel-libipsec or the kernel's XFRM) carries the ESP; the controller only
watches it. One packet socket (``AF_PACKET``, all interfaces of the namespace) with a
classic BPF filter (``net.esp_bpf``) lets nothing but ESP between us and the tracked
peers reach Python, cut to its headers. Each packet is matched to the IKE_SA whose
current path (charon's, from ``ike-updown``/``ike-update``) it travels, in O(1), and
fed to that SA's ``mobike.health`` model (the native daemon's, with the same keys):

- inbound silent while outbound flows, longer than the flow's own pace allows
  (``health.Stall``): a burst of ICMP probes on the path at once (``inbound_stalled``);
  all unanswered: the path manager hears the active path failed (``path_down`` with
  reason ``data_plane``) and moves as usual;
- after every move of charon's (``health.MoveCheck``): verified when ESP from the peer
  arrives on the new path (``data_path_verified``); nothing expected back when the peer
  was not sending before the fault (``data_path_unverified``); else, when none comes
  within the bound, every CHILD_SA of the IKE_SA is rekeyed over VICI
  (``data_path_repair_started``), then ``data_path_repaired`` (``dead_ms``) or
  ``handover_failed`` (``data_path_dead``).

A socket that cannot be opened (no CAP_NET_RAW) leaves the controller as it was
(``esp_watch_unavailable``): probes alone detect failures then.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends.vici import ViciError
from ..backends.vici.steer import egress
from ..mobike import health as hm
from ..mobike.policy import recent_rtt
from ..net.esp_bpf import MAX_PEERS, SNAP, esp_filter, parse_addresses, parse_spi
from ..net.sock_filter import attach_filter
from ..types import IPAddress, Path
from . import nat_check
from .sibling_check import SiblingCheck

if TYPE_CHECKING:
    from ..backends.vici.mobility import TrackedSa
    from .watch_host import WatchHost

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
READ_BATCH = 64  # packets read per wake-up at most: the loop has other work too
CHECKING = (hm.Phase.WATCHING, hm.Phase.REPAIRING)
"""While a move's data path is checked, its silence is the check's to judge: no burst."""
RCVBUF = 256 * 1024  # bytes queued in the kernel at most; beyond it the kernel drops
FOREIGN_FOR = 0.5
"""Seconds the peer's ESP may come only on SPIs charon does not list before the CHILD_SAs
are rekeyed (charon's event for a new CHILD_SA comes a few ms after the peer may use it)."""
FOREIGN_GAP = 5.0
"""Seconds between two such repairs at least: bounded if the rekeys do not help."""
VALID_SPIS = 4
"""Inbound SPIs remembered per IKE_SA once charon listed them (``_Watched.valid_spis``)."""
REKEY_GAP = 0.05
"""Seconds at most between the old IKE_SA's watch going and the new one's coming for the
new one to count as its rekey on the same path (both follow one VICI event)."""
SRTT_REFRESH = 0.05
"""Seconds between two reads of the path manager's RTT for a watched path: the stall
threshold and the burst follow its probes (every probe interval on the active path), not
the RTT it had when charon moved there (soak: a latency spike's 155 ms, kept for
seconds after the spike ended, made a blackhole's stall wait 0.63 s, not 0.12 s)."""


class EspTap:
    """The packet socket: ``on_esp(local, remote, inbound, spi)`` for every ESP packet that
    passes the filter for the current peers. Must be used from a running loop."""

    def __init__(self, on_esp: Callable[[IPAddress, IPAddress, bool, int | None], None]
                 ) -> None:
        self.on_esp = on_esp
        self.packets = 0
        self.dropped = 0  # not IPv4/IPv6, or no peer address in it (filter raced a change)
        self._sock: socket.socket | None = None
        self._filter_buf: Any = None  # the kernel copies it; kept alive until replaced
        self._peers: frozenset[IPAddress] = frozenset()

    def open(self) -> None:
        """Raises OSError when packet sockets are not allowed here."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._attach(sock, frozenset())
            sock.setblocking(False)
            _drain(sock)  # what arrived before the filter was attached
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def set_peers(self, peers: frozenset[IPAddress]) -> None:
        """Watch ESP between us and these addresses (the first ``MAX_PEERS``)."""
        peers = frozenset(sorted(peers, key=lambda a: (a.version, a))[:MAX_PEERS])
        if peers == self._peers or self._sock is None:
            return
        self._attach(self._sock, peers)

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # loop already closed
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _attach(self, sock: socket.socket, peers: frozenset[IPAddress]) -> None:
        self._filter_buf = attach_filter(sock, esp_filter(peers))
        self._peers = peers

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(SNAP)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            addrs = parse_addresses(data)
            if addrs is None:
                self.dropped += 1
                continue
            src, dst = addrs
            self.packets += 1
            if addr[2] == PACKET_OUTGOING:
                self.on_esp(src, dst, False, None)
            else:
                self.on_esp(dst, src, True, parse_spi(data))


def _stall_cap(s: hm.HealthSettings) -> float:
    """A quiet peer's stall threshold doubles up to the path manager's probe interval plus
    a burst's wait: its regular answers re-arm the watch (``path_alive``), so a silence
    just over one interval means a probe went unanswered, not that the cadence jittered."""
    return s.stall_cap + s.burst_timeout


def _pair(path: Path) -> tuple[IPAddress, IPAddress]:
    return path.local.addr, path.remote.addr


def _drain(sock: socket.socket) -> None:
    for _ in range(10_000):
        try:
            sock.recv(1)
        except OSError:
            return


@dataclass(slots=True)
class _Watched:
    spi: str
    stall: hm.Stall
    check: hm.MoveCheck
    path: Path  # charon's current path: where its ESP travels
    old: Path | None = None  # where it was before the move being verified
    moved_at: float = 0.0  # when charon last moved the IKE_SA
    packets_in: int = 0  # ESP seen on charon's current path, both ways (the check's sample)
    packets_out: int = 0
    burst: hm.Burst | None = None
    suspected: bool = False  # this stall already made a burst
    quiet: bool = False  # a burst was answered and no ESP from the peer came since
    last_burst: float | None = None
    srtt: float | None = None
    srtt_at: float | None = None  # when ``srtt`` was read from the path manager
    rekeyed: int = 0  # CHILD_SAs the last repair rekeyed
    foreign_since: float | None = None  # the peer's ESP on SPIs charon lacks, since then
    foreign_repair: float | None = None  # when that last made a repair
    valid_spis: list[int] = field(default_factory=list)
    """The last inbound SPIs seen listed by charon: still valid while the peer moves to a
    rekeyed one (charon's table drops the old CHILD_SA at the rekey)."""
    refused: bool = False  # charon refused every rekey of the last repair
    last_inbound: float | None = None  # the peer's last ESP on ``path``: a sign of life
    last_outbound: float | None = None  # our last ESP on ``path``: charon's CHILD_SA moved
    before_rekey: float | None = None
    """The peer's last ESP on ``path`` under the IKE_SA this one rekeyed, until a move."""
    timer: asyncio.TimerHandle | None = None
    dead_row: dict[tuple[IPAddress, IPAddress], int] = field(default_factory=dict)
    """(local, remote) -> ``DataPathDead`` verdicts in a row on that path (its hold)."""

    def sample(self) -> dict[int, tuple[int, int]]:
        return {0: (self.packets_in, self.packets_out)}


class EspWatch:
    """The controller's data-plane watch of every tracked IKE_SA (see the module doc)."""

    def __init__(self, ctl: WatchHost, sibling_check: SiblingCheck,
                 settings: hm.HealthSettings | None = None) -> None:
        self.ctl = ctl
        self.sibling_check = sibling_check
        self.settings = settings or hm.HealthSettings()
        self.tap = EspTap(self._on_esp)
        self.available = False
        self._sas: dict[str, _Watched] = {}
        self._by_path: dict[tuple[IPAddress, IPAddress], str] = {}
        self._by_old: dict[tuple[IPAddress, IPAddress], str] = {}
        """The path each IKE_SA left at its last move (not another SA's current path)."""
        self._gone: dict[tuple[IPAddress, IPAddress], tuple[float, float]] = {}
        """Path -> (when its IKE_SA's watch went, the peer's last ESP there): for a rekey."""
        self._probe_ids: dict[int, str] = {}  # prober wire id -> IKE_SA of a burst probe

    def set_settings(self, settings: hm.HealthSettings) -> None:
        """A reloaded policy: for the next stalls and moves."""
        self.settings = settings
        for w in self._sas.values():
            w.stall.floor, w.stall.cap = settings.stall_timeout, _stall_cap(settings)
            w.check.settings = settings

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.tap.open()
        except OSError as exc:
            self.ctl.log.write("warning", "esp_watch_unavailable",
                               {"error": exc.strerror or str(exc)})
            return
        self.available = True

    def close(self) -> None:
        for w in self._sas.values():
            if w.timer is not None:
                w.timer.cancel()
        self._sas.clear()
        self.tap.close()

    # -- the controller's hooks -----------------------------------------------------------

    def track(self, sa: TrackedSa) -> None:
        """A newly tracked IKE_SA (charon initiated it)."""
        if not self.available:
            return
        spi = sa.info.ike_spi
        s = self.settings
        w = self._sas[spi] = _Watched(spi, hm.Stall(s.stall_timeout, _stall_cap(s)),
                                      hm.MoveCheck(s), sa.info.path)
        gone = self._gone.pop(_pair(sa.info.path), None)
        if gone is not None and self.ctl.now - gone[0] <= REKEY_GAP:
            w.before_rekey = gone[1]
        self._rebuild()
        info = self.ctl.client.table.get(spi) or sa.info
        self.ctl.spawn(self._nat_baseline(spi, sa.info.path, info.unique_id))

    def forget(self, spi: str) -> None:
        w = self._sas.pop(spi, None)
        if w is None:
            return
        if w.timer is not None:
            w.timer.cancel()
        now = self.ctl.now
        self._gone = {k: v for k, v in self._gone.items() if now - v[0] <= REKEY_GAP}
        if w.last_inbound is not None:
            self._gone[_pair(w.path)] = (now, w.last_inbound)
        self._rebuild()

    def moved(self, sa: TrackedSa) -> None:
        """charon moved the IKE_SA (``ike-update``): verify the data path follows."""
        w = self._sas.get(sa.info.ike_spi)
        if w is None:
            return
        now = self.ctl.now
        if w.check.phase is hm.Phase.DONE or w.old is None:
            w.old = w.path
        new = sa.info.path
        w.before_rekey = None  # the move's UPDATE_SA_ADDRESSES gave the peer our mapping
        if w.path != new:
            # the old path's ESP says nothing of the new one
            w.last_inbound = w.last_outbound = None
        w.path, w.moved_at = new, now
        w.srtt, w.srtt_at = self._srtt(sa), now
        w.burst, w.suspected = None, False
        if self.sibling_check.suspect(w.spi, new, now):
            # charon landed by itself on the uplink whose path just died silently: its
            # probes must answer at once, else this path is dead too and the manager moves.
            w.burst, w.suspected, w.last_burst = hm.Burst.at(
                now, w.srtt, self.settings.burst_timeout), True, now
        w.stall.reset()
        w.check.on_moved(new, w.old, started=now, srtt=w.srtt, sample=w.sample(),
                         flow=w.stall.flow, now=now)
        self._rebuild()
        self._pump(w)

    def rekey_undone(self, spi: str, unique_id: int) -> None:
        """charon reported a CHILD_SA rekeyed, then took it down instead: its own rekey
        of it, refused for now by the peer and asked again, met the peer's DELETE of it
        (charon 5.9.8 then never installs the new CHILD_SA's outbound half; with
        kernel-libipsec its route went with the old one, so our traffic leaves in the
        clear; soak: 2.9 s, until the next move's rekey). A rekey of the CHILD_SAs from
        our side installs both halves at once."""
        w, sa = self._sas.get(spi), self.ctl.sas.get(spi)
        if w is None or sa is None:
            return
        self._repair_for(w, sa, "rekey_undone", 0.0, child=unique_id)

    def last_inbound(self, spi: str) -> float | None:
        """When ESP from the peer last arrived on the IKE_SA's current path (None:
        not since it was tracked or moved, or not watched)."""
        w = self._sas.get(spi)
        return w.last_inbound if w is not None else None

    def last_outbound(self, spi: str) -> float | None:
        """When our ESP last left on the IKE_SA's current path (None: not since it was
        tracked or moved, or not watched): charon's outbound CHILD_SA is there."""
        w = self._sas.get(spi)
        return w.last_outbound if w is not None else None

    def path_alive(self, spi: str, path: Path) -> None:
        """The path manager's probe on ``path`` was answered. Where charon has the IKE_SA
        and its peer is known quiet (a burst answered, no ESP from it since), the silence
        counts from this answer and the next stall may burst again: one-way traffic stays
        watched at the probe's pace, not only until its first answered burst."""
        w = self._sas.get(spi)
        if w is None or not w.quiet or w.burst is not None \
                or path.local.addr != w.path.local.addr \
                or path.remote.addr != w.path.remote.addr:
            return
        w.suspected = False
        w.stall.on_alive()

    def on_probe_reply(self, wire_id: int) -> bool:
        """True when the reply answered a burst probe of ours."""
        spi = self._probe_ids.pop(wire_id, None)
        if spi is None:
            return False
        w = self._sas.get(spi)
        if w is not None:
            if w.burst is not None:
                self._check_nat_mapping(w)
            # A quiet peer, not a dead path: no more bursts until its ESP comes again or
            # the path manager's next probe is answered (``path_alive``).
            w.burst, w.quiet = None, True
            w.stall.on_alive()
            self._pump(w)
        return True

    def _check_nat_mapping(self, w: _Watched) -> None:
        """The path answered while the peer's ESP, flowing until the stall, stopped:
        behind a NAT, charon checks the mapping now, not at its DPD (``nat_check``)."""
        info = self.ctl.client.table.get(w.spi)
        if info is None or w.quiet:
            return
        if w.last_inbound is None and w.before_rekey is not None:
            self.ctl.spawn(self._stale_since_rekey(w.spi, w.path, info.unique_id, info.conn,
                                                   self.ctl.now - w.before_rekey))
        elif w.last_inbound is not None:
            self.ctl.spawn(self._nat_mapping_check(w.spi, w.path, info.unique_id, info.conn,
                                                   self.ctl.now - w.last_inbound))

    async def _nat_mapping_check(self, spi: str, path: Path, unique_id: int, conn: str,
                                 silent: float) -> None:
        if not await nat_check.behind_nat(self.ctl.client, spi, unique_id):
            return
        self.ctl.log.emit("nat_mapping_check", conn=conn, ike_spi=spi, local=str(path.local),
                          remote=str(path.remote), silent_ms=round(silent * 1000, 1))
        self.ctl.prearm_roam(spi, path, reason="nat_check")

    async def _stale_since_rekey(self, spi: str, path: Path, unique_id: int, conn: str,
                                 silent: float) -> None:
        """The peer's ESP stopped before the IKE rekey that made this IKE_SA and has not
        come on it: the NAT rebound first, and charon's baseline (``_nat_baseline``) took
        the new mapping, so no check of charon's sees a change, and charon sends no
        UPDATE_SA_ADDRESSES on an unchanged path (soak: 2.18 s, until a move by chance).
        The path is left as dead for the data plane (``_leave_dead_path``): the move away
        and the one back both tell the peer where we are."""
        if not await nat_check.behind_nat(self.ctl.client, spi, unique_id):
            return
        w, sa = self._sas.get(spi), self.ctl.sas.get(spi)
        if w is None or sa is None or w.last_inbound is not None or w.path != path:
            return  # its ESP came meanwhile, or charon moved
        self.ctl.log.emit("nat_mapping_check", conn=conn, ike_spi=spi, local=str(path.local),
                          remote=str(path.remote), silent_ms=round(silent * 1000, 1),
                          rekeyed=True)
        self._leave_dead_path(w, sa, path, self.ctl.now)

    async def _nat_baseline(self, spi: str, path: Path, unique_id: int) -> None:
        """A new IKE_SA behind a NAT: charon's first check only records the mapping
        (``nat_check``), so it is made now, while the mapping is the one charon uses."""
        if spi in self._sas and await nat_check.behind_nat(self.ctl.client, spi, unique_id):
            self.ctl.prearm_roam(spi, path, reason="nat_baseline")

    # -- packets ------------------------------------------------------------------------

    def _on_esp(self, local: IPAddress, remote: IPAddress, inbound: bool,
                spi_in: int | None = None) -> None:
        spi = self._by_path.get((local, remote))
        w = self._sas.get(spi) if spi is not None else None
        if w is None:
            if not inbound:
                self._left_behind(local, remote)
            return  # another path of a peer we watch (e.g. charon not there yet)
        now = self.ctl.now
        if inbound and spi_in is not None:
            self._note_spi(w, spi_in, now)
        if inbound:
            w.packets_in += 1
            w.last_inbound = now
            w.stall.on_traffic(1, 0, now, w.srtt)
            w.burst, w.suspected, w.quiet = None, False, False
            if w.check.phase is not hm.Phase.DONE:
                w.check.observe(w.sample(), now)  # verified at once, not at the next poll
                self._pump(w)
            return
        w.packets_out += 1
        w.last_outbound = now
        if w.srtt is None or w.srtt_at is None or now - w.srtt_at >= SRTT_REFRESH:
            sa = self.ctl.sas.get(w.spi)
            if sa is not None:
                w.srtt, w.srtt_at = self._srtt(sa), now
        w.stall.on_traffic(0, 1, now, w.srtt)
        if not w.stall.stalled or w.suspected or w.check.phase in CHECKING:
            return  # per packet: nothing more unless a new stall wants its burst
        if w.last_burst is not None and now - w.last_burst < hm.REARM_GAP:
            return  # a quiet peer costs at most one burst per REARM_GAP
        w.suspected, w.last_burst = True, now
        w.burst = hm.Burst.at(now, w.srtt, self.settings.burst_timeout)
        # No route event before the verdict: charon (``check_current_path``) would send a
        # DPD on the dying path, and the failover's MOBIKE update would then wait for its
        # retransmission (4 s), not run 100 ms after the failover's routes.
        sa = self.ctl.sas.get(w.spi)
        since = w.stall.since if w.stall.since is not None else now
        self.ctl.log.emit("inbound_stalled", conn=sa.info.conn if sa is not None else "",
                          ike_spi=w.spi, local=str(w.path.local), remote=str(w.path.remote),
                          silent_ms=round((now - since) * 1000, 1))
        self._pump(w)
        if sa is not None:
            self.sibling_check.stalled(sa, w.path)

    def _note_spi(self, w: _Watched, spi_in: int, now: float) -> None:
        """The peer's ESP must come on an inbound SPI of the IKE_SA's CHILD_SAs. Soak
        (seed 51, a blackhole of 35.6 s and an IKE_SA lost): after a rekey collision under
        loss, charon had destroyed the CHILD_SA the gateway then completed (charon's own
        rekey of it got CHILD_SA_NOT_FOUND, so it made a new one beside it), and the
        gateway sent on that one: ESP came both ways on the path, none of it usable. Only
        such SPIs for FOREIGN_FOR: the CHILD_SAs are rekeyed (the peer then sends on the
        new one), at most once per FOREIGN_GAP."""
        if spi_in in w.valid_spis:
            w.foreign_since = None
            return
        info = self.ctl.client.table.get(w.spi)
        if info is None or not info.children:
            return
        wire = f"{spi_in:08x}"
        if any(c.spi_in.lower() == wire for c in info.children):
            w.foreign_since = None
            w.valid_spis = [*w.valid_spis[-(VALID_SPIS - 1):], spi_in]
            return
        if w.foreign_since is None:
            w.foreign_since = now
        if now - w.foreign_since < FOREIGN_FOR or (
                w.foreign_repair is not None and now - w.foreign_repair < FOREIGN_GAP):
            return
        sa = self.ctl.sas.get(w.spi)
        if sa is None:
            return
        w.foreign_repair = now
        self._repair_for(w, sa, "unknown_spi", round((now - w.foreign_since) * 1000, 1),
                         spi=wire)

    def _repair_for(self, w: _Watched, sa: TrackedSa, reason: str, waited_ms: float,
                    **detail: object) -> None:
        """A repair no move's check asked for (``reason`` says what showed it): every
        CHILD_SA of the IKE_SA is rekeyed now."""
        self.ctl.log.write("warning", "data_path_repair_started", {
            "conn": sa.info.conn, "ike_spi": w.spi, "local": str(w.path.local),
            "remote": str(w.path.remote), "waited_ms": waited_ms, "attempt": 1,
            "reason": reason, **detail})
        self.ctl.spawn(self._repair(w, sa))

    def _left_behind(self, local: IPAddress, remote: IPAddress) -> None:
        """Our ESP still leaves by the path the last move left: charon's CHILD_SA stayed
        there (over kernel-libipsec charon moves none whose encapsulation changes: its new
        one's outbound half waits for the rekey, or for the peer's DELETE of the old one,
        which charon may drop; soak: 2 s until a blackhole healed). Once that lasted the
        verify bound (charon's own rekey takes a round trip or two), it counts as ours
        sent while the move's check watches: nothing back on the new path within the
        bound is then a repair (a rekey on the new path), not an idle tunnel."""
        spi = self._by_old.get((local, remote))
        w = self._sas.get(spi) if spi is not None else None
        if w is not None and w.check.phase is hm.Phase.WATCHING and \
                self.ctl.now - w.moved_at >= self.settings.verify_timeout:
            w.packets_out += 1

    # -- the model ----------------------------------------------------------------------

    def _pump(self, w: _Watched) -> None:
        now = self.ctl.now
        sa = self.ctl.sas.get(w.spi)
        burst = w.burst
        if burst is not None:
            while burst.due(now):
                self._send_probe(w)
            if burst.missed(now):
                w.burst = None
                self._dead(w, sa, burst.sent, now)
        while (event := w.check.next_event()) is not None:
            self._act(w, sa, event, now)
        times = [t for t in (w.check.get_timer(),
                             w.burst.deadline() if w.burst is not None else None)
                 if t is not None]
        when = min(times) if times else None
        if w.timer is not None and (when is None or w.timer.when() != when):
            w.timer.cancel()
            w.timer = None
        if when is not None and w.timer is None:
            w.timer = asyncio.get_running_loop().call_at(max(when, now + 0.001),
                                                         self._on_timer, w.spi)

    def _on_timer(self, spi: str) -> None:
        w = self._sas.get(spi)
        if w is None:
            return
        w.timer = None
        due = w.check.get_timer()
        if due is not None and due <= self.ctl.now:
            w.check.observe(w.sample(), self.ctl.now)
        self._pump(w)

    def _send_probe(self, w: _Watched) -> None:
        prober = self.ctl.prober
        out = egress(self.ctl.monitor.state, w.path.local.addr)
        if prober is None or out is None:
            return  # unanswered, so counted as a miss when the burst times out
        wire_id = self.ctl.next_wire_id()
        self._probe_ids[wire_id] = w.spi
        while len(self._probe_ids) > 4 * MAX_PEERS:  # bound: oldest first, long timed out
            self._probe_ids.pop(next(iter(self._probe_ids)))
        if not prober.send(w.path, wire_id, out[0]):
            self._probe_ids.pop(wire_id, None)

    def _dead(self, w: _Watched, sa: TrackedSa | None, missed: int, now: float) -> None:
        self.ctl.log.write("warning", "data_path_dead", {
            "conn": sa.info.conn if sa is not None else "", "ike_spi": w.spi,
            "local": str(w.path.local), "remote": str(w.path.remote), "missed": missed})
        if sa is not None:
            self.sibling_check.silent_death(w.spi, w.path, now)
            sa.manager.on_active_path_failed(now, reason="data_plane")
            self.ctl.pump(sa)

    def _act(self, w: _Watched, sa: TrackedSa | None, event: hm.Event, now: float) -> None:
        log = self.ctl.log
        conn = sa.info.conn if sa is not None else ""
        where = {"local": str(w.path.local), "remote": str(w.path.remote)}
        match event:
            case hm.DataPathVerified():
                w.dead_row.pop(_pair(event.path), None)
                log.emit("data_path_verified", conn=conn, ike_spi=w.spi, **where,
                         after_ms=event.after_ms)
                self.ctl.data_path_works(w.spi, w.path)
            case hm.DataPathUnverified():
                log.emit("data_path_unverified", conn=conn, ike_spi=w.spi, **where,
                         reason=event.reason)
            case hm.RepairRequested():
                log.write("warning", "data_path_repair_started", {
                    "conn": conn, "ike_spi": w.spi, **where, "waited_ms": event.waited_ms,
                    "attempt": event.attempt})
                if sa is not None:
                    self.ctl.spawn(self._repair(w, sa))
            case hm.DataPathRepaired():
                w.dead_row.pop(_pair(event.path), None)
                log.write("warning", "data_path_repaired", {
                    "conn": conn, "ike_spi": w.spi, **where, "dead_ms": event.dead_ms,
                    "repair_ms": event.repair_ms, "rekeyed": w.rekeyed})
                self.ctl.data_path_works(w.spi, w.path)
            case hm.DataPathDead():
                log.write("warning", "handover_failed", {
                    "conn": conn, "ike_spi": w.spi, **where,
                    "old_local": str(event.old_path.local),
                    "old_remote": str(event.old_path.remote),
                    "reason": "data_path_dead", "dead_ms": event.dead_ms,
                    "detail": "repair_refused" if w.refused else "no_inbound_esp"})
                if sa is not None:
                    self._leave_dead_path(w, sa, event.path, now)

    def _leave_dead_path(self, w: _Watched, sa: TrackedSa, path: Path, now: float) -> None:
        """IKE and probes pass on the path, the peer's ESP does not even after the repair:
        probes alone would keep it up for good (soak: 35 s with no move). The path manager
        hears it failed and holds it out of the choice (``health.dead_hold``, longer for
        each verdict in a row), so the IKE_SA moves to another candidate; a move makes
        charon send UPDATE_SA_ADDRESSES, which also sets the peer's CHILD_SAs right."""
        if _pair(sa.manager.active_path) != _pair(path):
            return  # charon or the manager moved on meanwhile: that move has its own check
        row = w.dead_row[_pair(path)] = w.dead_row.get(_pair(path), 0) + 1
        sa.manager.on_active_path_failed(now, reason="data_path_dead", hold=hm.dead_hold(row))
        self.ctl.pump(sa)

    async def _repair(self, w: _Watched, sa: TrackedSa) -> None:
        """Rekey every CHILD_SA from our side: CREATE_CHILD_SA has its own window, so it
        goes through even while the peer's own request (which blocks its rekey) is out."""
        info = self.ctl.client.table.get(w.spi) or sa.info
        children = list(info.children)
        errors: list[str] = []
        w.rekeyed, w.refused = 0, False
        for child in children:
            try:
                await self.ctl.client.call("rekey", {"child-id": str(child.unique_id)})
                w.rekeyed += 1
            except ViciError as exc:
                errors.append(str(exc))
        if not children or len(errors) == len(children):
            # The check's repair bound ends in handover_failed (data_path_dead).
            w.refused = True
            self.ctl.log.emit("rekey_failed", conn=info.conn, ike_spi=w.spi,
                              error="; ".join(errors) or "no CHILD_SA")

    # -- helpers ------------------------------------------------------------------------

    def _rebuild(self) -> None:
        self._by_path = {(w.path.local.addr, w.path.remote.addr): spi
                         for spi, w in self._sas.items()}
        self._by_old = {_pair(w.old): spi for spi, w in self._sas.items()
                        if w.old is not None and _pair(w.old) not in self._by_path}
        peers: set[IPAddress] = set()
        for spi, w in self._sas.items():
            peers.add(w.path.remote.addr)
            sa = self.ctl.sas.get(spi)
            if sa is not None:
                peers.update(p.path.remote.addr for p in sa.manager.paths())
        with contextlib.suppress(OSError, ValueError):
            self.tap.set_peers(frozenset(peers))

    def _srtt(self, sa: TrackedSa) -> float | None:
        """The RTT of the path charon is on (its uplink's candidate), as recent as the
        path manager's probes have it (``recent_rtt``)."""
        paths = sa.manager.paths()
        for info in paths:
            if info.path.local.addr == sa.info.path.local.addr and info.srtt is not None:
                return recent_rtt(info)
        active = sa.manager.active_path
        for info in paths:
            if info.path == active:
                return recent_rtt(info)
        return None
