"""X.501 distinguished names as charon writes them (``C=CH, O=Org, CN=host``).

charon's string order is the DER order (outermost RDN first), unlike RFC 4514,
so the parser keeps the written order. Comparison is charon's relaxed one:
same attribute types in the same order, values equal ignoring case and the
ASN.1 string type; ``*`` as a whole value in a pattern matches any value.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ..ikev2.der import oid_text, read_tlv

_NAMES: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME, "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
    "E": NameOID.EMAIL_ADDRESS, "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT, "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME, "G": NameOID.GIVEN_NAME, "GN": NameOID.GIVEN_NAME,
    "UID": NameOID.USER_ID, "T": NameOID.TITLE,
}
_PRINT = {NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST",
          NameOID.LOCALITY_NAME: "L", NameOID.ORGANIZATION_NAME: "O",
          NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
          NameOID.EMAIL_ADDRESS: "E", NameOID.DOMAIN_COMPONENT: "DC",
          NameOID.SERIAL_NUMBER: "serialNumber", NameOID.SURNAME: "SN",
          NameOID.GIVEN_NAME: "G", NameOID.USER_ID: "UID", NameOID.TITLE: "T"}

MAX_DN = 4096
"""Bound on a DN we decode from the wire (an ID payload fits in one message anyway)."""


def looks_like_dn(text: str) -> bool:
    head = text.split("=", 1)[0].strip().upper()
    return "=" in text and (head in _NAMES or head.replace(".", "").isdigit())


def _split(text: str) -> list[str]:
    """Split at ``,`` outside quotes; a backslash escapes the next character."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_dn(text: str) -> x509.Name:
    """A DN string into a Name, RDNs in the written order. Raises ValueError."""
    rdns: list[x509.RelativeDistinguishedName] = []
    for part in _split(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"distinguished name {text!r}: '{part}' is not TYPE=value")
        name = key.strip()
        oid = _NAMES.get(name.upper())
        if oid is None:
            if not name.replace(".", "").isdigit():
                raise ValueError(f"distinguished name {text!r}: unknown attribute '{name}'")
            oid = ObjectIdentifier(name)
        value = value.strip()
        try:
            attr = x509.NameAttribute(oid, value)
        except ValueError as exc:
            raise ValueError(f"distinguished name {text!r}: {exc}") from None
        rdns.append(x509.RelativeDistinguishedName([attr]))
    if not rdns:
        raise ValueError(f"distinguished name {text!r} is empty")
    return x509.Name(rdns)


def dn_der(text: str) -> bytes:
    return parse_dn(text).public_bytes()


# --- DER decoding of a Name (cryptography has no public loader for a bare Name) ---------


Rdns = tuple[tuple[str, str], ...]
"""(dotted OID, value) per attribute, in DER order."""


def decode_dn(der: bytes) -> Rdns:
    """The attributes of a DER Name; raises ValueError for anything else."""
    if len(der) > MAX_DN:
        raise ValueError("DN too long")
    tag, body, end = read_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER Name")
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        tag, rdn, pos = read_tlv(body, pos)
        if tag != 0x31:
            raise ValueError("bad RDN")
        inner = 0
        while inner < len(rdn):
            tag, atv, inner = read_tlv(rdn, inner)
            if tag != 0x30:
                raise ValueError("bad attribute")
            tag, oid, rest = read_tlv(atv, 0)
            if tag != 0x06:
                raise ValueError("bad attribute type")
            _, value, _ = read_tlv(atv, rest)
            out.append((oid_text(oid), value.decode("utf-8", "replace")))
    return tuple(out)


def rdns_of(name: x509.Name) -> Rdns:
    return tuple((a.oid.dotted_string, str(a.value)) for a in name)


def dn_to_str(der: bytes) -> str:
    """charon's ``%Y`` for a DN: ``C=CH, O=Org, CN=host``."""
    try:
        rdns = decode_dn(der)
    except ValueError:
        return f"(invalid ASN.1 DN, {len(der)} bytes)"
    names = {oid.dotted_string: short for oid, short in _PRINT.items()}
    return ", ".join(f"{names.get(oid, oid)}={''.join(c if c.isprintable() else '?' for c in v)}"
                     for oid, v in rdns)


def dn_matches(ident: Rdns, pattern: Rdns) -> tuple[bool, int]:
    """(matches, wildcards used): charon's DN match, ``*`` values as wildcards."""
    if len(ident) != len(pattern):
        return False, 0
    wild = 0
    for (oid_a, val_a), (oid_b, val_b) in zip(ident, pattern, strict=True):
        if oid_a != oid_b:
            return False, 0
        if val_b == "*":
            wild += 1
        elif val_a.strip().lower() != val_b.strip().lower():
            return False, 0
    return True, wild
