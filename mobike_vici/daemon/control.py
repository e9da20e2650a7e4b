"""The control socket: a unix stream socket, one JSON request per line, one JSON answer per line.

The server side is asyncio and knows nothing of the backend: it hands each request
to a handler. The client side is a plain blocking socket for ``mobike-vici status``.
Requests look like ``{"cmd": "status"}``; answers carry ``"ok": true`` or
``"ok": false`` with ``"error"``. One request streams: ``{"cmd": "events", "follow":
bool, "event": [names]}`` answers ``{"ok": true}`` and then one event per line (the
recent ones, then, with ``follow``, every new one until the client closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator

from .feed import EventFeed

JsonObject = dict[str, object]
Handler = Callable[[JsonObject], JsonObject]

MAX_REQUEST = 64 * 1024
"""Bound on one request line; a longer line closes the connection."""

DEFAULT_PATH = "/run/mobike-vici.ctl"
SOCKET_NAME = "mobike-vici.ctl"


class ControlError(Exception):
    """The control socket could not be used; the message is for the operator."""


def default_path(environ: dict[str, str] | None = None) -> str:
    """``$RUNTIME_DIRECTORY/mobike-vici.ctl`` under systemd, else /run/mobike-vici.ctl."""
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "")
    if runtime:
        # systemd separates several runtime directories with ':'; the first is ours.
        return os.path.join(runtime.split(":")[0], SOCKET_NAME)
    return DEFAULT_PATH


def _answer(handler: Handler, line: bytes) -> JsonObject:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": 'request must be an object with a "cmd" string'}
    try:
        return handler(request)
    except Exception as exc:  # the daemon outlives a broken command
        return {"ok": False, "error": f"internal error: {type(exc).__name__}"}


def _remove_stale(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
    raise ControlError(f"{path} is in use by a running daemon")


class ControlServer:
    """Serves ``handler`` on a unix socket at ``path`` (mode 0600)."""

    def __init__(self, path: str, handler: Handler, feed: EventFeed | None = None) -> None:
        self.path = path
        self._handler = handler
        self.feed = feed
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Status shows SPIs and peers: owner only.
            os.chmod(self.path, 0o600)
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=MAX_REQUEST
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    break  # over MAX_REQUEST
                if not line:
                    break
                if not line.strip():
                    continue
                events = _events_request(line)
                if events is not None:
                    await self._stream_events(events, reader, writer)
                    break
                answer = _answer(self._handler, line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


    async def _stream_events(self, req: JsonObject, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Answer an ``events`` request: recent events, then new ones with ``follow``."""
        feed = self.feed
        raw = req.get("event")
        names = [n for n in raw if isinstance(n, str)] if isinstance(raw, list) else []
        follow = req.get("follow") is True
        if feed is None:
            writer.write(_line({"ok": False, "error": "this daemon has no event feed"}))
            return
        follower = feed.follow(names) if follow else None
        if follow and follower is None:
            writer.write(_line({"ok": False, "error": "too many followers"}))
            return
        try:
            writer.write(_line({"ok": True, "follow": follow}))
            for event in feed.recent(names):
                writer.write(_line(event))
            await writer.drain()
            if follower is None:
                return
            gone = asyncio.ensure_future(reader.read())  # EOF: the client left
            try:
                while True:
                    got = asyncio.ensure_future(follower.queue.get())
                    done, _ = await asyncio.wait({got, gone},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if got not in done:
                        got.cancel()
                        return
                    new = got.result()
                    if new is None:
                        writer.write(_line({"event": "events_lost",
                                            "reason": "reader too slow"}))
                        return
                    writer.write(_line(new))
                    await writer.drain()
            finally:
                gone.cancel()
        finally:
            if follower is not None:
                feed.unfollow(follower)


def _line(obj: JsonObject) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _events_request(line: bytes) -> JsonObject | None:
    """The request if it is an ``events`` request, else None (``_answer`` handles it)."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(req, dict) and req.get("cmd") == "events":
        return req
    return None


def follow_events(path: str, names: list[str], follow: bool,
                  timeout: float = 5.0) -> Iterator[JsonObject]:
    """Events from the daemon at ``path`` as they come (see the module docstring)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(
                f"cannot connect to control socket {path}: {exc.strerror or exc}"
                " (is the daemon running?)"
            ) from exc
        req = {"cmd": "events", "follow": follow, "event": names}
        first = True
        try:
            sock.sendall(_line(req))
            sock.settimeout(None if follow else timeout)
            with sock.makefile("rb") as stream:
                for raw in stream:
                    try:
                        obj = json.loads(raw)
                    except ValueError as exc:
                        raise ControlError(f"control socket {path}: answer is not JSON") from exc
                    if not isinstance(obj, dict):
                        continue
                    if first:
                        first = False
                        if obj.get("ok") is not True:
                            raise ControlError(str(obj.get("error", "events refused")))
                        continue
                    yield obj
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from exc
    if first:
        raise ControlError(f"control socket {path}: the daemon closed without answering")


def request(path: str, cmd: str, timeout: float = 5.0,
            args: JsonObject | None = None) -> JsonObject:
    """Ask the daemon at ``path`` one command; raise ControlError when it cannot answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(
                f"cannot connect to control socket {path}: {exc.strerror or exc}"
                " (is the daemon running?)"
            ) from exc
        try:
            sock.sendall(json.dumps({**(args or {}), "cmd": cmd}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from exc
    if not buf.strip():
        raise ControlError(f"control socket {path}: the daemon closed without answering")
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        raise ControlError(f"control socket {path}: answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise ControlError(f"control socket {path}: answer is not a JSON object")
    return answer
