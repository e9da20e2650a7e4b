"""`mobike-vici demo`: two native daemons in throwaway namespaces, a tunnel, two handovers.

Builds the mobile lab topology (mob with uplinks m0 and m1 through rtr to gw),
writes an initiator config for mob and a responder config for gw, starts
`mobike-vici native` on each side and waits until each side reports
ike_sa_established and child_sa_installed. Then, with a ping every 10 ms through
the tunnel, it takes the active uplink's link down (a loud failure), and after
that silently blackholes the other one in rtr (the link stays up): each time the
initiator's path manager moves the IKE_SA and its CHILD_SA with
UPDATE_SA_ADDRESSES, and the demo tells the measured outage (the longest silence
in the echo replies). Finally it checks `status` of the initiator, tears
everything down and draws the run as one timeline picture.

What a person reads is a short narrative, one ``demo:`` line per step. The raw
events of both daemons (each line a JSON object with a ``side``, plus a ``fault``
line for each injected fault) go to ``events.jsonl`` in the output directory,
beside ``ping.log`` and ``timeline.png``; ``--verbose`` also prints them (and the
routes and status) on the terminal. Needs root (network namespaces).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from mobike_vici.demo_common import (
    EXIT_FAILED,
    EXIT_NEED_ROOT,
    EXIT_OK,
    INNER_ADDR,
    Pinger,
    Record,
    fresh,
    say,
)
from mobike_vici.eventlog import EventsFileError
from mobike_vici.lab.native import Event, EventFile, NativeDaemon, start_native
from mobike_vici.lab.netns import Lab, LabError, is_root
from mobike_vici.lab.prereq import describe, missing_tools
from mobike_vici.lab.topology import Mobile, TwoHosts, mobile
from mobike_vici.net.numbers import OUTER_FWMARK
from mobike_vici.timeline import TimelineError, render

TIMEOUT = 30.0
REQUIRED_EVENTS = ("ike_sa_established", "child_sa_installed")
HANDOVER_TIMEOUT = 10.0
STEADY = 1.0
"""Seconds of undisturbed pings before the first fault and after the last move: the
picture shows the tunnel's normal RTT on either side of the outages."""
# Throwaway credentials for namespaces that exist only while the demo runs.
DEMO_PSK = "mobike-vici-demo-only-not-a-secret"
FULL_TUNNEL = "0.0.0.0/0, ::/0"
POOL = "10.99.0.0/24"
POOL6 = "2001:db8:99::/120"
ELSEWHERE = "198.51.100.7"
"""Any address outside the lab: with a full tunnel, the client's route to it is the TUN."""


def _secrets() -> str:
    return f"""
secrets {{
    ike-demo {{
        id-1 = initiator@demo
        id-2 = responder@demo
        secret = "{DEMO_PSK}"
    }}
}}
"""


def initiator_config(topo: TwoHosts | Mobile) -> str:
    """The mobile side: asks for virtual IPs of both families and sends everything
    through the tunnel (a full tunnel, as a roaming client does); starts its child at
    once; with two uplinks, any local address will do and m1 is the backup (a cost of 10)."""
    local, remote = (topo.a4, topo.b4) if isinstance(topo, TwoHosts) else ("%any", topo.gw4)
    return f"""# mobike-vici demo: initiator on the mobile host
connections {{
    demo {{
        version = 2
        local_addrs = {local}
        remote_addrs = {remote}
        proposals = aes128-sha256-x25519
        vips = 0.0.0.0, ::
        mobike = yes
        local {{
            auth = psk
            id = initiator@demo
        }}
        remote {{
            auth = psk
            id = responder@demo
        }}
        children {{
            net {{
                remote_ts = {FULL_TUNNEL}
                esp_proposals = aes128-sha256
                start_action = start
            }}
        }}
    }}
}}
{_secrets()}
mobike {{
    prefer {{
        backup {{
            interface = m1
            cost = 10
        }}
    }}
}}
"""


def responder_config(topo: TwoHosts | Mobile) -> str:
    """The gateway side: answers, hands out virtual IPs from its pools, and offers
    everything (the client's full tunnel)."""
    local = topo.b4 if isinstance(topo, TwoHosts) else topo.gw4
    return f"""# mobike-vici demo: responder on the gateway
connections {{
    demo {{
        version = 2
        local_addrs = {local}
        proposals = aes128-sha256-x25519
        pools = demo_pool, demo_pool6
        mobike = yes
        local {{
            auth = psk
            id = responder@demo
        }}
        remote {{
            auth = psk
            id = initiator@demo
        }}
        children {{
            net {{
                local_ts = {FULL_TUNNEL}
                esp_proposals = aes128-sha256
            }}
        }}
    }}
}}
pools {{
    demo_pool {{
        addrs = {POOL}
    }}
    demo_pool6 {{
        addrs = {POOL6}
    }}
}}
{_secrets()}
mobike {{
}}
"""


class _Side:
    """One daemon and what of its stream has been recorded and seen."""

    def __init__(self, label: str, daemon: NativeDaemon) -> None:
        self.label = label
        self.daemon = daemon
        self.seen: set[str] = set()

    @property
    def events(self) -> EventFile:
        return self.daemon.events

    def take(self) -> list[tuple[str, str, Event]]:
        """New events as (timestamp, label, event), remembering their names."""
        new = []
        for ev in self.events.poll():
            self.seen.add(str(ev.get("event", "")))
            new.append((str(ev.get("timestamp", "")), self.label, ev))
        return new

    @property
    def done(self) -> bool:
        return all(name in self.seen for name in REQUIRED_EVENTS)


def _pump(sides: list[_Side], record: Record) -> None:
    """Record what every side wrote since the last call, in timestamp order."""
    batch = [item for side in sides for item in side.take()]
    batch.sort(key=lambda item: item[0])
    for _, label, ev in batch:
        record.event(label, ev)


def _watch(sides: list[_Side], record: Record, timeout: float) -> str | None:
    """Record events until every side is done; None on success, else why not."""
    deadline = time.monotonic() + timeout
    while True:
        _pump(sides, record)
        if all(side.done for side in sides):
            return None
        for side in sides:
            if not side.daemon.alive():
                _pump(sides, record)
                return (f"the {side.label} daemon exited with {side.daemon.proc.returncode}; "
                        f"its log:\n{side.daemon.log_text()[-2000:]}")
        if time.monotonic() >= deadline:
            missing = {
                side.label: [n for n in REQUIRED_EVENTS if n not in side.seen] for side in sides
            }
            return f"no tunnel within {timeout:.0f} s; events still missing: {missing}"
        time.sleep(0.05)


def run_demo(out: TextIO | None = None, timeout: float = TIMEOUT,
             program: Sequence[str] | None = None, *, verbose: bool = False,
             output_dir: Path | None = None, backend: str = "native") -> int:
    """Run the demo; 0 when both sides are up and moved twice, 1 on failure, 2 without root
    (or, for ``backend="charon"``, without strongSwan).

    ``output_dir`` receives events.jsonl, ping.log and timeline.png (default: a new
    directory under the system's temporary directory, named in the narrative).
    ``program`` replaces `python -m mobike_vici` for the daemons (tests use a stub).
    ``backend="charon"``: the product itself, charon with and without the controller
    (``mobike_vici.demo_charon``).
    """
    out = out or sys.stdout
    err = sys.stderr
    if not is_root():
        print("mobike-vici demo: needs root to create network namespaces; "
              "run it as root, e.g. `sudo scripts/demo.sh`.", file=err)
        return EXIT_NEED_ROOT
    missing = missing_tools()
    if missing:
        print(f"mobike-vici demo: missing tools: {describe(missing)}", file=err)
        return EXIT_NEED_ROOT
    if backend == "charon":
        from mobike_vici.demo_charon import run_charon, strongswan_missing

        problem = strongswan_missing()
        if problem is not None:
            print(f"mobike-vici demo --backend charon: {problem}", file=err)
            return EXIT_NEED_ROOT
    try:
        if output_dir is None:
            output_dir = Path(tempfile.mkdtemp(prefix="mobike-vici-demo-"))
        output_dir.mkdir(parents=True, exist_ok=True)
        record = Record(output_dir / "events.jsonl", out, verbose)
    except (OSError, EventsFileError) as exc:
        print(f"mobike-vici demo: cannot write the output directory: {exc}", file=err)
        return EXIT_FAILED
    try:
        if backend == "charon":
            return run_charon(record, err, timeout)
        with Lab() as lab:
            return _run(lab, record, err, timeout, program)
    except LabError as exc:
        print(f"mobike-vici demo: FAILED: {exc}", file=err)
        return EXIT_FAILED
    finally:
        record.close()


def _route(topo: Mobile, dest: str, src: str | None = None, mark: bool = False) -> str:
    """The client's route to ``dest`` as ``ip route get`` tells it (marked like our IKE
    and ESP when ``mark``), on one line."""
    args = ["route", "get", dest]
    if src is not None:
        args += ["from", src]
    if mark:
        args += ["mark", hex(OUTER_FWMARK)]
    text = topo.mob.ip(*args, check=False).stdout
    return " ".join(text.split()).removesuffix(" cache").strip() or "none"


def _handover(sides: list[_Side], pinger: Pinger, record: Record, what: str,
              fault: Callable[[], None], old: str) -> str | None:
    """Inject ``fault``, wait for the move off ``old`` and the first reply; None or why not."""
    initiator = sides[0]
    seen = len(initiator.events.events)
    moment = time.time()
    fault()
    record.fault(what, moment)
    outage = pinger.wait(moment, HANDOVER_TIMEOUT)
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while True:
        _pump(sides, record)
        moved = [ev for ev in initiator.events.events[seen:]
                 if ev.get("event") == "handover_completed"
                 and str(ev.get("old_local", "")).startswith(old)
                 and not str(ev.get("local", "")).startswith(old)]
        if moved:
            break
        if time.monotonic() > deadline:
            return f"{what}: no handover_completed off {old} within {HANDOVER_TIMEOUT:.0f} s"
        time.sleep(0.05)
    done = time.time()
    if outage is None or pinger.wait(done, HANDOVER_TIMEOUT) is None:
        return f"{what}: no echo reply through the tunnel within {HANDOVER_TIMEOUT:.0f} s"
    gap = pinger.gap(moment, done)
    noticed = _noticed(initiator.events.events[seen:])
    say(record.out, f"  moved {moved[0]['old_local']} -> {moved[0]['local']}, "
         f"outage {gap * 1000:.0f} ms ({noticed}the move itself took "
         f"{float(moved[0].get('duration_ms', 0.0)):.0f} ms; the outage is the longest "
         f"gap in the echo replies)")
    return None


def _noticed(events: list[dict[str, Any]]) -> str:
    """How the initiator learnt of the fault, from its first ``path_down`` (and a
    ``path_stalled`` before it: the stall is what made it probe at once)."""
    down = next((n for n, ev in enumerate(events) if ev.get("event") == "path_down"), None)
    if down is None or not events[down].get("reason"):
        return ""
    reason = str(events[down]["reason"])
    stall = next((ev for ev in events[:down] if ev.get("event") == "path_stalled"), None)
    if stall is not None and reason == "probe_timeout":
        return (f"noticed as a stall, nothing back for {float(stall.get('silent_ms', 0)):.0f} ms, "
                "then unanswered probes, ")
    if stall is not None and reason == "probe_race":
        return (f"noticed as a stall, nothing back for {float(stall.get('silent_ms', 0)):.0f} ms, "
                "then an unanswered probe while the other uplink answered, ")
    return f"noticed as {reason}, "


def _picture(lab: Lab, record: Record, initiator: _Side, pinger: Pinger | None) -> None:
    """Draw the run (the initiator's events, the faults, the echo replies) next to the
    events file and name it; a run that failed early still gets what it has."""
    source = lab.workdir / "timeline-events.jsonl"
    with open(source, "w", encoding="utf-8") as f:
        for ev in [*initiator.events.events, *record.faults]:
            print(json.dumps(ev), file=f)
    try:
        png = render(source, fresh(record.path.with_name("timeline.png")),
                     pings=pinger.log if pinger is not None else None,
                     title="mobike-vici demo: a loud and a silent failure, "
                           "the native core moves the tunnel")
    except (TimelineError, OSError) as exc:
        print(f"mobike-vici demo: no picture: {exc}", file=sys.stderr)
        return
    say(record.out, f"picture: {png}")


def _run(lab: Lab, record: Record, err: TextIO, timeout: float,
         program: Sequence[str] | None) -> int:
    topo = mobile(lab)
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    m0, m1 = topo.uplinks
    say(record.out, f"building a mobile client and a gateway in network namespaces: "
         f"mob (uplinks m0 {m0.addr4}, m1 {m1.addr4}) -> rtr -> gw ({topo.gw4})")
    say(record.out, "starting mobike-vici native on both: the client asks for a full tunnel, "
         "m1 is its backup uplink")
    say(record.out, f"raw events: {record.path}"
         + ("" if record.verbose else " (--verbose prints them here too)"))
    record.detail(f"namespaces {topo.mob.name}, {topo.rtr.name}, {topo.gw.name}; "
                  f"workdir {lab.workdir}")
    conf_b = Path(lab.workdir / "responder.conf")
    conf_a = Path(lab.workdir / "initiator.conf")
    conf_b.write_text(responder_config(topo))
    conf_a.write_text(initiator_config(topo))

    started = time.monotonic()
    responder = _Side("responder", start_native(lab, topo.gw, conf_b, name="responder",
                                                   program=program))
    initiator = _Side("initiator", start_native(lab, topo.mob, conf_a, name="initiator",
                                                   program=program))
    sides = [initiator, responder]
    pinger: list[Pinger] = []
    try:
        code = _story(lab, topo, sides, record, pinger, err, timeout, started)
    finally:
        for p in pinger:
            lab.stop(p.proc)
        _pump(sides, record)
        _picture(lab, record, initiator, pinger[0] if pinger else None)
    if code == EXIT_OK:
        say(record.out, "OK")
    return code


def _story(lab: Lab, topo: Mobile, sides: list[_Side], record: Record,
           pinger_out: list[Pinger], err: TextIO, timeout: float, started: float) -> int:
    """From both daemons started to both stopped after two handovers; the pinger it
    starts goes to ``pinger_out`` so the caller can draw even a failed run."""
    out = record.out
    initiator = sides[0]
    m0, m1 = topo.uplinks
    problem = _watch(sides, record, timeout)
    if problem is not None:
        print(f"mobike-vici demo: FAILED: {problem}", file=err)
        return EXIT_FAILED

    up = next((ev for ev in initiator.events.events if ev.get("event") == "ike_sa_established"),
              {})
    say(out, f"tunnel up after {time.monotonic() - started:.1f} s: IKE_SA and CHILD_SA on "
         f"both sides, the client on {up.get('local', '?')}")
    record.detail(f"full tunnel: {_route(topo, ELSEWHERE)}; "
                  f"IKE and ESP from m1: {_route(topo, topo.gw4, m1.addr4, mark=True)}")
    say(out, f"pinging {INNER_ADDR} on gw through the tunnel every 10 ms")
    pinger = Pinger(lab, topo, record.path.with_name("ping.log"), target=INNER_ADDR)
    pinger_out.append(pinger)
    if pinger.wait(time.time() - 60.0, timeout) is None:
        print("mobike-vici demo: FAILED: no echo reply through the tunnel", file=err)
        return EXIT_FAILED
    time.sleep(STEADY)
    steps: list[tuple[str, Callable[[], None], str]] = [
        ("loud failure (m0 link down)", lambda: topo.link_down(0), m0.addr4),
        ("silent failure (m1 blackholed in rtr, link up)", lambda: topo.kill_silently(1),
         m1.addr4),
    ]
    for index, (what, fault, old) in enumerate(steps):
        if index == 1:
            # m0 back first (with its routes), so there is somewhere to go.
            topo.link_up(0)
            say(out, "m0 back up; a second for the probes to find it")
            time.sleep(1.0)
        say(out, f"fault {index + 1}: {what}")
        problem = _handover(sides, pinger, record, what, fault, old)
        if problem is not None:
            print(f"mobike-vici demo: FAILED: {problem}", file=err)
            return EXIT_FAILED
    time.sleep(STEADY)
    lab.stop(pinger.proc)

    status = initiator.daemon.status()
    record.detail("`mobike-vici status` of the initiator:")
    if record.verbose:
        out.write(status.stdout)
    if status.returncode != 0:
        print(f"mobike-vici demo: status failed ({status.returncode}): "
              f"{status.stderr.strip()}", file=err)
        return EXIT_FAILED

    say(out, "tearing down")
    for side in sides:
        side.daemon.stop()
    return EXIT_OK
