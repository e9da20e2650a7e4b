"""Payload encoders/decoders: round trips, RFC 7296 byte layouts, tolerant enums, bad input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobike_vici.ikev2.buffer import DecodeError, Reader, to_enum
from mobike_vici.ikev2.constants import (
    AuthMethod,
    CfgAttr,
    CfgType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
    TsType,
)
from mobike_vici.ikev2.payloads import (
    CP,
    EAP,
    KE,
    SA,
    Auth,
    Cert,
    CertReq,
    CfgAttribute,
    Delete,
    Encrypted,
    IDi,
    IDr,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    Transform,
    TSi,
    TSr,
    UnknownPayload,
    VendorId,
    decode_payloads,
    encode_payload_body,
    encode_payloads,
    first_payload_type,
    id_body,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

IKE_PROPOSAL = Proposal(1, ProtocolId.IKE, b"", (
    Transform(TransformType.ENCR, 12, 128),
    Transform(TransformType.ENCR, 20, 256),
    Transform(TransformType.INTEG, 12),
    Transform(TransformType.PRF, 5),
    Transform(TransformType.DH, 31),
))
ESP_PROPOSAL = Proposal(2, ProtocolId.ESP, b"\xc1\xa2\x00\x07", (
    Transform(TransformType.ENCR, 20, 128),
    Transform(TransformType.ESN, 0),
))

SAMPLES: list[Payload] = [
    SA((IKE_PROPOSAL,)),
    SA((IKE_PROPOSAL, ESP_PROPOSAL)),
    SA((Proposal(1, ProtocolId.IKE, bytes(range(8)), (Transform(TransformType.DH, 19),)),)),
    KE(31, bytes(range(32))),
    IDi(IdType.ID_FQDN, b"moon.example"),
    IDr(IdType.ID_IPV4_ADDR, bytes([192, 0, 2, 1])),
    Cert(4, b"\x30\x82cert"),
    CertReq(4, bytes(20)),
    Auth(AuthMethod.SHARED_KEY_MIC, bytes(range(32))),
    Nonce(bytes(range(32))),
    Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20)),
    Notify(NotifyType.MOBIKE_SUPPORTED),
    Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x01\x02\x03\x04"),
    Notify(NotifyType.UPDATE_SA_ADDRESSES),
    Notify(NotifyType.COOKIE2, bytes(range(16))),
    Notify(NotifyType.ADDITIONAL_IP6_ADDRESS, V6("2001:db8::1").packed),
    Delete(ProtocolId.IKE),
    Delete(ProtocolId.ESP, (b"\x00\x00\x00\x01", b"\xff\xff\xff\xfe")),
    VendorId(b"strongSwan"),
    TSi((TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535,
                         V4("10.1.0.0"), V4("10.1.255.255")),)),
    TSr((TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 17, 500, 500, V4("192.0.2.2"),
                         V4("192.0.2.2")),
         TrafficSelector(TsType.TS_IPV6_ADDR_RANGE, 0, 0, 65535, V6("::"),
                         V6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")))),
    TSi(()),
    CP(CfgType.CFG_REQUEST, (CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS),
                             CfgAttribute(CfgAttr.INTERNAL_IP4_DNS))),
    CP(CfgType.CFG_REPLY, (CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, bytes([10, 3, 0, 1])),
                           CfgAttribute(0x7000, b"private"))),
    EAP(b"\x01\x02\x00\x05\x01"),
    UnknownPayload(200, True, b"future"),
    UnknownPayload(99, False, b""),
]


def _roundtrip(payloads: list[Payload]) -> tuple[Payload, ...]:
    return decode_payloads(first_payload_type(payloads), encode_payloads(payloads))


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_every_payload_round_trips(payload: Payload) -> None:
    assert _roundtrip([payload]) == (payload,)


def test_a_chain_round_trips_and_links_next_payload_fields() -> None:
    chain = encode_payloads(SAMPLES)
    assert decode_payloads(first_payload_type(SAMPLES), chain) == tuple(SAMPLES)
    # Walk the generic headers by hand: each names the type of the one after it.
    r = Reader(chain)
    types = []
    while not r.at_end():
        types.append(r.u8())
        r.skip(1)
        r.skip(r.u16() - 4)
    assert types == [int(p.payload_type) for p in SAMPLES[1:]] + [0]


# --- byte layouts written out from RFC 7296 §3 -------------------------------------------


def test_sa_bytes_follow_rfc_layout() -> None:
    sa = SA((Proposal(1, ProtocolId.IKE, b"", (
        Transform(TransformType.ENCR, 12, 128), Transform(TransformType.DH, 31))),))
    expected = bytes.fromhex(
        "00 00 0020"          # generic header: no next payload, length 32
        "00 00 001c 01 01 00 02"  # last proposal, length 28, #1, IKE, SPI size 0, 2 transforms
        "03 00 000c 01 00 000c 800e 0080"  # more transforms, ENCR AES_CBC, KEY_LENGTH(TV) 128
        "00 00 0008 04 00 001f"  # last transform, DH 31
    )
    assert encode_payloads([sa]) == expected
    assert decode_payloads(PayloadType.SA, expected) == (sa,)


def test_notify_bytes_follow_rfc_layout() -> None:
    n = Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xaa\xbb\xcc\xdd")
    assert encode_payload_body(n) == bytes.fromhex("03 04 4009 aabbccdd")


def test_ts_bytes_follow_rfc_layout() -> None:
    ts = TSi((TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 6, 80, 443,
                              V4("10.0.0.1"), V4("10.0.0.9")),))
    assert encode_payload_body(ts) == bytes.fromhex(
        "01 000000 07 06 0010 0050 01bb 0a000001 0a000009")


def test_cp_attribute_reserved_bit_is_sent_clear_and_ignored_on_receipt() -> None:
    cp = CP(CfgType.CFG_REQUEST, (CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS),))
    assert encode_payload_body(cp) == bytes.fromhex("01 000000 0001 0000")
    received = bytes.fromhex("0000 0010 02 000000 8001 0004 0a030001")
    (decoded,) = decode_payloads(PayloadType.CP, received)
    assert decoded == CP(CfgType.CFG_REPLY,
                         (CfgAttribute(CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a\x03\x00\x01"),))


def test_id_body_is_rest_of_id_payload() -> None:
    idi = IDi(IdType.ID_FQDN, b"moon.example")
    assert id_body(idi) == b"\x02\x00\x00\x00moon.example"
    assert encode_payload_body(idi) == id_body(idi)
    assert id_body(IDr(IdType.ID_KEY_ID, b"k")) == b"\x0b\x00\x00\x00k"


def test_unknown_payload_keeps_its_critical_bit_and_known_ones_ignore_it() -> None:
    data = bytes.fromhex("00 80 0006 abcd")
    assert decode_payloads(150, data) == (UnknownPayload(150, True, b"\xab\xcd"),)
    assert encode_payloads([UnknownPayload(150, True, b"\xab\xcd")]) == data
    # §3.2: the critical bit MUST be ignored for payload types we understand.
    assert decode_payloads(PayloadType.NONCE, data) == (Nonce(b"\xab\xcd"),)


# --- tolerant numbers --------------------------------------------------------------------


def test_to_enum_falls_back_to_int() -> None:
    assert to_enum(NotifyType, 16396) is NotifyType.MOBIKE_SUPPORTED
    value = to_enum(NotifyType, 40000)
    assert value == 40000 and not isinstance(value, NotifyType)


def test_unknown_numbers_decode_to_plain_ints() -> None:
    payloads: list[Payload] = [
        Notify(40001, b"", 7, b"\x01"),
        IDi(200, b"x"),
        Auth(250, b"sig"),
        CP(9, (CfgAttribute(12345, b"v"),)),
        SA((Proposal(1, 9, b"", (Transform(77, 1),)),)),
    ]
    decoded = _roundtrip(payloads)
    assert decoded == tuple(payloads)
    notify, idi, auth, cp, sa = decoded
    assert isinstance(notify, Notify) and type(notify.type) is int
    assert type(notify.protocol) is int
    assert isinstance(idi, IDi) and type(idi.id_type) is int
    assert isinstance(auth, Auth) and type(auth.method) is int
    assert isinstance(cp, CP) and type(cp.cfg_type) is int
    assert isinstance(sa, SA) and type(sa.proposals[0].transforms[0].type) is int


def test_unknown_transform_attributes_are_skipped_and_recorded() -> None:
    transform = bytes.fromhex(
        "00 00 0016 01 00 000c"
        "800e 0100"      # KEY_LENGTH 256 (TV)
        "8011 0001"      # unknown TV attribute 17
        "0012 0002 abcd"  # unknown TLV attribute 18 with 2 bytes
    )
    proposal = bytes.fromhex("00 00") + (8 + len(transform)).to_bytes(2, "big") \
        + bytes.fromhex("01 01 00 01") + transform
    sa = (4 + len(proposal)).to_bytes(2, "big")
    (decoded,) = decode_payloads(PayloadType.SA, bytes.fromhex("00 00") + sa + proposal)
    assert isinstance(decoded, SA)
    assert decoded.proposals[0].transforms == (
        Transform(TransformType.ENCR, 12, 256, unknown_attrs=(17, 18)),)


def _sa_with_transform(transform_hex: str, last: str = "00", count: int = 1) -> bytes:
    transform = bytes.fromhex(transform_hex)
    proposal = bytes.fromhex(last + "00") + (8 + len(transform)).to_bytes(2, "big") \
        + bytes([1, 1, 0, count]) + transform
    return bytes.fromhex("00 00") + (4 + len(proposal)).to_bytes(2, "big") + proposal


def test_the_sa_helper_builds_a_valid_payload() -> None:
    (sa,) = decode_payloads(PayloadType.SA, _sa_with_transform("00 00 0008 04 00 001f"))
    assert sa == SA((Proposal(1, ProtocolId.IKE, b"", (Transform(TransformType.DH, 31),)),))


@pytest.mark.parametrize("bad", [
    _sa_with_transform("00 00 000e 01 00 000c 000e 0002 0080"),  # KEY_LENGTH as TLV
    _sa_with_transform("00 00 000c 01 00 000c 0012 0002"),   # TLV value runs past the end
    _sa_with_transform("00 00 0010 01 00 000c 800e 0080 800e 0100"),  # KEY_LENGTH twice
    _sa_with_transform("03 00 0008 04 00 001f"),   # last transform says "more"
    _sa_with_transform("01 00 0008 04 00 001f"),   # 'last' value neither 0 nor 3
    _sa_with_transform("00 00 0008 04 00 001f", last="02"),  # last proposal says "more"
    _sa_with_transform("00 00 0008 04 00 001f", count=2),  # fewer transforms than announced
    _sa_with_transform("00 00 0008 04 00 001f", count=0),  # more transforms than announced
    _sa_with_transform("00 00 0007 04 00 001f"),   # transform length < 8
    _sa_with_transform("00 00 0009 04 00 001f"),   # transform length past the proposal
], ids=lambda b: b.hex())
def test_malformed_sa_is_refused(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payloads(PayloadType.SA, bad)


@pytest.mark.parametrize(("ptype", "body_hex"), [
    (PayloadType.KE, "001f00"),                     # KE shorter than its fixed part
    (PayloadType.NOTIFY, "0004 4009 aabbcc"),       # SPI size 4, only 3 bytes
    (PayloadType.DELETE, "03 04 0002 00000001"),    # 2 SPIs announced, 1 present
    (PayloadType.DELETE, "03 04 0001 00000001 00"),  # trailing byte after the SPIs
    (PayloadType.TSi, "01 000000 07 00 000f 0000 ffff 0a000000 0a0000"),  # short selector
    (PayloadType.TSi, "01 000000 07 00 0028 0000 ffff 0a000000 0a0000ff"),  # v4 with v6 length
    (PayloadType.TSi, "01 000000 0a 00 0010 0000 ffff 0a000000 0a0000ff"),  # unknown TS type
    (PayloadType.TSi, "02 000000 07 00 0010 0000 ffff 0a000000 0a0000ff"),  # count too high
    (PayloadType.TSi, "01 000000 07 00 0010 0000 ffff 0a000000 0a0000ff 00"),  # trailing byte
    (PayloadType.CP, "01 000000 0001 0004 0a00"),   # attribute longer than the payload
    (PayloadType.AUTH, "02 0000"),
    (PayloadType.IDi, "02"),
])
def test_malformed_bodies_are_refused(ptype: PayloadType, body_hex: str) -> None:
    body = bytes.fromhex(body_hex)
    with pytest.raises(DecodeError):
        decode_payloads(ptype, b"\x00\x00" + (4 + len(body)).to_bytes(2, "big") + body)


def test_payload_length_below_four_is_refused() -> None:
    with pytest.raises(DecodeError, match="< 4"):
        decode_payloads(PayloadType.NONCE, bytes.fromhex("00 00 0003 00"))


def test_payload_running_past_the_end_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_payloads(PayloadType.NONCE, bytes.fromhex("00 00 0010 0102"))


def test_chain_that_announces_another_payload_but_ends_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_payloads(PayloadType.NONCE, bytes.fromhex("29 00 0006 0102"))


def test_bytes_after_the_last_payload_are_refused() -> None:
    with pytest.raises(DecodeError, match="after the last payload"):
        decode_payloads(PayloadType.NONCE, bytes.fromhex("00 00 0006 0102 ff"))


def test_sk_payload_must_be_last_and_names_the_first_inner_payload() -> None:
    sk = Encrypted(PayloadType.IDi, b"iv-ciphertext-icv")
    encoded = encode_payloads([Notify(NotifyType.COOKIE, b"c"), sk])
    assert decode_payloads(PayloadType.NOTIFY, encoded) == (Notify(NotifyType.COOKIE, b"c"), sk)
    assert encoded[4 + 4 + 1] == PayloadType.IDi  # SK header's next-payload field
    with pytest.raises(DecodeError, match="last"):
        decode_payloads(PayloadType.SK, encode_payloads([sk])[:] + b"\x00\x00\x00\x04")
    with pytest.raises(ValueError, match="last"):
        encode_payloads([sk, Nonce(b"n")])
    with pytest.raises(DecodeError, match="inside"):
        decode_payloads(PayloadType.SK, encode_payloads([sk]), allow_encrypted=False)


def test_encoders_refuse_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_payload_body(Delete(ProtocolId.ESP, (b"\x00" * 4, b"\x00" * 8)))
    with pytest.raises(ValueError):
        encode_payload_body(TSi((TrafficSelector(TsType.TS_IPV4_ADDR_RANGE, 0, 0, 65535,
                                                 V6("::"), V6("::1")),)))
    with pytest.raises(ValueError):
        encode_payload_body(CP(CfgType.CFG_SET, (CfgAttribute(0x8001),)))
    with pytest.raises(ValueError):
        encode_payloads([Nonce(bytes(70000))])


def test_reader_bounds() -> None:
    r = Reader(b"\x01\x02\x03")
    assert r.u16() == 0x0102
    with pytest.raises(DecodeError):
        r.u16()
    assert r.remaining == 1  # a failed read consumes nothing
    assert r.take(1) == b"\x03" and r.at_end()
    with pytest.raises(DecodeError):
        Reader(b"abc").sub(4)


# --- properties --------------------------------------------------------------------------


@given(st.integers(0, 255), st.binary(max_size=200))
def test_decode_payloads_raises_only_decode_error(first: int, data: bytes) -> None:
    try:
        result = decode_payloads(first, data)
    except DecodeError:
        return
    assert isinstance(result, tuple)


_blobs = st.binary(max_size=40)
_v4 = st.builds(V4, st.integers(0, 2**32 - 1))
_v6 = st.builds(V6, st.integers(0, 2**128 - 1))
_u16 = st.integers(0, 0xFFFF)
_selectors = st.one_of(
    st.builds(TrafficSelector, st.just(TsType.TS_IPV4_ADDR_RANGE), st.integers(0, 255),
              _u16, _u16, _v4, _v4),
    st.builds(TrafficSelector, st.just(TsType.TS_IPV6_ADDR_RANGE), st.integers(0, 255),
              _u16, _u16, _v6, _v6),
)
_transforms = st.builds(
    Transform, st.sampled_from(list(TransformType)), _u16, st.none() | _u16)
_proposals = st.builds(
    Proposal, st.integers(1, 255), st.sampled_from(list(ProtocolId)),
    st.sampled_from([b"", b"\x01\x02\x03\x04", bytes(8)]),
    st.lists(_transforms, min_size=1, max_size=6).map(tuple))
_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(SA, st.lists(_proposals, max_size=4).map(tuple)),
    st.builds(KE, _u16, _blobs),
    st.builds(Notify, st.integers(0, 0xFFFF), _blobs, st.integers(0, 255), _blobs),
    st.builds(Delete, st.sampled_from(list(ProtocolId)),
              st.lists(st.binary(min_size=4, max_size=4), max_size=5).map(tuple)),
    st.builds(TSi, st.lists(_selectors, max_size=4).map(tuple)),
    st.builds(TSr, st.lists(_selectors, max_size=4).map(tuple)),
    st.builds(CP, st.integers(0, 255),
              st.lists(st.builds(CfgAttribute, st.integers(0, 0x7FFF), _blobs),
                       max_size=4).map(tuple)),
    st.builds(Nonce, _blobs), st.builds(VendorId, _blobs), st.builds(EAP, _blobs),
    st.builds(IDi, st.integers(0, 255), _blobs), st.builds(Auth, st.integers(0, 255), _blobs),
)


@pytest.mark.slow
@given(st.lists(_payloads, max_size=6))
def test_any_payload_chain_round_trips(payloads: list[Payload]) -> None:
    assert _roundtrip(payloads) == tuple(payloads)
