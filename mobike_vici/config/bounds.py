"""A whole number within bounds, for the ``mobike { }`` keys and their sub-sections."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConfigError


def uint_in_range(text: str, key: str, lo: int, hi: int,
                  err: Callable[[str, str], ConfigError]) -> int:
    """``text`` as an int in ``lo..hi``; otherwise ``err(key, why)`` is raised."""
    if not (text.isascii() and text.isdigit()):
        raise err(key, f"'{text}' is not a number")
    n = int(text)
    if not lo <= n <= hi:
        raise err(key, f"{n} is out of range ({lo}..{hi})")
    return n
