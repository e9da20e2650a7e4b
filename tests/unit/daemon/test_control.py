"""The control socket: JSON lines in and out, permissions, stale files, a dead daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from mobike_vici.daemon.control import (
    DEFAULT_PATH,
    ControlError,
    ControlServer,
    JsonObject,
    allowed_uid,
    default_path,
    peer_credentials,
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


def test_socket_path_never_has_the_umask_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With umask 0 a plain bind() makes the file 0777 until chmod: a window in which
    anyone could connect. Whenever the socket's path exists, it must already be 0600."""
    path = str(tmp_path / "ctl")
    seen: list[int] = []
    real_chmod, real_umask = os.chmod, os.umask

    def look() -> None:
        with contextlib.suppress(FileNotFoundError):
            seen.append(stat.S_IMODE(os.lstat(path).st_mode))

    def chmod(target: object, mode: int, *args: object, **kwargs: object) -> None:
        look()  # the moment between bind() and chmod()
        real_chmod(target, mode, *args, **kwargs)  # type: ignore[arg-type]

    def umask(mask: int) -> int:
        look()  # e.g. restoring the umask right after bind()
        return real_umask(mask)

    def work() -> object:
        look()
        mask = real_umask(0)
        real_umask(mask)
        return mask, request(path, "x")

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "umask", umask)
    old_umask = real_umask(0)
    try:
        mask, answer = asyncio.run(with_server(path, work))  # type: ignore[misc]
    finally:
        real_umask(old_umask)
    assert answer == {"ok": True, "echo": "x"}
    assert seen and all(mode == 0o600 for mode in seen), [oct(m) for m in seen]
    assert mask == 0  # the daemon's umask is restored after bind()
    assert [p.name for p in tmp_path.iterdir()] == []  # removed on close, nothing else left


def test_long_socket_path_that_fits_still_works(tmp_path: Path) -> None:
    """A path near the 107-byte limit: nothing may lengthen it on the way (a staging
    directory would)."""
    room = 100 - len(str(tmp_path)) - 1
    path = str(tmp_path / ("c" * room))
    assert len(path) == 100
    assert asyncio.run(with_server(path, lambda: request(path, "x"))) == {"ok": True, "echo": "x"}


def test_socket_in_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "ctl"
    with pytest.raises(ControlError, match="cannot create control socket"):
        asyncio.run(ControlServer(str(missing), echo_handler).start())


NOBODY = 65534


def _ask_as(uid: int, path: str) -> tuple[JsonObject | None, int]:
    """Fork; the child drops to ``uid`` and asks ``path`` for status. Returns the answer
    (None if the connection closed without one) and the child's pid."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only raw calls, then _exit
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(b'{"cmd": "status"}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            os.write(write_fd, buf or b"null\n")
            os._exit(0)
        except BaseException as exc:
            os.write(write_fd, repr(exc).encode())
            os._exit(3)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child could not ask: {out!r}"
    answer = json.loads(out)
    return answer, pid


def _open_to_all(directory: Path, path: str) -> None:
    """Loosen the file modes (as an operator might): the credential check must still hold."""
    os.chmod(directory, 0o755)
    os.chmod(path, 0o666)


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="NOT RUN, missing prerequisite: root (the test setuids to nobody)")
def test_other_uid_is_refused_even_when_the_file_mode_lets_it_in() -> None:
    refused: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(prefix="mvctl-") as tmp:
        path = os.path.join(tmp, "ctl")

        async def main() -> tuple[JsonObject | None, int, int]:
            server = ControlServer(path, echo_handler,
                                   on_refused=lambda uid, pid: refused.append((uid, pid)))
            await server.start()
            try:
                _open_to_all(Path(tmp), path)
                answer, pid = await asyncio.to_thread(_ask_as, NOBODY, path)
                # The owner (root here) still gets in afterwards.
                mine = await asyncio.to_thread(request, path, "status")
                assert mine == {"ok": True, "echo": "status"}
                return answer, pid, server.refused
            finally:
                await server.close()

        answer, pid, count = asyncio.run(main())
    assert answer is not None and answer["ok"] is False
    assert "permission denied" in str(answer["error"]) and f"uid {NOBODY}" in str(answer["error"])
    assert "echo" not in answer  # the handler never ran
    assert count == 1
    assert refused == [(NOBODY, pid)]


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="NOT RUN, missing prerequisite: root (the test setuids to nobody)")
def test_the_owner_uid_is_served_and_root_too() -> None:
    """A daemon running as ``nobody`` serves ``nobody``; root is allowed in as well."""
    with tempfile.TemporaryDirectory(prefix="mvctl-") as tmp:
        path = os.path.join(tmp, "ctl")

        async def main() -> tuple[JsonObject | None, JsonObject, int]:
            server = ControlServer(path, echo_handler)
            await server.start()
            server.owner = NOBODY  # as if the daemon ran as nobody
            try:
                _open_to_all(Path(tmp), path)
                answer, _pid = await asyncio.to_thread(_ask_as, NOBODY, path)
                as_root = await asyncio.to_thread(request, path, "status")
                return answer, as_root, server.refused
            finally:
                await server.close()

        answer, as_root, count = asyncio.run(main())
    assert answer == {"ok": True, "echo": "status"}
    assert as_root == {"ok": True, "echo": "status"}
    assert count == 0


def test_peer_credentials_of_a_socketpair_are_our_own() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left) == (os.geteuid(), os.getpid())
    assert allowed_uid(os.geteuid(), os.geteuid())
    assert allowed_uid(0, 1000)
    assert not allowed_uid(1001, 1000)
