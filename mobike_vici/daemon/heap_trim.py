"""Hand glibc's free heap pages back to the kernel now and then (``malloc_trim``).

The daemons' worker threads (the controller's pyroute2 steering calls, the loop's
default executor for netlink dumps, the VICI reader; the native daemon's routing and
TUN route workers) each allocate from a glibc arena of their own. Every netlink dump
or VICI answer parses into short-lived objects larger than pymalloc's 512 bytes, so
these arenas churn; what is freed in the middle of an arena stays resident (glibc
only returns the top of a heap by itself), and the process's RSS crept up by a few
MiB an hour although the Python heap was flat. ``malloc_trim(0)`` releases every
whole free page of every arena (``MADV_DONTNEED``); it takes well under a
millisecond at this size, so one call a minute on the loop costs nothing and keeps
the RSS flat.

Each of those threads would otherwise get an arena of its own, and what one frees
is of no use to another; with the GIL they never allocate at the same time anyway,
so ``share_one_arena`` caps glibc at one arena (``M_ARENA_MAX``) before any thread
starts, unless ``MALLOC_ARENA_MAX`` in the environment says otherwise.

Not glibc (musl, macOS): no ``malloc_trim`` nor ``mallopt``, both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

INTERVAL = 60.0
"""Seconds between trims: the churn between two is a few hundred KiB at most."""

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)

Trim = Callable[[int], int]


def _libc_function(name: str) -> Any:
    """A C library function by name (ctypes), or None."""
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    try:
        return getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError):
        return None


def glibc_trim() -> Trim | None:
    """libc's ``malloc_trim``, or None where the C library has none."""
    fn = _libc_function("malloc_trim")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Trim = fn
    return trim


def share_one_arena() -> bool:
    """Every thread allocates from glibc's main arena (call before threads start).

    False where there is no ``mallopt``, or when ``MALLOC_ARENA_MAX`` is set (the
    operator's choice stands)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    fn = _libc_function("mallopt")
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(M_ARENA_MAX, 1))


class HeapTrim:
    """Calls ``malloc_trim(0)`` every ``interval`` seconds on the running loop."""

    def __init__(self, interval: float = INTERVAL, trim: Trim | None = None) -> None:
        self.interval = interval
        self._trim = trim if trim is not None else glibc_trim()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.trims = 0
        """Calls made (for tests and status: none where there is no ``malloc_trim``)."""

    @property
    def available(self) -> bool:
        return self._trim is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._trim is None:
            return
        self._loop = loop
        self._handle = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def trim_now(self) -> bool:
        """One trim; True when glibc gave memory back."""
        if self._trim is None:
            return False
        self.trims += 1
        return bool(self._trim(0))

    def _tick(self) -> None:
        assert self._loop is not None
        self.trim_now()
        self._handle = self._loop.call_later(self.interval, self._tick)


class HeapTrimService:
    """``HeapTrim`` as a service of the native daemon (``native_api.Service``)."""

    def __init__(self, heap_trim: HeapTrim | None = None) -> None:
        self.heap_trim = heap_trim if heap_trim is not None else HeapTrim()

    def start(self) -> None:
        self.heap_trim.start(asyncio.get_running_loop())

    async def close(self) -> None:
        self.heap_trim.stop()

    def reload(self, config: object) -> None:
        """Nothing in the config concerns it."""
