"""The second error tier: an authenticated message that is invalid, answered with a notify."""

from __future__ import annotations

from ..ikev2.constants import NotifyType


class ProtocolError(Exception):
    """Raised inside exchange handlers; the engine answers the peer with ``notify``."""

    def __init__(self, notify: NotifyType, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.notify = notify
        self.reason = reason
        self.data = data
