"""The XFRM installer against a fake kernel: SA messages, charon-style moves, blocks, probing.

The fake kernel decodes every request from its encoded bytes (so what is
checked is what would go on the wire) and keeps SAs and policies the way the
kernel keys them: SAs by (dst, SPI, proto), policies by (selector, dir).
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from mobike_vici.esp.xfrm import (
    BLOCK_PRIORITY,
    Direction,
    Encap,
    EspUnavailable,
    Lifetime,
    Mark,
    Migration,
    Mode,
    Policy,
    PolicyAction,
    PolicyKey,
    SaId,
    SaSpec,
    Selector,
    Template,
    XfrmError,
    XfrmInstaller,
    aes_cbc,
    aes_gcm16,
    hmac,
    migrated,
    moved_sa_message,
    probe_kernel_esp,
    select_data_plane,
)
from mobike_vici.esp.xfrm_msgs import XfrmMsg, decode_message, xfrm_usersa_info
from mobike_vici.types import IPAddress

A = ipaddress.ip_address
MOB0, MOB1, GW = A("10.1.0.2"), A("10.2.0.2"), A("192.0.2.2")
SEL = Selector.parse("10.8.0.0/24", "10.9.0.0/24")


class FakeKernel:
    """Enough of the XFRM database to drive the installer; records every request."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.sas: dict[tuple[bytes, int, int], Any] = {}
        self.policies: dict[tuple[bytes, int], Any] = {}
        self.fail: dict[int, list[int]] = {}
        self.closed = False

    def request(self, msg: Any, msg_type: int, flags: int) -> list[Any]:
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg.encode()
        got = decode_message(bytes(msg.data))
        self.sent.append((msg_type, got))
        if self.fail.get(msg_type):
            raise NetlinkError(self.fail[msg_type].pop(0))
        return self._handle(msg_type, got)

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _sel(got: Any) -> bytes:
        return b"".join(str(got[k]).encode() for k in sorted(got) if k.startswith("sel_"))

    def _handle(self, msg_type: int, got: Any) -> list[Any]:
        if msg_type in (XfrmMsg.NEWSA, XfrmMsg.UPDSA):
            key = (bytes(got["id_daddr"]), got["id_spi"], got["id_proto"])
            if msg_type == XfrmMsg.NEWSA and key in self.sas:
                raise NetlinkError(errno.EEXIST)
            self.sas[key] = got
            return []
        if msg_type in (XfrmMsg.DELSA, XfrmMsg.GETSA):
            key = (bytes(got["daddr"]), got["spi"], got["proto"])
            if key not in self.sas:
                raise NetlinkError(errno.ESRCH)
            if msg_type == XfrmMsg.DELSA:
                del self.sas[key]
                return []
            return [self.sas[key]]
        if msg_type in (XfrmMsg.NEWPOLICY, XfrmMsg.UPDPOLICY):
            pkey = (self._sel(got), got["dir"])
            if msg_type == XfrmMsg.NEWPOLICY and pkey in self.policies:
                raise NetlinkError(errno.EEXIST)
            got["header"]["type"] = XfrmMsg.NEWPOLICY
            self.policies[pkey] = got
            return []
        if msg_type in (XfrmMsg.DELPOLICY, XfrmMsg.GETPOLICY):
            pkey = (self._sel(got), got["dir"])
            if pkey not in self.policies:
                raise NetlinkError(errno.ENOENT)
            if msg_type == XfrmMsg.DELPOLICY:
                del self.policies[pkey]
                return []
            return [self.policies[pkey]]
        if msg_type == XfrmMsg.MIGRATE:
            return []
        raise AssertionError(f"unexpected message {msg_type}")

    def types(self) -> list[int]:
        return [t for t, _ in self.sent]


def kernel_sa_reply(spec: SaSpec, *, curlft: tuple[int, int, int, int],
                    replay: dict[str, Any], esn: bool = False) -> Any:
    """A GETSA answer as the kernel builds it: body, counters, replay state, algorithms."""
    msg = spec.message()
    msg.update(curlft_bytes=curlft[0], curlft_packets=curlft[1], curlft_add_time=curlft[2],
               curlft_use_time=curlft[3], replay_window=spec.replay_window)
    attrs = [a for a in msg["attrs"] if a[0] != "XFRMA_REPLAY_ESN_VAL"]
    if esn:
        attrs.append(("XFRMA_REPLAY_ESN_VAL", replay))
    else:
        attrs.append(("XFRMA_REPLAY_VAL", replay))
    attrs.append(("XFRMA_LASTUSED", 1_700_000_500))
    msg["attrs"] = attrs
    msg["header"]["type"] = XfrmMsg.NEWSA
    msg.encode()
    return decode_message(bytes(msg.data))


def gcm_spec(**kw: Any) -> SaSpec:
    base: dict[str, Any] = dict(src=MOB0, dst=GW, spi=0xC1000001, reqid=7,
                                aead=aes_gcm16(bytes(range(20))))
    base.update(kw)
    return SaSpec(**base)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def xfrm(kernel: FakeKernel) -> XfrmInstaller:
    return XfrmInstaller(transport=kernel)


# --- SA messages -------------------------------------------------------------------


def test_gcm_sa_message_fields_and_attributes(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    spec = gcm_spec(encap=Encap(4500, 4501), mark=Mark(42, 0xFF),
                    lifetime=Lifetime(hard_add_seconds=3600, soft_add_seconds=3000))
    xfrm.add_sa(spec)
    [(msg_type, got)] = kernel.sent
    assert msg_type == XfrmMsg.NEWSA
    assert got["id_daddr"][:4] == GW.packed and got["saddr"][:4] == MOB0.packed
    assert got["id_spi"] == 0xC1000001 and got["id_proto"] == 50
    assert got["family"] == 2 and got["mode"] == Mode.TUNNEL and got["reqid"] == 7
    assert got["replay_window"] == 32
    assert got["lft_hard_add_expires_seconds"] == 3600
    assert got["lft_hard_byte_limit"] == (1 << 64) - 1
    assert got["flags"] & 32  # AF_UNSPEC for tunnel mode
    aead = got.get_attr("XFRMA_ALG_AEAD")
    assert aead["alg_name"] == b"rfc4106(gcm(aes))"
    assert aead["alg_key_len"] == 160 and aead["alg_icv_len"] == 128
    assert aead["alg_key"] == bytes(range(20))
    encap = got.get_attr("XFRMA_ENCAP")
    assert (encap["encap_type"], encap["encap_sport"], encap["encap_dport"]) == (2, 4500, 4501)
    assert got.get_attr("XFRMA_MARK") == {"v": 42, "m": 0xFF}
    assert got.get_attr("XFRMA_ALG_CRYPT") is None


@pytest.mark.parametrize(("hash_name", "key_len", "trunc"), [
    ("sha1", 20, 96), ("sha256", 32, 128), ("sha384", 48, 192), ("sha512", 64, 256),
])
def test_cbc_hmac_sa_message(xfrm: XfrmInstaller, kernel: FakeKernel, hash_name: str,
                             key_len: int, trunc: int) -> None:
    spec = gcm_spec(aead=None, cipher=aes_cbc(b"\x01" * 32),
                    integrity=hmac(hash_name, b"\x02" * key_len))
    xfrm.add_sa(spec)
    got = kernel.sent[0][1]
    crypt = got.get_attr("XFRMA_ALG_CRYPT")
    auth = got.get_attr("XFRMA_ALG_AUTH_TRUNC")
    assert (crypt["alg_name"], crypt["alg_key_len"]) == (b"cbc(aes)", 256)
    assert auth["alg_name"] == f"hmac({hash_name})".encode()
    assert (auth["alg_key_len"], auth["alg_trunc_len"]) == (key_len * 8, trunc)
    assert auth["alg_key"] == b"\x02" * key_len
    assert got.get_attr("XFRMA_ALG_AEAD") is None and got.get_attr("XFRMA_ENCAP") is None


def test_large_window_or_esn_uses_esn_replay_attribute(xfrm: XfrmInstaller,
                                                       kernel: FakeKernel) -> None:
    xfrm.add_sa(gcm_spec(replay_window=128, esn=True))
    got = kernel.sent[0][1]
    esn = got.get_attr("XFRMA_REPLAY_ESN_VAL")
    assert got["replay_window"] == 0 and got["flags"] & 128
    assert esn["replay_window"] == 128 and esn["bmp_len"] == 4 and esn["bmp"] == [0] * 4


def test_ipv6_sa(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    xfrm.add_sa(gcm_spec(src=A("2001:db8:1::2"), dst=A("2001:db8::2")))
    got = kernel.sent[0][1]
    assert got["family"] == 10 and bytes(got["id_daddr"]) == A("2001:db8::2").packed


def test_invalid_specs_rejected() -> None:
    with pytest.raises(ValueError):
        gcm_spec(cipher=aes_cbc(bytes(16)))
    with pytest.raises(ValueError):
        gcm_spec(aead=None, cipher=aes_cbc(bytes(16)))
    with pytest.raises(ValueError):
        gcm_spec(dst=A("2001:db8::2"))
    with pytest.raises(ValueError):
        hmac("md5", bytes(16))
    with pytest.raises(ValueError):
        aes_gcm16(bytes(16))


def test_key_material_not_in_repr() -> None:
    spec = gcm_spec(aead=aes_gcm16(b"\xab" * 20))
    assert "ab" * 4 not in repr(spec) and "\\xab" not in repr(spec)


@pytest.mark.parametrize("code", [errno.EPROTONOSUPPORT, errno.ENOSYS])
def test_sa_add_without_esp_raises_esp_unavailable(xfrm: XfrmInstaller, kernel: FakeKernel,
                                                   code: int) -> None:
    kernel.fail[XfrmMsg.NEWSA] = [code]
    with pytest.raises(EspUnavailable) as info:
        xfrm.add_sa(gcm_spec())
    assert info.value.errno == code and "add_sa" in str(info.value)
    assert not kernel.sas


def test_other_errors_are_plain_xfrm_errors(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    xfrm.add_sa(gcm_spec())
    with pytest.raises(XfrmError) as info:
        xfrm.add_sa(gcm_spec())
    assert info.value.errno == errno.EEXIST and not isinstance(info.value, EspUnavailable)


def test_get_and_delete_sa(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    spec = gcm_spec(encap=Encap())
    xfrm.add_sa(spec)
    state = xfrm.get_sa(spec.id)
    assert (state.src, state.dst, state.spi, state.reqid) == (MOB0, GW, spec.spi, 7)
    assert state.encap == Encap()
    xfrm.delete_sa(spec.id)
    assert not kernel.sas
    with pytest.raises(XfrmError):
        xfrm.get_sa(spec.id)


# --- moving an SA -------------------------------------------------------------------


def _install_reply(kernel: FakeKernel, spec: SaSpec, **kw: Any) -> Any:
    reply = kernel_sa_reply(spec, **kw)
    kernel.sas[(GW.packed.ljust(16, b"\0"), spec.spi, 50)] = reply
    return reply


def test_update_endpoints_reads_deletes_and_readds(xfrm: XfrmInstaller,
                                                   kernel: FakeKernel) -> None:
    spec = gcm_spec(mark=Mark(5))
    _install_reply(kernel, spec, curlft=(123456, 789, 1_700_000_000, 1_700_000_100),
                   replay={"oseq": 789, "seq": 654, "bitmap": 0xFFFF0FFF})
    new_id = xfrm.update_endpoints(spec.id, MOB1, A("192.0.2.3"), Encap(4500, 4500))
    assert kernel.types() == [XfrmMsg.GETSA, XfrmMsg.DELSA, XfrmMsg.NEWSA]
    assert new_id == SaId(A("192.0.2.3"), spec.spi, 50, Mark(5))
    got = kernel.sent[-1][1]
    assert bytes(got["saddr"][:4]) == MOB1.packed
    assert bytes(got["id_daddr"][:4]) == A("192.0.2.3").packed
    assert got["id_spi"] == spec.spi and got["reqid"] == 7
    # replay state and counters carried over, algorithms and mark kept
    assert got.get_attr("XFRMA_REPLAY_VAL") == {"oseq": 789, "seq": 654, "bitmap": 0xFFFF0FFF}
    ltime = got.get_attr("XFRMA_LTIME_VAL")
    assert (ltime["bytes"], ltime["packets"], ltime["add_time"], ltime["use_time"]) == (
        123456, 789, 1_700_000_000, 1_700_000_100)
    assert got.get_attr("XFRMA_ALG_AEAD")["alg_key"] == bytes(range(20))
    assert got.get_attr("XFRMA_MARK") == {"v": 5, "m": 0xFFFFFFFF}
    assert got.get_attr("XFRMA_LASTUSED") == 1_700_000_500
    encap = got.get_attr("XFRMA_ENCAP")
    assert (encap["encap_sport"], encap["encap_dport"]) == (4500, 4500)
    assert list(kernel.sas) == [(A("192.0.2.3").packed.ljust(16, b"\0"), spec.spi, 50)]


def test_update_endpoints_changes_and_removes_encap(kernel: FakeKernel) -> None:
    spec = gcm_spec(encap=Encap(4500, 4500))
    old = kernel_sa_reply(spec, curlft=(1, 1, 1, 1), replay={"oseq": 1, "seq": 1, "bitmap": 1})
    natted = moved_sa_message(old, MOB1, GW, Encap(4500, 61000))
    plain = moved_sa_message(old, MOB1, GW, None)
    assert [a[0] for a in natted["attrs"]].count("XFRMA_ENCAP") == 1
    assert natted["attrs"][-2][1]["encap_dport"] == 61000
    assert all(a[0] != "XFRMA_ENCAP" for a in plain["attrs"])


def test_update_endpoints_keeps_esn_state_and_zeroes_legacy_window(kernel: FakeKernel) -> None:
    spec = gcm_spec(replay_window=64, esn=True)
    esn = {"oseq": 5, "seq": 6, "oseq_hi": 1, "seq_hi": 2, "replay_window": 64,
           "bmp": [0xFFFFFFFF, 0x7]}
    old = kernel_sa_reply(spec, curlft=(1, 2, 3, 4), replay=esn, esn=True)
    assert old["replay_window"] == 64  # as the kernel reports it for an ESN SA
    msg = moved_sa_message(old, MOB1, GW, None)
    msg["header"]["type"] = XfrmMsg.NEWSA
    msg.encode()
    got = decode_message(bytes(msg.data))
    assert got["replay_window"] == 0 and got["flags"] & 128
    back = got.get_attr("XFRMA_REPLAY_ESN_VAL")
    assert {k: back[k] for k in esn} == esn


def test_update_endpoints_restores_old_sa_when_readd_fails(xfrm: XfrmInstaller,
                                                           kernel: FakeKernel) -> None:
    spec = gcm_spec()
    _install_reply(kernel, spec, curlft=(10, 1, 100, 0), replay={"oseq": 3, "seq": 2,
                                                                 "bitmap": 3})
    kernel.fail[XfrmMsg.NEWSA] = [errno.EINVAL]
    with pytest.raises(XfrmError) as info:
        xfrm.update_endpoints(spec.id, MOB1, GW, None)
    assert info.value.errno == errno.EINVAL
    assert kernel.types() == [XfrmMsg.GETSA, XfrmMsg.DELSA, XfrmMsg.NEWSA, XfrmMsg.NEWSA]
    restored = kernel.sas[(GW.packed.ljust(16, b"\0"), spec.spi, 50)]
    assert bytes(restored["saddr"][:4]) == MOB0.packed
    assert restored.get_attr("XFRMA_REPLAY_VAL")["oseq"] == 3


def test_update_endpoints_of_missing_sa_changes_nothing(xfrm: XfrmInstaller,
                                                        kernel: FakeKernel) -> None:
    with pytest.raises(XfrmError):
        xfrm.update_endpoints(gcm_spec().id, MOB1, GW, None)
    assert kernel.types() == [XfrmMsg.GETSA]


# --- policies -------------------------------------------------------------------------


def out_policy(src: IPAddress = MOB0, reqid: int = 7) -> Policy:
    return Policy(SEL, Direction.OUT, (Template(src, GW, reqid=reqid),), priority=500)


def test_policy_message_round_trips_through_decode(xfrm: XfrmInstaller,
                                                   kernel: FakeKernel) -> None:
    policy = Policy(Selector.parse("10.8.0.0/24", "10.9.0.0/24", proto=6, dport=443),
                    Direction.FWD, (Template(MOB0, GW, reqid=3, optional=True),),
                    priority=1234, mark=Mark(9, 0xF))
    xfrm.add_policy(policy)
    got = kernel.sent[0][1]
    assert Policy.from_message(got) == policy
    assert got["sel_dport_mask"] == 0xFFFF and got["sel_sport_mask"] == 0
    assert got.get_attr("XFRMA_TMPL")[0]["aalgos"] == 0xFFFFFFFF


def test_migrated_rewrites_only_matching_templates() -> None:
    policy = Policy(SEL, Direction.OUT, (Template(MOB0, GW, reqid=7),
                                         Template(MOB0, A("192.0.2.9"), reqid=8)))
    moved = migrated(policy, [Migration(MOB0, GW, MOB1, GW, reqid=7)])
    assert moved.templates == (Template(MOB1, GW, reqid=7), Template(MOB0, A("192.0.2.9"),
                                                                      reqid=8))
    assert migrated(policy, [Migration(MOB0, GW, MOB1, GW, reqid=99)]) == policy


def test_block_during_replaces_and_restores(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    policy = out_policy()
    xfrm.add_policy(policy)
    with xfrm.block_during([policy.key]):
        held = xfrm.get_policy(policy.key)
        assert held is not None and held.action == PolicyAction.BLOCK
        assert held.priority == BLOCK_PRIORITY and held.templates == ()
    assert xfrm.get_policy(policy.key) == policy


def test_changes_inside_block_are_held_back_then_written(xfrm: XfrmInstaller,
                                                         kernel: FakeKernel) -> None:
    policy = out_policy()
    xfrm.add_policy(policy)
    with xfrm.block_during([policy.key]):
        xfrm.update_policy(out_policy(src=MOB1))
        assert xfrm.get_policy(policy.key).action == PolicyAction.BLOCK  # type: ignore[union-attr]
    assert xfrm.get_policy(policy.key) == out_policy(src=MOB1)


def test_migrate_inside_block_applies_on_release(xfrm: XfrmInstaller,
                                                 kernel: FakeKernel) -> None:
    policy = out_policy()
    xfrm.add_policy(policy)
    with xfrm.block_during([policy.key]):
        xfrm.migrate(policy.key, [Migration(MOB0, GW, MOB1, GW, reqid=7)])
    assert XfrmMsg.MIGRATE not in kernel.types()
    assert xfrm.get_policy(policy.key) == out_policy(src=MOB1)


def test_block_without_prior_policy_is_removed_after(xfrm: XfrmInstaller,
                                                     kernel: FakeKernel) -> None:
    key = PolicyKey(SEL, Direction.IN)
    with xfrm.block_during([key]):
        assert key.selector == SEL and kernel.policies
    assert not kernel.policies


def test_block_released_when_body_raises(xfrm: XfrmInstaller, kernel: FakeKernel) -> None:
    policy = out_policy()
    xfrm.add_policy(policy)
    with pytest.raises(RuntimeError), xfrm.block_during([policy.key]):
        raise RuntimeError("move failed")
    assert xfrm.get_policy(policy.key) == policy
    # the installer is usable for the same key again
    with xfrm.block_during([policy.key]):
        pass


def test_nested_block_on_same_key_refused(xfrm: XfrmInstaller) -> None:
    policy = out_policy()
    xfrm.add_policy(policy)
    with xfrm.block_during([policy.key]):
        with pytest.raises(XfrmError), xfrm.block_during([policy.key]):
            pass
        assert xfrm.get_policy(policy.key).action == PolicyAction.BLOCK  # type: ignore[union-attr]
    assert xfrm.get_policy(policy.key) == policy


def test_migrate_sends_userpolicy_id_with_migrations(xfrm: XfrmInstaller,
                                                     kernel: FakeKernel) -> None:
    key = out_policy().key
    xfrm.migrate(key, [Migration(MOB0, GW, MOB1, GW, reqid=7)])
    [(msg_type, got)] = kernel.sent
    assert msg_type == XfrmMsg.MIGRATE and got["dir"] == Direction.OUT
    [mig] = got.get_attr("XFRMA_MIGRATE")
    assert bytes(mig["old_saddr"][:4]) == MOB0.packed
    assert bytes(mig["new_saddr"][:4]) == MOB1.packed
    assert (mig["reqid"], mig["proto"], mig["mode"]) == (7, 50, 1)


# --- probing ---------------------------------------------------------------------------


def test_probe_reports_no_esp_with_reasons(kernel: FakeKernel) -> None:
    kernel.fail[XfrmMsg.NEWSA] = [errno.ENOSYS, errno.EPROTONOSUPPORT]
    probe = probe_kernel_esp(transport=kernel)
    assert not probe.available
    assert "errno 38" in probe.reason and "errno 93" in probe.reason
    assert kernel.closed


def test_probe_with_esp_adds_and_removes_throwaway_sa(kernel: FakeKernel) -> None:
    probe = probe_kernel_esp(transport=kernel)
    assert probe.available
    assert kernel.types() == [XfrmMsg.NEWSA, XfrmMsg.DELSA] and not kernel.sas
    added = kernel.sent[0][1]
    assert bytes(added["id_daddr"][:4]) == bytes([127, 0, 0, 1])


def test_probe_counts_spi_collision_as_esp(kernel: FakeKernel) -> None:
    kernel.fail[XfrmMsg.NEWSA] = [errno.EEXIST]
    assert probe_kernel_esp(transport=kernel).available


def test_probe_stops_on_unrelated_error(kernel: FakeKernel) -> None:
    kernel.fail[XfrmMsg.NEWSA] = [errno.EPERM]
    probe = probe_kernel_esp(transport=kernel)
    assert not probe.available and "errno 1" in probe.reason
    assert kernel.types() == [XfrmMsg.NEWSA]


def test_usersa_info_class_is_used_for_newsa_answers() -> None:
    msg = xfrm_usersa_info()
    msg["header"]["type"] = XfrmMsg.NEWSA
    msg.encode()
    assert isinstance(decode_message(bytes(msg.data)), xfrm_usersa_info)
    assert struct.unpack_from("=I", bytes(msg.data))[0] == 16 + 224


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []

    def emit(self, event_name: str, /, **fields: object) -> None:
        self.seen.append((event_name, fields))


def test_select_data_plane_says_userspace_once_without_esp(kernel: FakeKernel) -> None:
    kernel.fail[XfrmMsg.NEWSA] = [errno.ENOSYS, errno.EPROTONOSUPPORT]
    events = Events()
    choice = select_data_plane(events, transport=kernel, kernel_ready=True)
    assert choice.data_plane == "userspace" and not choice.probe.available
    [(name, fields)] = events.seen
    assert name == "data_plane_selected" and fields["data_plane"] == "userspace"
    assert fields["kernel_esp"] is False
    assert "errno 93" in str(fields["reason"])


def test_kernel_esp_without_a_wired_kernel_data_plane_selects_userspace(
        kernel: FakeKernel) -> None:
    """A kernel with ESP (a stock Debian has esp4) used to leave the daemon with no data
    plane at all; until the kernel path is driven by the daemon, userspace carries ESP."""
    events = Events()
    choice = select_data_plane(events, transport=kernel)
    assert choice.probe.available and choice.data_plane == "userspace"
    [(name, fields)] = events.seen
    assert name == "data_plane_selected" and fields["data_plane"] == "userspace"
    assert fields["kernel_esp"] is True and "not wired in" in str(fields["reason"])


def test_select_data_plane_says_kernel_with_esp_when_ready(kernel: FakeKernel) -> None:
    events = Events()
    assert select_data_plane(events, transport=kernel, kernel_ready=True).data_plane == "kernel"
    [(_, fields)] = events.seen
    assert fields["data_plane"] == "kernel" and fields["kernel_esp"] is True
