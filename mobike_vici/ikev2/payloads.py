"""IKEv2 payloads (RFC 7296 §3) as frozen dataclasses, and their pure encoders/decoders.

Every payload class carries its ``payload_type``. Decoding any byte string either
returns payloads or raises :class:`DecodeError`; nothing else escapes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from .constants import (
    AuthMethod,
    CfgType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)


class DecodeError(ValueError):
    """The bytes are not a well-formed IKEv2 message or payload."""


@dataclass(frozen=True, slots=True)
class Transform:
    type: TransformType
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    num: int
    protocol: ProtocolId
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
    | TSi | TSr | CP | EAP | Encrypted | UnknownPayload
)
