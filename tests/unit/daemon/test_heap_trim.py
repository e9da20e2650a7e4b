"""HeapTrim: a worker thread's freed glibc arena stays resident until malloc_trim gives it back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from mobike_vici.daemon.heap_trim import HeapTrim, HeapTrimService, glibc_trim

FRAGMENT = """
import concurrent.futures, os
from mobike_vici.daemon.heap_trim import HeapTrim

CHUNK = 8192  # above pymalloc's 512 bytes: the thread's glibc arena, below mmap's threshold
COUNT = 3000  # ~24 MiB in all
KEEP_EVERY = 32  # one live chunk per 256 KiB: the free runs between are whole pages

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

def fragment():
    # What a worker thread's parse leaves: many freed chunks, a few survivors among them.
    chunks = [bytes([i & 0xFF]) * CHUNK for i in range(COUNT)]
    peak = rss_kib()
    return peak, chunks[::KEEP_EVERY]

with concurrent.futures.ThreadPoolExecutor(1) as worker:
    peak, survivors = worker.submit(fragment).result()
    freed = rss_kib()
    trimmer = HeapTrim()
    gave_back = trimmer.trim_now()
    print(COUNT * CHUNK // 1024, peak, freed, rss_kib(), gave_back, trimmer.trims, len(survivors))
"""


@pytest.mark.skipif(glibc_trim() is None, reason="no glibc malloc_trim")
def test_a_worker_threads_freed_arena_is_given_back_by_a_trim() -> None:
    # A fresh process: arenas earlier tests left free would blur the figures.
    out = subprocess.run([sys.executable, "-c", FRAGMENT], check=True, capture_output=True,
                         text=True, timeout=60).stdout.split()
    total, peak, freed, trimmed = (int(x) for x in out[:4])
    # The problem: glibc keeps the freed middle of a thread's arena resident.
    assert peak - freed < total // 4
    # The fix: most of it (all but the survivors' pages) goes back to the kernel.
    assert freed - trimmed > total // 2
    assert out[4:] == ["True", "1", str(3000 // 32 + 1)]


def test_the_trimmer_runs_on_the_loop_until_stopped() -> None:
    calls: list[int] = []

    async def main() -> None:
        trimmer = HeapTrim(interval=0.001, trim=lambda pad: calls.append(pad) or 1)
        trimmer.start(asyncio.get_running_loop())
        while len(calls) < 3:
            await asyncio.sleep(0.001)
        trimmer.stop()
        stopped_at = len(calls)
        for _ in range(5):
            await asyncio.sleep(0.002)
        assert len(calls) == stopped_at
        assert trimmer.trims == stopped_at

    asyncio.run(main())
    assert set(calls) == {0}  # malloc_trim(0): keep no padding at the top


def test_the_native_daemons_service_trims_until_closed() -> None:
    calls: list[int] = []

    async def main() -> None:
        service = HeapTrimService(HeapTrim(interval=0.001,
                                           trim=lambda pad: calls.append(pad) or 1))
        service.start()
        while not calls:
            await asyncio.sleep(0.001)
        await service.close()
        closed_at = len(calls)
        await asyncio.sleep(0.01)
        assert len(calls) == closed_at

    asyncio.run(main())


def test_without_malloc_trim_nothing_is_scheduled() -> None:
    async def main() -> None:
        trimmer = HeapTrim(interval=0.001)
        trimmer._trim = None  # a C library without malloc_trim (musl)
        trimmer.start(asyncio.get_running_loop())
        await asyncio.sleep(0.01)
        assert not trimmer.available and trimmer.trims == 0 and not trimmer.trim_now()

    asyncio.run(main())


ARENA_PROBE = """
import ctypes, sys, threading
from mobike_vici.daemon.heap_trim import share_one_arena
shared = share_one_arena()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
got = []
worker = threading.Thread(target=lambda: got.append(libc.malloc(5000)))
worker.start()
worker.join()
start, end = (int(x, 16) for x in next(
    line for line in open("/proc/self/maps") if "[heap]" in line).split()[0].split("-"))
print(shared, start <= got[0] < end)
"""


def _probe_arena(env: dict[str, str]) -> str:
    """In a fresh process (the setting is process-wide): share_one_arena's answer, and
    whether a new thread's malloc comes from the main arena (the brk heap)."""
    return subprocess.run([sys.executable, "-c", ARENA_PROBE], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.mark.skipif(glibc_trim() is None, reason="not glibc")
def test_worker_threads_share_the_main_arena() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _probe_arena(env) == "True True"


@pytest.mark.skipif(glibc_trim() is None, reason="not glibc")
def test_an_operators_malloc_arena_max_stands() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert _probe_arena(env) == "False False"
