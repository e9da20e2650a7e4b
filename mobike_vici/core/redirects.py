"""RFC 5685 redirect: the gateway identity's wire format and what one IKE_SA remembers
of redirects. Pure; no import of the SA or the engine (both import this).

A REDIRECT / REDIRECTED_FROM notify holds ``GW Ident Type (1) | GW Ident Len (1) |
identity``, and a REDIRECT in an IKE_SA_INIT response then the initiator's nonce, which
is what ties that unauthenticated answer to our request (§3, §8).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..types import IPAddress

GW_IPV4 = 1
GW_IPV6 = 2
GW_FQDN = 3

MAX_REDIRECTS = 5
"""Redirects followed within ``REDIRECT_PERIOD`` before a further one is refused as a
loop (charon's default too)."""
REDIRECT_PERIOD = 300.0


class GatewayIdentityError(ValueError):
    """A REDIRECT / REDIRECTED_FROM notify whose data does not parse."""


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """The new (or original) gateway: an address, or an FQDN (resolved by the daemon,
    never here)."""

    address: IPAddress | None
    fqdn: str | None = None
    nonce: bytes = b""
    """The Ni echoed in an IKE_SA_INIT response's REDIRECT; empty elsewhere."""


def encode_gateway(gateway: IPAddress | str, nonce: bytes = b"") -> bytes:
    """An address, or an FQDN (ASCII, at most 255 octets: ValueError otherwise)."""
    if isinstance(gateway, str):
        kind, body = GW_FQDN, gateway.encode("ascii")
        if not 0 < len(body) <= 255:
            raise ValueError(f"gateway FQDN of {len(body)} octets")
    else:
        kind, body = (GW_IPV4 if gateway.version == 4 else GW_IPV6), gateway.packed
    return bytes((kind, len(body))) + body + nonce


def decode_gateway(data: bytes) -> GatewayIdentity:
    """Raises GatewayIdentityError for a truncated notify, a length that does not fit
    its type, or an unknown type."""
    if len(data) < 2:
        raise GatewayIdentityError("gateway identity truncated")
    kind, length = data[0], data[1]
    if len(data) < 2 + length:
        raise GatewayIdentityError("gateway identity longer than the notify")
    body, nonce = data[2:2 + length], data[2 + length:]
    if kind == GW_IPV4 and length == 4:
        return GatewayIdentity(ipaddress.IPv4Address(body), nonce=nonce)
    if kind == GW_IPV6 and length == 16:
        return GatewayIdentity(ipaddress.IPv6Address(body), nonce=nonce)
    if kind == GW_FQDN and length > 0:
        try:
            return GatewayIdentity(None, body.decode("ascii"), nonce)
        except UnicodeDecodeError:
            raise GatewayIdentityError("gateway FQDN is not ASCII") from None
    raise GatewayIdentityError(f"gateway identity type {kind} with length {length}")


def followable(address: IPAddress) -> bool:
    """An address a client may be sent to: a unicast one of somebody's."""
    return not (address.is_unspecified or address.is_multicast or address.is_loopback
                or (address.version == 4 and address == ipaddress.IPv4Address(
                    "255.255.255.255")))


def pick_address(addresses: Iterable[IPAddress], family: int,
                 reachable: Callable[[IPAddress], bool]) -> IPAddress | None:
    """What an FQDN's addresses lead to: the first followable one of ``family`` (the
    path's), else the first followable one we have a source address for; None: none."""
    usable = [a for a in addresses if followable(a)]
    same = next((a for a in usable if a.version == family), None)
    return same or next((a for a in usable if reachable(a)), None)


@dataclass(slots=True)
class RedirectState:
    """Redirect bookkeeping of one IKE_SA (``IkeSa.redirect``)."""

    history: tuple[float, ...] = ()
    """When the redirects that led to this IKE_SA were followed (the loop limit);
    handed on to the IKE_SA a redirect creates."""
    supported: bool = False
    """Responder: the peer sent REDIRECT_SUPPORTED or REDIRECTED_FROM (§4: only such a
    peer is ever sent a REDIRECT)."""
    came_from: IPAddress | None = None
    """Initiator: the gateway that sent us here (REDIRECTED_FROM in IKE_SA_INIT)."""
    target: IPAddress | None = None
    """An established IKE_SA told to go to this gateway (waits for a MOBIKE move)."""
    resolving: str | None = None
    """Told to go to this FQDN: the daemon resolves it (``Engine.redirect_resolved``)."""
    asked_at: float = 0.0
    """When that REDIRECT arrived (the outage reported is counted from it)."""
    successor: bytes | None = None
    """Our SPI of the IKE_SA being set up at ``target`` (make-before-break)."""
    replaces: bytes | None = None
    """On that new IKE_SA: our SPI of the IKE_SA it replaces once it is up."""
    peer_id: str = ""
    """On that new IKE_SA: the identity the old gateway authenticated as."""

    def allows(self, now: float) -> bool:
        recent = [t for t in self.history if now - t < REDIRECT_PERIOD]
        return len(recent) < MAX_REDIRECTS

    def followed(self, now: float) -> tuple[float, ...]:
        recent = tuple(t for t in self.history if now - t < REDIRECT_PERIOD)
        return (*recent, now)[-MAX_REDIRECTS:]
