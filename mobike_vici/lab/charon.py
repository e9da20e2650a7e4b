"""A real strongSwan charon (5.9.8, Debian) inside a lab namespace, driven by swanctl and VICI.

Each charon runs in its own network namespace and its own mount namespace
with a private /run (the pid file path is compiled in), with its own
strongswan.conf, VICI socket and log file in a per-instance directory.
Userspace ESP (kernel-libipsec) because the lab kernels carry no ESP.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobike_vici.backends.vici.table import decode as decode  # re-exported for the tests
from mobike_vici.lab.netns import Lab, LabError, Netns
from mobike_vici.lab.prereq import PLUGIN_DIR, describe, missing_plugins

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = "swanctl"
PLUGINS = (
    "random kdf nonce aes sha1 sha2 hmac gcm openssl curve25519 x509 pubkey pem "
    "kernel-libipsec kernel-netlink socket-default vici attr updown"
)


def charon_available() -> bool:
    """True when the charon binary and swanctl are installed."""
    import shutil

    return CHARON.exists() and shutil.which(SWANCTL) is not None


def check_plugins(plugin_dir: Path = PLUGIN_DIR) -> None:
    """Raise LabError naming every plugin of the lab's `load` list that is not installed.

    charon itself would start anyway and fail later, deep in a test, with
    "unsupported AEAD algorithm" or a failed key exchange.
    """
    missing = missing_plugins(PLUGINS.split(), plugin_dir)
    if missing:
        raise LabError(
            f"charon plugins missing from {plugin_dir}: "
            f"{describe(missing, 'scripts/bootstrap.sh --with-strongswan')}"
        )


def _file_log(name: str, rundir: Path) -> str:
    """charon's log in ``rundir``, flushed per line so a test can read it as it grows."""
    return f"""    filelog {{
        {name} {{
            path = {rundir}/charon.log
            time_format = %H:%M:%S
            default = 1
            ike = 2
            knl = 2
            flush_line = yes
        }}
    }}"""


def strongswan_conf(rundir: Path, extra_charon: str = "") -> str:
    """A strongswan.conf that loads exactly what the lab needs (charon 5.9.8, kernel-libipsec)."""
    return f"""charon {{
    load_modular = no
    load = {PLUGINS}
    install_virtual_ip = yes
    {extra_charon}
    plugins {{
        vici {{
            socket = unix://{rundir}/charon.vici
        }}
    }}
{_file_log("log", rundir)}
}}
"""


STOCK_CONF = Path("/etc/strongswan.conf")
STOCK_DIR = Path("/etc/strongswan.d")


def debian_layout(etc: Path, rundir: Path) -> Path:
    """A copy of the stock ``/etc/strongswan.conf`` and ``strongswan.d/`` tree that Debian's
    packages installed, in ``etc``, changed only as the lab needs: one extra file,
    ``strongswan.d/zz-lab.conf``, with this instance's VICI socket, userspace ESP
    (kernel-libipsec, loaded before kernel-netlink so it handles IPsec) and a file log.
    Returns the copy's strongswan.conf."""
    import shutil

    if not STOCK_CONF.exists() or not STOCK_DIR.is_dir():
        raise LabError(f"no stock {STOCK_CONF} and {STOCK_DIR}/ (strongSwan's Debian packages:"
                       " scripts/bootstrap.sh --with-strongswan)")
    etc.mkdir(parents=True, exist_ok=True)
    shutil.copy(STOCK_CONF, etc / "strongswan.conf")
    shutil.copytree(STOCK_DIR, etc / "strongswan.d", dirs_exist_ok=True)
    (etc / "strongswan.d" / "zz-lab.conf").write_text(f"""charon {{
    plugins {{
        vici {{
            socket = unix://{rundir}/charon.vici
        }}
        kernel-libipsec {{
            load = 20
        }}
    }}
{_file_log("lab", rundir)}
}}
""")
    return etc / "strongswan.conf"


@dataclass
class Charon:
    """One running charon; `stop()` ends it (the owning Lab does too, regardless)."""

    lab: Lab
    ns: Netns
    rundir: Path
    proc: subprocess.Popen[bytes]
    _session: Any = field(default=None, repr=False)
    _sock: socket.socket | None = field(default=None, repr=False)

    @property
    def vici_path(self) -> Path:
        return self.rundir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    @property
    def log_path(self) -> Path:
        return self.rundir / "charon.log"

    def log_text(self) -> str:
        """charon's file log plus its stderr, for failure messages."""
        parts = []
        for path in (self.log_path, self.rundir / "charon.stderr"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the VICI socket answers a `version` request."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(
                    f"charon in {self.ns} exited with {self.proc.returncode}:\n"
                    + self.log_text()[-3000:]
                )
            if self.vici_path.exists():
                try:
                    self.session().version()
                    return
                except OSError as exc:
                    last = exc
                    self.close_session()
            time.sleep(0.05)
        raise LabError(f"charon in {self.ns} not answering on {self.vici_path}: {last}")

    def session(self) -> Any:
        """A `vici.Session` on this charon's socket (kept and reused)."""
        if self._session is None:
            import vici

            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            try:
                sock.connect(str(self.vici_path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self._session = vici.Session(sock)
        return self._session

    def swanctl(self, *args: str, timeout: float = 30.0,
                swanctl_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon; raises LabError on failure. ``swanctl_dir``:
        where ``--load-creds``/``--load-all`` find ``x509/``, ``x509ca/``, ``private/``."""
        argv = [SWANCTL, *args, "--uri", self.uri]
        env = None if swanctl_dir is None else {**os.environ, "SWANCTL_DIR": str(swanctl_dir)}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
        if proc.returncode != 0:
            raise LabError(
                f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def load_all(self, swanctl_conf: Path, *, credentials: bool = False) -> str:
        """`swanctl --load-all --file swanctl_conf`: connections, secrets, pools; with
        ``credentials`` also the certificates and keys in swanctl's layout beside the file."""
        return self.swanctl("--load-all", "--file", str(swanctl_conf),
                            swanctl_dir=swanctl_conf.parent if credentials else None).stdout

    def initiate(self, child: str, ike: str | None = None, timeout_s: int = 20) -> str:
        """Initiate a CHILD_SA and wait for the outcome (swanctl waits itself)."""
        args = ["--initiate", "--child", child, "--timeout", str(timeout_s)]
        if ike is not None:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout_s + 10).stdout

    def terminate(self, ike: str, timeout_s: int = 10) -> str:
        return self.swanctl(
            "--terminate", "--ike", ike, "--timeout", str(timeout_s), timeout=timeout_s + 10
        ).stdout

    def list_sas(self) -> dict[str, dict[str, Any]]:
        """`list-sas` over VICI as plain dicts, keyed by IKE_SA (connection) name."""
        result: dict[str, dict[str, Any]] = {}
        for entry in self.session().list_sas():
            for name, sa in decode(entry).items():
                result[name] = sa
        return result

    def wait_established(self, conn: str, timeout: float = 20.0) -> dict[str, Any]:
        """Block until `conn` has an ESTABLISHED IKE_SA with an INSTALLED CHILD_SA."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sa = self.list_sas().get(conn)
            if sa and sa.get("state") == "ESTABLISHED" and any(
                child.get("state") == "INSTALLED" for child in sa.get("child-sas", {}).values()
            ):
                return sa
            time.sleep(0.1)
        raise LabError(f"{conn} not established in {self.ns} within {timeout}s:\n"
                       + self.log_text()[-3000:])

    def close_session(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._session = None

    def stop(self) -> None:
        self.close_session()
        self.lab.stop(self.proc, grace=5.0)


def start_charon(lab: Lab, ns: Netns, *, extra_charon: str = "", name: str | None = None,
                 timeout: float = 15.0, conf: Path | None = None,
                 make_conf: Callable[[Path], str] | None = None) -> Charon:
    """Start charon in `ns` with a private /run and its own config; wait for VICI.

    ``conf``: a strongswan.conf prepared by the caller (``debian_layout``) instead of the
    lab's own; ``make_conf``: the text of one for charon's run directory (the benches'
    quieter logging). Either must put the VICI socket and the log where ``Charon``
    expects them."""
    if not charon_available():
        raise LabError(f"strongSwan charon not installed ({CHARON}, {SWANCTL})")
    check_plugins()
    rundir = lab.workdir / f"charon-{name or ns.short}"
    rundir.mkdir(parents=True, exist_ok=True)
    if conf is None:
        conf = rundir / "strongswan.conf"
        conf.write_text(make_conf(rundir) if make_conf is not None
                        else strongswan_conf(rundir, extra_charon))
    script = (
        "mount -t tmpfs none /run && "
        f"STRONGSWAN_CONF={shlex.quote(str(conf))} exec {shlex.quote(str(CHARON))}"
    )
    # unshare -m gives charon a private mount namespace (propagation private),
    # so its tmpfs /run is invisible to everyone else; sh and unshare exec,
    # so the pid we hold is charon's.
    proc = lab.spawn(ns, ["unshare", "-m", "sh", "-c", script], rundir / "charon.stderr")
    charon = Charon(lab, ns, rundir, proc)
    try:
        charon.wait_ready(timeout)
    except BaseException:
        charon.stop()
        raise
    return charon
