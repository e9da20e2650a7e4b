"""The pool beside the native daemon without sockets: which IKE_SAs a drain may move
(followed from core events), the IKE_SA_INIT policy at max_ike_sas, the drain's refusals,
and a drain carried out on a real engine pair (``tests/unit/core`` harness)."""

from __future__ import annotations

import asyncio
import ipaddress

from mobike_vici.config.pool import PoolGateway, PoolSettings
from mobike_vici.core.events import IkeSaDeleted, IkeSaEstablished, IkeSaRekeyed
from mobike_vici.daemon.native_pool import INIT_SETUP, NativePool
from mobike_vici.pool.view import SETTLE_MARGIN
from mobike_vici.types import Endpoint, IPAddress, Path
from tests.unit.daemon.fakes import RecordingLog

ME, B, C = (ipaddress.ip_address(f"10.20.{n}.2") for n in (1, 2, 3))
CLIENT = ipaddress.ip_address("10.30.1.2")
PATH = Path(Endpoint(ME, 4500), Endpoint(CLIENT, 4500))


class FakeEngine:
    def __init__(self) -> None:
        self.redirects: list[tuple[str, IPAddress]] = []
        self.policy: object = None
        self.refuse: str | None = None

    def redirect(self, ike_spi: str, gateway: IPAddress, now: float) -> None:
        if self.refuse:
            raise ValueError(self.refuse)
        self.redirects.append((ike_spi, gateway))

    def set_redirect_policy(self, policy: object) -> None:
        self.policy = policy


def settings(**kw: object) -> PoolSettings:
    return PoolSettings(gateways=tuple(PoolGateway(a, str(a), 9474) for a in (ME, B, C)),
                        **kw)  # type: ignore[arg-type]


def established(spi: str, initiator: bool = False) -> IkeSaEstablished:
    return IkeSaEstablished(conn="rw", ike_spi=spi, path=PATH, initiator=initiator,
                            local_id="gw", remote_id="c", proposal="x")


def make(**kw: object) -> tuple[NativePool, FakeEngine, list[int]]:
    engine, flushed = FakeEngine(), []
    pool = NativePool(engine, RecordingLog(), settings(**kw), lambda: 100.0,
                      lambda: flushed.append(1))
    assert engine.policy == pool.init_policy
    return pool, engine, flushed


def test_clients_ike_sas_are_followed_from_events() -> None:
    pool, _, _ = make()
    pool.on_event(established("a_1"))
    pool.on_event(established("b_2", initiator=True))  # ours as client: never drained
    pool.on_event(established("c_3"))
    pool.on_event(IkeSaRekeyed(conn="rw", ike_spi="a_1", new_ike_spi="a_9"))
    pool.on_event(IkeSaDeleted(conn="rw", ike_spi="c_3", path=PATH, reason="deleted_by_peer"))
    sas = pool.backend.drain_sas()
    assert [s.ike_spi for s in sas] == ["a_9"]
    assert sas[0].local == ME and sas[0].remote == CLIENT
    assert pool.backend.established("a_9") and pool.backend.established("a_1") is None


def test_init_policy_at_the_limit_spreads_by_load() -> None:
    pool, _, _ = make(max_ike_sas=2)
    view = pool.service.view
    view.on_answer(B, 1, 50.0)
    view.on_answer(C, 0, 50.0)
    assert pool.init_policy(PATH, 1) is None  # under the limit: served here
    assert pool.init_policy(PATH, 2) == C  # least loaded
    assert pool.init_policy(PATH, 2) == B  # C now counts the one sent there: 1 each
    assert pool.init_policy(PATH, 2) == C  # B at 2 is full, C at 1 is not
    assert pool.init_policy(PATH, 2) is None  # both at the limit: served here


def test_init_policy_without_a_live_peer_serves_here() -> None:
    pool, _, _ = make(max_ike_sas=1)
    assert pool.init_policy(PATH, 5) is None


def test_drain_to_a_target_that_is_down_is_refused() -> None:
    pool, _, _ = make()
    pool.service.view.on_answer(B, 0, 50.0)
    answer = pool.control({"cmd": "drain", "to": [str(C)], "rate": 10})
    assert answer["ok"] is False and answer["reason"] == "target_down"


def test_drain_sends_each_client_away_at_the_rate() -> None:
    async def run() -> tuple[NativePool, FakeEngine, list[int]]:
        pool, engine, flushed = make()
        for k in range(3):
            pool.on_event(established(f"{k}_1"))
        pool.service.view.on_answer(B, 0, 0.0)
        pool.service.view.on_answer(C, 0, 0.0)
        answer = pool.control({"cmd": "drain", "to": None, "rate": 1000})
        assert answer["ok"] is True and answer["ike_sas"] == 3
        for k in range(3):  # the clients leave as they follow the redirect
            await asyncio.sleep(0.05)
            pool.on_event(IkeSaDeleted(conn="rw", ike_spi=f"{k}_1", path=PATH,
                                       reason="deleted_by_peer"))
        assert pool.service._drain_task is not None
        await asyncio.wait_for(pool.service._drain_task, 10)
        await pool.close()
        return pool, engine, flushed
    pool, engine, flushed = asyncio.run(run())
    assert sorted(spi for spi, _ in engine.redirects) == ["0_1", "1_1", "2_1"]
    assert {gw for _, gw in engine.redirects} == {B, C}
    assert len(flushed) == 3
    log = pool.service.log
    assert isinstance(log, RecordingLog)
    (done,) = log.named("drain_completed")
    assert done["result"] == "completed" and done["redirected"] == 3


def test_a_refused_redirect_fails_the_drain() -> None:
    async def run() -> RecordingLog:
        pool, engine, _ = make()
        engine.refuse = "the client did not announce REDIRECT_SUPPORTED"
        pool.on_event(established("0_1"))
        pool.service.view.on_answer(B, 0, 0.0)
        assert pool.control({"cmd": "drain", "to": None, "rate": 1000})["ok"] is True
        assert pool.service._drain_task is not None
        await asyncio.wait_for(pool.service._drain_task, 40)
        await pool.close()
        log = pool.service.log
        assert isinstance(log, RecordingLog)
        return log
    log = asyncio.run(run())
    (failed,) = log.named("sa_redirect_failed")
    assert "REDIRECT_SUPPORTED" in str(failed["error"])
    (done,) = log.named("drain_completed")
    assert done["result"] == "incomplete"


def test_no_limit_never_redirects_at_init() -> None:
    pool, _, _ = make(max_ike_sas=0)
    pool.service.view.on_answer(B, 0, 0.0)
    assert pool.init_policy(PATH, 10_000) is None


def test_sighup_hands_the_new_pool_to_the_native_pool() -> None:
    """The native daemon's one SIGHUP path (``daemon.reload``) applies a changed
    ``pool { }``: the new limit and peer list act on the next IKE_SA_INIT."""
    from mobike_vici.config import load_string
    from mobike_vici.daemon.native import Daemon
    from tests.unit.daemon.fakes import FakeEngine as ScriptEngine

    def conf(limit: int, gateways: str) -> str:
        return f"mobike {{ pool {{ gateways = {gateways}\n max_ike_sas = {limit} }} }}\n"

    async def run() -> tuple[RecordingLog, NativePool]:
        first = load_string(conf(0, f"{ME}, {B}"), "a.conf")
        log = RecordingLog()
        daemon = Daemon(first, ScriptEngine(Endpoint(ME, 500), Endpoint(CLIENT, 500)), log)
        engine = FakeEngine()
        pool = NativePool(engine, log, first.mobike.policy.pool, lambda: 100.0, lambda: None)
        daemon.services.append(pool)
        pool.start()
        daemon.config_file = "a.conf"
        daemon.reload_config = lambda: load_string(conf(2, f"{ME}, {B}, {C}"), "a.conf")
        daemon._on_sighup()
        pool.service.view.on_answer(C, 0, 50.0)
        assert pool.init_policy(PATH, 2) == C  # the new limit, to the new peer
        await pool.close()
        return log, pool

    log, pool = asyncio.run(run())
    assert pool.service.settings.max_ike_sas == 2
    assert [g.address for g in pool.service.settings.gateways] == [ME, B, C]
    assert log.named("config_reloaded")[0]["policy_changed"] is True


def test_a_client_sent_away_at_init_counts_there_until_its_set_up_can_show() -> None:
    # CI on a loaded host: a read of B sent 0.5-2 s after the redirect there, before the
    # client had its IKE_SA up at B, reset B's load to 0 and forgot the redirect; the
    # next client went to B as well, leaving C empty.
    clock = [100.0]
    pool = NativePool(FakeEngine(), RecordingLog(), settings(max_ike_sas=1),
                      lambda: clock[0], lambda: None)
    view = pool.service.view
    view.on_answer(B, 0, 99.0)
    view.on_answer(C, 0, 99.0)
    assert pool.init_policy(PATH, 1) == B
    clock[0] = 100.8
    view.on_answer(B, 0, 100.7)  # sent before the client got there
    assert pool.init_policy(PATH, 1) == C
    # A read sent once the set-up had time counts the client: counted once, not twice.
    view.on_answer(B, 1, 100.0 + INIT_SETUP + SETTLE_MARGIN)
    assert view.peers[B].effective_load == 1
