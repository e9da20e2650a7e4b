"""The native-daemon runner against a stub that keeps the CLI contract (README, "Command line")."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from mobike_vici.lab.native import named, start_native
from mobike_vici.lab.netns import Lab, LabError, list_namespaces

pytestmark = pytest.mark.netns

# Parses `native --config F --events F --control P` like the real daemon, binds the
# control socket, writes two events, and on SIGTERM writes one more and exits 0.
STUB = r"""
import json, signal, socket, sys, time
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
if sys.argv[1] == "status":
    socket.socket(socket.AF_UNIX).connect(args["--control"])
    print("stub status: demo ESTABLISHED"); sys.exit(0)
assert sys.argv[1] == "native", sys.argv
if open(args["--config"]).read().startswith("fail"):
    sys.exit(3)
srv = socket.socket(socket.AF_UNIX); srv.bind(args["--control"]); srv.listen()
out = open(args["--events"], "a", buffering=1)
def emit(name, **kw):
    out.write(json.dumps({"event": name, "level": "info", **kw}) + "\n")
def bye(*_):
    emit("ike_sa_deleted", conn="demo"); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
emit("ike_sa_established", conn="demo")
time.sleep(0.3)
emit("child_sa_installed", conn="demo", child="net")
while True:
    time.sleep(1)
"""


def _stub(tmp_path: Path) -> list[str]:
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    return [sys.executable, str(path)]


def test_start_wait_for_events_and_stop(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("native")
    conf = tmp_path / "ok.conf"
    conf.write_text("connections {}\n")
    daemon = start_native(lab, ns, conf, program=_stub(tmp_path))
    assert daemon.alive() and daemon.control.exists()
    ev = daemon.wait_event(named("child_sa_installed", conn="demo"), timeout=30)
    assert ev["child"] == "net"
    assert [e["event"] for e in daemon.events.events][:2] == [
        "ike_sa_established", "child_sa_installed"]
    assert daemon.stop() == 0  # SIGTERM was handled, not SIGKILLed
    assert daemon.events.find(named("ike_sa_deleted")) is not None


def test_daemon_that_exits_early_is_reported(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("native")
    conf = tmp_path / "bad.conf"
    conf.write_text("fail\n")
    with pytest.raises(LabError, match="exited with 3"):
        start_native(lab, ns, conf, program=_stub(tmp_path))


def test_stop_kills_a_daemon_that_ignores_sigterm(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("native")
    conf = tmp_path / "ok.conf"
    conf.write_text("connections {}\n")
    stub = _stub(tmp_path)
    Path(stub[1]).write_text(STUB.replace("signal.signal(signal.SIGTERM, bye)",
                                          "signal.signal(signal.SIGTERM, signal.SIG_IGN)"))
    daemon = start_native(lab, ns, conf, program=stub)
    daemon.wait_event(named("ike_sa_established"))
    assert daemon.stop(grace=0.5) == -signal.SIGKILL


def test_status_goes_to_the_same_program(lab: Lab, tmp_path: Path) -> None:
    ns = lab.netns("native")
    conf = tmp_path / "ok.conf"
    conf.write_text("connections {}\n")
    daemon = start_native(lab, ns, conf, program=_stub(tmp_path))
    status = daemon.status()
    assert status.returncode == 0 and "stub status" in status.stdout


def test_demo_flow_with_stub_daemons(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """run_demo's plumbing (topology, two daemons, event printing, teardown).

    Stub daemons carry no traffic, so the handover step must fail, say so and
    still tear everything down; tests/lab/test_demo.py runs the real thing.
    """
    import io

    import mobike_vici.demo as demo
    from mobike_vici.demo import run_demo

    ours = f"mv-{os.getpid()}-"
    out = io.StringIO()
    # No tunnel behind the stubs: ping the gateway's own address, which rtr routes
    # (10.88.0.1 gets only "Destination Net Unreachable", no echo reply).
    monkeypatch.setattr(demo, "INNER_ADDR", "192.0.2.2")
    assert run_demo(out=out, program=_stub(tmp_path), verbose=True,
                    output_dir=tmp_path / "out") == 1, out.getvalue()
    lines = out.getvalue().splitlines()
    for side in ("initiator", "responder"):
        names = [json.loads(line.split("] ", 1)[1])["event"]
                 for line in lines if line.startswith(f"[{side}] ")]
        assert names[:2] == ["ike_sa_established", "child_sa_installed"], lines
    # Exactly the expected failure, at the expected step: the tunnel came up, the echo
    # replies came (from the gateway's own address), and only the
    # handover, which no stub can make, failed. Any other failure fails this test.
    assert "demo: tunnel up after " in out.getvalue()
    assert "demo: fault 1: loud failure (m0 link down)" in out.getvalue()
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED" in line]
    assert failed == ["mobike-vici demo: FAILED: loud failure (m0 link down): "
                      "no handover_completed off 10.1.0.2 within 10 s"], failed
    # A failed run still leaves its record: the events, with the fault, and a picture.
    recorded = [json.loads(line) for line in
                (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert [ev["what"] for ev in recorded if ev["event"] == "fault"] == [
        "loud failure (m0 link down)"]
    assert f"demo: picture: {tmp_path / 'out' / 'timeline.png'}" in out.getvalue()
    assert (tmp_path / "out" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [ns for ns in list_namespaces() if ns.startswith(ours)]


def test_demo_times_out_with_clear_message(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from mobike_vici.demo import run_demo

    stub = _stub(tmp_path)
    Path(stub[1]).write_text(STUB.replace('emit("child_sa_installed", conn="demo", child="net")',
                                          "pass"))
    assert run_demo(out=io.StringIO(), timeout=2, program=stub, output_dir=tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no tunnel within 2 s" in err and "child_sa_installed" in err
