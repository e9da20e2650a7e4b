"""A pool of three gateways, two charon (with ``mobike-vici run``) and one native
(``mobike-vici native``), and clients of both kinds with a 10 Hz ping each.

Every client dials gw1 (charon). ``mobike-vici drain`` of gw1 sends them (RFC 5685) to
gw2 (charon) and gw3 (native): charon clients and native clients redirected by charon,
charon clients landing on the native gateway. Then gw3 is drained through the native
daemon's control socket: its clients go on to the charon gateways, native clients
included (make-before-break). No client is left without a tunnel; each client's outage
is printed.

Client counts: ``MV_POOL_CHARON_CLIENTS`` and ``MV_POOL_NATIVE_CLIENTS`` (2 each by
default, for CI time).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.daemon.control import ControlError, request
from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.charon_controller import read_events
from mobike_vici.lab.native import NativeDaemon, start_native
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.pinger import outage, replies

from .test_drain_lab import (
    INNER,
    METRICS_PORT,
    REPO,
    Pool,
    _gw_addr,
    client_conf,
    gateway_conf,
)

pytestmark = [pytest.mark.netns, pytest.mark.charon]

CHARON_CLIENTS = int(os.environ.get("MV_POOL_CHARON_CLIENTS", "2"))
NATIVE_CLIENTS = int(os.environ.get("MV_POOL_NATIVE_CLIENTS", "2"))
RATE = float(os.environ.get("MV_POOL_RATE", "10"))


def _native_where(daemon: NativeDaemon) -> list[tuple[str, str]]:
    """(gateway, state) of each IKE_SA, over the control socket (a ``status`` process
    per client per look is too slow with thirty clients on a loaded machine)."""
    try:
        sas = request(str(daemon.control), "status").get("ike_sas") or []
    except ControlError:
        return []
    return [(str(sa.get("remote", "")).split("[")[0], str(sa.get("state"))) for sa in sas]


def build_mixed(lab: Lab, *, dial: int = 1, extra_pool: str = "", charon_clients: int = 0,
                native_clients: int = 0) -> tuple[Pool, list[NativeDaemon], list[Charon]]:
    """Every client dials gateway ``dial``."""
    n_charon = charon_clients or CHARON_CLIENTS
    n_native = native_clients or NATIVE_CLIENTS
    clients = n_charon + n_native
    rtr = lab.netns("rtr")
    rtr.enable_forwarding()
    gws: list[Charon] = []
    controls: list[Path] = []
    events: list[Path] = []
    gw_ns = []
    native_gw: NativeDaemon | None = None
    for n in (1, 2, 3):
        ns = lab.netns(f"gw{n}")
        lab.link(rtr, f"g{n}", ns, "eth0")
        rtr.add_address(f"g{n}", f"10.20.{n}.1/24")
        ns.add_address("eth0", f"{_gw_addr(n)}/24")
        ns.add_route("default", via=f"10.20.{n}.1")
        ns.ip("addr", "add", f"{INNER}/32", "dev", "lo")
        conf = lab.workdir / f"gw{n}.conf"
        conf.write_text(gateway_conf(n, clients, extra_pool))
        gw_ns.append(ns)
        if n == 3:
            native_gw = start_native(lab, ns, conf, name="gw3", extra_args=(
                "--metrics", f"{_gw_addr(3)}:{METRICS_PORT}"))
            controls.append(native_gw.control)
            events.append(native_gw.events_path)
            continue
        charon = start_charon(lab, ns, name=f"gw{n}")
        charon.load_all(conf)
        control, ev = lab.workdir / f"gw{n}.ctl", lab.workdir / f"gw{n}-events.jsonl"
        lab.spawn(ns, [sys.executable, "-m", "mobike_vici", "run", "--config", str(conf),
                       "--vici", charon.uri, "--events", str(ev), "--control", str(control),
                       "--metrics", f"{_gw_addr(n)}:{METRICS_PORT}",
                       "--strongswan-conf", str(charon.rundir / "strongswan.conf")],
                  lab.workdir / f"gw{n}-run.out", env={"PYTHONPATH": str(REPO)})
        gws.append(charon)
        controls.append(control)
        events.append(ev)
    assert native_gw is not None
    _peers_up(native_gw.control)
    charon_clients: list[Charon] = []
    natives: list[NativeDaemon] = []
    pings: list[Path] = []
    for k in range(1, clients + 1):
        ns = lab.netns(f"c{k}")
        lab.link(rtr, f"c{k}", ns, "eth0")
        rtr.add_address(f"c{k}", f"10.30.{k}.1/24")
        ns.add_address("eth0", f"10.30.{k}.2/24")
        ns.add_route("default", via=f"10.30.{k}.1")
        conf = lab.workdir / f"c{k}.conf"
        text = client_conf(k).replace(f"remote_addrs = {_gw_addr(1)}",
                                      f"remote_addrs = {_gw_addr(dial)}")
        if k <= n_charon:
            conf.write_text(text)
            charon = start_charon(lab, ns, name=f"c{k}")
            charon.load_all(conf)
            charon.initiate("net", "home")
            charon.wait_established("home")
            charon_clients.append(charon)
        else:
            conf.write_text(text.replace("esp_proposals = aes128-sha256",
                                         "esp_proposals = aes128-sha256\n"
                                         "        start_action = start"))
            natives.append(start_native(lab, ns, conf, name=f"c{k}"))
        log = lab.workdir / f"ping-c{k}.log"
        lab.spawn(ns, [sys.executable, "-m", "mobike_vici.lab.pinger", INNER, "0.1",
                       str(log)], lab.workdir / f"pinger-c{k}.out",
                  env={"PYTHONPATH": str(REPO)})
        pings.append(log)
    pool = Pool(lab, gws, gw_ns, charon_clients, controls, events, pings)
    return pool, natives, charon_clients


def _peers_up(control: Path, timeout: float = 30.0) -> None:
    """The gateway reads every peer's load (so it may redirect from the first client on)."""
    deadline = time.monotonic() + timeout
    peers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            peers = request(str(control), "pool").get("peers") or []
        except ControlError:
            peers = []
        if peers and all(p["up"] for p in peers):
            return
        time.sleep(0.2)
    raise AssertionError(f"pool peers not all up at {control}: {peers}")


def _where(natives: list[NativeDaemon], charons: list[Charon]) -> list[tuple[str, str]]:
    out = []
    for c in charons:
        sa: dict[str, Any] = c.list_sas().get("home", {})
        out.append((str(sa.get("remote-host")), str(sa.get("state"))))
    for d in natives:
        sas = [w for w in _native_where(d) if w[1] == "ESTABLISHED"]
        out.append(sas[0] if len(sas) == 1 else ("?", str(sas)))
    return out


def _settle(natives: list[NativeDaemon], charons: list[Charon], allowed: set[str],
            timeout: float = 60.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        where = _where(natives, charons)
        if all(w in allowed and s == "ESTABLISHED" for w, s in where):
            return where
        if time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    raise AssertionError(f"clients not all at {sorted(allowed)}: {where}")


def _story(daemon: NativeDaemon) -> str:
    """A native client's events (but the path manager's chatter) and its status."""
    daemon.events.poll()
    quiet = {"path_up", "path_down", "probe_result", "loop_lag", "path_rtt"}
    lines = [json.dumps(e) for e in daemon.events.events if e.get("event") not in quiet]
    return "\n".join(lines[-40:]) + "\n" + daemon.status(as_json=True).stdout[-3000:]


def _pinging(pings: list[Path], timeout: float = 30.0,
             diagnose: list[NativeDaemon] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if all(any(t > now - 1.0 for t in replies(p)) for p in pings):
            return
        time.sleep(0.2)
    raise AssertionError("not every client pings: " + str([len(replies(p)) for p in pings])
                         + "".join("\n" + _story(d) for d in diagnose or ()))


def test_mixed_pool_drains_charon_and_native_gateways(lab: Lab) -> None:
    pool, natives, charons = build_mixed(lab)
    _settle(natives, charons, {_gw_addr(1)})
    _pinging(pool.pings)
    pool.wait_peers_up(1)

    start = time.monotonic()
    done = pool.drain(1, "--rate", f"{RATE:g}")
    assert done.returncode == 0, done.stdout + done.stderr
    where = _settle(natives, charons, {_gw_addr(2), _gw_addr(3)})
    _pinging(pool.pings, diagnose=natives)
    first = [round(outage(replies(p), start, time.monotonic()), 3) for p in pool.pings]

    # Now the native gateway is drained: whoever landed there goes on to gw1/gw2.
    on_native = sum(1 for w, _ in where if w == _gw_addr(3))
    pool.wait_peers_up(3)
    start = time.monotonic()
    done = pool.drain(3, "--rate", f"{RATE:g}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{on_native} redirected" in done.stdout, done.stdout
    _settle(natives, charons, {_gw_addr(1), _gw_addr(2)})
    _pinging(pool.pings)
    second = [round(outage(replies(p), start, time.monotonic()), 3) for p in pool.pings]
    names = [e.get("event") for e in pool.gw_events(3)]
    assert names.count("sa_redirected") == on_native
    assert "drain_completed" in names
    kinds = ["charon"] * len(charons) + ["native"] * len(natives)
    took = [next(e["duration_ms"] for e in pool.gw_events(n)
                 if e.get("event") == "drain_completed") for n in (1, 3)]
    print("\nPOOL_MIXED_OUTAGES_S", json.dumps({
        "clients": kinds, "rate_per_s": RATE, "drain_gw1_outage_s": first,
        "drain_native_gw3_outage_s": second, "on_native_gw3": on_native,
        "drain_ms": {"gw1": took[0], "gw3_native": took[1]}}))
    assert max(first + second) < 10.0


def test_full_native_gateway_redirects_new_clients_in_ike_sa_init(lab: Lab) -> None:
    """gw3 (native) takes one IKE_SA: later clients, charon and native, are answered with a
    REDIRECT in IKE_SA_INIT and set up at the charon gateways instead."""
    pool, natives, charons = build_mixed(lab, dial=3, extra_pool="max_ike_sas = 1",
                                         charon_clients=2, native_clients=1)
    where = _settle(natives, charons, {_gw_addr(1), _gw_addr(2), _gw_addr(3)})
    assert sum(1 for w, _ in where if w == _gw_addr(3)) == 1, where
    # Spread by load: three clients, three gateways of one each, within one SA of even.
    counts = [sum(1 for w, _ in where if w == _gw_addr(n)) for n in (1, 2, 3)]
    assert max(counts) - min(counts) <= 1, where
    _pinging(pool.pings, diagnose=natives)
    redirected = [e for e in read_events(pool.events[2]) if e.get("event") == "client_redirected"]
    assert len(redirected) >= 2
    assert {e["gateway"] for e in redirected} <= {_gw_addr(1), _gw_addr(2)}
    for d in natives:
        if _where([d], [])[0][0] != _gw_addr(3):
            d.events.poll()
            assert any(e.get("event") == "ike_sa_redirected" and e["phase"] == "ike_sa_init"
                       for e in d.events.events)


def test_a_peer_killed_while_the_native_gateway_drains_is_skipped(lab: Lab) -> None:
    """Every client dials gw3 (native); gw3 is drained at 1/s, and after its first redirect
    to gw2, gw2 dies whole (charon and controller): the rest of the drain goes to gw1."""
    pool, natives, charons = build_mixed(lab, dial=3, charon_clients=2, native_clients=2)
    _settle(natives, charons, {_gw_addr(3)})
    _pinging(pool.pings, diagnose=natives)
    pool.wait_peers_up(3)
    returncode, output = pool.drain_killing(3, victim=2)
    events = pool.gw_events(3)
    moved = [e for e in events if e.get("event") == "sa_redirected"]
    to_gw2 = [e["remote"] for e in moved if e["gateway"] == _gw_addr(2)]
    to_gw1 = [e["remote"] for e in moved if e["gateway"] == _gw_addr(1)]
    assert any(e.get("event") == "pool_peer_down" and e["gateway"] == _gw_addr(2)
               for e in events)
    # At most the redirect in flight at the kill went to gw2; the rest to the survivor.
    assert 1 <= len(to_gw2) <= 2 and len(moved) == len(pool.pings), moved
    assert len(to_gw1) == len(moved) - len(to_gw2)
    clients = [*charons, *natives]
    survivors = [c for k, c in enumerate(clients, 1) if f"10.30.{k}.2" in to_gw1]
    _settle([d for d in natives if d in survivors], [c for c in charons if c in survivors],
            {_gw_addr(1)})
    stayed = next(e for e in events if e.get("event") == "drain_completed")
    assert (returncode == 0) == (stayed["stayed"] == 0 and stayed["failed"] == 0), output
    print("\nPOOL_NATIVE_KILL_MID_DRAIN", json.dumps({
        "to_gw2": len(to_gw2), "to_gw1": len(to_gw1), "stayed": stayed["stayed"],
        "exit": returncode}))


def test_a_reload_that_lowers_max_ike_sas_spreads_the_native_gateways_clients(lab: Lab
                                                                               ) -> None:
    """gw3 (native) holds all four clients; its file then says ``max_ike_sas = 2`` and
    a SIGHUP applies it: two clients go on to gw1 and gw2, one each."""
    pool, natives, charons = build_mixed(lab, dial=3, charon_clients=2, native_clients=2)
    _settle(natives, charons, {_gw_addr(3)})
    pool.wait_peers_up(3)
    conf = lab.workdir / "gw3.conf"
    conf.write_text(conf.read_text().replace("poll_interval = 500ms",
                                             "poll_interval = 500ms\n    max_ike_sas = 2"))
    (gw3,) = [p for p in lab.processes if str(pool.controls[2]) in p.args
              and "native" in p.args]
    gw3.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    counts: list[int] = []
    while time.monotonic() < deadline:
        where = _where(natives, charons)
        counts = [sum(1 for w, s in where if w == _gw_addr(n) and s == "ESTABLISHED")
                  for n in (1, 2, 3)]
        if counts == [1, 1, 2]:
            break
        time.sleep(0.3)
    assert counts == [1, 1, 2], _where(natives, charons)  # within one SA of even
    _pinging(pool.pings, diagnose=natives)
    events = pool.gw_events(3)
    assert any(e.get("event") == "config_reloaded" and e["policy_changed"] for e in events)
    moved = [e for e in events if e.get("event") == "sa_redirected"]
    assert [e["reason"] for e in moved] == ["max_ike_sas"] * 2
    assert {e["gateway"] for e in moved} == {_gw_addr(1), _gw_addr(2)}
