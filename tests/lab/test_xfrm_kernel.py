"""The XFRM installer against the real kernel, inside throwaway network namespaces.

Policies (in/out/fwd, templates, block, XFRM_MSG_MIGRATE) are checked both
through the installer and through `ip xfrm policy`. SAs: where the kernel has
no ESP (this lab's kernel), adding one must fail with EspUnavailable and
leave nothing behind, and kernel_has_esp() must say False; where it has ESP,
an SA is added and moved and `ip xfrm state` must show the move.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator

import pytest

from mobike_vici.esp.xfrm import (
    Direction,
    Encap,
    EspUnavailable,
    Mark,
    Migration,
    Policy,
    PolicyAction,
    PolicyKey,
    SaSpec,
    Selector,
    Template,
    XfrmError,
    XfrmInstaller,
    aes_cbc,
    aes_gcm16,
    hmac,
    kernel_has_esp,
    probe_kernel_esp,
)
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.types import IPAddress

pytestmark = pytest.mark.netns

A = ipaddress.ip_address
MOB0, MOB1, GW = A("10.1.0.2"), A("10.2.0.2"), A("192.0.2.2")
SEL_OUT = Selector.parse("10.8.0.0/24", "10.9.0.0/24")
SEL_IN = Selector.parse("10.9.0.0/24", "10.8.0.0/24")


@pytest.fixture
def ns(lab: Lab) -> Netns:
    return lab.netns("xfrm")


@pytest.fixture
def xfrm(ns: Netns) -> Iterator[XfrmInstaller]:
    with XfrmInstaller(netns=ns.name) as installer:
        yield installer


def ip_policy(ns: Netns) -> str:
    return ns.ip("xfrm", "policy").stdout


def policies_of(ns: Netns) -> list[str]:
    # One block per policy: `ip xfrm policy` starts each with "src ".
    blocks, current = [], ""
    for line in ip_policy(ns).splitlines():
        if line.startswith("src ") and current:
            blocks.append(current)
            current = ""
        current += line.strip() + " "
    return [*blocks, current] if current else blocks


def tunnel_set(src: IPAddress = MOB0) -> list[Policy]:
    tmpl_out = (Template(src, GW, reqid=7),)
    tmpl_in = (Template(GW, src, reqid=7),)
    return [
        Policy(SEL_OUT, Direction.OUT, tmpl_out, priority=500),
        Policy(SEL_IN, Direction.IN, tmpl_in, priority=500),
        Policy(SEL_IN, Direction.FWD, tmpl_in, priority=500),
    ]


def test_in_out_fwd_policies_with_templates(ns: Netns, xfrm: XfrmInstaller) -> None:
    for policy in tunnel_set():
        xfrm.add_policy(policy)
    assert sorted(xfrm.policies(), key=lambda p: p.direction) == sorted(
        tunnel_set(), key=lambda p: p.direction)
    blocks = policies_of(ns)
    assert len(blocks) == 3
    out = next(b for b in blocks if "dir out" in b)
    assert out.startswith("src 10.8.0.0/24 dst 10.9.0.0/24")
    assert "priority 500" in out
    assert "tmpl src 10.1.0.2 dst 192.0.2.2 proto esp reqid 7 mode tunnel" in out
    fwd = next(b for b in blocks if "dir fwd" in b)
    assert "tmpl src 192.0.2.2 dst 10.1.0.2" in fwd
    for policy in tunnel_set():
        assert xfrm.get_policy(policy.key) == policy


def test_update_and_delete_policy(ns: Netns, xfrm: XfrmInstaller) -> None:
    policy = tunnel_set()[0]
    xfrm.add_policy(policy)
    with pytest.raises(XfrmError) as info:
        xfrm.add_policy(policy)
    assert info.value.errno == errno.EEXIST
    changed = Policy(SEL_OUT, Direction.OUT, (Template(MOB1, GW, reqid=8),), priority=300)
    xfrm.update_policy(changed)
    assert xfrm.get_policy(policy.key) == changed
    text = ip_policy(ns)
    assert "priority 300" in text and "tmpl src 10.2.0.2 dst 192.0.2.2" in text
    assert "10.1.0.2" not in text
    xfrm.delete_policy(policy.key)
    assert xfrm.get_policy(policy.key) is None
    assert ip_policy(ns).strip() == ""
    with pytest.raises(XfrmError) as info:
        xfrm.delete_policy(policy.key)
    assert info.value.errno == errno.ENOENT


def test_policy_with_ports_proto_and_mark(ns: Netns, xfrm: XfrmInstaller) -> None:
    sel = Selector.parse("10.8.0.5/32", "10.9.0.0/24", proto=6, dport=443)
    policy = Policy(sel, Direction.OUT, (Template(MOB0, GW, reqid=3),), mark=Mark(42, 0xFF))
    xfrm.add_policy(policy)
    text = ip_policy(ns)
    assert "proto tcp" in text and "dport 443" in text
    assert "mark 0x2a/0xff" in text
    assert xfrm.get_policy(policy.key) == policy
    # Another mark is another policy.
    assert xfrm.get_policy(PolicyKey(sel, Direction.OUT, Mark(43, 0xFF))) is None


def test_block_during_move_and_restore(ns: Netns, xfrm: XfrmInstaller) -> None:
    policies = tunnel_set()
    for policy in policies:
        xfrm.add_policy(policy)
    keys = [p.key for p in policies]
    with xfrm.block_during(keys):
        blocks = policies_of(ns)
        assert len(blocks) == 3
        assert all("action block" in b and "priority 1 " in b for b in blocks), blocks
        assert "tmpl" not in ip_policy(ns)
        for new in tunnel_set(src=MOB1):
            xfrm.update_policy(new)
        assert "tmpl" not in ip_policy(ns)  # held back while the move is in flight
    assert sorted(xfrm.policies(), key=lambda p: p.direction) == sorted(
        tunnel_set(src=MOB1), key=lambda p: p.direction)
    text = ip_policy(ns)
    assert "action block" not in text and "tmpl src 10.2.0.2 dst 192.0.2.2" in text


def test_block_without_policy_leaves_nothing(ns: Netns, xfrm: XfrmInstaller) -> None:
    key = PolicyKey(SEL_OUT, Direction.OUT)
    with pytest.raises(RuntimeError), xfrm.block_during([key]):
        assert "action block" in ip_policy(ns)
        raise RuntimeError("move failed")
    assert ip_policy(ns).strip() == ""


def test_migrate_moves_template_endpoints(ns: Netns, xfrm: XfrmInstaller) -> None:
    for policy in tunnel_set():
        xfrm.add_policy(policy)
    out, inbound, fwd = (p.key for p in tunnel_set())
    xfrm.migrate(out, [Migration(MOB0, GW, MOB1, GW, reqid=7)])
    xfrm.migrate(inbound, [Migration(GW, MOB0, GW, MOB1, reqid=7)])
    xfrm.migrate(fwd, [Migration(GW, MOB0, GW, MOB1, reqid=7)])
    assert sorted(xfrm.policies(), key=lambda p: p.direction) == sorted(
        tunnel_set(src=MOB1), key=lambda p: p.direction)
    text = ip_policy(ns)
    assert "10.1.0.2" not in text
    assert "tmpl src 10.2.0.2 dst 192.0.2.2" in text and "tmpl src 192.0.2.2 dst 10.2.0.2" in text
    # A migration no template matches (another reqid) is refused; nothing changes.
    with pytest.raises(XfrmError) as info:
        xfrm.migrate(out, [Migration(MOB1, GW, MOB0, GW, reqid=99)])
    assert info.value.errno == errno.ENODATA
    assert xfrm.get_policy(out) == tunnel_set(src=MOB1)[0]


def test_migrate_ipv6_and_missing_policy(ns: Netns, xfrm: XfrmInstaller) -> None:
    sel = Selector.parse("2001:db8:8::/48", "2001:db8:9::/48")
    old_src, new_src, gw6 = A("2001:db8:1::2"), A("2001:db8:2::2"), A("2001:db8::2")
    policy = Policy(sel, Direction.OUT, (Template(old_src, gw6, reqid=4),))
    xfrm.add_policy(policy)
    xfrm.migrate(policy.key, [Migration(old_src, gw6, new_src, gw6, reqid=4)])
    assert f"tmpl src {new_src} dst {gw6}" in ip_policy(ns)
    with pytest.raises(XfrmError) as info:
        xfrm.migrate(PolicyKey(SEL_OUT, Direction.OUT), [Migration(MOB0, GW, MOB1, GW)])
    assert info.value.errno == errno.ENOENT


def _ip_state_add_works(ns: Netns) -> bool:
    proc = ns.ip("xfrm", "state", "add", "src", "127.0.0.1", "dst", "127.0.0.1", "proto",
                 "esp", "spi", "0x00000999", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
                 "0x" + "00" * 20, "128", check=False)
    if proc.returncode == 0:
        ns.ip("xfrm", "state", "flush")
    return proc.returncode == 0


def test_esp_detection_agrees_with_ip_xfrm(ns: Netns) -> None:
    expected = _ip_state_add_works(ns)
    assert kernel_has_esp(ns.name) is expected
    assert ns.ip("xfrm", "state").stdout.strip() == ""


def test_sa_add_fails_cleanly_without_esp(ns: Netns, xfrm: XfrmInstaller) -> None:
    if _ip_state_add_works(ns):
        pytest.skip("this kernel has ESP; covered by test_sa_move_with_kernel_esp")
    probe = probe_kernel_esp(ns.name)
    assert not probe.available and "errno" in probe.reason
    specs = [
        SaSpec(MOB0, GW, 0xC1000001, reqid=7, aead=aes_gcm16(bytes(20)), encap=Encap()),
        SaSpec(MOB0, GW, 0xC1000002, reqid=7, cipher=aes_cbc(bytes(16)),
               integrity=hmac("sha256", bytes(32))),
    ]
    for spec in specs:
        with pytest.raises(EspUnavailable) as info:
            xfrm.add_sa(spec)
        assert info.value.errno in (errno.ENOSYS, errno.EPROTONOSUPPORT)
    assert ns.ip("xfrm", "state").stdout.strip() == ""
    # Policies still work after the failed SA adds on the same socket.
    xfrm.add_policy(tunnel_set()[0])
    assert "dir out" in ip_policy(ns)


def test_sa_move_with_kernel_esp(ns: Netns, xfrm: XfrmInstaller) -> None:
    if not _ip_state_add_works(ns):
        pytest.skip("this kernel has no ESP (CONFIG_INET_ESP); SA moves are covered by "
                    "the round-trip unit tests")
    spec = SaSpec(MOB0, GW, 0xC1000001, reqid=7, aead=aes_gcm16(bytes(20)), encap=Encap())
    xfrm.add_sa(spec)
    new_id = xfrm.update_endpoints(spec.id, MOB1, GW, Encap(4500, 61000))
    state = xfrm.get_sa(new_id)
    assert (state.src, state.dst, state.encap) == (MOB1, GW, Encap(4500, 61000))
    text = ns.ip("xfrm", "state").stdout
    assert "src 10.2.0.2 dst 192.0.2.2" in text and "10.1.0.2" not in text
    xfrm.delete_sa(new_id)


def test_block_action_enum_matches_ip_output(ns: Netns, xfrm: XfrmInstaller) -> None:
    policy = Policy(SEL_OUT, Direction.OUT, action=PolicyAction.BLOCK, priority=10)
    xfrm.add_policy(policy)
    assert "action block" in ip_policy(ns)
    assert xfrm.get_policy(policy.key) == policy


def test_move_sequence_block_migrate_release(ns: Netns, xfrm: XfrmInstaller) -> None:
    """The order a MOBIKE move uses: block, move (SAs would go here), migrate, release."""
    for policy in tunnel_set():
        xfrm.add_policy(policy)
    out, inbound, fwd = (p.key for p in tunnel_set())
    with xfrm.block_during([out, inbound, fwd]):
        xfrm.migrate(out, [Migration(MOB0, GW, MOB1, GW, reqid=7)])
        xfrm.migrate(inbound, [Migration(GW, MOB0, GW, MOB1, reqid=7)])
        xfrm.migrate(fwd, [Migration(GW, MOB0, GW, MOB1, reqid=7)])
        assert "tmpl" not in ip_policy(ns) and ip_policy(ns).count("action block") == 3
    text = ip_policy(ns)
    assert "action block" not in text and "10.1.0.2" not in text
    assert text.count("tmpl src") == 3
    assert sorted(xfrm.policies(), key=lambda p: p.direction) == sorted(
        tunnel_set(src=MOB1), key=lambda p: p.direction)
