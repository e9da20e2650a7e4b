"""XFRM message layouts: sizes and offsets of linux/xfrm.h, bytes against hand-built structs.

The expected sizes and offsets are the kernel ABI (x86_64, linux/xfrm.h, checked
with sizeof/offsetof); the expected bytes are assembled here field by field
with ``struct.pack_into`` at those offsets, independently of the classes under
test.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from mobike_vici.esp.xfrm_msgs import (
    POLICY_INFO_FIELDS,
    SA_INFO_FIELDS,
    STRUCT_SIZES,
    USER_MIGRATE_FIELDS,
    USER_TMPL_FIELDS,
    XfrmMsg,
    decode_message,
    xfrm_user_migrate,
    xfrm_user_tmpl,
    xfrm_userpolicy_id,
    xfrm_userpolicy_info,
    xfrm_usersa_id,
    xfrm_usersa_info,
)

NLMSG_HDR = 16
NLA_HDR = 4

KERNEL_SIZES = {
    "xfrm_selector": 56,
    "xfrm_usersa_info": 224,
    "xfrm_userpolicy_info": 168,
    "xfrm_usersa_id": 24,
    "xfrm_userpolicy_id": 64,
    "xfrm_aevent_id": 48,
    "xfrm_user_tmpl": 64,
    "xfrm_user_migrate": 76,
    "xfrm_encap_tmpl": 24,
}


def _offsets(fields: tuple[tuple[str, str], ...]) -> dict[str, int]:
    out, pos = {}, 0
    for name, fmt in fields:
        out[name] = pos
        pos += struct.calcsize(fmt)
    return out


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed.ljust(16, b"\0")


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_struct_sizes_match_the_kernel() -> None:
    assert STRUCT_SIZES == KERNEL_SIZES


@pytest.mark.parametrize(("fields", "expected"), [
    (SA_INFO_FIELDS, {"id_daddr": 56, "saddr": 80, "lft_soft_byte_limit": 96,
                      "curlft_bytes": 160, "stats_replay_window": 192, "seq": 204,
                      "reqid": 208, "family": 212, "mode": 214, "replay_window": 215,
                      "flags": 216, "sel_dport": 32, "sel_family": 40, "sel_proto": 44,
                      "sel_ifindex": 48, "sel_user": 52}),
    (POLICY_INFO_FIELDS, {"lft_soft_byte_limit": 56, "curlft_bytes": 120, "priority": 152,
                          "index": 156, "dir": 160, "share": 163}),
    (USER_TMPL_FIELDS, {"family": 24, "saddr": 28, "reqid": 44, "mode": 48, "optional": 50,
                        "aalgos": 52, "ealgos": 56, "calgos": 60}),
    (USER_MIGRATE_FIELDS, {"proto": 64, "mode": 65, "reqid": 68, "old_family": 72,
                           "new_family": 74}),
], ids=["usersa_info", "userpolicy_info", "user_tmpl", "user_migrate"])
def test_field_offsets_match_the_kernel(fields: tuple[tuple[str, str], ...],
                                        expected: dict[str, int]) -> None:
    offsets = _offsets(fields)
    assert {name: offsets[name] for name in expected} == expected


def _encode(msg: object, msg_type: int) -> bytes:
    msg["header"]["type"] = msg_type  # type: ignore[index]
    msg.encode()  # type: ignore[attr-defined]
    return bytes(msg.data)  # type: ignore[attr-defined]


def test_usersa_info_bytes_and_round_trip() -> None:
    msg = xfrm_usersa_info()
    msg.update(
        sel_daddr=a4("10.9.0.0"), sel_saddr=a4("10.8.0.0"), sel_dport=443,
        sel_dport_mask=0xFFFF, sel_family=2, sel_prefixlen_d=24, sel_prefixlen_s=16,
        sel_proto=6, id_daddr=a4("192.0.2.2"), id_spi=0xC1000001, id_proto=50,
        saddr=a4("10.1.0.2"), lft_soft_byte_limit=1 << 40, lft_hard_add_expires_seconds=3600,
        curlft_packets=77, seq=5, reqid=9, family=2, mode=1, replay_window=32, flags=32,
    )
    msg["attrs"] = [
        ("XFRMA_ALG_AEAD", {"alg_name": b"rfc4106(gcm(aes))", "alg_key_len": 160,
                            "alg_icv_len": 128, "alg_key": bytes(range(20))}),
        ("XFRMA_ENCAP", {"encap_type": 2, "encap_sport": 4500, "encap_dport": 4501}),
    ]
    data = _encode(msg, XfrmMsg.NEWSA)

    body = bytearray(224)
    struct.pack_into("16s16s", body, 0, a4("10.9.0.0"), a4("10.8.0.0"))
    struct.pack_into(">HH", body, 32, 443, 0xFFFF)
    struct.pack_into("=HBBB", body, 40, 2, 24, 16, 6)
    struct.pack_into("16s", body, 56, a4("192.0.2.2"))
    struct.pack_into(">I", body, 72, 0xC1000001)
    struct.pack_into("B", body, 76, 50)
    struct.pack_into("16s", body, 80, a4("10.1.0.2"))
    struct.pack_into("=Q", body, 96, 1 << 40)           # soft_byte_limit
    struct.pack_into("=Q", body, 96 + 5 * 8, 3600)      # hard_add_expires_seconds
    struct.pack_into("=Q", body, 160 + 8, 77)           # curlft.packets
    struct.pack_into("=III", body, 204, 5, 9, 0)        # seq, reqid (+ family below)
    struct.pack_into("=HBBB", body, 212, 2, 1, 32, 32)
    aead = bytearray(4 + 72 + 20)
    struct.pack_into("=HH64sII", aead, 0, 96, 18, b"rfc4106(gcm(aes))", 160, 128)
    aead[76:] = bytes(range(20))
    encap = struct.pack("=HH", 28, 4) + struct.pack("=H", 2) + struct.pack(">HH", 4500, 4501)
    encap += bytes(18)
    expected_len = NLMSG_HDR + 224 + len(aead) + len(encap)
    header = struct.pack("=IHHII", expected_len, XfrmMsg.NEWSA, 0, 0, 0)
    assert data == header + bytes(body) + bytes(aead) + encap

    back = decode_message(data)
    assert isinstance(back, xfrm_usersa_info)
    assert back["id_spi"] == 0xC1000001 and back["sel_dport"] == 443
    assert back["curlft_packets"] == 77 and back["flags"] == 32
    aead_back = back.get_attr("XFRMA_ALG_AEAD")
    assert aead_back["alg_name"] == b"rfc4106(gcm(aes))"
    assert aead_back["alg_key"] == bytes(range(20)) and aead_back["alg_icv_len"] == 128
    assert back.get_attr("XFRMA_ENCAP")["encap_dport"] == 4501


def test_cbc_hmac_attributes_bytes() -> None:
    msg = xfrm_usersa_info()
    msg["attrs"] = [
        ("XFRMA_ALG_CRYPT", {"alg_name": b"cbc(aes)", "alg_key_len": 128,
                             "alg_key": b"\x11" * 16}),
        ("XFRMA_ALG_AUTH_TRUNC", {"alg_name": b"hmac(sha256)", "alg_key_len": 256,
                                  "alg_trunc_len": 128, "alg_key": b"\x22" * 32}),
    ]
    data = _encode(msg, XfrmMsg.NEWSA)
    attrs = data[NLMSG_HDR + 224:]
    crypt = struct.pack("=HH64sI", 4 + 68 + 16, 2, b"cbc(aes)", 128) + b"\x11" * 16
    auth = struct.pack("=HH64sII", 4 + 72 + 32, 20, b"hmac(sha256)", 256, 128) + b"\x22" * 32
    assert attrs == crypt + auth
    back = decode_message(data)
    assert back.get_attr("XFRMA_ALG_CRYPT")["alg_key"] == b"\x11" * 16
    assert back.get_attr("XFRMA_ALG_AUTH_TRUNC")["alg_trunc_len"] == 128


def test_userpolicy_info_with_templates_and_mark() -> None:
    msg = xfrm_userpolicy_info()
    msg.update(sel_daddr=a6("2001:db8:9::"), sel_saddr=a6("2001:db8:8::"), sel_family=10,
               sel_prefixlen_d=48, sel_prefixlen_s=48, priority=2000, index=0, dir=2, action=1)
    tmpls = [
        {"id_daddr": a6("2001:db8::2"), "id_proto": 50, "family": 10,
         "saddr": a6("2001:db8:1::2"), "reqid": 3, "mode": 1, "optional": 1,
         "aalgos": 0xFFFFFFFF, "ealgos": 0xFFFFFFFF, "calgos": 0xFFFFFFFF},
        {"id_daddr": a6("2001:db8::3"), "id_spi": 0xABCDEF01, "id_proto": 50, "family": 10,
         "saddr": a6("2001:db8:1::3"), "reqid": 4, "mode": 0},
    ]
    msg["attrs"] = [("XFRMA_TMPL", tmpls), ("XFRMA_MARK", {"v": 42, "m": 0xFF})]
    data = _encode(msg, XfrmMsg.NEWPOLICY)

    body = bytearray(168)
    struct.pack_into("16s16s", body, 0, a6("2001:db8:9::"), a6("2001:db8:8::"))
    struct.pack_into("=HBB", body, 40, 10, 48, 48)
    struct.pack_into("=II", body, 152, 2000, 0)
    struct.pack_into("=BBBB", body, 160, 2, 1, 0, 0)
    t1 = bytearray(64)
    struct.pack_into("16s", t1, 0, a6("2001:db8::2"))
    struct.pack_into("B", t1, 20, 50)
    struct.pack_into("=H", t1, 24, 10)
    struct.pack_into("16s", t1, 28, a6("2001:db8:1::2"))
    struct.pack_into("=IBBB", t1, 44, 3, 1, 0, 1)
    struct.pack_into("=III", t1, 52, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    t2 = bytearray(64)
    struct.pack_into("16s", t2, 0, a6("2001:db8::3"))
    struct.pack_into(">I", t2, 16, 0xABCDEF01)
    struct.pack_into("B", t2, 20, 50)
    struct.pack_into("=H", t2, 24, 10)
    struct.pack_into("16s", t2, 28, a6("2001:db8:1::3"))
    struct.pack_into("=I", t2, 44, 4)
    tmpl_attr = struct.pack("=HH", 4 + 128, 5) + bytes(t1) + bytes(t2)
    mark_attr = struct.pack("=HHII", 12, 21, 42, 0xFF)
    total = NLMSG_HDR + 168 + len(tmpl_attr) + len(mark_attr)
    assert data == (struct.pack("=IHHII", total, XfrmMsg.NEWPOLICY, 0, 0, 0) + bytes(body)
                    + tmpl_attr + mark_attr)

    back = decode_message(data)
    got = back.get_attr("XFRMA_TMPL")
    assert [t["reqid"] for t in got] == [3, 4]
    assert got[1]["id_spi"] == 0xABCDEF01 and got[0]["optional"] == 1
    assert back.get_attr("XFRMA_MARK") == {"v": 42, "m": 0xFF}
    assert back["dir"] == 2 and back["action"] == 1 and back["priority"] == 2000


def test_usersa_id_and_userpolicy_id_bytes() -> None:
    sa_id = xfrm_usersa_id()
    sa_id.update(daddr=a4("192.0.2.2"), spi=0x01020304, family=2, proto=50)
    data = _encode(sa_id, XfrmMsg.DELSA)
    expected = a4("192.0.2.2") + bytes([1, 2, 3, 4]) + struct.pack("=HBx", 2, 50)
    assert data[NLMSG_HDR:] == expected
    assert len(data) == NLMSG_HDR + 24

    pol_id = xfrm_userpolicy_id()
    pol_id.update(sel_family=2, sel_prefixlen_d=32, dir=1, index=7)
    data = _encode(pol_id, XfrmMsg.DELPOLICY)
    body = bytearray(64)
    struct.pack_into("=HB", body, 40, 2, 32)
    struct.pack_into("=IB", body, 56, 7, 1)
    assert data[NLMSG_HDR:] == bytes(body)


def test_migrate_message_bytes() -> None:
    msg = xfrm_userpolicy_id()
    msg.update(sel_family=2, dir=1)
    mig = {"old_daddr": a4("192.0.2.2"), "old_saddr": a4("10.1.0.2"),
           "new_daddr": a4("192.0.2.2"), "new_saddr": a4("10.2.0.2"), "proto": 50,
           "mode": 1, "reqid": 7, "old_family": 2, "new_family": 2}
    msg["attrs"] = [("XFRMA_MIGRATE", [mig])]
    data = _encode(msg, XfrmMsg.MIGRATE)
    item = bytearray(76)
    struct.pack_into("16s16s16s16s", item, 0, a4("192.0.2.2"), a4("10.1.0.2"),
                     a4("192.0.2.2"), a4("10.2.0.2"))
    struct.pack_into("=BBHIHH", item, 64, 50, 1, 0, 7, 2, 2)
    assert data[NLMSG_HDR + 64:] == struct.pack("=HH", 80, 17) + bytes(item)
    assert decode_message(data).get_attr("XFRMA_MIGRATE")[0]["new_saddr"] == a4("10.2.0.2")


def test_replay_state_and_esn_and_lifetime_attributes() -> None:
    msg = xfrm_usersa_info()
    msg["attrs"] = [
        ("XFRMA_REPLAY_VAL", {"oseq": 10, "seq": 20, "bitmap": 0xF0F0}),
        ("XFRMA_REPLAY_ESN_VAL", {"oseq": 1, "seq": 2, "oseq_hi": 3, "seq_hi": 4,
                                  "replay_window": 64, "bmp": [0xFFFF, 0x1]}),
        ("XFRMA_LTIME_VAL", {"bytes": 1000, "packets": 10, "add_time": 1234567,
                             "use_time": 1234568}),
    ]
    data = _encode(msg, XfrmMsg.NEWSA)
    attrs = data[NLMSG_HDR + 224:]
    replay = struct.pack("=HHIII", 16, 10, 10, 20, 0xF0F0)
    esn = struct.pack("=HHIIIIII", 4 + 24 + 8, 23, 2, 1, 2, 3, 4, 64)
    esn += struct.pack("=II", 0xFFFF, 1)
    ltime = struct.pack("=HHQQQQ", 36, 9, 1000, 10, 1234567, 1234568)
    assert attrs == replay + esn + ltime
    back = decode_message(data)
    assert back.get_attr("XFRMA_REPLAY_ESN_VAL")["bmp"] == [0xFFFF, 1]
    assert back.get_attr("XFRMA_REPLAY_VAL")["seq"] == 20
    assert back.get_attr("XFRMA_LTIME_VAL")["add_time"] == 1234567


def test_bare_struct_codecs_round_trip() -> None:
    tmpl = {"id_daddr": a4("1.2.3.4"), "id_spi": 5, "id_proto": 50, "family": 2,
            "saddr": a4("5.6.7.8"), "reqid": 9, "mode": 1, "share": 0, "optional": 0,
            "aalgos": 1, "ealgos": 2, "calgos": 3}
    packed = xfrm_user_tmpl.pack(tmpl)
    assert len(packed) == 64
    assert xfrm_user_tmpl.unpack(packed) == tmpl
    mig = {"old_daddr": a4("1.1.1.1"), "old_saddr": a4("2.2.2.2"), "new_daddr": a4("3.3.3.3"),
           "new_saddr": a4("4.4.4.4"), "proto": 50, "mode": 1, "reserved": 0, "reqid": 1,
           "old_family": 2, "new_family": 2}
    assert xfrm_user_migrate.unpack(xfrm_user_migrate.pack(mig)) == mig
