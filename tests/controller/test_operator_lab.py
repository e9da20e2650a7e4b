"""`mobike-vici run` attached to charon as operators deploy it on Debian.

charon runs from a copy of the stock strongswan.conf + strongswan.d/ tree of Debian's
packages (changed only for the lab's socket, userspace ESP and log file), with the drop-in
where docs/deploy.md puts it; `swanctl --load-all` loads a configuration split over
several files with a certificate connection (chacha20poly1305, certificates made by `pki`
here); then the controller attaches and must leave charon's configuration alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.lab.charon import Charon, debian_layout, start_charon
from mobike_vici.lab.charon_controller import INNER, REPO, SNIPPET
from mobike_vici.lab.netns import Lab
from mobike_vici.lab.topology import Mobile, mobile

pytestmark = [pytest.mark.netns, pytest.mark.charon]

M0, M1 = "10.1.0.2", "10.2.0.2"
M0_ANY = (M0, "2001:db8:1::2")  # m0 back: either family of it is the preferred uplink
DN = "C=CH, O=mobike-vici lab"


def _need_pki() -> None:
    if shutil.which("pki") is None:
        reason = "NOT RUN, missing prerequisite: the pki tool (Debian package strongswan-pki)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


def _pki(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["pki", *args], input=stdin, capture_output=True, check=True,
                          timeout=60).stdout


def make_pki(where: Path) -> dict[str, bytes]:
    """A CA and ECDSA certificates for gw.lab and mob.lab, made now with `pki`."""
    ca_key = _pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem")
    (where / "ca.key").write_bytes(ca_key)
    ca = _pki("--self", "--ca", "--lifetime", "30", "--in", str(where / "ca.key"),
              "--type", "ecdsa", "--dn", f"{DN}, CN=Lab CA", "--outform", "pem")
    (where / "ca.pem").write_bytes(ca)
    out = {"ca.pem": ca}
    for name in ("gw", "mob"):
        key = _pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem")
        pub = _pki("--pub", "--type", "ecdsa", stdin=key)
        cert = _pki("--issue", "--lifetime", "30", "--cacert", str(where / "ca.pem"),
                    "--cakey", str(where / "ca.key"), "--type", "pub",
                    "--dn", f"{DN}, CN={name}.lab", "--san", f"{name}.lab",
                    "--outform", "pem", stdin=pub)
        out[f"{name}.key"], out[f"{name}.pem"] = key, cert
    return out


def swanctl_dir(root: Path, creds: dict[str, bytes], me: str, files: dict[str, str]) -> Path:
    """An /etc/swanctl-like directory: x509/, x509ca/, private/, swanctl.conf, conf.d/."""
    for sub in ("x509", "x509ca", "private", "conf.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "x509ca" / "ca.pem").write_bytes(creds["ca.pem"])
    (root / "x509" / f"{me}.pem").write_bytes(creds[f"{me}.pem"])
    (root / "private" / f"{me}.key").write_bytes(creds[f"{me}.key"])
    (root / "private" / f"{me}.key").chmod(0o600)
    (root / "swanctl.conf").write_text("include conf.d/*.conf\n")
    for name, text in files.items():
        (root / "conf.d" / name).write_text(text)
    return root


GW_CONN = """connections {
    rw {
        version = 2
        local_addrs = 192.0.2.2
        proposals = chacha20poly1305-prfsha256-x25519
        pools = vpool
        local {
            auth = pubkey
            certs = gw.pem
            id = gw.lab
        }
        remote {
            auth = pubkey
            id = mob.lab
        }
        children {
            net {
                local_ts = 10.88.0.0/24
                esp_proposals = chacha20poly1305
            }
        }
    }
}
pools {
    vpool {
        addrs = 10.99.0.0/24
    }
}
"""

MOB_CONN = """connections {
    home {
        version = 2
        remote_addrs = 192.0.2.2
        proposals = chacha20poly1305-prfsha256-x25519
        vips = 0.0.0.0
        local {
            auth = pubkey
            certs = mob.pem
            id = mob.lab
        }
        remote {
            auth = pubkey
            id = gw.lab
        }
        children {
            net {
                remote_ts = 10.88.0.0/24
                esp_proposals = chacha20poly1305
                start_action = start
            }
        }
    }
}
"""
# A second connection whose pre-shared key lives in its own file, never initiated.
MOB_OTHER = """connections {
    spare {
        remote_addrs = 198.51.100.7
        proposals = aes256ctr-aesxcbc-ecp256bp, camellia256-sha256-curve448
        local {
            auth = psk
            id = mob.lab
        }
        remote {
            auth = psk
            id = spare.lab
        }
        children {
            spare-net {
                esp_proposals = aes256ctr-sha256
            }
        }
    }
}
"""
MOB_SECRETS = """secrets {
    ike-spare {
        id = spare.lab
        secret = "lab only, not a real secret"
    }
}
"""


def mobike_section(hold_down: str) -> str:
    return f"""mobike {{
    probe_interval = 200ms
    probe_timeout = 300ms
    hold_down = {hold_down}
    prefer {{
        primary {{
            interface = m0
            cost = 0
        }}
        backup {{
            interface = m1
            cost = 10
        }}
    }}
}}
"""


class Operator:
    """The mobile host as an operator set it up, and the controller beside its charon."""

    def __init__(self, lab: Lab, topo: Mobile, mob: Charon, conf_dir: Path,
                 strongswan_conf: Path) -> None:
        self.lab, self.topo, self.mob = lab, topo, mob
        self.conf_dir = conf_dir
        self.strongswan_conf = strongswan_conf
        self.events = lab.workdir / "events.jsonl"
        self.control = lab.workdir / "ctl.sock"
        self.out = lab.workdir / "controller.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def swanctl(self, *args: str) -> str:
        env = {**os.environ, "SWANCTL_DIR": str(self.conf_dir)}
        proc = subprocess.run(["swanctl", *args, "--uri", self.mob.uri], capture_output=True,
                              text=True, env=env, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def start(self) -> None:
        argv = [sys.executable, "-m", "mobike_vici", "run",
                "--config", str(self.conf_dir / "swanctl.conf"), "--vici", self.mob.uri,
                "--events", str(self.events), "--control", str(self.control),
                "--strongswan-conf", str(self.strongswan_conf)]
        # systemd's notify socket, as Type=notify gives it.
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.lab.workdir / "notify"))
        self.proc = self.lab.spawn(self.topo.mob, argv, self.out,
                                   env={"PYTHONPATH": str(REPO),
                                        "NOTIFY_SOCKET": str(self.lab.workdir / "notify")})

    def notified(self, timeout: float = 10.0) -> list[str]:
        self.notify.settimeout(timeout)
        got = [self.notify.recv(256).decode()]
        self.notify.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(self.notify.recv(256).decode())
        return got

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def lines(self, path: Path | None = None) -> list[str]:
        path = path or self.events
        return path.read_text().splitlines() if path.exists() else []

    def event_list(self, path: Path | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.lines(path):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait(self, name: str, pred: Any = lambda e: True, *, after: int = 0,
             path: Path | None = None, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.event_list(path)[after:]:
                if ev.get("event") == name and pred(ev):
                    return ev
            assert self.proc is None or self.proc.poll() is None, self.out.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no {name} within {timeout}s:\n" + "\n".join(
            self.lines(path)[-40:]) + "\n" + self.mob.log_text()[-2000:])

    def status(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mobike_vici", "status", *extra,
                               "--control", str(self.control)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30,
                              check=False)

    def spi(self) -> str:
        sa = self.mob.list_sas()["home"]
        return f"{sa['initiator-spi']}_{sa['responder-spi']}"


@pytest.fixture
def operator(lab: Lab) -> Iterator[Operator]:
    _need_pki()
    topo = mobile(lab)
    topo.gw.ip("addr", "add", f"{INNER}/32", "dev", "lo")
    creds = make_pki(lab.workdir)
    gw = start_charon(lab, topo.gw, name="gw")
    gw_dir = swanctl_dir(lab.workdir / "gw-swanctl", creds, "gw", {"rw.conf": GW_CONN})
    subprocess.run(["swanctl", "--load-all", "--file", str(gw_dir / "swanctl.conf"),
                    "--uri", gw.uri], env={**os.environ, "SWANCTL_DIR": str(gw_dir)},
                   check=True, capture_output=True, timeout=60)
    # The mobile host: Debian's layout, the drop-in where docs/deploy.md puts it.
    rundir = lab.workdir / "charon-mob"
    conf = debian_layout(lab.workdir / "etc", rundir)
    shutil.copy(SNIPPET, conf.parent / "strongswan.d" / "mobike-vici.conf")
    mob = start_charon(lab, topo.mob, name="mob", conf=conf)
    mob_dir = swanctl_dir(lab.workdir / "swanctl", creds, "mob", {
        "home.conf": MOB_CONN, "spare.conf": MOB_OTHER, "secrets.conf": MOB_SECRETS,
        "mobike.conf": mobike_section("2s")})
    op = Operator(lab, topo, mob, mob_dir, conf)
    try:
        yield op
    finally:
        if op.proc is not None:
            lab.stop(op.proc, grace=10.0)
            op.notify.close()
        mob.stop()
        gw.stop()


def test_attached_controller_beside_a_debian_charon(operator: Operator) -> None:
    op = operator
    op.swanctl("--load-all", "--file", str(op.conf_dir / "swanctl.conf"))
    op.mob.wait_established("home", timeout=30)
    conns_before = op.swanctl("--list-conns")
    assert "home" in conns_before and "spare" in conns_before
    spi = op.spi()

    op.start()
    tracked = op.wait("ike_sa_tracked")
    assert tracked["ike_spi"] == spi and tracked["local"].startswith(M0)
    checked = op.wait("charon_settings_checked")
    assert checked["prefer_best_path"] is True
    assert "READY=1" in op.notified()
    assert op.swanctl("--list-conns") == conns_before
    assert not any(e["event"] == "config_loaded" for e in op.event_list())

    # A silent blackhole of the active uplink: left within 1.5 s, same IKE_SA.
    time.sleep(1.0)  # a few probe rounds on both paths
    mark = len(op.event_list())
    killed = time.time()
    op.topo.kill_silently(0)
    moved = op.wait("addresses_updated", lambda e: e["local"].startswith(M1), after=mark)
    assert moved["ike_spi"] == spi
    took = datetime.fromisoformat(moved["timestamp"].replace("Z", "+00:00")).timestamp() - killed
    print(f"silent blackhole: charon moved after {took:.3f} s")  # shown with -s
    assert took < 1.5, f"left the dead uplink after {took:.2f} s"
    assert op.spi() == spi
    op.wait("handover_completed", lambda e: e["ike_spi"] == spi, after=mark)

    # status: both uplinks' paths, charon attached.
    status = op.status()
    assert status.returncode == 0, status.stderr
    path_lines = [line for line in status.stdout.splitlines() if " -> " in line]
    assert any(line.strip().startswith(f"{M0}[") for line in path_lines), status.stdout
    assert any(line.strip().startswith(f"* {M1}[") for line in path_lines), status.stdout
    assert "charon   connected" in status.stdout

    # SIGHUP with a changed mobike key: applied, no SA touched.
    (op.conf_dir / "conf.d" / "mobike.conf").write_text(mobike_section("4s"))
    mark = len(op.event_list())
    op.signal(signal.SIGHUP)
    reloaded = op.wait("config_reloaded", after=mark)
    assert reloaded["policy_changed"] is True
    policy = json.loads(op.status("--json").stdout)["policy"]
    assert policy["hold_down_ms"] == 4000
    # A bad file on SIGHUP: FILE:LINE, the running policy kept.
    (op.conf_dir / "conf.d" / "mobike.conf").write_text("mobike {\n    hold_down = soon\n}\n")
    op.signal(signal.SIGHUP)
    rejected = op.wait("config_rejected", after=mark)
    assert rejected["error"].startswith(f"{op.conf_dir / 'conf.d' / 'mobike.conf'}:2: ")
    assert json.loads(op.status("--json").stdout)["policy"]["hold_down_ms"] == 4000
    (op.conf_dir / "conf.d" / "mobike.conf").write_text(mobike_section("4s"))

    # logrotate: rename, SIGHUP, the stream continues in the new file.
    rotated = op.events.with_name("events.jsonl.1")
    op.events.rename(rotated)
    op.signal(signal.SIGHUP)
    op.wait("config_reloaded", path=op.events)
    size = rotated.stat().st_size  # the old file is no longer written
    op.topo.revive(0)
    op.wait("path_up", lambda e: e["local"].startswith(M0), path=op.events)
    op.wait("handover_completed", lambda e: e["local"].split("[")[0] in M0_ANY, path=op.events,
            timeout=30)
    assert rotated.stat().st_size == size

    # SIGTERM: a clean stop; charon's connections and the SA as they were.
    op.signal(signal.SIGTERM)
    assert op.proc is not None
    assert op.proc.wait(timeout=20) == 0
    assert op.swanctl("--list-conns") == conns_before
    assert op.spi() == spi

    # One stream: every line of both files is one JSON object; nothing else on stdout.
    for path in (rotated, op.events):
        for line in op.lines(path):
            assert isinstance(json.loads(line), dict), line
    assert op.out.read_text() == ""


def test_without_events_file_stdout_is_the_one_json_stream(lab: Lab) -> None:
    """As under systemd (stdout to the journal): every logger's lines, each one JSON."""
    ns = lab.netns("jrnl")
    rundir = lab.workdir / "charon-jrnl"
    conf = debian_layout(lab.workdir / "etc", rundir)
    charon = start_charon(lab, ns, name="jrnl", conf=conf)
    swanctl = lab.workdir / "swanctl"
    swanctl.mkdir()
    (swanctl / "swanctl.conf").write_text(mobike_section("2s"))
    out = lab.workdir / "controller.out"
    try:
        proc = lab.spawn(ns, [sys.executable, "-m", "mobike_vici", "run",
                              "--config", str(swanctl / "swanctl.conf"), "--vici", charon.uri,
                              "--control", str(lab.workdir / "ctl.sock"),
                              "--strongswan-conf", str(conf), "--log-level", "debug"],
                         out, env={"PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while '"steering_reconciled"' not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        assert lab.stop(proc, grace=10.0) == 0
    finally:
        charon.stop()
    lines = out.read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert {"controller_started", "vici_connected", "net_resynced", "prefer_best_path_off",
            "controller_stopped"} <= set(events), events
