"""Configuration: swanctl.conf syntax (parser), typed model (model), both joined (loader).

``load_config(path)`` is the entry point; it raises ``ConfigError`` (``FILE:LINE: message``)
and nothing else for a bad file.
"""

from __future__ import annotations

from .loader import build_config
from .model import Config, ConfigError
from .parser import parse_file, parse_string

__all__ = ["Config", "ConfigError", "load_config", "load_string"]


def load_config(path: str) -> Config:
    """Read ``path`` (with its includes) into a validated ``Config``."""
    return build_config(parse_file(path))


def load_string(text: str, file: str = "<string>") -> Config:
    """``load_config`` for text in memory; ``include`` is relative to ``file``'s directory."""
    return build_config(parse_string(text, file))
