"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) without libsystemd.

``READY=1`` once the daemon can do its job, ``WATCHDOG=1`` at half the watchdog
interval while the event loop runs, ``STOPPING=1`` on the way out. Outside systemd
(no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec > 0 else 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        return cls(address, watchdog)

    def send(self, state: str) -> bool:
        if not self.address:
            return False
        # An abstract socket is written with a leading '@' in the variable.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(state.encode(), address)
            except OSError:
                return False
        return True

    def ready(self) -> None:
        self.send("READY=1")

    def stopping(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.send("STOPPING=1")

    def start_watchdog(self) -> None:
        """From inside the running loop: a stuck loop stops the pings, systemd restarts us."""
        if self.address and self.watchdog > 0:
            self._task = asyncio.ensure_future(self._ping())

    async def _ping(self) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog / 2)
