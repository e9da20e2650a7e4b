"""`mobike-vici run --load` puts into charon exactly what `swanctl --load-all` puts there.

Each corpus entry is an /etc/swanctl-like directory (conf.d/ includes, x509/, x509ca/,
private/, secrets in their own files); one charon gets it from swanctl, another from the
controller, and their connections, certificates, keys, shared secrets and pools must be
the same. Both charons run from a copy of Debian's stock strongswan.conf tree (every
algorithm plugin the packages ship), so charon judges every option.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobike_vici.lab.charon import Charon, debian_layout, start_charon
from mobike_vici.lab.charon_controller import REPO
from mobike_vici.lab.netns import Lab

from .test_operator_lab import _need_pki, make_pki

pytestmark = [pytest.mark.netns, pytest.mark.charon]

CERT_CONF = {
    "gw.conf": """connections {
    site {
        version = 2
        local_addrs = 192.0.2.10
        remote_addrs = 198.51.100.0/24, %any6
        proposals = chacha20poly1305-prfsha256-curve448, aes256ctr-aesxcbc-ecp256bp
        rekey_time = 2h
        dpd_delay = 30s
        fragmentation = yes
        send_certreq = no
        local {
            auth = ecdsa-sha256
            certs = gw.pem
            id = gw.lab
        }
        remote {
            auth = pubkey
            cacerts = ca.pem
            id = "C=CH, O=mobike-vici lab, CN=*"
            revocation = relaxed
        }
        children {
            lan {
                local_ts = 10.1.0.0/16, 10.2.0.0/16[tcp/443]
                remote_ts = 10.50.0.0/16
                esp_proposals = chacha20poly1305, camellia256-sha256-curve448, aes256ctr-aesxcbc
                rekey_time = 30m
                life_time = 40m
                updown = /bin/true
                hostaccess = yes
                mode = tunnel
            }
            dmz {
                local_ts = 172.16.0.0/24
                esp_proposals = aes128gcm16-ecp256bp
                inactivity = 5m
                mark_in = 0x10
            }
        }
    }
}
""",
}
EAP_CONF = {
    "rw.conf": """connections {
    rw-eap : rw-base {
        remote {
            auth = eap-mschapv2
            eap_id = %any
        }
        children {
            net {
                local_ts = 0.0.0.0/0
            }
        }
    }
    rw-tls : rw-base {
        remote-1 {
            auth = eap-tls
            eap_id = %any
        }
    }
}
rw-base {
    local_addrs = 192.0.2.10
    pools = v4, v6
    proposals = aes256gcm16-prfsha384-ecp384, default
    local {
        auth = pubkey
        certs = gw.pem
        id = gw.lab
    }
}
""",
    "pools.conf": """pools {
    v4 {
        addrs = 10.70.0.0/24
        dns = 10.70.0.1, 10.70.0.2
    }
    v6 {
        addrs = fd00:70::/120
        dns = fd00:70::1
    }
}
""",
    "secrets.conf": """secrets {
    eap-alice {
        id = alice
        secret = "alice's password"
    }
    eap-bob {
        id = bob
        secret = 0sYm9iJ3MgcGFzc3dvcmQ=
    }
}
""",
}
PSK_CONF = {
    "a.conf": """connections {
    branch {
        remote_addrs = branch.example.net
        local_port = 4500
        proposals = aes256-sha512-modp4096
        unique = replace
        keyingtries = 0
        local {
            auth = psk
            id = hq@lab
        }
        remote {
            auth = psk
            id = branch@lab
        }
        children {
            one {
                remote_ts = 10.60.0.0/16
                esp_proposals = aes256-sha256-modp2048
                dpd_action = restart
                close_action = trap
            }
            two {
                remote_ts = 10.61.0.0/16
                esp_proposals = 3des-sha1
                rekey_bytes = 1000000000
                ipcomp = yes
            }
        }
    }
}
""",
    "b-secrets.conf": """secrets {
    ike-branch {
        id-hq = hq@lab
        id-branch = branch@lab
        secret = 0x0123456789abcdef
    }
}
""",
}
CORPUS = {"cert": CERT_CONF, "eap": EAP_CONF, "psk": PSK_CONF}


def _entry(root: Path, files: dict[str, str], creds: dict[str, bytes]) -> Path:
    for sub in ("x509", "x509ca", "private", "conf.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "x509ca" / "ca.pem").write_bytes(creds["ca.pem"])
    (root / "x509" / "gw.pem").write_bytes(creds["gw.pem"])
    (root / "private" / "gw.key").write_bytes(creds["gw.key"])
    (root / "swanctl.conf").write_text("include conf.d/*.conf\n")
    for name, text in files.items():
        (root / "conf.d" / name).write_text(text)
    return root


def _names(items: list[bytes | str]) -> list[str]:
    return sorted(i.decode() if isinstance(i, bytes) else str(i) for i in items)


def _view(charon: Charon, swanctl_dir: Path) -> dict[str, object]:
    env = {**os.environ, "SWANCTL_DIR": str(swanctl_dir)}

    def swanctl(*args: str) -> str:
        return subprocess.run(["swanctl", *args, "--uri", charon.uri], capture_output=True,
                              text=True, env=env, check=True, timeout=30).stdout

    session = charon.session()
    return {
        "conns": swanctl("--list-conns", "--raw"),
        # The remaining validity is printed relative to now: not part of what was loaded.
        "certs": re.sub(r"expires in \d+ \w+", "expires in ...", swanctl("--list-certs")),
        "pools": swanctl("--list-pools"),
        "shared": _names(session.get_shared().get("keys", [])),
        "keys": _names(session.get_keys().get("keys", [])),
    }


@pytest.fixture
def creds(lab: Lab) -> dict[str, bytes]:
    _need_pki()
    return make_pki(lab.workdir)


@pytest.mark.parametrize("entry", sorted(CORPUS))
def test_load_equals_swanctl_load_all(lab: Lab, creds: dict[str, bytes], entry: str) -> None:
    conf_dir = _entry(lab.workdir / entry, CORPUS[entry], creds)
    started: list[Charon] = []
    try:
        views = []
        for who in ("swanctl", "controller"):
            ns = lab.netns(who[:4])
            ns.ip("link", "set", "lo", "up")
            rundir = lab.workdir / f"charon-{who}"
            conf = debian_layout(lab.workdir / f"etc-{who}", rundir)
            charon = start_charon(lab, ns, name=who, conf=conf)
            started.append(charon)
            if who == "swanctl":
                subprocess.run(["swanctl", "--load-all", "--file",
                                str(conf_dir / "swanctl.conf"), "--uri", charon.uri],
                               env={**os.environ, "SWANCTL_DIR": str(conf_dir)},
                               check=True, capture_output=True, timeout=60)
            else:
                events = lab.workdir / "events.jsonl"
                proc = lab.spawn(ns, [sys.executable, "-m", "mobike_vici", "run", "--load",
                                      "--config", str(conf_dir / "swanctl.conf"),
                                      "--vici", charon.uri, "--events", str(events),
                                      "--control", str(lab.workdir / "ctl.sock")],
                                 lab.workdir / "controller.out",
                                 env={"PYTHONPATH": str(REPO)})
                deadline = time.monotonic() + 30
                while '"config_loaded"' not in (events.read_text() if events.exists() else ""):
                    assert proc.poll() is None and time.monotonic() < deadline, (
                        (lab.workdir / "controller.out").read_text()
                        + (events.read_text() if events.exists() else ""))
                    time.sleep(0.1)
                assert lab.stop(proc, grace=10.0) == 0
            views.append(_view(charon, conf_dir))
        ours, theirs = views[1], views[0]
        assert theirs["conns"], "swanctl loaded nothing: the corpus entry is broken"
        for key in theirs:
            assert ours[key] == theirs[key], f"{entry}: {key} differ"
    finally:
        for charon in started:
            charon.stop()


def test_load_mode_reload_unloads_only_its_own(lab: Lab) -> None:
    """swanctl loaded `theirs`; the controller loads `a` and `b`, then on SIGHUP the file
    says `a` and `c`: `b` goes, `c` comes, `theirs` stays."""
    ns = lab.netns("load")
    charon = start_charon(lab, ns, name="load",
                          conf=debian_layout(lab.workdir / "etc", lab.workdir / "charon-load"))
    try:
        theirs = lab.workdir / "theirs"
        theirs.mkdir()
        (theirs / "swanctl.conf").write_text(
            "connections { theirs { remote_addrs = 198.51.100.1 } }\n"
            "secrets { ike-theirs { id = x@lab\n secret = theirs } }\n")
        subprocess.run(["swanctl", "--load-all", "--file", str(theirs / "swanctl.conf"),
                        "--uri", charon.uri], env={**os.environ, "SWANCTL_DIR": str(theirs)},
                       check=True, capture_output=True, timeout=60)
        ours = lab.workdir / "ours"
        ours.mkdir()
        conf = ours / "swanctl.conf"
        conf.write_text("connections { a { remote_addrs = 198.51.100.2 }\n"
                        " b { remote_addrs = 198.51.100.3 } }\n"
                        "secrets { ike-b { id = b@lab\n secret = b } }\n")
        events = lab.workdir / "events.jsonl"
        proc = lab.spawn(ns, [sys.executable, "-m", "mobike_vici", "run", "--load",
                              "--config", str(conf), "--vici", charon.uri,
                              "--events", str(events),
                              "--control", str(lab.workdir / "ctl.sock")],
                         lab.workdir / "controller.out", env={"PYTHONPATH": str(REPO)})

        def wait_for(name: str) -> None:
            deadline = time.monotonic() + 30
            while f'"{name}"' not in (events.read_text() if events.exists() else ""):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (lab.workdir / "controller.out").read_text())
                time.sleep(0.1)

        wait_for("config_loaded")
        session = charon.session()
        assert _names(session.get_conns()["conns"]) == ["a", "b", "theirs"]
        conf.write_text("connections { a { remote_addrs = 198.51.100.2 }\n"
                        " c { remote_addrs = 198.51.100.4 } }\n")
        os.kill(proc.pid, 1)  # SIGHUP
        wait_for("config_reloaded")
        assert _names(charon.session().get_conns()["conns"]) == ["a", "c", "theirs"]
        assert _names(charon.session().get_shared()["keys"]) == ["ike-theirs"]
        assert lab.stop(proc, grace=10.0) == 0
        # Stopping unloads nothing.
        assert _names(charon.session().get_conns()["conns"]) == ["a", "c", "theirs"]
    finally:
        charon.stop()
