"""Seeing and steering handovers in the lab (native at both ends): Prometheus metrics
scraped over HTTP around a silent failure, the timeline picture of that run, and the
operator's ``events``, ``prefer`` and ``move`` over the control socket.

``MOBIKE_TIMELINE_RECORD=DIR`` keeps the metrics test's events and ping log in DIR
(how tests/unit/data/timeline_* were recorded).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mobike_vici.lab.handover import Handover, build
from mobike_vici.lab.native import NativeDaemon, named
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.tunnel import CONN, INNER_ADDR
from mobike_vici.timeline import fault_event, render

pytestmark = pytest.mark.netns

M0, M1 = "10.1.0.2", "10.2.0.2"
METRICS = "127.0.0.1:9474"
TIMEOUT = 20.0
Samples = list[tuple[str, dict[str, str], float]]


def _mob(h: Handover) -> NativeDaemon:
    assert isinstance(h.mob, NativeDaemon)
    return h.mob


def scrape(h: Handover) -> Samples:
    """GET /metrics inside mob (the daemon listens on mob's loopback), parsed."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{METRICS}/metrics', timeout=10).read().decode())")
    proc = h.topo.mob.run(sys.executable, "-c", code, timeout=30)
    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(proc.stdout) for s in fam.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def metered(lab: Lab) -> Iterator[Handover]:
    h = build(lab, mob_native=True, gw_native=True, mob_args=("--metrics", METRICS))
    try:
        yield h
    finally:
        h.close()


def test_metrics_count_a_handover_and_the_dead_path(metered: Handover, lab: Lab) -> None:
    h = metered
    mob = _mob(h)
    mob.wait_event(named("path_up", local=f"{M1}[4500]"), TIMEOUT)
    pings = lab.workdir / "pings.txt"
    with open(pings, "w") as out:
        pinger = subprocess.Popen(h.topo.mob.argv(["ping", "-D", "-n", "-i", "0.05",
                                                   INNER_ADDR]), stdout=out,
                                  stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        before = scrape(h)
        path0 = {"conn": CONN, "local": M0, "remote": "192.0.2.2"}
        path1 = {"conn": CONN, "local": M1, "remote": "192.0.2.2"}
        assert value(before, "mobike_path_up", **path0) == 1
        assert value(before, "mobike_path_active", **path0) == 1
        assert value(before, "mobike_ike_sas", conn=CONN, state="ESTABLISHED") == 1
        assert value(before, "mobike_path_rtt_seconds", **path0) > 0
        handovers_before = value(before, "mobike_handovers_total")
        fault = time.time()
        h.kill_silently(0)
        mob.wait_event(named("handover_completed", local=f"{M1}[4500]"), TIMEOUT)
        assert h.wait_resumed(time.monotonic(), TIMEOUT) is not None
        time.sleep(1.5)
    finally:
        pinger.terminate()
        pinger.wait()
    after = scrape(h)
    assert value(after, "mobike_handovers_total") == handovers_before + 1
    assert value(after, "mobike_handovers_total", conn=CONN, reason="failover",
                 result="completed") == 1
    assert value(after, "mobike_handover_duration_seconds_count", conn=CONN) == 1
    assert value(after, "mobike_path_up", **path0) == 0
    assert value(after, "mobike_path_up", **path1) == 1
    assert value(after, "mobike_path_active", **path1) == 1
    assert value(after, "mobike_path_probe_loss_ratio", **path0) > 0
    # Unanswered probes, either twice or once while m1 answered (the stall's race).
    assert sum(value(after, "mobike_path_down_total", conn=CONN, reason=reason)
               for reason in ("probe_timeout", "probe_race")) >= 1
    assert value(after, "mobike_esp_packets_total", conn=CONN, direction="out") > 0
    labels = {k for _, lab_, _ in after for k in lab_}
    assert not any("key" in k or "secret" in k or "spi" in k for k in labels), labels

    # The picture of this very run, with the fault marked.
    events = lab.workdir / "events.jsonl"
    shutil.copy(mob.events_path, events)
    with open(events, "a") as f:
        f.write(json.dumps(fault_event("m0 silently dead", fault)) + "\n")
    record = os.environ.get("MOBIKE_TIMELINE_RECORD")
    if record:
        shutil.copy(events, Path(record) / "timeline_events.jsonl")
        shutil.copy(pings, Path(record) / "timeline_pings.txt")
    picture = render(events, lab.workdir / "timeline.png", pings=pings)
    assert png_size(picture) == (1000, 600)


def cli(h: Handover, *args: str) -> subprocess.CompletedProcess[str]:
    mob = _mob(h)
    return subprocess.run([*mob.program, *args, "--control", str(mob.control)],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def plain(lab: Lab) -> Iterator[Handover]:
    h = build(lab, mob_native=True, gw_native=True)
    try:
        yield h
    finally:
        h.close()


def test_prefer_and_move_change_the_active_path(plain: Handover, lab: Lab) -> None:
    h = plain
    mob = _mob(h)
    mob.wait_event(named("path_up", local=f"{M1}[4500]"), TIMEOUT)
    follow_out = lab.workdir / "follow.jsonl"
    with open(follow_out, "w") as out:
        follower = subprocess.Popen(
            [*mob.program, "events", "--follow", "--control", str(mob.control),
             "--event", "preference_changed", "handover_started", "handover_completed"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        # move: now, to the backup uplink, and it stays there
        got = cli(h, "move", CONN, "--local", M1)
        assert got.returncode == 0, got.stderr
        mob.wait_event(named("handover_started", reason="operator"), TIMEOUT)
        mob.wait_event(named("handover_completed", local=f"{M1}[4500]"), TIMEOUT)
        assert h.wait_local(M1, TIMEOUT)
        assert mob.events.find(named("preference_changed", preferred_local=M1,
                                     source="move"))
        time.sleep(2.0)
        assert h.mob_local() == M1  # not pulled back to the cheaper m0

        # prefer: back to m0 through the path manager (healthy for hold-down already)
        got = cli(h, "prefer", CONN, "--local", M0)
        assert got.returncode == 0, got.stderr
        mob.wait_event(named("preference_changed", preferred_local=M0, source="prefer"),
                       TIMEOUT)
        mob.wait_event(named("handover_completed", local=f"{M0}[4500]"), TIMEOUT)
        assert h.wait_local(M0, TIMEOUT)
        started = [e for e in mob.events.events if e.get("event") == "handover_started"]
        assert [e["reason"] for e in started] == ["operator", "preferred"]

        # refused with a reason: a dead path, an address with no path
        h.kill_silently(1)
        mob.wait_event(named("path_down", local=f"{M1}[4500]"), TIMEOUT)
        got = cli(h, "move", CONN, "--local", M1)
        assert got.returncode == 1 and "path is down" in got.stderr, got.stderr
        got = cli(h, "move", CONN, "--local", "10.9.9.9")
        assert got.returncode == 1 and "no candidate path" in got.stderr, got.stderr
        got = cli(h, "move", "nonesuch", "--local", M0)
        assert got.returncode == 1 and "no MOBIKE IKE_SA" in got.stderr, got.stderr
        got = cli(h, "prefer", CONN, "--clear")
        assert got.returncode == 0, got.stderr
        mob.wait_event(named("preference_changed", source="clear"), TIMEOUT)
        assert h.mob_local() == M0
        time.sleep(0.5)
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    streamed = [json.loads(line) for line in follow_out.read_text().splitlines() if line]
    names = [e["event"] for e in streamed]
    assert set(names) == {"preference_changed", "handover_started", "handover_completed"}
    assert [e["source"] for e in streamed if e["event"] == "preference_changed"] == \
        ["move", "prefer", "clear"]
    # without --follow: the recent events, filtered, then the command ends
    got = cli(h, "events", "--event", "handover_completed")
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["local"] for line in got.stdout.splitlines()] == \
        [f"{M1}[4500]", f"{M0}[4500]"]


NOBODY = 65534
# A client that imports nothing of ours, so only the control socket can refuse it.
CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"cmd": "prefer", "conn": sys.argv[2], "local": sys.argv[3]})
              .encode() + b"\n")
    answer = s.makefile().readline()
except OSError as exc:
    print("refused", exc)
    sys.exit(3)
if not answer.strip() or json.loads(answer).get("ok") is not True:
    print("refused", answer.strip())
    sys.exit(3)
print("accepted", answer.strip())
"""


def _as_nobody(h: Handover) -> subprocess.CompletedProcess[str]:
    # The system's python: a user's pyenv shims or venvs may be closed to nobody.
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.fail("no system python3 for the second user's client")
    return subprocess.run([python, "-c", CLIENT, str(_mob(h).control), CONN, M1],
                          user=NOBODY, group=NOBODY, capture_output=True, text=True,
                          timeout=30, check=False)


def test_another_user_cannot_steer(plain: Handover) -> None:
    got = _as_nobody(plain)
    assert got.returncode == 3, got.stdout + got.stderr
    assert _mob(plain).events.find(named("preference_changed")) is None


def test_another_user_is_refused_even_through_an_open_socket(plain: Handover) -> None:
    """Even when the file modes would let it in, the daemon checks the peer's uid."""
    mob = _mob(plain)
    opened: list[tuple[Path, int]] = []
    try:
        for d in mob.control.parents:  # let the second user reach the socket
            mode = d.stat().st_mode & 0o7777
            if mode & 0o001 == 0:
                opened.append((d, mode))
                d.chmod(mode | 0o001)
        mob.control.chmod(0o666)
        got = _as_nobody(plain)
    finally:
        for d, mode in opened:
            d.chmod(mode)
    assert got.returncode == 3, got.stdout + got.stderr
    assert "permission denied" in got.stdout, got.stdout
    refused = mob.events.wait_for(named("control_refused"), timeout=10)
    assert refused["uid"] == 65534
    assert mob.events.find(named("preference_changed")) is None
