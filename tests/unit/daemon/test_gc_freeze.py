"""freeze_startup: a full collection walks only what was built after start-up."""

from __future__ import annotations

import subprocess
import sys

# In a fresh process: gc.freeze is process-wide, and pytest's own objects would count.
WALK_PROBE = """
import gc, weakref
import mobike_vici.daemon.controller, mobike_vici.daemon.native_run  # the daemons' start-up
from mobike_vici.daemon.gc_freeze import GcFreezeService

class Node:
    pass

cycle = Node()
cycle.me = cycle
gone = weakref.ref(cycle)
del cycle  # garbage from before the freeze
walked_before = len(gc.get_objects())
service = GcFreezeService()
service.start()
later = [[i] for i in range(1000)]  # what a running daemon builds
print(walked_before, service.frozen, len(gc.get_objects()), gone() is None)
"""


def test_start_up_leaves_the_full_collections_walk() -> None:
    out = subprocess.run([sys.executable, "-c", WALK_PROBE], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    walked_before, frozen, walked_after = (int(x) for x in out[:3])
    # Without the freeze a full collection walks every object start-up made (tens of
    # thousands: the cost of the pause); after it, what was built since.
    assert walked_before > 20_000
    assert frozen >= walked_before * 9 // 10
    assert walked_after < 5_000
    # The collection before the freeze freed the garbage: none of it is kept for good.
    assert out[3] == "True"
