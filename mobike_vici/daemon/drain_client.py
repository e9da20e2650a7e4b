"""``mobike-vici drain``'s client side: follow the daemon's events, start the drain, print
its progress until ``drain_completed``.

The events stream is opened (and acknowledged) before the drain is asked for, so not
one ``sa_redirected`` is missed; events of other drains (the feed's recent ones) are
skipped by the drain's id. Exit status: 0 when every IKE_SA was redirected, 1 when the
drain was refused (a target down, another drain running) or ended incomplete.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any, TextIO

from .control import ControlError, request

JsonObject = dict[str, Any]

DRAIN_EVENTS = ("drain_started", "sa_redirected", "sa_redirect_failed", "drain_completed")


class _Follower:
    """An ``events`` stream, acknowledged on open, read one event at a time."""

    def __init__(self, path: str, names: tuple[str, ...], timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            self._sock.sendall(json.dumps({"cmd": "events", "follow": True,
                                           "event": list(names)}).encode() + b"\n")
            self._stream = self._sock.makefile("rb")
            first = self._read()
        except OSError as exc:
            self._sock.close()
            raise ControlError(f"cannot follow events on {path}: {exc.strerror or exc}"
                               " (is the daemon running?)") from exc
        if first is None or first.get("ok") is not True:
            self._sock.close()
            raise ControlError(str((first or {}).get("error", "events refused")))
        self._sock.settimeout(None)

    def _read(self) -> JsonObject | None:
        line = self._stream.readline()
        if not line:
            return None
        obj = json.loads(line)
        return obj if isinstance(obj, dict) else {}

    def events(self) -> Iterator[JsonObject]:
        while (obj := self._read()) is not None:
            yield obj

    def close(self) -> None:
        self._stream.close()
        self._sock.close()


def run_drain(path: str, to: list[str] | None, rate: float | None, out: TextIO,
              err: TextIO) -> int:
    follower = _Follower(path, DRAIN_EVENTS)
    try:
        answer: JsonObject = request(path, "drain", args={"to": to, "rate": rate})
        if answer.get("ok") is not True:
            print(f"mobike-vici: drain refused: {answer.get('error', 'no reason given')}",
                  file=err)
            return 1
        drain = answer.get("drain")
        total = answer.get("ike_sas", 0)
        targets = ", ".join(f"{t['gateway']} (load {t['load']})"
                            for t in answer.get("targets") or ())
        print(f"{drain}: {total} IKE_SA(s) at {answer.get('rate')}/s to {targets or '-'}",
              file=out, flush=True)
        for event in follower.events():
            if event.get("drain") != drain:
                continue
            name = event.get("event")
            if name == "sa_redirected":
                print(f"  [{event.get('done')}/{event.get('total')}] {event.get('conn')} "
                      f"{event.get('remote')} -> {event.get('gateway')}", file=out, flush=True)
            elif name == "sa_redirect_failed":
                print(f"  failed: {event.get('conn')} {event.get('remote')} -> "
                      f"{event.get('gateway')}: {event.get('error')}", file=out, flush=True)
            elif name == "drain_completed":
                by = ", ".join(f"{gw}: {n}" for gw, n in
                               (event.get("by_target") or {}).items())
                print(f"{drain}: {event.get('redirected')} redirected ({by or 'none'}), "
                      f"{event.get('failed')} failed, {event.get('gone')} gone, "
                      f"{event.get('stayed')} stayed, "
                      f"{event.get('remaining')} left in {event.get('duration_ms')} ms",
                      file=out, flush=True)
                if event.get("result") == "completed":
                    return 0
                if event.get("stopped") == "no_target":
                    why = "no target gateway answers any more"
                elif event.get("failed"):
                    why = f"{event.get('failed')} redirect(s) refused by charon"
                else:
                    why = (f"{event.get('stayed')} redirected IKE_SA(s) still here: their"
                           " clients did not get through to the target")
                print(f"mobike-vici: drain incomplete: {why}", file=err)
                return 1
        print("mobike-vici: the daemon closed the events stream before the drain ended",
              file=err)
        return 1
    finally:
        follower.close()
