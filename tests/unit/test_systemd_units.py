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


def test_the_native_unit_keeps_to_its_capabilities() -> None:
    service = _unit("mobike-vici-native.service")["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"
    assert service["ProtectSystem"] == "strict"
    assert " native " in service["ExecStart"]
