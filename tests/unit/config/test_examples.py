"""The shipped example configs under swanctl/ load and mean what their comments say."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mobike_vici.config import load_config
from mobike_vici.config.model import AuthClass, StartAction

EXAMPLES = Path(__file__).resolve().parents[3] / "swanctl"


def test_client_example() -> None:
    config = load_config(str(EXAMPLES / "client.conf"))
    home = config.connection("home")
    assert home.version == 2
    assert home.remote_addrs == ("192.0.2.2",)
    assert home.vips == (ipaddress.ip_address("0.0.0.0"),)
    assert [a.auth for a in home.local + home.remote] == [AuthClass.PSK, AuthClass.PSK]
    (child,) = home.children
    assert child.start_action is StartAction.START
    assert child.life_time == child.rekey_time * 1.1
    (secret,) = config.secrets
    assert set(secret.ids) == {home.local[0].id, home.remote[0].id}
    assert config.mobike.raw == {}


def test_gateway_example_with_reference_include_and_pool() -> None:
    config = load_config(str(EXAMPLES / "gateway.conf"))
    assert [c.name for c in config.connections] == ["rw-psk"]
    rw = config.connection("rw-psk")
    # inherited from rw-base through the section reference
    assert (rw.version, rw.local_addrs, rw.dpd_delay) == (2, ("192.0.2.2",), 30.0)
    assert rw.remote_addrs == ("%any",)
    assert rw.remote[0].id is None
    (pool,) = config.pools
    assert rw.pools == (pool.name,)
    assert (str(pool.first), str(pool.last)) == ("10.10.8.1", "10.10.8.254")
    (secret,) = config.secrets
    assert Path(secret.file).parent.name == "gateway.d"  # came in through the include
