"""`mobike-vici demo`: configs it writes are valid, it refuses without root, and it runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

import mobike_vici.demo as demo
from mobike_vici.config import load_string
from mobike_vici.config.model import StartAction
from mobike_vici.lab.netns import Netns, list_namespaces
from mobike_vici.lab.topology import TwoHosts


def _topo() -> TwoHosts:
    return TwoHosts(Netns("a", "host_a"), Netns("b", "host_b"))


def test_demo_configs_load_and_say_what_the_demo_needs() -> None:
    topo = _topo()
    ini = load_string(demo.initiator_config(topo), "initiator.conf")
    res = load_string(demo.responder_config(topo), "responder.conf")
    ini_conn = ini.connection("demo")
    res_conn = res.connection("demo")
    assert ini_conn.remote_addrs == (topo.b4,)
    assert [c.start_action for c in ini_conn.children] == [StartAction.START]
    assert [str(v) for v in ini_conn.vips] == ["0.0.0.0", "::"]
    # A roaming client's full tunnel: everything goes through it, both families.
    assert [str(t.network) for c in ini_conn.children for t in c.remote_ts] == ["0.0.0.0/0", "::/0"]
    assert [str(t.network) for c in res_conn.children for t in c.local_ts] == ["0.0.0.0/0", "::/0"]
    assert res_conn.pools == ("demo_pool", "demo_pool6")
    assert [p.name for p in res.pools] == ["demo_pool", "demo_pool6"]
    assert [c.start_action for c in res_conn.children] == [StartAction.NONE]
    assert len(ini.secrets) == 1 and len(res.secrets) == 1


def test_demo_without_root_exits_2_with_reason(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "is_root", lambda: False)
    assert demo.run_demo(out=io.StringIO()) == 2
    assert "needs root" in capsys.readouterr().err


@pytest.mark.netns
def test_demo_brings_up_tunnel_and_cleans_up(tmp_path: Path) -> None:
    # Only this process's namespaces: a parallel run's come and go on their own.
    ours = f"mv-{os.getpid()}-"
    before = {ns for ns in list_namespaces() if ns.startswith(ours)}
    out = io.StringIO()
    code = demo.run_demo(out=out)
    text = out.getvalue()
    assert code == 0, text
    seen: dict[str, set[str]] = {"initiator": set(), "responder": set()}
    for line in text.splitlines():
        label, _, rest = line.partition("] ")
        if label.lstrip("[") in seen:
            seen[label.lstrip("[")].add(json.loads(rest)["event"])
    for side, names in seen.items():
        assert set(demo.REQUIRED_EVENTS) <= names, (side, names)
    # Two handovers on the native core, each with its measured outage.
    assert {"handover_started", "handover_completed", "path_down"} <= seen["initiator"]
    outages = [line for line in text.splitlines()
               if line.startswith("demo: ") and " outage " in line and " moved " in line]
    assert len(outages) == 2, text
    assert "10.1.0.2[4500] -> 10.2.0.2[4500]" in outages[0]
    assert "10.2.0.2[4500] -> 10.1.0.2[4500]" in outages[1]
    assert "demo: OK" in text
    assert {ns for ns in list_namespaces() if ns.startswith(ours)} <= before


@pytest.mark.netns
def test_demo_cli_entry_point(tmp_path: Path) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "mobike_vici", "demo"], capture_output=True,
                          text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: OK" in proc.stdout
