"""Benchmark: IKE_SA+CHILD_SA setups per second of our native responder and of charon's.

Both responders run in the same run, one after the other, in the same lab
namespace, with the same swanctl.conf and the same initiator load (the
generator in ``_load.py``, on the native core, in the other namespace). Prints
one JSON object; never judges the numbers. Needs root (network namespaces).

The initiator is Python too, and on a 2-core machine it may well be the
bottleneck: each result carries the initiator's and the responder's CPU time
so the reader can tell which side was saturated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine

from bench._certs import BenchPki
from mobike_vici.lab.charon import PLUGINS, start_charon
from mobike_vici.lab.native import start_native
from mobike_vici.lab.netns import Lab, LabError, Netns, is_root
from mobike_vici.lab.topology import TwoHosts, two_hosts

REPO = Path(__file__).resolve().parents[1]
LOAD = Path(__file__).resolve().parent / "_load.py"
PSK = "bench-lab-only-not-a-secret-0123456789"
INITIATOR_ID = "bench@initiator"
RESPONDER_ID = "bench@responder"
INITIATOR_NET = "10.77.0.0/24"
RESPONDER_NET = "10.88.0.0/24"
RESPONDER_ADDR = "10.88.0.1/32"
FIRST_SOURCE = 10
"""Initiator source addresses are 192.0.2.10, .11, ... (host_a's own .1 stays unused)."""
EXIT_NO_ROOT = 2

# A load test initiates many SAs with one identity from few addresses, which the
# responders' DoS defaults rightly throttle. Both responders get these limits (and the
# JSON says so); the defaults themselves stay as they are.
NATIVE_LOAD_LIMITS = {
    "cookie_threshold": 1000000,      # COOKIEs only beyond a million half-open SAs
    "block_threshold": 0,             # no per-source cap on half-open SAs
    "init_limit_half_open": 1000000,
    "init_dh_budget": 0,              # no DH budget
    "max_ike_sas_per_peer": 1000000,  # every setup is the same identity
    "max_child_sas_per_peer": 1000000,
}
CHARON_LOAD_LIMITS = {
    "cookie_threshold": 1000000,
    "block_threshold": 0,
    "init_limit_half_open": 0,        # charon: 0 is no limit
}
IDLE_LIMITED_FRACTION = 0.1
"""Initiator idle time under this fraction of (workers x wall time): the load
generator, not the responder, set the pace."""


@dataclass(frozen=True)
class Options:
    count: int
    duration: float
    concurrency: int
    proposal: str
    esp_proposal: str
    workers: int
    addresses: int
    delete: bool
    setup_timeout: float
    responders: tuple[str, ...]
    warmup: int
    rounds: int
    auth: str = "psk"
    """psk, or ecdsa: ECDSA P-256 certificates both ways (RFC 7427 signatures)."""


# --------------------------------------------------------------------------- configs

def _secrets() -> str:
    return f"""secrets {{
    ike-bench {{
        id-1 = {INITIATOR_ID}
        id-2 = {RESPONDER_ID}
        secret = "{PSK}"
    }}
}}
"""


def _auth(opts: Options) -> str:
    return "psk" if opts.auth == "psk" else "pubkey"


def responder_conf(opts: Options, addr: str) -> str:
    """One connection for every initiator: any peer address, unique = never (each
    setup reuses the identity; with the default the responder would replace SAs)."""
    return f"""connections {{
    bench {{
        version = 2
        local_addrs = {addr}
        proposals = {opts.proposal}
        unique = never
        local {{
            auth = {_auth(opts)}
            id = {RESPONDER_ID}
        }}
        remote {{
            auth = {_auth(opts)}
            id = {INITIATOR_ID}
        }}
        children {{
            bench {{
                local_ts = {RESPONDER_NET}
                remote_ts = {INITIATOR_NET}
                esp_proposals = {opts.esp_proposal}
            }}
        }}
    }}
}}
{_secrets()}"""


def initiator_conf(opts: Options, sources: Sequence[str], remote: str) -> str:
    """One connection per source address, so the generator can spread its load."""
    conns = []
    for i, addr in enumerate(sources):
        conns.append(f"""    bench{i} {{
        version = 2
        local_addrs = {addr}
        remote_addrs = {remote}
        proposals = {opts.proposal}
        local {{
            auth = {_auth(opts)}
            id = {INITIATOR_ID}
        }}
        remote {{
            auth = {_auth(opts)}
            id = {RESPONDER_ID}
        }}
        children {{
            bench {{
                local_ts = {INITIATOR_NET}
                remote_ts = {RESPONDER_NET}
                esp_proposals = {opts.esp_proposal}
            }}
        }}
    }}
""")
    return "connections {\n" + "".join(conns) + "}\n" + _secrets()


def native_limits_conf() -> str:
    keys = "".join(f"    {k} = {v}\n" for k, v in NATIVE_LOAD_LIMITS.items())
    return "mobike {\n" + keys + "}\n"


def charon_conf(rundir: Path) -> str:
    """The lab's strongswan.conf (mobike_vici.lab.charon) with quiet logging: charon's default
    ike=2 would write dozens of flushed lines per setup and slow it down."""
    limits = "".join(f"    {k} = {v}\n" for k, v in CHARON_LOAD_LIMITS.items())
    return f"""charon {{
{limits}    load_modular = no
    load = {PLUGINS}
    plugins {{
        vici {{
            socket = unix://{rundir}/charon.vici
        }}
    }}
    filelog {{
        log {{
            path = {rundir}/charon.log
            default = 0
            flush_line = yes
        }}
    }}
}}
"""


_PKI: list[BenchPki] = []
"""One CA for the whole run (--auth ecdsa), made on first use."""


def _credentials(opts: Options, base: Path, ident: str) -> None:
    """A fresh certificate for ``ident`` and the CA in swanctl's layout under ``base``."""
    if opts.auth == "psk":
        return
    if not _PKI:
        _PKI.append(BenchPki())
    _PKI[0].write(base, ident)


# --------------------------------------------------------------------------- responders

@dataclass
class Responder:
    name: str
    pid: int
    stop: Callable[[], object]
    version: str
    ike_sas: Callable[[], int | None]
    """How many IKE_SAs the responder says it holds (a sanity check of the count)."""


def start_native_responder(lab: Lab, ns: Netns, opts: Options, addr: str,
                           round_no: int) -> Responder:
    conf = lab.workdir / f"native-responder-{round_no}" / "swanctl.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    _credentials(opts, conf.parent, RESPONDER_ID)
    conf.write_text(responder_conf(opts, addr) + native_limits_conf())
    daemon = start_native(lab, ns, conf, name=f"responder-{round_no}")

    def held() -> int | None:
        proc = daemon.status(as_json=True)
        if proc.returncode != 0:
            return None
        sas = json.loads(proc.stdout).get("ike_sas")
        return len(sas) if isinstance(sas, list) else None

    return Responder("native", daemon.proc.pid, daemon.stop, "mobike-vici native", held)


def start_charon_responder(lab: Lab, ns: Netns, opts: Options, addr: str,
                           round_no: int) -> Responder:
    charon = start_charon(lab, ns, name=f"responder-{round_no}", make_conf=charon_conf)
    rundir = charon.rundir
    swanctl = rundir / "swanctl.conf"
    _credentials(opts, rundir, RESPONDER_ID)
    swanctl.write_text(responder_conf(opts, addr))
    charon.load_all(swanctl)
    version = charon.session().version()
    text = f"{_s(version.get('daemon'))} {_s(version.get('version'))}".strip()

    def ike_sas() -> int | None:
        stats = charon.session().stats()
        value = stats.get("ikesas", {}).get("total")
        return int(_s(value)) if value is not None else None

    return Responder("charon", charon.proc.pid, charon.stop, text, ike_sas)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and all its threads, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- one round

def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(lab: Lab, topo: TwoHosts, opts: Options, sources: Sequence[str],
             responder: Responder, tag: str) -> dict[str, Any]:
    """Run the workers against one responder; aggregate their results."""
    workdir = lab.workdir / f"load-{tag}"
    workdir.mkdir()
    _credentials(opts, workdir, INITIATOR_ID)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def log_of(out: Path) -> str:
        log = workdir / out.name.replace("result", "worker").replace(".json", ".log")
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    for w, (conc, count) in enumerate(zip(_split(opts.concurrency, opts.workers),
                                          _split(opts.count, opts.workers), strict=True)):
        mine = [a for i, a in enumerate(sources) if i % opts.workers == w]
        conf = workdir / f"initiator{w}.conf"
        conf.write_text(initiator_conf(opts, mine, topo.b4))
        out = workdir / f"result{w}.json"
        argv = [sys.executable, str(LOAD), "--config", str(conf), "--out", str(out),
                "--concurrency", str(conc), "--count", str(count),
                "--duration", str(opts.duration), "--setup-timeout", str(opts.setup_timeout)]
        if opts.delete:
            argv.append("--delete")
        if opts.warmup:
            argv += ["--warmup", str(max(1, opts.warmup // opts.workers))]
        procs.append((lab.spawn(topo.host_a, argv, workdir / f"worker{w}.log", env=env), out))
    deadline = time.monotonic() + 30 + opts.duration + opts.setup_timeout
    for proc, out in procs:
        while not Path(f"{out}.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"load generator did not start:\n{log_of(out)}")
            time.sleep(0.01)
    cpu_before = _cpu_seconds(responder.pid)
    for _proc, out in procs:
        Path(f"{out}.go").touch()
    limit = opts.duration + opts.setup_timeout + 30
    for proc, out in procs:
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise LabError(f"load generator still running after {limit:.0f}s:\n"
                           + log_of(out)) from None
    cpu_after = _cpu_seconds(responder.pid)
    results = []
    for proc, out in procs:
        if not out.exists():
            raise LabError(f"load generator exited {proc.returncode} without a result:\n"
                           + log_of(out))
        results.append(json.loads(out.read_text()))
    return summarize(responder, results, cpu_before, cpu_after)


def limited_by(initiator_idle_s: float, workers: int, wall_s: float) -> str:
    """Who set the pace: workers that were almost never idle in select() were the limit."""
    if wall_s <= 0 or workers <= 0:
        return "unknown"
    idle_fraction = initiator_idle_s / (workers * wall_s)
    return "load_generator" if idle_fraction < IDLE_LIMITED_FRACTION else "responder"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Nearest rank: a value that was actually measured.
    index = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summarize(responder: Responder, results: Sequence[dict[str, Any]],
              cpu_before: float | None, cpu_after: float | None) -> dict[str, Any]:
    latencies = sorted(x for r in results for x in r["latencies"])
    setups = len(latencies)
    start = min(r["started"] for r in results)
    # Throughput over the time it took to complete the setups (not the drain of
    # failures or deletes after the last one).
    seconds = max(r["last_setup"] for r in results) - start
    failures: dict[str, int] = {}
    for r in results:
        for reason, n in r["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    initiator_cpu = sum(r["cpu_s"] for r in results)
    wall = max(r["ended"] for r in results) - start
    responder_cpu = (cpu_after - cpu_before
                     if cpu_before is not None and cpu_after is not None else None)
    out: dict[str, Any] = {
        "responder": responder.name,
        "version": responder.version,
        "setups": setups,
        "seconds": round(seconds, 3),
        "setups_per_s": round(setups / seconds, 1) if seconds > 0 else None,
        "latency_ms": {
            "median": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p95": round(_percentile(latencies, 0.95) * 1000, 2) if latencies else None,
        },
        "failures": sum(failures.values()),
        "failure_reasons": failures,
        "initiated": sum(r["initiated"] for r in results),
        "deleted": sum(r["deleted"] for r in results),
        "wall_s": round(wall, 3),
        "initiator_cpu_s": round(initiator_cpu, 3),
        "initiator_idle_s": round(sum(r["idle_s"] for r in results), 3),
        "initiator_idle_fraction": (round(sum(r["idle_s"] for r in results)
                                          / (len(results) * wall), 3) if wall > 0 else None),
        "limited_by": limited_by(sum(r["idle_s"] for r in results), len(results), wall),
        "initiator_cpu_ms_per_setup": round(initiator_cpu / setups * 1000, 2) if setups else None,
        "responder_cpu_s": round(responder_cpu, 3) if responder_cpu is not None else None,
        "responder_cpu_ms_per_setup": (round(responder_cpu / setups * 1000, 2)
                                       if responder_cpu is not None and setups else None),
    }
    try:
        out["responder_ike_sas_held"] = responder.ike_sas()
    except Exception as exc:  # a diagnostic only; never fail the run for it
        out["responder_ike_sas_held"] = f"unavailable: {type(exc).__name__}"
    return out


# --------------------------------------------------------------------------- main

Starter = Callable[[Lab, Netns, Options, str, int], Responder]
STARTERS: dict[str, Starter] = {"native": start_native_responder,
                                "charon": start_charon_responder}


def run(opts: Options) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with Lab() as lab:
        topo = two_hosts(lab)
        sources = [f"192.0.2.{FIRST_SOURCE + i}" for i in range(opts.addresses)]
        for addr in sources:
            topo.host_a.add_address(topo.ifname, f"{addr}/24")
        # charon (kernel-libipsec) routes a CHILD_SA via a local address inside its
        # local traffic selector and refuses the CHILD_SA without one.
        topo.host_b.add_address("lo", RESPONDER_ADDR)
        # Rounds alternate the responders, so a slow drift in what else the
        # machine does is spread over both instead of landing on one.
        for round_no in range(1, opts.rounds + 1):
            for name in opts.responders:
                responder = STARTERS[name](lab, topo.host_b, opts, topo.b4, round_no)
                try:
                    result = run_load(lab, topo, opts, sources, responder,
                                      f"{name}-{round_no}")
                finally:
                    responder.stop()
                results.append({"round": round_no, **result})
    return {
        "benchmark": "ike_setup",
        "auth": opts.auth if opts.auth == "psk" else "ecdsa-p256-certificates",
        "proposal": opts.proposal,
        "esp_proposal": opts.esp_proposal,
        "concurrency": opts.concurrency,
        "count": opts.count,
        "duration_limit_s": opts.duration,
        "initiator_workers": opts.workers,
        "initiator_addresses": opts.addresses,
        "delete_after_setup": opts.delete,
        "warmup_setups": opts.warmup,
        "rounds": opts.rounds,
        "responder_limits": {"native_mobike": NATIVE_LOAD_LIMITS,
                             "charon": CHARON_LOAD_LIMITS,
                             "why": "load test: many SAs of one identity from few "
                                    "addresses; the DoS defaults are not changed"},
        "results": results,
        "machine": machine(load_before),
    }


def parse_args(argv: Sequence[str]) -> Options:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000,
                    help="measured setups per responder and round (default 1000)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="stop starting setups after this many seconds (default 20)")
    ap.add_argument("--concurrency", type=int, default=8,
                    help="setups in flight at any time (default 8)")
    ap.add_argument("--proposal", default="aes128-sha256-x25519", help="IKE proposal")
    ap.add_argument("--esp-proposal", default="aes128gcm16", help="ESP proposal")
    ap.add_argument("--workers", type=int, default=2,
                    help="initiator processes sharing the load (default 2)")
    ap.add_argument("--warmup", type=int, default=20,
                    help="setups before each measurement, not counted (default 20)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate the responders this many times (default 2)")
    ap.add_argument("--addresses", type=int, default=None,
                    help="initiator source addresses (default: = concurrency, at most 32)")
    ap.add_argument("--delete", action="store_true",
                    help="delete each IKE_SA once its CHILD_SA is up (responder state "
                         "stays small; deletes overlap later setups)")
    ap.add_argument("--setup-timeout", type=float, default=10.0,
                    help="a setup not done by then counts as a failure (default 10 s)")
    ap.add_argument("--auth", choices=("psk", "ecdsa"), default="psk",
                    help="psk, or ecdsa: both sides authenticate with ECDSA P-256"
                         " certificates of one CA, made for the run (default psk)")
    ap.add_argument("--responders", default="native,charon",
                    help="comma-separated, in order: native, charon (default both)")
    args = ap.parse_args(argv)
    responders = tuple(r.strip() for r in args.responders.split(",") if r.strip())
    unknown = [r for r in responders if r not in STARTERS]
    if unknown:
        ap.error(f"unknown responder(s): {', '.join(unknown)}")
    if min(args.concurrency, args.count, args.workers, args.rounds) < 1 or args.warmup < 0:
        ap.error("--concurrency, --count, --workers and --rounds must be at least 1")
    workers = min(args.workers, args.concurrency)
    addresses = args.addresses or min(args.concurrency, 32)
    if not workers <= addresses <= 200:
        ap.error("--addresses must be between --workers and 200")
    return Options(args.count, args.duration, args.concurrency, args.proposal,
                   args.esp_proposal, workers, addresses, args.delete,
                   args.setup_timeout, responders, args.warmup, args.rounds, args.auth)


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    if not is_root():
        print("bench/ike_setup.py needs root: it builds network namespaces and runs "
              "charon (run it as root or with sudo)", file=sys.stderr)
        return EXIT_NO_ROOT
    try:
        report = run(opts)
    except LabError as exc:
        print(f"ike_setup: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
