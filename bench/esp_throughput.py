"""Benchmark: TCP throughput through the tunnel, native <-> native, native <-> charon and
charon <-> charon (kernel-libipsec), in the same run. Prints one JSON object.

Each pair gets a fresh two-host lab (``mobike_vici/lab/tunnel.py``): host_a initiates
with a virtual IP, host_b answers and has 10.88.0.1 on its loopback. One TCP
connection (``mobike_vici/lab/programs/transfer.py``, kernel TCP, Python only at the ends)
carries ``--megabytes`` from host_a to host_b; the receiver times first byte
to EOF. ``--rounds`` transfers per pair after one small warm-up; the median
counts. Never judges the numbers. Needs root (network namespaces) and strongSwan.

Both ends of the tunnel share the machine's CPUs with the TCP endpoints, so
on a small machine this measures CPU cost per byte more than anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.netns import Lab, is_root
from mobike_vici.lab.tunnel import INNER_ADDR, build, transfer

EXIT_NO_ROOT = 2
PAIRS = {
    "native_native": (True, True),
    "native_charon": (True, False),
    "charon_native": (False, True),
    "charon_charon": (False, False),
}


TCP_CONF = "mobike {\n  tcp = always\n}\n"
"""Both native ends carry IKE and ESP over TCP (RFC 9329) from the first message."""


def measure(pair: str, esp: str, nbytes: int, rounds: int, encap: bool,
            tcp: bool = False) -> dict[str, Any]:
    a_native, b_native = PAIRS[pair]
    with Lab() as lab:
        tunnel = build(lab, a_native=a_native, b_native=b_native, esp=esp, encap=encap,
                       mobike_conf=TCP_CONF if tcp else "")
        topo = tunnel.topo
        transport = _transport(tunnel.a)
        transfer(topo.host_a, topo.host_b, INNER_ADDR, 2 << 20, seed=99)  # warm-up
        rates: list[float] = []
        corrupt: list[int] = []
        for i in range(rounds):
            sent, received = transfer(topo.host_a, topo.host_b, INNER_ADDR, nbytes, seed=i)
            if sent["sha256"] != received["sha256"]:
                corrupt.append(i)
            seconds = max(float(received["seconds"]), 1e-9)
            rates.append(round(received["bytes"] * 8 / seconds / 1e6, 1))
    if corrupt:
        # A rate for data that did not arrive intact measures nothing: none is reported.
        return {"intact": False, "corrupt_rounds": corrupt, "mbit_s": None,
                "median_mbit_s": None, "transport": transport}
    return {"mbit_s": rates, "median_mbit_s": round(statistics.median(rates), 1), "intact": True,
            "transport": transport}


def _transport(end: Any) -> str | None:
    """What the initiator's status says its IKE_SA runs over (charon: nothing to ask)."""
    status = getattr(end, "status", None)
    if status is None:
        return None
    proc = status(as_json=True)
    sas = json.loads(proc.stdout).get("ike_sas", []) if proc.returncode == 0 else []
    return str(sas[0].get("transport", "udp")) if sas else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--esp-proposal", default="aes128gcm16")
    parser.add_argument("--encap", action="store_true",
                        help="force UDP encapsulation (charon's libipsec always uses it)")
    parser.add_argument("--pairs", default="native_native,native_charon,charon_charon",
                        help=f"comma-separated, from {', '.join(PAIRS)}")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                        help="tcp: also measure native_native over TCP (RFC 9329) in the "
                        "same run, beside its UDP figure (charon has no TCP)")
    args = parser.parse_args(argv)
    if not is_root():
        print("esp_throughput: needs root (network namespaces)", file=sys.stderr)
        return EXIT_NO_ROOT
    pairs = [p for p in args.pairs.split(",") if p]
    if any("charon" in p for p in pairs) and not charon_available():
        print("esp_throughput: strongSwan charon/swanctl not installed", file=sys.stderr)
        return EXIT_NO_ROOT
    started = time.time()
    if args.transport == "tcp" and "native_native" not in pairs:
        pairs.insert(0, "native_native")
    results = {pair: measure(pair, args.esp_proposal, args.megabytes << 20, args.rounds,
                             args.encap) for pair in pairs}
    if args.transport == "tcp":
        results["native_native_tcp"] = measure("native_native", args.esp_proposal,
                                               args.megabytes << 20, args.rounds, args.encap,
                                               tcp=True)
    out: dict[str, Any] = {
        "benchmark": "esp_throughput",
        "esp_proposal": args.esp_proposal,
        "encap_forced": args.encap,
        "megabytes": args.megabytes,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    udp, tcp = (results.get(k, {}).get("median_mbit_s")
                for k in ("native_native", "native_native_tcp"))
    if udp and tcp:
        out["tcp_vs_udp"] = round(tcp / udp, 2)
    charon = results.get("charon_charon", {}).get("median_mbit_s")
    if charon:
        out["native_vs_charon"] = {
            pair: round(r["median_mbit_s"] / charon, 2)
            for pair, r in results.items()
            if pair not in ("charon_charon", "native_native_tcp") and r["intact"]
        }
    print(json.dumps(out, indent=2))
    # Corrupted data is a failure of the tunnel, not a slow result.
    return 0 if all(r["intact"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
