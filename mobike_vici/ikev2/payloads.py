"""IKEv2 payloads (RFC 7296 §3) as frozen dataclasses, and their pure encoders/decoders.

Every payload class carries its ``payload_type``. Decoding any byte string either
returns payloads or raises :class:`DecodeError`; nothing else escapes. Numbers the
IANA may extend (notify, transform, ID types, ...) decode to their IntEnum member
when we know it and to a plain ``int`` otherwise, so a new value never breaks parsing.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar, assert_never

from .buffer import DecodeError, Reader, to_enum, u8, u16
from .constants import (
    AuthMethod,
    CfgAttr,
    CfgType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
    notify_is_error,
)


@dataclass(frozen=True, slots=True)
class Transform:
    type: TransformType | int
    id: int
    key_length: int | None = None
    unknown_attrs: tuple[int, ...] = ()
    """Types of attributes we did not understand: RFC 7296 §3.3.6 makes such a
    transform unacceptable, so decoding keeps the fact instead of dropping it."""


@dataclass(frozen=True, slots=True)
class Proposal:
    num: int
    protocol: ProtocolId | int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SA:
    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True, slots=True)
class KE:
    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IDi:
    payload_type: ClassVar[PayloadType] = PayloadType.IDi
    id_type: IdType | int
    data: bytes


@dataclass(frozen=True, slots=True)
class IDr:
    payload_type: ClassVar[PayloadType] = PayloadType.IDr
    id_type: IdType | int
    data: bytes


@dataclass(frozen=True, slots=True)
class Cert:
    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertReq:
    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Auth:
    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod | int
    data: bytes


@dataclass(frozen=True, slots=True)
class Nonce:
    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFY
    type: NotifyType | int
    data: bytes = b""
    protocol: ProtocolId | int = ProtocolId.NONE
    spi: bytes = b""


@dataclass(frozen=True, slots=True)
class Delete:
    payload_type: ClassVar[PayloadType] = PayloadType.DELETE
    protocol: ProtocolId | int
    spis: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class VendorId:
    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    ts_type: TsType
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    end_addr: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TSi:
    payload_type: ClassVar[PayloadType] = PayloadType.TSi
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class TSr:
    payload_type: ClassVar[PayloadType] = PayloadType.TSr
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class CfgAttribute:
    type: int
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class CP:
    payload_type: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: CfgType | int
    attributes: tuple[CfgAttribute, ...] = ()


@dataclass(frozen=True, slots=True)
class EAP:
    payload_type: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes


@dataclass(frozen=True, slots=True)
class Encrypted:
    """The SK payload as received: ``body`` is IV || ciphertext || ICV, still sealed."""

    payload_type: ClassVar[PayloadType] = PayloadType.SK
    first_payload: int
    body: bytes


@dataclass(frozen=True, slots=True)
class EncryptedFragment:
    """The SKF payload as received (RFC 7383 §2.5): one fragment of an SK payload.

    ``first_payload`` names the first inner payload in fragment 1 and is 0 in the
    others; ``body`` is IV || ciphertext || ICV, sealed on its own.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.SKF
    first_payload: int
    number: int
    total: int
    body: bytes


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type we do not know; kept so the critical bit can be honoured."""

    type: int
    critical: bool
    data: bytes

    @property
    def payload_type(self) -> int:
        return self.type


Payload = (
    SA | KE | IDi | IDr | Cert | CertReq | Auth | Nonce | Notify | Delete | VendorId
    | TSi | TSr | CP | EAP | Encrypted | EncryptedFragment | UnknownPayload
)

GENERIC_HEADER_LENGTH = 4
MAX_PAYLOADS = 128
"""Payloads per chain (outer or inside SK). charon caps notifies, deletes and vendor
IDs at 20 each per message; a chain of thousands of 4-byte payloads is an attack."""
_CRITICAL = 0x80
_AF_TV = 0x8000
_LAST = 0
_MORE_PROPOSALS = 2
_MORE_TRANSFORMS = 3

_RESERVED3 = b"\x00\x00\x00"


# ---------------------------------------------------------------------------
# SA (§3.3): proposals, transforms, attributes
# ---------------------------------------------------------------------------


# last/more, reserved, length, type, reserved, id (§3.3.2)
_TRANSFORM_HEAD = struct.Struct("!BBHBBH")
# last/more, reserved, length, number, protocol, SPI size, transform count (§3.3.1)
_PROPOSAL_HEAD = struct.Struct("!BBHBBBB")


def _encode_transform(t: Transform, last: bool) -> bytes:
    # ``unknown_attrs`` is not encoded: we never send attributes we do not understand.
    attrs = b""
    if t.key_length is not None:
        attrs = u16(_AF_TV | TransformAttr.KEY_LENGTH) + u16(t.key_length)
    return _TRANSFORM_HEAD.pack(_LAST if last else _MORE_TRANSFORMS, 0, 8 + len(attrs),
                                t.type, 0, t.id) + attrs


def _decode_transform(r: Reader) -> tuple[Transform, bool]:
    """Decode one transform; the bool says whether it claims to be the last one."""
    last = r.u8()
    if last not in (_LAST, _MORE_TRANSFORMS):
        raise DecodeError(f"transform 'last' field is {last}")
    r.skip(1)
    length = r.u16()
    if length < 8:
        raise DecodeError(f"transform length {length} < 8")
    body = r.sub(length - 4)
    ttype = body.u8()
    body.skip(1)
    tid = body.u16()
    key_length: int | None = None
    unknown: list[int] = []
    while not body.at_end():
        word = body.u16()
        attr_type = word & ~_AF_TV
        if word & _AF_TV:
            value = body.u16()
            if attr_type == TransformAttr.KEY_LENGTH:
                if key_length is not None:
                    raise DecodeError("duplicate KEY_LENGTH attribute")
                key_length = value
                continue
        else:
            if attr_type == TransformAttr.KEY_LENGTH:
                raise DecodeError("KEY_LENGTH attribute must use the TV format")
            body.skip(body.u16())
        unknown.append(attr_type)
    transform = Transform(to_enum(TransformType, ttype), tid, key_length, tuple(unknown))
    return transform, last == _LAST


def _encode_proposal(p: Proposal, last: bool) -> bytes:
    if not p.transforms or len(p.transforms) > 255:
        raise ValueError("a proposal needs 1..255 transforms")
    transforms = b"".join(
        _encode_transform(t, i == len(p.transforms) - 1) for i, t in enumerate(p.transforms)
    )
    length = 8 + len(p.spi) + len(transforms)
    return _PROPOSAL_HEAD.pack(_LAST if last else _MORE_PROPOSALS, 0, length, p.num,
                               p.protocol, len(p.spi), len(p.transforms)) + p.spi + transforms


def _decode_proposal(r: Reader) -> tuple[Proposal, bool]:
    last = r.u8()
    if last not in (_LAST, _MORE_PROPOSALS):
        raise DecodeError(f"proposal 'last' field is {last}")
    r.skip(1)
    length = r.u16()
    if length < 8:
        raise DecodeError(f"proposal length {length} < 8")
    body = r.sub(length - 4)
    num = body.u8()
    protocol = body.u8()
    spi_size = body.u8()
    count = body.u8()
    spi = body.take(spi_size)
    transforms: list[Transform] = []
    while not body.at_end():
        if len(transforms) == count:
            raise DecodeError("proposal holds more transforms than it announces")
        transform, is_last = _decode_transform(body)
        transforms.append(transform)
        if is_last != (len(transforms) == count):
            raise DecodeError("transform 'last' field disagrees with the transform count")
    if len(transforms) != count:
        raise DecodeError(f"proposal announces {count} transforms, holds {len(transforms)}")
    proposal = Proposal(num, to_enum(ProtocolId, protocol), spi, tuple(transforms))
    return proposal, last == _LAST


def _encode_sa(p: SA) -> bytes:
    n = len(p.proposals)
    return b"".join(_encode_proposal(prop, i == n - 1) for i, prop in enumerate(p.proposals))


def _decode_sa(r: Reader) -> SA:
    proposals: list[Proposal] = []
    while not r.at_end():
        proposal, is_last = _decode_proposal(r)
        proposals.append(proposal)
        if is_last != r.at_end():
            raise DecodeError("proposal 'last' field disagrees with the payload length")
    return SA(tuple(proposals))


# ---------------------------------------------------------------------------
# The simple payloads
# ---------------------------------------------------------------------------


def _encode_ke(p: KE) -> bytes:
    return u16(p.group) + b"\x00\x00" + p.data


def _decode_ke(r: Reader) -> KE:
    group = r.u16()
    r.skip(2)
    return KE(group, r.rest())


def id_body(p: IDi | IDr) -> bytes:
    """RestOfInitIDPayload / RestOfRespIDPayload (RFC 7296 §2.15), the input to AUTH."""
    return u8(p.id_type) + _RESERVED3 + p.data


def _decode_id(cls: type[IDi] | type[IDr]) -> Callable[[Reader], IDi | IDr]:
    def decode(r: Reader) -> IDi | IDr:
        id_type = r.u8()
        r.skip(3)
        return cls(to_enum(IdType, id_type), r.rest())
    return decode


def _encode_cert(p: Cert | CertReq) -> bytes:
    return u8(p.encoding) + p.data


def _decode_cert(r: Reader) -> Cert:
    encoding = r.u8()
    return Cert(encoding, r.rest())


def _decode_certreq(r: Reader) -> CertReq:
    encoding = r.u8()
    return CertReq(encoding, r.rest())


def _encode_auth(p: Auth) -> bytes:
    return u8(p.method) + _RESERVED3 + p.data


def _decode_auth(r: Reader) -> Auth:
    method = r.u8()
    r.skip(3)
    return Auth(to_enum(AuthMethod, method), r.rest())


def _decode_nonce(r: Reader) -> Nonce:
    return Nonce(r.rest())


def _encode_notify(p: Notify) -> bytes:
    return u8(p.protocol) + u8(len(p.spi)) + u16(p.type) + p.spi + p.data


def _decode_notify(r: Reader) -> Notify:
    protocol = r.u8()
    spi_size = r.u8()
    ntype = r.u16()
    spi = r.take(spi_size)
    return Notify(to_enum(NotifyType, ntype), r.rest(), to_enum(ProtocolId, protocol), spi)


def _encode_delete(p: Delete) -> bytes:
    spi_size = len(p.spis[0]) if p.spis else 0
    if any(len(spi) != spi_size for spi in p.spis):
        raise ValueError("all SPIs of a Delete payload must have the same size")
    return u8(p.protocol) + u8(spi_size) + u16(len(p.spis)) + b"".join(p.spis)


def _decode_delete(r: Reader) -> Delete:
    protocol = r.u8()
    spi_size = r.u8()
    count = r.u16()
    # §3.11: an IKE SA delete has SPI size 0 and count 0. A count of empty SPIs
    # would pass the length check below while costing work per SPI, not per byte.
    if spi_size == 0 and count != 0:
        raise DecodeError(f"delete payload: {count} SPIs of 0 bytes")
    if spi_size * count != r.remaining:
        raise DecodeError(f"delete payload: {count} SPIs of {spi_size} bytes != {r.remaining}")
    spis = tuple(r.take(spi_size) for _ in range(count))
    return Delete(to_enum(ProtocolId, protocol), spis)


def _decode_vendor_id(r: Reader) -> VendorId:
    return VendorId(r.rest())


def _decode_eap(r: Reader) -> EAP:
    return EAP(r.rest())


# ---------------------------------------------------------------------------
# Traffic selectors (§3.13)
# ---------------------------------------------------------------------------

_TS_ADDR_LENGTH = {TsType.TS_IPV4_ADDR_RANGE: 4, TsType.TS_IPV6_ADDR_RANGE: 16}


def _encode_selector(ts: TrafficSelector) -> bytes:
    version = 4 if ts.ts_type == TsType.TS_IPV4_ADDR_RANGE else 6
    if ts.start_addr.version != version or ts.end_addr.version != version:
        raise ValueError(f"{ts.ts_type.name} needs IPv{version} addresses")
    addrs = ts.start_addr.packed + ts.end_addr.packed
    return (u8(ts.ts_type) + u8(ts.ip_protocol) + u16(8 + len(addrs))
            + u16(ts.start_port) + u16(ts.end_port) + addrs)


def _decode_selector(r: Reader) -> TrafficSelector:
    ts_type = r.u8()
    ip_protocol = r.u8()
    length = r.u16()
    if ts_type not in _TS_ADDR_LENGTH:
        raise DecodeError(f"unsupported traffic selector type {ts_type}")
    kind = TsType(ts_type)
    addr_len = _TS_ADDR_LENGTH[kind]
    if length != 8 + 2 * addr_len:
        raise DecodeError(f"{kind.name} selector length {length}")
    start_port = r.u16()
    end_port = r.u16()
    start = ipaddress.ip_address(r.take(addr_len))
    end = ipaddress.ip_address(r.take(addr_len))
    return TrafficSelector(kind, ip_protocol, start_port, end_port, start, end)


def _encode_ts(p: TSi | TSr) -> bytes:
    return (u8(len(p.selectors)) + _RESERVED3
            + b"".join(_encode_selector(ts) for ts in p.selectors))


def _decode_ts(cls: type[TSi] | type[TSr]) -> Callable[[Reader], TSi | TSr]:
    def decode(r: Reader) -> TSi | TSr:
        count = r.u8()
        r.skip(3)
        selectors = tuple(_decode_selector(r) for _ in range(count))
        if not r.at_end():
            raise DecodeError("traffic selector payload longer than its selectors")
        return cls(selectors)
    return decode


# ---------------------------------------------------------------------------
# Configuration payload (§3.15)
# ---------------------------------------------------------------------------


def _encode_cp(p: CP) -> bytes:
    out = [u8(p.cfg_type), _RESERVED3]
    for attr in p.attributes:
        if not 0 <= attr.type <= 0x7FFF:
            raise ValueError(f"configuration attribute type {attr.type} out of range")
        out.append(u16(attr.type) + u16(len(attr.value)) + attr.value)
    return b"".join(out)


def _decode_cp(r: Reader) -> CP:
    cfg_type = r.u8()
    r.skip(3)
    attrs: list[CfgAttribute] = []
    while not r.at_end():
        # The top bit is reserved: sent as zero, ignored on receipt (§3.15.1).
        attr_type = r.u16() & 0x7FFF
        value = r.take(r.u16())
        attrs.append(CfgAttribute(to_enum(CfgAttr, attr_type), value))
    return CP(to_enum(CfgType, cfg_type), tuple(attrs))


# ---------------------------------------------------------------------------
# Dispatch and payload chains
# ---------------------------------------------------------------------------

_DECODERS: dict[int, Callable[[Reader], Payload]] = {
    PayloadType.SA: _decode_sa,
    PayloadType.KE: _decode_ke,
    PayloadType.IDi: _decode_id(IDi),
    PayloadType.IDr: _decode_id(IDr),
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_certreq,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR_ID: _decode_vendor_id,
    PayloadType.TSi: _decode_ts(TSi),
    PayloadType.TSr: _decode_ts(TSr),
    PayloadType.CP: _decode_cp,
    PayloadType.EAP: _decode_eap,
}
"""Decoders by payload type. SK is absent on purpose: it ends the chain (see below)."""


def encode_payload_body(p: Payload) -> bytes:
    """The payload without its 4-byte generic header."""
    # A match rather than a table so mypy checks that every payload class is handled.
    match p:
        case SA():
            return _encode_sa(p)
        case KE():
            return _encode_ke(p)
        case IDi() | IDr():
            return id_body(p)
        case Cert() | CertReq():
            return _encode_cert(p)
        case Auth():
            return _encode_auth(p)
        case Notify():
            return _encode_notify(p)
        case Delete():
            return _encode_delete(p)
        case TSi() | TSr():
            return _encode_ts(p)
        case CP():
            return _encode_cp(p)
        case Encrypted():
            return p.body
        case EncryptedFragment():
            return u16(p.number) + u16(p.total) + p.body
        case Nonce() | VendorId() | EAP() | UnknownPayload():
            return p.data
        case _:
            assert_never(p)


def _generic_header(next_payload: int, critical: bool, body_length: int) -> bytes:
    length = GENERIC_HEADER_LENGTH + body_length
    if length > 0xFFFF:
        raise ValueError(f"payload of {length} bytes does not fit the length field")
    return u8(next_payload) + u8(_CRITICAL if critical else 0) + u16(length)


def encode_payloads(payloads: Sequence[Payload]) -> bytes:
    """Encode a payload chain; the caller puts ``payloads[0].payload_type`` in front.

    An :class:`Encrypted` payload must come last; its next-payload field names the
    first payload inside it (§3.14).
    """
    out: list[bytes] = []
    for i, p in enumerate(payloads):
        if isinstance(p, Encrypted | EncryptedFragment):
            if i != len(payloads) - 1:
                raise ValueError("the SK payload must be the last payload")
            next_type = p.first_payload
        else:
            next_type = int(payloads[i + 1].payload_type) if i + 1 < len(payloads) else 0
        critical = p.critical if isinstance(p, UnknownPayload) else False
        body = encode_payload_body(p)
        out.append(_generic_header(next_type, critical, len(body)))
        out.append(body)
    return b"".join(out)


def first_payload_type(payloads: Sequence[Payload]) -> int:
    """The next-payload value that introduces ``payloads`` (0 when empty)."""
    return int(payloads[0].payload_type) if payloads else PayloadType.NONE


# -- lookups: the one place a payload or a notify is found in a decoded chain -----------

P = TypeVar("P", bound=Payload)


def find_payload(payloads: Sequence[Payload], cls: type[P]) -> P | None:
    """The first payload of class ``cls``, if any."""
    for p in payloads:
        if isinstance(p, cls):
            return p
    return None


def find_notify(payloads: Sequence[Payload], ntype: NotifyType | int) -> Notify | None:
    """The first Notify of type ``ntype``, if any."""
    for p in payloads:
        if isinstance(p, Notify) and p.type == ntype:
            return p
    return None


def notify_data(payloads: Sequence[Payload], ntype: NotifyType | int) -> list[bytes]:
    """The data of every Notify of type ``ntype``, in order."""
    return [p.data for p in payloads if isinstance(p, Notify) and p.type == ntype]


def first_error(payloads: Sequence[Payload]) -> Notify | None:
    """The first error Notify (type below 16384, RFC 7296 §3.10.1), if any."""
    for p in payloads:
        if isinstance(p, Notify) and notify_is_error(int(p.type)):
            return p
    return None


def decode_payloads(
    first_type: int, data: bytes, *, allow_encrypted: bool = True
) -> tuple[Payload, ...]:
    """Decode a chain that starts with ``first_type`` and fills ``data`` exactly.

    SK (and SKF, RFC 7383) ends the chain: its next-payload field names the first
    inner payload, so it must also end ``data``.
    """
    r = Reader(data)
    payloads: list[Payload] = []
    next_type = first_type
    while next_type != PayloadType.NONE:
        if len(payloads) == MAX_PAYLOADS:
            raise DecodeError(f"more than {MAX_PAYLOADS} payloads in one chain")
        ptype = next_type
        next_type = r.u8()
        critical = bool(r.u8() & _CRITICAL)
        length = r.u16()
        if length < GENERIC_HEADER_LENGTH:
            raise DecodeError(f"payload {ptype} length {length} < 4")
        body = r.sub(length - GENERIC_HEADER_LENGTH)
        if ptype in (PayloadType.SK, PayloadType.SKF):
            if not allow_encrypted:
                raise DecodeError("SK payload inside an SK payload")
            if not r.at_end():
                raise DecodeError("SK payload is not the last payload")
            if ptype == PayloadType.SK:
                payloads.append(Encrypted(next_type, body.rest()))
            else:
                number = body.u16()
                total = body.u16()
                payloads.append(EncryptedFragment(next_type, number, total, body.rest()))
            return tuple(payloads)
        decoder = _DECODERS.get(ptype)
        if decoder is None:
            payloads.append(UnknownPayload(ptype, critical, body.rest()))
            continue
        payloads.append(decoder(body))
        if not body.at_end():
            raise DecodeError(f"payload {ptype} has {body.remaining} trailing bytes")
    if not r.at_end():
        raise DecodeError(f"{r.remaining} bytes after the last payload")
    return tuple(payloads)
