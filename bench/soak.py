"""Soak and chaos: one tunnel per pair, a seeded random fault every few seconds for a while.

```
bench/soak.py --duration SECONDS --seed N --pairs native-charon,native-native,controller[,charon]
```

Per pair, in a lab of its own (all pairs at once, side by side): the mobile topology
(``lab.topology.mobile``: mob with uplinks m0 and m1 through rtr to gw, dual stack,
a carrier NAT on m1), mob initiates and gets a virtual IP, a 100 Hz ping runs from mob
through the tunnel to gw's inner address (``ping -D``: each reply stamped), and the
IKE_SA rekeys every minute and its CHILD_SA every 45 s (mob's ``rekey_time``), all the
while. Pairs (mob end - gw end):

- ``native-charon``: ``mobike-vici native`` - charon; ``native-native``: ours at both ends;
- ``controller``: charon + ``mobike-vici run`` - charon; ``charon``: charon alone - charon
  (the reference: what strongSwan does by itself under the same faults).

Faults, one at a time, kinds drawn by a ``random.Random(seed)`` (the same sequence of
kinds for every pair), each held for a while and undone, a short pause after each:

- ``link_down``: the active uplink's link goes down in mob (one netlink request of the
  bench's, stamped right before it: ``lab.link_switch``), then up again;
- ``blackhole``: rtr silently drops everything of the active uplink, then heals it;
- ``nat_rebind``: the carrier NAT on m1 gets a new port range and forgets its mappings
  (the public port of every m1 flow changes);
- ``address_readd``: the active uplink's IPv4 address is removed, then added back
  (with its default route);
- ``ipv4_death``: every uplink's IPv4 dies silently (IPv6 stays), then comes back;
- ``loss``: 5 % of every forwarded packet dropped in rtr for 5 s (nftables numgen);
- ``latency_spike``: for 2-3 s, everything rtr receives from the active uplink waits
  200 ms in a userspace delay line (``lab.delay_line``: these kernels have no netem)
  before it is forwarded; the path works throughout, so a move away is a false move;
- ``peer_restart``: the gw daemon is stopped (SIGTERM) and started again;
- ``charon_restart`` (controller and charon pairs): mob's charon is restarted.

Measured, per pair: per fault kind the outage (the longest silence of the ping's replies
from the fault until the next fault, so a fault that breaks nothing shows the ping's
own spacing), median / p95 / max; ``sas_lost``: IKE_SAs mob had to establish from
scratch (IKE_AUTH again), less one per restart fault (``sas_forced``); ``false_moves``:
moves of mob's IKE_SA to a worse path (m0 IPv4 best, then m0 IPv6, m1 IPv4, m1 IPv6)
while the path it left was not under a fault (nor within 2 s after one ended), sampled
every 0.5 s (``latency_spike_moves``: such moves away from a path with a latency spike,
which kept working); RSS and open fds of mob's daemon every 10 s, the RSS's
least-squares slope after the first minute (start-up growth is not a trend), and the
fds likewise: ``fds_warm`` is the first sample after that minute (the controller opens a
probe socket per local address at its first probe, the IPv6 ones a second or two in;
``fds_start`` is the very first sample), so ``fds_warm`` to ``fds_end`` is the trend;
``loop_lag_p99_ms`` from the daemon's ``status`` (``loop_lag``, the last 5 minutes);
events written and the events file's invalid lines after two logrotates (rename +
SIGHUP) during the run.

At the end: mob's ``status`` (or charon's list-sas) against gw's list-sas (or gw's
``status``): the same IKE SPIs and CHILD SPIs; mob's metrics (``mobike_ike_sas``) against
them; mob's daemon stopped, its rules, routes (every table) and links compared with a
snapshot taken before it started; after the lab closed, no namespace of it left.

Needs root and strongSwan. Prints one JSON object; never asserts on time.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import describe_ms

from mobike_vici.daemon.control import ControlError, request
from mobike_vici.lab.charon import Charon, charon_available, start_charon
from mobike_vici.lab.faults import (
    RouterFaults,
    proc_sample,
    routing_snapshot,
    slope_per_hour,
    snapshot_diff,
)
from mobike_vici.lab.link_switch import LinkSwitch
from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, LabError, is_root, list_namespaces
from mobike_vici.lab.topology import Mobile, mobile

REPO = Path(__file__).resolve().parents[1]
CONN, CHILD = "soak", "net"
PSK = "soak-lab-only-not-a-secret-0123456789"
GW4, GW6 = "192.0.2.2", "2001:db8:ff::2"
INNER, INNER_NET, POOL = "10.88.0.1", "10.88.0.0/24", "10.99.0.0/24"
METRICS = "127.0.0.1:9474"
IKE_REKEY, CHILD_REKEY = "60s", "45s"
PAIRS = {
    "native-charon": ("native", "charon"),
    "native-native": ("native", "native"),
    "controller": ("controller", "charon"),
    "charon": ("charon", "charon"),
}
KINDS = ("link_down", "blackhole", "nat_rebind", "address_readd", "ipv4_death", "loss",
         "latency_spike", "peer_restart", "charon_restart")
WEIGHTS = {"link_down": 4, "blackhole": 4, "nat_rebind": 3, "address_readd": 3,
           "ipv4_death": 2, "loss": 1, "latency_spike": 1, "peer_restart": 1,
           "charon_restart": 1}
HOLD = {"link_down": (0.5, 1.0), "blackhole": (1.5, 2.0), "address_readd": (0.5, 1.0),
        "ipv4_death": (1.5, 2.0), "loss": (5.0, 5.0), "latency_spike": (2.0, 3.0),
        "nat_rebind": (0.0, 0.0), "peer_restart": (0.0, 0.0), "charon_restart": (0.0, 0.0)}
"""Seconds a fault is held. A silent one (blackhole, IPv4 death) longer than the 1 s its
detection and move may take, so the move is measured, not the heal."""
PAUSE = (0.5, 1.0)
"""Seconds between a fault's undo and the next fault, before waiting for the ping's
replies to flow again (``wait_flowing``)."""
TARGET_FAULTS_PER_HALF_HOUR = 600
RESTARTS = ("peer_restart", "charon_restart")


def mean_spacing_s(kinds: tuple[str, ...] = KINDS) -> float:
    """The schedule's own seconds per fault on average (hold and pause; not the
    fault's recovery, the restarts or the wait for the ping): what is left of a
    half hour's fault budget for the tunnel to recover in."""
    weights = [WEIGHTS[k] for k in kinds]
    hold = sum(w * sum(HOLD[k]) / 2 for k, w in zip(kinds, weights, strict=True))
    return hold / sum(weights) + sum(PAUSE) / 2


SILENT = ("blackhole", "ipv4_death")
SPIKE_S = 0.2
"""The latency spike's added one-way delay (mob to gw), seconds."""
SAMPLE_EVERY = 10.0
WARMUP = 60.0
"""Seconds of RSS samples left out of the trend (start-up growth)."""
DOWN_FOR = 30.0
"""No ping reply for this long before a fault: the bench brings the tunnel back itself
(``recoveries``; counted in ``sas_lost`` as the IKE_SA it establishes)."""
MOVE_GRACE = 2.0
UPLINK_RANK = {"10.1.0.2": 0, "2001:db8:1::2": 1, "10.2.0.2": 2, "2001:db8:2::2": 3}
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")
_CHARON_EST = re.compile(rf"^\d\d:\d\d:\d\d .*IKE_SA {CONN}\[\d+\] established between")
_CHARON_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d) ")
HALF_DAY = 43200


def gateway_conf() -> str:
    return f"""connections {{
  {CONN} {{
    version = 2
    local_addrs = {GW4}, {GW6}
    proposals = aes128-sha256-x25519
    mobike = yes
    pools = soak_pool
    local {{
      auth = psk
      id = gw@soak
    }}
    remote {{
      auth = psk
      id = mob@soak
    }}
    children {{
      {CHILD} {{
        local_ts = {INNER_NET}
        esp_proposals = aes128gcm16
      }}
    }}
  }}
}}
pools {{
  soak_pool {{
    addrs = {POOL}
  }}
}}
secrets {{
  ike-soak {{
    id-1 = mob@soak
    id-2 = gw@soak
    secret = "{PSK}"
  }}
}}
"""


def mobile_conf(mob: str) -> str:
    """mob's file: short lifetimes (rekeys every minute), DPD, restart on close."""
    if mob == "native":
        policy = "mobike {\n  prefer {\n    backup {\n      interface = m1\n      cost = 10\n" \
                 "    }\n  }\n}\n"
    else:
        policy = """mobike {
  probe_interval = 200ms
  probe_timeout = 300ms
  hold_down = 2s
  prefer {
    primary {
      interface = m0
      cost = 0
    }
    backup {
      interface = m1
      cost = 10
    }
  }
}
"""
    return f"""connections {{
  {CONN} {{
    version = 2
    remote_addrs = {GW4}
    proposals = aes128-sha256-x25519
    mobike = yes
    vips = 0.0.0.0
    rekey_time = {IKE_REKEY}
    dpd_delay = 10s
    local {{
      auth = psk
      id = mob@soak
    }}
    remote {{
      auth = psk
      id = gw@soak
    }}
    children {{
      {CHILD} {{
        remote_ts = {INNER_NET}
        esp_proposals = aes128gcm16
        rekey_time = {CHILD_REKEY}
        start_action = start
        dpd_action = restart
        close_action = restart
      }}
    }}
  }}
}}
secrets {{
  ike-soak {{
    id-1 = mob@soak
    id-2 = gw@soak
    secret = "{PSK}"
  }}
}}
{policy}"""


def snippet_body() -> str:
    """The charon { } body of the shipped strongswan.d snippet (prefer_best_path ...)."""
    text = (REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf").read_text()
    body = text[text.index("{") + 1:text.rindex("}")]
    return "\n".join(line for line in body.splitlines() if not line.strip().startswith("#"))


def _hostport(text: str) -> str:
    return text.rsplit("[", 1)[0]


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class Fault:
    kind: str
    at: float
    """Wall clock (time.time(), as ping -D stamps) when its injection began."""
    target: str | None = None
    undone: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Pair:
    """One tunnel under faults: mob (``mob`` kind) against gw (``gw`` kind)."""

    def __init__(self, name: str, lab: Lab, seed: int) -> None:
        self.name = name
        self.mob_kind, self.gw_kind = PAIRS[name]
        self.lab = lab
        self.rng = random.Random(seed)
        self.topo: Mobile = mobile(lab, nat_backup=True)
        self.faults_router = RouterFaults(lab, self.topo.rtr)
        # A link goes down by our own netlink request: stamped within microseconds of it.
        self.links = LinkSwitch(self.topo.mob.name)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.locations: list[tuple[float, str | None]] = []
        self.samples: list[tuple[float, int, int]] = []
        self.rotations: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.recoveries: list[dict[str, Any]] = []
        self.gw: NativeDaemon | Charon | None = None
        self.mob_native: NativeDaemon | None = None
        self.mob_charon: Charon | None = None
        self.controller: subprocess.Popen[bytes] | None = None
        self.ping_log = lab.workdir / "ping.log"
        self.events_path = lab.workdir / "mob-events.jsonl"
        self.control = lab.workdir / "mob-ctl.sock"
        self.routing_before: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self.started = time.time()  # before mob's charon writes its first line

    # -- set-up --------------------------------------------------------------------------

    def build(self) -> None:
        topo = self.topo
        topo.rtr.sysctl("net.ipv4.conf.all.rp_filter", "1")
        topo.gw.add_address("lo", f"{INNER}/32")
        # A ping that leaks past the tunnel must not count as an answer.
        self.faults_router.install([INNER_NET, POOL])
        self.faults_router.install_delay_line(SPIKE_S)
        (self.lab.workdir / "gw.conf").write_text(gateway_conf())
        (self.lab.workdir / "mob.conf").write_text(mobile_conf(self.mob_kind))
        self.start_gw()
        self.routing_before = routing_snapshot(topo.mob)
        self.start_mob()
        self.wait_tunnel(60.0)
        self.lab.spawn(topo.mob, ["ping", "-D", "-n", "-i", "0.01", INNER], self.ping_log)

    def start_gw(self) -> None:
        conf = self.lab.workdir / "gw.conf"
        if self.gw_kind == "native":
            self.gw = start_native(self.lab, self.topo.gw, conf, name="gw")
        else:
            gw = start_charon(self.lab, self.topo.gw, name="gw")
            gw.load_all(conf)
            self.gw = gw

    def start_mob(self) -> None:
        conf = self.lab.workdir / "mob.conf"
        if self.mob_kind == "native":
            self.mob_native = start_native(self.lab, self.topo.mob, conf, name="mob",
                                           extra_args=("--metrics", METRICS))
            self.events_path = self.mob_native.events_path
            self.control = self.mob_native.control
            self.mob_native.wait_event(named("child_sa_installed"), 30.0)
            return
        extra = snippet_body() if self.mob_kind == "controller" else ""
        self.mob_charon = start_charon(self.lab, self.topo.mob, name="mob", extra_charon=extra)
        if self.mob_kind == "controller":
            self.start_controller()
        else:
            self.mob_charon.load_all(conf)

    def start_controller(self) -> None:
        assert self.mob_charon is not None
        argv = [sys.executable, "-m", "mobike_vici", "run", "--load",
                "--config", str(self.lab.workdir / "mob.conf"), "--vici", self.mob_charon.uri,
                "--events", str(self.events_path), "--control", str(self.control),
                "--strongswan-conf", str(self.mob_charon.rundir / "strongswan.conf"),
                "--metrics", METRICS]
        self.controller = self.lab.spawn(self.topo.mob, argv,
                                         self.lab.workdir / "controller.out",
                                         env={"PYTHONPATH": str(REPO)})

    def wait_tunnel(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.topo.mob.ping(INNER, wait=1.0):
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: no ping through the tunnel in {timeout}s")

    # -- where mob's IKE_SA is, and which process is mob's daemon ----------------------

    def mob_local(self) -> str | None:
        try:
            if self.mob_native is not None:
                answer = request(str(self.control), "status", timeout=3.0)
                sas = [sa for sa in answer.get("ike_sas") or []  # type: ignore[union-attr]
                       if sa.get("state") == "ESTABLISHED"]
                return _hostport(str(sas[0]["local"])) if sas else None
            assert self.mob_charon is not None
            with self.lock:
                sa = self.mob_charon.list_sas().get(CONN)
            if sa and sa.get("state") == "ESTABLISHED":
                return str(sa.get("local-host"))
        except (ControlError, OSError, LabError, IndexError, KeyError, ValueError):
            if self.mob_charon is not None:
                with self.lock:
                    self.mob_charon.close_session()
        return None

    def daemon_pid(self) -> int | None:
        """mob's daemon under test: ours (native or the controller) or charon alone."""
        if self.mob_native is not None:
            return self.mob_native.proc.pid
        if self.controller is not None:
            return self.controller.pid
        return self.mob_charon.proc.pid if self.mob_charon is not None else None

    def uplink_of(self, local: str | None) -> int:
        if local in (self.topo.uplinks[1].addr4, self.topo.uplinks[1].addr6):
            return 1
        return 0

    # -- faults ------------------------------------------------------------------------

    def inject(self, kind: str) -> Callable[[], None]:
        """Inject ``kind`` now; returns what undoes it."""
        topo = self.topo
        index = self.uplink_of(self.mob_local())
        # Stamped before the first action: a stop (peer_restart) takes a second and more,
        # a blackhole is two nft calls, and the tunnel breaks at the first of them; a
        # stamp after would hand that silence to the previous fault's window.
        fault = Fault(kind, time.time(), target=topo.uplinks[index].ifname)
        undo: Callable[[], None] | None = None
        if kind == "link_down":
            fault.at = self.links.set(topo.uplinks[index].ifname, False)
            undo = lambda: topo.link_up(index)  # noqa: E731
        elif kind == "blackhole":
            topo.kill_silently(index)
            undo = lambda: topo.revive(index)  # noqa: E731
        elif kind == "nat_rebind":
            fault.target = "m1"
            fault.detail["ports"] = self.faults_router.nat_rebind(
                "g0", f"{topo.uplinks[1].addr4}/24", self.rng)
        elif kind == "address_readd":
            up = topo.uplinks[index]
            topo.mob.ip("addr", "del", f"{up.addr4}/24", "dev", up.ifname)

            def readd() -> None:
                topo.mob.add_address(up.ifname, f"{up.addr4}/24")
                topo.mob.ip("-4", "route", "replace", "default", "via", up.gw4, "dev",
                            up.ifname, "metric", str(up.metric))
            undo = readd
        elif kind == "ipv4_death":
            fault.target = "ipv4"
            topo.kill_family(4)
            undo = lambda: topo.revive_family(4)  # noqa: E731
        elif kind == "loss":
            fault.target = "rtr"
            self.faults_router.loss_on(5)
            undo = self.faults_router.loss_off
        elif kind == "latency_spike":
            fault.target = topo.uplinks[index].ifname
            self.faults_router.latency_on(topo.uplinks[index].router_if)
            undo = self.faults_router.latency_off
        elif kind == "peer_restart":
            fault.target = "gw"
            assert self.gw is not None
            self.gw.stop()
            self.start_gw()
        elif kind == "charon_restart":
            fault.target = "mob charon"
            assert self.mob_charon is not None
            with self.lock:
                self.mob_charon.stop()
            self.mob_charon = start_charon(self.lab, topo.mob, name="mob",
                                           extra_charon=snippet_body()
                                           if self.controller is not None else "")
            if self.controller is None:
                self.mob_charon.load_all(self.lab.workdir / "mob.conf")
        else:
            raise ValueError(kind)
        self.faults.append(fault)

        def undo_and_stamp() -> None:
            if undo is not None:
                undo()
            fault.undone = time.time()
        return undo_and_stamp

    def last_reply(self) -> float | None:
        """Wall-clock stamp of the ping's last reply (the log's tail is enough)."""
        try:
            with open(self.ping_log, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(tail):
            m = _REPLY.match(line)
            if m:
                return float(m.group(1))
        return None

    def wait_flowing(self, timeout: float) -> bool:
        """Until a ping reply newer than now arrives (the tunnel carries traffic)."""
        since = time.time()
        deadline = since + timeout
        while time.time() < deadline:
            last = self.last_reply()
            if last is not None and last >= since:
                return True
            time.sleep(0.1)
        return False

    def recover_if_down(self) -> None:
        """The tunnel stayed down DOWN_FOR seconds: bring it back the way an operator
        would (initiate again; our daemon restarted when it has no IKE_SA at all)."""
        last = self.last_reply()
        if last is None or time.time() - last < DOWN_FOR:
            return
        how = ""
        try:
            if self.mob_native is not None:
                if self.mob_local() is None:
                    how = "mob daemon restarted"
                    self.mob_native.stop()
                    self.mob_native = start_native(self.lab, self.topo.mob,
                                                   self.lab.workdir / "mob.conf", name="mob",
                                                   extra_args=("--metrics", METRICS))
            else:
                assert self.mob_charon is not None
                if self.controller is not None and self.controller.poll() is not None:
                    how = "controller restarted; "
                    self.start_controller()
                how += "swanctl --initiate"
                with self.lock:
                    self.mob_charon.initiate(CHILD, ike=CONN)
        except (LabError, OSError, subprocess.SubprocessError) as exc:
            how += f" failed: {str(exc).splitlines()[0][:200]}"
        self.recoveries.append({"at": round(time.time(), 2), "silent_s": round(
            time.time() - last, 1), "how": how or "none (SA up, no replies)"})
        time.sleep(5.0)

    def rotate_events(self) -> None:
        """logrotate's rename + SIGHUP; the daemon must go on in a new file."""
        pid = self.mob_native.proc.pid if self.mob_native else (
            self.controller.pid if self.controller else None)
        if pid is None:
            return
        n = len(self.rotations) + 1
        rotated = self.events_path.with_name(f"{self.events_path.name}.{n}")
        self.events_path.rename(rotated)
        os.kill(pid, 1)  # SIGHUP
        self.rotations.append({"at": time.time(), "file": rotated.name})

    def kinds(self) -> list[str]:
        out = [k for k in KINDS if k != "charon_restart"]
        if self.mob_kind in ("controller", "charon"):
            out.append("charon_restart")
        return out

    # -- the run -------------------------------------------------------------------------

    def run(self, duration: float, kinds_rng: random.Random) -> None:
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        rotate_at = [start + duration / 3, start + 2 * duration / 3]
        try:
            while time.monotonic() - start < duration:
                self.recover_if_down()
                allowed = self.kinds()
                kind = kinds_rng.choices(KINDS, [WEIGHTS[k] for k in KINDS])[0]
                if kind not in allowed:
                    kind = "peer_restart"
                try:
                    undo = self.inject(kind)
                    time.sleep(self.rng.uniform(*HOLD[kind]))
                    undo()
                except (LabError, OSError, subprocess.SubprocessError) as exc:
                    self.errors.append(f"{kind}: {str(exc).splitlines()[0][:300]}")
                time.sleep(self.rng.uniform(*PAUSE))
                # The next blow falls on a working tunnel: a fault's outage is its own,
                # never the tail of the one before (a restart's IKE_SA_INIT retransmits).
                self.wait_flowing(DOWN_FOR)
                if rotate_at and time.monotonic() >= rotate_at[0]:
                    rotate_at.pop(0)
                    try:
                        self.rotate_events()
                    except OSError as exc:
                        self.errors.append(f"rotate: {exc}")
        finally:
            time.sleep(3.0)  # the last fault's recovery belongs to the run
            self._stop.set()
            sampler.join(timeout=20)

    def _sample(self) -> None:
        next_proc = 0.0
        last_local: str | None = "?"
        while not self._stop.is_set():
            now = time.time()
            local = self.mob_local()
            if local != last_local:
                self.locations.append((now, local))
                last_local = local
            if time.monotonic() >= next_proc:
                next_proc = time.monotonic() + SAMPLE_EVERY
                pid = self.daemon_pid()
                got = proc_sample(pid) if pid is not None else None
                if got is not None:
                    self.samples.append((now, got[0], got[1]))
            self._stop.wait(0.5)

    # -- analysis --------------------------------------------------------------------

    def replies(self) -> list[float]:
        out = []
        with open(self.ping_log, errors="replace") as f:
            for line in f:
                m = _REPLY.match(line)
                if m:
                    out.append(float(m.group(1)))
        return out

    def fault_log(self) -> list[dict[str, Any]]:
        """Every fault as it happened (after ``outages``): kind, time, target, outage."""
        return [{"kind": f.kind, "at": datetime.fromtimestamp(f.at, UTC).isoformat(),
                 "target": f.target, "held_s": None if f.undone is None
                 else round(f.undone - f.at, 2), **f.detail} for f in self.faults]

    def outages(self, end: float) -> dict[str, list[float]]:
        replies = self.replies()
        per: dict[str, list[float]] = {}
        for i, fault in enumerate(self.faults):
            stop = self.faults[i + 1].at if i + 1 < len(self.faults) else end
            lo = bisect.bisect_right(replies, fault.at)
            hi = bisect.bisect_right(replies, stop)
            points = [fault.at, *replies[lo:hi], stop]
            gap = max(b - a for a, b in itertools.pairwise(points))
            fault.detail["outage_s"] = round(gap, 4)
            per.setdefault(fault.kind, []).append(gap)
        return per

    def establishments(self) -> list[float]:
        """Wall-clock times mob authenticated a new IKE_SA (the first one included)."""
        if self.mob_native is not None:
            return [_wall(ev["timestamp"]) for ev in self.all_events()
                    if ev.get("event") == "ike_sa_established" and ev.get("initiator")]
        assert self.mob_charon is not None
        lines = self.mob_charon.log_path.read_text(errors="replace").splitlines()
        return charon_times(lines, self.started, _CHARON_EST)

    def event_files(self) -> list[Path]:
        files = [self.events_path.with_name(r["file"]) for r in self.rotations]
        return [*files, self.events_path]

    def all_events(self) -> list[dict[str, Any]]:
        out = []
        for path in self.event_files():
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict):
                        out.append(ev)
        return out

    def event_validity(self) -> dict[str, Any]:
        if self.mob_kind == "charon":
            return {"events_written": None, "events_invalid_lines": None}
        written, invalid, per_file = 0, 0, {}
        for path in self.event_files():
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            bad = 0
            for line in lines:
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:
                    ok = False
                bad += 0 if ok else 1
            written += len(lines)
            invalid += bad
            per_file[path.name] = len(lines)
        return {"events_written": written, "events_invalid_lines": invalid,
                "events_per_file": per_file,
                "rotations": len(self.rotations),
                "writing_after_last_rotation": per_file.get(self.events_path.name, 0) > 0}

    def false_moves(self) -> list[dict[str, Any]]:
        """Moves to a worse path while the path left was under no fault."""
        return [m for m in self._worse_moves() if self._fault_on(m["from"], m["at"]) is None]

    def spike_moves(self) -> list[dict[str, Any]]:
        """Moves to a worse path away from one with a latency spike (it still worked)."""
        return [m for m in self._worse_moves()
                if self._fault_on(m["from"], m["at"]) == "latency_spike"]

    def _worse_moves(self) -> list[dict[str, Any]]:
        out = []
        for (_, old), (at, new) in zip(self.locations, self.locations[1:], strict=False):
            if old is None or new is None or old == new:
                continue
            if UPLINK_RANK.get(new, 9) <= UPLINK_RANK.get(old, 9):
                continue  # a return to a better path
            out.append({"at": round(at, 2), "from": old, "to": new})
        return out

    def _fault_on(self, local: str, at: float) -> str | None:
        """The kind of fault ``local``'s path was under at ``at`` (or until MOVE_GRACE
        before); a fault that breaks the path wins over a latency spike."""
        uplink = self.topo.uplinks[self.uplink_of(local)].ifname
        v4 = ":" not in local
        spiked = False
        for f in self.faults:
            end = (f.undone or f.at) + MOVE_GRACE
            if not f.at <= at + 0.5 <= end + 0.5:  # the location is sampled every 0.5 s
                continue
            if f.kind in RESTARTS or f.kind == "loss":
                return f.kind  # everything may look dead for a moment
            if f.kind == "ipv4_death" and v4:
                return f.kind
            if f.kind == "address_readd" and v4 and f.target == uplink:
                return f.kind
            if f.kind in ("link_down", "blackhole") and f.target == uplink:
                return f.kind
            if f.kind == "nat_rebind" and uplink == "m1":
                return f.kind
            spiked = spiked or (f.kind == "latency_spike" and f.target == uplink)
        return "latency_spike" if spiked else None

    def end_checks(self) -> dict[str, Any]:
        """status/metrics against the peer's list-sas, then stop mob and compare routing."""
        out: dict[str, Any] = {}
        # A rekey in flight shows one side's new SA before the other's: ask again a while.
        deadline = time.monotonic() + 15.0
        mob_view, gw_view = self._view_mob(), self._view_gw()
        while mob_view != gw_view and time.monotonic() < deadline:
            time.sleep(0.5)
            mob_view, gw_view = self._view_mob(), self._view_gw()
        out["mob_sa"], out["gw_sa"] = mob_view, gw_view
        out["status_matches_peer"] = (mob_view is not None and gw_view is not None
                                      and mob_view == gw_view)
        if self.mob_kind != "charon":
            out["metrics_ike_sas"] = self._metric_ike_sas()
            out["metrics_match_peer"] = (out["metrics_ike_sas"]
                                         == (1 if gw_view is not None else 0))
        if self.mob_native is not None:
            self.mob_native.stop()
        if self.controller is not None:
            self.lab.stop(self.controller, grace=10.0)
        if self.mob_charon is not None:
            self.mob_charon.stop()
        time.sleep(0.5)
        diff = snapshot_diff(self.routing_before, routing_snapshot(self.topo.mob))
        out["leftover_routing"] = diff
        return out

    def _view_mob(self) -> dict[str, Any] | None:
        try:
            if self.mob_native is not None:
                return _native_view(self.control)
            assert self.mob_charon is not None
            with self.lock:
                return _charon_view(self.mob_charon)
        except (ControlError, OSError, LabError, KeyError, IndexError, StopIteration):
            return None

    def _view_gw(self) -> dict[str, Any] | None:
        try:
            if isinstance(self.gw, NativeDaemon):
                return _native_view(self.gw.control)
            assert isinstance(self.gw, Charon)
            return _charon_view(self.gw)
        except (ControlError, OSError, LabError, KeyError, IndexError, StopIteration):
            return None

    def _metric_ike_sas(self) -> int | None:
        code = ("import urllib.request as u\n"
                f"print(u.urlopen('http://{METRICS}/metrics', timeout=5).read().decode())")
        proc = self.topo.mob.run(sys.executable, "-c", code, check=False)
        if proc.returncode != 0:
            return None
        total = 0
        for line in proc.stdout.splitlines():
            if line.startswith("mobike_ike_sas{") and 'state="ESTABLISHED"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


def _native_view(control: Path) -> dict[str, Any] | None:
    answer = request(str(control), "status", timeout=5.0)
    sas = [sa for sa in answer.get("ike_sas") or []  # type: ignore[union-attr]
           if sa.get("state") == "ESTABLISHED"]
    if not sas:
        return None
    sa = sas[0]
    return {"ike_spi": str(sa["ike_spi"]).lower(), "count": len(sas),
            "child_spis": sorted(str(s).lower().removeprefix("0x") for c in sa["children"]
                                 if c.get("state") == "INSTALLED"
                                 for s in (c["spi_in"], c["spi_out"]))}


def _charon_view(end: Charon) -> dict[str, Any] | None:
    sas = [sa for sa in end.list_sas().values() if sa.get("state") == "ESTABLISHED"]
    if not sas:
        return None
    sa = sas[0]
    spi = f"{int(sa['initiator-spi'], 16):016x}_{int(sa['responder-spi'], 16):016x}"
    kids = [c for c in sa.get("child-sas", {}).values() if c.get("state") == "INSTALLED"]
    return {"ike_spi": spi, "count": len(sas),
            "child_spis": sorted(f"{int(c[k], 16):08x}" for c in kids
                                 for k in ("spi-in", "spi-out"))}


def charon_times(lines: list[str], since: float, pattern: re.Pattern[str]) -> list[float]:
    """Wall-clock times of the ``lines`` matching ``pattern`` in a charon log that stamps
    the local time of day only, its first line written after ``since``: the date is
    ``since``'s, one day later each time the clock goes back by half a day or more (a
    run across midnight)."""
    start = datetime.fromtimestamp(since)
    day = datetime(start.year, start.month, start.day)
    last = start.hour * 3600 + start.minute * 60 + start.second
    out = []
    for line in lines:
        m = _CHARON_TIME.match(line)
        if m is None:
            continue
        seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        if seconds <= last - HALF_DAY:
            day += timedelta(days=1)
        last = seconds
        if pattern.match(line):
            out.append((day + timedelta(seconds=seconds)).timestamp())
    return out


def forced_sas(established: list[float], restarts: list[float], slack: float) -> int:
    """New IKE_SAs a restart excuses: the first one after each (within 3 minutes);
    ``slack``: how much earlier than the restart a stamp may say (whole-second logs)."""
    forced = 0
    pending = sorted(restarts)
    for t in sorted(established):
        while pending and t > pending[0] + 180.0:
            pending.pop(0)  # a restart nothing followed excuses no later IKE_SA
        if pending and pending[0] - slack <= t:
            pending.pop(0)
            forced += 1
    return forced


def summarize(pair: Pair, end: float, checks: dict[str, Any],
              keep_log: bool = False) -> dict[str, Any]:
    outages = pair.outages(end)
    est = pair.establishments()
    restarts = [f.at for f in pair.faults if f.kind in RESTARTS]
    # charon's log stamps whole seconds: its IKE_SA may seem to come before the restart.
    forced = forced_sas(est[1:], restarts, slack=0.0 if pair.mob_native else 1.0)
    # The first minute is start-up (imports, caches, the first rekeys): not a trend.
    t0 = pair.samples[0][0] if pair.samples else 0.0
    warm = [(t, float(r)) for t, r, _ in pair.samples if t >= t0 + WARMUP]
    slope = slope_per_hour(warm)
    lag = None
    if pair.mob_kind != "charon" and checks.get("loop_lag") is not None:
        lag = checks["loop_lag"].get("p99_ms")
    moves = pair.false_moves()
    log = pair.fault_log()
    if keep_log:
        with open(pair.lab.workdir / "faults.jsonl", "w") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in log)
    worst = sorted(log, key=lambda e: -float(e.get("outage_s", 0.0)))[:10]
    counts: dict[str, int] = {}
    for f in pair.faults:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return {
        "faults": counts,
        "faults_total": len(pair.faults),
        "sas_established": len(est),
        "sas_forced": forced,
        "sas_lost": max(0, len(est) - 1 - forced) + (0 if checks.get("mob_sa") else 1),
        "recoveries": pair.recoveries,
        "outage_s": {kind: _ranks(v) for kind, v in sorted(outages.items())},
        "worst_faults": worst,
        "false_moves": len(moves),
        "latency_spike_moves": len(pair.spike_moves()),
        "false_move_list": moves[:20],
        "moves_seen": sum(1 for (_, a), (_, b) in zip(pair.locations, pair.locations[1:],
                                                       strict=False)
                          if a is not None and b is not None and a != b),
        "rss_kib_start": pair.samples[0][1] if pair.samples else None,
        "rss_kib_end": pair.samples[-1][1] if pair.samples else None,
        "rss_kib_warm": int(warm[0][1]) if warm else None,
        "rss_slope_kib_per_h": None if slope is None else round(slope, 1),
        **rss_trend(pair.samples),
        "fds_start": pair.samples[0][2] if pair.samples else None,
        "fds_warm": next((fds for t, _, fds in pair.samples if t >= t0 + WARMUP), None),
        "fds_end": pair.samples[-1][2] if pair.samples else None,
        "fds_max": max((s[2] for s in pair.samples), default=None),
        "loop_lag_p99_ms": lag,
        "loop_lag": checks.get("loop_lag"),
        **pair.event_validity(),
        "end": {k: v for k, v in checks.items() if k != "loop_lag"},
        "errors": pair.errors[:20],
    }


def rss_trend(samples: list[tuple[float, int, int]]) -> dict[str, Any]:
    """mob's RSS over the run: the slope of its last half (a growth that levels off
    is start-up and caches, one that keeps its slope is a leak) and one sample a
    minute."""
    if not samples:
        return {"rss_slope_last_half_kib_per_h": None, "rss_kib_by_minute": []}
    t0, t1 = samples[0][0], samples[-1][0]
    half = [(t, float(r)) for t, r, _ in samples if t >= (t0 + t1) / 2]
    slope = slope_per_hour(half)
    by_minute: dict[int, int] = {}
    for t, r, _ in samples:
        by_minute.setdefault(int((t - t0) // 60), r)
    return {"rss_slope_last_half_kib_per_h": None if slope is None else round(slope, 1),
            "rss_kib_by_minute": [by_minute[m] for m in sorted(by_minute)]}


def _ranks(samples: list[float]) -> dict[str, Any]:
    ms = describe_ms(samples)
    return {"n": len(samples),
            "median": _s(ms["median_ms"]), "p95": _s(ms["p95_ms"]), "max": _s(ms["max_ms"])}


def _s(ms: float | str) -> float | str:
    return round(ms / 1000.0, 4) if isinstance(ms, float) else ms


def run_pair(name: str, duration: float, seed: int,
             keep: Path | None = None) -> dict[str, Any]:
    """One pair's whole soak in a lab of its own; the namespaces are checked gone after.

    ``keep``: the lab's files (logs, events, ping log) stay in ``keep/NAME``."""
    result: dict[str, Any]
    with Lab(keep / name if keep else None, keep_workdir=keep is not None) as lab:
        prefix = lab.prefix
        pair = Pair(name, lab, seed)
        try:
            pair.build()
            pair.run(duration, random.Random(seed))
            end = time.time()
            lag = _loop_lag(pair)
            checks = pair.end_checks()
            checks["loop_lag"] = lag
            result = summarize(pair, end, checks, keep_log=keep is not None)
        except (LabError, OSError, subprocess.SubprocessError, AssertionError) as exc:
            result = {"error": str(exc)[:2000], "faults_total": len(pair.faults),
                      "errors": pair.errors[:20]}
        finally:
            pair.links.close()
    left = [ns for ns in list_namespaces() if ns.startswith(prefix)]
    result["leftover_namespaces"] = left
    return result


def _loop_lag(pair: Pair) -> dict[str, Any] | None:
    if pair.mob_kind == "charon":
        return None
    try:
        answer = request(str(pair.control), "status", timeout=5.0)
    except ControlError:
        return None
    lag = answer.get("loop_lag")
    return lag if isinstance(lag, dict) else None


def machine() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2),
            "loadavg_15m": round(fifteen, 2)}


def run(pairs: list[str], duration: float, seed: int,
        keep: Path | None = None) -> dict[str, Any]:
    """Every pair at once, each in its own thread and lab; the bench's JSON object."""
    started = time.monotonic()
    before = machine()
    results: dict[str, Any] = {}

    def one(name: str) -> None:
        try:
            results[name] = run_pair(name, duration, seed, keep)
        except Exception as exc:  # one pair's crash must not hide the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}

    threads = [threading.Thread(target=one, args=(name,)) for name in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"benchmark": "soak", "duration_s": duration, "seed": seed,
            "ike_rekey_time": IKE_REKEY, "child_rekey_time": CHILD_REKEY,
            "ping_hz": 100, "machine": {"before": before, "after": machine()},
            "results": {name: results.get(name) for name in pairs},
            "elapsed_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds per pair")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", default="native-charon,native-native,controller,charon")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each pair's logs, events and ping log in DIR/PAIR")
    args = parser.parse_args(argv)
    pairs = [p for p in args.pairs.split(",") if p]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        parser.error(f"unknown pairs {unknown}; known: {', '.join(PAIRS)}")
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return 2
    print(json.dumps(run(pairs, args.duration, args.seed, args.keep), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
