"""The controller's pure edges: path events as stream fields, the prefer_best_path check."""

from __future__ import annotations

import ipaddress
from pathlib import Path as FsPath

import pytest

from mobike_vici.backends.vici.charon_settings import read_settings, unmet
from mobike_vici.eventlog import event_fields
from mobike_vici.mobike.events import HandoverCompleted, PathDown
from mobike_vici.types import Endpoint, Path

REPO = FsPath(__file__).resolve().parents[3]


def _path(local: str) -> Path:
    return Path(Endpoint(ipaddress.ip_address(local), 4500),
                Endpoint(ipaddress.ip_address("192.0.2.2"), 4500))


def test_handover_completed_carries_old_endpoints_and_duration() -> None:
    name, fields = event_fields(HandoverCompleted(
        path=_path("10.2.0.2"), old_path=_path("10.1.0.2"), duration_ms=12.3456))
    assert name == "handover_completed"
    assert fields == {"local": "10.2.0.2[4500]", "remote": "192.0.2.2[4500]",
                      "old_local": "10.1.0.2[4500]", "old_remote": "192.0.2.2[4500]",
                      "duration_ms": 12.346}


def test_path_down_has_its_reason() -> None:
    name, fields = event_fields(PathDown(path=_path("10.1.0.2"), reason="probe_timeout"))
    assert (name, fields["reason"]) == ("path_down", "probe_timeout")


def prefer_best_path(strongswan_conf: str, daemon: str = "charon") -> bool | None:
    """Whether ``daemon`` reads ``prefer_best_path = yes``; None: the file is unreadable."""
    values = read_settings(strongswan_conf, daemon)
    if values is None:
        return None
    return "prefer_best_path" not in [s.key for s in unmet(values)]


def test_the_shipped_snippet_turns_prefer_best_path_on(tmp_path: FsPath) -> None:
    snippet = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
    conf = tmp_path / "strongswan.conf"
    conf.write_text(f"charon {{ load_modular = no }}\ninclude {snippet}\n")
    assert prefer_best_path(str(conf)) is True
    conf.write_text("charon { load_modular = no }\n")
    assert prefer_best_path(str(conf)) is False
    assert prefer_best_path(str(tmp_path / "missing.conf")) is None


def test_the_shipped_snippet_gives_every_setting_the_controller_relies_on(
        tmp_path: FsPath) -> None:
    snippet = REPO / "swanctl" / "strongswan.d" / "mobike-vici.conf"
    conf = tmp_path / "strongswan.conf"
    conf.write_text(f"charon {{ load_modular = no }}\ninclude {snippet}\n")
    values = read_settings(str(conf))
    assert values is not None and unmet(values) == []


def test_each_missing_setting_is_named(tmp_path: FsPath) -> None:
    conf = tmp_path / "strongswan.conf"
    conf.write_text("charon {\n  prefer_best_path = yes\n  check_current_path = yes\n"
                    "  plugins {\n    socket-default { fwmark = 19779 }\n"
                    "    kernel-netlink { fwmark = 0x4d43 }\n  }\n}\n")
    values = read_settings(str(conf))
    assert values is not None
    # 19779 is 0x4d43 written in decimal; kernel-netlink's mark must be inverted.
    assert [s.key for s in unmet(values)] == ["plugins.kernel-netlink.fwmark"]
    conf.write_text("charon {\n  process_route = no\n}\n")
    values = read_settings(str(conf))
    assert values is not None
    assert [s.key for s in unmet(values)] == [
        "prefer_best_path", "process_route", "check_current_path",
        "plugins.socket-default.fwmark", "plugins.kernel-netlink.fwmark"]
    assert read_settings(str(tmp_path / "missing.conf")) is None


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

    from mobike_vici.backends.vici.commands import charon_children
    from mobike_vici.config.attach import AttachConfig
    from mobike_vici.daemon.controller import Controller
    from mobike_vici.eventlog import EventLog, make_logger

    controller = Controller(AttachConfig("swanctl.conf", {"known": ("a",)}),
                            EventLog(make_logger(io.StringIO())), uri="unix:///nonexistent")
    controller.client.conns = {"loaded-by-swanctl": {"children": {"net": {}, "dmz": {}}}}
    assert charon_children(controller.client, "loaded-by-swanctl") == ("net", "dmz")
    assert charon_children(controller.client, "unknown") == ()
    controller.monitor.close()


def test_a_move_charon_completes_on_the_targets_other_family_is_recorded_where_charon_is(
        ) -> None:
    """The plan's target was m0's IPv4, charon landed on m0's IPv6 (the same uplink): the
    move is done, and the path manager's active path is charon's, not the target. Before,
    the controller held m0's IPv4 as active (``handover_completed 10.1.0.2`` beside
    ``addresses_updated 2001:db8:1::2``) and kept steering from there."""
    import asyncio
    import io

    from mobike_vici.backends.vici import IkeSaInfo
    from mobike_vici.backends.vici.mobility import TrackedSa
    from mobike_vici.config.attach import AttachConfig
    from mobike_vici.daemon.controller import Controller
    from mobike_vici.eventlog import EventLog, make_logger
    from mobike_vici.mobike import steer_plan
    from mobike_vici.mobike.follow import Follow
    from mobike_vici.mobike.manager import PathManager
    from mobike_vici.mobike.paths import LocalAddress

    from ..backends.test_vici_steer import GW4, GW6, M0_V4, M0_V6, M1_V4, _dual_stack, _p

    async def main() -> None:
        out = io.StringIO()
        controller = Controller(AttachConfig("swanctl.conf", {"home": ("net",)}),
                                EventLog(make_logger(out)), uri="unix:///nonexistent")
        controller.monitor._state = _dual_stack()
        now = controller.now
        def sa_on(path: Path) -> IkeSaInfo:
            return IkeSaInfo(conn="home", ike_spi="a_b", unique_id=1, state="ESTABLISHED",
                             path=path, initiator=True, local_id="m", remote_id="g")

        on_m1 = sa_on(_p(M1_V4, GW4))
        locals_ = [LocalAddress(M0_V4, "m0"), LocalAddress(M0_V6, "m0"),
                   LocalAddress(M1_V4, "m1")]
        manager = PathManager(controller.policy, on_m1.path, locals_, [GW4, GW6], now=now)
        controller.mobility.sas["a_b"] = TrackedSa(on_m1, manager, Follow(on_m1.path, now))
        controller.mobility.plans["home"] = steer_plan.start("a_b", _p(M0_V4, GW4), on_m1.path, now)
        on_m0_v6 = sa_on(_p(M0_V6, GW6))
        controller.mobility.moved(on_m1, on_m0_v6)
        assert "home" not in controller.mobility.plans  # charon reached the target's uplink
        assert manager.active_path == on_m0_v6.path
        done = [line for line in out.getvalue().splitlines() if "handover_completed" in line]
        assert done and '"local": "2001:db8:1::2[4500]"' in done[-1], out.getvalue()
        controller.monitor.close()

    asyncio.run(main())
