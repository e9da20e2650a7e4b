"""Any sequence of inputs: no exception, no move to a down or excluded path, bounded probes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.config.mobike import MobikePolicy, PreferRule
from mobike_vici.mobike.events import MoveRequested
from mobike_vici.mobike.manager import PathManager
from mobike_vici.mobike.paths import LocalAddress, PathState

from .sim import path

ip = ipaddress.ip_address
LOCALS = [
    LocalAddress(ip("10.1.0.2"), "eth0"),
    LocalAddress(ip("10.2.0.2"), "wwan0"),
    LocalAddress(ip("10.3.0.2"), "docker0"),  # excluded by policy
    LocalAddress(ip("2001:db8:1::2"), "eth0"),
]
PEERS = [ip("192.0.2.1"), ip("198.51.100.1"), ip("2001:db8:ff::1"), ip("203.0.113.9")]
POLICY = MobikePolicy(
    exclude_interfaces=("docker*",),
    allowed_peer_prefixes=tuple(ipaddress.ip_network(n) for n in
                                ("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32")),
    prefer=(PreferRule("metered", interface="wwan*", cost=100),),
    max_probes_in_flight=3,
    hold_down=1.0,
)
IFNAMES = ["eth0", "wwan0", "docker0", "bogus0"]
REASONS = ["unacceptable_addresses", "timeout", "no_proposal_chosen"]

op = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    st.tuples(st.just("reply"), st.integers(0, 40)),
    st.tuples(st.just("probe_failed"), st.integers(0, 40)),
    st.tuples(st.just("probe_sent"), st.integers(0, 40)),
    st.tuples(st.just("link_down"), st.sampled_from(IFNAMES)),
    st.tuples(st.just("link_up"), st.sampled_from(IFNAMES)),
    st.tuples(st.just("addr_add"), st.sampled_from(LOCALS)),
    st.tuples(st.just("addr_del"), st.sampled_from(LOCALS)),
    st.tuples(st.just("peers"), st.lists(st.sampled_from(PEERS), max_size=4)),
    st.tuples(st.just("active_failed"), st.none()),
    st.tuples(st.just("route"), st.none()),
    st.tuples(st.just("move_ok"), st.none()),
    st.tuples(st.just("move_failed"), st.sampled_from(REASONS)),
    st.tuples(st.just("peer_moved"), st.sampled_from(PEERS)),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60), st.booleans())
def test_any_input_sequence_is_safe(ops: list[tuple[str, object]], initiator: bool) -> None:
    mgr = PathManager(POLICY, path("10.1.0.2", "192.0.2.1"), LOCALS[:2], [PEERS[1]],
                      now=0.0, initiator=initiator)
    now = 0.0
    sent: list[int] = []
    last_move: MoveRequested | None = None

    def drain() -> None:
        nonlocal last_move
        for req in mgr.probes_to_send(now):
            sent.append(req.probe_id)
            assert mgr.table.health(mgr.table.key_of(req.path)).usable(now)
        assert mgr.in_flight() <= POLICY.max_probes_in_flight
        while (ev := mgr.next_event()) is not None:
            if isinstance(ev, MoveRequested):
                k = mgr.table.key_of(ev.path)
                assert k in mgr.table, "move to a path that is no candidate"
                h = mgr.table.health(k)
                assert h.state != PathState.DOWN and h.usable(now)
                assert not POLICY.excludes_local(ev.path.local.addr, mgr.table.ifname(k))
                assert POLICY.allows_peer(ev.path.remote.addr)
                assert ev.path.local.addr.version == ev.path.remote.addr.version
                last_move = ev

    drain()
    for name, arg in ops:
        if name == "advance":
            assert isinstance(arg, float)
            now += arg
            timer = mgr.get_timer()
            if timer is not None and timer <= now:
                mgr.handle_timer(now)
        elif name in ("reply", "probe_failed", "probe_sent"):
            assert isinstance(arg, int)
            pid = sent[arg % len(sent)] if sent else arg
            {"reply": mgr.on_probe_reply, "probe_failed": mgr.on_probe_failed,
             "probe_sent": mgr.on_probe_sent}[name](pid, now)
        elif name == "link_down":
            mgr.on_link_down(str(arg), now)
        elif name == "link_up":
            mgr.on_link_up(str(arg), now)
        elif name == "addr_add":
            assert isinstance(arg, LocalAddress)
            mgr.on_address_added(arg, now)
        elif name == "addr_del":
            assert isinstance(arg, LocalAddress)
            mgr.on_address_removed(arg.addr, now)
        elif name == "peers":
            assert isinstance(arg, list)
            mgr.on_peer_addresses(arg, now)
        elif name == "active_failed":
            mgr.on_active_path_failed(now)
        elif name == "route":
            mgr.on_route_changed(now)
        elif name == "move_ok" and last_move is not None:
            mgr.on_move_completed(last_move.path, now)
            last_move = None
        elif name == "move_failed" and last_move is not None:
            mgr.on_move_failed(last_move.path, str(arg), now)
            last_move = None
        elif name == "peer_moved":
            local = mgr.active_path.local.addr
            assert isinstance(arg, ipaddress.IPv4Address | ipaddress.IPv6Address)
            if arg.version == local.version:
                mgr.on_active_path_changed(path(str(local), str(arg)), now)
        drain()


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 0.5), min_size=1, max_size=80))
def test_timer_never_stays_in_the_past(steps: list[float]) -> None:
    mgr = PathManager(POLICY, path("10.1.0.2", "192.0.2.1"), LOCALS, PEERS, now=0.0)
    now = 0.0
    for dt in steps:
        now += dt
        timer = mgr.get_timer()
        if timer is not None and timer <= now:
            mgr.handle_timer(now)
        mgr.probes_to_send(now)
        while mgr.next_event() is not None:
            pass
        timer = mgr.get_timer()
        assert timer is None or timer > now
