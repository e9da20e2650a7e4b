"""Kernel XFRM installer: ESP SAs and policies over NETLINK_XFRM, MOBIKE moves, ESP detection.

The daemon does not drive it yet: it probes the kernel (``select_data_plane``),
says so in ``data_plane_selected``, and runs userspace ESP on every kernel.
Everything here is synchronous and blocking: the daemon calls it from an executor.
One :class:`XfrmInstaller` owns one netlink socket, opened in a named network
namespace if asked, and serialises its requests with a lock.

A MOBIKE move of an SA is done the way charon's kernel-netlink plugin does it:
read the SA back (GETSA), delete it, and add it again with the new outer
addresses and UDP encapsulation, carrying over the current replay state and
the lifetime counters so that neither sequence numbers nor expiry restart.
Policies move either by rewriting them or with XFRM_MSG_MIGRATE. While a move
is in flight, :meth:`XfrmInstaller.block_during` keeps a block policy in the
place of each affected policy so that nothing leaves in clear. As in charon,
the kernel holds one policy per (selector, direction, mark), so the block
takes the policy's place rather than sitting next to it; policy changes made
inside the block are held back and written when it ends.

Exceptions that escape the public methods: :class:`XfrmError` and its
subclasses, nothing else (a bug aside).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.exceptions import NetlinkError

from ..types import IPAddress
from .xfrm_msgs import (
    AF_INET,
    AF_INET6,
    IPPROTO_ESP,
    MSG_CLASSES,
    UDP_ENCAP_ESPINUDP,
    XFRM_INF,
    XFRM_STATE_AF_UNSPEC,
    XFRM_STATE_ESN,
    Direction,
    Mode,
    PolicyAction,
    XfrmMsg,
    xfrm_userpolicy_id,
    xfrm_userpolicy_info,
    xfrm_usersa_id,
    xfrm_usersa_info,
)

__all__ = [
    "BLOCK_PRIORITY",
    "DEFAULT_PRIORITY",
    "Aead",
    "Cipher",
    "Direction",
    "Encap",
    "EspProbe",
    "EspUnavailable",
    "EventSink",
    "Integrity",
    "Lifetime",
    "Mark",
    "Migration",
    "Mode",
    "NetlinkXfrmTransport",
    "Policy",
    "PolicyAction",
    "PolicyKey",
    "SaId",
    "SaSpec",
    "SaState",
    "Selector",
    "Template",
    "XfrmError",
    "XfrmInstaller",
    "XfrmTransport",
    "aes_cbc",
    "aes_gcm16",
    "hmac",
    "kernel_has_esp",
    "migrated",
    "migration_message",
    "moved_sa_message",
    "probe_kernel_esp",
    "select_data_plane",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PRIORITY = 1000
"""Priority of policies added without one (lower number wins in XFRM)."""
BLOCK_PRIORITY = 1
"""Priority of the block policies held while a move is in flight."""

_ACK = NLM_F_REQUEST | NLM_F_ACK
_ALL_ALGOS = 0xFFFFFFFF
# errno values the kernel answers when it lacks ESP itself (EPROTONOSUPPORT,
# "Requested type not found") or the algorithm asked for (ENOSYS, "Requested
# AEAD algorithm not found"); ENOPKG for a crypto module that cannot load.
_NO_ESP_ERRNOS = frozenset({errno.EPROTONOSUPPORT, errno.ENOSYS, errno.ENOPKG})


# --- errors -----------------------------------------------------------------------


class XfrmError(Exception):
    """The kernel refused an XFRM request, or the socket could not be had."""

    def __init__(self, op: str, code: int, detail: str = "") -> None:
        self.op = op
        self.errno = code
        self.detail = detail or (errno.errorcode.get(code, str(code)) if code else "")
        super().__init__(f"{op} failed: {self.detail} (errno {code})")


class EspUnavailable(XfrmError):
    """The kernel cannot carry ESP (no ESP protocol, or not this algorithm)."""


def _error(op: str, exc: NetlinkError) -> XfrmError:
    code = int(exc.code)
    detail = str(exc.args[1]) if len(exc.args) > 1 else ""
    if op in ("add_sa", "update_sa", "update_endpoints") and code in _NO_ESP_ERRNOS:
        return EspUnavailable(op, code, detail)
    return XfrmError(op, code, detail)


# --- value types --------------------------------------------------------------------


def _family(addr: IPAddress | IPNetwork) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def _blob(addr: IPAddress | None) -> bytes:
    """An address as ``xfrm_address_t``: 16 bytes, IPv4 in the first four."""
    return b"" if addr is None else addr.packed.ljust(16, b"\0")


def _addr(blob: bytes, family: int) -> IPAddress:
    if family == AF_INET6:
        return ipaddress.IPv6Address(bytes(blob[:16]))
    return ipaddress.IPv4Address(bytes(blob[:4]))


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic an SA or policy applies to; port 0 and proto 0 mean any."""

    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sport: int = 0
    dport: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("selector mixes IPv4 and IPv6")

    @classmethod
    def parse(cls, src: str, dst: str, proto: int = 0, sport: int = 0,
              dport: int = 0) -> Selector:
        return cls(ipaddress.ip_network(src), ipaddress.ip_network(dst), proto, sport, dport)

    @property
    def family(self) -> int:
        return _family(self.src)

    def fields(self, prefix: str = "sel_") -> dict[str, Any]:
        return {
            f"{prefix}daddr": _blob(self.dst.network_address),
            f"{prefix}saddr": _blob(self.src.network_address),
            f"{prefix}dport": self.dport,
            f"{prefix}dport_mask": 0xFFFF if self.dport else 0,
            f"{prefix}sport": self.sport,
            f"{prefix}sport_mask": 0xFFFF if self.sport else 0,
            f"{prefix}family": self.family,
            f"{prefix}prefixlen_d": self.dst.prefixlen,
            f"{prefix}prefixlen_s": self.src.prefixlen,
            f"{prefix}proto": self.proto,
        }

    @classmethod
    def from_fields(cls, msg: Any, prefix: str = "sel_") -> Selector:
        family = msg[f"{prefix}family"]
        src = ipaddress.ip_network(
            (_addr(msg[f"{prefix}saddr"], family), msg[f"{prefix}prefixlen_s"]), strict=False)
        dst = ipaddress.ip_network(
            (_addr(msg[f"{prefix}daddr"], family), msg[f"{prefix}prefixlen_d"]), strict=False)
        return cls(src, dst, msg[f"{prefix}proto"], msg[f"{prefix}sport"], msg[f"{prefix}dport"])


@dataclass(frozen=True, slots=True)
class Mark:
    """An XFRM mark: packets whose ``fwmark & mask == value`` match."""

    value: int
    mask: int = 0xFFFFFFFF

    def attr(self) -> tuple[str, dict[str, int]]:
        return ("XFRMA_MARK", {"v": self.value, "m": self.mask})


@dataclass(frozen=True, slots=True)
class Aead:
    """An AEAD transform; ``key`` includes the salt (RFC 4106: 4 bytes)."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int


@dataclass(frozen=True, slots=True)
class Cipher:
    name: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Integrity:
    name: str
    key: bytes = field(repr=False)
    trunc_bits: int


def aes_gcm16(key_and_salt: bytes) -> Aead:
    """AES-GCM with a 16-byte ICV (ESP transform ENCR_AES_GCM_16)."""
    if len(key_and_salt) not in (20, 28, 36):
        raise ValueError("AES-GCM needs a 16/24/32-byte key plus a 4-byte salt")
    return Aead("rfc4106(gcm(aes))", key_and_salt, 128)


def aes_cbc(key: bytes) -> Cipher:
    if len(key) not in (16, 24, 32):
        raise ValueError("AES-CBC needs a 16/24/32-byte key")
    return Cipher("cbc(aes)", key)


_HMAC_TRUNC = {"sha1": 96, "sha256": 128, "sha384": 192, "sha512": 256}


def hmac(hash_name: str, key: bytes) -> Integrity:
    """HMAC with the truncation IKEv2 uses (RFC 4868 / RFC 2404): sha1 96 ... sha512 256."""
    try:
        trunc = _HMAC_TRUNC[hash_name]
    except KeyError:
        raise ValueError(f"unsupported HMAC hash {hash_name!r}") from None
    return Integrity(f"hmac({hash_name})", key, trunc)


@dataclass(frozen=True, slots=True)
class Encap:
    """ESP-in-UDP (RFC 3948) ports of an SA: source and destination as sent."""

    sport: int = 4500
    dport: int = 4500

    def attr(self) -> tuple[str, dict[str, Any]]:
        return ("XFRMA_ENCAP", {
            "encap_type": UDP_ENCAP_ESPINUDP, "encap_sport": self.sport,
            "encap_dport": self.dport, "encap_oa": b"",
        })


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft and hard limits; bytes/packets ``XFRM_INF`` and seconds 0 mean none."""

    soft_bytes: int = XFRM_INF
    hard_bytes: int = XFRM_INF
    soft_packets: int = XFRM_INF
    hard_packets: int = XFRM_INF
    soft_add_seconds: int = 0
    hard_add_seconds: int = 0
    soft_use_seconds: int = 0
    hard_use_seconds: int = 0

    def fields(self, prefix: str = "lft_") -> dict[str, int]:
        return {
            f"{prefix}soft_byte_limit": self.soft_bytes,
            f"{prefix}hard_byte_limit": self.hard_bytes,
            f"{prefix}soft_packet_limit": self.soft_packets,
            f"{prefix}hard_packet_limit": self.hard_packets,
            f"{prefix}soft_add_expires_seconds": self.soft_add_seconds,
            f"{prefix}hard_add_expires_seconds": self.hard_add_seconds,
            f"{prefix}soft_use_expires_seconds": self.soft_use_seconds,
            f"{prefix}hard_use_expires_seconds": self.hard_use_seconds,
        }

    @classmethod
    def from_fields(cls, msg: Any, prefix: str = "lft_") -> Lifetime:
        return cls(*(msg[name] for name in cls().fields(prefix)))


@dataclass(frozen=True, slots=True)
class SaId:
    """What identifies an SA to the kernel: destination, SPI, protocol (and mark)."""

    dst: IPAddress
    spi: int
    proto: int = IPPROTO_ESP
    mark: Mark | None = None

    def message(self) -> xfrm_usersa_id:
        msg = xfrm_usersa_id()
        msg.update(daddr=_blob(self.dst), spi=self.spi, family=_family(self.dst),
                   proto=self.proto)
        msg["attrs"] = [self.mark.attr()] if self.mark else []
        return msg


@dataclass(frozen=True, slots=True)
class SaSpec:
    """One ESP SA to install: AEAD alone, or a cipher with an integrity algorithm."""

    src: IPAddress
    dst: IPAddress
    spi: int
    reqid: int = 0
    aead: Aead | None = None
    cipher: Cipher | None = None
    integrity: Integrity | None = None
    mode: Mode = Mode.TUNNEL
    encap: Encap | None = None
    replay_window: int = 32
    esn: bool = False
    lifetime: Lifetime = Lifetime()
    mark: Mark | None = None
    selector: Selector | None = None

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("SA endpoints mix IPv4 and IPv6")
        if (self.aead is None) == (self.cipher is None):
            raise ValueError("an SA needs either an AEAD or a cipher")
        if self.aead is not None and self.integrity is not None:
            raise ValueError("an AEAD SA takes no separate integrity algorithm")
        if self.cipher is not None and self.integrity is None:
            raise ValueError("a cipher needs an integrity algorithm")
        if not 0 <= self.replay_window <= 4096:
            raise ValueError("replay window must be 0..4096")
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise ValueError("SPI must be a non-zero 32-bit value")

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, IPPROTO_ESP, self.mark)

    def message(self) -> xfrm_usersa_info:
        """The XFRM_MSG_NEWSA / UPDSA body with its attributes."""
        msg = xfrm_usersa_info()
        family = _family(self.dst)
        if self.selector is not None:
            msg.update(self.selector.fields("sel_"))
        msg.update(self.lifetime.fields("lft_"))
        # A window beyond the 32 bits of the legacy state, or ESN, needs the
        # ESN replay attribute, and then the legacy field must stay 0.
        big_window = self.esn or self.replay_window > 32
        flags = XFRM_STATE_ESN if self.esn else 0
        if self.mode == Mode.TUNNEL:
            flags |= XFRM_STATE_AF_UNSPEC  # inner family may differ from the outer
        msg.update(
            id_daddr=_blob(self.dst), id_spi=self.spi, id_proto=IPPROTO_ESP,
            saddr=_blob(self.src), reqid=self.reqid, family=family, mode=int(self.mode),
            replay_window=0 if big_window else self.replay_window, flags=flags,
        )
        attrs: list[tuple[str, Any]] = []
        if self.aead is not None:
            attrs.append(("XFRMA_ALG_AEAD", {
                "alg_name": self.aead.name.encode(), "alg_key_len": len(self.aead.key) * 8,
                "alg_icv_len": self.aead.icv_bits, "alg_key": self.aead.key,
            }))
        else:
            assert self.cipher is not None and self.integrity is not None
            attrs.append(("XFRMA_ALG_CRYPT", {
                "alg_name": self.cipher.name.encode(),
                "alg_key_len": len(self.cipher.key) * 8, "alg_key": self.cipher.key,
            }))
            attrs.append(("XFRMA_ALG_AUTH_TRUNC", {
                "alg_name": self.integrity.name.encode(),
                "alg_key_len": len(self.integrity.key) * 8,
                "alg_trunc_len": self.integrity.trunc_bits, "alg_key": self.integrity.key,
            }))
        if self.encap is not None:
            attrs.append(self.encap.attr())
        if big_window:
            words = max(1, (self.replay_window + 31) // 32)
            attrs.append(("XFRMA_REPLAY_ESN_VAL", {
                "oseq": 0, "seq": 0, "oseq_hi": 0, "seq_hi": 0,
                "replay_window": self.replay_window, "bmp": [0] * words,
            }))
        if self.mark is not None:
            attrs.append(self.mark.attr())
        msg["attrs"] = attrs
        return msg


@dataclass(frozen=True, slots=True)
class SaState:
    """An installed SA as the kernel reports it (no key material kept)."""

    src: IPAddress
    dst: IPAddress
    spi: int
    reqid: int
    mode: Mode
    encap: Encap | None
    replay: dict[str, Any]
    """The replay attribute's fields (``oseq``, ``seq``, ...), empty if none."""
    bytes: int
    packets: int
    add_time: int

    @classmethod
    def from_message(cls, msg: Any) -> SaState:
        family = msg["family"]
        encap = msg.get_attr("XFRMA_ENCAP")
        replay = msg.get_attr("XFRMA_REPLAY_ESN_VAL") or msg.get_attr("XFRMA_REPLAY_VAL")
        return cls(
            src=_addr(msg["saddr"], family), dst=_addr(msg["id_daddr"], family),
            spi=msg["id_spi"], reqid=msg["reqid"], mode=Mode(msg["mode"]),
            encap=None if encap is None else Encap(encap["encap_sport"], encap["encap_dport"]),
            replay={} if replay is None else _plain(replay),
            bytes=msg["curlft_bytes"], packets=msg["curlft_packets"],
            add_time=msg["curlft_add_time"],
        )


@dataclass(frozen=True, slots=True)
class Template:
    """One ``tmpl`` of a policy: the SA that must protect its traffic."""

    src: IPAddress
    dst: IPAddress
    reqid: int = 0
    spi: int = 0
    proto: int = IPPROTO_ESP
    mode: Mode = Mode.TUNNEL
    optional: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "id_daddr": _blob(self.dst), "id_spi": self.spi, "id_proto": self.proto,
            "family": _family(self.dst), "saddr": _blob(self.src), "reqid": self.reqid,
            "mode": int(self.mode), "optional": int(self.optional),
            "aalgos": _ALL_ALGOS, "ealgos": _ALL_ALGOS, "calgos": _ALL_ALGOS,
        }

    @classmethod
    def from_fields(cls, item: dict[str, Any]) -> Template:
        family = item["family"]
        return cls(
            src=_addr(item["saddr"], family), dst=_addr(item["id_daddr"], family),
            reqid=item["reqid"], spi=item["id_spi"], proto=item["id_proto"],
            mode=Mode(item["mode"]), optional=bool(item["optional"]),
        )


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """What identifies a policy to the kernel: selector, direction, mark."""

    selector: Selector
    direction: Direction
    mark: Mark | None = None

    def message(self) -> xfrm_userpolicy_id:
        msg = xfrm_userpolicy_id()
        msg.update(self.selector.fields("sel_"))
        msg.update(index=0, dir=int(self.direction))
        msg["attrs"] = [self.mark.attr()] if self.mark else []
        return msg


@dataclass(frozen=True, slots=True)
class Policy:
    """An IPsec policy: traffic, direction, and the templates (or a block)."""

    selector: Selector
    direction: Direction
    templates: tuple[Template, ...] = ()
    priority: int = DEFAULT_PRIORITY
    action: PolicyAction = PolicyAction.ALLOW
    mark: Mark | None = None
    index: int = field(default=0, compare=False)
    """Kernel-assigned; ignored when installing and when comparing."""

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.selector, self.direction, self.mark)

    def message(self) -> xfrm_userpolicy_info:
        msg = xfrm_userpolicy_info()
        msg.update(self.selector.fields("sel_"))
        msg.update(Lifetime().fields("lft_"))
        msg.update(priority=self.priority, index=0, dir=int(self.direction),
                   action=int(self.action), flags=0, share=0)
        attrs: list[tuple[str, Any]] = []
        if self.templates:
            attrs.append(("XFRMA_TMPL", [t.fields() for t in self.templates]))
        if self.mark is not None:
            attrs.append(self.mark.attr())
        msg["attrs"] = attrs
        return msg

    @classmethod
    def from_message(cls, msg: Any) -> Policy:
        tmpls = msg.get_attr("XFRMA_TMPL") or []
        mark = msg.get_attr("XFRMA_MARK")
        return cls(
            selector=Selector.from_fields(msg, "sel_"), direction=Direction(msg["dir"]),
            templates=tuple(Template.from_fields(t) for t in tmpls),
            priority=msg["priority"], action=PolicyAction(msg["action"]),
            mark=None if mark is None else Mark(mark["v"], mark["m"]),
            index=msg["index"],
        )


@dataclass(frozen=True, slots=True)
class Migration:
    """One endpoint change for XFRM_MSG_MIGRATE: templates (and SAs) whose
    outer addresses are (old_src, old_dst) get (new_src, new_dst)."""

    old_src: IPAddress
    old_dst: IPAddress
    new_src: IPAddress
    new_dst: IPAddress
    reqid: int = 0
    proto: int = IPPROTO_ESP
    mode: Mode = Mode.TUNNEL

    def fields(self) -> dict[str, Any]:
        return {
            "old_daddr": _blob(self.old_dst), "old_saddr": _blob(self.old_src),
            "new_daddr": _blob(self.new_dst), "new_saddr": _blob(self.new_src),
            "proto": self.proto, "mode": int(self.mode), "reserved": 0, "reqid": self.reqid,
            "old_family": _family(self.old_dst), "new_family": _family(self.new_dst),
        }

    def applies_to(self, tmpl: Template) -> bool:
        # The kernel's rule (migrate_tmpl_match): proto, mode, reqid if given, addresses.
        return (tmpl.proto == self.proto and tmpl.mode == self.mode
                and (self.reqid == 0 or tmpl.reqid == self.reqid)
                and tmpl.src == self.old_src and tmpl.dst == self.old_dst)


def migration_message(key: PolicyKey, migrations: Sequence[Migration]) -> xfrm_userpolicy_id:
    """XFRM_MSG_MIGRATE: the policy's id and one ``xfrm_user_migrate`` per change."""
    msg = key.message()
    msg["attrs"] = [("XFRMA_MIGRATE", [m.fields() for m in migrations])]
    return msg


def migrated(policy: Policy, migrations: Sequence[Migration]) -> Policy:
    """The policy as XFRM_MSG_MIGRATE leaves it, computed without the kernel."""
    templates = []
    for tmpl in policy.templates:
        for mig in migrations:
            if mig.applies_to(tmpl):
                tmpl = replace(tmpl, src=mig.new_src, dst=mig.new_dst)
                break
        templates.append(tmpl)
    return replace(policy, templates=tuple(templates))


# --- moving an SA (charon's update_sa) ----------------------------------------------

# Attributes carried from the old SA to the new one. What the kernel only
# reports (offload, address filters) or what depends on the encapsulation
# being rebuilt is left out; the encapsulation itself is written afresh.
_CARRIED_ATTRS = frozenset({
    "XFRMA_ALG_AUTH", "XFRMA_ALG_AUTH_TRUNC", "XFRMA_ALG_CRYPT", "XFRMA_ALG_AEAD",
    "XFRMA_ALG_COMP", "XFRMA_TFCPAD", "XFRMA_MARK", "XFRMA_SET_MARK",
    "XFRMA_SET_MARK_MASK", "XFRMA_IF_ID", "XFRMA_REPLAY_VAL", "XFRMA_REPLAY_ESN_VAL",
    "XFRMA_SA_EXTRA_FLAGS", "XFRMA_REPLAY_THRESH", "XFRMA_ETIMER_THRESH",
    "XFRMA_LASTUSED", "XFRMA_COADDR", "XFRMA_SA_DIR",
})


def _plain(value: Any) -> Any:
    """A decoded attribute value as plain data (pyroute2 hands back its own objects)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("header", "attrs")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def moved_sa_message(old: Any, new_src: IPAddress, new_dst: IPAddress,
                     encap: Encap | None) -> xfrm_usersa_info:
    """The NEWSA request that re-creates the SA `old` (a GETSA answer) on new endpoints.

    Everything but the outer addresses and the encapsulation is kept; the
    replay state comes along as reported, and the lifetime counters
    (bytes, packets, add and use time) through XFRMA_LTIME_VAL, which the
    kernel, unlike the counters in the body, does apply to a new SA.
    """
    if new_src.version != new_dst.version:
        raise ValueError("new endpoints mix IPv4 and IPv6")
    msg = xfrm_usersa_info()
    for name, _ in xfrm_usersa_info.fields:
        if not name.startswith("_"):
            msg[name] = _plain(old[name])
    msg.update(family=_family(new_dst), id_daddr=_blob(new_dst), saddr=_blob(new_src))
    attrs: list[tuple[str, Any]] = []
    has_esn = False
    for nla_slot in old["attrs"]:
        name, value = nla_slot[0], nla_slot[1]
        if name in _CARRIED_ATTRS:
            attrs.append((name, _plain(value)))
            has_esn = has_esn or name == "XFRMA_REPLAY_ESN_VAL"
    if has_esn:
        msg["replay_window"] = 0  # the kernel reports the ESN window there, but refuses it back
    if encap is not None:
        attrs.append(encap.attr())
    attrs.append(("XFRMA_LTIME_VAL", {
        "bytes": old["curlft_bytes"], "packets": old["curlft_packets"],
        "add_time": old["curlft_add_time"], "use_time": old["curlft_use_time"],
    }))
    msg["attrs"] = attrs
    return msg


# --- the socket ----------------------------------------------------------------------


class XfrmTransport(Protocol):
    """What the installer needs from a netlink socket (a seam for tests)."""

    def request(self, msg: nlmsg, msg_type: int, flags: int) -> list[Any]: ...

    def close(self) -> None: ...


class NetlinkXfrmTransport:
    """A pyroute2 NETLINK_XFRM socket, opened inside `netns` when one is named."""

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2.netlink import NETLINK_XFRM
        from pyroute2.netlink.nlsocket import NetlinkSocket

        try:
            # flags=0: never create the namespace as a side effect of a typo.
            self._sock = NetlinkSocket(family=NETLINK_XFRM, netns=netns, flags=0,
                                       ext_ack=True)
        except OSError as exc:
            raise XfrmError("open", exc.errno or 0, str(exc)) from exc
        except Exception as exc:  # pyroute2 wraps netns failures in its own types
            raise XfrmError("open", 0, f"{type(exc).__name__}: {exc}") from exc
        self._sock.register_policy(dict(MSG_CLASSES))

    def request(self, msg: nlmsg, msg_type: int, flags: int) -> list[Any]:
        return list(self._sock.nlm_request(msg, msg_type=msg_type, msg_flags=flags))

    def close(self) -> None:
        self._sock.close()


def _replies(msgs: Iterable[Any], msg_type: int) -> list[Any]:
    return [m for m in msgs if m["header"]["type"] == msg_type]


@dataclass(slots=True)
class _Block:
    saved: Policy | None
    pending: Policy | None = None
    touched: bool = False
    """True once a policy change for this key was held back during the block."""


class XfrmInstaller:
    """SAs and policies in one network namespace's XFRM database.

    Thread-safe: requests are serialised, so the daemon may call it from any
    executor thread. Construct it off the event loop's thread as well
    (pyroute2's sync socket runs a loop of its own; on a thread with a running
    loop the constructor raises XfrmError). Key material is never logged.
    """

    def __init__(self, *, netns: str | None = None,
                 transport: XfrmTransport | None = None, log: Any = None) -> None:
        self._transport = transport if transport is not None else NetlinkXfrmTransport(netns)
        self._lock = threading.RLock()
        self._blocks: dict[PolicyKey, _Block] = {}
        self._log = log

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> XfrmInstaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing

    def _request(self, op: str, msg_type: int, msg: nlmsg, flags: int = _ACK) -> list[Any]:
        with self._lock:
            try:
                return self._transport.request(msg, msg_type, flags)
            except NetlinkError as exc:
                raise _error(op, exc) from exc
            except OSError as exc:
                raise XfrmError(op, exc.errno or 0, str(exc)) from exc

    def _emit(self, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log.debug(event, **fields)

    # --- SAs

    def add_sa(self, spec: SaSpec) -> None:
        """Install a new SA; EEXIST if its (dst, SPI) is taken, EspUnavailable without ESP."""
        self._request("add_sa", XfrmMsg.NEWSA, spec.message())
        self._emit("xfrm_sa_added", spi=f"{spec.spi:08x}", src=str(spec.src), dst=str(spec.dst))

    def update_sa(self, spec: SaSpec) -> None:
        """Replace an SA's parameters in place (XFRM_MSG_UPDSA)."""
        self._request("update_sa", XfrmMsg.UPDSA, spec.message())

    def delete_sa(self, sa: SaId) -> None:
        self._request("delete_sa", XfrmMsg.DELSA, sa.message())
        self._emit("xfrm_sa_deleted", spi=f"{sa.spi:08x}", dst=str(sa.dst))

    def _get_sa_message(self, sa: SaId) -> Any:
        replies = _replies(self._request("get_sa", XfrmMsg.GETSA, sa.message(), NLM_F_REQUEST),
                           XfrmMsg.NEWSA)
        if not replies:
            raise XfrmError("get_sa", errno.ENOENT, "no SA in the answer")
        return replies[0]

    def get_sa(self, sa: SaId) -> SaState:
        return SaState.from_message(self._get_sa_message(sa))

    def update_endpoints(self, sa: SaId, new_src: IPAddress, new_dst: IPAddress,
                         encap: Encap | None) -> SaId:
        """Move an SA to new outer addresses and encapsulation, as charon does on MOBIKE.

        Read it back, delete it, add it again with the new endpoints, the
        replay state and the lifetime counters it had. If the re-add fails the
        old SA is put back before the error is raised. Returns the SA's new id
        (its destination may have changed).
        """
        old = self._get_sa_message(sa)
        new_msg = moved_sa_message(old, new_src, new_dst, encap)
        restore = moved_sa_message(old, _addr(old["saddr"], old["family"]),
                                   _addr(old["id_daddr"], old["family"]),
                                   _old_encap(old))
        self.delete_sa(sa)
        try:
            self._request("update_endpoints", XfrmMsg.NEWSA, new_msg)
        except XfrmError:
            with contextlib.suppress(XfrmError):
                self._request("update_endpoints", XfrmMsg.NEWSA, restore)
            raise
        self._emit("xfrm_sa_moved", spi=f"{sa.spi:08x}", src=str(new_src), dst=str(new_dst),
                   encap=encap is not None)
        return replace(sa, dst=new_dst)

    # --- policies

    def add_policy(self, policy: Policy) -> None:
        """Install a policy; EEXIST if one with the same key exists."""
        if self._hold(policy.key, policy):
            return
        self._request("add_policy", XfrmMsg.NEWPOLICY, policy.message())

    def update_policy(self, policy: Policy) -> None:
        """Install or replace the policy with this key (XFRM_MSG_UPDPOLICY)."""
        if self._hold(policy.key, policy):
            return
        self._request("update_policy", XfrmMsg.UPDPOLICY, policy.message())

    def delete_policy(self, key: PolicyKey) -> None:
        if self._hold(key, None):
            return
        self._request("delete_policy", XfrmMsg.DELPOLICY, key.message())

    def get_policy(self, key: PolicyKey) -> Policy | None:
        """The policy with this key as installed (a block while one is held), or None."""
        try:
            msgs = self._request("get_policy", XfrmMsg.GETPOLICY, key.message(), NLM_F_REQUEST)
        except XfrmError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        replies = _replies(msgs, XfrmMsg.NEWPOLICY)
        return Policy.from_message(replies[0]) if replies else None

    def policies(self) -> list[Policy]:
        """Every main-type IPsec policy (socket policies left out)."""
        msgs = self._request("list_policies", XfrmMsg.GETPOLICY, xfrm_userpolicy_info(),
                             NLM_F_REQUEST | NLM_F_DUMP)
        out = []
        for msg in _replies(msgs, XfrmMsg.NEWPOLICY):
            if msg["dir"] > Direction.FWD:
                continue
            ptype = msg.get_attr("XFRMA_POLICY_TYPE")
            if ptype is not None and ptype["type"] != 0:
                continue
            out.append(Policy.from_message(msg))
        return out

    def migrate(self, key: PolicyKey, migrations: Sequence[Migration]) -> None:
        """Move a policy's templates (and, with ESP in the kernel, the matching SAs)
        to new endpoints with XFRM_MSG_MIGRATE.

        The kernel answers ENOENT when no policy has this key and ENODATA when
        none of its templates matches a migration; both leave it unchanged.
        Inside :meth:`block_during` for this key, the change is applied to
        the held-back policy instead and written when the block ends.
        """
        if not migrations:
            return
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                base = block.pending if block.touched else block.saved
                if base is None:
                    raise XfrmError("migrate", errno.ENOENT, "no policy behind the block")
                block.pending, block.touched = migrated(base, migrations), True
                return
        self._request("migrate", XfrmMsg.MIGRATE, migration_message(key, migrations))
        self._emit("xfrm_policy_migrated", direction=key.direction.name.lower(),
                   count=len(migrations))

    # --- blocking while a move is in flight

    def _hold(self, key: PolicyKey, policy: Policy | None) -> bool:
        with self._lock:
            block = self._blocks.get(key)
            if block is None:
                return False
            block.pending, block.touched = policy, True
            return True

    @contextlib.contextmanager
    def block_during(self, keys: Iterable[PolicyKey],
                     priority: int = BLOCK_PRIORITY) -> Iterator[None]:
        """Block the traffic of `keys` while the body moves the SAs, so nothing leaks.

        Each key's policy is replaced by a block policy of high priority
        (what charon does with its drop policies during an update). Policy
        changes for these keys inside the body are held back; on the way out
        each key gets its latest held-back policy, or the one it had, or none.
        """
        keys = list(dict.fromkeys(keys))
        entered: list[PolicyKey] = []
        try:
            with self._lock:
                for key in keys:
                    if key in self._blocks:
                        raise XfrmError("block", errno.EBUSY, "a block is already held for it")
                    saved = self.get_policy(key)
                    block = Policy(key.selector, key.direction, priority=priority,
                                   action=PolicyAction.BLOCK, mark=key.mark)
                    self._request("block", XfrmMsg.UPDPOLICY, block.message())
                    self._blocks[key] = _Block(saved)
                    entered.append(key)
            self._emit("xfrm_block_added", count=len(entered))
            yield
        finally:
            self._release(entered)

    def _release(self, keys: Sequence[PolicyKey]) -> None:
        failures: list[XfrmError] = []
        with self._lock:
            for key in keys:
                block = self._blocks.pop(key)
                target = block.pending if block.touched else block.saved
                try:
                    if target is None:
                        self._request("unblock", XfrmMsg.DELPOLICY, key.message())
                    else:
                        self._request("unblock", XfrmMsg.UPDPOLICY, target.message())
                except XfrmError as exc:
                    failures.append(exc)
        self._emit("xfrm_block_removed", count=len(keys), failed=len(failures))
        if failures:
            # The block stays in the kernel for these: traffic is dropped, not leaked.
            raise failures[0]


def _old_encap(msg: Any) -> Encap | None:
    encap = msg.get_attr("XFRMA_ENCAP")
    return None if encap is None else Encap(encap["encap_sport"], encap["encap_dport"])


# --- ESP detection --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EspProbe:
    """Whether the kernel can carry ESP, and why not when it cannot."""

    available: bool
    reason: str = ""


_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def probe_kernel_esp(netns: str | None = None, *,
                     transport: XfrmTransport | None = None) -> EspProbe:
    """Try to add (and then delete) a throwaway ESP SA on 127.0.0.1.

    AES-GCM first, AES-CBC/HMAC-SHA-256 second: either being accepted means
    the kernel has ESP. An SPI collision (EEXIST) also proves the kernel
    parsed and built the SA, so it counts as ESP being there.
    """
    try:
        installer = XfrmInstaller(netns=netns, transport=transport)
    except XfrmError as exc:
        return EspProbe(False, f"no XFRM netlink: {exc}")
    with installer:
        suites: list[dict[str, Any]] = [
            {"aead": aes_gcm16(bytes(20))},
            {"cipher": aes_cbc(bytes(16)), "integrity": hmac("sha256", bytes(32))},
        ]
        reasons = []
        for suite in suites:
            spi = 0xC0000000 | secrets.randbits(30)
            spec = SaSpec(_LOOPBACK, _LOOPBACK, spi, reqid=0, **suite)
            try:
                installer.add_sa(spec)
            except XfrmError as exc:
                if exc.errno == errno.EEXIST:
                    return EspProbe(True)
                reasons.append(str(exc))
                if not isinstance(exc, EspUnavailable):
                    break
                continue
            with contextlib.suppress(XfrmError):
                installer.delete_sa(spec.id)
            return EspProbe(True)
        return EspProbe(False, "; ".join(reasons))


def kernel_has_esp(netns: str | None = None) -> bool:
    """True when the kernel in `netns` (default: this process's) can install ESP SAs."""
    return probe_kernel_esp(netns).available


class EventSink(Protocol):
    """Where the daemon's events go (``eventlog.EventLog`` fits)."""

    def emit(self, event_name: str, /, **fields: object) -> None: ...


@dataclass(frozen=True, slots=True)
class DataPlaneChoice:
    """Which data plane carries ESP, and why."""

    data_plane: str
    """``"kernel"`` or ``"userspace"``."""
    reason: str
    probe: EspProbe


def select_data_plane(events: EventSink, netns: str | None = None, *,
                      transport: XfrmTransport | None = None,
                      kernel_ready: bool = False) -> DataPlaneChoice:
    """Probe the kernel once and say in the event stream which data plane ESP uses.

    ``kernel_ready`` tells whether the caller can drive kernel ESP SAs at all; the
    kernel is chosen only when it can carry ESP *and* the caller is ready, so a
    kernel with ESP never leaves a daemon without a data plane. Emits one
    ``data_plane_selected`` event (``data_plane``, ``reason``, ``kernel_esp``).
    Call it once at start-up (off the event loop's thread).
    """
    probe = probe_kernel_esp(netns, transport=transport)
    if probe.available and kernel_ready:
        choice = DataPlaneChoice("kernel", "kernel can do ESP", probe)
    elif probe.available:
        choice = DataPlaneChoice("userspace", "kernel can do ESP, but the daemon's kernel "
                                 "data plane is not wired in", probe)
    else:
        choice = DataPlaneChoice("userspace", f"kernel cannot do ESP: {probe.reason}", probe)
    events.emit("data_plane_selected", data_plane=choice.data_plane, reason=choice.reason,
                kernel_esp=probe.available)
    return choice
