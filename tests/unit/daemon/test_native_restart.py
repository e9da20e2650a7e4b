"""close_action / dpd_action = restart: the native daemon initiates again after its
IKE_SA went away (a peer whose daemon restarted deletes it, or stops answering)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path as FsPath
from typing import cast

from mobike_vici.config import load_string
from mobike_vici.config.model import (
    ChildConfig,
    CloseAction,
    Config,
    ConnectionConfig,
    DpdAction,
    StartAction,
)
from mobike_vici.core.events import IkeSaDeleted
from mobike_vici.core.status import IkeStatus
from mobike_vici.daemon.native import Daemon
from mobike_vici.daemon.native_api import opens_ike_sa, restart_children
from mobike_vici.daemon.native_run import engine_settings
from mobike_vici.daemon.routing import DaemonRouting
from mobike_vici.types import Endpoint, Path

from .fakes import SPI, FakeEngine, RecordingLog, free_port
from .test_native import V4, Rig, run_rig

CHILDREN = (
    ChildConfig(name="closes", close_action=CloseAction.START),
    ChildConfig(name="dpd", dpd_action=DpdAction.RESTART),
    ChildConfig(name="plain"),
)


PATH = Path(Endpoint.parse("192.0.2.2", 500), Endpoint.parse("192.0.2.1", 500))
RESTARTS = Config(connections=(ConnectionConfig(name="c", children=CHILDREN),))


def _restart(reason: str, live: tuple[IkeStatus, ...] = (), conn: str = "c") -> list[str]:
    gone = IkeSaDeleted(conn=conn, ike_spi="aa_bb", path=PATH, reason=reason)
    return restart_children(RESTARTS, gone, live)


def _live(ike_spi: str, state: str = "ESTABLISHED") -> IkeStatus:
    return IkeStatus(conn="c", ike_spi=ike_spi, state=state, initiator=True, path=PATH,
                     local_id="", remote_id="", proposal="", virtual_ips=(), children=())


def test_peer_delete_restarts_close_action_children() -> None:
    assert _restart("deleted_by_peer") == ["closes"]


def test_dead_peer_restarts_dpd_action_children() -> None:
    assert _restart("dpd_timeout") == ["dpd"]
    assert _restart("retransmits_exceeded") == ["dpd"]
    assert _restart("dead_after") == ["dpd"]
    assert _restart("peer_lost_state") == ["dpd"]  # it restarted without DELETE


def test_nothing_restarts_while_another_ike_sa_of_the_conn_is_up() -> None:
    assert _restart("deleted_by_peer", (_live("cc_dd"),)) == []
    assert _restart("deleted_by_peer", (_live("aa_bb"), _live("cc_dd", "CONNECTING"))) \
        == ["closes"]
    assert _restart("deleted_by_peer", conn="gone-from-config") == []


def test_the_engine_gets_the_configured_dead_bound() -> None:
    text = "connections {\n home {\n  remote_addrs = 192.0.2.1\n }\n}\n"
    assert engine_settings(load_string(text)).dead_after == 30.0
    assert engine_settings(load_string(text + "mobike { dead_after = 0 }\n")).dead_after == 0.0


def test_the_engine_asks_a_silent_peer_whether_it_lost_the_ike_sa_within_dead_after() -> None:
    text = "connections {\n home {\n  remote_addrs = 192.0.2.1\n }\n}\n"
    assert engine_settings(load_string(text)).state_check_after == 1.0
    slow = "mobike { probe_interval = 1s\n probe_timeout = 1s }\n"
    assert engine_settings(load_string(text + slow)).state_check_after == 3.0
    short = "mobike { dead_after = 500ms }\n"
    assert engine_settings(load_string(text + short)).state_check_after == 0.5
    # dead_after = 0 is charon's way: only the retransmission bound ends an IKE_SA.
    off = "mobike { dead_after = 0 }\n"
    assert engine_settings(load_string(text + off)).state_check_after == 0.0


def test_own_delete_and_rekey_restart_nothing() -> None:
    for reason in ("deleted_locally", "rekeyed", "half_open_timeout"):
        assert _restart(reason) == []


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
        # The start is charon's pace; the peer that deleted the IKE_SA is restarting.
        assert rig.engine.eager == [False, True]

    run_rig(scenario, config=CONFIG, prepare=prepare)




def _ike_sa_init(response: bool = False) -> bytes:
    header = bytes(range(1, 9)) + bytes(8) + bytes([33, 0x20, 34, 0x20 if response else 0x08])
    return header + bytes(4) + (28).to_bytes(4, "big")


def test_opens_ike_sa_recognises_only_an_ike_sa_init_request() -> None:
    assert opens_ike_sa(_ike_sa_init())
    assert not opens_ike_sa(_ike_sa_init(response=True))
    other = bytearray(_ike_sa_init())
    other[18] = 37  # INFORMATIONAL
    assert not opens_ike_sa(bytes(other))
    assert not opens_ike_sa(b"short")


def test_a_stopping_daemon_takes_no_new_ike_sa() -> None:
    """A peer that got our DELETE at shutdown initiates at once; the IKE_SA must not be
    set up with the daemon that is going away (seen in a soak run: the peer then held
    an IKE_SA nobody answered for, and the tunnel stayed down)."""
    async def scenario(rig: Rig) -> None:
        rig.daemon.request_stop()
        rig.peer.send(_ike_sa_init(), "127.0.0.1", rig.daemon.ike_port)
        rig.peer.send(b"not an IKE_SA_INIT, but for the engine", "127.0.0.1",
                      rig.daemon.ike_port)
        [data] = await rig.received(1)
        assert data.startswith(b"not an IKE_SA_INIT")
        dropped = await rig.log.wait_for("packet_dropped")
        assert dropped["reason"] == "shutting_down"

    run_rig(scenario)


def test_a_starting_daemon_takes_no_new_ike_sa_until_its_data_plane_is_open() -> None:
    """A peer resending its IKE_SA_INIT every second reached our gateway while it was
    still starting (sockets bound, data plane not yet open): the IKE_SA came up, its
    CHILD_SAs missed the data plane, and the tunnel stayed silent with the SA up (a
    soak run's peer_restart). Until start() is done, IKE_SA_INIT is dropped; the peer
    resends it."""
    engine = FakeEngine(Endpoint.parse("127.0.0.1", 500), Endpoint.parse("127.0.0.1", 4500))
    log = RecordingLog()
    daemon = Daemon(Config(), engine, log, ike_port=free_port(), natt_port=free_port(),
                    bind=V4)
    path = Path(engine.local, engine.peer)
    assert not daemon._dispatch(_ike_sa_init(), path, daemon.ike_port, 0.0)
    assert log.named("packet_dropped")[0]["reason"] == "starting"
    assert engine.received == []

    async def scenario(rig: Rig) -> None:  # once started, it goes to the engine
        rig.peer.send(_ike_sa_init(), "127.0.0.1", rig.daemon.ike_port)
        [data] = await rig.received(1)
        assert opens_ike_sa(data)

    run_rig(scenario)


class SlowRouting:
    """Routing whose start() waits for the test: meanwhile the daemon is mid-start."""

    fwmark = None

    def __init__(self) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def start(self) -> None:
        self.entered.set()
        await self.release.wait()

    async def close(self) -> None:
        pass


def test_the_control_socket_answers_only_once_ike_sa_init_is_taken(tmp_path: FsPath) -> None:
    """A CI run's charon initiated as soon as the control socket answered, while the
    daemon still set up its routes: the IKE_SA_INIT was dropped as `starting` and the
    tunnel came up 4 s late, on charon's retransmission. The socket is opened last."""
    ctl = str(tmp_path / "ctl")

    async def main() -> None:
        routing = SlowRouting()
        engine = FakeEngine(Endpoint.parse("127.0.0.1", 500), Endpoint.parse("127.0.0.1", 4500))
        daemon = Daemon(Config(), engine, RecordingLog(), ike_port=free_port(),
                        natt_port=free_port(), bind=V4, control_path=ctl, net_monitor=False,
                        routing=cast(DaemonRouting, routing))
        starting = asyncio.create_task(daemon.start())
        try:
            await asyncio.wait_for(routing.entered.wait(), 5.0)
            assert not os.path.exists(ctl)
            routing.release.set()
            await asyncio.wait_for(starting, 5.0)
            assert os.path.exists(ctl)
            assert daemon._dispatch(_ike_sa_init(), Path(engine.local, engine.peer),
                                    daemon.ike_port, 0.0)
        finally:
            routing.release.set()
            await asyncio.gather(starting, return_exceptions=True)
            await daemon.close()

    asyncio.run(main())
