"""The task contract (strongSwan's task-per-exchange design) and the outcomes of handlers."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING

from ...ikev2.constants import ExchangeType, NotifyType
from ...ikev2.message import Message
from ...ikev2.payloads import SA, Payload, TSi, TSr, UnknownPayload, find_payload

if TYPE_CHECKING:
    from ...types import Path
    from ..context import Context
    from ..ike_sa import IkeSa


class Outcome(Enum):
    DONE = "done"
    RETRY = "retry"
    """Send the request again, rebuilt, with the same message ID (COOKIE, INVALID_KE)."""


class DropPacket(Exception):
    """The message is not acceptable: drop it, emit packet_dropped, change nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExchangeAborted(Exception):
    """Our exchange failed for good (error notify, bad AUTH); the IKE_SA goes unless
    ``keep_sa`` says it survives (a failed CHILD_SA exchange)."""

    def __init__(self, reason: str, keep_sa: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep_sa = keep_sa


class Task:
    """One exchange we initiate: build the request, process the response. Every task
    subclasses this; the engine reads the attributes below and nothing else of a task."""

    exchange: ExchangeType
    path: Path | None = None
    """The path the request goes on; None: the SA's current one."""
    liveness: bool = False
    """The request checks that the peer is alive (DPD, a probe): sent even when empty,
    and its running out of retransmissions is a dpd_timeout."""
    reason: str = "deleted_locally"
    """Why the IKE_SA goes when it ends DELETED after this exchange."""
    tests_path: bool = False
    """The request tests ``path`` (a probe): its retransmissions go on the SA's path."""
    eager_until: float | None = None
    """Until then the request is resent every ``eager_resend``, uncounted (an
    IKE_SA_INIT to a restarting peer)."""

    def eager_wait(self, resend: float, now: float) -> float | None:
        """The resend interval while ``eager_until`` lasts; None after it, or without."""
        until = self.eager_until
        if until is None or now >= until:
            return None
        return min(resend, until - now)

    def exhausted(self) -> str:
        """Why the IKE_SA goes when this request runs out of retransmissions."""
        return "dpd_timeout" if self.liveness else "retransmits_exceeded"

    def build(self, ctx: Context, sa: IkeSa, now: float) -> list[Payload]:
        raise NotImplementedError

    def process(self, ctx: Context, sa: IkeSa, msg: Message, now: float) -> Outcome:
        raise NotImplementedError


def child_offer(payloads: Sequence[Payload]) -> tuple[SA | None, TSi | None, TSr | None]:
    """The SA and the two traffic selector payloads that ask for (or answer) a CHILD_SA."""
    return find_payload(payloads, SA), find_payload(payloads, TSi), find_payload(payloads, TSr)


def notify_name(ntype: NotifyType | int) -> str:
    return ntype.name if isinstance(ntype, NotifyType) else str(int(ntype))


def unsupported_critical(payloads: Sequence[Payload]) -> UnknownPayload | None:
    for p in payloads:
        if isinstance(p, UnknownPayload) and p.critical:
            return p
    return None
