"""The systemd units in systemd/: `systemd-analyze verify` clean, and what deploy.md promises."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("mobike-vici.service", "mobike-vici-native.service")
INSTALLED = "/usr/local/bin/mobike-vici"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / name)
    return parser


@pytest.mark.slow
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        reason = "NOT RUN, missing prerequisite: systemd-analyze (Debian package systemd)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    # verify insists that ExecStart exists: point it at this checkout's entry point.
    exe = Path(sys.executable).with_name("mobike-vici")
    assert exe.exists(), "the project is not installed in this interpreter's environment"
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        assert INSTALLED in text
        (tmp_path / name).write_text(text.replace(INSTALLED, str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", *UNITS], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


DROP_INS = sorted((REPO / "systemd" / "mobike-vici.service.d").glob("*.conf"))


def _verify(directory: Path, unit: str) -> str:
    proc = subprocess.run(["systemd-analyze", "verify", unit], cwd=directory,
                          capture_output=True, text=True, timeout=60, check=False)
    return "" if proc.returncode == 0 and not proc.stdout + proc.stderr else (
        f"exit {proc.returncode}: {proc.stdout}{proc.stderr}")


@pytest.mark.slow
@pytest.mark.parametrize("drop_in", [p.name for p in DROP_INS])
def test_each_shipped_drop_in_applies_cleanly(tmp_path: Path, drop_in: str) -> None:
    """The unit with one drop-in of systemd/mobike-vici.service.d/, as an operator installs
    it: verify clean, and a drop-in that only adds an ExecStart= (the docs' old advice) is
    refused, so the check can tell."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("NOT RUN, missing prerequisite: systemd-analyze (Debian package systemd)")
    exe = str(Path(sys.executable).with_name("mobike-vici"))
    name = "mobike-vici.service"
    (tmp_path / name).write_text((REPO / "systemd" / name).read_text().replace(INSTALLED, exe))
    (tmp_path / f"{name}.d").mkdir()
    text = (REPO / "systemd" / f"{name}.d" / drop_in).read_text()
    assert "\nExecStart=\nExecStart=" + INSTALLED + " run " in text
    (tmp_path / f"{name}.d" / drop_in).write_text(text.replace(INSTALLED, exe))
    assert _verify(tmp_path, name) == ""
    (tmp_path / f"{name}.d" / drop_in).write_text(
        text.replace(INSTALLED, exe).replace("\nExecStart=\n", "\n"))
    assert "more than one ExecStart" in _verify(tmp_path, name)


def test_the_drop_ins_keep_the_units_command_and_add_their_option() -> None:
    unit = _unit("mobike-vici.service")["Service"]["ExecStart"]
    options = {}
    for path in DROP_INS:
        lines = [line for line in path.read_text().splitlines()
                 if line.startswith("ExecStart=") and line != "ExecStart="]
        assert len(lines) == 1, path.name
        command = lines[0].removeprefix("ExecStart=")
        assert command.startswith(unit + " "), path.name
        options[path.name] = command.removeprefix(unit + " ").split()[0]
    assert options == {"events.conf": "--events", "metrics.conf": "--metrics"}


def test_a_bad_config_is_not_restarted_and_fails_the_reload() -> None:
    """Exit 2 (bad config) is final; ``systemctl reload`` checks the file before SIGHUP."""
    for name, check in (("mobike-vici.service", "check-config --config"),
                        ("mobike-vici-native.service", "check-config --native --config")):
        text = (REPO / "systemd" / name).read_text()
        assert "RestartPreventExitStatus=2" in text.splitlines(), name
        reloads = [line.removeprefix("ExecReload=") for line in text.splitlines()
                   if line.startswith("ExecReload=")]
        assert len(reloads) == 2 and reloads[1] == "/bin/kill -HUP $MAINPID", name
        assert reloads[0].startswith(f"{INSTALLED} {check} "), name
        # It checks the file the daemon reads.
        start = _unit(name)["Service"]["ExecStart"]
        assert reloads[0].split("--config ")[1] in start.split("--config ")[1], name


def test_the_controller_unit_follows_strongswan_and_notifies() -> None:
    unit = _unit("mobike-vici.service")
    assert "strongswan.service" in unit["Unit"]["After"]
    assert unit["Unit"]["PartOf"] == "strongswan.service"
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"].rstrip("s")) > 0
    assert service["RuntimeDirectory"] == "mobike-vici"
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["ProtectSystem"] == "strict"
    assert " run " in service["ExecStart"] and "--load" not in service["ExecStart"]
    # The data-plane watch is a packet socket: without AF_PACKET it is off (probes only).
    assert "AF_PACKET" in service["RestrictAddressFamilies"].split()


def test_the_native_unit_keeps_to_its_capabilities() -> None:
    service = _unit("mobike-vici-native.service")["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"
    assert service["ProtectSystem"] == "strict"
    assert " native " in service["ExecStart"]


def test_the_drop_in_deploy_md_shows_is_the_shipped_one() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text()
    start = doc.index("```ini\n", doc.index("`events.conf` is, comments aside")) + len("```ini\n")
    block = doc[start:doc.index("```", start)]
    shown = [line.strip() for line in block.splitlines() if line.strip()]
    shipped = [line for line in (REPO / "systemd" / "mobike-vici.service.d" / "events.conf")
               .read_text().splitlines() if line and not line.startswith("#")]
    assert shown == shipped
