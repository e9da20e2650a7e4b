"""Proposal strings in strongSwan's syntax, default sets, and proposal selection.

Parsing follows strongSwan 5.9.8 (``proposal_create_from_string`` and its
``check_proposal``): keywords joined by ``-``, the same implied PRF for IKE,
the same mandatory transforms, integrity silently dropped next to AEAD
ciphers, ``noesn`` added to ESP proposals without an ESN keyword. Keywords
strongSwan knows but this implementation does not provide are rejected with a
:class:`ProposalError` naming them; ``default`` expands to strongSwan's
default sets minus those algorithms. Only :class:`ProposalError` escapes the
functions here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from .crypto import EspSuite, IkeSuite, is_aead, supported_dh_groups
from .payloads import Proposal, Transform


class ProposalError(ValueError):
    """A proposal string that strongSwan would not accept either."""


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One configured proposal: acceptable algorithms per transform type, in order."""

    protocol: ProtocolId
    encr: tuple[tuple[EncrId, int], ...]  # (algorithm, key bits)
    integ: tuple[IntegId, ...] = ()
    prf: tuple[PrfId, ...] = ()
    dh: tuple[DhId, ...] = ()
    esn: tuple[EsnId, ...] = ()


# --------------------------------------------------------------------- keywords

_X = TypeVar("_X")

_T = TransformType
_KEYWORDS: dict[str, tuple[TransformType, int, int]] = {
    "aes": (_T.ENCR, EncrId.AES_CBC, 128),
    "aes128": (_T.ENCR, EncrId.AES_CBC, 128),
    "aes192": (_T.ENCR, EncrId.AES_CBC, 192),
    "aes256": (_T.ENCR, EncrId.AES_CBC, 256),
    **{
        f"aes{bits}gcm{suffix}": (_T.ENCR, EncrId.AES_GCM_16, bits)
        for bits in (128, 192, 256)
        for suffix in ("16", "128", "")
    },
    "sha": (_T.INTEG, IntegId.HMAC_SHA1_96, 0),
    "sha1": (_T.INTEG, IntegId.HMAC_SHA1_96, 0),
    "sha256": (_T.INTEG, IntegId.HMAC_SHA2_256_128, 0),
    "sha2_256": (_T.INTEG, IntegId.HMAC_SHA2_256_128, 0),
    "sha384": (_T.INTEG, IntegId.HMAC_SHA2_384_192, 0),
    "sha2_384": (_T.INTEG, IntegId.HMAC_SHA2_384_192, 0),
    "sha512": (_T.INTEG, IntegId.HMAC_SHA2_512_256, 0),
    "sha2_512": (_T.INTEG, IntegId.HMAC_SHA2_512_256, 0),
    "prfsha1": (_T.PRF, PrfId.HMAC_SHA1, 0),
    "prfsha256": (_T.PRF, PrfId.HMAC_SHA2_256, 0),
    "prfsha384": (_T.PRF, PrfId.HMAC_SHA2_384, 0),
    "prfsha512": (_T.PRF, PrfId.HMAC_SHA2_512, 0),
    "none": (_T.DH, DhId.NONE, 0),
    "modpnone": (_T.DH, DhId.NONE, 0),
    "modp2048": (_T.DH, DhId.MODP_2048, 0),
    "modp3072": (_T.DH, DhId.MODP_3072, 0),
    "modp4096": (_T.DH, DhId.MODP_4096, 0),
    "ecp256": (_T.DH, DhId.ECP_256, 0),
    "ecp384": (_T.DH, DhId.ECP_384, 0),
    "ecp521": (_T.DH, DhId.ECP_521, 0),
    "curve25519": (_T.DH, DhId.CURVE_25519, 0),
    "x25519": (_T.DH, DhId.CURVE_25519, 0),
    "noesn": (_T.ESN, EsnId.NO_ESN, 0),
    "esn": (_T.ESN, EsnId.ESN, 0),
}

# Keywords strongSwan 5.9.8 accepts that we do not implement: named in the
# error so an operator sees "not supported" rather than "not recognized".
_UNSUPPORTED_KEYWORDS = """
    null des 3des aes128ctr aes192ctr aes256ctr
    aes128ccm8 aes128ccm64 aes128ccm12 aes128ccm96 aes128ccm16 aes128ccm128 aes128ccm
    aes192ccm8 aes192ccm64 aes192ccm12 aes192ccm96 aes192ccm16 aes192ccm128 aes192ccm
    aes256ccm8 aes256ccm64 aes256ccm12 aes256ccm96 aes256ccm16 aes256ccm128 aes256ccm
    aes128gcm8 aes128gcm64 aes128gcm12 aes128gcm96 aes192gcm8 aes192gcm64 aes192gcm12
    aes192gcm96 aes256gcm8 aes256gcm64 aes256gcm12 aes256gcm96
    aes128gmac aes192gmac aes256gmac chacha20poly1305 chacha20poly1305compat
    blowfish blowfish128 blowfish192 blowfish256 camellia camellia128 camellia192 camellia256
    camellia128ctr camellia192ctr camellia256ctr
    camellia128ccm8 camellia128ccm64 camellia128ccm12 camellia128ccm96 camellia128ccm16
    camellia128ccm128 camellia192ccm8 camellia192ccm64 camellia192ccm12 camellia192ccm96
    camellia192ccm16 camellia192ccm128 camellia256ccm8 camellia256ccm64 camellia256ccm12
    camellia256ccm96 camellia256ccm16 camellia256ccm128
    cast128 serpent serpent128 serpent192 serpent256 twofish twofish128 twofish192 twofish256
    sha1_160 sha256_96 sha2_256_96 md5 md5_128 aesxcbc camelliaxcbc aescmac
    prfmd5 prfaesxcbc prfcamelliaxcbc prfaescmac
    modpnull modp768 modp1024 modp1536 modp6144 modp8192 ecp192 ecp224
    modp1024s160 modp2048s224 modp2048s256 ecp224bp ecp256bp ecp384bp ecp512bp
    curve448 x448 ntru112 ntru128 ntru192 ntru256 newhope128
"""
_UNSUPPORTED = frozenset(_UNSUPPORTED_KEYWORDS.split())

# The PRF strongSwan implies from each integrity algorithm (integ_prf_map).
_INTEG_PRF: dict[IntegId, PrfId] = {
    IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}


# ----------------------------------------------------------------- default sets

_AES_SIZES = (128, 192, 256)
# strongSwan's defaults in the order charon 5.9.8 sends them with the lab's
# plugin set (see tests/unit/ikev2/fixtures/charon-ike-sa-init-request.hex),
# minus what we lack: AES-CTR, Camellia, 3DES, AES-CCM, AES-GCM-8/12,
# ChaCha20-Poly1305, Brainpool, Curve448, MODP-6144/8192.
_DEFAULT_INTEG = (
    IntegId.HMAC_SHA2_256_128,
    IntegId.HMAC_SHA2_384_192,
    IntegId.HMAC_SHA2_512_256,
    IntegId.HMAC_SHA1_96,
)
_DEFAULT_PRF = (PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512, PrfId.HMAC_SHA1)
_DEFAULT_DH = (
    DhId.CURVE_25519,
    DhId.ECP_256,
    DhId.ECP_384,
    DhId.ECP_521,
    DhId.MODP_3072,
    DhId.MODP_4096,
    DhId.MODP_2048,
)


def _default_pair(protocol: ProtocolId) -> tuple[ProposalSpec, ProposalSpec]:
    """(classic, AEAD) as ``proposal_create_default`` / ``proposal_create_default_aead``."""
    cbc = tuple((EncrId.AES_CBC, bits) for bits in _AES_SIZES)
    gcm = tuple((EncrId.AES_GCM_16, bits) for bits in _AES_SIZES)
    if protocol == ProtocolId.IKE:
        return (
            ProposalSpec(protocol, cbc, _DEFAULT_INTEG, _DEFAULT_PRF, _DEFAULT_DH),
            ProposalSpec(protocol, gcm, (), _DEFAULT_PRF, _DEFAULT_DH),
        )
    if protocol == ProtocolId.ESP:
        noesn = (EsnId.NO_ESN,)
        return (
            ProposalSpec(protocol, cbc, _DEFAULT_INTEG, esn=noesn),
            ProposalSpec(protocol, gcm, esn=noesn),
        )
    raise ProposalError(f"no default proposals for {protocol!r}")


def absent_default(protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    """What charon configures when the key is absent (vici_config.c): for IKE the
    ``default`` keyword's order, for ESP the AEAD proposal first, then the classic one."""
    classic, aead = _default_pair(protocol)
    return (aead, classic) if protocol == ProtocolId.ESP else (classic, aead)


# ---------------------------------------------------------------------- parsing


def parse_proposals(text: str, protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    """Parse e.g. ``"aes128-sha256-x25519, default"`` for IKE or ESP."""
    if protocol not in (ProtocolId.IKE, ProtocolId.ESP):
        raise ProposalError(f"proposals for {protocol!r} are not supported")
    specs: list[ProposalSpec] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ProposalError(f"empty proposal in {text!r}")
        if item.lower() == "default":
            specs.extend(_default_pair(protocol))
        else:
            specs.append(parse_proposal(item, protocol))
    return tuple(specs)


def parse_proposal(text: str, protocol: ProtocolId) -> ProposalSpec:
    """Parse one ``-``-joined proposal (no ``default``, no commas)."""
    encr: list[tuple[EncrId, int]] = []
    integ: list[IntegId] = []
    prf: list[PrfId] = []
    dh: list[DhId] = []
    esn: list[EsnId] = []
    for raw in text.split("-"):
        token = raw.strip(" ")
        entry = _KEYWORDS.get(token)
        if entry is None:
            if token in _UNSUPPORTED:
                raise ProposalError(f"algorithm '{token}' is not supported in {text!r}")
            raise ProposalError(f"algorithm '{token}' not recognized in {text!r}")
        ttype, alg, bits = entry
        if ttype == _T.ENCR:
            _add(encr, (EncrId(alg), bits))
        elif ttype == _T.INTEG:
            _add(integ, IntegId(alg))
        elif ttype == _T.PRF:
            _add(prf, PrfId(alg))
        elif ttype == _T.DH:
            _add(dh, DhId(alg))
        else:
            _add(esn, EsnId(alg))

    if protocol == ProtocolId.IKE:
        if not prf:
            # strongSwan assumes the PRF matching each integrity algorithm.
            for algo in integ:
                _add(prf, _INTEG_PRF[algo])
        if not prf:
            raise ProposalError(f"a PRF algorithm is mandatory in IKE proposals: {text!r}")
        dh = [g for g in dh if g != DhId.NONE]
        if not dh:
            raise ProposalError(f"a DH group is mandatory in IKE proposals: {text!r}")
    else:
        prf = []  # strongSwan drops PRFs from ESP proposals

    if not encr:
        raise ProposalError(f"an encryption algorithm is mandatory in {protocol.name} "
                            f"proposals: {text!r}")
    aead = [is_aead(alg) for alg, _ in encr]
    if any(aead) and not all(aead):
        raise ProposalError("classic and combined-mode (AEAD) encryption algorithms "
                            f"can't be contained in the same proposal: {text!r}")
    if all(aead):
        integ = []  # RFC 7296 §3.3: no integrity transform next to an AEAD
    elif protocol == ProtocolId.IKE and not integ:
        raise ProposalError("an integrity algorithm is mandatory in IKE proposals "
                            f"with classic encryption: {text!r}")
    if protocol == ProtocolId.ESP and not esn:
        esn = [EsnId.NO_ESN]
    return ProposalSpec(protocol, tuple(encr), tuple(integ), tuple(prf), tuple(dh), tuple(esn))


def _add(items: list[_X], item: _X) -> None:
    if item not in items:
        items.append(item)


# -------------------------------------------------------------------- payloads

# The order charon writes transforms in (proposal_substructure.c).
_ORDER = (_T.ENCR, _T.INTEG, _T.PRF, _T.DH, _T.ESN)


def _spec_transforms(spec: ProposalSpec, include_dh: bool) -> dict[int, list[tuple[int, int]]]:
    """Per transform type: (id, key bits or 0) in preference order."""
    table: dict[int, list[tuple[int, int]]] = {
        _T.ENCR: [(int(a), b) for a, b in spec.encr],
        _T.INTEG: [(int(a), 0) for a in spec.integ],
        _T.PRF: [(int(a), 0) for a in spec.prf],
        _T.DH: [(int(a), 0) for a in spec.dh] if include_dh else [],
        _T.ESN: [(int(a), 0) for a in spec.esn],
    }
    return {t: v for t, v in table.items() if v}


def to_payload(spec: ProposalSpec, num: int, spi: bytes, *, include_dh: bool = True) -> Proposal:
    """Encode ``spec`` as proposal ``num``.

    ``include_dh=False`` leaves the DH transforms out, for the CHILD_SA offered
    inside IKE_AUTH, which has no KE payload (charon strips them too).
    """
    transforms = [
        Transform(ttype, alg, bits or None)
        for ttype in _ORDER
        for alg, bits in _spec_transforms(spec, include_dh).get(ttype, [])
    ]
    return Proposal(num=num, protocol=spec.protocol, spi=spi, transforms=tuple(transforms))


# -------------------------------------------------------------------- selection


def select(
    ours: Sequence[ProposalSpec],
    theirs: Sequence[Proposal],
    protocol: ProtocolId,
    *,
    skip_dh: bool = False,
) -> Proposal | None:
    """Choose as charon does (our order first); the result has one transform per type.

    For each of our proposals, for each of theirs, take per transform type the
    first of our algorithms they also offer; the result carries their number
    and SPI. ``skip_dh`` ignores DH transforms on both sides (CHILD_SA created
    in IKE_AUTH). ESN deviates from charon on purpose: if both sides allow
    ``noesn`` it wins, so 32-bit sequence numbers are used whenever possible.
    """
    for spec in ours:
        if spec.protocol != protocol:
            continue
        mine = _spec_transforms(spec, include_dh=not skip_dh)
        for proposal in theirs:
            if proposal.protocol != protocol:
                continue
            chosen = _select_one(mine, proposal, protocol, skip_dh)
            if chosen is not None:
                return Proposal(proposal.num, protocol, proposal.spi, chosen)
    return None


def _select_one(
    mine: dict[int, list[tuple[int, int]]],
    proposal: Proposal,
    protocol: ProtocolId,
    skip_dh: bool,
) -> tuple[Transform, ...] | None:
    offered: dict[int, list[tuple[int, int]]] = {}
    for t in proposal.transforms:
        if t.unknown_attrs:
            continue  # RFC 7296 §3.3.6: a transform with unknown attributes is unusable
        offered.setdefault(int(t.type), []).append((t.id, t.key_length or 0))
    if skip_dh:
        offered.pop(_T.DH, None)

    picked: dict[int, tuple[int, int]] = {}
    # ENCR first: an AEAD choice makes the integrity type irrelevant.
    types = sorted(set(mine) | set(offered), key=lambda t: (t != _T.ENCR, t))
    for ttype in types:
        if ttype == _T.INTEG and _T.ENCR in picked and is_aead(picked[_T.ENCR][0]):
            continue
        ours_list = mine.get(ttype, [])
        theirs_list = offered.get(ttype, [])
        if ttype == _T.DH and protocol != ProtocolId.IKE and (not ours_list or not theirs_list):
            # PFS is optional for ESP: a missing side matches if the other allows NONE.
            if (0, 0) in ours_list or (0, 0) in theirs_list or not (ours_list or theirs_list):
                continue
            return None
        if ttype == _T.ESN and (EsnId.NO_ESN, 0) in ours_list and (
            EsnId.NO_ESN, 0) in theirs_list:
            picked[ttype] = (EsnId.NO_ESN, 0)
            continue
        match = next((alg for alg in ours_list if alg in theirs_list), None)
        if match is None:
            return None
        if match[0] == 0 and ttype != _T.ESN:
            continue  # NONE is accepted but not a transform to use
        picked[ttype] = match
    return tuple(
        Transform(t, alg, bits or None)
        for t in _ORDER
        if t in picked
        for alg, bits in (picked[t],)
    )


# --------------------------------------------------------------------- suites


def _one(chosen: Proposal, ttype: TransformType) -> Transform | None:
    found = [t for t in chosen.transforms if t.type == ttype]
    if len(found) > 1:
        raise ProposalError(f"chosen proposal has {len(found)} {ttype.name} transforms")
    return found[0] if found else None


def _encr(chosen: Proposal) -> tuple[EncrId, int]:
    t = _one(chosen, _T.ENCR)
    if t is None:
        raise ProposalError("chosen proposal has no encryption algorithm")
    try:
        encr = EncrId(t.id)
    except ValueError:
        raise ProposalError(f"unsupported encryption algorithm {t.id}") from None
    if encr not in (EncrId.AES_CBC, EncrId.AES_GCM_16) or t.key_length not in _AES_SIZES:
        raise ProposalError(f"unsupported encryption algorithm {encr.name}-{t.key_length}")
    return encr, t.key_length


def _integ(chosen: Proposal, encr: EncrId, required: bool) -> IntegId | None:
    t = _one(chosen, _T.INTEG)
    if is_aead(encr):
        if t is not None and t.id != IntegId.NONE:
            raise ProposalError("AEAD proposal must not carry an integrity algorithm")
        return None
    if t is None or t.id == IntegId.NONE:
        if required:
            raise ProposalError("chosen proposal has no integrity algorithm")
        return None
    if t.id not in set(_INTEG_PRF):
        raise ProposalError(f"unsupported integrity algorithm {t.id}")
    return IntegId(t.id)


def _dh(chosen: Proposal) -> DhId | None:
    t = _one(chosen, _T.DH)
    if t is None or t.id == DhId.NONE:
        return None
    if t.id not in {int(g) for g in supported_dh_groups()}:
        raise ProposalError(f"unsupported DH group {t.id}")
    return DhId(t.id)


def ike_suite(chosen: Proposal) -> IkeSuite:
    """The IKE suite of a selected (one transform per type) proposal."""
    encr, bits = _encr(chosen)
    integ = _integ(chosen, encr, required=True)
    p = _one(chosen, _T.PRF)
    if p is None or p.id not in {int(x) for x in _DEFAULT_PRF}:
        raise ProposalError(f"unsupported or missing PRF {p.id if p else None}")
    dh = _dh(chosen)
    if dh is None:
        raise ProposalError("chosen IKE proposal has no DH group")
    return IkeSuite(encr=encr, encr_key_bits=bits, integ=integ, prf=PrfId(p.id), dh=dh)


def esp_suite(chosen: Proposal) -> EspSuite:
    """The ESP suite of a selected proposal; ``dh`` set means PFS."""
    encr, bits = _encr(chosen)
    integ = _integ(chosen, encr, required=False)
    e = _one(chosen, _T.ESN)
    esn = e is not None and e.id == EsnId.ESN
    return EspSuite(encr=encr, encr_key_bits=bits, integ=integ, dh=_dh(chosen), esn=esn)


def preferred_dh(specs: Iterable[ProposalSpec]) -> DhId | None:
    """The group an initiator sends its KE payload for: the first one configured."""
    for spec in specs:
        for group in spec.dh:
            if group != DhId.NONE:
                return group
    return None


# ------------------------------------------------------------------ formatting

_NAMES: dict[int, type[EncrId] | type[IntegId] | type[PrfId] | type[DhId]] = {
    _T.ENCR: EncrId,
    _T.INTEG: IntegId,
    _T.PRF: PrfId,
    _T.DH: DhId,
}


def _alg_name(t: Transform) -> str:
    enum = _NAMES.get(int(t.type))
    if enum is not None:
        try:
            name = enum(t.id).name
        except ValueError:
            pass
        else:
            return f"PRF_{name}" if t.type == _T.PRF else name
    return f"UNKNOWN_{int(t.type)}_{t.id}"


def describe(chosen: Proposal) -> str:
    """A selected proposal as ``swanctl --list-sas`` prints it.

    E.g. ``AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519`` for
    IKE and ``AES_GCM_16-256/MODP_2048/ESN`` for ESP (PFS group, ESN flag).
    """
    parts: list[str] = []
    for ttype in (_T.ENCR, _T.INTEG, _T.PRF, _T.DH):
        for t in chosen.transforms:
            if t.type != ttype or (ttype in (_T.INTEG, _T.DH) and t.id == 0):
                continue
            name = _alg_name(t)
            parts.append(f"{name}-{t.key_length}" if t.key_length else name)
    if any(t.type == _T.ESN and t.id == EsnId.ESN for t in chosen.transforms):
        parts.append("ESN")
    return "/".join(parts)


