"""systemd's notify protocol over a real datagram socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mobike_vici.daemon.sdnotify import SystemdNotifier


@pytest.mark.slow
def test_ready_watchdog_and_stopping_reach_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        notifier = SystemdNotifier(path, watchdog_usec=100_000)

        async def main() -> None:
            notifier.start_watchdog()
            notifier.ready()
            await asyncio.sleep(0.12)
            notifier.stopping()

        asyncio.run(main())
        got = []
        sock.settimeout(0.5)
        try:
            while True:
                got.append(sock.recv(64).decode())
        except TimeoutError:
            pass
    assert "READY=1" in got and "STOPPING=1" in got
    assert got.count("WATCHDOG=1") >= 2


def test_outside_systemd_nothing_is_sent() -> None:
    assert SystemdNotifier(None).send("READY=1") is False
