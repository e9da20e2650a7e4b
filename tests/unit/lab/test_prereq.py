"""The lab names every missing tool and charon plugin, with the package that brings it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import mobike_vici.demo as demo
from mobike_vici.lab import charon
from mobike_vici.lab.netns import LabError
from mobike_vici.lab.prereq import (
    LAB_TOOLS,
    PLUGIN_PACKAGES,
    TOOL_PACKAGES,
    describe,
    missing_plugins,
    missing_tools,
)


def _plugin_dir(tmp_path: Path, present: list[str]) -> Path:
    for name in present:
        (tmp_path / f"libstrongswan-{name}.so").write_bytes(b"")
    return tmp_path


def test_every_plugin_the_lab_loads_has_a_package() -> None:
    assert set(charon.PLUGINS.split()) <= set(PLUGIN_PACKAGES)


def test_every_lab_tool_has_a_package() -> None:
    assert set(LAB_TOOLS) <= set(TOOL_PACKAGES)


def test_missing_plugins_names_each_with_its_package(tmp_path: Path) -> None:
    loaded = charon.PLUGINS.split()
    plugin_dir = _plugin_dir(tmp_path, [p for p in loaded if p not in ("gcm", "openssl")])
    missing = missing_plugins(loaded, plugin_dir)
    assert [(m.name, m.package) for m in missing] == [
        ("gcm", "libstrongswan-standard-plugins"),
        ("openssl", "libstrongswan-standard-plugins"),
    ]
    text = describe(missing)
    assert "gcm (libstrongswan-standard-plugins)" in text
    assert "apt-get install libstrongswan-standard-plugins`" in text


def test_charon_runner_refuses_before_start_when_plugins_are_missing(tmp_path: Path) -> None:
    plugin_dir = _plugin_dir(tmp_path, ["aes", "sha2"])
    with pytest.raises(LabError) as info:
        charon.check_plugins(plugin_dir)
    message = str(info.value)
    for name in ("openssl", "gcm", "curve25519", "kernel-libipsec", "vici"):
        assert name in message
    assert "libcharon-extra-plugins" in message


def test_charon_runner_accepts_a_complete_plugin_dir(tmp_path: Path) -> None:
    charon.check_plugins(_plugin_dir(tmp_path, charon.PLUGINS.split()))


def test_missing_tools_follow_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "ip"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert [m.name for m in missing_tools()] == [t for t in LAB_TOOLS if t != "ip"]


def test_demo_preflight_lists_every_missing_tool_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "is_root", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert demo.run_demo(out=io.StringIO()) == 2
    err = capsys.readouterr().err
    for tool in LAB_TOOLS:
        assert f"{tool} ({TOOL_PACKAGES[tool]})" in err
    assert "apt-get install iproute2 iputils-ping nftables util-linux" in err


@pytest.mark.charon
def test_installed_strongswan_has_every_lab_plugin() -> None:
    # scripts/bootstrap.sh --with-strongswan must bring every plugin the lab loads.
    assert missing_plugins(charon.PLUGINS.split()) == []
