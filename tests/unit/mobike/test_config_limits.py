"""The native daemon's denial-of-service limits in mobike { }: parsed, checked, and
the defaults are the engine's."""

from __future__ import annotations

import pytest

from mobike_vici.config.mobike import MobikePolicy, from_section
from mobike_vici.config.model import ConfigError
from mobike_vici.config.parser import parse_string
from mobike_vici.core.settings import EngineSettings


def _policy(body: str) -> MobikePolicy:
    """``body`` as the mobike { } section of f.conf, its first key on line 2."""
    return from_section(parse_string(f"mobike {{\n{body}}}\n", "f.conf").sections["mobike"])


def test_limits_parse() -> None:
    policy = _policy("cookie_threshold = 0\nblock_threshold = 3\ninit_limit_half_open = 50\n"
                     "max_ike_sas_per_peer = 4\nmax_child_sas_per_peer = 16\n"
                     "drop_log_interval = 250ms\n")
    assert (policy.cookie_threshold, policy.block_threshold, policy.half_open_limit,
            policy.max_ike_sas_per_peer, policy.max_child_sas_per_peer,
            policy.drop_log_interval) == (0, 3, 50, 4, 16, 0.25)


@pytest.mark.parametrize(("key", "value"), [
    ("init_limit_half_open", "0"), ("max_ike_sas_per_peer", "-1"),
    ("cookie_threshold", "ten"), ("drop_log_interval", "0"),
])
def test_bad_limits_are_located(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _policy(f"# a comment\n{key} = {value}\n")
    assert "f.conf:3" in str(exc.value) and key in str(exc.value)


def test_defaults_are_the_engines() -> None:
    policy, engine = MobikePolicy(), EngineSettings()
    assert (policy.cookie_threshold, policy.block_threshold, policy.half_open_limit,
            policy.dh_budget, policy.max_ike_sas_per_peer, policy.max_child_sas_per_peer) == (
        engine.cookie_threshold, engine.block_threshold, engine.half_open_limit,
        engine.dh_budget, engine.max_ike_sas_per_peer, engine.max_child_sas_per_peer)


def test_the_daemon_hands_them_to_the_engine() -> None:
    from mobike_vici.config import load_string
    from mobike_vici.daemon.native_run import engine_settings

    config = load_string("mobike {\n  block_threshold = 2\n  init_limit_half_open = 40\n"
                         "  init_dh_budget = 0\n}\n")
    settings = engine_settings(config)
    assert (settings.block_threshold, settings.half_open_limit, settings.dh_budget) == (
        2, 40, 0.0)
    assert settings.cookie_threshold == EngineSettings().cookie_threshold
