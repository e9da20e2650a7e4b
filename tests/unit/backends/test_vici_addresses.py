"""The peer addresses in charon's VICI messages: list-conns remote_addrs, MOBIKE path checks."""

from __future__ import annotations

import ipaddress

from mobike_vici.backends.vici.addresses import configured_addresses, path_checked

ip = ipaddress.ip_address


def _log(msg: str, **extra: str) -> dict[str, str]:
    return {"group": "IKE", "level": "1", "thread": "16", "ikesa-name": "home",
            "ikesa-uniqueid": "1", "msg": msg, **extra}


def test_only_literal_remote_addrs_are_addresses() -> None:
    body = {"remote_addrs": ["192.0.2.2", "2001:db8:ff::2", "%any", "gw.example.org",
                             "10.0.0.0/8", "192.0.2.10-192.0.2.20", " 198.51.100.7 "]}
    assert configured_addresses(body) == [ip("192.0.2.2"), ip("2001:db8:ff::2"),
                                          ip("198.51.100.7")]
    assert configured_addresses({"remote_addrs": "192.0.2.2"}) == [ip("192.0.2.2")]
    assert configured_addresses({}) == []


def test_a_mobike_path_check_names_a_peer_address_charon_knows() -> None:
    # As charon 5.9.8 logs it (ike_mobike.c, level 1), for an address the peer announced.
    checked = path_checked(_log("checking path 2001:db8:1::2[4500] - 2001:db8:ff::2[4500]"))
    assert checked is not None
    assert (checked.conn, checked.unique_id) == ("home", 1)
    assert checked.path.local.addr == ip("2001:db8:1::2")
    assert (checked.path.remote.addr, checked.path.remote.port) == (ip("2001:db8:ff::2"), 4500)
    v4 = path_checked(_log("checking path 10.2.0.2[4500] - 192.0.2.2[4500]"))
    assert v4 is not None and v4.path.remote.addr == ip("192.0.2.2")


def test_other_and_malformed_log_lines_are_none() -> None:
    assert path_checked(_log("sending packet: from 10.1.0.2[4500] to 192.0.2.2[4500]")) is None
    assert path_checked(_log("checking path 10.2.0.2[4500] - nonsense[4500]")) is None
    assert path_checked(_log("checking path 10.2.0.2[4500] - 192.0.2.2[99999]")) is None
    assert path_checked(_log("checking path 10.2.0.2 - 192.0.2.2")) is None
    no_sa = _log("checking path 10.2.0.2[4500] - 192.0.2.2[4500]")
    del no_sa["ikesa-uniqueid"]
    assert path_checked(no_sa) is None
    assert path_checked(_log("checking path 10.2.0.2[4500] - 192.0.2.2[4500]",
                             **{"ikesa-uniqueid": "x"})) is None
    assert path_checked({"msg": 5}) is None
