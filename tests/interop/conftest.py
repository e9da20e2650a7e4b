"""Fixtures of the interop suite: a fresh two-host lab per test, logs shown on failure."""

from __future__ import annotations

import ipaddress
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from mobike_vici.lab.netns import Lab
from mobike_vici.lab.topology import two_hosts

from .configs import INNER_NET
from .support import Interop


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Keep each phase's report on the item, so a fixture knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def interop(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Interop]:
    """Our daemon's namespace and charon's, linked; everything goes with the lab."""
    topo = two_hosts(lab)
    # charon as responder installs routes with a source address inside its local_ts.
    topo.host_b.add_address("lo", f"{ipaddress.ip_network(INNER_NET)[1]}/32")
    env = Interop(lab, topo, lab.workdir)
    yield env
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        # Shown by pytest as the failed test's captured teardown output.
        print(env.diagnostics())
