"""``prefer`` and ``move`` from the command line to a control server and back: the
request the daemon sees, its refusals with reasons, and exit codes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobike_vici import cli
from mobike_vici.daemon.control import ControlServer, JsonObject
from mobike_vici.daemon.operator import operator_request
from mobike_vici.types import IPAddress


class FakeSide:
    """Records what the operator asked; refuses moves to 10.9.9.9."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def conn_spis(self, conn: str) -> list[str]:
        return ["a_b"] if conn == "home" else []

    def prefer(self, conn: str, local: IPAddress | None, now: float) -> str | None:
        self.calls.append(("prefer", conn, None if local is None else str(local)))
        return None

    def move(self, conn: str, local: IPAddress, now: float) -> str | None:
        self.calls.append(("move", conn, str(local)))
        return "no_such_path" if str(local) == "10.9.9.9" else None


@pytest.fixture
def side(tmp_path: Path) -> Iterator[tuple[str, FakeSide]]:
    fake = FakeSide()
    path = str(tmp_path / "ctl")
    loop = asyncio.new_event_loop()

    def handler(req: JsonObject) -> JsonObject:
        return operator_request(fake, req, 0.0)

    server = ControlServer(path, handler)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path, fake
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_prefer_move_clear(side: tuple[str, FakeSide], capsys: pytest.CaptureFixture[str]) -> None:
    path, fake = side
    assert cli.main(["prefer", "home", "--local", "10.2.0.2", "--control", path]) == 0
    assert cli.main(["move", "home", "--local", "10.1.0.2", "--control", path]) == 0
    assert cli.main(["prefer", "home", "--clear", "--control", path]) == 0
    assert fake.calls == [("prefer", "home", "10.2.0.2"), ("move", "home", "10.1.0.2"),
                          ("prefer", "home", None)]
    out = capsys.readouterr().out
    assert "home: preferring 10.2.0.2" in out and "home: preference cleared" in out


def test_refusals_say_why(side: tuple[str, FakeSide], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = side
    assert cli.main(["move", "home", "--local", "10.9.9.9", "--control", path]) == 1
    assert "move refused: no candidate path from that local address" in capsys.readouterr().err
    assert cli.main(["move", "home", "--local", "not-an-ip", "--control", path]) == 1
    assert "is not an IP address" in capsys.readouterr().err


def test_prefer_needs_local_or_clear(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["prefer", "home"])
    assert exc.value.code == 2


def test_metrics_argument_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["native", "--config", "x", "--metrics", "9474"])
    assert exc.value.code == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
