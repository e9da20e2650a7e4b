"""The asyncio VICI client against a fake charon socket: resync, events, loss, reconnect."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mobike_vici.backends.vici import (
    Backoff,
    ChildAdded,
    ChildRemoved,
    CommandFailed,
    PathChecked,
    SaAdded,
    SaRemoved,
    SaUpdated,
    ViciClient,
    ViciConnected,
    ViciDisconnected,
    ViciEvent,
    ViciUnavailable,
)

from .fake_charon import FakeCharon

RECORD: list[list[Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "charon_events.json").read_text())
FIRST_SAS = RECORD[2][1]  # list-sas while established on uplink 10.1.0.2
LATER_SAS = RECORD[7][1]  # list-sas after rekeys and the move to 10.2.0.2
E = TypeVar("E", bound=ViciEvent)
FAST = Backoff(initial=0.01, maximum=0.05)


def _spi(entries: list[dict[str, Any]]) -> str:
    (sa,) = entries[0].values()
    return f"{sa['initiator-spi']}_{sa['responder-spi']}"


async def _next(client: ViciClient, kind: type[E]) -> E:
    while True:
        event = await asyncio.wait_for(client.events.get(), 5)
        if isinstance(event, kind):
            return event


def _run(tmp_path: Path, body: Callable[[FakeCharon], Awaitable[None]]) -> None:
    async def main() -> None:
        charon = FakeCharon(tmp_path / "charon.vici")
        await charon.start()
        try:
            await asyncio.wait_for(body(charon), 20)
        finally:
            await charon.stop()

    asyncio.run(main())


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = Backoff(0.1, 5.0).delays()
    got = [next(delays) for _ in range(9)]
    assert got[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert got[6:] == [5.0, 5.0, 5.0]


def test_connect_resyncs_into_the_table(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        charon.sas = FIRST_SAS
        charon.conns = [{"home": {"local_addrs": ["%any"]}}]
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        connected = await _next(client, ViciConnected)
        assert connected.daemon == "charon 5.9.8"
        added = await _next(client, SaAdded)
        assert added.ike_spi == _spi(FIRST_SAS)
        await _next(client, ChildAdded)
        await client.wait_connected(5)
        assert client.connected and "home" in client.conns
        assert [c for c, _ in charon.commands] == ["version", "list-conns", "list-sas"]
        await client.close()
        await task

    _run(tmp_path, body)


def test_events_update_the_table_and_come_out_typed(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)
        for name in ("ike-updown", "ike-rekey", "ike-update", "child-updown", "child-rekey"):
            assert charon.listening(name)
        for name, msg in RECORD[:2]:
            await charon.push(name, msg)
        added = await _next(client, SaAdded)
        await _next(client, ChildAdded)
        for name, msg in RECORD[3:6]:  # child rekey, IKE rekey, MOBIKE move
            await charon.push(name, msg)
        updated = await _next(client, SaUpdated)
        assert updated.moved and str(updated.new.path.local.addr) == "10.2.0.2"
        assert added.ike_spi not in client.table  # rekeyed away
        assert client.table.get(updated.ike_spi) is not None
        await client.close()
        await task

    _run(tmp_path, body)


def test_charons_mobike_path_checks_come_out_and_the_rest_of_its_log_does_not(
        tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)
        assert charon.listening("log")
        base = {"group": "IKE", "level": "1", "thread": "16", "ikesa-name": "home",
                "ikesa-uniqueid": "1"}
        await charon.push("log", {**base, "msg": "sending packet: from 10.1.0.2[4500] to "
                                  "192.0.2.2[4500] (80 bytes)"})
        await charon.push("log", {**base, "msg": "checking path 2001:db8:1::2[4500] - "
                                  "2001:db8:ff::2[4500]"})
        checked = await _next(client, PathChecked)
        assert str(checked.path.remote.addr) == "2001:db8:ff::2"
        assert client.events.empty()  # the other line never became an event
        await client.close()
        await task

    _run(tmp_path, body)


def test_charon_restart_keeps_the_table_then_reconciles(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        charon.sas = FIRST_SAS
        hooked: list[int] = []

        async def on_connect(c: ViciClient) -> None:
            hooked.append(len(charon.commands))
            await c.call("load-conn", {"home": {"version": "2"}})

        client = ViciClient(charon.uri, backoff=FAST, on_connect=on_connect)
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)
        old_spi = _spi(FIRST_SAS)
        assert old_spi in client.table

        await charon.stop()
        gone = await _next(client, ViciDisconnected)
        assert gone.uri == charon.uri
        assert old_spi in client.table  # a dead charon does not empty the table
        with pytest.raises(ViciUnavailable):
            await client.call("version")
        attempts = charon.connections

        charon.sas = LATER_SAS
        await charon.start()
        await _next(client, ViciConnected)
        removed = await _next(client, SaRemoved)
        added = await _next(client, SaAdded)
        assert removed.ike_spi == old_spi and removed.reason == "resync"
        assert added.ike_spi == _spi(LATER_SAS)
        await client.wait_connected(5)
        assert [sa.ike_spi for sa in client.table.sas()] == [_spi(LATER_SAS)]
        assert charon.connections > attempts
        # The hook ran on both connects, before each resync's list-sas.
        assert len(hooked) == 2
        loads = [i for i, (c, _) in enumerate(charon.commands) if c == "load-conn"]
        lists = [i for i, (c, _) in enumerate(charon.commands) if c == "list-sas"]
        assert loads[0] < lists[0] and loads[1] < lists[1]
        await client.close()
        await task

    _run(tmp_path, body)


def test_events_during_resync_are_applied_after_the_snapshot(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        charon.sas = FIRST_SAS  # the snapshot still shows the SA...
        down = RECORD[8][1]
        down_first = json.loads(json.dumps(down).replace(
            _spi(LATER_SAS).split("_")[0], FIRST_SAS[0]["home"]["initiator-spi"]).replace(
            _spi(LATER_SAS).split("_")[1], FIRST_SAS[0]["home"]["responder-spi"]))
        pushed = asyncio.Event()

        def during(name: str) -> None:
            if name == "list-sas" and not pushed.is_set():
                pushed.set()
                # ...but charon deletes it while answering: the event is on its way
                # before the (stale) list-sas answer.
                charon.push_now("ike-updown", down_first)

        charon.on_command = during
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        added = await _next(client, SaAdded)
        removed = await _next(client, SaRemoved)
        assert removed.ike_spi == added.ike_spi and removed.reason == "down"
        await client.wait_connected(5)
        assert len(client.table) == 0
        await client.close()
        await task

    _run(tmp_path, body)


def test_refusals_and_missing_charon(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        charon.answers["load-conn"] = {"success": "no", "errmsg": "bad proposal"}
        client = ViciClient(charon.uri, backoff=FAST)
        with pytest.raises(ViciUnavailable):
            await client.call("version")  # not connected yet
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)
        with pytest.raises(CommandFailed, match="bad proposal"):
            await client.call("load-conn", {"x": {}})
        assert client.connected  # a refusal is not a lost session
        assert (await client.call("get-conns")) == {"success": "yes"}
        await client.close()
        await task

    _run(tmp_path, body)


def test_no_charon_at_all_keeps_retrying(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        await charon.stop()
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        with pytest.raises(TimeoutError):
            await client.wait_connected(0.2)
        await charon.start()
        await client.wait_connected(5)
        assert isinstance(await _next(client, ViciConnected), ViciConnected)
        await client.close()
        await task
        assert isinstance(await _next(client, ViciDisconnected), ViciDisconnected)

    _run(tmp_path, body)


def test_removed_children_of_a_vanished_sa_are_reported(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        charon.sas = FIRST_SAS
        client = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)
        await charon.stop()
        await _next(client, ViciDisconnected)
        charon.sas = []
        await charon.start()
        child = await _next(client, ChildRemoved)
        assert child.reason == "ike_removed" and child.ike_spi == _spi(FIRST_SAS)
        await client.close()
        await task

    _run(tmp_path, body)


def test_close_and_cancel_leave_no_reader_threads(tmp_path: Path) -> None:
    async def body(charon: FakeCharon) -> None:
        closed = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(closed.run())
        await closed.wait_connected(5)
        await closed.close()
        await task
        cancelled = ViciClient(charon.uri, backoff=FAST)
        task = asyncio.create_task(cancelled.run())
        await cancelled.wait_connected(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not cancelled.connected

    _run(tmp_path, body)
    for thread in threading.enumerate():
        if thread.name == "vici-events":
            thread.join(2)
    assert not [t for t in threading.enumerate() if t.name == "vici-events" and t.is_alive()]


def _many_sas(count: int) -> list[dict[str, Any]]:
    """``count`` copies of the recorded IKE_SA (one CHILD_SA each), SPIs and ids their own."""
    (template,) = FIRST_SAS[0].values()
    out = []
    for i in range(count):
        sa = json.loads(json.dumps(template))
        sa["uniqueid"] = str(i + 1)
        sa["initiator-spi"] = f"{i + 1:016x}"
        for child in sa["child-sas"].values():
            child["uniqueid"] = str(i + 1)
        out.append({"home": sa})
    return out


def test_a_resync_larger_than_the_queue_waits_for_the_consumer(tmp_path: Path) -> None:
    # A gateway with thousands of SAs: one resync reports more changes than the event
    # queue holds. None may be lost: the controller tracks SAs from those events.
    async def body(charon: FakeCharon) -> None:
        charon.sas = _many_sas(40)  # 40 SaAdded + 40 ChildAdded through a queue of 8
        client = ViciClient(charon.uri, backoff=FAST, queue_size=8)
        task = asyncio.create_task(client.run())
        added: set[str] = set()
        while len(added) < 40:
            event = await asyncio.wait_for(client.events.get(), 5)
            if isinstance(event, SaAdded):
                added.add(event.ike_spi)
        await client.wait_connected(5)
        assert client.dropped_events == 0
        assert len(client.table) == 40
        await client.close()
        await task

    _run(tmp_path, body)


@pytest.mark.slow
def test_a_resync_nobody_reads_completes_and_counts_what_it_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Waiting for a consumer is bounded: once one wait runs out, the rest of the resync
    # drops (counted) instead of waiting again per SA; the table itself is complete.
    from mobike_vici.backends.vici import session

    monkeypatch.setattr(session, "RESYNC_PUT_WAIT", 0.2)

    async def body(charon: FakeCharon) -> None:
        charon.sas = _many_sas(40)
        client = ViciClient(charon.uri, backoff=FAST, queue_size=4)
        task = asyncio.create_task(client.run())
        await client.wait_connected(5)  # 76 waits of 0.2 s would take 15 s
        assert len(client.table) == 40
        # ViciConnected took one place: 3 of the 80 changes fit, the rest were dropped.
        assert client.dropped_events == 77
        await client.close()
        await task

    _run(tmp_path, body)
