"""A fake charon VICI socket for unit tests: answers commands, streams list-sas, pushes events.

Speaks the VICI wire protocol (4-byte length, packet type, names, messages as
the ``vici`` package encodes them) on a Unix socket in a temp directory, so
the asyncio client runs against it without root or strongSwan. ``stop()``
drops every connection, as a dying charon does.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vici.protocol import FiniteStream, Message, Packet


def _named(kind: int, name: str) -> bytes:
    raw = name.encode()
    return struct.pack("!BB", kind, len(raw)) + raw


class FakeCharon:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sas: list[dict[str, Any]] = []  # list-sas stream entries ({conn: sa})
        self.conns: list[dict[str, Any]] = []
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, dict[str, Any]] = {}  # command -> answer (default success)
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._listeners: dict[asyncio.StreamWriter, set[str]] = {}
        self.on_command: Callable[[str], None] | None = None

    @property
    def uri(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        self._listeners.clear()
        self.path.unlink(missing_ok=True)

    async def push(self, name: str, message: dict[str, Any]) -> None:
        """Send event ``name`` to every connection registered for it."""
        for writer in self.push_now(name, message):
            await writer.drain()

    def push_now(self, name: str, message: dict[str, Any]) -> list[asyncio.StreamWriter]:
        """``push`` without waiting: queued ahead of whatever is written next."""
        writers = [w for w, names in self._listeners.items() if name in names]
        for writer in writers:
            self._send(writer, _named(Packet.EVENT, name) + Message.serialize(message))
        return writers

    def listening(self, name: str) -> bool:
        return any(name in names for names in self._listeners.values())

    def _send(self, writer: asyncio.StreamWriter, packet: bytes) -> None:
        writer.write(struct.pack("!I", len(packet)) + packet)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        names = self._listeners.setdefault(writer, set())
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                stream = FiniteStream(await reader.readexactly(length))
                (kind,) = struct.unpack("!B", stream.read(1))
                (nlen,) = struct.unpack("!B", stream.read(1))
                name = stream.read(nlen).decode()
                if kind == Packet.EVENT_REGISTER:
                    names.add(name)
                    self._send(writer, bytes([Packet.EVENT_CONFIRM]))
                elif kind == Packet.EVENT_UNREGISTER:
                    names.discard(name)
                    self._send(writer, bytes([Packet.EVENT_CONFIRM]))
                elif kind == Packet.CMD_REQUEST:
                    message = Message.deserialize(stream) if stream.has_more() else {}
                    self._command(writer, name, message)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._listeners.pop(writer, None)
            writer.close()

    def _command(self, writer: asyncio.StreamWriter, name: str, message: Any) -> None:
        self.commands.append((name, message))
        if self.on_command is not None:
            self.on_command(name)
        if name == "list-sas":
            for entry in self.sas:
                self._send(writer, _named(Packet.EVENT, "list-sa") + Message.serialize(entry))
        if name == "list-conns":
            for entry in self.conns:
                self._send(writer, _named(Packet.EVENT, "list-conn") + Message.serialize(entry))
        answer = self.answers.get(name)
        if answer is None:
            answer = ({"daemon": "charon", "version": "5.9.8"} if name == "version"
                      else {"success": "yes"})
        self._send(writer, bytes([Packet.CMD_RESPONSE]) + Message.serialize(answer))
