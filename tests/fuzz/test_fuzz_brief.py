"""Every fuzz target runs briefly (seconds each) in its own process; any crash fails.

A crash is what the targets' oracle says (tests/fuzz/harness.py): an exception
other than the project's own error types, or an input over 50 ms of CPU time.
The long runs (a million inputs and more per target) are described in
docs/fuzzing.md; this only keeps the targets working and catches the shallow bugs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("message", "sk", "engine_init", "engine_sa", "esp", "udp_echo", "config",
           "fragments", "certs", "tcp_stream")
SECONDS = 10
"""Per target; nine targets keep the whole file around two minutes."""

if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.importorskip("atheris", reason="atheris not installed (pip install -e '.[test]')")


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_briefly(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cmd = [sys.executable, "-m", f"tests.fuzz.fuzz_{name}", "-runs=200000",
           f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/", "-seed=1",
           str(corpus)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120,
                          check=False)
    output = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert proc.returncode == 0 and not crashes, (
        f"fuzz target {name} failed ({crashes}):\n{output[-4000:]}")
    done = re.search(r"Done (\d+) runs", output)
    assert done is not None, output[-2000:]
    # It really fuzzed: seeds loaded and a good number of inputs executed.
    assert int(done.group(1)) >= 1000, output[-2000:]
    assert any(corpus.iterdir())
