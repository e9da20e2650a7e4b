"""Our own daemon (`python -m mobike_vici native`) inside a lab namespace, and its event file.

Used by tests and by `mobike-vici demo`: start it, wait for its control
socket, follow its JSON-lines events, stop it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobike_vici.lab.netns import Lab, LabError, Netns

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class EventFile:
    """Follows a JSON-lines event file as the daemon appends to it.

    Only complete lines are parsed; a half-written last line waits for the
    next read. Lines that are not JSON objects are kept in `garbage`, so a
    test can assert the stream is clean.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self.garbage: list[str] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Event]:
        """Read what was appended since the last call; returns the new events."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new: list[Event] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                self.garbage.append(line)
                continue
            if isinstance(obj, dict):
                new.append(obj)
            else:
                self.garbage.append(line)
        self.events.extend(new)
        return new

    def find(self, predicate: Predicate) -> Event | None:
        """The first event seen so far that matches."""
        self.poll()
        return next((ev for ev in self.events if predicate(ev)), None)

    def wait_for(self, predicate: Predicate, timeout: float = 30.0,
                 alive: Callable[[], bool] | None = None) -> Event:
        """Block until an event matching `predicate` has appeared (seen before or new).

        `alive` is asked between polls; when it says the writer died, give up
        at once instead of waiting out the timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(predicate)
            if found is not None:
                return found
            if alive is not None and not alive():
                self.poll()
                found = self.find(predicate)
                if found is not None:
                    return found
                raise LabError(f"event writer exited before a matching event in {self.path}")
            if time.monotonic() >= deadline:
                raise LabError(
                    f"no matching event in {self.path} within {timeout}s; "
                    f"seen: {[ev.get('event') for ev in self.events]}"
                )
            time.sleep(0.05)


def named(name: str, **fields: Any) -> Predicate:
    """Predicate: event `name` whose fields include all of `fields`."""
    def match(ev: Event) -> bool:
        return ev.get("event") == name and all(ev.get(k) == v for k, v in fields.items())
    return match


@dataclass
class NativeDaemon:
    """One running `mobike-vici native`; the owning Lab stops it regardless."""

    lab: Lab
    ns: Netns
    config: Path
    events_path: Path
    control: Path
    log: Path
    proc: subprocess.Popen[bytes]
    program: tuple[str, ...] = (sys.executable, "-m", "mobike_vici")
    events: EventFile = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventFile(self.events_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the control socket accepts a connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LabError(
                    f"native daemon in {self.ns} exited with {self.proc.returncode}:\n"
                    + self.log_text()[-3000:]
                )
            if self.control.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(self.control))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        raise LabError(f"native daemon in {self.ns}: no control socket {self.control} "
                       f"after {timeout}s:\n" + self.log_text()[-3000:])

    def wait_event(self, predicate: Predicate, timeout: float = 30.0) -> Event:
        return self.events.wait_for(predicate, timeout, alive=self.alive)

    def status(self, *, as_json: bool = False) -> subprocess.CompletedProcess[str]:
        """`mobike-vici status` against this daemon's control socket."""
        argv = [*self.program, "status", "--control", str(self.control)]
        if as_json:
            argv.append("--json")
        return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, SIGKILL after `grace` seconds; returns the exit status."""
        return self.lab.stop(self.proc, grace=grace)


def start_native(lab: Lab, ns: Netns, config: Path, *, name: str | None = None,
                 timeout: float = 15.0, extra_args: tuple[str, ...] = (),
                 program: Sequence[str] | None = None) -> NativeDaemon:
    """Start `python -m mobike_vici native` in `ns`; return once its control socket answers.

    `program` replaces `python -m mobike_vici` (tests of this runner use a stub).
    """
    rundir = lab.workdir / f"native-{name or ns.short}"
    rundir.mkdir(parents=True, exist_ok=True)
    events = rundir / "events.jsonl"
    control = rundir / "control.sock"
    log = rundir / "daemon.log"
    prog = tuple(program) if program is not None else (sys.executable, "-m", "mobike_vici")
    argv = [
        *prog, "native",
        "--config", str(config), "--events", str(events), "--control", str(control),
        *extra_args,
    ]
    # The child must import this very checkout, whatever the cwd inside the namespace.
    pkg_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    proc = lab.spawn(ns, argv, log, env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"})
    daemon = NativeDaemon(lab, ns, config, events, control, log, proc, prog)
    try:
        daemon.wait_ready(timeout)
    except BaseException:
        daemon.stop()
        raise
    return daemon
