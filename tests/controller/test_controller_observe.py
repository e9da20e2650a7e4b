"""`mobike-vici run --metrics` beside a real charon: the metrics around a silent failure,
and the operator's `move` and `prefer` steering charon through the controller."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mobike_vici.lab.charon_controller import Setup, build
from mobike_vici.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
# charon may land on the other family of the target uplink (the gateway announced it)
M0_ANY = (M0, "2001:db8:1::2")
M1_ANY = (M1, "2001:db8:2::2")
METRICS = "127.0.0.1:9475"
Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    yield from build(lab)


def scrape(setup: Setup) -> Samples:
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{METRICS}/metrics', timeout=10).read().decode())")
    proc = setup.topo.mob.run(sys.executable, "-c", code, timeout=30)
    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(proc.stdout) for s in fam.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mobike_vici", *args,
                           "--control", str(setup.control)],
                          capture_output=True, text=True, timeout=30, check=False)


def move_when_free(setup: Setup, local: str,
                   timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """``move``, asked again while the controller's own move is under way: m0's other
    family may be taken back after its hold-down just as m0 returns (refused then, as
    the docs say)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cli(setup, "move", "home", "--local", local)
        if "a move is in progress" not in got.stderr or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_metrics_and_operator_moves_beside_charon(setup: Setup) -> None:
    setup.start_controller("--metrics", METRICS)
    setup.wait_event("ike_sa_tracked")
    setup.wait_local(M0)
    setup.wait_event("path_up", lambda e: e["local"].startswith(M1))
    before = scrape(setup)
    p0 = {"conn": "home", "local": M0, "remote": "192.0.2.2"}
    assert value(before, "mobike_vici_connected") == 1
    assert value(before, "mobike_path_up", **p0) == 1
    assert value(before, "mobike_ike_sas", conn="home", state="ESTABLISHED") == 1
    handovers = value(before, "mobike_handovers_total")

    mark = len(setup.event_list())
    setup.topo.kill_silently(0)
    setup.wait_local(M1)
    setup.wait_event("handover_completed", lambda e: e["local"].startswith(M1), after=mark)
    after = scrape(setup)
    assert value(after, "mobike_handovers_total") == handovers + 1
    assert value(after, "mobike_handovers_total", conn="home", reason="failover",
                 result="completed") == 1
    assert value(after, "mobike_path_up", **p0) == 0

    # m0 back; the operator moves now (charon follows the controller's routes) ...
    setup.topo.revive(0)
    mark = len(setup.event_list())
    setup.wait_event("path_up", lambda e: e["local"].startswith(M0), after=mark)
    got = move_when_free(setup, M0)
    assert got.returncode == 0, got.stderr
    setup.wait_event("handover_started", lambda e: e["reason"] == "operator", after=mark)
    setup.wait_local(M0_ANY)
    setup.wait_event("handover_completed", lambda e: e["local"].startswith(M0), after=mark)
    # ... and prefers m1 again: taken through the path manager after its hold-down
    mark = len(setup.event_list())
    got = cli(setup, "prefer", "home", "--local", M1)
    assert got.returncode == 0, got.stderr
    setup.wait_event("preference_changed", lambda e: e["preferred_local"] == M1, after=mark)
    setup.wait_event("handover_started", lambda e: e["reason"] == "preferred", after=mark)
    setup.wait_local(M1_ANY)
    final = scrape(setup)
    assert value(final, "mobike_preference_changes_total", conn="home", source="move") == 1
    assert value(final, "mobike_preference_changes_total", conn="home", source="prefer") == 1
    assert value(final, "mobike_operator_preference", conn="home", local=M1) == 1
