"""A swanctl.conf tree into charon verbatim, as ``swanctl --load-all`` sends it (``run --load``).

Nothing is judged here: every key goes to charon as written (charon is the judge of
proposals, authentication and every other option), list keys split at commas,
``certs``/``cacerts`` as the files' contents, sections as sections. Credentials
come from the swanctl directories beside the file (``x509/``, ``x509ca/``,
``private/`` ...) and from ``secrets { }``, as swanctl loads them.

Unlike swanctl, the controller unloads only what it loaded itself: names it
loaded before and the new file no longer has. Whatever else charon holds
(loaded by swanctl or another tool) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...config.parser import Section
from .errors import CommandFailed, LoadError

Message = dict[str, Any]

LIST_KEYS = frozenset({"local_addrs", "remote_addrs", "proposals", "esp_proposals",
                       "ah_proposals", "local_ts", "remote_ts", "vips", "pools", "groups"})
FILE_LIST_DIRS = {"certs": "x509", "cacerts": "x509ca"}
# Directory, VICI command, and the command's fixed keys (load_creds.c).
CERT_DIRS: tuple[tuple[str, Message], ...] = (
    ("x509", {"type": "X509", "flag": "NONE"}),
    ("x509ca", {"type": "X509", "flag": "CA"}),
    ("x509aa", {"type": "X509", "flag": "AA"}),
    ("x509ocsp", {"type": "X509", "flag": "OCSP"}),
    ("x509ac", {"type": "X509_AC", "flag": "NONE"}),
    ("x509crl", {"type": "X509_CRL", "flag": "NONE"}),
)
KEY_DIRS: tuple[tuple[str, str], ...] = (
    ("private", "any"), ("rsa", "rsa"), ("ecdsa", "ecdsa"), ("pkcs8", "any"),
)
SHARED_TYPES = ("ike", "eap", "xauth", "ntlm", "ppk")
MAX_CRED_FILE = 1 << 20  # a certificate or key file larger than this is not one


class Commands(Protocol):
    async def call(self, command: str, message: Message | None = None) -> Message: ...


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_CRED_FILE + 1)
    if len(data) > MAX_CRED_FILE:
        raise OSError(f"{path}: larger than {MAX_CRED_FILE} bytes")
    return data


def _section_body(sec: Section, swanctl_dir: str) -> Message:
    body: Message = {}
    for key, v in sec.keys.items():
        if key in LIST_KEYS:
            body[key] = _split(v.value)
        elif key in FILE_LIST_DIRS:
            body[key] = [_read(name if os.path.isabs(name)
                               else os.path.join(swanctl_dir, FILE_LIST_DIRS[key], name))
                         for name in _split(v.value)]
        else:
            body[key] = v.value
    for name, sub in sec.sections.items():
        body[name] = _section_body(sub, swanctl_dir)
    return body


def conn_messages(root: Section, swanctl_dir: str) -> list[tuple[str, Message]]:
    """(name, ``load-conn`` message) per connection; ``OSError`` for a missing cert file."""
    conns = root.sections.get("connections")
    if conns is None:
        return []
    return [(name, {name: _section_body(sec, swanctl_dir)}) for name, sec in conns.sections.items()]


def _secret_data(value: str) -> bytes:
    low = value[:2].lower()
    if low == "0x":
        return bytes.fromhex(value[2:])
    if low == "0s":
        import base64

        return base64.b64decode(value[2:])
    return value.encode()


def shared_messages(root: Section) -> list[tuple[str, Message]]:
    """(id, ``load-shared`` message) per shared secret; private key passphrases are skipped."""
    secrets = root.sections.get("secrets")
    if secrets is None:
        return []
    out: list[tuple[str, Message]] = []
    for name, sec in secrets.sections.items():
        kind = next((t for t in SHARED_TYPES if name.startswith(t)), None)
        value = sec.keys.get("secret")
        if kind is None or value is None:
            continue
        owners = [v.value for k, v in sec.keys.items() if k.startswith("id")]
        out.append((name, {"id": name, "type": kind.upper(), "data": _secret_data(value.value),
                           "owners": owners}))
    return out


def pool_messages(root: Section) -> list[tuple[str, Message]]:
    pools = root.sections.get("pools")
    if pools is None:
        return []
    out: list[tuple[str, Message]] = []
    for name, sec in pools.sections.items():
        body: Message = {k: (v.value if k == "addrs" else _split(v.value))
                         for k, v in sec.keys.items()}
        out.append((name, {name: body}))
    return out


def _files(directory: str) -> Iterator[str]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            yield path


def cred_messages(swanctl_dir: str) -> list[tuple[str, str, Message]]:
    """(file, command, message) for every certificate and key in the swanctl directories."""
    out: list[tuple[str, str, Message]] = []
    for sub, fixed in CERT_DIRS:
        for path in _files(os.path.join(swanctl_dir, sub)):
            out.append((path, "load-cert", {**fixed, "data": _read(path)}))
    for sub, kind in KEY_DIRS:
        for path in _files(os.path.join(swanctl_dir, sub)):
            out.append((path, "load-key", {"type": kind, "data": _read(path)}))
    return out


@dataclass
class Loaded:
    """What this process put into charon, so that only that is ever unloaded."""

    conns: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)


async def load_tree(client: Commands, root: Section, swanctl_dir: str,
                    previous: Loaded | None = None) -> Loaded:
    """Load ``root`` (credentials, secrets, pools, connections, in swanctl's order), then
    unload what ``previous`` loaded that ``root`` no longer has. Raises ``LoadError``
    naming the first item charon refused or a file that cannot be read."""
    done = Loaded()
    try:
        for path, command, message in cred_messages(swanctl_dir):
            await _call(client, command, message, path)
        for name, message in shared_messages(root):
            await _call(client, "load-shared", message, f"secret '{name}'")
            done.shared.append(name)
        for name, message in pool_messages(root):
            await _call(client, "load-pool", message, f"pool '{name}'")
            done.pools.append(name)
        for name, message in conn_messages(root, swanctl_dir):
            await _call(client, "load-conn", message, f"connection '{name}'")
            done.conns.append(name)
    except OSError as exc:
        raise PartialLoad(f"cannot read {exc.filename or ''}: {exc.strerror or exc}",
                          _merged(previous, done)) from exc
    except LoadError as exc:
        raise PartialLoad(str(exc), _merged(previous, done)) from exc
    if previous is not None:
        for command, key, old, new in (("unload-conn", "name", previous.conns, done.conns),
                                       ("unload-shared", "id", previous.shared, done.shared),
                                       ("unload-pool", "name", previous.pools, done.pools)):
            for name in old:
                if name in new:
                    continue
                try:  # a restarted charon no longer has it: nothing to unload
                    await client.call(command, {key: name})
                except CommandFailed:
                    continue
                done.unloaded.append(name)
    return done


class PartialLoad(LoadError):
    """charon refused an item (or a file could not be read) part way: ``loaded`` is what
    this process has in charon now (loaded before, plus what this attempt loaded), so
    that a later load still unloads only its own."""

    def __init__(self, message: str, loaded: Loaded) -> None:
        super().__init__(message)
        self.loaded = loaded


def _merged(previous: Loaded | None, done: Loaded) -> Loaded:
    prev = previous or Loaded()
    return Loaded(conns=list(dict.fromkeys(prev.conns + done.conns)),
                  shared=list(dict.fromkeys(prev.shared + done.shared)),
                  pools=list(dict.fromkeys(prev.pools + done.pools)))


async def _call(client: Commands, command: str, message: Message, what: str) -> None:
    try:
        await client.call(command, message)
    except CommandFailed as exc:
        raise LoadError(f"{command} {what}: {exc}") from exc
