"""Test prerequisites: `netns` tests need root, `charon` tests need strongSwan too.

Outside CI a missing prerequisite skips those tests with a loud reason. In CI
(`CI=true`) it fails them instead: a green CI run must mean the lab tests ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# A state change the IKE_SA table lacks fails the test (and the daemons tests start,
# which inherit it) instead of being logged; set before the core is imported.
os.environ["MOBIKE_VICI_STRICT_STATES"] = "1"

from mobike_vici.lab.charon import charon_available
from mobike_vici.lab.netns import Lab, is_root, list_namespaces, sweep_stale


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(item: pytest.Item) -> list[str]:
    missing = []
    if item.get_closest_marker("netns") or item.get_closest_marker("charon"):
        if not is_root():
            missing.append("root (network namespaces); run as root, e.g. sudo scripts/test.sh")
        tools = [t for t in ("ip", "nft", "ping") if shutil.which(t) is None]
        if tools:
            missing.append(f"tools {', '.join(tools)} (scripts/bootstrap.sh --with-strongswan)")
    if item.get_closest_marker("charon") and not charon_available():
        missing.append("strongSwan charon/swanctl (scripts/bootstrap.sh --with-strongswan)")
    return missing


TESTS = Path(__file__).resolve().parent
FAST_DIRS = {"unit"}
"""Everything else (lab, interop, mobility, controller, data, faults, fuzz, soak,
operator) builds namespaces or runs charon, atheris or minutes of faults: slow."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow`` for every test outside tests/unit, so ``pytest -m "not slow"`` is the fast
    suite; a unit test that takes more than about half a second carries the mark itself."""
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if top not in FAST_DIRS or item.get_closest_marker("netns") \
                or item.get_closest_marker("charon"):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = _missing(item)
    if not missing:
        return
    reason = "NOT RUN, missing prerequisite: " + "; ".join(missing)
    if _in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [
        rep for rep in terminalreporter.stats.get("skipped", [])
        if "missing prerequisite" in str(getattr(rep, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_sep(
            "!", f"{len(skipped)} lab tests SKIPPED for missing root/strongSwan: "
            "the namespace and charon tests did not run", red=True,
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    # Leftovers of crashed earlier runs (their pid is gone) would only confuse.
    if is_root() and shutil.which("ip"):
        sweep_stale()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A Lab whose namespaces and processes are gone after the test, pass or fail."""
    the_lab = Lab(tmp_path / "lab")
    try:
        yield the_lab
    finally:
        the_lab.close()
        leftovers = [n for n in list_namespaces() if n.startswith(the_lab.prefix)]
        assert not leftovers, f"lab left namespaces behind: {leftovers}"
