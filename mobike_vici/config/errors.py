"""The one error every config problem becomes, located as ``FILE:LINE: message``."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, located as ``FILE:LINE: message``."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message
