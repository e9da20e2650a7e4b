"""The shipped example configs under swanctl/ load and mean what their comments say."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

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
    policy = config.mobike.policy
    assert (policy.probe_interval, policy.probe_misses, policy.hold_down) == (0.2, 2, 30.0)
    assert policy.exclude_interfaces == ("docker*",)
    assert [(r.name, r.interface, r.cost) for r in policy.prefer] == [
        ("wired", "eth*", 0), ("lte", "wwan*", 100)]


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


def test_run_reads_the_same_examples() -> None:
    from mobike_vici.config.attach import load_attach

    client = load_attach(str(EXAMPLES / "client.conf"))
    assert client.connections == {"home": ("home-net",)}
    assert client.policy == load_config(str(EXAMPLES / "client.conf")).mobike.policy
    gateway = load_attach(str(EXAMPLES / "gateway.conf"))
    assert "rw-psk" in gateway.connections
    assert [str(n) for n in gateway.policy.allowed_peer_prefixes] == [
        "198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]


@pytest.mark.slow
def test_certificate_gateway_example_with_its_pki_commands(tmp_path: Path) -> None:
    """The `pki` commands in the example's comment, run verbatim, give credentials the
    native daemon loads for that file."""
    import shutil
    import subprocess

    from mobike_vici.core.credentials import credentials_of
    from mobike_vici.daemon.credentials import load_native

    if shutil.which("pki") is None:
        pytest.skip("NOT RUN, missing prerequisite: the pki tool (Debian package strongswan-pki)")
    text = (EXAMPLES / "gateway-cert.conf").read_text()
    commands = [line.strip()[1:].strip() for line in text.splitlines()
                if line.startswith("#   ")]
    assert len(commands) == 7, commands
    for command in commands:
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True,
                       timeout=60)
    shutil.copy(EXAMPLES / "gateway-cert.conf", tmp_path / "swanctl.conf")
    config = load_native(str(tmp_path / "swanctl.conf"))
    creds = credentials_of(config)
    local = creds.local["rw-cert"]
    assert local.cert is not None and "gw.example.org" in local.cert.subject.rfc4514_string()
    assert [c.subject.rfc4514_string() for c in creds.remote["rw-cert"].cacerts] == [
        "CN=Example Root CA,O=Example,C=CH"]
    assert config.connection("rw-cert").remote[0].id == "*@example.org"
