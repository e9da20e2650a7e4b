"""``mobike { pool { } }``: parsed with the rest of the section, errors at FILE:LINE."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.config.errors import ConfigError
from mobike_vici.config.mobike import from_section
from mobike_vici.config.parser import parse_string
from mobike_vici.config.pool import parse_gateway


def _pool(body: str, file: str = "pool.conf"):  # type: ignore[no-untyped-def]
    root = parse_string(f"mobike {{\n  pool {{\n{body}\n  }}\n}}\n", file)
    return from_section(root.sections["mobike"]).pool


def test_gateways_with_default_and_explicit_metrics() -> None:
    pool = _pool("gateways = 192.0.2.11, 192.0.2.12@127.0.0.1:9000, 2001:db8::3@[::1]:9001\n"
                 "metrics_port = 9500\nmax_ike_sas = 40\nrate = 2.5\npoll_interval = 500ms")
    urls = [g.metrics_url for g in pool.gateways]
    assert urls == ["http://192.0.2.11:9500/metrics", "http://127.0.0.1:9000/metrics",
                    "http://[::1]:9001/metrics"]
    assert pool.max_ike_sas == 40 and pool.rate == 2.5 and pool.poll_interval == 0.5
    assert pool.gateway(ipaddress.ip_address("192.0.2.12")) is pool.gateways[1]


def test_no_pool_section_is_an_empty_pool() -> None:
    root = parse_string("mobike {\n  hold_down = 1s\n}\n")
    assert from_section(root.sections["mobike"]).pool.gateways == ()


@pytest.mark.parametrize(("body", "line", "words"), [
    ("gateways = 192.0.2.11\nmax_ike_sas = lots", 4, "pool.max_ike_sas: 'lots'"),
    ("gateways = gw.example", 3, "not an IP address"),
    ("gateways = 192.0.2.11, 192.0.2.11", 3, "listed twice"),
    ("gateways = 192.0.2.11@nowhere", 3, "not HOST:PORT"),
    ("rate = 0", 3, "pool.rate"),
    ("poll_interval = 0s", 3, "pool.poll_interval"),
    ("weight = 3", 3, "pool.weight: unknown key"),
])
def test_bad_values_name_file_and_line(body: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _pool(body)
    assert f"pool.conf:{line}:" in str(err.value)
    assert words in str(err.value)


def test_parse_gateway_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_gateway("192.0.2.1@127.0.0.1:70000")


def test_config_doc_carries_the_pool_keys_table() -> None:
    from pathlib import Path

    from mobike_vici.config import pool

    text = pool.__doc__ or ""
    begin, end = text.index(".. pool-keys-begin"), text.index(".. pool-keys-end")
    table = text[begin + len(".. pool-keys-begin"):end].strip("\n")
    listed = {line.split()[0] for line in table.splitlines()
              if line and line[0].isalpha() and line.split()[0] != "key"}
    assert listed == {f"pool.{k}" for k in pool.POOL_KEYS}
    doc = (Path(__file__).resolve().parents[3] / "docs" / "config.md").read_text()
    assert table in doc, "docs/config.md: copy the table from mobike_vici/config/pool.py"
