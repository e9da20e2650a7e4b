"""The native daemon's I/O loop, with a fake engine over real loopback sockets.

Addresses 127.0.0.2/127.0.0.3 are loopback too (all of 127/8 is on ``lo``): they
show that the daemon learns the local address of each datagram (IP_PKTINFO) and
sends from the local address the engine asks for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path as FsPath

import pytest

from mobike_vici.config.model import ChildConfig, Config, ConnectionConfig, StartAction
from mobike_vici.core.engine import Datagram
from mobike_vici.daemon.control import request
from mobike_vici.daemon.drop_log import DropLog
from mobike_vici.daemon.framing import KEEPALIVE, NON_ESP_MARKER
from mobike_vici.daemon.native import ENGINE_ERROR_BACKOFF, Daemon
from mobike_vici.daemon.status import format_status
from mobike_vici.types import Endpoint, Path

from .fakes import SPI, FakeEngine, RecordingLog, free_port

V4 = ((socket.AF_INET, "0.0.0.0"),)
EMPTY = Config()
TIMEOUT = 5.0

CONFIG = Config(connections=(
    ConnectionConfig(name="home", children=(
        ChildConfig(name="net", start_action=StartAction.START),
        ChildConfig(name="idle"),
    )),
    ConnectionConfig(name="passive", children=(ChildConfig(name="other"),)),
))


class Peer:
    """The far end: a plain UDP socket on 127.0.0.1."""

    def __init__(self, family: socket.AddressFamily = socket.AF_INET, addr: str = "127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((addr, 0))
        host, port = self.sock.getsockname()[:2]
        self.endpoint = Endpoint.parse(host, port)

    def send(self, data: bytes, addr: str, port: int) -> None:
        self.sock.sendto(data, (addr, port))

    async def recv(self) -> tuple[bytes, Endpoint]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), TIMEOUT)
        return data, Endpoint.parse(addr[0], addr[1])

    def close(self) -> None:
        self.sock.close()


class Rig:
    def __init__(self, daemon: Daemon, engine: FakeEngine, log: RecordingLog, peer: Peer):
        self.daemon, self.engine, self.log, self.peer = daemon, engine, log, peer

    async def received(self, count: int) -> list[bytes]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.engine.received) < count:
                self.engine.arrived.clear()
                await self.engine.arrived.wait()
        return [data for data, _, _ in self.engine.received]


Scenario = Callable[[Rig], Awaitable[None]]


def run_rig(
    scenario: Scenario,
    *,
    config: Config = EMPTY,
    bind: tuple[tuple[socket.AddressFamily, str], ...] = V4,
    peer_family: socket.AddressFamily = socket.AF_INET,
    peer_addr: str = "127.0.0.1",
    local_addr: str = "127.0.0.1",
    control_path: str | None = None,
    prepare: Callable[[FakeEngine], None] | None = None,
) -> Rig:
    async def main() -> Rig:
        ike_port, natt_port = free_port(), free_port()
        peer = Peer(peer_family, peer_addr)
        engine = FakeEngine(Endpoint.parse(local_addr, ike_port), peer.endpoint)
        if prepare is not None:
            prepare(engine)
        log = RecordingLog()
        daemon = Daemon(config, engine, log, ike_port=ike_port, natt_port=natt_port,
                        bind=bind, control_path=control_path)
        rig = Rig(daemon, engine, log, peer)
        await daemon.start()
        try:
            await scenario(rig)
        finally:
            await daemon.close()
            peer.close()
        return rig

    return asyncio.run(main())


def test_ike_datagram_reaches_engine_with_its_local_address() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(b"hello", "127.0.0.2", rig.daemon.ike_port)
        assert await rig.received(1) == [b"hello"]
        _, path, _ = rig.engine.received[0]
        # Bound to 0.0.0.0, yet the path says which address the peer talked to.
        assert path == Path(Endpoint.parse("127.0.0.2", rig.daemon.ike_port), rig.peer.endpoint)

    run_rig(scenario)


def test_reply_leaves_from_the_local_address_of_the_path() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(b"PING1", "127.0.0.3", rig.daemon.ike_port)
        data, source = await rig.peer.recv()
        assert data == b"PONG1"  # no marker on the IKE port
        assert source == Endpoint.parse("127.0.0.3", rig.daemon.ike_port)

    run_rig(scenario)


def test_natt_marker_stripped_on_receive_and_added_on_send() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(NON_ESP_MARKER + b"PING2", "127.0.0.2", rig.daemon.natt_port)
        assert await rig.received(1) == [b"PING2"]
        _, path, _ = rig.engine.received[0]
        assert path.local == Endpoint.parse("127.0.0.2", rig.daemon.natt_port)
        data, source = await rig.peer.recv()
        assert data == NON_ESP_MARKER + b"PONG2"
        assert source == Endpoint.parse("127.0.0.2", rig.daemon.natt_port)

    run_rig(scenario)


def test_keepalive_is_sent_without_marker() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(NON_ESP_MARKER + b"KA", "127.0.0.1", rig.daemon.natt_port)
        data, _ = await rig.peer.recv()
        assert data == KEEPALIVE

    run_rig(scenario)


def test_keepalives_ignored_esp_counted_and_logged_once() -> None:
    async def scenario(rig: Rig) -> None:
        port = rig.daemon.natt_port
        rig.peer.send(KEEPALIVE, "127.0.0.1", port)
        for spi in (1, 2, 3):
            rig.peer.send(spi.to_bytes(4, "big") + b"\x00" * 12, "127.0.0.1", port)
        rig.peer.send(NON_ESP_MARKER + b"sync", "127.0.0.1", port)
        # Loopback keeps order: once "sync" is in, everything before it was handled.
        assert await rig.received(1) == [b"sync"]
        assert rig.daemon.esp_dropped == 3
        drops = rig.log.named("packet_dropped")
        assert [d["reason"] for d in drops] == ["esp_not_supported"]

    run_rig(scenario)


def test_esp_goes_to_the_handler_when_there_is_one() -> None:
    got: list[tuple[bytes, Path]] = []

    async def scenario(rig: Rig) -> None:
        rig.daemon.esp_handler = lambda data, path, now: got.append((data, path))
        esp = b"\x00\x00\x10\x01" + b"payload"
        rig.peer.send(esp, "127.0.0.1", rig.daemon.natt_port)
        rig.peer.send(NON_ESP_MARKER + b"sync", "127.0.0.1", rig.daemon.natt_port)
        await rig.received(1)
        assert got == [(esp, Path(Endpoint.parse("127.0.0.1", rig.daemon.natt_port),
                                  rig.peer.endpoint))]
        assert rig.daemon.esp_dropped == 0

    run_rig(scenario)


def test_engine_exception_is_logged_and_daemon_keeps_running() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(b"boom", "127.0.0.1", rig.daemon.ike_port)
        rig.peer.send(b"PING3", "127.0.0.1", rig.daemon.ike_port)
        data, _ = await rig.peer.recv()
        assert data == b"PONG3"
        [drop] = rig.log.named("packet_dropped")
        assert drop["reason"] == "internal_error"
        assert drop["error"] == "ValueError"
        assert "malformed" not in rig.log.stream.getvalue()  # type only, not the text

    run_rig(scenario)


def test_start_action_start_children_are_initiated() -> None:
    async def scenario(rig: Rig) -> None:
        data, source = await rig.peer.recv()
        assert data == b"INIT home"
        assert source.port == rig.daemon.ike_port
        assert [(c, ch) for c, ch, _ in rig.engine.initiated] == [("home", "net")]

    run_rig(scenario, config=CONFIG)


def test_timer_fires_and_events_are_logged() -> None:
    armed: list[float] = []

    def prepare(engine: FakeEngine) -> None:
        engine.timer = asyncio.get_running_loop().time() + 0.01
        armed.append(engine.timer)

    async def scenario(rig: Rig) -> None:
        failed = await rig.log.wait_for("exchange_failed")
        assert failed["reason"] == "retransmits_exceeded"
        assert failed["conn"] == "home"
        [fired_at] = rig.engine.timer_calls
        assert rig.engine.timer is None
        assert fired_at >= armed[0]  # the engine's deadline, on the engine's clock
        assert rig.daemon.next_deadline is None  # engine said no more timer

    run_rig(scenario, prepare=prepare)


def test_timer_handler_failure_backs_off() -> None:
    def prepare(engine: FakeEngine) -> None:
        engine.timer = asyncio.get_running_loop().time()  # due at once
        engine.timer_raises = True

    async def scenario(rig: Rig) -> None:
        error = await rig.log.wait_for("engine_error")
        assert error == {"call": "handle_timer", "error": "RuntimeError"}
        [called_at] = rig.engine.timer_calls
        deadline = rig.daemon.next_deadline
        # The engine still reports an overdue timer; the daemon does not spin on it.
        assert deadline is not None and deadline >= called_at + ENGINE_ERROR_BACKOFF

    run_rig(scenario, prepare=prepare)


def test_control_status_round_trip(tmp_path: FsPath) -> None:
    ctl = str(tmp_path / "ctl")

    async def scenario(rig: Rig) -> None:
        rig.engine.add_sa()
        answer = await asyncio.to_thread(request, ctl, "status")
        assert answer["ok"] is True
        assert answer["backend"] == "native"
        assert answer["pid"] == os.getpid()
        sas = answer["ike_sas"]
        assert isinstance(sas, list)
        [sa] = sas
        assert sa["ike_spi"] == SPI
        assert sa["state"] == "ESTABLISHED"
        assert sa["local"] == f"127.0.0.1[{rig.daemon.ike_port}]"
        assert sa["remote"] == str(rig.peer.endpoint)
        [child] = sa["children"]
        assert (child["spi_in"], child["spi_out"]) == ("00c1a2b3", "deadbeef")
        assert child["remote_ts"] == ["10.2.0.0/16"]
        text = format_status(answer)
        assert "home: ESTABLISHED, initiator" in text
        assert f"127.0.0.1[{rig.daemon.ike_port}] - {rig.peer.endpoint}" in text
        assert "00c1a2b3_i deadbeef_o" in text
        assert "remote 10.2.0.0/16" in text
        unknown = await asyncio.to_thread(request, ctl, "frobnicate")
        assert unknown["ok"] is False

    run_rig(scenario, control_path=ctl)
    assert not os.path.exists(ctl)


Stop = Callable[[Daemon, Peer, asyncio.Task[int]], Awaitable[int]]


async def stopped_with_one_sa(grace: float, stop: Stop) -> tuple[int, FakeEngine, RecordingLog]:
    """A daemon holding one IKE_SA with ``Peer()`` at its other end, ended by ``stop``
    (which returns the daemon's exit code)."""
    peer = Peer()
    ike_port, natt_port = free_port(), free_port()
    engine = FakeEngine(Endpoint.parse("127.0.0.1", ike_port), peer.endpoint)
    engine.add_sa()
    log = RecordingLog()
    daemon = Daemon(Config(), engine, log, ike_port=ike_port, natt_port=natt_port,
                    bind=V4, shutdown_grace=grace)
    running = asyncio.create_task(daemon.run())
    try:
        await log.wait_for("daemon_started")
        code = await stop(daemon, peer, running)
    finally:
        peer.close()
    return code, engine, log


def test_sigterm_deletes_sas_and_waits_for_the_answer() -> None:
    async def stop(daemon: Daemon, peer: Peer, running: asyncio.Task[int]) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        data, source = await peer.recv()
        assert data == b"DELETE " + SPI.encode()
        peer.send(b"DELETE-ACK", str(source.addr), source.port)
        return await asyncio.wait_for(running, TIMEOUT)

    code, engine, log = asyncio.run(stopped_with_one_sa(TIMEOUT, stop))
    assert code == 0
    assert engine.deleted == [SPI]
    assert log.named("ike_sa_deleted")[0]["ike_spi"] == SPI
    assert not log.named("shutdown_incomplete")
    assert log.named("daemon_stopped")


def test_silent_peer_shutdown_gives_up_after_grace() -> None:
    async def stop(daemon: Daemon, peer: Peer, running: asyncio.Task[int]) -> int:
        daemon.request_stop()
        return await asyncio.wait_for(running, TIMEOUT)

    code, _, log = asyncio.run(stopped_with_one_sa(0.05, stop))
    assert code == 0
    assert log.named("shutdown_incomplete") == [{"ike_sas": [SPI]}]


def test_sighup_reloads_the_policy_and_rejects_a_bad_file() -> None:
    from mobike_vici.config import load_string
    from mobike_vici.config.errors import ConfigError

    files = iter([load_string("mobike { hold_down = 4s }\n", "a.conf"),
                  ConfigError("a.conf", 3, "mobike: hold_down: 'soon' is not a time")])
    reopened: list[int] = []

    def reload_config() -> Config:
        item = next(files)
        if isinstance(item, ConfigError):
            raise item
        return item

    async def main() -> tuple[RecordingLog, Daemon]:
        ike_port, natt_port = free_port(), free_port()
        engine = FakeEngine(Endpoint.parse("127.0.0.1", ike_port), Endpoint.parse("127.0.0.1", 9))
        log = RecordingLog()
        daemon = Daemon(Config(), engine, log, ike_port=ike_port, natt_port=natt_port, bind=V4)
        daemon.reload_config = reload_config
        daemon.reopen_events = lambda: reopened.append(1)
        running = asyncio.create_task(daemon.run())
        await log.wait_for("daemon_started")
        os.kill(os.getpid(), signal.SIGHUP)
        await log.wait_for("config_reloaded")
        os.kill(os.getpid(), signal.SIGHUP)
        await log.wait_for("config_rejected")
        assert not running.done()
        daemon.request_stop()
        assert await asyncio.wait_for(running, TIMEOUT) == 0
        return log, daemon

    log, daemon = asyncio.run(main())
    assert log.named("config_reloaded")[0]["policy_changed"] is True
    assert daemon.config.mobike.policy.hold_down == 4.0  # the bad file changed nothing
    assert log.named("config_rejected")[0]["error"].startswith("a.conf:3: ")
    assert reopened == [1, 1]


def test_sighup_without_a_file_is_logged_not_fatal() -> None:
    async def main() -> RecordingLog:
        ike_port, natt_port = free_port(), free_port()
        engine = FakeEngine(Endpoint.parse("127.0.0.1", ike_port), Endpoint.parse("127.0.0.1", 9))
        log = RecordingLog()
        daemon = Daemon(Config(), engine, log, ike_port=ike_port, natt_port=natt_port, bind=V4)
        running = asyncio.create_task(daemon.run())
        await log.wait_for("daemon_started")
        os.kill(os.getpid(), signal.SIGHUP)
        await log.wait_for("reload_skipped")
        assert not running.done()
        daemon.request_stop()
        assert await asyncio.wait_for(running, TIMEOUT) == 0
        return log

    log = asyncio.run(main())
    assert log.named("reload_skipped")[0]["reason"] == "no config file to re-read"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_receive_and_reply() -> None:
    async def scenario(rig: Rig) -> None:
        rig.peer.send(b"PING6", "::1", rig.daemon.ike_port)
        data, source = await rig.peer.recv()
        assert data == b"PONG6"
        assert source == Endpoint.parse("::1", rig.daemon.ike_port)
        _, path, _ = rig.engine.received[0]
        assert path.local == Endpoint.parse("::1", rig.daemon.ike_port)

    run_rig(scenario, bind=((socket.AF_INET6, "::"),), peer_family=socket.AF_INET6,
            peer_addr="::1", local_addr="::1")


def test_both_families_bound_by_default_shape() -> None:
    async def scenario(rig: Rig) -> None:
        ports = sorted(s.getsockname()[:2] for s in rig.daemon._sockets.values())
        assert ports == sorted([("0.0.0.0", rig.daemon.ike_port),
                                ("0.0.0.0", rig.daemon.natt_port),
                                ("::", rig.daemon.ike_port), ("::", rig.daemon.natt_port)])

    if not _ipv6_loopback():
        pytest.skip("no IPv6 on this host")
    run_rig(scenario, bind=((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")))


def test_second_stop_request_ends_the_wait_for_peers() -> None:
    async def stop(daemon: Daemon, peer: Peer, running: asyncio.Task[int]) -> int:
        daemon.request_stop()
        await peer.recv()  # the DELETE went out: the daemon is waiting for the answer
        daemon.request_stop()
        return await asyncio.wait_for(running, TIMEOUT)

    # A grace far beyond the test's timeout: only the second request can end it.
    code, _, log = asyncio.run(stopped_with_one_sa(1000.0, stop))
    assert code == 0
    assert log.named("shutdown_incomplete") == [{"ike_sas": [SPI]}]


def test_metrics_port_in_use_fails_start_and_leaves_nothing(tmp_path: FsPath) -> None:
    from mobike_vici.daemon.metrics import MetricsServer

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    ctl = str(tmp_path / "ctl")

    async def main() -> None:
        ike_port, natt_port = free_port(), free_port()
        engine = FakeEngine(Endpoint.parse("127.0.0.1", ike_port), Endpoint.parse("127.0.0.1", 9))
        daemon = Daemon(Config(), engine, RecordingLog(), ike_port=ike_port,
                        natt_port=natt_port, bind=V4, control_path=ctl,
                        metrics=MetricsServer(("127.0.0.1", taken)))
        with pytest.raises(OSError):
            await daemon.start()

    try:
        asyncio.run(main())
    finally:
        blocker.close()
    assert not os.path.exists(ctl)


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="NOT RUN, missing prerequisite: root (the test setuids to nobody)")
def test_control_refusal_is_an_event_on_the_stream() -> None:
    import json as _json
    import tempfile

    from .test_control import NOBODY, _ask_as, _open_to_all

    with tempfile.TemporaryDirectory(prefix="mvctl-") as tmp:
        ctl = os.path.join(tmp, "ctl")
        seen: dict[str, object] = {}

        async def scenario(rig: Rig) -> None:
            _open_to_all(FsPath(tmp), ctl)
            answer, pid = await asyncio.to_thread(_ask_as, NOBODY, ctl)
            seen.update(answer=answer, pid=pid)

        rig = run_rig(scenario, control_path=ctl)
    assert isinstance(seen["answer"], dict) and seen["answer"]["ok"] is False
    assert rig.log.named("control_refused") == [{"uid": NOBODY, "pid": seen["pid"]}]
    line = next(_json.loads(x) for x in rig.log.stream.getvalue().splitlines()
                if '"control_refused"' in x)
    assert line["level"] == "warning"


def test_unauthenticated_drops_are_counted_not_logged_one_by_one() -> None:
    async def scenario(rig: Rig) -> None:
        rig.daemon.drops = DropLog(interval=0.3)
        for batch in range(6):  # in batches: loopback's socket buffer holds only so many
            for i in range(50):
                rig.peer.send(b"GARBAGE%d" % i, "127.0.0.1", rig.daemon.ike_port)
            await rig.received(50 * (batch + 1))
        for _ in range(3):
            rig.peer.send(b"STALE", "127.0.0.1", rig.daemon.ike_port)
        await rig.received(303)
        async with asyncio.timeout(TIMEOUT):
            while sum(int(str(d["count"])) for d in rig.log.named("packet_dropped")
                      if d["reason"] == "unknown SPI") < 300:
                await asyncio.sleep(0.05)
        drops = rig.log.named("packet_dropped")
        garbage = [d for d in drops if d["reason"] == "unknown SPI"]
        # The first one at once, the rest summed per interval (the sends take well
        # under a second on loopback, so a handful of lines at most).
        assert garbage[0]["count"] == 1
        assert 2 <= len(garbage) <= 5
        assert all(d["interval"] == 0.3 for d in garbage[1:])
        assert garbage[1]["remote"] == str(rig.peer.endpoint)
        # Authenticated drops are logged one by one.
        stale = [d for d in drops if d["reason"] == "message ID outside the window"]
        assert len(stale) == 3 and all("count" not in d for d in stale)

    run_rig(scenario)


class _HandoverMobility:
    """Path managers that decide one handover: an update for the engine, and its story."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.calls, self.decided = engine, 0, False

    def pump(self, now: float) -> list[tuple[str, dict[str, object]]]:
        if self.decided:
            return []
        self.decided, self.calls = True, self.calls + 1
        self.engine.outbox.append(Datagram(b"UPDATE", Path(self.engine.local,
                                                           self.engine.peer)))
        return [("path_selected", {"reason": "failover"}),
                ("handover_started", {"reason": "failover"})]

    def get_timer(self) -> float | None:
        return None


def test_a_handover_s_update_leaves_before_its_events_are_written() -> None:
    # Seven event lines (JSON, a write each) came between the decision and the update:
    # under load each costs, and the tunnel is down until the update is answered.
    order: list[str] = []

    async def scenario(rig: Rig) -> None:
        sent = rig.engine.datagrams_to_send

        def recorded(now: float) -> list[Datagram]:
            out = sent(now)
            order.extend(d.data.decode() for d in out)
            return out

        rig.engine.datagrams_to_send = recorded  # type: ignore[method-assign]
        written = rig.log.write

        def write(level: str, name: str, fields: Mapping[str, object]) -> None:
            order.append(name)
            written(level, name, fields)

        rig.log.write = write  # type: ignore[method-assign]
        rig.daemon.mobility = _HandoverMobility(rig.engine)  # type: ignore[assignment]
        rig.daemon.after_engine()
        data, _ = await rig.peer.recv()
        assert data == b"UPDATE"
        assert order == ["UPDATE", "path_selected", "handover_started"]

    run_rig(scenario)
