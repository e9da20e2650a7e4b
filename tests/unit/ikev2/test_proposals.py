"""strongSwan proposal strings: parsing, defaults, payload encoding, selection, suites, names."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.ikev2.constants import (
    DhId,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from mobike_vici.ikev2.crypto import EspSuite, IkeSuite, supported_dh_groups
from mobike_vici.ikev2.payloads import Proposal, Transform
from mobike_vici.ikev2.proposals import (
    ProposalError,
    ProposalSpec,
    describe,
    esp_suite,
    ike_suite,
    parse_proposal,
    parse_proposals,
    preferred_dh,
    select,
    to_payload,
)

IKE = ProtocolId.IKE
ESP = ProtocolId.ESP
T = TransformType
FIXTURES = Path(__file__).parent / "fixtures"


def one(text: str, protocol: ProtocolId = IKE) -> ProposalSpec:
    specs = parse_proposals(text, protocol)
    assert len(specs) == 1
    return specs[0]


def offer(text: str, protocol: ProtocolId, num: int = 1, spi: bytes = b"") -> Proposal:
    return to_payload(one(text, protocol), num, spi)


# ------------------------------------------------------------------- parsing


def test_interop_proposal_aes128_sha256_x25519() -> None:
    assert one("aes128-sha256-x25519") == ProposalSpec(
        IKE, ((EncrId.AES_CBC, 128),), (IntegId.HMAC_SHA2_256_128,),
        (PrfId.HMAC_SHA2_256,), (DhId.CURVE_25519,))


def test_interop_proposal_aes256gcm16_prfsha384_ecp384() -> None:
    assert one("aes256gcm16-prfsha384-ecp384") == ProposalSpec(
        IKE, ((EncrId.AES_GCM_16, 256),), (), (PrfId.HMAC_SHA2_384,), (DhId.ECP_384,))


def test_interop_proposal_aes128_sha1_modp2048() -> None:
    assert one("aes128-sha1-modp2048") == ProposalSpec(
        IKE, ((EncrId.AES_CBC, 128),), (IntegId.HMAC_SHA1_96,), (PrfId.HMAC_SHA1,),
        (DhId.MODP_2048,))


def test_esp_proposals_get_noesn_drop_prf_and_dh_means_pfs() -> None:
    assert one("aes128-sha256-x25519", ESP) == ProposalSpec(
        ESP, ((EncrId.AES_CBC, 128),), (IntegId.HMAC_SHA2_256_128,), (), (DhId.CURVE_25519,),
        (EsnId.NO_ESN,))
    assert one("aes256gcm16-prfsha384", ESP) == ProposalSpec(
        ESP, ((EncrId.AES_GCM_16, 256),), esn=(EsnId.NO_ESN,))
    assert one("aes128-sha1-esn-noesn", ESP).esn == (EsnId.ESN, EsnId.NO_ESN)


def test_explicit_prf_wins_over_implied_one() -> None:
    spec = one("aes128-aes256-sha256-sha1-prfsha512-ecp256-modp3072")
    assert spec.encr == ((EncrId.AES_CBC, 128), (EncrId.AES_CBC, 256))
    assert spec.integ == (IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA1_96)
    assert spec.prf == (PrfId.HMAC_SHA2_512,)
    assert spec.dh == (DhId.ECP_256, DhId.MODP_3072)


def test_implied_prfs_follow_integrity_order() -> None:
    assert one("aes128-sha384-sha1-x25519").prf == (PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA1)


def test_aead_with_integrity_derives_prf_then_drops_integrity() -> None:
    # strongSwan's check_proposal: PRF from the integrity algorithm, then the
    # integrity algorithm goes because the cipher is AEAD.
    spec = one("aes128gcm16-sha256-x25519")
    assert spec.integ == ()
    assert spec.prf == (PrfId.HMAC_SHA2_256,)


@pytest.mark.parametrize(("alias", "expected"), [
    ("aes", (EncrId.AES_CBC, 128)),
    ("aes192", (EncrId.AES_CBC, 192)),
    ("aes128gcm128", (EncrId.AES_GCM_16, 128)),
    ("aes192gcm16", (EncrId.AES_GCM_16, 192)),
    ("aes256gcm", (EncrId.AES_GCM_16, 256)),
])
def test_encryption_aliases(alias: str, expected: tuple[EncrId, int]) -> None:
    assert one(f"{alias}-prfsha256-sha256-ecp256").encr == (expected,)


def test_dh_aliases_and_modpnone() -> None:
    assert one("aes-sha-curve25519").dh == (DhId.CURVE_25519,)
    assert one("aes-sha2_512-ecp521").integ == (IntegId.HMAC_SHA2_512_256,)
    assert one("aes-sha256-modpnone-ecp384").dh == (DhId.ECP_384,)  # NONE dropped for IKE
    assert one("aes-sha256-modpnone", ESP).dh == (DhId.NONE,)  # explicit "no PFS"


def test_default_keyword_expands_to_classic_then_aead() -> None:
    classic, aead = parse_proposals("default", IKE)
    assert classic.encr == tuple((EncrId.AES_CBC, b) for b in (128, 192, 256))
    assert classic.integ == (IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192,
                             IntegId.HMAC_SHA2_512_256, IntegId.HMAC_SHA1_96)
    assert classic.prf == (PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384, PrfId.HMAC_SHA2_512,
                           PrfId.HMAC_SHA1)
    assert aead.encr == tuple((EncrId.AES_GCM_16, b) for b in (128, 192, 256))
    assert aead.integ == ()
    assert aead.prf == classic.prf
    for spec in (classic, aead):
        assert set(spec.dh) <= supported_dh_groups()
        assert DhId.CURVE_25519 in spec.dh and DhId.MODP_2048 in spec.dh
        assert DhId.CURVE_448 not in spec.dh


def test_default_esp_has_no_dh_and_noesn() -> None:
    classic, aead = parse_proposals("DEFAULT", ESP)  # the keyword ignores case
    assert classic.dh == aead.dh == ()
    assert classic.esn == aead.esn == (EsnId.NO_ESN,)
    assert classic.integ[0] == IntegId.HMAC_SHA2_256_128
    assert aead.encr[0] == (EncrId.AES_GCM_16, 128)


def _walk_sa(message: bytes) -> list[list[tuple[int, int, int]]]:
    """Proposals of the SA payload in a captured message as (type, id, key bits) lists."""
    kind, off = message[16], 28
    while kind != 33:
        kind, off = message[off], off + struct.unpack(">H", message[off + 2:off + 4])[0]
    end = off + struct.unpack(">H", message[off + 2:off + 4])[0]
    off += 4
    proposals = []
    while off < end:
        length, spi_size, count = (struct.unpack(">H", message[off + 2:off + 4])[0],
                                   message[off + 6], message[off + 7])
        pos, transforms = off + 8 + spi_size, []
        for _ in range(count):
            t_len = struct.unpack(">H", message[pos + 2:pos + 4])[0]
            key = struct.unpack(">H", message[pos + 10:pos + 12])[0] if t_len > 8 else 0
            transforms.append((message[pos + 4], struct.unpack(">H", message[pos + 6:pos + 8])[0],
                               key))
            pos += t_len
        proposals.append(transforms)
        off += length
    return proposals


def test_default_matches_what_charon_sends_minus_what_we_lack() -> None:
    path = FIXTURES / "charon-ike-sa-init-request.hex"  # in the tree: missing fails
    charon = _walk_sa(bytes.fromhex("".join(path.read_text().split())))
    ours = [
        [(int(t.type), t.id, t.key_length or 0) for t in to_payload(spec, 1, b"").transforms]
        for spec in parse_proposals("default", IKE)
    ]
    assert len(charon) == len(ours) == 2
    for theirs, mine in zip(charon, ours, strict=True):
        # Same relative order; we only ever remove algorithms.
        assert [t for t in theirs if t in mine] == mine


BAD = [
    ("aes128-sha256", IKE, "DH group is mandatory"),
    ("aes128gcm16-x25519", IKE, "PRF algorithm is mandatory"),
    ("sha256-x25519", IKE, "encryption algorithm is mandatory"),
    ("sha256", ESP, "encryption algorithm is mandatory"),
    ("aes128-x25519", IKE, "PRF algorithm is mandatory"),  # checked before integrity
    ("aes128-prfsha256-x25519", IKE, "integrity algorithm is mandatory"),
    ("aes128-aes128gcm16-sha256-x25519", IKE, "AEAD"),
    ("aes128-aes256gcm16-sha256", ESP, "AEAD"),
    ("aes128-sha256-foo", IKE, "'foo' not recognized"),
    ("AES128-sha256-x25519", IKE, "'AES128' not recognized"),
    ("aes128--sha256-x25519", IKE, "'' not recognized"),
    ("chacha20poly1305-prfsha256-x25519", IKE, "'chacha20poly1305' is not supported"),
    ("aes128-sha256-x448", IKE, "'x448' is not supported"),
    ("aes128-sha256-modp8192", IKE, "'modp8192' is not supported"),
    ("aes128gcm12-prfsha256-ecp256", IKE, "'aes128gcm12' is not supported"),
    ("aes128-sha256-modp2048, aes128ctr-sha256", ESP, "'aes128ctr' is not supported"),
    ("", IKE, "empty proposal"),
    ("aes128-sha256-x25519,", IKE, "empty proposal"),
]


@pytest.mark.parametrize(("text", "protocol", "message"), BAD)
def test_bad_strings_raise(text: str, protocol: ProtocolId, message: str) -> None:
    with pytest.raises(ProposalError, match=message.replace("(", r"\(")):
        parse_proposals(text, protocol)


def test_comma_list_keeps_order() -> None:
    specs = parse_proposals(" aes256-sha512-ecp384 , default,aes128-sha1-modp2048", IKE)
    assert len(specs) == 4
    assert specs[0].dh == (DhId.ECP_384,) and specs[3].dh == (DhId.MODP_2048,)


KEYWORDS = ["aes128", "aes256", "aes256gcm16", "sha1", "sha256", "prfsha384", "x25519",
            "ecp521", "modp4096", "esn", "noesn", "modpnone", "default", "x448", "bogus", ""]


@given(st.lists(st.sampled_from(KEYWORDS), max_size=6), st.sampled_from([IKE, ESP]))
def test_parser_returns_a_valid_spec_or_raises_proposal_error(
    words: list[str], protocol: ProtocolId
) -> None:
    try:
        specs = parse_proposals("-".join(words), protocol)
    except ProposalError:
        return
    for spec in specs:
        assert spec.encr
        if protocol == IKE:
            assert spec.prf and spec.dh
        else:
            assert spec.esn and not spec.prf


# ------------------------------------------------------------------ payloads


def test_to_payload_orders_transforms_like_charon() -> None:
    proposal = to_payload(one("aes256-aes128-sha1-prfsha256-x25519-modp2048"), 3, b"")
    assert proposal.num == 3 and proposal.protocol == IKE and proposal.spi == b""
    assert proposal.transforms == (
        Transform(T.ENCR, EncrId.AES_CBC, 256),
        Transform(T.ENCR, EncrId.AES_CBC, 128),
        Transform(T.INTEG, IntegId.HMAC_SHA1_96),
        Transform(T.PRF, PrfId.HMAC_SHA2_256),
        Transform(T.DH, DhId.CURVE_25519),
        Transform(T.DH, DhId.MODP_2048),
    )


def test_to_payload_can_leave_dh_out_for_ike_auth() -> None:
    spec = one("aes128gcm16-x25519", ESP)
    assert any(t.type == T.DH for t in to_payload(spec, 1, b"1234").transforms)
    bare = to_payload(spec, 1, b"1234", include_dh=False)
    assert bare.transforms == (Transform(T.ENCR, EncrId.AES_GCM_16, 128),
                               Transform(T.ESN, EsnId.NO_ESN))
    assert bare.spi == b"1234"


# ----------------------------------------------------------------- selection


def types_of(p: Proposal) -> list[TransformType | int]:
    return [t.type for t in p.transforms]


def test_select_takes_their_number_and_spi_and_one_transform_per_type() -> None:
    ours = parse_proposals("aes128-sha256-x25519", IKE)
    theirs = [to_payload(spec, n, b"\xaa" * 8)
              for n, spec in enumerate(parse_proposals("default", IKE), start=1)]
    chosen = select(ours, theirs, IKE)
    assert chosen is not None
    assert (chosen.num, chosen.spi) == (1, b"\xaa" * 8)
    assert chosen.transforms == (
        Transform(T.ENCR, EncrId.AES_CBC, 128),
        Transform(T.INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(T.PRF, PrfId.HMAC_SHA2_256),
        Transform(T.DH, DhId.CURVE_25519),
    )


def test_select_prefers_our_proposal_order_over_theirs() -> None:
    ours = parse_proposals("aes256-sha512-ecp384, aes128-sha256-x25519", IKE)
    theirs = [offer("aes128-sha256-x25519", IKE, 1), offer("aes256-sha512-ecp384", IKE, 2)]
    chosen = select(ours, theirs, IKE)
    assert chosen is not None and chosen.num == 2
    assert Transform(T.DH, DhId.ECP_384) in chosen.transforms


def test_select_prefers_our_algorithm_order_within_a_type() -> None:
    ours = parse_proposals("aes128-aes256-sha1-sha256-modp2048-x25519", IKE)
    theirs = [offer("aes256-aes128-sha256-sha1-x25519-modp2048", IKE)]
    chosen = select(ours, theirs, IKE)
    assert chosen is not None
    assert ike_suite(chosen) == IkeSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96,
                                         PrfId.HMAC_SHA1, DhId.MODP_2048)


@pytest.mark.parametrize(("ours", "theirs"), [
    ("aes128-sha256-x25519", "aes256-sha256-x25519"),  # key size differs
    ("aes128-sha256-x25519", "aes128-sha1-x25519"),
    ("aes128-sha256-x25519", "aes128-sha256-ecp256"),
    ("aes128-sha256-prfsha512-x25519", "aes128-sha256-x25519"),
    ("aes128gcm16-prfsha256-x25519", "aes128-sha256-x25519"),
])
def test_select_returns_none_when_nothing_matches(ours: str, theirs: str) -> None:
    assert select(parse_proposals(ours, IKE), [offer(theirs, IKE)], IKE) is None


def test_select_ignores_other_protocols() -> None:
    esp_offer = offer("aes128-sha256", ESP, spi=b"\x01\x02\x03\x04")
    assert select(parse_proposals("aes128-sha256-x25519", IKE), [esp_offer], IKE) is None
    assert select(parse_proposals("aes128-sha256", ESP), [esp_offer], IKE) is None
    assert select(parse_proposals("aes128-sha256", ESP), [esp_offer], ESP) is not None


def test_select_aead_ignores_integrity_they_send_anyway() -> None:
    theirs = Proposal(1, IKE, b"", (
        Transform(T.ENCR, EncrId.AES_GCM_16, 256), Transform(T.INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(T.PRF, PrfId.HMAC_SHA2_384), Transform(T.DH, DhId.ECP_384)))
    chosen = select(parse_proposals("aes256gcm16-prfsha384-ecp384", IKE), [theirs], IKE)
    assert chosen is not None
    assert types_of(chosen) == [T.ENCR, T.PRF, T.DH]
    assert ike_suite(chosen) == IkeSuite(EncrId.AES_GCM_16, 256, None, PrfId.HMAC_SHA2_384,
                                         DhId.ECP_384)


def test_select_esp_pfs_rules() -> None:
    spi = b"\xc0\x01\x02\x03"
    pfs = parse_proposals("aes128-sha256-x25519", ESP)
    no_pfs = parse_proposals("aes128-sha256", ESP)
    optional = parse_proposals("aes128-sha256-x25519-modpnone", ESP)
    with_dh = offer("aes128-sha256-x25519", ESP, spi=spi)
    without = offer("aes128-sha256", ESP, spi=spi)
    chosen = select(pfs, [with_dh], ESP)
    assert chosen is not None and esp_suite(chosen).dh == DhId.CURVE_25519
    assert select(pfs, [without], ESP) is None  # we insist on PFS
    assert select(no_pfs, [with_dh], ESP) is None  # as charon: their DH without NONE fails
    chosen = select(optional, [without], ESP)
    assert chosen is not None and esp_suite(chosen).dh is None
    # CHILD_SA in IKE_AUTH: DH is skipped on both sides.
    chosen = select(pfs, [to_payload(pfs[0], 1, spi, include_dh=False)], ESP, skip_dh=True)
    assert chosen is not None and T.DH not in types_of(chosen)
    assert chosen.spi == spi


def test_select_esn_prefers_noesn_when_both_allow_it() -> None:
    ours = parse_proposals("aes128-sha256-esn-noesn", ESP)
    both = select(ours, [offer("aes128-sha256-esn-noesn", ESP)], ESP)
    assert both is not None and esp_suite(both).esn is False
    only = select(ours, [offer("aes128-sha256-esn", ESP)], ESP)
    assert only is not None and esp_suite(only).esn is True
    assert select(parse_proposals("aes128-sha256", ESP),
                  [offer("aes128-sha256-esn", ESP)], ESP) is None


def test_select_rejects_unknown_transform_types_like_charon() -> None:
    theirs = offer("aes128-sha256-x25519", IKE)
    extra = Proposal(1, IKE, b"", (*theirs.transforms, Transform(6, 9999, None)))
    assert select(parse_proposals("aes128-sha256-x25519", IKE), [extra], IKE) is None


def test_select_skips_transforms_with_unknown_attributes() -> None:
    odd = Transform(T.ENCR, EncrId.AES_CBC, 128, unknown_attrs=(99,))
    theirs = offer("aes256-aes128-sha256-x25519", IKE)
    assert theirs.transforms[1] == Transform(T.ENCR, EncrId.AES_CBC, 128)
    spoiled = Proposal(1, IKE, b"", (theirs.transforms[0], odd, *theirs.transforms[2:]))
    ours = parse_proposals("aes128-aes256-sha256-x25519", IKE)
    chosen = select(ours, [spoiled], IKE)
    assert chosen is not None
    assert chosen.transforms[0] == Transform(T.ENCR, EncrId.AES_CBC, 256)


def test_esp_suite_from_selection() -> None:
    ours = parse_proposals("aes256gcm16-modp2048", ESP)
    chosen = select(ours, [offer("aes256gcm16-modp2048", ESP, spi=b"abcd")], ESP)
    assert chosen is not None
    assert esp_suite(chosen) == EspSuite(EncrId.AES_GCM_16, 256, None, DhId.MODP_2048, False)


def test_suites_reject_incomplete_or_unsupported_choices() -> None:
    with pytest.raises(ProposalError):
        ike_suite(Proposal(1, IKE, b"", (Transform(T.ENCR, EncrId.AES_CBC, 128),)))
    with pytest.raises(ProposalError):
        esp_suite(Proposal(1, ESP, b"", (Transform(T.ENCR, EncrId.AES_CTR, 128),)))
    with pytest.raises(ProposalError):
        esp_suite(Proposal(1, ESP, b"", (Transform(T.ENCR, 999, 128),)))
    with pytest.raises(ProposalError):
        ike_suite(Proposal(1, IKE, b"", (
            Transform(T.ENCR, EncrId.AES_CBC, 128), Transform(T.INTEG, IntegId.HMAC_SHA1_96),
            Transform(T.PRF, PrfId.HMAC_SHA1), Transform(T.DH, DhId.MODP_1024))))


def test_preferred_dh_is_first_configured_group() -> None:
    assert preferred_dh(parse_proposals("aes128-sha256-ecp384-x25519, default", IKE)) == \
        DhId.ECP_384
    assert preferred_dh(parse_proposals("aes128-sha256", ESP)) is None


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(("text", "protocol", "long", "short"), [
    ("aes128-sha256-x25519", IKE, "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
     "aes128-sha256-x25519"),
    ("aes256gcm16-prfsha384-ecp384", IKE, "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384",
     "aes256gcm16-prfsha384-ecp384"),
    ("aes128-sha1-modp2048", IKE, "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048",
     "aes128-sha1-modp2048"),
    ("aes128-sha256-prfsha512-ecp521", IKE,
     "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_512/ECP_521", "aes128-sha256-prfsha512-ecp521"),
    ("aes128-sha256", ESP, "AES_CBC-128/HMAC_SHA2_256_128", "aes128-sha256"),
    ("aes256gcm16-modp3072-esn", ESP, "AES_GCM_16-256/MODP_3072/ESN", "aes256gcm16-modp3072-esn"),
])
def test_describe_as_swanctl_and_as_proposal_string(
    text: str, protocol: ProtocolId, long: str, short: str
) -> None:
    chosen = select(parse_proposals(text, protocol), [offer(text, protocol)], protocol)
    assert chosen is not None
    assert describe(chosen) == long


def test_parse_proposal_single() -> None:
    assert parse_proposal("aes-sha1-modp2048", IKE) == one("aes128-sha1-modp2048")
