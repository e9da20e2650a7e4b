"""Throwaway network namespaces: names, veth links, addresses, routes, processes, cleanup.

Everything here shells out to `ip` and `nft` and needs root. A `Lab` owns the
namespaces and processes it creates and removes them in `close()` whatever
happened before, so a failing test never leaves a namespace or a daemon behind.
Names carry the creating pid (`mv-<pid>-<n>-<name>`) so parallel runs never
collide and leftovers of a crashed run can be recognised and swept.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mobike_vici.lab.prereq import describe, missing_tools

NAME_PREFIX = "mv-"
_lab_counter = itertools.count(1)
_STALE_RE = re.compile(r"^mv-(\d+)-\d+-")
# nftables table the lab owns in a router namespace; blackholes are set elements.
NFT_TABLE = "mvlab"


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def is_root() -> bool:
    return os.geteuid() == 0


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
         input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input_text,
        check=False,
    )
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"{' '.join(argv)} exited {proc.returncode}: {detail}")
    return proc


def list_namespaces() -> list[str]:
    """All named network namespaces on the machine (`ip netns list`)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Sequence[int], grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    alive = [pid for pid in pids if _pid_alive(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _pid_alive(pid) and not _is_zombie(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state field follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _netns_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def _delete_namespace(name: str) -> None:
    # Processes keep a namespace alive after `ip netns del`; they are ours by
    # construction (they run in a namespace we created), so end them first.
    _kill_pids(_netns_pids(name), grace=1.0)
    _run(["ip", "netns", "del", name], check=False)


def sweep_stale() -> list[str]:
    """Remove lab namespaces left behind by processes that no longer exist."""
    removed = []
    for name in list_namespaces():
        match = _STALE_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Netns:
    """One named network namespace of a lab; `name` is the full kernel name."""

    name: str
    short: str

    def __str__(self) -> str:
        return self.name

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside this namespace and wait for it."""
        return _run(self.argv(argv), check=check, timeout=timeout, input_text=input_text)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.name, *args], check=check)

    def sysctl(self, key: str, value: str) -> None:
        # Written through /proc from inside the namespace: no procps needed.
        path = "/proc/sys/" + key.replace(".", "/")
        self.run("sh", "-c", f"echo {shlex.quote(value)} > {shlex.quote(path)}")

    def add_address(self, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("addr", "add", cidr, "dev", ifname, *extra)

    def add_route(self, dest: str, via: str | None = None, dev: str | None = None,
                  metric: int | None = None) -> None:
        args = ["route", "replace" if metric is None else "add", dest]
        if via is not None:
            args += ["via", via]
        if dev is not None:
            args += ["dev", dev]
        if metric is not None:
            args += ["metric", str(metric)]
        if ":" in dest or (via is not None and ":" in via):
            args = ["-6", *args]
        self.ip(*args)

    def set_link(self, ifname: str, up: bool) -> None:
        """Set a link administratively up or down (the loud way to kill a path)."""
        self.ip("link", "set", ifname, "up" if up else "down")

    def enable_forwarding(self) -> None:
        self.sysctl("net.ipv4.ip_forward", "1")
        self.sysctl("net.ipv6.conf.all.forwarding", "1")

    def ping(self, dest: str, *, source: str | None = None, count: int = 1,
             wait: float = 2.0) -> bool:
        """True when `dest` answers an ICMP echo from this namespace."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(int(max(wait, 1)))]
        if source is not None:
            argv += ["-I", source]
        if ":" in dest:
            argv.insert(1, "-6")
        return self.run(*argv, dest, check=False, timeout=wait * count + 10).returncode == 0


class Lab:
    """Context manager that owns namespaces, links and processes, and always cleans up."""

    def __init__(self, workdir: Path | None = None, *, keep_workdir: bool | None = None) -> None:
        if not is_root():
            raise LabError("the network-namespace lab needs root (run as root or with sudo)")
        missing = missing_tools()
        if missing:
            raise LabError(f"the lab needs these tools on PATH: {describe(missing)}")
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{next(_lab_counter)}-"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix)) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        if keep_workdir is None:
            keep_workdir = os.environ.get("MV_LAB_KEEP") == "1"
        self._keep_workdir = keep_workdir
        self.namespaces: list[Netns] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except LabError as cleanup:
            if exc is None:
                raise
            # The block's own failure is the story; the cleanup problem rides along.
            exc.add_note(str(cleanup))

    def netns(self, short: str) -> Netns:
        """Create a namespace with loopback up; `short` is the name within this lab."""
        ns = Netns(f"{self.prefix}{short}", short)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        # Addresses must be usable at once: no IPv6 duplicate address detection.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        # IPv6 addresses survive a link going down, as IPv4 ones do.
        ns.sysctl("net.ipv6.conf.all.keep_addr_on_down", "1")
        ns.sysctl("net.ipv6.conf.default.keep_addr_on_down", "1")
        return ns

    def link(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair from `a` (named a_if) to `b` (named b_if), both ends up.

        Both ends are created directly inside their namespaces, so no name
        ever exists in the root namespace where parallel runs could collide.
        """
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.set_link(a_if, True)
        b.set_link(b_if, True)

    def spawn(self, ns: Netns, argv: Sequence[str], log: Path,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process in `ns`, stdout and stderr appended to `log`.

        The pid is that of the process itself (`ip netns exec` execs it), and
        close() ends it.
        """
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ns.argv(argv), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=full_env, start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    # --- nftables helpers for a router namespace -------------------------------

    def _ensure_nft(self, ns: Netns) -> None:
        if ns.run("nft", "list", "table", "inet", NFT_TABLE, check=False).returncode == 0:
            return
        script = f"""
table inet {NFT_TABLE} {{
    set bh4 {{ type ipv4_addr; }}
    set bh6 {{ type ipv6_addr; }}
    set bhp4 {{ type ipv4_addr . ipv4_addr; }}
    set bhp6 {{ type ipv6_addr . ipv6_addr; }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ip saddr @bh4 drop
        ip daddr @bh4 drop
        ip6 saddr @bh6 drop
        ip6 daddr @bh6 drop
        ip saddr . ip daddr @bhp4 drop
        ip6 saddr . ip6 daddr @bhp6 drop
    }}
}}
"""
        ns.run("nft", "-f", "-", input_text=script)

    def blackhole(self, router: Netns, addr: str, peer: str | None = None) -> None:
        """Silently drop forwarded traffic in `router`: all to/from `addr`, or only
        between `addr` and `peer` (both directions). Links stay up."""
        self._ensure_nft(router)
        router.run("nft", "add", "element", "inet", NFT_TABLE, *_bh_element(addr, peer))
        if peer is not None:
            router.run("nft", "add", "element", "inet", NFT_TABLE, *_bh_element(peer, addr))

    def blackhole_all(self, router: Netns, addrs: Sequence[str], *, heal: bool = False) -> None:
        """blackhole() (heal() with ``heal``) every one of ``addrs`` in one nftables
        transaction: an uplink's two families die together, not a subprocess apart."""
        self._ensure_nft(router)
        verb = "delete" if heal else "add"
        script = "".join(f"{verb} element inet {NFT_TABLE} {' '.join(_bh_element(a, None))}\n"
                         for a in addrs)
        if script:
            router.run("nft", "-f", "-", input_text=script)

    def heal(self, router: Netns, addr: str, peer: str | None = None) -> None:
        """Undo one blackhole() call."""
        self._ensure_nft(router)
        router.run("nft", "delete", "element", "inet", NFT_TABLE, *_bh_element(addr, peer))
        if peer is not None:
            router.run("nft", "delete", "element", "inet", NFT_TABLE, *_bh_element(peer, addr))

    def drop_ip_fragments(self, router: Netns) -> None:
        """Make `router` drop every IP fragment it would forward (IPv4 with MF set or a
        fragment offset, IPv6 with a Fragment header), as consumer routers that break
        IKE with large certificates do. The rule sits before conntrack's defragmentation
        (priority -450 < -400), so it sees the fragments even where NAT is on."""
        script = f"""
table inet {NFT_TABLE}_frag {{
    chain prerouting {{
        type filter hook prerouting priority -450; policy accept;
        ip frag-off & 0x3fff != 0 counter drop
        exthdr frag exists counter drop
    }}
}}
"""
        router.run("nft", "delete", "table", "inet", f"{NFT_TABLE}_frag", check=False)
        router.run("nft", "-f", "-", input_text=script)

    def ip_fragments_dropped(self, router: Netns) -> int:
        """Packets the drop_ip_fragments() rules of `router` dropped so far."""
        out = router.run("nft", "list", "table", "inet", f"{NFT_TABLE}_frag").stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def masquerade(self, router: Netns, out_if: str, ports: tuple[int, int] | None = None,
                   source: str | None = None) -> None:
        """Source-NAT everything leaving `router` through `out_if` (IPv4), or only what
        comes from the prefix `source` (a carrier NAT on one uplink)."""
        to = f" to :{ports[0]}-{ports[1]}" if ports else ""
        match = f"oifname \"{out_if}\"" + (f" ip saddr {source}" if source else "")
        chain = f"ip {NFT_TABLE}_nat postrouting"
        # One transaction that replaces the rules of a chain kept in place, so a call
        # can change the port range. Deleting the table and adding it again took the NAT
        # away for a moment: the flows it had translated went with it and left
        # untranslated until the new table was in (a rebinding seen as three).
        script = f"""
table ip {NFT_TABLE}_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
}}
flush chain {chain}
add rule {chain} {match} meta l4proto {{ tcp, udp }} masquerade{to}
add rule {chain} {match} masquerade
"""
        router.run("nft", "-f", "-", input_text=script)

    def flush_conntrack(self, router: Netns) -> None:
        """Forget every NAT mapping in `router`: the next packet gets a new one."""
        code = "from pyroute2 import NFCTSocket\nwith NFCTSocket() as s: s.flush()\n"
        router.run(sys.executable, "-c", code)

    # --- cleanup -----------------------------------------------------------------

    def close(self) -> None:
        """End every process this lab started, delete its namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in self.processes:
            try:
                self.stop(proc, grace=3.0)
            except Exception as exc:  # cleanup must go on whatever one step does
                errors.append(f"stopping pid {proc.pid}: {exc}")
        for ns in reversed(self.namespaces):
            try:
                _delete_namespace(ns.name)
            except Exception as exc:
                errors.append(f"deleting {ns.name}: {exc}")
        if self._own_workdir and not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise LabError("lab cleanup incomplete: " + "; ".join(errors))


def _bh_element(addr: str, peer: str | None) -> list[str]:
    v6 = ipaddress.ip_address(addr).version == 6
    if peer is None:
        return ["bh6" if v6 else "bh4", f"{{ {addr} }}"]
    return ["bhp6" if v6 else "bhp4", f"{{ {addr} . {peer} }}"]


@contextlib.contextmanager
def lab(workdir: Path | None = None) -> Iterator[Lab]:
    """`with lab() as l:` — a Lab that is closed however the block ends."""
    with Lab(workdir) as the_lab:
        yield the_lab
