"""`mobike-vici demo --backend charon`: the product itself, beside charon alone.

Two copies of the mobile lab topology (each in its own Lab: mob with uplinks m0 and
m1 through rtr to gw), charon (kernel-libipsec) at both ends of each. Beside one
mobile charon runs `mobike-vici run` (it loads the connection and steers charon by
routes, with ``prefer_best_path``); the other charon is alone, as stock as the lab's
charon gets. Both tunnels come up on m0 and carry a ping every 10 ms. Then, at the
same instant, both routers silently drop everything of m0 (the link stays up): the
controller's probes miss, it moves the IKE_SA to m1 and the pings come back; charon
alone's dead peer detection finds the silence and retransmits, on the dead path,
for 165 s before it gives up: it is still down when the demo stops watching.

What a person reads is a short narrative; the controller's events (side
``controlled``), the fault and where charon alone's IKE_SA was seen (side ``demo``)
go to ``events.jsonl``; each tunnel's ping log and one picture of both go beside it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mobike_vici.demo_common import EXIT_FAILED, EXIT_OK, INNER_ADDR, Pinger, Record, fresh, say
from mobike_vici.lab.charon import Charon, charon_available, check_plugins, start_charon
from mobike_vici.lab.native import Event, EventFile
from mobike_vici.lab.netns import Lab, LabError
from mobike_vici.lab.topology import Mobile, mobile
from mobike_vici.timeline import TimelineError, render, timestamp

BOOTSTRAP = "scripts/bootstrap.sh --with-strongswan"
UP_TIMEOUT = 30.0
MOVE_TIMEOUT = 10.0
OBSERVE = 20.0
"""Seconds from the fault until the demo stops watching: the controlled tunnel is back
long before, charon alone is still down."""
STEADY = 2.0
"""Seconds of undisturbed pings before the fault: the picture's normal RTT."""
PREFER_BEST_PATH = "prefer_best_path = yes\n    process_route = yes"
"""What swanctl/strongswan.d/mobike-vici.conf sets for charon beside the controller:
follow the controller's routes (without it charon ignores them while its path "works")."""
# Throwaway credentials for namespaces that exist only while the demo runs.
DEMO_PSK = "mobike-vici-demo-only-not-a-secret"
PROBE = "probe_interval = 200ms\n    probe_timeout = 300ms"
DPD_DELAY = "2s"
_RETRANSMIT = re.compile(r"retransmit \d+ of request")


@dataclass(frozen=True)
class Role:
    """One of the two pairs: its connection name, its label, and whether it is steered."""

    conn: str
    label: str
    controlled: bool


CONTROLLED = Role("controlled", "charon + mobike-vici run", True)
ALONE = Role("alone", "charon alone", False)


def strongswan_missing() -> str | None:
    """Why charon cannot run here (naming the bootstrap option), or None."""
    if not charon_available():
        return f"strongSwan's charon and swanctl are not installed; run `{BOOTSTRAP}`"
    try:
        check_plugins()
    except LabError as exc:
        return str(exc)
    return None


def gateway_config(topo: Mobile, conn: str) -> str:
    """The gateway: answers, hands out a virtual IP, offers 10.88.0.0/24 (INNER_ADDR)."""
    return f"""# mobike-vici demo: charon on the gateway
connections {{
    {conn} {{
        version = 2
        local_addrs = {topo.gw4}
        proposals = aes128-sha256-x25519
        pools = demo_pool
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
                local_ts = 10.88.0.0/24
                esp_proposals = aes128-sha256
            }}
        }}
    }}
}}
pools {{
    demo_pool {{
        addrs = 10.99.0.0/24
    }}
}}
{_secrets()}"""


def mobile_config(topo: Mobile, conn: str) -> str:
    """The mobile side, the same for both pairs but for the name: dead peer detection
    after 2 s of silence, so charon alone does all it can; the ``mobike { }`` section
    is the controller's (charon alone never reads it): m0 first, m1 the backup."""
    return f"""# mobike-vici demo: charon on the mobile host
connections {{
    {conn} {{
        version = 2
        remote_addrs = {topo.gw4}
        dpd_delay = {DPD_DELAY}
        proposals = aes128-sha256-x25519
        vips = 0.0.0.0
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
                remote_ts = 10.88.0.0/24
                esp_proposals = aes128-sha256
                start_action = start
            }}
        }}
    }}
}}
{_secrets()}
mobike {{
    {PROBE}
    prefer {{
        primary {{
            interface = m0
            cost = 0
        }}
        backup {{
            interface = m1
            cost = 10
        }}
    }}
}}
"""


def _secrets() -> str:
    return f"""secrets {{
    ike-demo {{
        id-1 = initiator@demo
        id-2 = responder@demo
        secret = "{DEMO_PSK}"
    }}
}}
"""


@dataclass
class Pair:
    """One mobile topology with charon at both ends, steered or alone."""

    role: Role
    lab: Lab
    topo: Mobile
    gw: Charon
    mob: Charon
    controller: subprocess.Popen[bytes] | None
    events: EventFile | None
    pinger: Pinger | None = None

    def local(self) -> str:
        """Where charon's IKE_SA is now, by its own list-sas ("" when it has none)."""
        return str(self.mob.list_sas().get(self.role.conn, {}).get("local-host", ""))

    def vip(self) -> str:
        vips = self.mob.list_sas().get(self.role.conn, {}).get("local-vips", [])
        if not vips:
            raise LabError(f"{self.role.label}: no virtual IP from the gateway")
        return str(vips[0])


def _build(lab: Lab, role: Role) -> Pair:
    """The topology, both charons, the gateway's config, and the mobile side's: loaded by
    the controller it runs beside, or by swanctl when charon is alone."""
    topo = mobile(lab)
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    gw = start_charon(lab, topo.gw, name="gw")
    mob = start_charon(lab, topo.mob, name="mob",
                       extra_charon=PREFER_BEST_PATH if role.controlled else "")
    gw_conf, mob_conf = lab.workdir / "gw-swanctl.conf", lab.workdir / "mob-swanctl.conf"
    gw_conf.write_text(gateway_config(topo, role.conn))
    mob_conf.write_text(mobile_config(topo, role.conn))
    gw.load_all(gw_conf)
    if not role.controlled:
        mob.load_all(mob_conf)
        return Pair(role, lab, topo, gw, mob, None, None)
    events = lab.workdir / "controller-events.jsonl"
    proc = lab.spawn(topo.mob, [sys.executable, "-m", "mobike_vici", "run", "--load",
                                "--config", str(mob_conf), "--vici", mob.uri,
                                "--events", str(events),
                                "--control", str(lab.workdir / "ctl.sock"),
                                "--strongswan-conf", str(mob.rundir / "strongswan.conf")],
                     lab.workdir / "controller.out")
    return Pair(role, lab, topo, gw, mob, proc, EventFile(events))


def _relay(pair: Pair, record: Record) -> None:
    """The controller's new events into the record; a controller that died says why."""
    for ev in pair.events.poll() if pair.events is not None else []:
        record.event(pair.role.conn, ev)
    if pair.controller is not None and pair.controller.poll() is not None:
        out = pair.lab.workdir / "controller.out"
        text = out.read_text(errors="replace")[-2000:] if out.exists() else ""
        raise LabError(f"mobike-vici run exited with {pair.controller.returncode}:\n{text}")


def _observed(record: Record, pair: Pair) -> None:
    """Where charon's IKE_SA is, as its list-sas says: the mark the picture's path panel
    draws for the pair no daemon of ours reports on."""
    record.event("demo", {"timestamp": timestamp(time.time()), "event": "sa_observed",
                          "level": "info", "conn": pair.role.conn, "local": pair.local(),
                          "by": "list-sas"})


def _wait_up(pairs: list[Pair], record: Record, timeout: float) -> None:
    """Both IKE_SAs established with their CHILD_SA, the controlled one tracked, both on m0."""
    deadline = time.monotonic() + timeout
    m0 = pairs[0].topo.uplinks[0].addr4
    for pair in pairs:
        pair.mob.wait_established(pair.role.conn, timeout=max(1.0, deadline - time.monotonic()))
    controlled = next(p for p in pairs if p.role.controlled)
    while True:
        _relay(controlled, record)
        tracked = controlled.events is not None and any(
            ev.get("event") == "ike_sa_tracked" for ev in controlled.events.events)
        if tracked and all(pair.local() == m0 for pair in pairs):
            return
        if time.monotonic() > deadline:
            where = {p.role.label: p.local() for p in pairs}
            raise LabError(f"tunnels not both tracked and on m0 within {timeout:.0f} s: {where}")
        time.sleep(0.1)


def _moved(pair: Pair, record: Record, old: str, timeout: float) -> Event | None:
    """The controller's handover_completed off ``old``, None if none within ``timeout``."""
    assert pair.events is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _relay(pair, record)
        done = next((ev for ev in pair.events.events if ev.get("event") == "handover_completed"
                     and str(ev.get("old_local", "")).startswith(old)), None)
        if done is not None:
            return done
        time.sleep(0.05)
    return None


@contextlib.contextmanager
def _pairs(record: Record) -> Iterator[list[Pair]]:
    """Both pairs, each in its own Lab (same addresses, separate namespaces); every
    namespace and process goes when the block ends, however it ends."""
    with contextlib.ExitStack() as stack:
        pairs = []
        for role in (CONTROLLED, ALONE):
            lab = stack.enter_context(Lab())
            pair = _build(lab, role)
            pairs.append(pair)
            names = ", ".join(ns.name for ns in (pair.topo.mob, pair.topo.rtr, pair.topo.gw))
            record.detail(f"{role.label}: namespaces {names}; workdir {lab.workdir}")
        yield pairs


def run_charon(record: Record, err: TextIO, timeout: float = UP_TIMEOUT,
               observe: float = OBSERVE) -> int:
    """The charon demo into ``record``'s directory; 0 when the controlled tunnel moved and
    answered again, 1 when not (charon alone is told as it went, never judged)."""
    out = record.out
    say(out, "building two mobile clients, each with its own gateway, in network "
        "namespaces: mob (uplinks m0, m1) -> rtr -> gw, twice")
    say(out, "starting charon (userspace ESP, kernel-libipsec) at both ends of both; "
        "beside one mobile charon `mobike-vici run` (probes every 200 ms, m1 the backup), "
        "the other charon alone")
    say(out, f"raw events: {record.path}"
        + ("" if record.verbose else " (--verbose prints them here too)"))
    started = time.monotonic()
    logs = {role.conn: record.path.with_name(f"ping-{role.conn}.log")
            for role in (CONTROLLED, ALONE)}
    code = EXIT_FAILED
    try:
        with _pairs(record) as pairs:
            try:
                code = _story(pairs, record, err, timeout, observe, started)
            finally:
                say(out, "tearing down")
                for pair in pairs:
                    if pair.pinger is not None:
                        pair.lab.stop(pair.pinger.proc)
                    if pair.controller is not None:
                        # Stopped before its charon: it unloads what it loaded, and
                        # says so (controller_stopped) into the record.
                        pair.lab.stop(pair.controller, grace=10.0)
                        with contextlib.suppress(LabError):
                            _relay(pair, record)
    finally:
        _picture(record, logs)
    if code == EXIT_OK:
        say(out, "OK")
    return code


def _story(pairs: list[Pair], record: Record, err: TextIO, timeout: float, observe: float,
           started: float) -> int:
    out = record.out
    controlled, alone = pairs
    m0, m1 = controlled.topo.uplinks
    _wait_up(pairs, record, timeout)
    _observed(record, alone)
    say(out, f"tunnels up after {time.monotonic() - started:.1f} s, both on m0 {m0.addr4} "
        f"(m1 {m1.addr4}) to {controlled.topo.gw4}")
    say(out, f"pinging {INNER_ADDR} on each gateway through its tunnel every 10 ms")
    for pair in pairs:
        pair.pinger = Pinger(pair.lab, pair.topo, record.path.with_name(
            f"ping-{pair.role.conn}.log"), source=pair.vip(), unanswered=True)
    for pair in pairs:
        assert pair.pinger is not None
        if pair.pinger.wait(time.time() - 60.0, timeout) is None:
            print(f"mobike-vici demo: FAILED: no echo reply through {pair.role.label}'s tunnel",
                  file=err)
            return EXIT_FAILED
    time.sleep(STEADY)

    what = "m0 silently dropped in rtr (link up)"
    say(out, f"fault, in both at the same instant: {what}")
    moment = time.time()
    for pair in pairs:
        pair.topo.kill_silently(0)
    # Each router's rules take a few ms to install: charon alone is judged from the
    # moment its own are in, not by an echo answered while they went in.
    alone_from = time.time()
    record.fault(what, moment)

    code = _told_controlled(controlled, record, err, moment, m0.addr4)
    time.sleep(max(0.0, moment + observe - time.time()))
    _told_alone(alone, record, moment, alone_from)
    return code


def _told_controlled(pair: Pair, record: Record, err: TextIO, moment: float, old: str) -> int:
    assert pair.pinger is not None and pair.events is not None
    done = _moved(pair, record, old, MOVE_TIMEOUT)
    if done is None:
        print(f"mobike-vici demo: FAILED: {pair.role.label}: no handover_completed off {old} "
              f"within {MOVE_TIMEOUT:.0f} s", file=err)
        return EXIT_FAILED
    back = time.time()
    if pair.pinger.wait(back, MOVE_TIMEOUT) is None:
        print(f"mobike-vici demo: FAILED: {pair.role.label}: no echo reply after the move",
              file=err)
        return EXIT_FAILED
    gap = pair.pinger.gap(moment, back)
    down = next((ev for ev in pair.events.events if ev.get("event") == "path_down"), {})
    noticed = f"noticed as {down['reason']}, " if down.get("reason") else ""
    say(record.out, f"  {pair.role.label}: moved {done.get('old_local')} -> {done.get('local')}, "
        f"outage {gap * 1000:.0f} ms ({noticed}the move itself took "
        f"{float(done.get('duration_ms', 0.0)):.0f} ms)")
    return EXIT_OK


def _told_alone(pair: Pair, record: Record, moment: float, faulted: float) -> None:
    assert pair.pinger is not None
    _observed(record, pair)
    # Replies already on their way when the rules went in are not a recovery.
    back = pair.pinger.replies_after(faulted + 0.1)
    where = pair.local() or "no IKE_SA"
    retransmits = len(_RETRANSMIT.findall(pair.mob.log_text()))
    if back is None:
        say(record.out, f"  {pair.role.label}: still down after {time.time() - moment:.0f} s, "
            f"its IKE_SA still on {where} (its dead peer detection retransmitted "
            f"{retransmits} times there; charon gives up after 165 s)")
    else:
        say(record.out, f"  {pair.role.label}: answered again "
            f"{back + faulted + 0.1 - moment:.1f} s after the fault, "
            f"its IKE_SA on {where}")


def _picture(record: Record, logs: dict[str, Path]) -> None:
    """Both tunnels' pings in one picture with the controller's events, the fault and
    charon alone's whereabouts; the connections are drawn under their labels."""
    labels = {role.conn: role.label for role in (CONTROLLED, ALONE)}
    source = record.path.with_name("timeline-events.jsonl")
    try:
        with open(fresh(source), "w", encoding="utf-8") as f:
            for line in record.path.read_text(encoding="utf-8").splitlines():
                ev = json.loads(line)
                if ev.get("conn") in labels:
                    ev["conn"] = labels[ev["conn"]]
                print(json.dumps(ev), file=f)
        png = render(source, fresh(record.path.with_name("timeline.png")),
                     pings=[(labels[conn], log) for conn, log in logs.items() if log.exists()],
                     title="the active uplink silently dropped: charon + mobike-vici run "
                           "keeps its tunnel, charon alone loses it")
    except (TimelineError, OSError, ValueError) as exc:
        print(f"mobike-vici demo: no picture: {exc}", file=sys.stderr)
        return
    finally:
        source.unlink(missing_ok=True)
    say(record.out, f"picture: {png}")
