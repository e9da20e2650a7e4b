"""SIGHUP is one implementation (``daemon.reload``): both daemons say the same things."""

from __future__ import annotations

import asyncio
import dataclasses

from mobike_vici.config import load_string
from mobike_vici.config.attach import AttachConfig
from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.daemon.controller import Controller
from mobike_vici.daemon.native import Daemon
from mobike_vici.daemon.reload import reread
from mobike_vici.types import Endpoint

from .fakes import FakeEngine, RecordingLog

DOCUMENTED = {"file", "policy_changed", "conns", "unloaded", "connections_unchanged"}


def _native_reloaded() -> dict[str, object]:
    log = RecordingLog()
    engine = FakeEngine(Endpoint.parse("127.0.0.1", 500), Endpoint.parse("127.0.0.1", 9))
    daemon = Daemon(load_string("", "a.conf"), engine, log)
    daemon.config_file = "a.conf"
    daemon.reload_config = lambda: load_string("mobike { hold_down = 4s }\n", "a.conf")
    daemon._on_sighup()
    return log.named("config_reloaded")[0]


def _controller_reloaded() -> dict[str, object]:
    log = RecordingLog()
    new = AttachConfig("a.conf", {"home": ("net",)},
                       policy=dataclasses.replace(MobikePolicy(), hold_down=4.0))

    async def main() -> bool:
        ctl = Controller(AttachConfig("a.conf", {"home": ("net",)}), log,
                         uri="unix:///nonexistent", reload_config=lambda: new)
        try:
            return await ctl.reload()
        finally:
            ctl.monitor.close()

    assert asyncio.run(main())
    return log.named("config_reloaded")[0]


def test_both_daemons_report_a_reload_with_the_documented_fields() -> None:
    native, run = _native_reloaded(), _controller_reloaded()
    assert set(native) == set(run) == DOCUMENTED
    for fields in (native, run):
        assert fields["file"] == "a.conf" and fields["policy_changed"] is True
        assert fields["unloaded"] == []
    assert run["conns"] == ["home"] and run["connections_unchanged"] is False


def test_an_unreadable_file_is_rejected_with_its_name() -> None:
    log = RecordingLog()

    def missing() -> object:
        raise FileNotFoundError(2, "No such file or directory")

    assert reread(log, "gone.conf", missing, None) is None
    assert log.named("config_rejected") == [
        {"file": "gone.conf", "line": 0, "error": "gone.conf:0: No such file or directory"}]
    assert reread(log, "gone.conf", None, None) is None
    assert log.named("reload_skipped") == [{"reason": "no config file to re-read"}]


def test_the_controller_applies_a_changed_pool_on_reload() -> None:
    """``run``'s SIGHUP hands the file's ``pool { }`` to its pool service too."""
    from mobike_vici.config.pool import parse_gateway

    pool = dataclasses.replace(MobikePolicy().pool, max_ike_sas=3, gateways=tuple(
        parse_gateway(a) for a in ("10.20.1.2", "10.20.2.2")))
    new = AttachConfig("a.conf", {"home": ("net",)},
                       policy=dataclasses.replace(MobikePolicy(), pool=pool))

    async def main() -> Controller:
        ctl = Controller(AttachConfig("a.conf", {"home": ("net",)}), RecordingLog(),
                         uri="unix:///nonexistent", reload_config=lambda: new)
        try:
            assert await ctl.reload()
            await ctl.pool.close()
            return ctl
        finally:
            ctl.monitor.close()

    assert asyncio.run(main()).pool.settings == pool
