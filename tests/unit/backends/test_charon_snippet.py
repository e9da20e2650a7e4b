"""The shipped strongswan.d snippet's routing marks (charon's side of the steering)."""

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
