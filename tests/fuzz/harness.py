"""What every fuzz target shares: the oracle, the seed corpus, and the libFuzzer command line.

The oracle: a target names the project's own error types that may escape for bad
input; any other exception is a crash. An input that takes more than
``SLOW_INPUT`` seconds of CPU time (measured twice, so a scheduling hiccup or a
garbage collection on a shared machine does not count) is a failure too.

Each target module is run as ``python -m tests.fuzz.<target> [libFuzzer args]
[CORPUS_DIR ...]``. Without a corpus directory the seeds go to a fresh temporary
one; a given directory that is empty is filled with the seeds first. Nothing in
here imports the project: targets import it under ``atheris.instrument_imports``
so that coverage guides the fuzzer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

SLOW_INPUT = 0.050
"""Seconds of CPU time one input may take."""

Target = Callable[[bytes], None]


class SlowInput(Exception):
    """An input took more than SLOW_INPUT seconds of CPU time, twice in a row."""


def _cpu() -> float:
    return time.process_time()


def guarded(target: Target, allowed: tuple[type[BaseException], ...]) -> Target:
    """``target`` under the oracle: ``allowed`` errors pass, other exceptions and slow
    inputs are crashes."""

    def once(data: bytes) -> float:
        start = _cpu()
        with contextlib.suppress(*allowed):
            target(data)
        return _cpu() - start

    def one_input(data: bytes) -> None:
        if once(data) > SLOW_INPUT:
            again = once(data)
            if again > SLOW_INPUT:
                raise SlowInput(f"{len(data)}-byte input took {again * 1000:.1f} ms of CPU")

    return one_input


def _corpus_args(argv: list[str], name: str, seeds: Iterable[bytes]) -> list[str]:
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if positional and not any(os.path.isdir(a) for a in positional):
        return argv  # files: libFuzzer runs each once (reproducing a crash)
    dirs = [a for a in positional if os.path.isdir(a)]
    if not dirs:
        tmp = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        argv = [*argv, tmp]
        dirs = [tmp]
    if not os.listdir(dirs[0]):
        for seed in seeds:
            digest = hashlib.sha1(seed).hexdigest()
            with open(os.path.join(dirs[0], f"seed-{digest}"), "wb") as fh:
                fh.write(seed)
    return argv


def main(name: str, target: Target, allowed: tuple[type[BaseException], ...],
         seeds: Callable[[], Iterable[bytes]]) -> None:
    """Run ``target`` under atheris with the command line of this process."""
    import atheris

    argv = _corpus_args(list(sys.argv), name, seeds())
    if not any(a.startswith("-max_len=") for a in argv):
        # IKE and ESP datagrams of a path MTU, a config file of a few KiB.
        argv.append("-max_len=4096")
    atheris.Setup(argv, guarded(target, allowed))
    atheris.Fuzz()
