"""The mobike { } keys of the data path check after a move: verify_timeout, repair_timeout."""

from __future__ import annotations

import pytest

from mobike_vici.config.mobike import MobikePolicy, from_section
from mobike_vici.config.model import ConfigError
from mobike_vici.config.parser import parse_string


def policy(body: str) -> MobikePolicy:
    return from_section(parse_string(f"mobike {{\n{body}\n}}\n", "m.conf").sections["mobike"])


def test_defaults() -> None:
    p = policy("")
    assert (p.verify_timeout, p.repair_timeout) == (0.2, 2.0)


def test_both_keys_parsed_and_zero_turns_the_check_off() -> None:
    p = policy("verify_timeout = 350ms\nrepair_timeout = 3s")
    assert (p.verify_timeout, p.repair_timeout) == (pytest.approx(0.35), 3.0)
    assert policy("verify_timeout = 0").verify_timeout == 0.0


@pytest.mark.parametrize(("body", "words"), [
    ("verify_timeout = soon", "is not a time"),
    ("repair_timeout = 0", "out of range"),
    ("verify_timeout = 25h", "out of range"),
])
def test_bad_values_name_the_key_and_line(body: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy(body)
    assert info.value.line == 2
    assert words in str(info.value)
    assert body.split()[0] in str(info.value)
