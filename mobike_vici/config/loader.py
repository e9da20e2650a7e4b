"""The parsed settings tree into the typed, validated ``Config`` (swanctl's keys and defaults).

Unknown keys inside the sections we read are errors, not warnings: an operator
would rather hear about ``rekey_tme`` at load time than find the default in
effect. Keys swanctl knows but this project does not model are kept verbatim in
``extra``. Unknown top-level sections are ignored, as swanctl ignores them.
Only ``ConfigError`` escapes ``build_config``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..ikev2.constants import ProtocolId
from ..ikev2.proposals import ProposalError, ProposalSpec, absent_default, parse_proposals
from . import values as val
from .mobike import from_section as mobike_policy
from .model import (
    AuthClass,
    AuthConfig,
    ChildConfig,
    CloseAction,
    Config,
    ConfigError,
    ConnectionConfig,
    DpdAction,
    Fragmentation,
    MobikeConfig,
    PoolConfig,
    SharedSecret,
    StartAction,
    TrafficSelectorSpec,
    Unique,
)
from .parser import Section, Value

# -- key tables (swanctl.conf(5), strongSwan 5.9.8) -------------------------------

_CONN_KEYS = frozenset({
    "version", "local_addrs", "remote_addrs", "local_port", "remote_port", "proposals",
    "vips", "pools", "dpd_delay", "dpd_timeout", "rekey_time", "reauth_time", "over_time",
    "rand_time", "keyingtries", "unique", "mobike", "encap",
})
_CONN_PASSTHROUGH = frozenset({
    "aggressive", "pull", "dscp", "fragmentation", "childless", "send_certreq", "send_cert",
    "ppk_id", "ppk_required", "if_id_in", "if_id_out", "mediation", "mediated_by",
    "mediation_peer",
})
_AUTH_KEYS = frozenset({"auth", "id", "round"})
_LOCAL_PASSTHROUGH = frozenset({"certs", "pubkeys", "eap_id", "aaa_id", "xauth_id"})
_REMOTE_PASSTHROUGH = frozenset({
    "eap_id", "groups", "cert_policy", "certs", "cacerts", "ca_id", "pubkeys", "revocation",
})
_CERT_KEYS = frozenset({"file", "handle", "slot", "module"})
_CHILD_KEYS = frozenset({
    "local_ts", "remote_ts", "esp_proposals", "mode", "start_action", "dpd_action",
    "close_action", "rekey_time", "life_time", "rand_time", "rekey_bytes", "life_bytes",
    "rekey_packets", "life_packets", "replay_window",
})
_CHILD_PASSTHROUGH = frozenset({
    "ah_proposals", "sha256_96", "rand_bytes", "rand_packets", "updown", "hostaccess",
    "policies", "policies_fwd_out", "ipcomp", "inactivity", "reqid", "priority", "interface",
    "mark_in", "mark_in_sa", "mark_out", "set_mark_in", "set_mark_out", "if_id_in",
    "if_id_out", "label", "label_mode", "tfc_padding", "hw_offload", "copy_df", "copy_ecn",
    "copy_dscp",
})
# Secret types by section-name prefix; order matters where one prefix starts another.
_SECRET_TYPES: tuple[tuple[str, frozenset[str]], ...] = (
    ("ike", frozenset({"secret"})),
    ("eap", frozenset({"secret"})),
    ("xauth", frozenset({"secret"})),
    ("ntlm", frozenset({"secret"})),
    ("ppk", frozenset({"secret"})),
    ("private", frozenset({"file", "secret"})),
    ("rsa", frozenset({"file", "secret"})),
    ("ecdsa", frozenset({"file", "secret"})),
    ("pkcs8", frozenset({"file", "secret"})),
    ("pkcs12", frozenset({"file", "secret"})),
    ("token", frozenset({"handle", "slot", "module", "pin"})),
)
_ID_SECRETS = frozenset({"ike", "eap", "xauth", "ntlm", "ppk"})
_POOL_ADDR_ATTRS = frozenset({"dns", "nbns", "dhcp", "netmask", "server"})
_POOL_NET_ATTRS = frozenset({"subnet", "split_include", "split_exclude"})
_AUTHORITY_KEYS = frozenset({
    "cacert", "file", "handle", "slot", "module", "crl_uris", "ocsp_uris", "cert_uri_base",
})

_START = {"none": StartAction.NONE, "trap": StartAction.TRAP, "route": StartAction.TRAP,
          "start": StartAction.START, "trap|start": StartAction.TRAP_START,
          "start|trap": StartAction.TRAP_START}
_DPD = {"clear": DpdAction.CLEAR, "none": DpdAction.CLEAR, "trap": DpdAction.TRAP,
        "route": DpdAction.TRAP, "restart": DpdAction.RESTART, "start": DpdAction.RESTART}
_CLOSE = {"none": CloseAction.NONE, "clear": CloseAction.NONE, "trap": CloseAction.TRAP,
          "route": CloseAction.TRAP, "start": CloseAction.START, "restart": CloseAction.START}
_UNIQUE = {u.value: u for u in Unique}
_FRAGMENTATION = {f.value: f for f in Fragmentation}
_MODES = frozenset({"tunnel", "transport"})
_OTHER_MODES = frozenset({"transport_proxy", "beet", "pass", "drop"})
# strongSwan's mem_pool caps a pool at 2^31 addresses (POOL_LIMIT in mem_pool.c).
_POOL_LIMIT_BITS = 31


def build_config(root: Section) -> Config:
    """Turn the (reference-resolved) settings tree into a validated ``Config``."""
    pools = _pools(root.sections.get("pools"))
    secrets = _secrets(root.sections.get("secrets"))
    if "authorities" in root.sections:
        _check_authorities(root.sections["authorities"])
    connections = _connections(root.sections.get("connections"))
    _cross_check(connections, pools, secrets, root.sections.get("connections"))
    mobike = _mobike(root.sections.get("mobike"))
    return Config(tuple(connections), tuple(secrets), tuple(pools), mobike)


# -- generic helpers ----------------------------------------------------------------


def _get(sec: Section, key: str) -> Value | None:
    """The value, or None when absent or set empty (an empty value restores the default)."""
    v = sec.keys.get(key)
    return v if v is not None and v.value.strip() else None


def _unknown_key(sec: Section, key: str, where: str) -> ConfigError:
    v = sec.keys[key]
    return ConfigError(v.file, v.line, f"unknown key '{key}' in {where}")


def _no_keys(sec: Section, where: str) -> None:
    for key in sec.keys:
        raise _unknown_key(sec, key, where)


def _no_sections(sec: Section, where: str) -> None:
    for sub in sec.sections.values():
        raise ConfigError(sub.file, sub.line, f"unexpected section '{sub.name}' in {where}")


def _flatten(sec: Section, prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, v in sec.keys.items():
        yield prefix + key, v.value
    for sub in sec.sections.values():
        yield from _flatten(sub, f"{prefix}{sub.name}.")


def _proposals(v: Value | None, sec: Section, protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    if v is None:
        return absent_default(protocol)
    try:
        return parse_proposals(v.value, protocol)
    except ProposalError as exc:
        file, line = (v.file, v.line) if v is not None else (sec.file, sec.line)
        key = "proposals" if protocol == ProtocolId.IKE else "esp_proposals"
        raise ConfigError(file, line, f"{key}: {exc}") from None


# -- connections --------------------------------------------------------------------


def _connections(sec: Section | None) -> list[ConnectionConfig]:
    if sec is None:
        return []
    _no_keys(sec, "connections")
    return [_connection(conn) for conn in sec.sections.values()]


def _connection(sec: Section) -> ConnectionConfig:
    where = f"connection '{sec.name}'"
    extra: list[tuple[str, str]] = []
    for key, kv in sec.keys.items():
        if key in _CONN_PASSTHROUGH:
            extra.append((key, kv.value))
        elif key not in _CONN_KEYS:
            raise _unknown_key(sec, key, where)
    if (v := _get(sec, "fragmentation")) is not None:
        # Kept as written for charon; the native core reads it, so it must be valid.
        val.parse_enum(v, "fragmentation", _FRAGMENTATION)
    local: list[AuthConfig] = []
    remote: list[AuthConfig] = []
    children: list[ChildConfig] = []
    for sub in sec.sections.values():
        if sub.name == "children":
            _no_keys(sub, f"{where} children")
            children.extend(_child(child, sec.name) for child in sub.sections.values())
        elif sub.name.startswith("local"):
            local.append(_auth(sub, where, remote=False))
        elif sub.name.startswith("remote"):
            remote.append(_auth(sub, where, remote=True))
        else:
            raise ConfigError(sub.file, sub.line, f"unknown section '{sub.name}' in {where}")

    kw: dict[str, object] = {}
    if (v := _get(sec, "version")) is not None:
        version = val.parse_uint(v, "version", maximum=2)
        if version == 1:
            raise val.error(v, "version: IKEv1 is not supported (MOBIKE needs IKEv2)")
        kw["version"] = version
    for key in ("local_addrs", "remote_addrs"):
        if (v := _get(sec, key)) is not None:
            items = val.split_list(v)
            for item in items:
                val.check_peer_address(v, key, item)
            kw[key] = tuple(items) or ("%any",)
    for key in ("local_port", "remote_port"):
        if (v := _get(sec, key)) is not None:
            kw[key] = val.parse_uint(v, key, maximum=65535, minimum=1)
    kw["proposals"] = _proposals(_get(sec, "proposals"), sec, ProtocolId.IKE)
    if (v := _get(sec, "vips")) is not None:
        kw["vips"] = tuple(val.parse_address(v, "vips", item) for item in val.split_list(v))
    if (v := _get(sec, "pools")) is not None:
        kw["pools"] = tuple(val.split_list(v))
    for key in ("dpd_delay", "dpd_timeout"):
        if (v := _get(sec, key)) is not None:
            kw[key] = val.parse_time(v, key)
    rekey = _time_or(sec, "rekey_time", 4 * 3600.0)
    reauth = _time_or(sec, "reauth_time", 0.0)
    over = _time_or(sec, "over_time", max(rekey, reauth) / 10)
    rand = _time_or(sec, "rand_time", over)
    kw.update(rekey_time=rekey, reauth_time=reauth, over_time=over, rand_time=rand)
    if (v := _get(sec, "keyingtries")) is not None:
        kw["keyingtries"] = val.parse_uint(v, "keyingtries", maximum=2**32 - 1)
    if (v := _get(sec, "unique")) is not None:
        kw["unique"] = val.parse_enum(v, "unique", _UNIQUE)
    for key in ("mobike", "encap"):
        if (v := _get(sec, key)) is not None:
            kw[key] = val.parse_bool(v, key)
    if local:
        kw["local"] = tuple(sorted(local, key=lambda a: a.round))
    if remote:
        kw["remote"] = tuple(sorted(remote, key=lambda a: a.round))
    return ConnectionConfig(
        name=sec.name,
        children=tuple(children),
        file=sec.file,
        line=sec.line,
        extra=tuple(extra),
        **kw,  # type: ignore[arg-type]
    )


def _time_or(sec: Section, key: str, default: float) -> float:
    v = _get(sec, key)
    return default if v is None else val.parse_time(v, key)


def _auth(sec: Section, conn_where: str, *, remote: bool) -> AuthConfig:
    where = f"{conn_where} section '{sec.name}'"
    passthrough = _REMOTE_PASSTHROUGH if remote else _LOCAL_PASSTHROUGH
    extra: list[tuple[str, str]] = []
    lines = [(key, kv.file, kv.line) for key, kv in sec.keys.items()]
    lines += [(f"{sub.name}.", sub.file, sub.line) for sub in sec.sections.values()]
    for key, kv in sec.keys.items():
        if key in passthrough:
            extra.append((key, kv.value))
        elif key not in _AUTH_KEYS:
            raise _unknown_key(sec, key, where)
    for sub in sec.sections.values():
        is_cert = sub.name.startswith("cert") or (remote and sub.name.startswith("cacert"))
        if not is_cert:
            raise ConfigError(sub.file, sub.line, f"unknown section '{sub.name}' in {where}")
        for key in sub.keys:
            if key not in _CERT_KEYS:
                raise _unknown_key(sub, key, f"{where} section '{sub.name}'")
        _no_sections(sub, f"{where} section '{sub.name}'")
        extra.extend(_flatten(sub, f"{sub.name}."))
    auth, method = AuthClass.PUBKEY, "pubkey"
    if (v := _get(sec, "auth")) is not None:
        method = v.value.strip()
        auth = _auth_class(v, method.lower())
    ident: str | None = None
    if (v := _get(sec, "id")) is not None:
        ident = v.value.strip()
        if remote and ident == "%any":
            ident = None
    rnd = 0
    if (v := _get(sec, "round")) is not None:
        rnd = val.parse_uint(v, "round", maximum=2**32 - 1)
    return AuthConfig(auth, ident, sec.name, method, rnd, tuple(extra), sec.file, sec.line,
                      tuple(lines))


def _auth_class(v: Value, method: str) -> AuthClass:
    if method == "psk":
        return AuthClass.PSK
    if method == "eap" or method.startswith("eap-"):
        return AuthClass.EAP
    base = method.replace("/", "-").split("-", 1)[0]
    if base in ("pubkey", "rsa", "ecdsa", "ed25519", "ed448", "bliss"):
        return AuthClass.PUBKEY
    if base == "xauth":
        raise val.error(v, "auth: xauth is IKEv1 only (MOBIKE needs IKEv2)")
    raise val.error(v, f"auth: unknown method '{method}' (expected psk, pubkey or eap)")


def _child(sec: Section, conn: str) -> ChildConfig:
    where = f"child '{sec.name}' of connection '{conn}'"
    _no_sections(sec, where)
    extra: list[tuple[str, str]] = []
    for key, kv in sec.keys.items():
        if key in _CHILD_PASSTHROUGH:
            extra.append((key, kv.value))
        elif key not in _CHILD_KEYS:
            raise _unknown_key(sec, key, where)
    kw: dict[str, object] = {}
    for key in ("local_ts", "remote_ts"):
        if (v := _get(sec, key)) is not None:
            specs = tuple(val.parse_ts(v, key, item) for item in val.split_list(v))
            kw[key] = specs or (TrafficSelectorSpec(None),)
    kw["esp_proposals"] = _proposals(_get(sec, "esp_proposals"), sec, ProtocolId.ESP)
    if (v := _get(sec, "mode")) is not None:
        mode = v.value.strip().lower()
        if mode in _OTHER_MODES:
            raise val.error(v, f"mode: '{mode}' is not supported (tunnel or transport)")
        if mode not in _MODES:
            raise val.error(v, f"mode: unknown value '{v.value}' (expected tunnel or transport)")
        kw["mode"] = mode
    if (v := _get(sec, "start_action")) is not None:
        kw["start_action"] = val.parse_enum(v, "start_action", _START)
    if (v := _get(sec, "dpd_action")) is not None:
        kw["dpd_action"] = val.parse_enum(v, "dpd_action", _DPD)
    if (v := _get(sec, "close_action")) is not None:
        kw["close_action"] = val.parse_enum(v, "close_action", _CLOSE)
    rekey = _time_or(sec, "rekey_time", 3600.0)
    life_v = _get(sec, "life_time")
    life = rekey * 1.1 if life_v is None else val.parse_time(life_v, "life_time")
    if life_v is not None and life and rekey > life:
        raise val.error(life_v, f"life_time ({life:g}s) is shorter than rekey_time ({rekey:g}s)")
    rand = _time_or(sec, "rand_time", max(life - rekey, 0.0))
    kw.update(rekey_time=rekey, life_time=life, rand_time=rand)
    for rekey_key, life_key, parse in (
        ("rekey_bytes", "life_bytes", val.parse_bytes),
        ("rekey_packets", "life_packets", val.parse_uint),
    ):
        rv, lv = _get(sec, rekey_key), _get(sec, life_key)
        rekey_n = 0 if rv is None else parse(rv, rekey_key)
        life_n = rekey_n * 11 // 10 if lv is None else parse(lv, life_key)
        if lv is not None and life_n and rekey_n > life_n:
            raise val.error(lv, f"{life_key} ({life_n}) is smaller than {rekey_key} ({rekey_n})")
        kw[rekey_key], kw[life_key] = rekey_n, life_n
    if (v := _get(sec, "replay_window")) is not None:
        kw["replay_window"] = val.parse_uint(v, "replay_window", maximum=2**32 - 1)
    return ChildConfig(name=sec.name, file=sec.file, line=sec.line, extra=tuple(extra), **kw)  # type: ignore[arg-type]


# -- secrets, pools, authorities, mobike -------------------------------------------------


def _secrets(sec: Section | None) -> list[SharedSecret]:
    if sec is None:
        return []
    _no_keys(sec, "secrets")
    out: list[SharedSecret] = []
    for sub in sec.sections.values():
        kind = next((k for k, _ in _SECRET_TYPES if sub.name.startswith(k)), None)
        if kind is None:
            raise ConfigError(sub.file, sub.line, f"unknown secret type '{sub.name}'")
        allowed = dict(_SECRET_TYPES)[kind]
        where = f"secret '{sub.name}'"
        _no_sections(sub, where)
        ids: list[str] = []
        for key, kv in sub.keys.items():
            if kind in _ID_SECRETS and key.startswith("id"):
                if kv.value.strip():
                    ids.append(kv.value.strip())
            elif key not in allowed:
                raise _unknown_key(sub, key, where)
        if kind != "ike":
            continue  # only IKE pre-shared keys are modelled; the rest is validated only
        v = _get(sub, "secret")
        if v is None:
            raise ConfigError(sub.file, sub.line, f"{where} has no 'secret'")
        out.append(SharedSecret(sub.name, tuple(ids), val.parse_secret(v), sub.file, sub.line))
    return out


def _pools(sec: Section | None) -> list[PoolConfig]:
    if sec is None:
        return []
    _no_keys(sec, "pools")
    out: list[PoolConfig] = []
    for sub in sec.sections.values():
        pool = _pool(sub)
        for other in out:
            if (
                pool.first.version == other.first.version
                and int(pool.first) <= int(other.last)
                and int(other.first) <= int(pool.last)
            ):
                v = sub.keys["addrs"]
                raise val.error(v, f"pool '{pool.name}' overlaps pool '{other.name}'")
        out.append(pool)
    return out


def _pool(sec: Section) -> PoolConfig:
    where = f"pool '{sec.name}'"
    _no_sections(sec, where)
    attrs: list[tuple[str, str]] = []
    for key, kv in sec.keys.items():
        if key == "addrs":
            continue
        if key in _POOL_ADDR_ATTRS:
            for item in val.split_list(kv):
                val.parse_address(kv, key, item)
        elif key in _POOL_NET_ATTRS:
            for item in val.split_list(kv):
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise val.error(kv, f"{key}: '{item}' is not a subnet") from None
        elif not (key.isdigit() and key.isascii() and int(key) < 32768):
            raise _unknown_key(sec, key, where)
        attrs.append((key, kv.value))
    v = _get(sec, "addrs")
    if v is None:
        raise ConfigError(sec.file, sec.line, f"{where} has no 'addrs'")
    first, last = _pool_range(v)
    return PoolConfig(sec.name, first, last, sec.file, sec.line, tuple(attrs))


def _pool_range(v: Value) -> tuple[val.Address, val.Address]:
    """Leases as strongSwan's mem_pool hands them out."""
    text = v.value.strip()
    if "-" in text:
        a_text, _, b_text = text.partition("-")
        a = val.parse_address(v, "addrs", a_text.strip())
        b = val.parse_address(v, "addrs", b_text.strip())
        if a.version != b.version or int(a) > int(b):
            raise val.error(v, f"addrs: '{text}' is not a range from low to high")
        if int(b) - int(a) >= 1 << _POOL_LIMIT_BITS:
            b = type(a)(int(a) + (1 << _POOL_LIMIT_BITS) - 1)
        return a, b
    base_text, slash, bits_text = text.partition("/")
    base = val.parse_address(v, "addrs", base_text.strip())
    width = base.max_prefixlen
    if slash:
        if not bits_text.strip().isdigit() or int(bits_text) > width:
            raise val.error(v, f"addrs: '{text}' is not a subnet or a range")
        prefix = int(bits_text)
    else:
        prefix = width
    host_bits = min(width - prefix, _POOL_LIMIT_BITS)
    size = 1 << host_bits
    network = int(base) & ~(size - 1)
    cls = type(base)
    if size <= 2:
        return base, cls(network + size - 1)
    # The network address is skipped when the pool starts there; the last (broadcast)
    # address of the block is never handed out.
    first = int(base) if int(base) != network else network + 1
    return cls(first), cls(network + size - 2)


def _check_authorities(sec: Section) -> None:
    _no_keys(sec, "authorities")
    for sub in sec.sections.values():
        where = f"authority '{sub.name}'"
        _no_sections(sub, where)
        for key in sub.keys:
            if key not in _AUTHORITY_KEYS:
                raise _unknown_key(sub, key, where)


def _mobike(sec: Section | None) -> MobikeConfig:
    if sec is None:
        return MobikeConfig()
    return MobikeConfig(policy=mobike_policy(sec))


# -- whole-config checks ------------------------------------------------------------


def _cross_check(
    connections: list[ConnectionConfig],
    pools: list[PoolConfig],
    secrets: list[SharedSecret],
    tree: Section | None,
) -> None:
    if tree is None:
        return
    pool_names = {p.name for p in pools}
    for conn in connections:
        sec = tree.sections[conn.name]
        for name in conn.pools:
            if name not in pool_names:
                v = sec.keys["pools"]
                raise val.error(v, f"pools: pool '{name}' is not defined in pools {{ }}")
        if not any(val.is_single_peer(a) for a in conn.remote_addrs):
            for child in conn.children:
                if child.start_action.starts:
                    cv = sec.sections["children"].sections[child.name].keys["start_action"]
                    raise val.error(
                        cv,
                        f"start_action: connection '{conn.name}' cannot initiate: "
                        "remote_addrs has no single peer address or host name",
                    )
        if not secrets:
            for side, rounds in (("local", conn.local), ("remote", conn.remote)):
                for auth in rounds:
                    if auth.auth == AuthClass.PSK and auth.name in sec.sections:
                        av = sec.sections[auth.name].keys["auth"]
                        raise val.error(
                            av, f"auth: {side} psk authentication but no ike secret is defined"
                        )

