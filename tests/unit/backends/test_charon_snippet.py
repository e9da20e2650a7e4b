"""The shipped strongswan.d snippet: its routing marks (charon's side of the steering) and
its retransmission timing."""

from __future__ import annotations

from pathlib import Path

from mobike_vici.config.parser import parse_file
from mobike_vici.net.numbers import OUTER_FWMARK

SNIPPET = Path(__file__).resolve().parents[3] / "swanctl" / "strongswan.d" / "mobike-vici.conf"


def test_charons_ike_packets_are_marked_and_skip_its_table_220() -> None:
    plugins = parse_file(str(SNIPPET)).sections["charon"].sections["plugins"].sections
    mark = plugins["socket-default"].keys["fwmark"].value.strip()
    rule = plugins["kernel-netlink"].keys["fwmark"].value.strip()
    # 220 becomes "not fwmark MARK": a full tunnel's default routes never take a check.
    assert rule == f"!{mark}"
    # Not our probes' mark: rule 210 sends that to main, before the steering table.
    assert int(mark, 16) != OUTER_FWMARK


def _charon_key(name: str) -> float:
    return float(parse_file(str(SNIPPET)).sections["charon"].keys[name].value)


def test_charon_retransmits_within_a_second_and_gives_up_no_sooner_than_two_minutes() -> None:
    """A request in flight on a path that died silently holds charon's MOBIKE update
    until its retransmission (a DPD's probes every path): 4 s by default. Faster, but
    the IKE_SA is not given up much sooner than with charon's defaults (165 s)."""
    timeout, base = _charon_key("retransmit_timeout"), _charon_key("retransmit_base")
    tries = int(_charon_key("retransmit_tries"))
    assert timeout <= 1.0
    give_up = sum(timeout * base ** n for n in range(tries + 1))
    assert 120.0 <= give_up <= 200.0
