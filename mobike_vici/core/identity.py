"""IKE identities: swanctl's strings, their wire form (RFC 7296 §3.5), matching, PSK lookup.

Parsing follows strongSwan 5.9.8's ``identification_create_from_string`` for
the common forms; matching and printing follow ``identification_t.matches`` and
charon's ``%Y`` format, so ``local-id``/``remote-id`` read like swanctl's.

Supported strings::

    10.0.0.1, 2001:db8::1        ID_IPV4_ADDR / ID_IPV6_ADDR
    user@example.com             ID_RFC822_ADDR
    @example.com, example.com    ID_FQDN (a leading "@" keeps a name from being read as an IP)
    @@user@example.com           ID_RFC822_ADDR ("@@" forces it)
    @#0a0b0c                     ID_KEY_ID from hex
    fqdn: dns: email: rfc822: userfqdn: keyid: ipv4: ipv6:   explicit type, "#hex" allowed
    {11}:text                    numeric type
    %any, %any6, *, "", 0.0.0.0, ::   any identity (only as a pattern)

Subnets and ranges (``10.0.0.0/8``, ``10.0.0.1-10.0.0.9``) work as patterns in
:func:`identity_matches` and secrets, not as identities on the wire. X.501 DNs
(``C=CH, O=strongSwan, CN=x``) are not supported and raise ValueError.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..config.model import SharedSecret
from ..ikev2.constants import IdType
from ..types import IPAddress
from .dn import decode_dn, dn_der, dn_matches, dn_to_str, looks_like_dn, rdns_of
from .ts import addr_to_str

# Identity types that exist only inside charon's config (IKEv1 leftovers and ANY).
ID_ANY = 0
ID_IPV4_ADDR_SUBNET = 4
ID_IPV6_ADDR_SUBNET = 6
ID_IPV4_ADDR_RANGE = 12
ID_IPV6_ADDR_RANGE = 13

_ANY_STRINGS = frozenset({"", "%any", "%any6", "0.0.0.0", "*", "::", "0::0"})

# Case-insensitive prefixes, as in identification.c; the rest of the string is
# the encoding, or hex after "#".
_PREFIXES: tuple[tuple[str, int], ...] = (
    ("ipv4:", IdType.ID_IPV4_ADDR),
    ("ipv6:", IdType.ID_IPV6_ADDR),
    ("ipv4net:", ID_IPV4_ADDR_SUBNET),
    ("ipv6net:", ID_IPV6_ADDR_SUBNET),
    ("ipv4range:", ID_IPV4_ADDR_RANGE),
    ("ipv6range:", ID_IPV6_ADDR_RANGE),
    ("rfc822:", IdType.ID_RFC822_ADDR),
    ("email:", IdType.ID_RFC822_ADDR),
    ("userfqdn:", IdType.ID_RFC822_ADDR),
    ("fqdn:", IdType.ID_FQDN),
    ("dns:", IdType.ID_FQDN),
    ("asn1dn:", IdType.ID_DER_ASN1_DN),
    ("asn1gn:", IdType.ID_DER_ASN1_GN),
    ("xmppaddr:", IdType.ID_DER_ASN1_GN),
    ("keyid:", IdType.ID_KEY_ID),
)

_SHA1_LEN = 20


class Match(IntEnum):
    """How well an identity matches a pattern (charon's id_match_t); higher is better."""

    NONE = 0
    ANY = 1
    MAX_WILDCARDS = 2
    ONE_WILDCARD = 19
    PERFECT = 20


@dataclass(frozen=True, slots=True)
class _Id:
    type: int
    data: bytes


IdentityLike = str | tuple[int, bytes]
"""A config string, or a ``(type, data)`` pair as received in IDi/IDr."""


def _from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise ValueError(f"invalid hex identity: #{text}") from None


def _ip_string(text: str, version: int) -> _Id | None:
    """An address, subnet or range of ``version``; None if ``text`` is none of them."""
    cls: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    )
    if "%" in text:
        return None  # inet_pton knows no scope ids; ipaddress would accept fe80::1%eth0
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if net.version != version:
                return None
            kind = ID_IPV4_ADDR_SUBNET if version == 4 else ID_IPV6_ADDR_SUBNET
            return _Id(kind, net.network_address.packed + net.netmask.packed)
        if "-" in text:
            low_text, high_text = text.split("-", 1)
            low, high = cls(low_text), cls(high_text)
            if int(low) > int(high):
                return None
            kind = ID_IPV4_ADDR_RANGE if version == 4 else ID_IPV6_ADDR_RANGE
            return _Id(kind, low.packed + high.packed)
        addr = cls(text)
    except ValueError:
        return None
    kind = IdType.ID_IPV4_ADDR if version == 4 else IdType.ID_IPV6_ADDR
    return _Id(kind, addr.packed)


def _with_prefix(text: str) -> _Id | None:
    lowered = text.lower()
    for prefix, kind in _PREFIXES:
        if not lowered.startswith(prefix):
            continue
        rest = text[len(prefix):]
        if rest.startswith("#"):
            return _Id(kind, _from_hex(rest[1:]))
        if kind in (IdType.ID_DER_ASN1_DN, IdType.ID_DER_ASN1_GN):
            raise ValueError(f"identity {text!r}: only the #hex form of {prefix} is supported")
        if prefix.startswith("ipv"):
            # charon 5.9.8 stores the text itself here, which no peer can match;
            # the binary address is what was meant.
            version = 4 if prefix.startswith("ipv4") else 6
            parsed = _ip_string(rest, version)
            if parsed is None or parsed.type != kind:
                raise ValueError(f"identity {text!r}: not a valid {prefix} value")
            return parsed
        return _Id(kind, rest.encode())
    return None


def _with_num_type(text: str) -> _Id | None:
    if not text.startswith("{"):
        return None
    close = text.find("}:")
    if close < 0:
        return None
    try:
        kind = int(text[1:close], 0)
    except ValueError:
        return None
    if not 0 <= kind <= 255:
        raise ValueError(f"identity {text!r}: type out of range")
    rest = text[close + 2:]
    return _Id(kind, _from_hex(rest[1:]) if rest.startswith("#") else rest.encode())


def _parse(text: str | None) -> _Id:
    """Any identity string, including patterns (ANY, subnets, ranges)."""
    if text is None:
        return _Id(ID_ANY, b"")
    parsed = _with_prefix(text) or _with_num_type(text)
    if parsed is not None:
        return parsed
    if "=" in text and looks_like_dn(text):
        return _Id(IdType.ID_DER_ASN1_DN, dn_der(text))
    if "@" not in text:
        if text in _ANY_STRINGS:
            return _Id(ID_ANY, b"")
        if ":" not in text:
            return _ip_string(text, 4) or _Id(IdType.ID_FQDN, text.encode())
        return _ip_string(text, 6) or _Id(IdType.ID_KEY_ID, text.encode())
    if text.startswith("@#"):
        return _Id(IdType.ID_KEY_ID, _from_hex(text[2:]))
    if text.startswith("@@"):
        return _Id(IdType.ID_RFC822_ADDR, text[2:].encode())
    if text.startswith("@"):
        return _Id(IdType.ID_FQDN, text[1:].encode())
    return _Id(IdType.ID_RFC822_ADDR, text.encode())


def _coerce(value: IdentityLike | None) -> _Id:
    if value is None or isinstance(value, str):
        return _parse(value)
    return _Id(int(value[0]), bytes(value[1]))


def parse_identity(text: str) -> tuple[IdType, bytes]:
    """The IDi/IDr type and data for a swanctl identity string.

    Raises ValueError for ``%any`` and other wildcards-only forms, subnets and
    ranges (patterns, not identities), DNs and malformed values.
    """
    parsed = _parse(text)
    if parsed.type == ID_ANY:
        raise ValueError(f"identity {text!r} matches anything and cannot be sent")
    try:
        kind = IdType(parsed.type)
    except ValueError:
        raise ValueError(f"identity {text!r}: type {parsed.type} cannot be sent") from None
    return kind, parsed.data


def is_any_identity(text: str | None) -> bool:
    """True for None, ``%any`` and its spellings: the identity is not constrained."""
    return text is None or text in _ANY_STRINGS


def default_identity(addr: IPAddress) -> tuple[IdType, bytes]:
    """The identity charon uses when none is configured: the IP address in use."""
    kind = IdType.ID_IPV4_ADDR if addr.version == 4 else IdType.ID_IPV6_ADDR
    return kind, addr.packed


def _printable(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in data)


def _sanitized(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in data)


def _netmask_bits(mask: bytes) -> int:
    return bin(int.from_bytes(mask, "big")).count("1")


def _addr(data: bytes) -> IPAddress:
    return ipaddress.ip_address(data)


def identity_to_str(id_type: int, data: bytes) -> str:
    """The identity as charon prints it (``%Y``), e.g. in ``swanctl --list-sas``."""
    kind = int(id_type)
    if kind == ID_ANY:
        return "%any"
    if kind in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        size = 4 if kind == IdType.ID_IPV4_ADDR else 16
        if len(data) < size:
            return f"(invalid {IdType(kind).name})"
        return addr_to_str(_addr(data[:size]))
    if kind in (ID_IPV4_ADDR_SUBNET, ID_IPV6_ADDR_SUBNET, ID_IPV4_ADDR_RANGE, ID_IPV6_ADDR_RANGE):
        size = 4 if kind in (ID_IPV4_ADDR_SUBNET, ID_IPV4_ADDR_RANGE) else 16
        if len(data) < 2 * size:
            return "(invalid address identity)"
        low = addr_to_str(_addr(data[:size]))
        if kind in (ID_IPV4_ADDR_SUBNET, ID_IPV6_ADDR_SUBNET):
            return f"{low}/{_netmask_bits(data[size:2 * size])}"
        return f"{low}-{addr_to_str(_addr(data[size:2 * size]))}"
    if kind in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return _sanitized(data)
    if kind == IdType.ID_DER_ASN1_DN:
        return dn_to_str(data)
    if kind == IdType.ID_DER_ASN1_GN:
        return "(ASN.1 general name)"
    if kind == IdType.ID_KEY_ID:
        if _printable(data) and len(data) != _SHA1_LEN:
            return data.decode("ascii")
        return ":".join(f"{b:02x}" for b in data)
    return f"(unknown ID type: {kind})"


def _match_string(ident: _Id, pattern: _Id) -> Match:
    if ident.data.lower() == pattern.data.lower() and b"\0" not in ident.data + pattern.data:
        return Match.PERFECT
    if not pattern.data or len(ident.data) < len(pattern.data):
        return Match.NONE
    if pattern.data.startswith(b"*"):
        if len(pattern.data) == 1:
            return Match.ANY  # a lone "*" is no better than %any
        tail = pattern.data[1:]
        if ident.data[-len(tail):].lower() == tail.lower():
            return Match.ONE_WILDCARD
    return Match.NONE


def _match_range(ident: _Id, pattern: _Id) -> Match:
    size = len(ident.data)
    if len(pattern.data) != 2 * size:
        return Match.NONE
    addr = int.from_bytes(ident.data, "big")
    low = int.from_bytes(pattern.data[:size], "big")
    high = int.from_bytes(pattern.data[size:], "big")
    if pattern.type in (ID_IPV4_ADDR_SUBNET, ID_IPV6_ADDR_SUBNET):
        bits = _netmask_bits(pattern.data[size:])
        if bits == 0:
            return Match.MAX_WILDCARDS
        if bits == 8 * size:
            return Match.PERFECT if addr == low else Match.NONE
        return Match.ONE_WILDCARD if addr & high == low & high else Match.NONE
    if not low <= addr <= high:
        return Match.NONE
    return Match.PERFECT if low == high else Match.ONE_WILDCARD


_RANGE_PATTERNS: dict[int, tuple[int, int]] = {
    IdType.ID_IPV4_ADDR: (ID_IPV4_ADDR_SUBNET, ID_IPV4_ADDR_RANGE),
    IdType.ID_IPV6_ADDR: (ID_IPV6_ADDR_SUBNET, ID_IPV6_ADDR_RANGE),
}


def _matches(ident: _Id, pattern: _Id) -> Match:
    """charon's ``ident->matches(ident, pattern)``."""
    if pattern.type == ID_ANY:
        return Match.ANY
    if ident.type == ID_ANY:
        return Match.NONE
    if ident.type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return _match_string(ident, pattern) if ident.type == pattern.type else Match.NONE
    if ident.type == pattern.type and ident.data == pattern.data:
        return Match.PERFECT
    if ident.type == IdType.ID_DER_ASN1_DN == pattern.type:
        try:
            ok, wild = dn_matches(decode_dn(ident.data), decode_dn(pattern.data))
        except ValueError:
            return Match.NONE
        if not ok:
            return Match.NONE
        return Match.PERFECT if wild == 0 else Match.ONE_WILDCARD
    ranges = _RANGE_PATTERNS.get(ident.type)
    if ranges is not None and pattern.type in ranges:
        return _match_range(ident, pattern)
    return Match.NONE


def match_identity(config_id: str | None, id_type: int, data: bytes) -> Match:
    """How well a received identity matches a configured one (NONE if it does not)."""
    return _matches(_Id(int(id_type), data), _parse(config_id))


def identity_matches(config_id: str | None, id_type: int, data: bytes) -> bool:
    """Is the received ``(id_type, data)`` acceptable for ``config_id``?

    None and ``%any`` accept anything; ``*@example.com`` or ``@*.example.com``
    accept names ending in what follows the ``*`` (case-insensitive); an IP
    subnet or range accepts addresses inside it.
    """
    return match_identity(config_id, id_type, data) != Match.NONE


def cert_has_identity(cert: x509.Certificate, id_type: int, data: bytes) -> bool:
    """Is the identity bound to ``cert`` (charon's ``has_subject``)? The subject DN, a
    subjectAltName of the identity's type (DNS, email, IP), or the key identifier."""
    kind = int(id_type)
    if kind == IdType.ID_DER_ASN1_DN:
        try:
            return dn_matches(decode_dn(data), rdns_of(cert.subject)) == (True, 0)
        except ValueError:
            return False
    # No subjectAltName is no names (cryptography refuses to build an empty one).
    sans: list[x509.GeneralName] = []
    try:
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        return False  # an extension cryptography cannot parse binds nothing
    if kind == IdType.ID_FQDN:
        name = data.decode("ascii", "replace").lower()
        return any(isinstance(n, x509.DNSName) and n.value.lower() == name for n in sans)
    if kind == IdType.ID_RFC822_ADDR:
        name = data.decode("ascii", "replace").lower()
        return any(isinstance(n, x509.RFC822Name) and n.value.lower() == name for n in sans)
    if kind in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        try:
            addr = ipaddress.ip_address(data)
        except ValueError:
            return False
        return any(isinstance(n, x509.IPAddress) and n.value == addr for n in sans)
    if kind == IdType.ID_KEY_ID:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except (x509.ExtensionNotFound, ValueError):
            ski = b""
        return data in (ski, key_id(cert))
    return False


def key_id(cert: x509.Certificate) -> bytes:
    """SHA-1 over the subjectPublicKeyInfo: CERTREQ's CA hash (RFC 7296 §3.7), charon's keyid."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki, usedforsecurity=False).digest()


def _owner_match(me: _Id, owners: Sequence[str]) -> Match:
    best = Match.NONE
    for text in owners or ("%any",):  # swanctl gives an id-less secret the owner %any
        try:
            owner = _parse(text)
        except ValueError:
            continue  # an owner we cannot parse (a DN) never matches
        best = max(best, _matches(me, owner))
    return best


def _ranked(
    secrets: Sequence[SharedSecret], local: IdentityLike | None, remote: IdentityLike | None
) -> list[tuple[SharedSecret, Match, Match]]:
    me, other = _coerce(local), _coerce(remote)
    out: list[tuple[SharedSecret, Match, Match]] = []
    # charon's in-memory set inserts each loaded secret at the head, so it
    # enumerates (and breaks ties in favour of) the secret defined last.
    for secret in reversed(secrets):
        my_match = _owner_match(me, secret.ids)
        other_match = _owner_match(other, secret.ids)
        if my_match or other_match:
            out.append((secret, my_match, other_match))
    return out


def find_psk(
    secrets: Sequence[SharedSecret], local: IdentityLike | None, remote: IdentityLike | None
) -> bytes | None:
    """The pre-shared key for ``local`` and ``remote``, chosen as charon's get_shared does.

    Each secret's ids are matched against both identities (an id may name
    either side). The best match for the remote identity wins, then the best
    for the local one: a secret listing both ids beats one naming one of them,
    which beats one without ids (``%any``); a wildcard beats ``%any``. On a tie
    the secret defined last wins. Identities may be config strings or
    received ``(type, data)`` pairs; None means ``%any``.
    """
    best: SharedSecret | None = None
    best_me, best_other = Match.NONE, Match.NONE
    for secret, my_match, other_match in _ranked(secrets, local, remote):
        if other_match > best_other or (other_match == best_other and my_match > best_me):
            best, best_me, best_other = secret, my_match, other_match
        if best_me == Match.PERFECT and best_other == Match.PERFECT:
            break
    return best.secret if best is not None else None
