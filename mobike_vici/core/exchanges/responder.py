"""Our answer to an authenticated request of the peer, by exchange, in both tiers of
errors: a handler's answer, or the error notify that an invalid request gets (each
reported as ExchangeFailed). The engine has checked the window and the keys; it
caches, sends and acts on ``Answer.destroy``."""

from __future__ import annotations

from dataclasses import dataclass

from ...ikev2.constants import ExchangeType, NotifyType
from ...ikev2.message import Message
from ...ikev2.payloads import Notify, Payload, first_error
from ...types import Path
from ..context import Context
from ..errors import ProtocolError
from ..events import ExchangeFailed
from ..ike_sa import IkeSa, IkeState
from ..protection import exchange_name
from .base import DropPacket, notify_name, unsupported_critical
from .create_child import respond_create_child
from .ike_auth import AuthFailed, respond_auth
from .informational import respond_informational
from .mobike import respond_mobike
from .redirect import respond_redirect


@dataclass(frozen=True, slots=True)
class Answer:
    payloads: list[Payload]
    destroy: str | None = None
    """Why the IKE_SA goes once the answer is sent (a failed authentication)."""


def answer_request(ctx: Context, sa: IkeSa, exchange: ExchangeType, msg: Message,
                   path: Path, message_id: int, now: float) -> Answer:
    """The response to ``msg``, which arrived on ``path`` (our view)."""
    critical = unsupported_critical(msg.payloads)
    if critical is not None:
        report(ctx, sa, exchange, "UNSUPPORTED_CRITICAL_PAYLOAD")
        return Answer([Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                              bytes([critical.type & 0xFF]))])
    try:
        if exchange == ExchangeType.IKE_AUTH:
            return Answer(respond_auth(ctx, sa, msg, now))
        if exchange == ExchangeType.INFORMATIONAL:
            reply = respond_informational(ctx, sa, msg, now)
            if sa.state != IkeState.DELETED:
                reply += respond_mobike(ctx, sa, msg, path, message_id, now)
                respond_redirect(ctx, sa, msg, now)
            return Answer(reply)
        reply = respond_create_child(ctx, sa, msg, now)
        error = first_error(reply)
        if error is not None:
            report(ctx, sa, exchange, notify_name(error.type))
        return Answer(reply)
    except AuthFailed as exc:
        report(ctx, sa, exchange, f"authentication_failed: {exc}")
        return Answer([Notify(NotifyType.AUTHENTICATION_FAILED)], "authentication_failed")
    except ProtocolError as exc:
        report(ctx, sa, exchange, f"{exc.notify.name}: {exc.reason}")
        return Answer([Notify(exc.notify, exc.data)])
    except ValueError as exc:
        # Our config cannot answer it (e.g. an identity we cannot encode).
        auth = exchange == ExchangeType.IKE_AUTH
        failed = NotifyType.AUTHENTICATION_FAILED if auth else NotifyType.NO_PROPOSAL_CHOSEN
        report(ctx, sa, exchange, f"{failed.name}: {exc}")
        return Answer([Notify(failed)], "authentication_failed" if auth else None)
    except DropPacket as exc:
        # Authenticated, so not garbage: a malformed request gets INVALID_SYNTAX.
        report(ctx, sa, exchange, f"INVALID_SYNTAX: {exc.reason}")
        return Answer([Notify(NotifyType.INVALID_SYNTAX)])


def report(ctx: Context, sa: IkeSa, exchange: int, reason: str) -> None:
    ctx.emit(ExchangeFailed(conn=sa.conn.name, ike_spi=sa.spi_str,
                            exchange=exchange_name(exchange), reason=reason))
