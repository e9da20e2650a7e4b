"""`run --load`: the swanctl.conf tree sent verbatim, and only our own names unloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.backends.vici.errors import CommandFailed
from mobike_vici.backends.vici.tree import (
    PartialLoad,
    conn_messages,
    cred_messages,
    load_tree,
    pool_messages,
    shared_messages,
)
from mobike_vici.config.parser import parse_file, parse_string

CONF = """
connections {
    gw {
        remote_addrs = 192.0.2.2, gw.example
        proposals = chacha20poly1305-prfsha256-curve448
        future_option = 7
        local-1 { auth = pubkey
            certs = me.pem }
        remote-1 { auth = pubkey
            id = "CN=gw" }
        children { net { esp_proposals = aes256ctr-aesxcbc, camellia256-sha256
            remote_ts = 10.0.0.0/8, 192.0.2.0/24[udp/53] } }
    }
}
secrets {
    ike-a { id-1 = a@x
        id-2 = b@x
        secret = 0x6162 }
    eap-u { id = user
        secret = "pw d" }
    private-k { file = k.pem
        secret = passphrase }
}
pools { p { addrs = 10.3.0.0/24
    dns = 10.3.0.1, 10.3.0.2 } }
"""


def test_messages_are_the_file_verbatim(tmp_path: Path) -> None:
    (tmp_path / "x509").mkdir()
    (tmp_path / "x509" / "me.pem").write_bytes(b"CERT")
    root = parse_string(CONF, str(tmp_path / "swanctl.conf"))
    [(name, msg)] = conn_messages(root, str(tmp_path))
    body = msg["gw"]
    assert name == "gw"
    assert body["remote_addrs"] == ["192.0.2.2", "gw.example"]
    assert body["proposals"] == ["chacha20poly1305-prfsha256-curve448"]
    assert body["future_option"] == "7"
    assert body["local-1"] == {"auth": "pubkey", "certs": [b"CERT"]}
    assert body["children"]["net"]["esp_proposals"] == ["aes256ctr-aesxcbc",
                                                        "camellia256-sha256"]
    assert body["children"]["net"]["remote_ts"] == ["10.0.0.0/8", "192.0.2.0/24[udp/53]"]
    shared = dict(shared_messages(root))
    assert shared["ike-a"] == {"id": "ike-a", "type": "IKE", "data": b"ab",
                               "owners": ["a@x", "b@x"]}
    assert shared["eap-u"]["data"] == b"pw d"
    assert "private-k" not in shared  # a key's passphrase, not a shared secret
    assert pool_messages(root) == [("p", {"p": {"addrs": "10.3.0.0/24",
                                                "dns": ["10.3.0.1", "10.3.0.2"]}})]


def test_credentials_come_from_the_directories_beside_the_file(tmp_path: Path) -> None:
    for sub, name in (("x509ca", "ca.pem"), ("x509", "me.pem"), ("private", "me.key")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_bytes(sub.encode())
    creds = {(Path(p).name, cmd, m.get("flag"), m["type"]) for p, cmd, m in
             cred_messages(str(tmp_path))}
    assert creds == {("ca.pem", "load-cert", "CA", "X509"),
                     ("me.pem", "load-cert", "NONE", "X509"),
                     ("me.key", "load-key", None, "any")}


class Recorder:
    def __init__(self, missing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.missing = missing

    async def call(self, command: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((command, message))
        if command.startswith("unload") and message and \
                next(iter(message.values())) in self.missing:
            raise CommandFailed("not found")
        return {"success": "yes"}


def test_only_what_we_loaded_before_is_unloaded(tmp_path: Path) -> None:
    first = tmp_path / "a.conf"
    first.write_text("connections { one { } two { } }\nsecrets { ike-s { secret = x } }\n")
    second = tmp_path / "b.conf"
    second.write_text("connections { two { } }\n")
    client = Recorder()
    loaded = asyncio.run(load_tree(client, parse_file(str(first)), str(tmp_path)))
    assert (loaded.conns, loaded.shared) == (["one", "two"], ["ike-s"])
    assert not any(c.startswith("get-") or c.startswith("unload") for c, _ in client.calls)
    client.calls.clear()
    again = asyncio.run(load_tree(client, parse_file(str(second)), str(tmp_path), loaded))
    assert [c for c in client.calls if c[0].startswith("unload")] == [
        ("unload-conn", {"name": "one"}), ("unload-shared", {"id": "ike-s"})]
    assert again.unloaded == ["one", "ike-s"]


def test_a_name_charon_no_longer_has_is_skipped(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("connections { one { } }\n")
    empty = tmp_path / "b.conf"
    empty.write_text("")
    client = Recorder(missing=frozenset({"one"}))
    loaded = asyncio.run(load_tree(client, parse_file(str(conf)), str(tmp_path)))
    again = asyncio.run(load_tree(client, parse_file(str(empty)), str(tmp_path), loaded))
    assert again.unloaded == []


class Refusing(Recorder):
    async def call(self, command: str, message: dict[str, Any] | None = None) -> dict[str, Any]:
        if command == "load-conn" and message is not None and "bad" in message:
            raise CommandFailed("invalid proposal")
        return await super().call(command, message)


def test_a_refusal_part_way_still_knows_what_it_loaded(tmp_path: Path) -> None:
    first = tmp_path / "a.conf"
    first.write_text("connections { old { } }\n")
    second = tmp_path / "b.conf"
    second.write_text("connections { good { } bad { } }\n")
    third = tmp_path / "c.conf"
    third.write_text("connections { other { } }\n")
    client = Refusing()
    loaded = asyncio.run(load_tree(client, parse_file(str(first)), str(tmp_path)))
    with pytest.raises(PartialLoad) as exc:
        asyncio.run(load_tree(client, parse_file(str(second)), str(tmp_path), loaded))
    assert "load-conn connection 'bad': invalid proposal" in str(exc.value)
    assert exc.value.loaded.conns == ["old", "good"]
    client.calls.clear()
    asyncio.run(load_tree(client, parse_file(str(third)), str(tmp_path), exc.value.loaded))
    assert [c for c in client.calls if c[0] == "unload-conn"] == [
        ("unload-conn", {"name": "old"}), ("unload-conn", {"name": "good"})]
