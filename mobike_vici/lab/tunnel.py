"""The data-plane lab: two hosts, a tunnel between them (native or charon on each end),
TCP transfers and ping through it, and a sniffer on the underlay.

The side that initiates asks for a virtual IP from the other side's pool; the
responder protects INNER_NET and has INNER_ADDR on its loopback, so traffic
goes from the initiator's virtual IP to INNER_ADDR.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobike_vici.lab.charon import Charon, start_charon
from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import Lab, LabError, Netns
from mobike_vici.lab.topology import TwoHosts, two_hosts

PROGRAMS = Path(__file__).resolve().parent / "programs"
TRANSFER = PROGRAMS / "transfer.py"
ESPIO = PROGRAMS / "espio.py"
PSK = "dataplane-lab-only-not-a-secret-0123456789"
INITIATOR_ID = "initiator@dataplane"
RESPONDER_ID = "responder@dataplane"
CONN = "dp"
CHILD = "net"
INNER_NET = "10.88.0.0/24"
INNER_ADDR = "10.88.0.1"
POOL = "10.99.0.0/24"
POOL6 = "2001:db8:99::/120"
PORT = 5001
MB20 = 20 << 20


def swanctl_conf(*, initiator: bool, local: str, remote: str, esp: str = "aes128gcm16",
                 encap: bool = False, child_extra: str = "", start: bool = True,
                 inner_net: str = INNER_NET, vip6: bool = False) -> str:
    """One side's swanctl.conf (the same text works for charon and for our daemon).

    The responder protects ``inner_net``; the initiator sends there from its virtual IP
    (with ``vip6``, from an IPv6 one as well, out of the responder's POOL6)."""
    conn = [f"local_addrs = {local}", "version = 2", "proposals = aes128-sha256-x25519",
            "mobike = yes"]
    if encap:
        conn.append("encap = yes")
    if initiator:
        conn += [f"remote_addrs = {remote}", "vips = 0.0.0.0, ::" if vip6 else "vips = 0.0.0.0"]
        child = [f"remote_ts = {inner_net}"]
        if start:
            child.append("start_action = start")
        ids = (INITIATOR_ID, RESPONDER_ID)
    else:
        conn.append("pools = dp_pool, dp_pool6" if vip6 else "pools = dp_pool")
        child = [f"local_ts = {inner_net}"]
        ids = (RESPONDER_ID, INITIATOR_ID)
    child.append(f"esp_proposals = {esp}")
    if child_extra:
        child.append(child_extra)
    pool6 = f"  dp_pool6 {{\n    addrs = {POOL6}\n  }}\n" if vip6 else ""
    pools = "" if initiator else f"pools {{\n  dp_pool {{\n    addrs = {POOL}\n  }}\n{pool6}}}\n"
    return f"""connections {{
  {CONN} {{
    {chr(10).join('    ' + c for c in conn).strip()}
    local {{
      auth = psk
      id = {ids[0]}
    }}
    remote {{
      auth = psk
      id = {ids[1]}
    }}
    children {{
      {CHILD} {{
        {chr(10).join('        ' + c for c in child).strip()}
      }}
    }}
  }}
}}
secrets {{
  ike-dp {{
    id-1 = {INITIATOR_ID}
    id-2 = {RESPONDER_ID}
    secret = "{PSK}"
  }}
}}
{pools}"""


End = NativeDaemon | Charon


@dataclass
class Tunnel:
    """host_a initiates, host_b responds; each end is our daemon or charon."""

    lab: Lab
    topo: TwoHosts
    a: End
    b: End

    @property
    def initiator_ns(self) -> Netns:
        return self.topo.host_a

    @property
    def responder_ns(self) -> Netns:
        return self.topo.host_b


def build(lab: Lab, *, a_native: bool, b_native: bool, esp: str = "aes128gcm16",
          encap: bool = False, child_extra: str = "", timeout: float = 30.0,
          ipv6_outer: bool = False, mobike_conf: str = "") -> Tunnel:
    """Start both ends and wait until the initiator's CHILD_SA is up and ping passes.

    ``ipv6_outer`` puts IKE and ESP on the hosts' IPv6 addresses (inner stays IPv4).
    ``mobike_conf`` is appended to both configs (a ``mobike { }`` section)."""
    topo = two_hosts(lab)
    topo.host_b.add_address("lo", f"{INNER_ADDR}/32")
    a_addr, b_addr = (topo.a6, topo.b6) if ipv6_outer else (topo.a4, topo.b4)
    conf_b = lab.workdir / "b.conf"
    conf_b.write_text(swanctl_conf(initiator=False, local=b_addr, remote=a_addr, esp=esp,
                                   encap=encap, child_extra=child_extra) + mobike_conf)
    conf_a = lab.workdir / "a.conf"
    conf_a.write_text(swanctl_conf(initiator=True, local=a_addr, remote=b_addr, esp=esp,
                                   encap=encap, child_extra=child_extra, start=a_native)
                      + mobike_conf)
    b = start_responder(lab, topo.host_b, conf_b, "b", native=b_native)
    a = start_initiator(lab, topo.host_a, conf_a, "a", native=a_native, timeout=timeout)
    tunnel = Tunnel(lab, topo, a, b)
    wait_ping(topo.host_a, INNER_ADDR, timeout)
    return tunnel


def start_responder(lab: Lab, ns: Netns, conf: Path, name: str, *, native: bool) -> End:
    """The responding end in ``ns``, ``conf`` loaded: our daemon or charon."""
    if native:
        return start_native(lab, ns, conf, name=name)
    charon = start_charon(lab, ns, name=name)
    charon.load_all(conf)
    return charon


def start_initiator(lab: Lab, ns: Netns, conf: Path, name: str, *, native: bool,
                    timeout: float, extra_args: tuple[str, ...] = (),
                    program: Sequence[str] | None = None, extra_charon: str = "") -> End:
    """The initiating end in ``ns``: our daemon up to its first CHILD_SA (its config
    starts it), or charon asked to initiate CONN/CHILD. ``extra_args`` and ``program``
    go to our daemon, ``extra_charon`` into charon's strongswan.conf."""
    if native:
        daemon = start_native(lab, ns, conf, name=name, extra_args=extra_args,
                              program=program)
        daemon.wait_event(named("child_sa_installed"), timeout)
        return daemon
    charon = start_charon(lab, ns, name=name, extra_charon=extra_charon)
    charon.load_all(conf)
    charon.initiate(CHILD, ike=CONN)
    return charon


def wait_ping(ns: Netns, dest: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ns.ping(dest, count=1, wait=1.0):
        if time.monotonic() > deadline:
            raise AssertionError(f"no ping through the tunnel to {dest} in {timeout}s")


def transfer(src: Netns, dst: Netns, addr: str, nbytes: int, *, seed: int = 1,
             port: int = PORT, timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send nbytes over TCP from `src` to `addr` (in `dst`): (sender's, receiver's) report."""
    server = subprocess.Popen(dst.argv([sys.executable, str(TRANSFER), "serve", addr, str(port)]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().strip()
        if ready != "listening":
            detail = server.stderr.read() if server.stderr else ""
            raise LabError(f"transfer server did not start: {detail}")
        sent = src.run(sys.executable, str(TRANSFER), "send", addr, str(port), str(nbytes),
                       str(seed), timeout=timeout)
        received, _ = server.communicate(timeout=timeout)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return json.loads(sent.stdout), json.loads(received.strip().splitlines()[-1])


@contextmanager
def sniffing(lab: Lab, ns: Netns, ifname: str, name: str = "sniff") -> Iterator[Path]:
    """Record every packet on `ns`/`ifname` while the block runs (JSON lines in the file)."""
    out = lab.workdir / f"{name}.jsonl"
    out.write_text("")
    proc = lab.spawn(ns, [sys.executable, str(ESPIO), "sniff", ifname, str(out)],
                     lab.workdir / f"{name}.log")
    time.sleep(0.3)  # the socket is bound well before this; no packet of the block is missed
    try:
        yield out
    finally:
        time.sleep(0.3)
        lab.stop(proc)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def native_children(daemon: NativeDaemon) -> list[dict[str, Any]]:
    proc = daemon.status(as_json=True)
    if proc.returncode != 0:
        raise AssertionError(f"status failed: {proc.stderr}")
    answer = json.loads(proc.stdout)
    return [c for sa in answer["ike_sas"] for c in sa["children"]]


def native_totals(daemon: NativeDaemon) -> dict[str, Any]:
    proc = daemon.status(as_json=True)
    answer: dict[str, Any] = json.loads(proc.stdout)
    return dict(answer.get("esp", {}))


def tun_rx_packets(ns: Netns, ifname: str = "mvici0") -> int:
    """Packets the kernel received from the TUN device (what the data plane wrote to it)."""
    text = (Path("/sys/class/net") / ifname / "statistics" / "rx_packets").as_posix()
    return int(ns.run("cat", text).stdout.strip())
