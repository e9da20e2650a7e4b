"""The control socket: JSON lines in and out, permissions, stale files, a dead daemon."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from mobike_vici.daemon.control import (
    DEFAULT_PATH,
    ControlError,
    ControlServer,
    JsonObject,
    default_path,
    request,
)


def echo_handler(req: JsonObject) -> JsonObject:
    if req["cmd"] == "boom":
        raise RuntimeError("secret detail")
    return {"ok": True, "echo": req["cmd"]}


async def with_server(path: str, work: object) -> object:
    server = ControlServer(path, echo_handler)
    await server.start()
    try:
        assert callable(work)
        return await asyncio.to_thread(work)
    finally:
        await server.close()


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl")

    def work() -> object:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        return request(path, "status")

    assert asyncio.run(with_server(path, work)) == {"ok": True, "echo": "status"}
    assert not os.path.exists(path)  # removed on close


def test_several_requests_on_one_connection_and_bad_input(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl")

    def work() -> object:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"cmd": "a"}\nnot json\n[1]\n{"cmd": "boom"}\n')
            buf = b""
            while buf.count(b"\n") < 4:
                chunk = sock.recv(4096)
                assert chunk
                buf += chunk
        return [json.loads(line) for line in buf.splitlines()]

    answers = asyncio.run(with_server(path, work))
    assert isinstance(answers, list)
    assert answers[0] == {"ok": True, "echo": "a"}
    assert answers[1]["ok"] is False and "JSON" in answers[1]["error"]
    assert answers[2]["ok"] is False
    assert answers[3] == {"ok": False, "error": "internal error: RuntimeError"}


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    assert asyncio.run(with_server(path, lambda: request(path, "x"))) == {
        "ok": True, "echo": "x"
    }


def test_live_socket_is_not_stolen(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(ControlError, match="in use"):
            asyncio.run(ControlServer(path, echo_handler).start())
    finally:
        live.close()


def test_regular_file_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "ctl"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        asyncio.run(ControlServer(str(path), echo_handler).start())
    assert path.read_text() == "precious"


def test_dead_daemon_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is the daemon running"):
        request(str(tmp_path / "nothing-here"), "status")


def test_default_path() -> None:
    assert default_path({}) == DEFAULT_PATH
    assert default_path({"RUNTIME_DIRECTORY": "/run/mv:/run/other"}) == "/run/mv/mobike-vici.ctl"
