"""IKE_SA_INIT flood generator for bench/flood.py; runs inside the attacker's namespace.

Every request is a valid IKE_SA_INIT: a fresh SPIi and nonce, one proposal, a real
KE value of the chosen group (a few precomputed values, reused) and NAT detection
payloads for its own source. Requests leave round-robin from every address given
(each has its own socket, bound to it), paced to ``--rate`` per second for
``--duration`` seconds; then the generator stops by itself. By default it never
answers COOKIEs: to the responder it looks like a flood from spoofed sources.
With ``--answer-cookies`` it owns its sources and proves it: every COOKIE that
comes back is answered at once with the request repeated behind it (those resends
come on top of ``--rate``), so the responder does DH work for each.

Protocol with the bench: write ``OUT.ready`` once precomputed, wait for ``OUT.go``,
flood, write the JSON result to ``OUT``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobike_vici.core.nat import nat_hash
from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag, NotifyType, ProtocolId
from mobike_vici.ikev2.crypto import dh_generate
from mobike_vici.ikev2.message import DecodeError, Header, decode_message, encode_message
from mobike_vici.ikev2.payloads import KE, SA, Nonce, Notify, Payload
from mobike_vici.ikev2.proposals import parse_proposals, to_payload
from mobike_vici.types import Endpoint

TICK = 0.005
"""Pacing step: each tick sends the requests due by then."""
KE_VALUES = 8


Request = tuple[socket.socket, bytes, Header, list[Payload]]


def build(proposal: str, target: Endpoint, sources: list[tuple[socket.socket, Endpoint]],
          count: int) -> list[Request]:
    spec = parse_proposals(proposal, ProtocolId.IKE)[0]
    group = spec.dh[0]
    kes = [dh_generate(group, os.urandom).public for _ in range(KE_VALUES)]
    sa = SA((to_payload(spec, 1, b""),))
    out = []
    for i in range(count):
        sock, src = sources[i % len(sources)]
        spi_i = os.urandom(8)
        header = Header(spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
        payloads: list[Payload] = [
            sa, KE(group, kes[i % KE_VALUES]), Nonce(os.urandom(32)),
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, bytes(8), src)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, bytes(8), target))]
        out.append((sock, encode_message(header, payloads), header, payloads))
    return out


def answer_cookies(poller: select.epoll, socks: dict[int, socket.socket],
                   pending: dict[bytes, Request], dest: tuple[str, int]) -> tuple[int, int]:
    """Resend every request a COOKIE came back for; (cookies answered, other replies)."""
    cookies = others = 0
    for fd, _ in poller.poll(0):
        sock = socks[fd]
        for _ in range(64):
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            try:
                msg = decode_message(data)
            except DecodeError:
                others += 1
                continue
            first = msg.payloads[0] if msg.payloads else None
            request = pending.pop(msg.header.spi_i, None)
            if (request is None or not isinstance(first, Notify)
                    or first.type != NotifyType.COOKIE):
                others += 1
                continue
            _, _, header, payloads = request
            with contextlib.suppress(OSError):
                sock.sendto(encode_message(header, [first, *payloads]), dest)
            cookies += 1
    return cookies, others


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", type=int, default=500)
    ap.add_argument("--sources", required=True, help="file: one source address a line")
    ap.add_argument("--rate", type=float, default=2500.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--proposal", default="aes128-sha256-modp4096")
    ap.add_argument("--answer-cookies", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    target = Endpoint(ipaddress.ip_address(args.target), args.port)
    sources = []
    for line in Path(args.sources).read_text().split():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if not args.answer_cookies:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers not read
        sock.setblocking(False)
        sock.bind((line, 0))
        sources.append((sock, Endpoint(ipaddress.ip_address(line), sock.getsockname()[1])))
    count = int(args.rate * args.duration)
    requests = build(args.proposal, target, sources, count)
    out = Path(args.out)
    Path(f"{out}.ready").touch()
    go = Path(f"{out}.go")
    give_up = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > give_up:
            return 1
        time.sleep(0.01)
    dest = (args.target, args.port)
    pending = {r[2].spi_i: r for r in requests} if args.answer_cookies else {}
    socks = {sock.fileno(): sock for sock, _ in sources}
    poller = select.epoll()
    for fd in socks:
        poller.register(fd, select.EPOLLIN)
    sent = errors = cookies = others = 0
    start = time.monotonic()
    end = start + args.duration
    while sent < count:
        now = time.monotonic()
        if now >= end + 1.0:
            break  # running late: stop anyway, the result says how far it got
        due = min(count, int((now - start) * args.rate) + 1)
        while sent < due:
            sock, data, _, _ = requests[sent]
            try:
                sock.sendto(data, dest)
            except OSError:
                errors += 1
            sent += 1
        if args.answer_cookies:
            c, o = answer_cookies(poller, socks, pending, dest)
            cookies, others = cookies + c, others + o
        delay = start + sent / args.rate - time.monotonic()
        time.sleep(max(min(delay, TICK), 0.0))
    elapsed = time.monotonic() - start
    out.write_text(json.dumps({
        "requests": sent,
        "send_errors": errors,
        "started": start,
        "elapsed_s": elapsed,
        "sources": len(sources),
        "answer_cookies": args.answer_cookies,
        "cookies_answered": cookies,
        "other_replies": others,
        "proposal": args.proposal,
        "request_bytes": len(requests[0][1]) if requests else 0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
