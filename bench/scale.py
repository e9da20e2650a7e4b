"""Benchmark: the responder holding 100, 1,000 and 10,000 IKE_SA+CHILD_SAs, native vs charon.

For each responder (ours, then charon 5.9.8 with kernel-libipsec, the same
swanctl.conf) the initiator (``_hold.py``, on the native core, in the other
namespace) builds up the sizes in ``--sizes`` and keeps every SA. At each size:
the setup rate of the setups that brought it there, the responder's CPU per
setup, its resident memory per IKE_SA+CHILD_SA (RSS growth over the size),
and the time of one full status listing (``mobike-vici status --json``; for
charon, VICI ``list-sas``). Then a rekey wave: the responder's CHILD_SAs have
a short ``rekey_time`` (``--rekey-time``), so every CHILD_SA is rekeyed by the
responder while the initiator answers; the wave counts rekeys, and any IKE_SA
or CHILD_SA lost. Then (``--attached``, ``_attached.py``) charon as the gateway with
``mobike-vici run`` attached at the same sizes: the controller's idle CPU and memory,
the ``ike-update`` rate it absorbs and its lag, and its resync after a charon restart
(JSON section ``charon_attached``). Prints one JSON object; never judges the numbers.
Needs root.

The responders get the load-test limits of ``ike_setup.py`` (many SAs of one
identity from few addresses), and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attached import LISTING_TIMEOUT, _rss_kib, charon_sa_counts, run_attached
from _machine import machine
from ike_setup import (
    CHARON_LOAD_LIMITS,
    FIRST_SOURCE,
    NATIVE_LOAD_LIMITS,
    RESPONDER_ADDR,
    Options,
    _cpu_seconds,
    _s,
    charon_conf,
    initiator_conf,
    limited_by,
    native_limits_conf,
    responder_conf,
)

from mobike_vici.lab.charon import start_charon
from mobike_vici.lab.native import start_native
from mobike_vici.lab.netns import Lab, LabError, Netns, is_root
from mobike_vici.lab.topology import TwoHosts, two_hosts

REPO = Path(__file__).resolve().parents[1]
HOLD = Path(__file__).resolve().parent / "_hold.py"
EXIT_NO_ROOT = 2


@dataclass
class Held:
    name: str
    version: str
    pid: int
    stop: Callable[[], object]
    counts: Callable[[], tuple[int, int]]
    """(IKE_SAs, CHILD_SAs) the responder holds, from one full listing."""


def _with_rekey(conf: str, rekey_time: float) -> str:
    # The responder rekeys every CHILD_SA after rekey_time (less up to 10% jitter).
    # charon takes whole seconds only.
    rekey = round(rekey_time)
    return conf.replace("esp_proposals =", f"rekey_time = {rekey}s\n"
                        f"                life_time = {rekey * 3 // 2}s\n"
                        f"                rand_time = {max(1, rekey // 10)}s\n"
                        "                esp_proposals =", 1)


def start_native_held(lab: Lab, ns: Netns, opts: Options, addr: str,
                      rekey_time: float) -> Held:
    conf = lab.workdir / "native-responder.conf"
    conf.write_text(_with_rekey(responder_conf(opts, addr), rekey_time) + native_limits_conf())
    daemon = start_native(lab, ns, conf, name="scale-responder", timeout=30.0)

    def counts() -> tuple[int, int]:
        argv = [*daemon.program, "status", "--control", str(daemon.control), "--json"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=LISTING_TIMEOUT,
                              check=False)
        if proc.returncode != 0:
            raise LabError(f"status --json failed: {proc.stderr[-500:]}")
        sas = json.loads(proc.stdout).get("ike_sas") or []
        return len(sas), sum(len(sa.get("children") or []) for sa in sas)

    return Held("native", "mobike-vici native", daemon.proc.pid, daemon.stop, counts)


def start_charon_held(lab: Lab, ns: Netns, opts: Options, addr: str,
                      rekey_time: float) -> Held:
    charon = start_charon(lab, ns, name="scale", make_conf=charon_conf)
    swanctl = charon.rundir / "swanctl.conf"
    swanctl.write_text(_with_rekey(responder_conf(opts, addr), rekey_time))
    charon.load_all(swanctl)
    version = charon.session().version()
    text = f"{_s(version.get('daemon'))} {_s(version.get('version'))}".strip()

    return Held("charon", text, charon.proc.pid, charon.stop,
                lambda: charon_sa_counts(charon.vici_path))


STARTERS = {"native": start_native_held, "charon": start_charon_held}


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise LabError(f"initiator did not reach {path.name}:\n{tail}")
        time.sleep(0.05)


def run_responder(lab: Lab, topo: TwoHosts, opts: Options, args: argparse.Namespace,
                  sources: Sequence[str], name: str) -> dict[str, Any]:
    held = STARTERS[name](lab, topo.host_b, opts, topo.b4, args.rekey_time)
    workdir = lab.workdir / f"hold-{name}"
    workdir.mkdir()
    try:
        conf = workdir / "initiator.conf"
        conf.write_text(initiator_conf(opts, sources, topo.b4))
        out = workdir / "result.json"
        log = workdir / "hold.log"
        env = {"PYTHONPATH": str(REPO)}
        proc = lab.spawn(topo.host_a, [sys.executable, str(HOLD), "--config", str(conf),
                                       "--out", str(out), "--concurrency",
                                       str(opts.concurrency), "--stages",
                                       ",".join(str(s) for s in args.sizes)], log, env=env)
        try:
            return _measure(held, proc, out, log, args)
        finally:
            Path(f"{out}.stop").touch()
            for i in range(len(args.sizes)):
                Path(f"{out}.go{i}").touch()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        held.stop()


def _measure(held: Held, proc: subprocess.Popen[bytes], out: Path, log: Path,
             args: argparse.Namespace) -> dict[str, Any]:
    rss0 = _rss_kib(held.pid)
    sizes: list[dict[str, Any]] = []
    build_start = time.monotonic()
    for i, size in enumerate(args.sizes):
        cpu0 = _cpu_seconds(held.pid)
        _wait_file(Path(f"{out}.stage{i}"), proc, args.stage_timeout, log)
        cpu1 = _cpu_seconds(held.pid)
        stage = json.loads(Path(f"{out}.stage{i}").read_text())
        done = stage["completed_this_stage"]
        seconds = stage["last_setup"] - stage["started"]
        rss = _rss_kib(held.pid)
        t0 = time.monotonic()
        ike, child, listing_error = _counts(held)
        listing_s = time.monotonic() - t0
        wall = stage["ended"] - stage["started"]
        sizes.append({
            "size": size,
            "setups": done,
            "setups_per_s": round(done / seconds, 1) if seconds > 0 else None,
            "failures": stage["failures"],
            "responder_cpu_ms_per_setup": (round((cpu1 - cpu0) / done * 1000, 2)
                                           if done and cpu0 is not None and cpu1 is not None
                                           else None),
            "initiator_cpu_ms_per_setup": round(stage["cpu_s"] / done * 1000, 2) if done else None,
            "initiator_idle_fraction": round(stage["idle_s"] / wall, 3) if wall > 0 else None,
            "limited_by": limited_by(stage["idle_s"], 1, wall),
            "ike_sas_held": ike,
            "child_sas_held": child,
            "rss_kib": rss,
            "rss_kib_per_ike_child": (round((rss - rss0) / ike, 2)
                                      if rss is not None and rss0 is not None and ike else None),
            "status_listing_s": round(listing_s, 3),
            **({"listing_error": listing_error} if listing_error else {}),
        })
        Path(f"{out}.go{i}").touch()
    build_s = time.monotonic() - build_start
    # The wave: the last SA set up rekeys at most rekey_time after it was set up.
    target = sizes[-1]["child_sas_held"] if sizes else None
    end = time.monotonic() + args.rekey_time + args.wave_margin
    idle_cpu0 = _cpu_seconds(held.pid)
    t0 = time.monotonic()
    while time.monotonic() < end:
        time.sleep(1.0)
    wave_cpu = (_cpu_seconds(held.pid) or 0.0) - (idle_cpu0 or 0.0)
    wave_s = time.monotonic() - t0
    ike_after, child_after, listing_error = _counts(held)
    Path(f"{out}.stop").touch()
    _wait_file(out, proc, 60, log)
    final = json.loads(out.read_text())
    return {
        "responder": held.name,
        "version": held.version,
        "sizes": sizes,
        "build_s": round(build_s, 1),
        "rekey_wave": {
            "rekey_time_s": args.rekey_time,
            "observed_s": round(wave_s, 1),
            "child_sas_before": target,
            "child_sas_rekeyed": final["child_sas_rekeyed"],
            "held_ike_sas_with_a_child_rekey": final["held_ike_sas_with_a_child_rekey"],
            "ike_sas_after": ike_after,
            "child_sas_after": child_after,
            "ike_sas_lost_at_initiator": final["ike_sas_lost"],
            "child_sas_deleted_at_initiator": final["child_sas_deleted"],
            "initiator_held_after": final["held"],
            "responder_cpu_s": round(wave_cpu, 2),
            **({"listing_error": listing_error} if listing_error else {}),
        },
    }


def _counts(held: Held) -> tuple[int | None, int | None, str | None]:
    """The responder's own count, or why it could not give one (the run goes on)."""
    try:
        ike, child = held.counts()
    except Exception as exc:  # a measurement, never a reason to lose the others
        return None, None, f"{type(exc).__name__}: {exc}"[:300]
    return ike, child, None


def run(args: argparse.Namespace) -> dict[str, Any]:
    opts = Options(count=0, duration=0.0, concurrency=args.concurrency, proposal=args.proposal,
                   esp_proposal=args.esp_proposal, workers=1, addresses=args.addresses,
                   delete=False, setup_timeout=10.0, responders=tuple(args.responders),
                   warmup=0, rounds=1)
    load_before = os.getloadavg()
    results = []
    with Lab() as lab:
        topo = two_hosts(lab)
        sources = [f"192.0.2.{FIRST_SOURCE + i}" for i in range(opts.addresses)]
        for addr in sources:
            topo.host_a.add_address(topo.ifname, f"{addr}/24")
        topo.host_b.add_address("lo", RESPONDER_ADDR)
        for name in args.responders if args.attached != "only" else ():
            try:
                result = run_responder(lab, topo, opts, args, sources, name)
            except LabError as exc:
                result = {"responder": name, "error": str(exc)[-1000:]}
            # On stderr as soon as it is known: a later failure loses nothing.
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
        attached: dict[str, Any] | None = None
        if args.attached != "no":
            try:
                attached = run_attached(lab, topo, opts, sources, args.sizes, args.idle,
                                        args.update_rates, args.update_duration)
            except (LabError, OSError, ValueError, KeyError) as exc:  # keep the rest
                attached = {"error": f"{type(exc).__name__}: {exc}"[-1000:]}
    return {
        "benchmark": "scale",
        "proposal": args.proposal,
        "esp_proposal": args.esp_proposal,
        "concurrency": args.concurrency,
        "initiator_addresses": args.addresses,
        "sizes": args.sizes,
        "responder_limits": {"native_mobike": NATIVE_LOAD_LIMITS, "charon": CHARON_LOAD_LIMITS,
                             "why": "load test: many SAs of one identity from few "
                                    "addresses; the DoS defaults are not changed"},
        "results": results,
        **({"charon_attached": attached} if attached is not None else {}),
        "machine": machine(load_before),
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000",
                    help="IKE_SA counts to build up to, ascending (default 100,1000,10000)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--addresses", type=int, default=16)
    ap.add_argument("--proposal", default="aes128-sha256-x25519")
    ap.add_argument("--esp-proposal", default="aes128gcm16")
    ap.add_argument("--rekey-time", type=int, default=600,
                    help="the responder's CHILD_SA rekey_time: the wave lasts about the "
                         "build time plus this (default 600 s)")
    ap.add_argument("--wave-margin", type=float, default=30.0,
                    help="seconds to wait after rekey_time for the last rekeys (default 30)")
    ap.add_argument("--stage-timeout", type=float, default=1800.0)
    ap.add_argument("--responders", default="native,charon")
    ap.add_argument("--attached", choices=("yes", "no", "only"), default="yes",
                    help="the charon_attached phase (charon + mobike-vici run): after the "
                         "responders, not at all, or alone (default yes)")
    ap.add_argument("--idle", type=float, default=30.0,
                    help="attached: seconds of idle CPU measured per size (default 30)")
    ap.add_argument("--update-rates", default="10,30,100,300,1000,3000",
                    help="attached: ike-update rates per second tried per size, ascending; "
                         "stops at the first the controller falls behind at")
    ap.add_argument("--update-duration", type=float, default=10.0,
                    help="attached: seconds per ike-update rate (default 10)")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.responders = [r.strip() for r in args.responders.split(",") if r.strip()]
    args.update_rates = [float(r) for r in args.update_rates.split(",") if r.strip()]
    if args.sizes != sorted(args.sizes) or min(args.sizes) < 1:
        ap.error("--sizes must be ascending positive counts")
    if any(r not in STARTERS for r in args.responders):
        ap.error("--responders: native, charon")
    if args.rekey_time < 10:
        ap.error("--rekey-time must be at least 10 s")
    if not 1 <= args.addresses <= 200:
        ap.error("--addresses must be between 1 and 200")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not is_root():
        print("bench/scale.py needs root: it builds network namespaces and runs charon",
              file=sys.stderr)
        return EXIT_NO_ROOT
    try:
        report = run(args)
    except LabError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
