"""A TCP transfer through the tunnel, run inside a lab namespace as a script: `serve` and `send`.

`python transfer.py serve ADDR PORT` accepts one connection, reads to EOF and
prints one JSON line: bytes received, their SHA-256, seconds from the first
byte to EOF. It prints `listening` first, once the socket accepts.

`python transfer.py send ADDR PORT NBYTES SEED [SOURCE]` sends NBYTES of
deterministic pseudo-random data (from SEED, so both sides can name the
expected digest) and prints one JSON line with bytes, digest and seconds.

Standard library only: it runs under `ip netns exec` with no project imports.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 1 << 16


def payload(nbytes: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(nbytes)


def serve(addr: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((addr, port))
        lsock.listen(1)
        print("listening", flush=True)
        conn, _peer = lsock.accept()
        digest = hashlib.sha256()
        total = 0
        start = None
        with conn:
            while True:
                data = conn.recv(CHUNK * 4)
                if not data:
                    break
                if start is None:
                    start = time.monotonic()
                total += len(data)
                digest.update(data)
        elapsed = time.monotonic() - start if start is not None else 0.0
    print(json.dumps({"bytes": total, "sha256": digest.hexdigest(), "seconds": elapsed}),
          flush=True)


def send(addr: str, port: int, nbytes: int, seed: int, source: str | None) -> None:
    data = payload(nbytes, seed)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if source:
            sock.bind((source, 0))
        sock.settimeout(120)
        sock.connect((addr, port))
        start = time.monotonic()
        view = memoryview(data)
        for offset in range(0, nbytes, CHUNK):
            sock.sendall(view[offset:offset + CHUNK])
        sock.shutdown(socket.SHUT_WR)
        # Wait for the receiver to close: then everything was delivered.
        sock.recv(1)
        elapsed = time.monotonic() - start
    print(json.dumps({"bytes": nbytes, "sha256": hashlib.sha256(data).hexdigest(),
                      "seconds": elapsed}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) >= 5 and argv[0] == "send":
        send(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else None)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
