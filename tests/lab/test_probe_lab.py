"""Probes from `mob` to `gw` per uplink: ICMP and UDP echo, silent death, tunnel bypass."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path as FsPath
from typing import Any

import pytest

from mobike_vici.lab import topology
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.net.probes.bypass import PROBE_FWMARK

pytestmark = pytest.mark.netns

KEY = b"lab-probe-key-0123456789"
RULE_PRIORITY = 210
"""Before charon's table 220 (priority 220)."""


def probe(ns: Netns, mode: str, *args: str) -> dict[str, Any]:
    r = ns.run(sys.executable, "-m", "mobike_vici.net.probes", mode, "--wait", "0.5", *args,
               timeout=60)
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def tx_packets(ns: Netns, ifname: str) -> int:
    out = json.loads(ns.ip("-j", "-s", "link", "show", "dev", ifname).stdout)
    return int(out[0]["stats64"]["tx"]["packets"])


def test_icmp_probes_per_uplink_and_silent_death(lab: Lab) -> None:
    t = topology.mobile(lab)
    for up in t.uplinks:
        for local, peer in ((up.addr4, t.gw4), (up.addr6, t.gw6)):
            before = tx_packets(t.mob, up.ifname)
            res = probe(t.mob, "icmp", "--local", local, "--dev", up.ifname, "--peer", peer,
                        "--count", "3")
            assert set(res["replies"]) == {"1", "2", "3"}, (up.ifname, local, res)
            assert all(0 < rtt < 1.0 for rtt in res["replies"].values())
            # The probes left through the bound uplink, even m1 (not the default route).
            assert tx_packets(t.mob, up.ifname) - before >= 3

    t.kill_silently(0)
    m0, m1 = t.uplinks
    dead = probe(t.mob, "icmp", "--local", m0.addr4, "--dev", m0.ifname, "--peer", t.gw4)
    dead6 = probe(t.mob, "icmp", "--local", m0.addr6, "--dev", m0.ifname, "--peer", t.gw6)
    alive = probe(t.mob, "icmp", "--local", m1.addr4, "--dev", m1.ifname, "--peer", t.gw4)
    assert dead["replies"] == {} and dead["sent"] == 3
    assert dead6["replies"] == {} and dead6["sent"] == 3
    assert set(alive["replies"]) == {"1", "2", "3"}
    t.revive(0)
    back = probe(t.mob, "icmp", "--local", m0.addr4, "--dev", m0.ifname, "--peer", t.gw4)
    assert set(back["replies"]) == {"1", "2", "3"}


def start_responder(lab: Lab, gw: Netns, local: str, key_file: FsPath) -> tuple[Any, FsPath]:
    log = lab.workdir / f"responder-{local.replace(':', '_')}.log"
    proc = lab.spawn(gw, [sys.executable, "-m", "mobike_vici.net.probes", "respond",
                          "--local", local, "--key-file", str(key_file)], log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log.exists() and "listening" in log.read_text():
            return proc, log
        assert proc.poll() is None, log.read_text() if log.exists() else "no log"
        time.sleep(0.05)
    raise AssertionError("responder did not start")


def test_udp_echo_against_responder_and_wrong_key(lab: Lab) -> None:
    t = topology.mobile(lab)
    key_file = lab.workdir / "probe.key"
    key_file.write_bytes(KEY)
    wrong = lab.workdir / "wrong.key"
    wrong.write_bytes(b"not-the-key")
    proc4, log4 = start_responder(lab, t.gw, t.gw4, key_file)
    proc6, _ = start_responder(lab, t.gw, t.gw6, key_file)

    for up in t.uplinks:
        for local, peer in ((up.addr4, t.gw4), (up.addr6, t.gw6)):
            res = probe(t.mob, "udp", "--local", local, "--dev", up.ifname, "--peer", peer,
                        "--key-file", str(key_file))
            assert set(res["replies"]) == {"1", "2", "3"}, (local, res)
    bad = probe(t.mob, "udp", "--local", t.uplinks[1].addr4, "--dev", "m1", "--peer", t.gw4,
                "--key-file", str(wrong), "--count", "2")
    assert bad["replies"] == {} and bad["sent"] == 2

    t.kill_silently(1)
    dead = probe(t.mob, "udp", "--local", t.uplinks[1].addr4, "--dev", "m1", "--peer", t.gw4,
                 "--key-file", str(key_file))
    assert dead["replies"] == {}

    assert lab.stop(proc4) == 0 and lab.stop(proc6) == 0
    counters = json.loads(log4.read_text().strip().splitlines()[-1])
    assert counters["unauthenticated"] == 2
    assert counters["answered"] == 6  # 3 per uplink over IPv4


def test_probes_bypass_a_full_tunnel_route_in_table_220(lab: Lab) -> None:
    t = topology.mobile(lab)
    # What charon with kernel-libipsec does for a 0.0.0.0/0 remote TS, minus ipsec0.
    for fam, dst in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        t.mob.ip(fam, "route", "add", dst, "dev", "lo", "table", "220")
        t.mob.ip(fam, "rule", "add", "pref", "220", "table", "220")
    m0 = t.uplinks[0]
    caught = probe(t.mob, "icmp", "--local", m0.addr4, "--peer", t.gw4, "--no-mark")
    assert caught["replies"] == {}, "the simulated tunnel route must catch unmarked probes"

    # A rule before table 220 for the probes' mark (the daemon installs none: the
    # controller's probes rely on SO_BINDTODEVICE; this checks the mark alone).
    rule = ("rule", "add", "pref", str(RULE_PRIORITY), "fwmark", str(PROBE_FWMARK),
            "lookup", "main")
    for fam in ("-4", "-6"):
        t.mob.ip(fam, *rule)
    try:
        rules = t.mob.ip("-4", "rule", "show").stdout
        assert f"{RULE_PRIORITY}:\tfrom all fwmark {PROBE_FWMARK:#x} lookup main" in rules
        for up in t.uplinks:
            for local, peer in ((up.addr4, t.gw4), (up.addr6, t.gw6)):
                for dev in ((), ("--dev", up.ifname)):
                    res = probe(t.mob, "icmp", "--local", local, "--peer", peer, *dev)
                    assert set(res["replies"]) == {"1", "2", "3"}, (local, dev, res)
    finally:
        for fam in ("-4", "-6"):
            t.mob.ip(fam, "rule", "del", "pref", str(RULE_PRIORITY))
    assert str(PROBE_FWMARK) not in t.mob.ip("-4", "rule", "show").stdout
    assert probe(t.mob, "icmp", "--local", m0.addr4, "--peer", t.gw4)["replies"] == {}
