"""The command line: exit codes, config errors, status over the control socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pytest

from mobike_vici import cli
from mobike_vici.config.model import Config, ConfigError
from mobike_vici.daemon import native_run as native
from mobike_vici.daemon.control import ControlServer, JsonObject

REPO = Path(__file__).resolve().parents[2]

STATUS: JsonObject = {
    "ok": True,
    "backend": "native",
    "ike_sas": [{
        "conn": "home", "ike_spi": "0123456789abcdef_fedcba9876543210",
        "state": "ESTABLISHED", "initiator": True, "local": "10.1.0.2[4500]",
        "remote": "192.0.2.2[4500]", "local_id": "moon", "remote_id": "sun",
        "proposal": "aes128-sha256-x25519", "virtual_ips": ["10.3.0.1"],
        "children": [{"name": "net", "unique_id": 1, "state": "INSTALLED",
                      "spi_in": "c1a2b3c4", "spi_out": "d5e6f708",
                      "local_ts": ["10.3.0.1/32"], "remote_ts": ["10.2.0.0/16"],
                      "proposal": "aes128gcm16"}],
    }],
}


class Started(Exception):
    """Raised by the stand-in daemon: reaching it means the CLI started something."""


def refuse_to_start(config: Config, events: TextIO, control: str | None,
                    **_kw: object) -> int:
    raise Started


def test_bad_config_exits_2_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  home {\n    remote_addrs = 192.0.2.2\n"
                    "    rekey_time = banana\n  }\n}\n")
    monkeypatch.setattr(native, "run_native", refuse_to_start)
    assert cli.main(["native", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{conf}:4: ")
    assert "rekey_time" in err


def test_config_error_from_loader_is_printed_verbatim(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing_loader(path: str) -> Config:
        raise ConfigError(path, 17, "unknown key 'bogus'")

    monkeypatch.setattr(cli, "_load_config", failing_loader)
    monkeypatch.setattr(native, "run_native", refuse_to_start)
    assert cli.main(["native", "--config", "x.conf"]) == 2
    assert capsys.readouterr().err == "x.conf:17: unknown key 'bogus'\n"


def test_missing_config_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(native, "run_native", refuse_to_start)
    missing = tmp_path / "nope.conf"
    assert cli.main(["native", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_good_config_starts_daemon_with_events_file_and_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  home {\n    remote_addrs = 192.0.2.2\n  }\n}\n")
    events = tmp_path / "events.jsonl"
    seen: dict[str, object] = {}

    def fake_run(config: Config, stream: TextIO, control: str | None, **_kw: object) -> int:
        seen["conns"] = [c.name for c in config.connections]
        seen["control"] = control
        stream.write("line\n")
        # Line-buffered: a reader tailing the file sees the line before close.
        seen["visible"] = events.read_text()
        return 0

    monkeypatch.setattr(native, "run_native", fake_run)
    code = cli.main(["native", "--config", str(conf), "--events", str(events),
                     "--control", str(tmp_path / "ctl")])
    assert code == 0
    assert seen == {"conns": ["home"], "control": str(tmp_path / "ctl"), "visible": "line\n"}


def test_clients_look_where_the_units_daemon_binds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's shell has no $RUNTIME_DIRECTORY: status, events, prefer and move must
    still find the socket the unit's daemon made in its RuntimeDirectory."""
    from mobike_vici.daemon.control import default_path

    unit = (REPO / "systemd" / "mobike-vici.service").read_text()
    runtime = next(line.split("=", 1)[1].strip() for line in unit.splitlines()
                   if line.startswith("RuntimeDirectory="))
    daemon = default_path({"RUNTIME_DIRECTORY": f"/run/{runtime}"})
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    for argv in (["status"], ["events"], ["move", "home", "--local", "10.1.0.2"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert f"control socket {daemon}:" in err, argv
    # Inside another unit, $RUNTIME_DIRECTORY is that unit's: still the daemon's socket.
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/some-other-unit")
    assert cli.main(["status"]) == 1
    assert f"control socket {daemon}:" in capsys.readouterr().err


def _serving(path: str, answer: Callable[[JsonObject], JsonObject]) -> Iterator[str]:
    """A control server at ``path`` on its own loop in a thread, until closed."""
    loop = asyncio.new_event_loop()
    server = ControlServer(path, answer)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def control_socket(tmp_path: Path) -> Iterator[str]:
    """A control server answering STATUS."""
    yield from _serving(str(tmp_path / "ctl"),
                        lambda req: STATUS if req["cmd"] == "status" else {"ok": False})


def test_status_json_prints_the_answer(
    control_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--json", "--control", control_socket]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_status_table(control_socket: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--control", control_socket]) == 0
    out = capsys.readouterr().out
    assert "home: ESTABLISHED, initiator, IKE SPIs 0123456789abcdef_fedcba9876543210" in out
    assert "10.1.0.2[4500] - 192.0.2.2[4500]" in out
    assert "net: #1 INSTALLED, SPIs c1a2b3c4_i d5e6f708_o, aes128gcm16" in out
    assert "local  10.3.0.1/32" in out


def test_status_dead_daemon_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--control", str(tmp_path / "none")]) == 1
    assert "cannot connect to control socket" in capsys.readouterr().err


def test_demo_calls_run_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    import mobike_vici.demo as demo

    calls: list[dict[str, object]] = []

    def fake_demo(**kwargs: object) -> int:
        calls.append(kwargs)
        return 3

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    assert cli.main(["demo"]) == 3
    assert cli.main(["demo", "--verbose", "--output-dir", "some/dir"]) == 3
    assert cli.main(["demo", "--backend", "charon"]) == 3
    assert calls == [{"verbose": False, "output_dir": None, "backend": "native"},
                     {"verbose": True, "output_dir": Path("some/dir"), "backend": "native"},
                     {"verbose": False, "output_dir": None, "backend": "charon"}]


@pytest.mark.parametrize("argv", [[], ["run", "--config"], ["run", "--log-level", "loud"],
                                  ["native"], ["bogus"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mobike_vici", "status", "--control", str(tmp_path / "none")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "cannot connect to control socket" in proc.stderr


VICI_STATUS: JsonObject = {
    "ok": True, "backend": "vici", "vici": "unix:///run/charon.vici", "vici_connected": True,
    "mode": "attach", "config": "/etc/swanctl/swanctl.conf",
    "ike_sas": [{
        "conn": "home", "ike_spi": "aa_bb", "state": "ESTABLISHED", "initiator": True,
        "local": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]", "children": [],
        "paths": [
            {"local": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]", "ifname": "m1",
             "state": "up", "srtt_ms": 1.25, "probe_loss": 0.0, "active": True},
            {"local": "10.1.0.2[4500]", "remote": "192.0.2.2[4500]", "ifname": "m0",
             "state": "down", "srtt_ms": None, "probe_loss": 1.0, "active": False}],
        "last_handover": {"at": "2026-11-27T17:00:00.000000Z", "from": "10.1.0.2[4500]",
                          "to": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]",
                          "duration_ms": 812.5}}],
}


def _serve(tmp_path: Path, answer: JsonObject) -> Iterator[str]:
    yield from _serving(str(tmp_path / "vctl"), lambda req: answer)


@pytest.mark.slow
def test_status_text_shows_every_path_and_the_last_handover(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in _serve(tmp_path, VICI_STATUS):
        assert cli.main(["status", "--control", path]) == 0
    out = capsys.readouterr().out
    assert "charon   connected (unix:///run/charon.vici), attach mode" in out
    assert ("   * 10.2.0.2[4500] -> 192.0.2.2[4500] (m1) up, srtt 1.25 ms, loss 0.0%, active"
            in out)
    assert "     10.1.0.2[4500] -> 192.0.2.2[4500] (m0) down, srtt -, loss 100.0%" in out
    assert ("last handover 2026-11-27T17:00:00.000000Z: 10.1.0.2[4500] -> 10.2.0.2[4500]"
            " in 812.5 ms") in out


def test_status_exits_1_when_charon_is_unreachable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in _serve(tmp_path, {**VICI_STATUS, "vici_connected": False, "ike_sas": []}):
        assert cli.main(["status", "--control", path]) == 1
    captured = capsys.readouterr()
    assert "charon   UNREACHABLE" in captured.out
    assert "charon is not reachable at unix:///run/charon.vici" in captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("mobike-vici ") and out.strip() != "mobike-vici unknown"


def _conf(tmp_path: Path) -> Path:
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n  home {\n    remote_addrs = 192.0.2.2\n  }\n}\n")
    return conf


def _writer(config: Config, stream: TextIO, control: str | None, **_kw: object) -> int:
    stream.write('{"event": "x"}\n')
    return 0


@pytest.mark.parametrize("command", ["native", "run"])
def test_new_events_file_is_created_0600_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from mobike_vici.daemon import controller

    monkeypatch.setattr(native, "run_native", _writer)
    monkeypatch.setattr(controller, "run_controller",
                        lambda config, stream, *rest, **kw: _writer(config, stream, None))
    events = tmp_path / "events.jsonl"
    old = os.umask(0)
    try:
        code = cli.main([command, "--config", str(_conf(tmp_path)), "--events", str(events)])
    finally:
        os.umask(old)
    assert code == 0
    assert stat.S_IMODE(events.stat().st_mode) == 0o600
    assert events.read_text() == '{"event": "x"}\n'


def test_existing_events_file_is_appended_to_and_keeps_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "run_native", _writer)
    events = tmp_path / "events.jsonl"
    events.write_text('{"event": "earlier"}\n')
    events.chmod(0o640)
    argv = ["native", "--config", str(_conf(tmp_path)), "--events", str(events)]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    assert events.read_text() == '{"event": "earlier"}\n' + '{"event": "x"}\n' * 2
    assert stat.S_IMODE(events.stat().st_mode) == 0o640


@pytest.mark.parametrize("command", ["native", "run"])
def test_symlink_at_events_path_is_refused_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    from mobike_vici.daemon import controller

    monkeypatch.setattr(native, "run_native", refuse_to_start)
    monkeypatch.setattr(controller, "run_controller", refuse_to_start)
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    code = cli.main([command, "--config", str(_conf(tmp_path)), "--events", str(link)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(link) in err and "symbolic link" in err
    assert target.read_text() == "keep me\n"
    # A dangling link is refused too (it must not create the file it points at).
    link.unlink()
    link.symlink_to(tmp_path / "created-by-nobody")
    assert cli.main([command, "--config", str(_conf(tmp_path)), "--events", str(link)]) == 2
    assert not (tmp_path / "created-by-nobody").exists()


def test_events_path_that_is_a_directory_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(native, "run_native", refuse_to_start)
    code = cli.main(["native", "--config", str(_conf(tmp_path)), "--events", str(tmp_path)])
    assert code == 2
    assert str(tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize(("auth", "line", "words"), [
    ("auth = pubkey\n   certs = gw.pem", 6, "certs: no file 'gw.pem' in x509/"),
    ("auth = eap-mschapv2", 5, "EAP is not supported"),
    ("auth = pubkey\n   cert1 {\n    handle = 0a\n   }", 6, "smartcard"),
])
def test_native_refuses_what_it_cannot_honour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    auth: str, line: int, words: str,
) -> None:
    """As a new user would try it: the daemon does not start, the line is named."""
    monkeypatch.setattr(native, "run_native", refuse_to_start)
    conf = tmp_path / "swanctl.conf"
    conf.write_text("connections {\n home {\n  remote_addrs = 192.0.2.2\n  local {\n"
                    f"   {auth}\n  }}\n }}\n}}\n")
    assert cli.main(["native", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{conf}:{line}: ") and words in err, err


def test_status_text_leaves_out_what_charon_did_not_say(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No empty ``proposal`` line, no child line ending in a comma, when there is none."""
    child = {"name": "net", "unique_id": 3, "state": "INSTALLED", "spi_in": "57a8125f",
             "spi_out": "c0b769bd", "local_ts": ["10.99.0.1/32"], "remote_ts": ["10.88.0.0/24"]}
    sa = {**VICI_STATUS["ike_sas"][0], "children": [child]}  # type: ignore[index]
    for path in _serve(tmp_path, {**VICI_STATUS, "ike_sas": [sa]}):
        assert cli.main(["status", "--control", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.strip() == "proposal"]
    assert "  net: #3 INSTALLED, SPIs 57a8125f_i c0b769bd_o" in lines
    for path in _serve(tmp_path, {**VICI_STATUS, "ike_sas": [
            {**sa, "proposal": "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
             "children": [{**child, "proposal": "AES_GCM_16-128"}]}]}):
        assert cli.main(["status", "--control", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  proposal AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519" in lines
    assert "  net: #3 INSTALLED, SPIs 57a8125f_i c0b769bd_o, AES_GCM_16-128" in lines


GOOD_RUN = ("connections {\n  home {\n    remote_addrs = 192.0.2.2\n"
            "    children {\n      net {\n        remote_ts = 10.88.0.0/24\n      }\n    }\n"
            "  }\n}\nmobike {\n  hold_down = 30s\n}\n")


def test_check_config_says_ok_and_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GOOD_RUN)
    assert cli.main(["check-config", "--config", str(conf)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{conf}: OK for run (1 connection)\n"
    assert captured.err == ""


def test_check_config_names_file_and_line_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GOOD_RUN.replace("hold_down = 30s", "hold_down = 30s\n  probe_misses = many"))
    assert cli.main(["check-config", "--config", str(conf)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{conf}:13: ")
    assert "probe_misses" in captured.err
    assert captured.out == ""
    # An included file is named with its own line.
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "bad.conf").write_text("mobike {\n\n  hold_down = soon\n}\n")
    conf.write_text(GOOD_RUN.replace("mobike {\n  hold_down = 30s\n}\n", "include conf.d/*.conf\n"))
    assert cli.main(["check-config", "--config", str(conf)]) == 2
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'conf.d' / 'bad.conf'}:3: ")


def test_check_config_judges_as_the_daemon_it_is_asked_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` leaves charon's options to charon; ``native`` judges them: one file, two
    verdicts, each the one its daemon would give at start."""
    conf = tmp_path / "swanctl.conf"
    conf.write_text(GOOD_RUN.replace("remote_addrs = 192.0.2.2",
                                     "remote_addrs = 192.0.2.2\n    rekey_time = banana"))
    assert cli.main(["check-config", "--config", str(conf)]) == 0
    assert cli.main(["check-config", "--native", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{conf}:4: ") and "rekey_time" in err


def test_check_config_of_a_missing_file_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.conf"
    assert cli.main(["check-config", "--config", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"{missing}:0: ")
    assert cli.main(["check-config", "--native"]) == 2
    assert "--native needs --config" in capsys.readouterr().err


@pytest.mark.slow
def test_stderr_under_journald_carries_the_error_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd hands stderr to journald and says so in $JOURNAL_STREAM: a config error then
    reaches the journal at priority 3 (``<3>``), not as journald's default info."""
    conf = tmp_path / "swanctl.conf"
    conf.write_text("mobike {\n  hold_down = soon\n}\n")
    err_path = tmp_path / "stderr"
    code = ("import sys\nfrom mobike_vici import cli\n"
            f"sys.exit(cli.main(['check-config', '--config', {str(conf)!r}]))\n")
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "PYTHONPATH": str(REPO), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE,
                              env=env, timeout=60, check=False)
    assert proc.returncode == 2
    assert err_path.read_text().startswith(f"<3>{conf}:2: ")
    # Not the journal (a redirect of the same process's stderr elsewhere): no prefix.
    env["JOURNAL_STREAM"] = "1:2"
    proc2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=60, check=False)
    assert proc2.returncode == 2 and proc2.stderr.startswith(f"{conf}:2: ")


@pytest.mark.slow
def test_drawing_without_the_plot_extra_says_how_to_get_it(tmp_path: Path) -> None:
    """A server's install has no matplotlib: the daemons and the demo still import, and
    ``timeline`` says which extra brings it (exit 1) instead of a traceback."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"timestamp": "2026-11-27T17:00:00.000000Z", "event": "fault"}\n')
    code = ("import sys\nsys.modules['matplotlib'] = None  # as if not installed\n"
            "import mobike_vici.daemon.controller, mobike_vici.daemon.native\n"
            "import mobike_vici.demo, mobike_vici.demo_charon\n"
            "from mobike_vici import cli\n"
            f"sys.exit(cli.main(['timeline', {str(events)!r},"
            f" '-o', {str(tmp_path / 'x.png')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'mobike-vici[plot]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()
