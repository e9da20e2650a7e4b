"""`mobike-vici demo`: two native daemons in throwaway namespaces, a tunnel, two handovers.

Builds the mobile lab topology (mob with uplinks m0 and m1 through rtr to gw),
writes an initiator config for mob and a responder config for gw, starts
`mobike-vici native` on each side and prints both event streams until each side
reports ike_sa_established and child_sa_installed. Then, with a ping every 10 ms
through the tunnel, it takes the active uplink's link down (a loud failure), and
after that silently blackholes the other one in rtr (the link stays up): each time
the initiator's path manager moves the IKE_SA and its CHILD_SA with
UPDATE_SA_ADDRESSES, and the demo prints the measured outage (fault to the first
echo reply after it). Finally it shows `status` of the initiator and tears
everything down. Needs root (network namespaces).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from mobike_vici.lab.native import Event, EventFile, NativeDaemon, start_native
from mobike_vici.lab.netns import Lab, LabError, is_root
from mobike_vici.lab.prereq import describe, missing_tools
from mobike_vici.lab.topology import Mobile, TwoHosts, mobile
from mobike_vici.net.numbers import OUTER_FWMARK

TIMEOUT = 30.0
EXIT_OK, EXIT_FAILED, EXIT_NEED_ROOT = 0, 1, 2
REQUIRED_EVENTS = ("ike_sa_established", "child_sa_installed")
HANDOVER_TIMEOUT = 10.0
PING_INTERVAL = "0.01"
_REPLY = re.compile(rb"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")
# Throwaway credentials for namespaces that exist only while the demo runs.
DEMO_PSK = "mobike-vici-demo-only-not-a-secret"
INNER_ADDR = "10.88.0.1"
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
    """One daemon and what of its stream has been printed and seen."""

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


def _pump(sides: list[_Side], out: TextIO) -> None:
    """Print what every side wrote since the last call, in timestamp order."""
    batch = [item for side in sides for item in side.take()]
    batch.sort(key=lambda item: item[0])
    for _, label, ev in batch:
        print(f"[{label}] {json.dumps(ev)}", file=out, flush=True)


def _watch(sides: list[_Side], out: TextIO, timeout: float) -> str | None:
    """Print events until every side is done; None on success, else why not."""
    deadline = time.monotonic() + timeout
    while True:
        _pump(sides, out)
        if all(side.done for side in sides):
            return None
        for side in sides:
            if not side.daemon.alive():
                _pump(sides, out)
                return (f"the {side.label} daemon exited with {side.daemon.proc.returncode}; "
                        f"its log:\n{side.daemon.log_text()[-2000:]}")
        if time.monotonic() >= deadline:
            missing = {
                side.label: [n for n in REQUIRED_EVENTS if n not in side.seen] for side in sides
            }
            return f"no tunnel within {timeout:.0f} s; events still missing: {missing}"
        time.sleep(0.05)


def run_demo(out: TextIO | None = None, timeout: float = TIMEOUT,
             program: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when both sides are up, 1 on failure, 2 without root.

    `program` replaces `python -m mobike_vici` for the daemons (tests use a stub).
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
    try:
        with Lab() as lab:
            return _run(lab, out, err, timeout, program)
    except LabError as exc:
        print(f"mobike-vici demo: FAILED: {exc}", file=err)
        return EXIT_FAILED


class _Pinger:
    """``ping -D`` every 10 ms through the tunnel; reply times on the wall clock."""

    def __init__(self, lab: Lab, topo: Mobile) -> None:
        self.log = lab.workdir / "ping.log"
        self.proc = lab.spawn(topo.mob, ["ping", "-n", "-D", "-i", PING_INTERVAL,
                                         INNER_ADDR], self.log)

    def replies(self) -> list[float]:
        if not self.log.exists():
            return []
        return [float(m.group(1)) for line in self.log.read_bytes().splitlines()
                if (m := _REPLY.match(line)) is not None]

    def replies_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first reply after it, None if none yet."""
        return next((t - moment for t in self.replies() if t > moment), None)

    def gap(self, start: float, end: float) -> float:
        """The longest silence between replies from ``start`` to the first reply after
        ``end``: the outage as the traffic saw it (a reply already under way when
        the fault hit does not hide it)."""
        times = self.replies()
        before = [t for t in times if t <= start]
        after = [t for t in times if t > end]
        inside = [t for t in times if start < t <= end]
        points = [before[-1] if before else start, *inside, *after[:1]]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def wait(self, moment: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.replies_after(moment)
            if got is not None:
                return got
            time.sleep(0.02)
        return None


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


def _handover(sides: list[_Side], pinger: _Pinger, out: TextIO, what: str,
              fault: Callable[[], None], old: str) -> str | None:
    """Inject ``fault``, wait for the move off ``old`` and the first reply; None or why not."""
    initiator = sides[0]
    seen = len(initiator.events.events)
    moment = time.time()
    fault()
    outage = pinger.wait(moment, HANDOVER_TIMEOUT)
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while True:
        _pump(sides, out)
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
    print(f"demo: {what}: moved {moved[0]['old_local']} -> {moved[0]['local']}, "
          f"outage {gap * 1000:.0f} ms (longest gap in the echo replies; the move itself "
          f"took {float(moved[0].get('duration_ms', 0.0)):.0f} ms)", file=out, flush=True)
    return None


def _run(lab: Lab, out: TextIO, err: TextIO, timeout: float,
         program: Sequence[str] | None) -> int:
    topo = mobile(lab)
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    m0, m1 = topo.uplinks
    print(f"demo: namespaces {topo.mob.name} (uplinks m0 {m0.addr4}, m1 {m1.addr4}), "
          f"{topo.rtr.name}, {topo.gw.name} ({topo.gw4}), workdir {lab.workdir}",
          file=out, flush=True)
    conf_b = Path(lab.workdir / "responder.conf")
    conf_a = Path(lab.workdir / "initiator.conf")
    conf_b.write_text(responder_config(topo))
    conf_a.write_text(initiator_config(topo))

    responder = _Side("responder", start_native(lab, topo.gw, conf_b, name="responder",
                                                   program=program))
    initiator = _Side("initiator", start_native(lab, topo.mob, conf_a, name="initiator",
                                                   program=program))
    sides = [initiator, responder]
    problem = _watch(sides, out, timeout)
    if problem is not None:
        print(f"mobike-vici demo: FAILED: {problem}", file=err)
        return EXIT_FAILED

    print(f"demo: tunnel up on both sides; full tunnel: {_route(topo, ELSEWHERE)}; "
          f"IKE and ESP from m1: {_route(topo, topo.gw4, '10.2.0.2', mark=True)}",
          file=out, flush=True)
    print(f"demo: pinging {INNER_ADDR} through the tunnel every 10 ms", file=out, flush=True)
    pinger = _Pinger(lab, topo)
    if pinger.wait(time.time() - 60.0, timeout) is None:
        print("mobike-vici demo: FAILED: no echo reply through the tunnel", file=err)
        return EXIT_FAILED
    steps: list[tuple[str, Callable[[], None], str]] = [
        ("loud failure (m0 link down)", lambda: topo.link_down(0), m0.addr4),
        ("silent failure (m1 blackholed in rtr, link up)", lambda: topo.kill_silently(1),
         m1.addr4),
    ]
    for index, (what, fault, old) in enumerate(steps):
        if index == 1:
            # m0 back first (with its routes), so there is somewhere to go.
            topo.link_up(0)
            time.sleep(1.0)  # a few probes find it up
        print(f"demo: {what}", file=out, flush=True)
        problem = _handover(sides, pinger, out, what, fault, old)
        if problem is not None:
            _pump(sides, out)
            print(f"mobike-vici demo: FAILED: {problem}", file=err)
            return EXIT_FAILED
    lab.stop(pinger.proc)

    print("demo: `mobike-vici status` of the initiator:", file=out, flush=True)
    status = initiator.daemon.status()
    out.write(status.stdout)
    if status.returncode != 0:
        print(f"mobike-vici demo: status failed ({status.returncode}): {status.stderr.strip()}",
              file=err)
        return EXIT_FAILED

    print("demo: tearing down", file=out, flush=True)
    for side in sides:
        side.daemon.stop()
    _pump(sides, out)
    print("demo: OK", file=out, flush=True)
    return EXIT_OK
