"""XFRM netlink message layouts (linux/xfrm.h) as pyroute2 message classes.

pyroute2 0.9 ships no IPsec module, so every layout the installer sends or
reads is written here. Nested C structs are flattened into prefixed fields
(``sel_daddr``, ``id_spi``, ``lft_hard_byte_limit``...) with the compiler's
padding spelled out as ``x`` fields, so each class is exactly as long as its
C struct on Linux (x86_64 and every other ABI where ``__u64`` is 8-aligned):
``xfrm_usersa_info`` 224 bytes, ``xfrm_userpolicy_info`` 168,
``xfrm_selector`` 56, ``xfrm_user_tmpl`` 64, ``xfrm_user_migrate`` 76.
Addresses are 16-byte ``xfrm_address_t`` blobs (IPv4 in the first four bytes);
SPIs and ports are big-endian, everything else host order.

Attributes whose payload is an array of structs without per-element headers
(``XFRMA_TMPL``, ``XFRMA_MIGRATE``) and the algorithm structs with a trailing
key of variable length get small codec classes of their own.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, ClassVar

from pyroute2.netlink import (
    nla,
    nlmsg,
    nlmsg_base,
    nlmsg_decoder_generic,
    nlmsg_encoder_generic,
)

XFRM_INF = (1 << 64) - 1
"""``XFRM_INF``: no byte or packet limit."""

AF_INET = 2
AF_INET6 = 10
IPPROTO_ESP = 50
UDP_ENCAP_ESPINUDP = 2
XFRM_AE_RVAL = 1


class XfrmMsg(IntEnum):
    """Netlink message types of NETLINK_XFRM (``XFRM_MSG_*``)."""

    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D
    NEWAE = 0x1E
    GETAE = 0x1F
    REPORT = 0x20
    MIGRATE = 0x21


class XfrmAttr(IntEnum):
    """Attribute types (``XFRMA_*``); the order is the kernel's enum."""

    UNSPEC = 0
    ALG_AUTH = 1
    ALG_CRYPT = 2
    ALG_COMP = 3
    ENCAP = 4
    TMPL = 5
    SA = 6
    POLICY = 7
    SEC_CTX = 8
    LTIME_VAL = 9
    REPLAY_VAL = 10
    REPLAY_THRESH = 11
    ETIMER_THRESH = 12
    SRCADDR = 13
    COADDR = 14
    LASTUSED = 15
    POLICY_TYPE = 16
    MIGRATE = 17
    ALG_AEAD = 18
    KMADDRESS = 19
    ALG_AUTH_TRUNC = 20
    MARK = 21
    TFCPAD = 22
    REPLAY_ESN_VAL = 23
    SA_EXTRA_FLAGS = 24
    PROTO = 25
    ADDRESS_FILTER = 26
    PAD = 27
    OFFLOAD_DEV = 28
    SET_MARK = 29
    SET_MARK_MASK = 30
    IF_ID = 31
    MTIMER_THRESH = 32
    SA_DIR = 33
    NAT_KEEPALIVE_INTERVAL = 34


class Direction(IntEnum):
    """Policy direction (``XFRM_POLICY_IN/OUT/FWD``)."""

    IN = 0
    OUT = 1
    FWD = 2


class PolicyAction(IntEnum):
    ALLOW = 0
    BLOCK = 1


class Mode(IntEnum):
    """``XFRM_MODE_*``; only transport and tunnel matter to IKEv2."""

    TRANSPORT = 0
    TUNNEL = 1


XFRM_STATE_ESN = 128
XFRM_STATE_AF_UNSPEC = 32

Fields = tuple[tuple[str, str], ...]


# --- field groups of the nested C structs ----------------------------------------


def selector_fields(p: str) -> Fields:
    """``struct xfrm_selector`` (56 bytes) with every name prefixed by `p`."""
    return (
        (f"{p}daddr", "16s"),
        (f"{p}saddr", "16s"),
        (f"{p}dport", ">H"),
        (f"{p}dport_mask", ">H"),
        (f"{p}sport", ">H"),
        (f"{p}sport_mask", ">H"),
        (f"{p}family", "H"),
        (f"{p}prefixlen_d", "B"),
        (f"{p}prefixlen_s", "B"),
        (f"{p}proto", "B"),
        (f"_{p}pad", "3x"),  # int ifindex is 4-aligned
        (f"{p}ifindex", "i"),
        (f"{p}user", "I"),
    )


def id_fields(p: str) -> Fields:
    """``struct xfrm_id`` (24 bytes): daddr, spi (big-endian), proto."""
    return ((f"{p}daddr", "16s"), (f"{p}spi", ">I"), (f"{p}proto", "B"), (f"_{p}pad", "3x"))


_LFT_CFG = (
    "soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
    "soft_add_expires_seconds", "hard_add_expires_seconds",
    "soft_use_expires_seconds", "hard_use_expires_seconds",
)
_LFT_CUR = ("bytes", "packets", "add_time", "use_time")


def lifetime_cfg_fields(p: str) -> Fields:
    """``struct xfrm_lifetime_cfg`` (64 bytes, eight ``__u64``)."""
    return tuple((f"{p}{name}", "Q") for name in _LFT_CFG)


def lifetime_cur_fields(p: str) -> Fields:
    """``struct xfrm_lifetime_cur`` (32 bytes, four ``__u64``)."""
    return tuple((f"{p}{name}", "Q") for name in _LFT_CUR)


def _size(fields: Fields) -> int:
    return sum(struct.calcsize(fmt) for _, fmt in fields)


SA_INFO_FIELDS: Fields = (
    *selector_fields("sel_"),          # 0
    *id_fields("id_"),                 # 56
    ("saddr", "16s"),                  # 80
    *lifetime_cfg_fields("lft_"),      # 96
    *lifetime_cur_fields("curlft_"),   # 160
    ("stats_replay_window", "I"),      # 192
    ("stats_replay", "I"),
    ("stats_integrity_failed", "I"),
    ("seq", "I"),                      # 204
    ("reqid", "I"),                    # 208
    ("family", "H"),                   # 212
    ("mode", "B"),                     # 214
    ("replay_window", "B"),            # 215
    ("flags", "B"),                    # 216
    ("_pad", "7x"),                    # __u64 alignment of the whole struct
)

POLICY_INFO_FIELDS: Fields = (
    *selector_fields("sel_"),          # 0
    *lifetime_cfg_fields("lft_"),      # 56
    *lifetime_cur_fields("curlft_"),   # 120
    ("priority", "I"),                 # 152
    ("index", "I"),                    # 156
    ("dir", "B"),                      # 160
    ("action", "B"),
    ("flags", "B"),
    ("share", "B"),
    ("_pad", "4x"),                    # __u64 alignment of the whole struct
)

USERSA_ID_FIELDS: Fields = (
    ("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("_pad", "x"),
)

USERPOLICY_ID_FIELDS: Fields = (
    *selector_fields("sel_"), ("index", "I"), ("dir", "B"), ("_pad", "3x"),
)

AEVENT_ID_FIELDS: Fields = (
    *USERSA_ID_FIELDS, ("saddr", "16s"), ("flags", "I"), ("reqid", "I"),
)

USER_TMPL_FIELDS: Fields = (
    *id_fields("id_"),                 # 0
    ("family", "H"),                   # 24
    ("_pad1", "2x"),
    ("saddr", "16s"),                  # 28
    ("reqid", "I"),                    # 44
    ("mode", "B"),                     # 48
    ("share", "B"),
    ("optional", "B"),
    ("_pad2", "x"),
    ("aalgos", "I"),                   # 52
    ("ealgos", "I"),
    ("calgos", "I"),
)

USER_MIGRATE_FIELDS: Fields = (
    ("old_daddr", "16s"),
    ("old_saddr", "16s"),
    ("new_daddr", "16s"),
    ("new_saddr", "16s"),
    ("proto", "B"),                    # 64
    ("mode", "B"),
    ("reserved", "H"),
    ("reqid", "I"),                    # 68
    ("old_family", "H"),               # 72
    ("new_family", "H"),
)

ENCAP_TMPL_FIELDS: Fields = (
    ("encap_type", "H"), ("encap_sport", ">H"), ("encap_dport", ">H"), ("_pad", "2x"),
    ("encap_oa", "16s"),
)

STRUCT_SIZES = {
    "xfrm_selector": _size(selector_fields("")),
    "xfrm_usersa_info": _size(SA_INFO_FIELDS),
    "xfrm_userpolicy_info": _size(POLICY_INFO_FIELDS),
    "xfrm_usersa_id": _size(USERSA_ID_FIELDS),
    "xfrm_userpolicy_id": _size(USERPOLICY_ID_FIELDS),
    "xfrm_aevent_id": _size(AEVENT_ID_FIELDS),
    "xfrm_user_tmpl": _size(USER_TMPL_FIELDS),
    "xfrm_user_migrate": _size(USER_MIGRATE_FIELDS),
    "xfrm_encap_tmpl": _size(ENCAP_TMPL_FIELDS),
}
"""Sizes as these layouts produce them; tests hold them to the kernel's."""


def _strip_padding(msg: dict[str, Any], fields: Fields) -> None:
    # The generic decoder stores an empty tuple for every pad field.
    for name, _ in fields:
        if name.startswith("_"):
            msg.pop(name, None)


class _zero_blobs:
    """Mixin: an unset ``NNs`` field encodes as zeros, as an unset number does."""

    def ft_encode(self, offset: int) -> Any:
        for name, fmt in self.fields:  # type: ignore[attr-defined]
            if fmt.endswith("s") and not isinstance(self.get(name), bytes | bytearray):  # type: ignore[attr-defined]
                self[name] = b""  # type: ignore[index]
        return super().ft_encode(offset)  # type: ignore[misc]


# --- bare structs (no netlink header): elements of XFRMA_TMPL / XFRMA_MIGRATE ----


class xfrm_struct(_zero_blobs, nlmsg_base, nlmsg_encoder_generic, nlmsg_decoder_generic):  # type: ignore[misc]
    """A C struct without any netlink header, encoded to exactly its size."""

    align = 0

    @classmethod
    def pack(cls, value: dict[str, Any]) -> bytes:
        obj = cls()
        obj.setvalue(dict(value))
        obj.encode()
        return bytes(obj.data)

    @classmethod
    def unpack(cls, data: bytes) -> dict[str, Any]:
        obj = cls(data=bytearray(data))
        obj.decode()
        out = {k: v for k, v in obj.items() if k not in ("attrs", "value", "header")}
        _strip_padding(out, cls.fields)
        return out


class xfrm_user_tmpl(xfrm_struct):
    fields = USER_TMPL_FIELDS


class xfrm_user_migrate(xfrm_struct):
    fields = USER_MIGRATE_FIELDS


# --- attributes -------------------------------------------------------------------


class _struct_array(nla):  # type: ignore[misc]
    """An attribute holding back-to-back structs of one type, no per-element header.

    Its value is a list of dicts, one per element.
    """

    element: ClassVar[type[xfrm_struct]]
    fields = (("value", "s"),)

    def encode(self) -> None:
        items = self["value"]
        if not isinstance(items, bytes | bytearray):
            self["value"] = b"".join(self.element.pack(item) for item in items)
        nla.encode(self)

    def decode(self) -> None:
        nla.decode(self)
        payload = bytes(self.data[self.offset + 4 : self.offset + self.length])
        size = _size(self.element.fields)
        self.value = [
            self.element.unpack(payload[i : i + size])
            for i in range(0, len(payload) - size + 1, size)
        ]


class _algo(_zero_blobs, nla):  # type: ignore[misc]
    """``xfrm_algo*``: a fixed head, then ``alg_key`` up to the attribute's end."""

    def decode(self) -> None:
        nla.decode(self)
        head = _size(self.fields[:-1])
        self["alg_key"] = bytes(self.data[self.offset + 4 + head : self.offset + self.length])
        self["alg_name"] = self["alg_name"].rstrip(b"\0")


class xfrm_attrs:
    """Mixin with the ``XFRMA_*`` map and the attribute classes it names."""

    nla_map = (
        (XfrmAttr.UNSPEC, "XFRMA_UNSPEC", "none"),
        (XfrmAttr.ALG_AUTH, "XFRMA_ALG_AUTH", "xfrm_algo"),
        (XfrmAttr.ALG_CRYPT, "XFRMA_ALG_CRYPT", "xfrm_algo"),
        (XfrmAttr.ALG_COMP, "XFRMA_ALG_COMP", "xfrm_algo"),
        (XfrmAttr.ENCAP, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (XfrmAttr.TMPL, "XFRMA_TMPL", "xfrm_tmpl_array"),
        (XfrmAttr.SA, "XFRMA_SA", "cdata"),
        (XfrmAttr.POLICY, "XFRMA_POLICY", "cdata"),
        (XfrmAttr.SEC_CTX, "XFRMA_SEC_CTX", "cdata"),
        (XfrmAttr.LTIME_VAL, "XFRMA_LTIME_VAL", "xfrm_lifetime_cur"),
        (XfrmAttr.REPLAY_VAL, "XFRMA_REPLAY_VAL", "xfrm_replay_state"),
        (XfrmAttr.REPLAY_THRESH, "XFRMA_REPLAY_THRESH", "uint32"),
        (XfrmAttr.ETIMER_THRESH, "XFRMA_ETIMER_THRESH", "uint32"),
        (XfrmAttr.SRCADDR, "XFRMA_SRCADDR", "cdata"),
        (XfrmAttr.COADDR, "XFRMA_COADDR", "cdata"),
        (XfrmAttr.LASTUSED, "XFRMA_LASTUSED", "uint64"),
        (XfrmAttr.POLICY_TYPE, "XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
        (XfrmAttr.MIGRATE, "XFRMA_MIGRATE", "xfrm_migrate_array"),
        (XfrmAttr.ALG_AEAD, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (XfrmAttr.KMADDRESS, "XFRMA_KMADDRESS", "xfrm_user_kmaddress"),
        (XfrmAttr.ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
        (XfrmAttr.MARK, "XFRMA_MARK", "xfrm_mark"),
        (XfrmAttr.TFCPAD, "XFRMA_TFCPAD", "uint32"),
        (XfrmAttr.REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (XfrmAttr.SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (XfrmAttr.PROTO, "XFRMA_PROTO", "uint8"),
        (XfrmAttr.ADDRESS_FILTER, "XFRMA_ADDRESS_FILTER", "cdata"),
        (XfrmAttr.PAD, "XFRMA_PAD", "none"),
        (XfrmAttr.OFFLOAD_DEV, "XFRMA_OFFLOAD_DEV", "cdata"),
        (XfrmAttr.SET_MARK, "XFRMA_SET_MARK", "uint32"),
        (XfrmAttr.SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "uint32"),
        (XfrmAttr.IF_ID, "XFRMA_IF_ID", "uint32"),
        (XfrmAttr.MTIMER_THRESH, "XFRMA_MTIMER_THRESH", "uint32"),
        (XfrmAttr.SA_DIR, "XFRMA_SA_DIR", "uint8"),
        (XfrmAttr.NAT_KEEPALIVE_INTERVAL, "XFRMA_NAT_KEEPALIVE_INTERVAL", "uint32"),
    )

    class xfrm_algo(_algo):
        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_key", "s"))

    class xfrm_algo_auth(_algo):
        fields = (
            ("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"), ("alg_key", "s"),
        )

    class xfrm_algo_aead(_algo):
        fields = (
            ("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"), ("alg_key", "s"),
        )

    class xfrm_encap_tmpl(_zero_blobs, nla):  # type: ignore[misc]
        fields = ENCAP_TMPL_FIELDS

        def decode(self) -> None:
            nla.decode(self)
            _strip_padding(self, self.fields)

    class xfrm_lifetime_cur(nla):  # type: ignore[misc]
        fields = lifetime_cur_fields("")

    class xfrm_replay_state(nla):  # type: ignore[misc]
        fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))

    class xfrm_replay_state_esn(nla):  # type: ignore[misc]
        """Head plus ``bmp_len`` 32-bit words of bitmap."""

        fields = (
            ("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"), ("seq_hi", "I"),
            ("replay_window", "I"), ("bmp", "s"),
        )

        def encode(self) -> None:
            words = self.get("bmp") or []
            if not isinstance(words, bytes | bytearray):
                self["bmp"] = struct.pack(f"={len(words)}I", *words)
            self["bmp_len"] = len(self["bmp"]) // 4
            nla.encode(self)

        def decode(self) -> None:
            nla.decode(self)
            raw = bytes(self.data[self.offset + 28 : self.offset + self.length])
            count = min(self["bmp_len"], len(raw) // 4)
            self["bmp"] = list(struct.unpack_from(f"={count}I", raw))

    class xfrm_mark(nla):  # type: ignore[misc]
        fields = (("v", "I"), ("m", "I"))

    class xfrm_userpolicy_type(nla):  # type: ignore[misc]
        fields = (("type", "B"), ("_pad", "x"), ("reserved1", "H"), ("reserved2", "B"),
                  ("_pad2", "x"))

        def decode(self) -> None:
            nla.decode(self)
            _strip_padding(self, self.fields)

    class xfrm_user_kmaddress(_zero_blobs, nla):  # type: ignore[misc]
        fields = (("local", "16s"), ("remote", "16s"), ("reserved", "I"), ("family", "H"),
                  ("_pad", "2x"))

        def decode(self) -> None:
            nla.decode(self)
            _strip_padding(self, self.fields)

    class xfrm_tmpl_array(_struct_array):
        element = xfrm_user_tmpl

    class xfrm_migrate_array(_struct_array):
        element = xfrm_user_migrate


# --- messages ----------------------------------------------------------------------


class _xfrm_msg(_zero_blobs, xfrm_attrs, nlmsg):  # type: ignore[misc]
    def decode(self) -> None:
        nlmsg.decode(self)
        _strip_padding(self, self.fields)


class xfrm_usersa_info(_xfrm_msg):
    """NEWSA / UPDSA request, and GETSA answer or dump entry."""

    fields = SA_INFO_FIELDS


class xfrm_usersa_id(_xfrm_msg):
    """DELSA / GETSA request."""

    fields = USERSA_ID_FIELDS


class xfrm_aevent_id(_xfrm_msg):
    """GETAE request and NEWAE answer (replay state and lifetime counters)."""

    fields = AEVENT_ID_FIELDS


class xfrm_userpolicy_info(_xfrm_msg):
    """NEWPOLICY / UPDPOLICY request, and GETPOLICY answer or dump entry."""

    fields = POLICY_INFO_FIELDS


class xfrm_userpolicy_id(_xfrm_msg):
    """DELPOLICY / GETPOLICY / MIGRATE request (with XFRMA_MIGRATE for the latter)."""

    fields = USERPOLICY_ID_FIELDS


MSG_CLASSES: dict[int, type[nlmsg]] = {
    XfrmMsg.NEWSA: xfrm_usersa_info,
    XfrmMsg.UPDSA: xfrm_usersa_info,
    XfrmMsg.DELSA: xfrm_usersa_id,
    XfrmMsg.GETSA: xfrm_usersa_id,
    XfrmMsg.NEWPOLICY: xfrm_userpolicy_info,
    XfrmMsg.UPDPOLICY: xfrm_userpolicy_info,
    XfrmMsg.DELPOLICY: xfrm_userpolicy_id,
    XfrmMsg.GETPOLICY: xfrm_userpolicy_id,
    XfrmMsg.MIGRATE: xfrm_userpolicy_id,
    XfrmMsg.NEWAE: xfrm_aevent_id,
    XfrmMsg.GETAE: xfrm_aevent_id,
}
"""Message type -> class, for decoding what the kernel sends back."""


def decode_message(data: bytes) -> nlmsg:
    """Decode one netlink message (header included) with the class its type names."""
    (msg_type,) = struct.unpack_from("=H", data, 4)
    cls = MSG_CLASSES.get(msg_type, nlmsg)
    msg = cls(data=bytearray(data))
    msg.decode()
    return msg
