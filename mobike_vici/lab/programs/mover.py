"""Our native daemon with a hand on the wheel: path selection off, and SIGUSR1 sends
UPDATE_SA_ADDRESSES for the one IKE_SA from ``--move-from`` (an address of ours).

Run as ``mover.py --move-from ADDR native --config F --events F --control P`` (what
``start_native(program=...)`` appends), inside a namespace. The lab uses it to send an
authenticated update from an address whose return path it has cut, something the
path manager would never choose.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import os
import signal

from mobike_vici.config import load_config
from mobike_vici.core.engine import Engine
from mobike_vici.daemon import udp
from mobike_vici.daemon.esp_io import UserspaceEsp
from mobike_vici.daemon.native import Daemon
from mobike_vici.daemon.routing import DaemonRouting
from mobike_vici.eventlog import EventLog, configure, make_logger
from mobike_vici.types import Endpoint, Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--move-from", required=True)
    ap.add_argument("command", choices=["native"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--control", required=True)
    args = ap.parse_args()
    config = load_config(args.config)
    source = ipaddress.ip_address(args.move_from)
    with open(args.events, "a", buffering=1, encoding="utf-8") as events:
        configure(events)
        log = EventLog(make_logger(events))
        # The daemon's own routing, as `mobike-vici native` has it: without it the
        # tunnel's routes would have no rule, and IKE/ESP no per-uplink tables.
        routing = DaemonRouting(config, log)
        engine = Engine(config, os.urandom,
                        functools.partial(udp.source_address, fwmark=routing.fwmark))
        daemon = Daemon(config, engine, log, control_path=args.control,
                        data_plane=UserspaceEsp(config, fwmark=routing.fwmark),
                        routing=routing)

        def move() -> None:
            (sa,) = engine.status()
            target = Path(Endpoint(source, sa.path.local.port), sa.path.remote)
            log.emit("mover_moving", ike_spi=sa.ike_spi, local=str(target.local))
            engine.move(sa.ike_spi, target, daemon.now())
            daemon.after_engine()

        async def run() -> int:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, move)
            return await daemon.run()

        return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
