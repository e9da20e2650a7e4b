"""The controller's pure edges: path events as stream fields, the prefer_best_path check."""

from __future__ import annotations

import ipaddress
from pathlib import Path as FsPath

import pytest

from mobike_vici.daemon.controller import path_event_fields, prefer_best_path
from mobike_vici.mobike.events import HandoverCompleted, PathDown
from mobike_vici.types import Endpoint, Path

REPO = FsPath(__file__).resolve().parents[3]


def _path(local: str) -> Path:
    return Path(Endpoint(ipaddress.ip_address(local), 4500),
                Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))


def test_handover_completed_carries_old_endpoints_and_duration() -> None:
    name, fields = path_event_fields(HandoverCompleted(
        path=_path("10.2.0.2"), old_path=_path("10.1.0.2"), duration_ms=12.3456))
    assert name == "handover_completed"
    assert fields == {"local": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]",
                      "old_local": "10.1.0.2[4500]", "old_remote": "192.0.2.2[4500]",
                      "duration_ms": 12.346}


def test_path_down_has_its_reason() -> None:
    name, fields = path_event_fields(PathDown(path=_path("10.1.0.2"), reason="probe_timeout"))
    assert (name, fields["reason"]) == ("path_down", "probe_timeout")


def test_the_shipped_snippet_turns_prefer_best_path_on(tmp_path: FsPath) -> None:
    snippet = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
    conf = tmp_path / "strongswan.conf"
    conf.write_text(f"charon {{ load_modular = no }}\ninclude {snippet}\n")
    assert prefer_best_path(str(conf)) is True
    conf.write_text("charon { load_modular = no }\n")
    assert prefer_best_path(str(conf)) is False
    assert prefer_best_path(str(tmp_path / "missing.conf")) is None


def _stock_tree(dest: FsPath) -> FsPath:
    """A copy of the stock /etc/strongswan.conf and strongswan.d/ (Debian's packages)."""
    import shutil

    import pytest

    if not FsPath("/etc/strongswan.conf").exists() or not FsPath("/etc/strongswan.d").is_dir():
        pytest.skip("no stock /etc/strongswan.conf (strongSwan is not installed)")
    shutil.copy("/etc/strongswan.conf", dest / "strongswan.conf")
    shutil.copytree("/etc/strongswan.d", dest / "strongswan.d")
    return dest / "strongswan.conf"


def test_the_drop_in_where_the_docs_put_it_turns_it_on_for_both_daemons(
        tmp_path: FsPath) -> None:
    conf = _stock_tree(tmp_path)
    assert prefer_best_path(str(conf), "charon") is False
    snippet = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
    (tmp_path / "strongswan.d" / "mobike-vici.conf").write_text(snippet.read_text())
    assert prefer_best_path(str(conf), "charon") is True
    assert prefer_best_path(str(conf), "charon-systemd") is True


def test_the_drop_in_among_the_plugin_files_lands_in_the_wrong_section(
        tmp_path: FsPath) -> None:
    conf = _stock_tree(tmp_path)
    snippet = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
    (tmp_path / "strongswan.d" / "charon" / "mobike-vici.conf").write_text(snippet.read_text())
    assert prefer_best_path(str(conf), "charon") is False


@pytest.mark.slow
def test_charon_systemd_reads_its_own_section_first_then_charon(tmp_path: FsPath) -> None:
    conf = _stock_tree(tmp_path)
    own = tmp_path / "strongswan.d" / "zz-local.conf"
    own.write_text("charon-systemd {\n  prefer_best_path = yes\n}\n")
    assert prefer_best_path(str(conf), "charon-systemd") is True
    assert prefer_best_path(str(conf), "charon") is False  # the starter's charon: not for it
    own.write_text("charon {\n  prefer_best_path = yes\n}\n"
                   "charon-systemd {\n  prefer_best_path = no\n}\n")
    assert prefer_best_path(str(conf), "charon-systemd") is False
    assert prefer_best_path(str(conf), "charon") is True


def test_escalation_finds_children_in_charon_when_the_file_does_not_name_them() -> None:
    import io

    from mobike_vici.config.attach import AttachConfig
    from mobike_vici.daemon.controller import Controller
    from mobike_vici.eventlog import EventLog, make_logger

    controller = Controller(AttachConfig("swanctl.conf", {"known": ("a",)}),
                            EventLog(make_logger(io.StringIO())), uri="unix:///nonexistent")
    controller.client.conns = {"loaded-by-swanctl": {"children": {"net": {}, "dmz": {}}}}
    assert controller._charon_children("loaded-by-swanctl") == ("net", "dmz")
    assert controller._charon_children("unknown") == ()
    controller.monitor.close()
