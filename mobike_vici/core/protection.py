"""Messages of one IKE_SA on the wire: encrypted and cut into RFC 7383 fragments on
the way out, decoded and checked on the way in. Failures come back as the reason a
packet is dropped; the engine reports them (unauthenticated: nothing changes)."""

from __future__ import annotations

import dataclasses

from ..ikev2.constants import ExchangeType
from ..ikev2.crypto import IntegrityError
from ..ikev2.message import (
    DecodeError,
    Fragment,
    Header,
    Message,
    decode_message,
    decrypt_fragment,
    decrypt_message,
    encode_encrypted,
    encode_fragments,
    encode_message,
    fragment_capacity,
    join_fragments,
    transport_overhead,
)
from ..ikev2.payloads import Encrypted, Payload, encode_payloads
from ..types import Path
from .context import Context
from .events import MessageFragmented
from .fragments import REASSEMBLY_TIMEOUT, add_fragment
from .ike_sa import IkeSa


def encode(ctx: Context, sa: IkeSa, exchange: ExchangeType, message_id: int,
           response: bool, payloads: list[Payload]) -> bytes:
    """The message, encrypted past IKE_SA_INIT."""
    header = sa.header(exchange, message_id, response)
    if exchange == ExchangeType.IKE_SA_INIT:
        return encode_message(header, payloads)
    assert sa.cipher_out is not None
    iv = ctx.random_bytes(sa.cipher_out.iv_length)
    return encode_encrypted(header, payloads, sa.cipher_out, iv)


def cut_fragments(ctx: Context, sa: IkeSa, exchange: ExchangeType, message_id: int,
             response: bool, payloads: list[Payload], data: bytes,
             path: Path) -> tuple[bytes, ...]:
    """``data`` cut into RFC 7383 fragments when it is too large for fragment_size
    on ``path`` and fragmentation was negotiated (never IKE_SA_INIT, §2.5); else ()."""
    if exchange == ExchangeType.IKE_SA_INIT or not sa.fragmentation:
        return ()
    version = path.remote.addr.version
    limit = ctx.settings.fragment_limit(version)
    if len(data) + transport_overhead(version, path.natt) <= limit:
        return ()
    assert sa.cipher_out is not None
    capacity = fragment_capacity(limit, version, path.natt, sa.cipher_out)
    try:
        fragments = tuple(encode_fragments(sa.header(exchange, message_id, response),
                                           payloads, sa.cipher_out,
                                           ctx.random_bytes, capacity))
    except ValueError:
        return ()  # more than 65535 fragments: the whole message then, as it is
    length = len(encode_payloads(payloads))
    ctx.emit(MessageFragmented(conn=sa.conn.name, ike_spi=sa.spi_str,
                               exchange=exchange_name(exchange), sent=True,
                               fragments=len(fragments), length=length, path=path))
    return fragments


def open_message(sa: IkeSa, header: Header, data: bytes) -> Message | str:
    """Decoded and, past IKE_SA_INIT, decrypted; else why it is dropped."""
    try:
        msg = decode_message(data)
        if header.exchange == ExchangeType.IKE_SA_INIT:
            if any(isinstance(p, Encrypted) for p in msg.payloads):
                raise DecodeError("SK payload in IKE_SA_INIT")
            return msg
        if sa.cipher_in is None:
            raise DecodeError("no keys yet")
        if not msg.payloads or not isinstance(msg.payloads[-1], Encrypted):
            raise DecodeError("unprotected message")
        return decrypt_message(data, msg, sa.cipher_in)
    except IntegrityError:
        return "integrity check failed"
    except (DecodeError, ValueError) as exc:
        return f"malformed message: {exc}"


def open_fragment(sa: IkeSa, data: bytes) -> Fragment | str:
    """One fragment decoded and checked on its own; else why it is dropped."""
    try:
        if sa.cipher_in is None:
            raise DecodeError("no keys yet")
        return decrypt_fragment(data, decode_message(data), sa.cipher_in)
    except IntegrityError:
        return "integrity check failed"
    except (DecodeError, ValueError) as exc:
        return f"malformed fragment: {exc}"


def screen_fragment(sa: IkeSa, header: Header, retransmit: bool) -> str | None:
    """Why an RFC 7383 fragment is dropped before any cryptography, or None to open it:
    only fragments of the one message we expect in each direction cost a decryption."""
    mid, exchange = header.message_id, header.exchange
    if exchange == ExchangeType.IKE_SA_INIT:
        return "fragment in IKE_SA_INIT"
    if retransmit:
        return None
    if header.is_response:
        pending = sa.pending
        if pending is None or mid != pending.message_id or exchange != pending.exchange:
            return "unexpected response"
        return None
    if mid != sa.peer_next_id:
        return f"message ID {mid} outside the window"
    if not isinstance(exchange, ExchangeType) or exchange not in sa.peer_may_start():
        return f"unexpected {exchange_name(exchange)} request"
    return None


def reassemble(ctx: Context, sa: IkeSa, header: Header, piece: Fragment, path: Path,
               now: float) -> tuple[Header, Message] | str | None:
    """Keep one checked fragment of the message ``header`` names; the whole message
    (and its header) once every fragment is in, None until then, or why the fragment
    is dropped (it was authentic: the reason is reported as such)."""
    added = add_fragment(sa.reassembly, header.is_response, header.message_id,
                         int(header.exchange), piece, now, REASSEMBLY_TIMEOUT)
    if added.reason:
        return added.reason
    if added.done is None:
        return None
    whole = dataclasses.replace(header, next_payload=added.first_payload)
    try:
        msg = join_fragments(whole, added.first_payload, added.done)
    except DecodeError as exc:
        return f"malformed message: {exc}"
    ctx.emit(MessageFragmented(conn=sa.conn.name, ike_spi=sa.spi_str,
                               exchange=exchange_name(header.exchange), sent=False,
                               fragments=len(added.done),
                               length=sum(map(len, added.done)), path=path))
    return whole, msg


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"
