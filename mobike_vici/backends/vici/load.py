"""Our typed Config into charon as ``swanctl --load-all`` puts it there: load-conn, load-shared,
load-pool, the unloads of what disappeared, and the initiation of ``start_action = start``.

The message builders are pure and follow swanctl's layout (load_conns.c,
load_creds.c, load_pools.c in strongSwan 5.9.8): one section per connection
named as in the file, list keys (addresses, proposals, selectors, vips,
pools, groups) as VICI lists, everything else as strings, ``local*`` /
``remote*`` / ``children`` as sections. Two deliberate differences, because
the typed model no longer knows what was written: keys whose value equals
swanctl's default (also derived defaults such as ``life_time = 1.1 *
rekey_time``) are left out, so charon applies its own default exactly as if
the key were absent; and proposal lists are re-written from the parsed
``ProposalSpec``s, with the ``default`` set recognised and sent as
``default`` (charon's full default set, not our reduced one).

The async part talks to anything with the ``Commands`` shape (``ViciClient``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...config.model import (
    AuthConfig,
    ChildConfig,
    CloseAction,
    Config,
    ConnectionConfig,
    DpdAction,
    PoolConfig,
    SharedSecret,
    StartAction,
    TrafficSelectorSpec,
    Unique,
)
from ...ikev2.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId
from ...ikev2.proposals import ProposalSpec, absent_default, parse_proposals
from .errors import CommandFailed, LoadError

Message = dict[str, Any]

# swanctl sends these as comma-split VICI lists (load_conns.c is_list_key).
LIST_KEYS = frozenset({"local_addrs", "remote_addrs", "proposals", "esp_proposals",
                       "ah_proposals", "local_ts", "remote_ts", "vips", "pools", "groups"})
# ... and these as lists of file contents (is_file_list_key), relative to x509/, x509ca/.
FILE_LIST_KEYS = {"certs": "x509", "cacerts": "x509ca"}
SWANCTL_DIR = "/etc/swanctl"


# ----------------------------------------------------------------------------- proposals

_ENCR_WORD = {EncrId.AES_CBC: "aes{}", EncrId.AES_GCM_16: "aes{}gcm16"}
_INTEG_WORD = {IntegId.HMAC_SHA1_96: "sha1", IntegId.HMAC_SHA2_256_128: "sha256",
               IntegId.HMAC_SHA2_384_192: "sha384", IntegId.HMAC_SHA2_512_256: "sha512"}
_PRF_WORD = {PrfId.HMAC_SHA1: "prfsha1", PrfId.HMAC_SHA2_256: "prfsha256",
             PrfId.HMAC_SHA2_384: "prfsha384", PrfId.HMAC_SHA2_512: "prfsha512"}
_DH_WORD = {DhId.NONE: "none", DhId.MODP_2048: "modp2048", DhId.MODP_3072: "modp3072",
            DhId.MODP_4096: "modp4096", DhId.ECP_256: "ecp256", DhId.ECP_384: "ecp384",
            DhId.ECP_521: "ecp521", DhId.CURVE_25519: "x25519"}
# The PRF strongSwan implies from an integrity algorithm when none is named.
_IMPLIED_PRF = {IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
                IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
                IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
                IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512}


def format_spec(spec: ProposalSpec) -> str:
    """One ``ProposalSpec`` as a strongSwan proposal string that parses back to it."""
    words = [_ENCR_WORD[alg].format(bits) for alg, bits in spec.encr]
    words += [_INTEG_WORD[alg] for alg in spec.integ]
    implied: list[PrfId] = []
    for alg in spec.integ:
        if _IMPLIED_PRF[alg] not in implied:
            implied.append(_IMPLIED_PRF[alg])
    if spec.protocol != ProtocolId.IKE or list(spec.prf) != implied:
        words += [_PRF_WORD[alg] for alg in spec.prf]
    words += [_DH_WORD[g] for g in spec.dh]
    if tuple(spec.esn) != (EsnId.NO_ESN,):  # noesn is what strongSwan adds when none is named
        words += ["esn" if e == EsnId.ESN else "noesn" for e in spec.esn]
    return "-".join(words)


def proposal_list(specs: Sequence[ProposalSpec], protocol: ProtocolId) -> list[str]:
    """Proposals as swanctl's list items, the expanded ``default`` set folded back."""
    default = parse_proposals("default", protocol)
    out: list[str] = []
    i = 0
    while i < len(specs):
        if tuple(specs[i:i + len(default)]) == default:
            out.append("default")
            i += len(default)
            continue
        out.append(format_spec(specs[i]))
        i += 1
    return out


# ------------------------------------------------------------------------------- values


def _time(seconds: float) -> str:
    return f"{round(seconds)}s"


def _same(a: float, b: float) -> bool:
    return abs(a - b) < 0.5  # charon's times are whole seconds


def _ts(spec: TrafficSelectorSpec) -> str:
    text = "dynamic" if spec.network is None else str(spec.network)
    if spec.protocol == 0 and (spec.port_start, spec.port_end) == (0, 65535):
        return text
    proto = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}.get(spec.protocol,
                                                                str(spec.protocol))
    if spec.protocol == 0:
        proto = "%any"
    if (spec.port_start, spec.port_end) == (0, 65535):
        return f"{text}[{proto}]"
    if (spec.port_start, spec.port_end) == (65535, 0):
        return f"{text}[{proto}/opaque]"
    if spec.port_start == spec.port_end:
        return f"{text}[{proto}/{spec.port_start}]"
    return f"{text}[{proto}/{spec.port_start}-{spec.port_end}]"


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _read_files(key: str, value: str, base_dir: str) -> list[bytes]:
    out = []
    for name in _split(value):
        path = name if os.path.isabs(name) else os.path.join(base_dir, FILE_LIST_KEYS[key], name)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def _swanctl_dir(file: str) -> str:
    """Where relative certificate names point: next to the config file, as ``--file`` implies."""
    return os.path.dirname(os.path.abspath(file)) if file else SWANCTL_DIR


def _put_extra(body: Message, extra: Iterable[tuple[str, str]], base_dir: str) -> None:
    """Unmodelled keys as swanctl sends them; ``a.b`` keys become subsection ``a``."""
    for key, value in extra:
        target = body
        *sections, leaf = key.split(".")
        for name in sections:
            target = target.setdefault(name, {})
        if leaf in LIST_KEYS:
            target[leaf] = _split(value)
        elif leaf in FILE_LIST_KEYS and not sections:
            target[leaf] = _read_files(leaf, value, base_dir)
        else:
            target[leaf] = value


# ----------------------------------------------------------------------------- messages


def _auth_section(auth: AuthConfig, base_dir: str) -> Message:
    body: Message = {"auth": auth.method}
    if auth.id is not None:
        body["id"] = auth.id
    if auth.round:
        body["round"] = str(auth.round)
    _put_extra(body, auth.extra, base_dir)
    return body


def _child_section(child: ChildConfig, base_dir: str) -> Message:
    body: Message = {}
    dynamic = (TrafficSelectorSpec(None),)
    if child.local_ts != dynamic:
        body["local_ts"] = [_ts(t) for t in child.local_ts]
    if child.remote_ts != dynamic:
        body["remote_ts"] = [_ts(t) for t in child.remote_ts]
    if child.esp_proposals and child.esp_proposals != absent_default(ProtocolId.ESP):
        body["esp_proposals"] = proposal_list(child.esp_proposals, ProtocolId.ESP)
    if child.mode != "tunnel":
        body["mode"] = child.mode
    if child.start_action != StartAction.NONE:
        body["start_action"] = child.start_action.value
    if child.dpd_action != DpdAction.CLEAR:
        body["dpd_action"] = child.dpd_action.value
    if child.close_action != CloseAction.NONE:
        body["close_action"] = child.close_action.value
    if not _same(child.rekey_time, 3600.0):
        body["rekey_time"] = _time(child.rekey_time)
    if not _same(child.life_time, child.rekey_time * 1.1):
        body["life_time"] = _time(child.life_time)
    if not _same(child.rand_time, max(child.life_time - child.rekey_time, 0.0)):
        body["rand_time"] = _time(child.rand_time)
    for rekey_key, life_key in (("rekey_bytes", "life_bytes"), ("rekey_packets", "life_packets")):
        rekey_n, life_n = getattr(child, rekey_key), getattr(child, life_key)
        if rekey_n:
            body[rekey_key] = str(rekey_n)
        if life_n != rekey_n * 11 // 10:
            body[life_key] = str(life_n)
    if child.replay_window != 32:
        body["replay_window"] = str(child.replay_window)
    _put_extra(body, child.extra, base_dir)
    return body


def conn_message(conn: ConnectionConfig) -> Message:
    """The ``load-conn`` message for one connection: ``{name: {...}}``."""
    base_dir = _swanctl_dir(conn.file)
    body: Message = {}
    if conn.version:
        body["version"] = str(conn.version)
    if conn.local_addrs != ("%any",):
        body["local_addrs"] = list(conn.local_addrs)
    if conn.remote_addrs != ("%any",):
        body["remote_addrs"] = list(conn.remote_addrs)
    if conn.local_port != 500:
        body["local_port"] = str(conn.local_port)
    if conn.remote_port != 500:
        body["remote_port"] = str(conn.remote_port)
    if conn.proposals and conn.proposals != parse_proposals("default", ProtocolId.IKE):
        body["proposals"] = proposal_list(conn.proposals, ProtocolId.IKE)
    if conn.vips:
        body["vips"] = [str(v) for v in conn.vips]
    if conn.pools:
        body["pools"] = list(conn.pools)
    if conn.dpd_delay:
        body["dpd_delay"] = _time(conn.dpd_delay)
    if conn.dpd_timeout:
        body["dpd_timeout"] = _time(conn.dpd_timeout)
    if not _same(conn.rekey_time, 14400.0):
        body["rekey_time"] = _time(conn.rekey_time)
    if conn.reauth_time:
        body["reauth_time"] = _time(conn.reauth_time)
    if not _same(conn.over_time, max(conn.rekey_time, conn.reauth_time) / 10):
        body["over_time"] = _time(conn.over_time)
    if not _same(conn.rand_time, conn.over_time):
        body["rand_time"] = _time(conn.rand_time)
    if conn.keyingtries != 1:
        body["keyingtries"] = str(conn.keyingtries)
    if conn.unique != Unique.NO:
        body["unique"] = conn.unique.value
    if not conn.mobike:
        body["mobike"] = "no"
    if conn.encap:
        body["encap"] = "yes"
    _put_extra(body, conn.extra, base_dir)
    # An unnamed round is the model's stand-in for "no section written": send none.
    for auth in (*conn.local, *conn.remote):
        if auth.name:
            body[auth.name] = _auth_section(auth, base_dir)
    if conn.children:
        body["children"] = {c.name: _child_section(c, base_dir) for c in conn.children}
    return {conn.name: body}


def shared_message(secret: SharedSecret) -> Message:
    """The ``load-shared`` message of an ``ike*`` secret (the secret as a binary blob)."""
    return {"id": secret.name, "type": "IKE", "data": secret.secret, "owners": list(secret.ids)}


def _addrs(pool: PoolConfig) -> str:
    """The pool's ``addrs``: a subnet where the leases are exactly what charon derives from it."""
    first, last = int(pool.first), int(pool.last)
    width = pool.first.max_prefixlen
    for prefix in range(max(width - 31, 0), width - 1):  # the loader caps pools at 2^31
        size = 1 << (width - prefix)
        network = first - 1
        if network % size == 0 and last == network + size - 2:
            return f"{type(pool.first)(network)}/{prefix}"
    if first == last:
        return str(pool.first)
    return f"{pool.first}-{pool.last}"


def pool_message(pool: PoolConfig) -> Message:
    """The ``load-pool`` message: ``addrs`` a string, every attribute a list (load_pools.c)."""
    body: Message = {"addrs": _addrs(pool)}
    for key, value in pool.attributes:
        body.setdefault(key, []).extend(_split(value))
    return {pool.name: body}


def start_children(config: Config) -> list[tuple[str, str]]:
    """(ike, child) for every child charon would initiate on load (``start_action = start``)."""
    return [(conn.name, child.name) for conn in config.connections
            for child in conn.children if child.start_action.starts]


# -------------------------------------------------------------------------- charon side


class Commands(Protocol):
    """What loading needs from a VICI client (``ViciClient`` has it)."""

    async def call(self, command: str, message: Message | None = None) -> Message: ...

    async def initiate(self, child: str, ike: str | None = None, *,
                       timeout_ms: int = 10000, init_limits: bool = True) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Names loaded and unloaded, per kind, in order."""

    conns: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    unloaded_conns: tuple[str, ...] = ()
    unloaded_shared: tuple[str, ...] = ()
    unloaded_pools: tuple[str, ...] = ()


async def _load_all(client: Commands, config: Config) -> tuple[list[str], list[str], list[str]]:
    # Pools and secrets first: a connection may name a pool (swanctl --load-all order).
    pools, shared, conns = [], [], []
    for pool in config.pools:
        await client.call("load-pool", pool_message(pool))
        pools.append(pool.name)
    for secret in config.secrets:
        await client.call("load-shared", shared_message(secret))
        shared.append(secret.name)
    for conn in config.connections:
        await client.call("load-conn", conn_message(conn))
        conns.append(conn.name)
    return conns, shared, pools


async def _unload(client: Commands, command: str, key: str, names: Iterable[str]) -> list[str]:
    done = []
    for name in names:
        await client.call(command, {key: name})
        done.append(name)
    return done


async def load(client: Commands, config: Config, *, prune: bool = True) -> LoadResult:
    """Load everything in ``config``; with ``prune``, unload what charon has beyond it.

    ``prune`` is what ``swanctl --load-all`` does (get-conns, get-shared,
    get-pools, then unload the rest). Raises ``LoadError`` naming the first
    item charon refused; ``ViciUnavailable`` when charon is gone.
    """
    try:
        conns, shared, pools = await _load_all(client, config)
        gone_conns: list[str] = []
        gone_shared: list[str] = []
        gone_pools: list[str] = []
        if prune:
            have = await client.call("get-conns")
            gone_conns = await _unload(client, "unload-conn", "name",
                                       [n for n in _names(have, "conns") if n not in conns])
            have = await client.call("get-shared")
            gone_shared = await _unload(client, "unload-shared", "id",
                                        [n for n in _names(have, "keys") if n not in shared])
            have = await client.call("get-pools")
            gone_pools = await _unload(client, "unload-pool", "name",
                                       [n for n in have if n not in pools])
    except CommandFailed as exc:
        raise LoadError(str(exc)) from exc
    return LoadResult(tuple(conns), tuple(shared), tuple(pools),
                      tuple(gone_conns), tuple(gone_shared), tuple(gone_pools))


async def reload(client: Commands, old: Config, new: Config) -> LoadResult:
    """Load ``new`` and unload what ``old`` had and ``new`` has not (SIGHUP, ``reload``)."""
    try:
        conns, shared, pools = await _load_all(client, new)
        gone_conns = await _unload(client, "unload-conn", "name",
                                   [c.name for c in old.connections if c.name not in conns])
        gone_shared = await _unload(client, "unload-shared", "id",
                                    [s.name for s in old.secrets if s.name not in shared])
        gone_pools = await _unload(client, "unload-pool", "name",
                                   [p.name for p in old.pools if p.name not in pools])
    except CommandFailed as exc:
        raise LoadError(str(exc)) from exc
    return LoadResult(tuple(conns), tuple(shared), tuple(pools),
                      tuple(gone_conns), tuple(gone_shared), tuple(gone_pools))


async def initiate_start(client: Commands, config: Config, *, skip: Collection[str] = (),
                         timeout_ms: int = 10000) -> dict[str, str | None]:
    """Initiate the ``start_action = start`` children of connections not in ``skip``.

    charon itself initiates those children when load-conn adds or changes a
    connection (verified with 5.9.8 in the lab), exactly as after ``swanctl
    --load-all``; so right after ``load`` pass the connections that have an
    IKE_SA (or all of them). This is for bringing them up again later, e.g.
    after charon gave up. Returns per child None or charon's reason for failing.
    """
    outcome: dict[str, str | None] = {}
    for ike, child in start_children(config):
        if ike in skip:
            continue
        try:
            await client.initiate(child, ike, timeout_ms=timeout_ms)
            outcome[child] = None
        except CommandFailed as exc:
            outcome[child] = str(exc)
    return outcome


def _names(answer: Message, key: str) -> list[str]:
    value = answer.get(key, [])
    return [str(v) for v in value] if isinstance(value, list) else []
