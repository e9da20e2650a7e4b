"""`mobike-vici demo`: two native daemons in throwaway namespaces bring up a tunnel.

Builds the two-host lab topology, writes an initiator and a responder config,
starts `mobike-vici native` on each side, prints both event streams until each
side reports ike_sa_established and child_sa_installed, shows `status` of the
initiator, and tears everything down. Needs root (network namespaces).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mobike_vici.lab.native import Event, EventFile, NativeDaemon, start_native
from mobike_vici.lab.netns import Lab, LabError, is_root, missing_tools
from mobike_vici.lab.topology import TwoHosts, two_hosts

TIMEOUT = 30.0
EXIT_OK, EXIT_FAILED, EXIT_NEED_ROOT = 0, 1, 2
REQUIRED_EVENTS = ("ike_sa_established", "child_sa_installed")
# Throwaway credentials for namespaces that exist only while the demo runs.
DEMO_PSK = "mobike-vici-demo-only-not-a-secret"
INNER_NET = "10.88.0.0/24"
POOL = "10.99.0.0/24"


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


def initiator_config(topo: TwoHosts) -> str:
    """The mobile side: asks for a virtual IP and starts its child at once."""
    return f"""# mobike-vici demo: initiator on host_a
connections {{
    demo {{
        version = 2
        local_addrs = {topo.a4}
        remote_addrs = {topo.b4}
        proposals = aes128-sha256-x25519
        vips = 0.0.0.0
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
                remote_ts = {INNER_NET}
                esp_proposals = aes128-sha256
                start_action = start
            }}
        }}
    }}
}}
{_secrets()}
mobike {{
}}
"""


def responder_config(topo: TwoHosts) -> str:
    """The gateway side: answers, hands out a virtual IP from a pool."""
    return f"""# mobike-vici demo: responder on host_b
connections {{
    demo {{
        version = 2
        local_addrs = {topo.b4}
        proposals = aes128-sha256-x25519
        pools = demo_pool
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
                local_ts = {INNER_NET}
                esp_proposals = aes128-sha256
            }}
        }}
    }}
}}
pools {{
    demo_pool {{
        addrs = {POOL}
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
    missing = missing_tools(("ip",))
    if missing:
        print(f"mobike-vici demo: missing tools: {', '.join(missing)} "
              "(install iproute2, or run scripts/bootstrap.sh)", file=err)
        return EXIT_NEED_ROOT
    try:
        with Lab() as lab:
            return _run(lab, out, err, timeout, program)
    except LabError as exc:
        print(f"mobike-vici demo: FAILED: {exc}", file=err)
        return EXIT_FAILED


def _run(lab: Lab, out: TextIO, err: TextIO, timeout: float,
         program: Sequence[str] | None) -> int:
    topo = two_hosts(lab)
    print(f"demo: namespaces {topo.host_a.name} ({topo.a4}) and {topo.host_b.name} "
          f"({topo.b4}), workdir {lab.workdir}", file=out, flush=True)
    conf_b = Path(lab.workdir / "responder.conf")
    conf_a = Path(lab.workdir / "initiator.conf")
    conf_b.write_text(responder_config(topo))
    conf_a.write_text(initiator_config(topo))

    responder = _Side("responder", start_native(lab, topo.host_b, conf_b, name="responder",
                                                   program=program))
    initiator = _Side("initiator", start_native(lab, topo.host_a, conf_a, name="initiator",
                                                   program=program))
    sides = [initiator, responder]
    problem = _watch(sides, out, timeout)
    if problem is not None:
        print(f"mobike-vici demo: FAILED: {problem}", file=err)
        return EXIT_FAILED

    print("demo: tunnel up on both sides; `mobike-vici status` of the initiator:",
          file=out, flush=True)
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
