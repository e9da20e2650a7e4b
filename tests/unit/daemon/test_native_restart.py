"""close_action / dpd_action = restart: the native daemon initiates again after its
IKE_SA went away (a peer whose daemon restarted deletes it, or stops answering)."""

from __future__ import annotations

import asyncio

from mobike_vici.config.model import (
    ChildConfig,
    CloseAction,
    Config,
    ConnectionConfig,
    DpdAction,
    StartAction,
)
from mobike_vici.core.events import IkeSaDeleted
from mobike_vici.daemon.native import restart_children

from .fakes import SPI, FakeEngine
from .test_native import Rig, run_rig

CHILDREN = (
    ChildConfig(name="closes", close_action=CloseAction.START),
    ChildConfig(name="dpd", dpd_action=DpdAction.RESTART),
    ChildConfig(name="plain"),
)


def test_peer_delete_restarts_close_action_children() -> None:
    assert restart_children(CHILDREN, "deleted_by_peer") == ["closes"]


def test_dead_peer_restarts_dpd_action_children() -> None:
    assert restart_children(CHILDREN, "dpd_timeout") == ["dpd"]
    assert restart_children(CHILDREN, "retransmits_exceeded") == ["dpd"]


def test_own_delete_and_rekey_restart_nothing() -> None:
    for reason in ("deleted_locally", "rekeyed", "half_open_timeout"):
        assert restart_children(CHILDREN, reason) == []


CONFIG = Config(connections=(
    ConnectionConfig(name="home", children=(
        ChildConfig(name="net", start_action=StartAction.START,
                    close_action=CloseAction.START),
    )),
))


def test_daemon_initiates_again_after_the_peer_deleted_the_ike_sa() -> None:
    def prepare(engine: FakeEngine) -> None:
        sa = engine.add_sa()
        engine.events.append(IkeSaDeleted(conn="home", ike_spi=SPI, path=sa.path,
                                          reason="deleted_by_peer"))
        engine.sas.clear()

    async def scenario(rig: Rig) -> None:
        restarting = await rig.log.wait_for("ike_sa_restarting")
        assert restarting["children"] == ["net"]
        assert restarting["reason"] == "deleted_by_peer"
        for _ in range(100):  # the initiate runs right after the drain
            if len(rig.engine.initiated) >= 2:
                break
            await asyncio.sleep(0)
        assert [(c, ch) for c, ch, _ in rig.engine.initiated] == [("home", "net")] * 2

    run_rig(scenario, config=CONFIG, prepare=prepare)


