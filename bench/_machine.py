"""What a bench's JSON says of the machine it ran on.

Other work on the machine skews every number: the 1-minute load average just before
and after the run says how much there was.
"""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Cores, Python, kernel, and the 1-minute load before (``os.getloadavg()`` at the
    start) and now."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
