"""A delay line for a lab router: what is routed into a TUN device comes back out of it
``delay`` seconds later, as if it had crossed a slower link.

The kernels here have no netem and nftables cannot hold a packet, so a latency spike
is made in userspace: the router sends one uplink's packets into the TUN device (a
policy rule, see ``lab.faults.RouterFaults.latency_on``), this process reads each,
keeps it for ``delay`` and writes it back, and the kernel forwards it on as a packet
that arrived on the device. Order is kept (one FIFO: every packet waits the same time).

Run inside the router's namespace::

    python -m mobike_vici.lab.delay_line DEVICE SECONDS
"""

from __future__ import annotations

import argparse
import collections
import select
import sys
import time

from mobike_vici.esp.tun import TunDevice

MTU = 65000
"""Large enough for anything a veth forwards; the device only relays."""
QUEUE_LIMIT = 100_000
"""Packets held at most; beyond it a packet is dropped (a delay line is not a buffer
for a flood)."""


def relay(tun: TunDevice, delay: float) -> None:
    """Hold every packet read from ``tun`` for ``delay`` seconds, then write it back."""
    held: collections.deque[tuple[float, bytes]] = collections.deque()
    dropped = 0
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([tun.fd], [], [], timeout)
        if readable:
            due = time.monotonic() + delay
            while True:
                try:
                    packet = tun.read()
                except BlockingIOError:
                    break
                if len(held) < QUEUE_LIMIT:
                    held.append((due, packet))
                    continue
                dropped += 1
                if dropped % 1000 == 1:
                    print(f"delay_line: full, {dropped} packets dropped", file=sys.stderr,
                          flush=True)
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet = held.popleft()
            try:
                tun.write(packet)
            except OSError as exc:  # a packet the kernel refuses is lost, as on a wire
                print(f"delay_line: dropped a packet of {len(packet)} bytes: {exc}",
                      file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delay_line", description=__doc__.split("\n")[0])
    parser.add_argument("device", help="TUN device to create (up to 15 bytes)")
    parser.add_argument("delay", type=float, help="seconds each packet is held")
    args = parser.parse_args(argv)
    if not 0 <= args.delay <= 10:
        parser.error(f"a delay of {args.delay} s is outside 0..10")
    tun = TunDevice(args.device, mtu=MTU)
    print(f"delay_line: {tun.name} holds packets {args.delay} s", flush=True)
    relay(tun, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
