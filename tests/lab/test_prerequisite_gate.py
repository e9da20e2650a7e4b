"""Without root, lab tests skip loudly; with CI=true they fail instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns  # needs root to drop to an unprivileged user

REPO = Path(__file__).resolve().parents[2]


def _run_as_nobody(ci: bool) -> subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    argv = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
        "tests/lab/test_netns.py::test_two_hosts_reach_each_other_v4_and_v6",
    ]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_without_root_skips_with_reason() -> None:
    proc = _run_as_nobody(ci=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert "missing prerequisite: root" in proc.stdout
    assert "SKIPPED for missing root" in proc.stdout


def test_without_root_in_ci_fails() -> None:
    proc = _run_as_nobody(ci=True)
    assert proc.returncode != 0, proc.stdout
    assert "CI=true and NOT RUN, missing prerequisite: root" in proc.stdout
