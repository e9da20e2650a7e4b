"""swanctl.conf texts for the interop suite: one writer for both charon and our daemon.

The same syntax feeds both sides (our loader reads swanctl.conf), so a test
states what differs per side and nothing else. Credentials are throwaway PSKs
for namespaces that live only as long as one test.
"""

from __future__ import annotations

from dataclasses import dataclass

PSK = "interop-lab-only-not-a-secret-0123456789"
NATIVE_ID = "native@interop"
CHARON_ID = "charon@interop"
CONN = "interop"
CHILD = "net"
INNER_NET = "10.88.0.0/24"
"""What charon protects with CHILD (an address of it sits on charon's loopback)."""
NATIVE_NET = "10.77.0.0/24"
"""What our daemon protects (apart from the IKE addresses, which charon cannot route)."""
CHARON_POOL = "10.99.1.0/24"
NATIVE_POOL = "10.99.2.0/24"


@dataclass(frozen=True)
class Side:
    """One end of the connection; fields left None are not written (swanctl's default)."""

    local_addr: str
    remote_addr: str | None
    local_id: str
    remote_id: str
    local_ts: str
    remote_ts: str
    """CHILD's traffic selectors."""
    proposals: str = "aes128-sha256-x25519"
    esp_proposals: str | None = "aes128-sha256"
    initiator: bool = False
    vips: str | None = None
    pool: str | None = None
    """Address range of a pool handed out to the peer (responders)."""
    dpd_delay: str | None = None
    mobike: bool = True
    """With MOBIKE our path manager probes the active path every 200 ms."""
    ike_rekey_time: str | None = None
    ike_rand_time: str | None = None
    child_rekey_time: str | None = None
    child_rand_time: str | None = None
    start: bool = False
    """start_action = start (our daemon initiates at start-up)."""


def _child(side: Side) -> str:
    lines = [f"local_ts = {side.local_ts}", f"remote_ts = {side.remote_ts}"]
    if side.esp_proposals is not None:
        lines.append(f"esp_proposals = {side.esp_proposals}")
    if side.child_rekey_time is not None:
        lines.append(f"rekey_time = {side.child_rekey_time}")
    if side.child_rand_time is not None:
        lines.append(f"rand_time = {side.child_rand_time}")
    if side.start:
        lines.append("start_action = start")
    body = "\n                ".join(lines)
    return f"""            {CHILD} {{
                {body}
            }}
"""


def swanctl_conf(side: Side) -> str:
    """connections { interop { ... } }, its secret and (for a pool) pools { ... }."""
    conn = ["version = 2", f"local_addrs = {side.local_addr}",
            f"proposals = {side.proposals}", f"mobike = {'yes' if side.mobike else 'no'}"]
    if side.remote_addr is not None:
        conn.append(f"remote_addrs = {side.remote_addr}")
    if side.vips is not None:
        conn.append(f"vips = {side.vips}")
    if side.pool is not None:
        conn.append("pools = interop_pool")
    if side.dpd_delay is not None:
        conn.append(f"dpd_delay = {side.dpd_delay}")
    if side.ike_rekey_time is not None:
        conn.append(f"rekey_time = {side.ike_rekey_time}")
    if side.ike_rand_time is not None:
        conn.append(f"rand_time = {side.ike_rand_time}")
    children = _child(side)
    conn_body = "\n        ".join(conn)
    pools = ""
    if side.pool is not None:
        pools = f"""
pools {{
    interop_pool {{
        addrs = {side.pool}
    }}
}}
"""
    return f"""# interop test config ({'initiator' if side.initiator else 'responder'})
connections {{
    {CONN} {{
        {conn_body}
        local {{
            auth = psk
            id = {side.local_id}
        }}
        remote {{
            auth = psk
            id = {side.remote_id}
        }}
        children {{
{children}        }}
    }}
}}
secrets {{
    ike-interop {{
        id-1 = {NATIVE_ID}
        id-2 = {CHARON_ID}
        secret = "{PSK}"
    }}
}}
{pools}"""
