"""scale.py's ``charon_attached`` phase: charon as the gateway with ``mobike-vici run``
attached, holding 100, 1,000, 10,000 IKE_SA+CHILD_SAs.

charon (5.9.8, kernel-libipsec, the same swanctl.conf as the other phases) answers;
the controller runs attached beside it in the gateway's namespace (``--vici`` to
charon's socket, a ``mobike { allowed_peer_prefixes }`` policy so every peer move is
judged), and the initiator (``_hold_moves.py``) builds up the sizes. At each size:

- ``follow``: after the build, how long until the controller's table (``status``)
  equals charon's ``list-sas`` (both counts given), and, beside it, when charon's
  ``ike-updown`` event for the last new SA reached a bare VICI listener of the bench
  (charon's own delay with its events);
- ``idle``: the controller's and charon's CPU and RSS over ``--idle`` seconds in which
  nothing happens;
- ``ike_update``: for each rate in ``--update-rates`` the initiator moves its SAs
  (MOBIKE UPDATE_SA_ADDRESSES to its next source address) for ``--update-duration``
  seconds; every move charon answers should be one ``ike-update`` event. A bare VICI
  listener of the bench timestamps each event as charon sends it (charon's figures:
  answer time, event time, CPU per update); the controller's ``addresses_updated`` line
  for the same IKE_SA and address (the stream's microsecond timestamps, same clock)
  gives its lag behind that listener. ``drain_ms``: the controller's last line after
  the listener's last event. ``bounded``: every event handled, the lag in the last
  third of the window near the first third's, and the drain short (a controller that
  falls behind shows a growing lag and a long drain). Rates go up until one is not
  bounded or the load does not reach it;
- ``restart``: charon is killed (SIGKILL: its SAs are gone, nobody is told); once the
  controller says it lost VICI, the SAs it still lists are counted (it keeps its
  table), and charon is started again with the same config; when its VICI answers,
  the initiator sets up the same number of SAs again (as initiators that noticed
  would). Times from "VICI back":
  the controller reconnected (``vici_connected``), its stale table cleared
  (``ike_sa_deleted reason=resync`` lines), the load done (charon's figure), and the
  controller's table equal to charon's list-sas again (its figure).

Never judges the numbers beyond ``bounded``; the caller prints them.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ike_setup import Options, _cpu_seconds, _s, charon_conf, initiator_conf, responder_conf

from mobike_vici.backends.vici.table import spi_key
from mobike_vici.daemon.control import ControlError, request
from mobike_vici.lab.charon import CHARON, Charon, charon_available, decode
from mobike_vici.lab.netns import Lab, LabError, Netns
from mobike_vici.lab.topology import TwoHosts

REPO = Path(__file__).resolve().parents[1]
HOLD = Path(__file__).resolve().parent / "_hold_moves.py"
LISTING_TIMEOUT = 300.0
"""Seconds a listing of every SA may take (10,000 SAs in a busy responder)."""
FOLLOW_TIMEOUT = 120.0
"""Seconds the controller may take to show what charon has before we call it behind."""
MATCH_WAIT = 30.0
"""Seconds after the last move to wait for the controller's last ``addresses_updated``."""
BEHIND_FACTOR = 5.0
BEHIND_FLOOR_MS = 50.0
DRAIN_MAX_MS = 500.0
"""The controller's last line at most this long after charon's last answer."""


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


def charon_sa_counts(vici_path: Path) -> tuple[int, int]:
    """(IKE_SAs, CHILD_SAs) in charon's list-sas, on a VICI session of its own with a long
    timeout: 10,000 SAs in a busy charon take a while. Every IKE_SA may have the same
    connection name: entries are counted, not names."""
    import vici

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(LISTING_TIMEOUT)
    try:
        sock.connect(str(vici_path))
        ike = child = 0
        for entry in vici.Session(sock).list_sas():
            for sa in decode(entry).values():
                ike += 1
                child += len(sa.get("child-sas") or {})
        return ike, child
    finally:
        sock.close()


class Gateway:
    """charon in the gateway namespace, restartable with the same config and socket."""

    def __init__(self, lab: Lab, ns: Netns, opts: Options, addr: str) -> None:
        if not charon_available():
            raise LabError(f"strongSwan charon not installed ({CHARON})")
        self.lab, self.ns = lab, ns
        self.rundir = lab.workdir / "charon-attached"
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.conf = self.rundir / "strongswan.conf"
        self.conf.write_text(charon_conf(self.rundir))
        self.swanctl = self.rundir / "swanctl.conf"
        self.swanctl.write_text(responder_conf(opts, addr))
        self.charon: Charon | None = None
        self.version = ""
        self.restarts = 0

    def start(self) -> float:
        """Start charon; the wall-clock time its VICI first answered."""
        script = ("mount -t tmpfs none /run && "
                  f"STRONGSWAN_CONF={shlex.quote(str(self.conf))} "
                  f"exec {shlex.quote(str(CHARON))}")
        proc = self.lab.spawn(self.ns, ["unshare", "-m", "sh", "-c", script],
                              self.rundir / f"charon{self.restarts}.stderr")
        self.charon = Charon(self.lab, self.ns, self.rundir, proc)
        self.charon.wait_ready(timeout=60.0)
        back = time.time()
        self.charon.load_all(self.swanctl)
        version = self.charon.session().version()
        self.version = f"{_s(version.get('daemon'))} {_s(version.get('version'))}".strip()
        self.charon.close_session()
        return back

    @property
    def pid(self) -> int:
        assert self.charon is not None
        return self.charon.proc.pid

    def kill(self) -> None:
        assert self.charon is not None
        self.charon.close_session()
        self.charon.proc.send_signal(signal.SIGKILL)
        self.charon.proc.wait(timeout=30)
        self.restarts += 1

    def stop(self) -> None:
        if self.charon is not None:
            self.charon.stop()

    def count(self) -> tuple[int, int]:
        """(IKE_SAs, CHILD_SAs) in charon's list-sas, on a session of its own."""
        assert self.charon is not None
        return charon_sa_counts(self.charon.vici_path)


class Controller:
    """``mobike-vici run`` attached to the gateway's charon; its event stream read as it grows."""

    def __init__(self, lab: Lab, ns: Netns, gateway: Gateway) -> None:
        self.dir = lab.workdir / "controller-attached"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "swanctl.conf"
        self.conf.write_text(gateway.swanctl.read_text()
                             + "mobike {\n    allowed_peer_prefixes = 192.0.2.0/24\n}\n")
        self.events = self.dir / "events.jsonl"
        self.control = str(self.dir / "ctl.sock")
        assert gateway.charon is not None
        argv = [sys.executable, "-m", "mobike_vici", "run", "--config", str(self.conf),
                "--vici", gateway.charon.uri, "--events", str(self.events),
                "--control", self.control, "--strongswan-conf", str(gateway.conf)]
        self.proc = lab.spawn(ns, argv, self.dir / "controller.out",
                              env={"PYTHONPATH": str(REPO)})
        self.lab = lab
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        try:
            return request(self.control, "status", timeout=LISTING_TIMEOUT)
        except ControlError:
            return None

    def count(self) -> tuple[int, int] | None:
        """(IKE_SAs, CHILD_SAs) in the controller's table, when it answers and is attached."""
        answer = self.status()
        if not answer or answer.get("vici_connected") is not True:
            return None
        sas = answer.get("ike_sas") or []
        return len(sas), sum(len(sa.get("children") or []) for sa in sas)

    def wait_attached(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise LabError(f"controller exited {self.proc.returncode}: "
                               + (self.dir / "controller.out").read_text(errors="replace")[-2000:])
            if self.count() is not None:
                return
            time.sleep(0.1)
        raise LabError("controller not attached to charon in time")

    def new_events(self) -> list[dict[str, Any]]:
        """The stream's lines written since the last call."""
        try:
            with open(self.events, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def stop(self) -> None:
        self.lab.stop(self.proc, grace=10.0)


class Listener(threading.Thread):
    """charon's own figures: a bare VICI client of the bench that takes ``ike-updown``
    and ``ike-update`` events as charon sends them (arrival time; for a move the IKE
    SPIs and new peer address), nothing else. Tells a charon that is late with its
    events from a controller that is late with them."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(name="vici-listener", daemon=True)
        assert gateway.charon is not None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(gateway.charon.vici_path))
        self.seen: dict[str, deque[tuple[str, float]]] = defaultdict(deque)
        self.count = 0
        self.ups: list[float] = []
        self.registered = threading.Event()

    def run(self) -> None:
        import vici

        session = vici.Session(self.sock)
        with contextlib.suppress(Exception):  # ends when stop() closes the socket
            for name, message in session.listen(["ike-updown", "ike-update"], timeout=0.2):
                self.registered.set()
                if message is None:
                    continue
                at = time.time()
                msg = decode(message)
                if name == b"ike-updown":
                    if msg.get("up") == "yes":
                        self.ups.append(at)
                    continue
                for d in msg.values():
                    if isinstance(d, dict) and "initiator-spi" in d:
                        self.seen[spi_key(d)].append((str(msg.get("remote-host")), at))
                        self.count += 1

    def start_registered(self) -> Listener:
        self.start()
        self.registered.wait(10)
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(timeout=5)


class Initiator:
    """``_hold_moves.py`` in the other namespace, driven by numbered command files."""

    def __init__(self, lab: Lab, ns: Netns, opts: Options, sources: Sequence[str],
                 remote: str) -> None:
        self.dir = lab.workdir / "hold-attached"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "initiator.conf"
        conf.write_text(initiator_conf(opts, sources, remote))
        self.out = self.dir / "result.json"
        self.log = self.dir / "hold.log"
        self.proc = lab.spawn(ns, [sys.executable, str(HOLD), "--config", str(conf),
                                   "--out", str(self.out), "--concurrency",
                                   str(opts.concurrency)],
                              self.log, env={"PYTHONPATH": str(REPO)})
        self.k = 0

    def send(self, cmd: dict[str, Any]) -> int:
        k = self.k
        self.k += 1
        tmp = Path(f"{self.out}.cmd{k}.tmp")
        tmp.write_text(json.dumps(cmd))
        tmp.rename(f"{self.out}.cmd{k}")
        return k

    def result(self, k: int, timeout: float) -> dict[str, Any]:
        path = Path(f"{self.out}.done{k}")
        end = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise LabError(f"initiator did not finish command {k}:\n{tail}")
            time.sleep(0.02)
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def run(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.result(self.send(cmd), timeout)

    def stop(self) -> None:
        try:
            self.send({"op": "stop"})
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()


# --------------------------------------------------------------------------- phases

def _follow(gw: Gateway, ctl: Controller, since: float, listener: Listener, ups: int,
            held: int) -> dict[str, Any]:
    """Until the controller's table holds the ``held`` IKE_SA+CHILD_SAs the initiator
    holds, then charon's ``list-sas`` for the record (both counts given).

    ``equal_after_s`` is when the matching ``status`` answer arrived (``status_s``: how
    long that answer took, an upper bound of what the listing itself adds). Beside it,
    when charon's ``ike-updown`` event for the last of ``ups`` new IKE_SAs reached the
    bench's listener (waited for as long as for the controller)."""
    end = time.monotonic() + FOLLOW_TIMEOUT
    while len(listener.ups) < ups and time.monotonic() < end:
        time.sleep(0.05)
    while True:
        t0 = time.time()
        have = ctl.count()
        t1 = time.time()
        if have == (held, held) or time.monotonic() > end:
            break
        time.sleep(0.2)
    want = gw.count()
    return {"charon_ike_child": list(want), "controller_ike_child": list(have) if have else None,
            "equal": have == want, "equal_after_s": round(t1 - since, 3),
            "status_s": round(t1 - t0, 3), "charon_events_up": len(listener.ups),
            "charon_last_up_event_after_s": (round(listener.ups[-1] - since, 3)
                                             if listener.ups else None)}


def _idle(gw: Gateway, ctl: Controller, seconds: float) -> dict[str, Any]:
    c0, g0 = _cpu_seconds(ctl.pid), _cpu_seconds(gw.pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    c1, g1 = _cpu_seconds(ctl.pid), _cpu_seconds(gw.pid)

    def share(a: float | None, b: float | None) -> float | None:
        return round((b - a) / wall * 100, 2) if a is not None and b is not None else None

    return {"seconds": round(wall, 1),
            "controller_cpu_percent": share(c0, c1), "controller_rss_kib": _rss_kib(ctl.pid),
            "charon_cpu_percent": share(g0, g1), "charon_rss_kib": _rss_kib(gw.pid)}


def _match(queue: deque[tuple[str, float]] | None, to: str) -> float | None:
    """The first arrival for a move to ``to`` (earlier ones of other moves are skipped)."""
    while queue and queue[0][0] != to:
        queue.popleft()
    return queue.popleft()[1] if queue else None


def _updates(gw: Gateway, ctl: Controller, ini: Initiator, rate: float,
             duration: float) -> dict[str, Any]:
    ctl.new_events()  # only what this window makes
    listener = Listener(gw).start_registered()
    c0, g0 = _cpu_seconds(ctl.pid), _cpu_seconds(gw.pid)
    result = ini.run({"op": "moves", "rate": rate, "duration": duration},
                     timeout=duration + 120)
    moves: list[list[Any]] = result.pop("moves")
    seen: dict[str, deque[tuple[str, float]]] = defaultdict(deque)
    updates = rejected = 0
    routability: dict[str, int] = {"ok": 0, "failed": 0}  # the controller's checks of moves
    end = time.monotonic() + MATCH_WAIT
    while True:
        for ev in ctl.new_events():
            name = ev.get("event")
            if name == "addresses_updated":
                updates += 1
                seen[ev["ike_spi"]].append((str(ev["remote"]).split("[", 1)[0],
                                            _wall(ev["timestamp"])))
            elif name == "update_rejected":
                rejected += 1
            elif name in ("return_routability_ok", "return_routability_failed"):
                routability[name.rsplit("_", 1)[1]] += 1
        if updates >= len(moves) or time.monotonic() > end:
            break
        time.sleep(0.1)
    c1, g1 = _cpu_seconds(ctl.pid), _cpu_seconds(gw.pid)
    listener.stop()
    lags: list[float] = []  # controller line - the bench's arrival of the same event
    after_answer: list[float] = []
    event_ms: list[float] = []  # charon: the event's arrival at the bench - the move sent
    answer_ms: list[float] = []
    missing = not_sent = 0
    last_line = last_event = 0.0
    for ike_spi, to, sent, answered in sorted(moves, key=lambda m: m[3]):
        answer_ms.append((answered - sent) * 1000)
        event = _match(listener.seen.get(ike_spi), to)
        if event is None:
            not_sent += 1  # charon answered but sent no event (within the window)
            continue
        event_ms.append((event - sent) * 1000)
        last_event = max(last_event, event)
        line = _match(seen.get(ike_spi), to)
        if line is None:
            missing += 1
            continue
        last_line = max(last_line, line)
        lags.append((line - event) * 1000)
        after_answer.append((line - answered) * 1000)
    third = max(1, len(lags) // 3)
    first = statistics.median(lags[:third]) if lags else None
    last = statistics.median(lags[-third:]) if lags else None
    drain_ms = round((last_line - last_event) * 1000, 2) if lags else None
    bounded = (missing == 0 and first is not None and last is not None
               and drain_ms is not None and drain_ms <= DRAIN_MAX_MS
               and last <= max(BEHIND_FLOOR_MS, BEHIND_FACTOR * max(first, 0.0)))
    issue_s = result.get("issue_s") or duration
    answered_n = len(moves)
    events_n = len(event_ms)
    return {
        "rate_asked": rate,
        "duration_s": duration,
        "moves_answered": answered_n,
        "rate_achieved": round(answered_n / issue_s, 1),
        "initiator": {k: result[k] for k in ("issued", "skipped_busy", "unanswered",
                                             "failures", "ike_sas_rekeyed", "ike_sas_lost",
                                             "cpu_s") if k in result},
        "initiator_busy_fraction": round(result.get("cpu_s", 0.0) / issue_s, 3),
        "charon": {"answer_ms": {"p50": _pct(answer_ms, 0.5), "p95": _pct(answer_ms, 0.95)},
                   "ike_update_events": listener.count,
                   "event_after_send_ms": {"p50": _pct(event_ms, 0.5),
                                           "p95": _pct(event_ms, 0.95),
                                           "max": _pct(event_ms, 1.0)},
                   "answered_without_event": not_sent,
                   "cpu_ms_per_update": (round((g1 - g0) / answered_n * 1000, 3)
                                         if answered_n and g0 is not None and g1 is not None
                                         else None)},
        "controller_addresses_updated": updates,
        "controller_update_rejected": rejected,
        "controller_return_routability": routability,
        "events_the_controller_missed": missing,
        "lag_ms": {"p50": _pct(lags, 0.5), "p95": _pct(lags, 0.95), "max": _pct(lags, 1.0),
                   "first_third_median": None if first is None else round(first, 2),
                   "last_third_median": None if last is None else round(last, 2)},
        "lag_after_answer_ms": {"p50": _pct(after_answer, 0.5),
                                "p95": _pct(after_answer, 0.95)},
        "drain_ms": drain_ms,
        "bounded": bounded,
        "controller_cpu_ms_per_event": (round((c1 - c0) / events_n * 1000, 3)
                                        if events_n and c0 is not None and c1 is not None
                                        else None),
    }


def _while_down(ctl: Controller, timeout: float = 30.0) -> int | None:
    """The IKE_SAs the controller still lists once it has noticed charon is gone."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        answer = ctl.status()
        if answer is not None and answer.get("vici_connected") is False:
            return len(answer.get("ike_sas") or [])
        time.sleep(0.05)
    return None


def _restart(gw: Gateway, ctl: Controller, ini: Initiator, size: int) -> dict[str, Any]:
    ctl.new_events()
    c0 = _cpu_seconds(ctl.pid)
    killed = time.time()
    gw.kill()
    kept = _while_down(ctl)
    back = gw.start()  # VICI answering, config loaded just after
    loaded = time.time()
    listener = Listener(gw).start_registered()
    k = ini.send({"op": "rebuild", "size": size})
    rebuilt = ini.result(k, timeout=1800)
    load_done = time.time()
    follow = _follow(gw, ctl, back, listener, int(rebuilt.get("completed") or 0),
                     int(rebuilt.get("held") or 0))
    listener.stop()
    c1 = _cpu_seconds(ctl.pid)
    connected = None
    stale: list[float] = []
    dropped = 0
    for ev in ctl.new_events():
        name = ev.get("event")
        if name == "vici_connected" and connected is None:
            connected = _wall(ev["timestamp"])
        elif name == "ike_sa_deleted" and ev.get("reason") == "resync":
            stale.append(_wall(ev["timestamp"]))
        elif name == "vici_event_dropped":
            dropped += 1

    def since_back(t: float | None) -> float | None:
        return None if t is None else round(t - back, 3)

    return {
        "kill": "SIGKILL, then a fresh charon with the same config",
        "charon_down_s": round(back - killed, 3),
        "controller_sas_while_charon_down": kept,
        "config_loaded_s": since_back(loaded),
        "controller_reconnected_s": since_back(connected),
        "stale_sas_removed": len(stale),
        "stale_table_cleared_s": since_back(max(stale) if stale else None),
        "controller_events_dropped": dropped,
        "load_reestablished": rebuilt.get("held"),
        "load_failures": rebuilt.get("failures"),
        "load_done_s": since_back(load_done),
        "charon_last_up_event_s": follow["charon_last_up_event_after_s"],
        "controller_equal_s": follow["equal_after_s"],
        "controller_status_s": follow["status_s"],
        "equal": follow["equal"],
        "charon_ike_child": follow["charon_ike_child"],
        "controller_ike_child": follow["controller_ike_child"],
        "controller_cpu_s": (round(c1 - c0, 2) if c0 is not None and c1 is not None
                             else None),
    }


def run_attached(lab: Lab, topo: TwoHosts, opts: Options, sources: Sequence[str],
                 sizes: Sequence[int], idle: float, rates: Sequence[float],
                 duration: float) -> dict[str, Any]:
    gw = Gateway(lab, topo.host_b, opts, topo.b4)
    gw.start()
    ctl: Controller | None = None
    ini: Initiator | None = None
    try:
        ctl = Controller(lab, topo.host_b, gw)
        ctl.wait_attached()
        ctl_rss0 = _rss_kib(ctl.pid)
        ini = Initiator(lab, topo.host_a, opts, sources, topo.b4)
        out: list[dict[str, Any]] = []
        for size in sizes:
            c0 = _cpu_seconds(ctl.pid)
            listener = Listener(gw).start_registered()
            grown = ini.run({"op": "grow", "size": size}, timeout=1800)
            built = time.time()
            c1 = _cpu_seconds(ctl.pid)
            follow = _follow(gw, ctl, built, listener, int(grown.get("completed") or 0),
                             int(grown.get("held") or 0))
            listener.stop()
            entry: dict[str, Any] = {
                "size": size, "held": grown.get("held"), "failures": grown.get("failures"),
                "build_controller_cpu_s": (round(c1 - c0, 2) if c0 is not None
                                           and c1 is not None else None),
                "build_s": round(grown["last_setup"] - grown["started"], 1),
                "follow": follow,
                "idle": _idle(gw, ctl, idle),
            }
            rss = entry["idle"]["controller_rss_kib"]
            held = entry["follow"]["charon_ike_child"][0]
            if rss is not None and ctl_rss0 is not None and held:
                entry["controller_rss_kib_per_ike_child"] = round((rss - ctl_rss0) / held, 2)
            entry["ike_update"] = []
            for rate in rates:
                window = _updates(gw, ctl, ini, rate, duration)
                entry["ike_update"].append(window)
                print(json.dumps({"size": size, "ike_update": window}), file=sys.stderr,
                      flush=True)
                if not window["bounded"] or window["rate_achieved"] < 0.8 * rate:
                    break  # behind, or the load cannot go faster: higher rates say no more
            entry["restart"] = _restart(gw, ctl, ini, size)
            print(json.dumps({"size": size, "restart": entry["restart"]}), file=sys.stderr,
                  flush=True)
            out.append(entry)
        return {"responder": "charon", "version": gw.version, "controller": "mobike-vici run",
                "controller_rss_kib_at_start": ctl_rss0, "sizes": out}
    finally:
        if ini is not None:
            ini.stop()
        if ctl is not None:
            ctl.stop()
        gw.stop()
