"""IKE fragmentation (RFC 7383) against real charon: both roles with a small fragment size
on both sides, a router that drops IP fragments (our daemon gets through, and without
fragmentation nobody does), and charon <-> charon with an RSA-4096 chain as the reference.

The initiator asks for a virtual IP from the responder's pool and pings INNER_ADDR on
the responder's loopback (the data plane suite's set-up, mobike_vici/lab/tunnel.py).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobike_vici.lab.certs import Credentials, make_chain
from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, LabError, Netns
from mobike_vici.lab.topology import routed, two_hosts
from mobike_vici.lab.tunnel import CHILD, CONN, INNER_ADDR, INNER_NET, POOL, swanctl_conf, wait_ping

from .support import count_log, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon]

SMALL = 300
"""A fragment size (IP datagram bytes) below a PSK IKE_AUTH's size, both directions."""
MANY_NETS = [INNER_NET] + [f"10.{100 + n // 200}.{n % 200}.0/24" for n in range(79)]
"""80 traffic selectors (16 bytes each): an IKE_AUTH of about 1.6 kB with a PSK, more
than a 1500-byte MTU carries unfragmented."""
FLOOD = Path(__file__).with_name("fragflood.py")
FLOOD_SECONDS = 8.0
TIMEOUT = 40.0
FAIL_WAIT = 15.0
"""How long an SA that cannot come up is given (charon's second retransmit is at 11 s)."""


def side_conf(*, initiator: bool, local: str, remote: str, fragmentation: str | None = None,
              fragment_size: int | None = None, many_ts: bool = False, start: bool = True) -> str:
    """The data plane suite's swanctl.conf with this module's knobs (fragmentation,
    the native daemon's fragment_size, 80 traffic selectors)."""
    text = swanctl_conf(initiator=initiator, local=local, remote=remote, esp="aes128gcm16",
                        start=start)
    if fragmentation is not None:
        text = text.replace("mobike = yes", f"mobike = yes\n    fragmentation = {fragmentation}")
    if many_ts:
        key = "remote_ts" if initiator else "local_ts"
        text = text.replace(f"{key} = {INNER_NET}", f"{key} = {', '.join(MANY_NETS)}")
    if fragment_size is not None:
        text += f"mobike {{\n  fragment_size = {fragment_size}\n}}\n"
    return text


def add_inner_addresses(ns: Netns) -> None:
    """An address in each of MANY_NETS on the responder's loopback (charon installs a
    route per selector with a source address inside it)."""
    for net in MANY_NETS:
        ns.add_address("lo", f"{ipaddress.ip_network(net)[1]}/32")


def start_side(lab: Lab, ns: Netns, name: str, conf: str, *, native: bool,
               charon_extra: str = "") -> NativeDaemon | Charon:
    path = lab.workdir / f"{name}.conf"
    path.write_text(conf)
    if native:
        return start_native(lab, ns, path, name=name)
    charon = start_charon(lab, ns, name=name, extra_charon=charon_extra)
    charon.load_all(path)
    return charon


def fragment_events(daemon: NativeDaemon, name: str) -> list[dict[str, object]]:
    daemon.events.poll()
    return [e for e in daemon.events.events if e["event"] == name]


@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
def test_ike_auth_in_fragments_both_ways(lab: Lab, native_initiates: bool) -> None:
    topo = two_hosts(lab)
    topo.host_b.add_address("lo", f"{INNER_ADDR}/32")
    b = start_side(lab, topo.host_b, "b",
                   side_conf(initiator=False, local=topo.b4, remote=topo.a4,
                             fragment_size=None if native_initiates else SMALL),
                   native=not native_initiates, charon_extra=f"fragment_size = {SMALL}")
    a = start_side(lab, topo.host_a, "a",
                   side_conf(initiator=True, local=topo.a4, remote=topo.b4,
                             fragment_size=SMALL if native_initiates else None,
                             start=native_initiates),
                   native=native_initiates, charon_extra=f"fragment_size = {SMALL}")
    if isinstance(a, Charon):
        a.initiate(CHILD, ike=CONN)
    wait_ping(topo.host_a, INNER_ADDR, TIMEOUT)
    ours = a if isinstance(a, NativeDaemon) else b
    theirs = b if isinstance(b, Charon) else a
    assert isinstance(ours, NativeDaemon) and isinstance(theirs, Charon)
    assert ours.alive()
    # Our IKE_AUTH message went out in fragments, each within the size, and charon's
    # came in fragments that we put together; charon's log says the same from its side.
    (sent,) = [e for e in fragment_events(ours, "fragments_sent") if e["exchange"] == "IKE_AUTH"]
    (got,) = [e for e in fragment_events(ours, "fragments_reassembled")
              if e["exchange"] == "IKE_AUTH"]
    assert int(str(sent["fragments"])) >= 2 and int(str(got["fragments"])) >= 2
    assert count_log(theirs, r"received fragment #\d+ of \d+, reassembled fragmented IKE") == 1
    assert count_log(theirs, r"splitting IKE message .* into \d+ fragments") >= 1
    assert count_log(theirs, r"IKE_SA .* established") == 1


@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
def test_router_dropping_ip_fragments(lab: Lab, native_initiates: bool) -> None:
    """80 traffic selectors make IKE_AUTH larger than the MTU; the router drops IP
    fragments. With RFC 7383 (the default, at the default 1280-byte size) the SA comes up
    and pings flow."""
    topo = routed(lab)
    lab.drop_ip_fragments(topo.rtr)
    add_inner_addresses(topo.host_b)
    b = start_side(lab, topo.host_b, "b", side_conf(initiator=False, local=topo.b4,
                                                    remote=topo.a4, many_ts=True),
                   native=not native_initiates)
    a = start_side(lab, topo.host_a, "a", side_conf(initiator=True, local=topo.a4,
                                                    remote=topo.b4, many_ts=True,
                                                    start=native_initiates),
                   native=native_initiates)
    if isinstance(a, Charon):
        a.initiate(CHILD, ike=CONN, timeout_s=int(TIMEOUT))
    wait_ping(topo.host_a, INNER_ADDR, TIMEOUT)
    ours = a if isinstance(a, NativeDaemon) else b
    assert isinstance(ours, NativeDaemon)
    for name in ("fragments_sent", "fragments_reassembled"):
        assert [e for e in fragment_events(ours, name) if e["exchange"] == "IKE_AUTH"], name
    # Nothing had to be dropped: every IKE datagram fitted the path.
    assert lab.ip_fragments_dropped(topo.rtr) == 0


def test_router_dropping_ip_fragments_without_fragmentation_fails(lab: Lab) -> None:
    """The control: our daemon with fragmentation = no (not announced, so charon does not
    cut either) sends its 1.6 kB IKE_AUTH as IP fragments, which the router drops."""
    topo = routed(lab)
    lab.drop_ip_fragments(topo.rtr)
    add_inner_addresses(topo.host_b)
    b = start_side(lab, topo.host_b, "b", side_conf(initiator=False, local=topo.b4,
                                                    remote=topo.a4, many_ts=True),
                   native=False)
    a = start_side(lab, topo.host_a, "a",
                   side_conf(initiator=True, local=topo.a4, remote=topo.b4, many_ts=True,
                             fragmentation="no"), native=True)
    assert isinstance(a, NativeDaemon) and isinstance(b, Charon)
    wait_until(lambda: lab.ip_fragments_dropped(topo.rtr) >= 2, FAIL_WAIT,
               "the router to drop the IP fragments of our IKE_AUTH")
    assert a.events.find(named("ike_sa_established")) is None
    assert count_log(b, r"IKE_SA .* established") == 0
    assert not topo.host_a.ping(INNER_ADDR, count=1, wait=1.0)


def charon_pubkey_conf(*, initiator: bool, local: str, remote: str, local_id: str,
                       remote_id: str, cert: str, fragmentation: str,
                       start: bool = False) -> str:
    """swanctl.conf for either implementation with certificates (``start``: the initiator
    brings the CHILD_SA up on its own, how our daemon initiates)."""
    conn = [f"local_addrs = {local}", "version = 2", "proposals = aes128-sha256-x25519",
            f"fragmentation = {fragmentation}"]
    child = ["esp_proposals = aes128gcm16"]
    if initiator:
        conn += [f"remote_addrs = {remote}", "vips = 0.0.0.0"]
        child.append(f"remote_ts = {INNER_NET}")
        if start:
            child.append("start_action = start")
    else:
        conn.append("pools = frag_pool")
        child.append(f"local_ts = {INNER_NET}")
    pools = "" if initiator else f"pools {{\n  frag_pool {{\n    addrs = {POOL}\n  }}\n}}\n"
    nl = "\n    "
    return f"""connections {{
  {CONN} {{
    {nl.join(conn)}
    local {{
      auth = pubkey
      certs = {cert}
      id = {local_id}
    }}
    remote {{
      auth = pubkey
      id = {remote_id}
    }}
    children {{
      {CHILD} {{
        {(nl + '    ').join(child)}
      }}
    }}
  }}
}}
{pools}"""


@pytest.mark.parametrize("fragmentation", ["yes", "no"])
def test_charon_pair_with_rsa4096_chain_through_fragment_dropping_router(
        lab: Lab, fragmentation: str) -> None:
    """The reference: charon on both ends with certificates (IKE_AUTH about 3.5 kB) through
    the same router comes up only with fragmentation."""
    topo = routed(lab)
    lab.drop_ip_fragments(topo.rtr)
    topo.host_b.add_address("lo", f"{INNER_ADDR}/32")
    ids = {"a": "a.frag.lab", "b": "b.frag.lab"}
    creds = make_chain(lab.workdir / "pki", list(ids.values()))
    charons: dict[str, Charon] = {}
    for name, ns, local, remote in (("b", topo.host_b, topo.b4, topo.a4),
                                    ("a", topo.host_a, topo.a4, topo.b4)):
        me, peer = ids[name], ids["b" if name == "a" else "a"]
        conf = creds[me].directory / "swanctl.conf"
        conf.write_text(charon_pubkey_conf(initiator=name == "a", local=local, remote=remote,
                                           local_id=me, remote_id=peer,
                                           cert=creds[me].cert.name,
                                           fragmentation=fragmentation))
        charons[name] = start_charon(lab, ns, name=name)
        charons[name].load_all(conf, credentials=True)
    a, b = charons["a"], charons["b"]
    if fragmentation == "yes":
        a.initiate(CHILD, ike=CONN, timeout_s=int(TIMEOUT))
        wait_ping(topo.host_a, INNER_ADDR, TIMEOUT)
        assert count_log(a, r"splitting IKE message .* into \d+ fragments") >= 1
        assert count_log(b, r"reassembled fragmented IKE message") >= 1
        assert lab.ip_fragments_dropped(topo.rtr) == 0
    else:
        with pytest.raises(LabError):  # swanctl gives up: the IKE_AUTH never arrives
            a.initiate(CHILD, ike=CONN, timeout_s=int(FAIL_WAIT))
        assert lab.ip_fragments_dropped(topo.rtr) >= 2
        assert count_log(a, r"IKE_SA .* established") == 0
        assert count_log(b, r"IKE_SA .* established") == 0


CHAIN_IDS = {"native": "native.frag.lab", "charon": "charon.frag.lab"}


@pytest.fixture(scope="module")
def rsa4096_chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials]:
    """One RSA-4096 root -> intermediate -> two leaves for the module (key generation is
    the slow part); each test copies its side's directory into its lab."""
    return make_chain(tmp_path_factory.mktemp("pki"), list(CHAIN_IDS.values()))


@pytest.mark.parametrize("fragmentation", ["yes", "no"])
@pytest.mark.parametrize("native_initiates", [True, False],
                         ids=["native-initiator", "charon-initiator"])
def test_native_and_charon_with_rsa4096_chain_through_fragment_dropping_router(
        lab: Lab, rsa4096_chain: dict[str, Credentials], native_initiates: bool,
        fragmentation: str) -> None:
    """Our daemon against charon, both with certificates of the RSA-4096 chain (each
    IKE_AUTH carries a leaf, the intermediate and a 512-byte signature: about 3.5 kB),
    through a router that drops IP fragments. charon always has fragmentation = yes;
    ours decides: with yes both IKE_AUTH messages travel as RFC 7383 fragments and the
    router drops nothing, with no neither side cuts and the router drops the IP
    fragments of whichever IKE_AUTH comes first."""
    topo = routed(lab)
    lab.drop_ip_fragments(topo.rtr)
    topo.host_b.add_address("lo", f"{INNER_ADDR}/32")
    roles = {"native": (topo.host_a, topo.a4, topo.b4) if native_initiates
             else (topo.host_b, topo.b4, topo.a4),
             "charon": (topo.host_b, topo.b4, topo.a4) if native_initiates
             else (topo.host_a, topo.a4, topo.b4)}
    confs: dict[str, Path] = {}
    for who, (_, local, remote) in roles.items():
        creds = rsa4096_chain[CHAIN_IDS[who]]
        directory = lab.workdir / who
        shutil.copytree(creds.directory, directory)
        initiator = (who == "native") == native_initiates
        confs[who] = directory / "swanctl.conf"
        confs[who].write_text(charon_pubkey_conf(
            initiator=initiator, local=local, remote=remote, local_id=CHAIN_IDS[who],
            remote_id=CHAIN_IDS["charon" if who == "native" else "native"],
            cert=creds.cert.name, start=initiator and who == "native",
            fragmentation=fragmentation if who == "native" else "yes"))
    charon = start_charon(lab, roles["charon"][0], name="charon")
    charon.load_all(confs["charon"], credentials=True)
    ours = start_native(lab, roles["native"][0], confs["native"], name="native")
    if fragmentation == "yes":
        if not native_initiates:
            charon.initiate(CHILD, ike=CONN, timeout_s=int(TIMEOUT))
        wait_ping(topo.host_a, INNER_ADDR, TIMEOUT)
        assert ours.alive()
        # Both IKE_AUTH messages were cut by their senders and put together by us and by
        # charon; none went as IP fragments (the router would have dropped them, and a
        # lost IKE_AUTH is only retransmitted in the same form, so the SA would not be
        # up), so the router's count is exactly 0: every IKE datagram fitted the path.
        (sent,) = [e for e in fragment_events(ours, "fragments_sent")
                   if e["exchange"] == "IKE_AUTH"]
        (got,) = [e for e in fragment_events(ours, "fragments_reassembled")
                  if e["exchange"] == "IKE_AUTH"]
        assert int(str(sent["fragments"])) >= 2 and int(str(got["fragments"])) >= 2
        assert count_log(charon, r"splitting IKE message .* into \d+ fragments") >= 1
        assert count_log(charon, r"reassembled fragmented IKE message") >= 1
        assert lab.ip_fragments_dropped(topo.rtr) == 0
        assert count_log(charon, r"IKE_SA .* established") == 1
    else:
        if native_initiates:
            wait_until(lambda: lab.ip_fragments_dropped(topo.rtr) >= 2, FAIL_WAIT,
                       "the router to drop the IP fragments of our IKE_AUTH")
        else:
            with pytest.raises(LabError):  # swanctl gives up: the IKE_AUTH never arrives
                charon.initiate(CHILD, ike=CONN, timeout_s=int(FAIL_WAIT))
            assert lab.ip_fragments_dropped(topo.rtr) >= 2
        assert ours.events.find(named("ike_sa_established")) is None
        assert not fragment_events(ours, "fragments_sent")
        assert not fragment_events(ours, "fragments_reassembled")
        assert count_log(charon, r"IKE_SA .* established") == 0
        assert not topo.host_a.ping(INNER_ADDR, count=1, wait=1.0)


def test_forged_fragment_flood_while_the_sa_is_set_up(lab: Lab) -> None:
    """Forged fragments, with random SPIs and with the SA's own SPIs (random bodies, so
    their integrity check fails), race charon's real IKE_AUTH fragments from charon's
    address and port; the SA still comes up, and every forgery is dropped."""
    topo = two_hosts(lab)
    topo.host_b.add_address("lo", f"{INNER_ADDR}/32")
    b = start_side(lab, topo.host_b, "b", side_conf(initiator=False, local=topo.b4,
                                                    remote=topo.a4, fragment_size=SMALL),
                   native=True)
    a = start_side(lab, topo.host_a, "a", side_conf(initiator=True, local=topo.a4,
                                                    remote=topo.b4, start=False),
                   native=False, charon_extra=f"fragment_size = {SMALL}")
    assert isinstance(a, Charon) and isinstance(b, NativeDaemon)
    flood = subprocess.Popen(
        topo.host_a.argv([sys.executable, str(FLOOD), topo.ifname, topo.a4, topo.b4,
                          str(FLOOD_SECONDS)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        assert json.loads(flood.stdout.readline()) == {"ready": True}
        a.initiate(CHILD, ike=CONN, timeout_s=int(TIMEOUT))
        wait_ping(topo.host_a, INNER_ADDR, TIMEOUT)
        out, err = flood.communicate(timeout=FLOOD_SECONDS + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["spis_learned"], err
    assert counts["known_spi"] >= 100 and counts["random_spi"] >= 100, counts
    assert b.alive() and topo.host_a.ping(INNER_ADDR, count=1, wait=1.0)
    # charon's fragments made it through the flood; one IKE_SA on both sides.
    (got,) = [e for e in fragment_events(b, "fragments_reassembled")
              if e["exchange"] == "IKE_AUTH"]
    assert int(str(got["fragments"])) >= 2
    assert count_log(a, r"IKE_SA .* established") == 1
    assert len([e for e in b.events.events if e["event"] == "ike_sa_established"]) == 1
    # Every forgery was dropped, by reason (the drop log sums them per interval).
    time.sleep(1.5)  # the last interval's sums are written
    b.events.poll()
    dropped: dict[str, int] = {}
    for e in b.events.events:
        if e["event"] == "packet_dropped" and "protocol" not in e:
            reason = str(e["reason"])
            dropped[reason] = dropped.get(reason, 0) + int(str(e.get("count", 1)))
    assert dropped.get("unknown SPI", 0) >= counts["random_spi"] * 0.9, dropped
    assert dropped.get("integrity check failed", 0) >= counts["known_spi"] * 0.9, dropped
