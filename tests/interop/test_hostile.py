"""Hostile datagrams on ports 500 and 4500 against a live SA (charon initiator, our responder).

Random datagrams and forged IKE headers come from a third namespace; mutated
copies of the live SA's real messages (captured on charon's link) come from
charon's own address and port, i.e. on the very path of the SA. Afterwards our
daemon must be alive, the SA unchanged in both views, charon's DPD still
answered, and every forgery accounted for by a `packet_dropped` with a reason.
"""

from __future__ import annotations

import json
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mobike_vici.lab.netns import Lab, Netns

from .support import CHANGE_TIMEOUT, Interop, Tunnel, count_log, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon]

NETIO = Path(__file__).with_name("netio.py")
SEED = 4555
NON_ESP_MARKER = b"\x00\x00\x00\x00"
SK = 46
INFORMATIONAL, CREATE_CHILD_SA = 37, 36
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20
ATTACKER_NET = ("198.51.100.1", "198.51.100.66")  # (our side, attacker), /24
EMPTY_RESPONSE_IN = r"parsed INFORMATIONAL response \d+ \[ \]"


@dataclass(frozen=True)
class Forgery:
    """One datagram to send: UDP payload, destination port, and who sends it."""

    data: bytes
    dport: int
    spoofed: bool
    """From charon's address and port (raw socket) instead of the attacker namespace."""
    must_drop: bool = True
    """False for exact replays, which a responder may answer from its cache."""


def ike_header(spi_i: bytes, spi_r: bytes, next_payload: int, exchange: int, flags: int,
               message_id: int, length: int) -> bytes:
    return struct.pack("!8s8sBBBBII", spi_i, spi_r, next_payload, 0x20, exchange, flags,
                       message_id, length)


def sk_message(spi_i: bytes, spi_r: bytes, exchange: int, flags: int, message_id: int,
               body: bytes, sk_length: int | None = None) -> bytes:
    """A header and one SK payload around `body`; `sk_length` may lie about its size."""
    sk = struct.pack("!BBH", 0, 0, 4 + len(body) if sk_length is None else sk_length) + body
    return ike_header(spi_i, spi_r, SK, exchange, flags, message_id, 28 + len(sk)) + sk


def for_port(data: bytes, port: int) -> bytes:
    return NON_ESP_MARKER + data if port == 4500 else data


def forge_blind(rng: random.Random, spi_i: bytes, spi_r: bytes, next_id: int) -> list[Forgery]:
    """What an off-path attacker can send knowing the SPIs (they travel in clear)."""
    out: list[Forgery] = []
    for _ in range(40):
        out.append(Forgery(rng.randbytes(rng.randint(1, 400)), 500, False))
    for _ in range(40):
        out.append(Forgery(NON_ESP_MARKER + rng.randbytes(rng.randint(1, 400)), 4500, False))
    for _ in range(20):
        # No marker on 4500: ESP for a data plane this daemon does not have.
        esp = rng.randbytes(4).replace(b"\x00", b"\x01") + rng.randbytes(rng.randint(8, 200))
        out.append(Forgery(esp, 4500, False, must_drop=False))
    ids = (next_id - 1, next_id, next_id + 1, 1000, 0xFFFFFFFF)
    for mid in ids:
        for exchange in (INFORMATIONAL, CREATE_CHILD_SA):
            for flags in (FLAG_INITIATOR, FLAG_INITIATOR | FLAG_RESPONSE):
                # IV, whole cipher blocks and an ICV: well formed up to the ICV.
                size = 16 + 16 * rng.randint(1, 8) + 16
                msg = sk_message(spi_i, spi_r, exchange, flags, mid,
                                 rng.randbytes(size if rng.random() < 0.7 else size + 5))
                port = rng.choice((500, 4500))
                out.append(Forgery(for_port(msg, port), port, False))
    for mid in (next_id, next_id + 1):
        for present, claimed in ((20, 300), (3, 200), (0, 4), (8, 12)):
            msg = sk_message(spi_i, spi_r, INFORMATIONAL, FLAG_INITIATOR, mid,
                             rng.randbytes(present), sk_length=claimed)
            out.append(Forgery(for_port(msg, 4500), 4500, False))
    for delta in (-10, -1, 1, 50):
        msg = sk_message(spi_i, spi_r, INFORMATIONAL, FLAG_INITIATOR, next_id,
                         rng.randbytes(80))
        length = len(msg) + delta
        msg = msg[:24] + struct.pack("!I", length) + msg[28:]
        out.append(Forgery(for_port(msg, 4500), 4500, False))
    for _ in range(10):
        wrong = (rng.randbytes(8), spi_r) if rng.random() < 0.5 else (spi_i, rng.randbytes(8))
        msg = sk_message(*wrong, INFORMATIONAL, FLAG_INITIATOR, next_id, rng.randbytes(96))
        out.append(Forgery(for_port(msg, 4500), 4500, False))
    return out


def forge_from_capture(rng: random.Random, captured: list[bytes],
                       next_id: int) -> list[Forgery]:
    """Mutations of charon's real messages to us (IKE messages without marker)."""
    out: list[Forgery] = []
    established = [m for m in captured if m[8:16] != bytes(8)]
    init = [m for m in captured if m[8:16] == bytes(8)]
    assert established, "no message of the live SA captured"
    for _ in range(60):
        flipped = bytearray(rng.choice(established))
        # Never the SPIs: the point is a valid SPI pair with a damaged rest.
        for _flip in range(rng.randint(1, 4)):
            pos = rng.randrange(16, len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
        out.append(Forgery(for_port(bytes(flipped), 4500), 4500, True))
    for _ in range(20):
        real = rng.choice(established)
        out.append(Forgery(for_port(real[:rng.randrange(1, len(real))], 4500), 4500, True))
    for _ in range(10):
        real = rng.choice(established)
        wrong_id = struct.pack("!I", rng.choice((0, 7, 99, 0x7FFFFFFF)))
        out.append(Forgery(for_port(real[:20] + wrong_id + real[24:], 4500), 4500, True))
    for _ in range(10):
        # The message ID the SA expects next: only the integrity check can reject these.
        expected = bytearray(rng.choice(established))
        expected[20:24] = struct.pack("!I", next_id)
        if rng.random() < 0.5:
            pos = rng.randrange(32, len(expected))
            expected[pos] ^= 1 << rng.randrange(8)
        out.append(Forgery(for_port(bytes(expected), 4500), 4500, True))
    for real in init:
        for _ in range(5):
            out.append(Forgery(real[:rng.randrange(1, len(real))], 500, True))
    # Exact replays of real requests: at most a cached answer, no new state.
    out += [Forgery(for_port(established[-1], 4500), 4500, True, must_drop=False)] * 3
    out += [Forgery(real, 500, True, must_drop=False) for real in init] * 2
    return out


def start_sniffer(lab: Lab, interop: Interop, out: Path) -> None:
    proc = lab.spawn(interop.topo.host_b, [sys.executable, str(NETIO), "sniff",
                                           interop.topo.ifname, str(out)],
                     out.with_suffix(".log"))
    # The capture file appears once the packet socket is bound.
    wait_until(lambda: out.exists() or proc.poll() is not None, 10.0, "the sniffer")
    assert proc.poll() is None, out.with_suffix(".log").read_text()


def captured_to_us(path: Path, charon_addr: str, native_addr: str) -> list[bytes]:
    """IKE messages charon sent to our daemon, non-ESP marker removed, ESP left out."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["src"] != charon_addr or rec["dst"] != native_addr:
            continue
        data = bytes.fromhex(rec["data"])
        if rec["dport"] == 4500:
            if not data.startswith(NON_ESP_MARKER):
                continue
            data = data[4:]
        if len(data) >= 28:
            out.append(data)
    return out


def udp_receive_losses(ns: Netns) -> int:
    """Datagrams the kernel of `ns` dropped for a full socket buffer (/proc/net/snmp)."""
    rows = [line.split() for line in ns.run("cat", "/proc/net/snmp").stdout.splitlines()
            if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")])


def blast(interop: Interop, forgeries: list[Forgery], attacker_ns_name: str,
          workdir: Path) -> None:
    """Send every forgery: spoofed ones from charon's namespace, the rest from the attacker."""
    native = interop.native_addr
    plan: dict[bool, list[dict[str, object]]] = {True: [], False: []}
    for f in forgeries:
        if f.spoofed:
            plan[True].append({"src": interop.charon_addr, "sport": f.dport, "dst": native,
                               "dport": f.dport, "data": f.data.hex()})
        else:
            plan[False].append({"sport": f.dport, "dst": ATTACKER_NET[0], "dport": f.dport,
                                "data": f.data.hex()})
    for spoofed, items in plan.items():
        spec = workdir / f"blast-{'spoofed' if spoofed else 'attacker'}.jsonl"
        spec.write_text("".join(json.dumps(item) + "\n" for item in items))
        ns = interop.topo.host_b if spoofed else next(
            n for n in interop.lab.namespaces if n.name == attacker_ns_name)
        proc = ns.run(sys.executable, str(NETIO), "blast", str(spec), timeout=120)
        assert proc.stdout.strip() == str(len(items)), proc.stderr


def test_hostile_datagrams_leave_the_sa_alone(interop: Interop, tmp_path: Path) -> None:
    lab = interop.lab
    attacker = lab.netns("attacker")
    lab.link(interop.topo.host_a, "eth1", attacker, "eth0")
    interop.topo.host_a.add_address("eth1", f"{ATTACKER_NET[0]}/24")
    attacker.add_address("eth0", f"{ATTACKER_NET[1]}/24")
    capture = tmp_path / "capture.jsonl"
    start_sniffer(lab, interop, capture)

    # charon initiates and runs DPD every 3 s: a message-ID slip would show at once.
    ours, theirs = interop.sides(native_initiates=False, charon={"dpd_delay": "3s"})
    tunnel: Tunnel = interop.establish(ours, theirs)
    wait_until(lambda: count_log(tunnel.charon, EMPTY_RESPONSE_IN) >= 1, CHANGE_TIMEOUT,
               "a first DPD round (so the capture holds an established-SA request)")
    spi_i, spi_r = (bytes.fromhex(s) for s in tunnel.ike_spi.split("_"))
    captured = captured_to_us(capture, interop.charon_addr, interop.native_addr)
    ours_established = [m for m in captured if m[:16] == spi_i + spi_r]
    assert ours_established, "captured nothing of the live SA"
    next_id = max(struct.unpack("!I", m[20:24])[0] for m in ours_established) + 1

    rng = random.Random(SEED)
    forgeries = forge_blind(rng, spi_i, spi_r, next_id) + forge_from_capture(rng, captured, next_id)
    tunnel.daemon.events.poll()
    seen_before = len(tunnel.daemon.events.events)
    dpd_before = count_log(tunnel.charon, EMPTY_RESPONSE_IN)
    losses_before = udp_receive_losses(interop.topo.host_a)
    blast(interop, forgeries, attacker.name, tmp_path)

    # The real peer still gets answers: two more DPD rounds after the storm.
    wait_until(lambda: count_log(tunnel.charon, EMPTY_RESPONSE_IN) >= dpd_before + 2,
               CHANGE_TIMEOUT, "charon's DPD to be answered after the hostile datagrams")
    assert tunnel.daemon.alive()
    child = tunnel.child_event
    assert tunnel.both_show_only(tunnel.ike_spi, child["spi_in"], child["spi_out"])
    assert count_log(tunnel.charon, r"retransmit \d+ of request") == 0

    tunnel.daemon.events.poll()
    after = tunnel.daemon.events.events[seen_before:]
    names = [ev.get("event") for ev in after]
    for bad in ("ike_sa_deleted", "child_sa_deleted", "ike_sa_established", "engine_error"):
        assert bad not in names, [ev for ev in after if ev.get("event") == bad]
    dropped = [ev for ev in after if ev.get("event") == "packet_dropped"]
    assert all(isinstance(ev.get("reason"), str) and ev["reason"] for ev in dropped)
    internal = [ev for ev in dropped if ev.get("reason") == "internal_error"]
    assert internal == [], internal
    ike_drops = [ev for ev in dropped if ev.get("reason") != "esp_not_supported"]
    # Every forgery that reached the daemon is accounted for; on a loaded machine the
    # kernel may have dropped a few for a full socket buffer before the daemon saw them.
    lost = udp_receive_losses(interop.topo.host_a) - losses_before
    must_drop = sum(1 for f in forgeries if f.must_drop)
    assert lost < must_drop // 4, f"{lost} datagrams lost before the daemon read them"
    # Unauthenticated drops are summed per reason and interval (``count``).
    counted = sum(int(ev.get("count", 1)) for ev in ike_drops)
    assert counted >= must_drop - lost, (counted, must_drop, lost)
    # Drops of forgeries with our SPI pair say which SA they aimed at.
    assert any(ev.get("ike_spi") == tunnel.ike_spi for ev in ike_drops)
