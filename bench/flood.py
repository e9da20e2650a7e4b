"""Benchmark: an IKE_SA_INIT flood against a responder that carries a live tunnel,
our native responder and charon side by side in the same run.

Lab (the mobile topology of mobike_vici/lab/handover.py plus two hosts on rtr):

```
 mob (charon, tunnel up) --m0-- rtr --g0-- gw (the responder under test)
 atk (flooder, a /23 of sources) --/
 new (charon, a legitimate new peer) --/
```

For each responder (native, then charon, same configs): mob sets up its tunnel and
pings through it at 100 Hz (``ping -i 0.01``, ICMP echo to gw's inner address, so
both directions cross the responder's data plane). Then ``atk`` floods gw with valid
IKE_SA_INIT requests (fresh SPI and nonce, a real KE value of the group it picks,
MODP-4096 by default, which gw accepts) from every one of its source addresses,
paced to ``--rate`` per second for ``--duration`` seconds; it never answers
COOKIEs. A third of the way into the flood, ``new`` (charon) initiates an IKE_SA and
a CHILD_SA to gw: does it get in, and how long does it take?

Reported per responder: offered and achieved request rate, the ping loss during
the flood (and before it, as a baseline), whether the new peer established and its
setup time, and the responder's CPU time during the flood. Prints one JSON object;
never judges the numbers. Needs root and strongSwan.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine
from ike_setup import _cpu_seconds

from mobike_vici.lab.charon import Charon, charon_available, start_charon
from mobike_vici.lab.handover import GW4, source_routes
from mobike_vici.lab.native import NativeDaemon, start_native
from mobike_vici.lab.netns import Lab, LabError, Netns, is_root
from mobike_vici.lab.topology import Mobile, mobile
from mobike_vici.lab.tunnel import CHILD, CONN, INNER_ADDR, swanctl_conf, wait_ping

GEN = Path(__file__).resolve().parent / "_flood_gen.py"
REPO = Path(__file__).resolve().parents[1]
ATTACK_LINK = ("10.66.255.1", "10.66.255.2")  # rtr side, attacker side (/16 on the link)
ATTACK_PREFIX = "10.66"
NEW_LINK = ("10.67.0.1", "10.67.0.2")
GW_PROPOSALS = "aes128-sha256-x25519-modp2048-modp4096"
"""gw accepts the expensive groups too: a flooder picks the one that costs gw most."""
EXIT_NO_ROOT = 2

End = NativeDaemon | Charon


def udp_counters(ns: Netns) -> dict[str, int]:
    """The namespace's UDP counters (/proc/net/snmp): datagrams delivered to sockets,
    and those the kernel dropped because a socket's receive buffer was full."""
    lines = [ln.split() for ln in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=False))
    return {"in_datagrams": values.get("InDatagrams", 0),
            "rcvbuf_errors": values.get("RcvbufErrors", 0)}


def _batch(ns: Netns, lines: list[str]) -> None:
    ns.run("ip", "-batch", "-", input_text="\n".join(lines) + "\n")


def build_lab(lab: Lab, sources: int) -> tuple[Mobile, Netns, Netns, list[str]]:
    topo = mobile(lab)
    for index in (0, 1):
        source_routes(topo, index)
    topo.gw.add_address("lo", f"{INNER_ADDR}/32")
    atk = lab.netns("atk")
    lab.link(topo.rtr, "a0", atk, "eth0")
    topo.rtr.add_address("a0", f"{ATTACK_LINK[0]}/16")
    atk.add_address("eth0", f"{ATTACK_LINK[1]}/16")
    atk.ip("route", "add", "default", "via", ATTACK_LINK[0])
    addrs = [f"{ATTACK_PREFIX}.{1 + i // 254}.{1 + i % 254}" for i in range(sources)]
    _batch(atk, [f"address add {a}/16 dev eth0" for a in addrs])
    new = lab.netns("new")
    lab.link(topo.rtr, "n0", new, "eth0")
    topo.rtr.add_address("n0", f"{NEW_LINK[0]}/24")
    new.add_address("eth0", f"{NEW_LINK[1]}/24")
    new.ip("route", "add", "default", "via", NEW_LINK[0])
    return topo, atk, new, addrs


def gw_conf() -> str:
    # unique = never: the new peer shares mob's identity and must not replace its SA.
    text = swanctl_conf(initiator=False, local=GW4, remote="%any")
    return text.replace("proposals = aes128-sha256-x25519",
                        f"proposals = {GW_PROPOSALS}\n    unique = never", 1)


def start_gw(lab: Lab, topo: Mobile, kind: str, conf: Path) -> End:
    if kind == "native":
        return start_native(lab, topo.gw, conf, name="gw-native")
    gw = start_charon(lab, topo.gw, name="gw-charon")
    gw.load_all(conf)
    return gw


def gw_version(gw: End) -> str:
    if isinstance(gw, NativeDaemon):
        return "mobike-vici native"
    v = gw.session().version()
    return " ".join(str(x.decode() if isinstance(x, bytes) else x)
                    for x in (v.get("daemon"), v.get("version")))


def ping_loss(text: str) -> dict[str, Any]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if m is None:
        return {"error": "no ping summary", "output": text[-300:]}
    sent, got = int(m.group(1)), int(m.group(2))
    return {"sent": sent, "received": got,
            "loss_pct": round(100.0 * (sent - got) / sent, 2) if sent else None}


def run_one(lab: Lab, kind: str, opts: argparse.Namespace, topo: Mobile, atk: Netns,
            new: Netns, sources_file: Path) -> dict[str, Any]:
    conf_gw = lab.workdir / f"gw-{kind}.conf"
    conf_gw.write_text(gw_conf())
    gw = start_gw(lab, topo, kind, conf_gw)
    mob = new_peer = None
    try:
        mob = start_charon(lab, topo.mob, name=f"mob-{kind}")
        conf_mob = lab.workdir / "mob.conf"
        conf_mob.write_text(swanctl_conf(initiator=True, local="%any", remote=GW4, start=False))
        mob.load_all(conf_mob)
        mob.initiate(CHILD, ike=CONN)
        wait_ping(topo.mob, INNER_ADDR, 30.0)
        new_peer = start_charon(lab, new, name=f"new-{kind}")
        new_peer.load_all(conf_mob)
        count = int(opts.duration * 100)
        ping_cmd = ["ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c", str(count), INNER_ADDR]
        # Baseline: the same ping with no flood.
        base = topo.mob.run(*ping_cmd, check=False, timeout=opts.duration + 30)
        out = lab.workdir / f"flood-{kind}.json"
        gen = lab.spawn(atk, [sys.executable, str(GEN), "--target", GW4,
                              "--sources", str(sources_file), "--rate", str(opts.rate),
                              "--duration", str(opts.duration), "--proposal", opts.proposal,
                              "--out", str(out),
                              *(["--answer-cookies"] if opts.answer_cookies else [])],
                        lab.workdir / f"flood-{kind}.log",
                        env={"PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        while not Path(f"{out}.ready").exists():
            if gen.poll() is not None or time.monotonic() > deadline:
                raise LabError("flood generator did not start: "
                               + (lab.workdir / f"flood-{kind}.log").read_text()[-2000:])
            time.sleep(0.05)
        pid = gw.proc.pid
        cpu_before = _cpu_seconds(pid)
        udp_before = udp_counters(topo.gw)
        ping = subprocess.Popen(topo.mob.argv(ping_cmd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        Path(f"{out}.go").touch()
        time.sleep(opts.duration / 3)
        legit: dict[str, Any] = {}
        t0 = time.monotonic()
        try:
            new_peer.initiate(CHILD, ike=CONN, timeout_s=int(opts.duration))
            legit = {"established": True, "setup_s": round(time.monotonic() - t0, 3)}
        except LabError as exc:
            legit = {"established": False, "after_s": round(time.monotonic() - t0, 3),
                     "error": str(exc).splitlines()[0][:200]}
        gen.wait(timeout=opts.duration + 60)
        cpu_after = _cpu_seconds(pid)
        udp_after = udp_counters(topo.gw)
        ping_out, _ = ping.communicate(timeout=opts.duration + 30)
        flood = json.loads(out.read_text())
        cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after else None
        alive = gw.proc.poll() is None
        result: dict[str, Any] = {
            "responder": kind,
            "version": gw_version(gw) if alive else "exited",
            "offered_rate": opts.rate,
            "requests_sent": flood["requests"],
            "achieved_rate": round(flood["requests"] / flood["elapsed_s"], 1),
            "flood_s": round(flood["elapsed_s"], 2),
            "flood_sources": flood["sources"],
            "flood_proposal": flood["proposal"],
            "request_bytes": flood["request_bytes"],
            "flooder_answers_cookies": flood["answer_cookies"],
            "cookies_answered": flood["cookies_answered"],
            "other_replies": flood["other_replies"],
            "ping_baseline": ping_loss(base.stdout),
            "ping_during_flood": ping_loss(ping_out),
            "legit_peer": legit,
            "responder_cpu_s": round(cpu, 2) if cpu is not None else None,
            "responder_cpu_pct": (round(100 * cpu / flood["elapsed_s"], 1)
                                  if cpu is not None else None),
            "responder_alive": alive,
            # Everything UDP in gw's namespace during the flood (ESP-in-UDP of the
            # ping included): what reached a socket, what the kernel dropped unread.
            "responder_udp": {k: udp_after.get(k, 0) - udp_before.get(k, 0)
                              for k in ("in_datagrams", "rcvbuf_errors")},
        }
        if isinstance(gw, NativeDaemon):
            gw.events.poll()
            drops = [e for e in gw.events.events if e.get("event") == "packet_dropped"]
            result["packet_dropped_lines"] = len(drops)
            result["packet_dropped_total"] = sum(int(e.get("count", 1)) for e in drops)
        return result
    finally:
        for end in (new_peer, mob, gw):
            if end is not None:
                end.stop()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2500.0, help="requests/s (default 2500)")
    ap.add_argument("--duration", type=float, default=10.0, help="flood seconds (default 10)")
    ap.add_argument("--sources", type=int, default=508,
                    help="attacker source addresses (default 508, two /24s)")
    ap.add_argument("--proposal", default="aes128-sha256-modp4096",
                    help="the flooder's IKE proposal (its KE group is what gw computes)")
    ap.add_argument("--responders", default="native,charon")
    ap.add_argument("--answer-cookies", action="store_true",
                    help="the flooder owns its sources and answers every COOKIE, so each "
                         "request costs the responder a DH (up to its per-source caps)")
    args = ap.parse_args(argv)
    if not is_root() or not charon_available():
        print(json.dumps({"error": "needs root and strongSwan (charon)"}))
        return EXIT_NO_ROOT
    results = []
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        for kind in args.responders.split(","):
            # A fresh lab per responder: nothing left over from the other one.
            with Lab() as lab:
                topo, atk, new, addrs = build_lab(lab, args.sources)
                sources_file = lab.workdir / "sources.txt"
                sources_file.write_text("\n".join(addrs) + "\n")
                results.append(run_one(lab, kind.strip(), args, topo, atk, new, sources_file))
    except LabError as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "benchmark": "flood",
        "rate": args.rate,
        "flooder_answers_cookies": args.answer_cookies,
        "duration_s": args.duration,
        "ping_hz": 100,
        "results": results,
        "machine": machine(load_before),
        "elapsed_s": round(time.monotonic() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
