"""The control socket: a unix stream socket, one JSON request per line, one JSON answer per line.

The server side is asyncio and knows nothing of the backend: it hands each request
to a handler. The client side is a plain blocking socket for ``mobike-vici status``.
Requests look like ``{"cmd": "status"}``; answers carry ``"ok": true`` or
``"ok": false`` with ``"error"``. One request streams: ``{"cmd": "events", "follow":
bool, "event": [names]}`` answers ``{"ok": true}`` and then one event per line (the
recent ones, then, with ``follow``, every new one until the client closes).

Status shows SPIs and peers, so the socket is the owner's alone, twice over: the
file appears at its path already mode 0600 (bound under umask 0177: there is no
moment with the operator's umask's mode),
and every connection's peer credentials (SO_PEERCRED) are checked: only the
daemon's own uid and root may talk to it. Root is let in because it can open the
file whatever its mode anyway; refusing it would only make the check look stronger
than it is. Anyone else gets one ``"ok": false`` answer and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator, Mapping

from .feed import EventFeed

JsonObject = dict[str, object]
Handler = Callable[[JsonObject], JsonObject]
RefusedHook = Callable[[int, int], None]
"""Told ``(uid, pid)`` of each refused peer (the daemon logs ``control_refused``)."""

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

MAX_REQUEST = 64 * 1024
"""Bound on one request line; a longer line closes the connection."""

REFUSE_READ_TIMEOUT = 2.0
"""Seconds a refused peer has to send its request before it gets the refusal anyway."""

DEFAULT_DIR = "/run/mobike-vici"
"""The units' ``RuntimeDirectory=mobike-vici``: the one place daemon and client agree on."""
SOCKET_NAME = "mobike-vici.ctl"
DEFAULT_PATH = os.path.join(DEFAULT_DIR, SOCKET_NAME)


class ControlError(Exception):
    """The control socket could not be used; the message is for the operator."""


def default_path(environ: Mapping[str, str] | None = None) -> str:
    """Where the daemon binds: ``$RUNTIME_DIRECTORY/mobike-vici.ctl`` under systemd
    (``/run/mobike-vici/`` with the shipped units), else ``DEFAULT_PATH``."""
    env = os.environ if environ is None else environ
    runtime = env.get("RUNTIME_DIRECTORY", "")
    if runtime:
        # systemd separates several runtime directories with ':'; the first is ours.
        return os.path.join(runtime.split(":")[0], SOCKET_NAME)
    return DEFAULT_PATH


def client_path() -> str:
    """Where ``status``, ``events``, ``prefer`` and ``move`` look: ``DEFAULT_PATH``.

    Not ``$RUNTIME_DIRECTORY``: in an operator's shell it is unset, and in another
    unit it names that unit's directory, not the daemon's."""
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


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """``(uid, pid)`` of the process at the other end, as the kernel saw it at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return uid, pid



def allowed_uid(uid: int, owner: int) -> bool:
    """The daemon's own uid, or root (see the module docstring for why root)."""
    return uid in (owner, 0)


def bind_private(path: str) -> socket.socket:
    """A unix socket bound at ``path`` that is mode 0600 from the moment the path exists.

    bind() creates the file with 0777 less the umask, so it is bound under umask 0177.
    The umask is the process's: another thread creating a file in that instant gets
    fewer permission bits, never more. (Binding in a private directory and renaming
    would need a longer path, and unix socket paths are short: 107 bytes.)
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # whatever the file system made of the mode bits
    except BaseException:
        sock.close()
        raise
    return sock


class ControlServer:
    """Serves ``handler`` on a unix socket at ``path`` (mode 0600, owner and root only)."""

    def __init__(self, path: str, handler: Handler, feed: EventFeed | None = None, *,
                 on_refused: RefusedHook | None = None) -> None:
        self.path = path
        self._handler = handler
        self.feed = feed
        self._on_refused = on_refused
        self.owner = os.geteuid()
        """The uid allowed in besides root: the daemon's own."""
        self.refused = 0
        """Connections refused for their peer's uid (for status and tests)."""
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path == DEFAULT_PATH:
            # Started by hand (no systemd to make it): the units' RuntimeDirectory.
            with contextlib.suppress(OSError):  # bind() below says what is wrong
                os.makedirs(DEFAULT_DIR, mode=0o750, exist_ok=True)
        _remove_stale(self.path)
        try:
            sock = bind_private(self.path)
        except OSError as exc:
            raise ControlError(
                f"cannot create control socket {self.path}: {exc.strerror or exc}") from exc
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

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        try:
            uid, pid = peer_credentials(sock)
        except (OSError, AttributeError, struct.error):
            uid, pid = -1, 0  # no credentials: nobody we know
        if allowed_uid(uid, self.owner):
            return True
        self.refused += 1
        if self._on_refused is not None:
            with contextlib.suppress(Exception):
                self._on_refused(uid, pid)
        return False

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read the request first (bounded in size and time): closing on unread data
        # would reset the connection and the client would never see why.
        with contextlib.suppress(ValueError, asyncio.LimitOverrunError, ConnectionError,
                                 TimeoutError):
            await asyncio.wait_for(reader.readline(), REFUSE_READ_TIMEOUT)
        sock = writer.get_extra_info("socket")
        uid = -1
        with contextlib.suppress(OSError, AttributeError, struct.error):
            uid = peer_credentials(sock)[0]
        answer = {"ok": False, "error": f"permission denied: uid {uid} is not the daemon's "
                  f"owner (uid {self.owner}) or root"}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not self._admit(writer):
                await self._refuse(reader, writer)
                return
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


def _connect(path: str, timeout: float) -> socket.socket:
    """A connected client socket, or ControlError that says the daemon may be down."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ControlError(
            f"cannot connect to control socket {path}: {exc.strerror or exc}"
            " (is the daemon running?)"
        ) from exc
    return sock


def follow_events(path: str, names: list[str], follow: bool,
                  timeout: float = 5.0) -> Iterator[JsonObject]:
    """Events from the daemon at ``path`` as they come (see the module docstring)."""
    with _connect(path, timeout) as sock:
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
    with _connect(path, timeout) as sock:
        try:
            sock.sendall(json.dumps({**(args or {}), "cmd": cmd}).encode() + b"\n")
            buf = bytearray()  # grows in place: a 10,000-SA status is megabytes
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
