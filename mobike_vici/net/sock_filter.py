"""Attaching a classic BPF program (``esp_bpf.Insn`` list) to a packet socket."""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Any

from .esp_bpf import Insn, pack

SO_ATTACH_FILTER = 26


def attach_filter(sock: socket.socket, program: list[Insn]) -> Any:
    """Attach ``program`` to ``sock`` (replacing any earlier one). Returns the buffer the
    ``struct sock_fprog`` points at: the kernel copies it, but keep it with the socket
    until the call returned and for as long as the filter may be read back."""
    code = pack(program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buf
