"""``mobike-vici`` with the native engine replaced by the test fake (for process tests).

Usage: PYTHONPATH=<repo> python -m tests.unit.daemon.fake_native native --config FILE ...
Everything but the engine is the shipped code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from mobike_vici import cli
from mobike_vici.config.model import Config
from mobike_vici.daemon import native_run
from mobike_vici.types import Endpoint, IPAddress
from tests.unit.daemon.fakes import FakeEngine


class ProcessFakeEngine(FakeEngine):
    def __init__(
        self,
        config: Config,
        random_bytes: Callable[[int], bytes],
        source_address: Callable[[IPAddress], IPAddress | None],
        settings: object = None,
    ) -> None:
        super().__init__(Endpoint.parse("127.0.0.1", 500), Endpoint.parse("127.0.0.1", 9))


if __name__ == "__main__":
    vars(native_run)["Engine"] = ProcessFakeEngine
    sys.exit(cli.main(sys.argv[1:]))
