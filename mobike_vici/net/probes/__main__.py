"""A small command line around the probers, for the lab and for operators.

``probe icmp|udp``: send `count` probes on one path and print one JSON object with the
replies (probe id -> rtt) and counters. ``respond``: run a UDP echo responder until
SIGTERM/SIGINT, then print its counters as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Sequence

from ...types import Endpoint, Path
from .bypass import PROBE_FWMARK
from .icmp import IcmpProber
from .udp_echo import DEFAULT_PORT, UdpEchoProber, UdpEchoResponder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mobike_vici.net.probes")
    sub = p.add_subparsers(dest="cmd", required=True)
    for mode in ("icmp", "udp"):
        s = sub.add_parser(mode)
        s.add_argument("--local", required=True)
        s.add_argument("--peer", required=True)
        s.add_argument("--dev")
        s.add_argument("--count", type=int, default=3)
        s.add_argument("--interval", type=float, default=0.1)
        s.add_argument("--wait", type=float, default=1.0)
        s.add_argument("--no-mark", action="store_true")
        if mode == "udp":
            s.add_argument("--key-file", required=True)
            s.add_argument("--port", type=int, default=DEFAULT_PORT)
    r = sub.add_parser("respond")
    r.add_argument("--local", required=True)
    r.add_argument("--dev")
    r.add_argument("--key-file", required=True)
    r.add_argument("--port", type=int, default=DEFAULT_PORT)
    return p


def _key(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


async def _probe(args: argparse.Namespace) -> dict[str, object]:
    replies: dict[int, float] = {}

    def on_reply(probe_id: int, rtt: float) -> None:
        replies[probe_id] = rtt

    fwmark = None if args.no_mark else PROBE_FWMARK
    prober: IcmpProber | UdpEchoProber
    if args.cmd == "icmp":
        prober = IcmpProber(on_reply, random_bytes=os.urandom, fwmark=fwmark)
    else:
        prober = UdpEchoProber(on_reply, _key(args.key_file), random_bytes=os.urandom,
                               port=args.port, fwmark=fwmark)
    path = Path(Endpoint(ipaddress.ip_address(args.local), 0),
                Endpoint(ipaddress.ip_address(args.peer), 0))
    for probe_id in range(1, args.count + 1):
        prober.send(path, probe_id, args.dev)
        await asyncio.sleep(args.interval)
    await asyncio.sleep(args.wait)
    prober.close()
    c = prober.counters
    return {"replies": {str(k): v for k, v in replies.items()}, "sent": c.sent,
            "dropped": c.dropped, "send_errors": c.send_errors}


async def _respond(args: argparse.Namespace) -> dict[str, object]:
    responder = UdpEchoResponder(_key(args.key_file), ipaddress.ip_address(args.local),
                                 port=args.port, ifname=args.dev)
    responder.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"listening": True}), flush=True)
    await stop.wait()
    responder.close()
    c = responder.counters
    return {"answered": c.answered, "unauthenticated": c.unauthenticated,
            "rate_limited": c.rate_limited, "replayed": c.replayed,
            "source_limited": c.source_limited}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = asyncio.run(_respond(args) if args.cmd == "respond" else _probe(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
