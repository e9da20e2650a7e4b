"""LinkSwitch: a link in a namespace goes down and up by one netlink request of ours."""

from __future__ import annotations

import errno
import time

import pytest

from mobike_vici.lab.link_switch import LinkSwitch
from mobike_vici.lab.netns import Lab, Netns
from mobike_vici.lab.topology import mobile

pytestmark = pytest.mark.netns


def _flags(ns: Netns, ifname: str) -> str:
    out = ns.ip("-o", "link", "show", ifname).stdout
    return out.split("<", 1)[1].split(">", 1)[0]


def test_a_link_goes_down_and_up_and_the_stamp_precedes_the_change(lab: Lab) -> None:
    topo = mobile(lab)
    with LinkSwitch(topo.mob.name) as links:
        before = time.time()
        stamp = links.set("m0", False)
        assert before <= stamp <= time.time()
        assert "UP" not in _flags(topo.mob, "m0").split(",")
        assert not topo.mob.ping(topo.gw4, source="10.1.0.2", wait=1)
        links.set("m0", True)
        assert "UP" in _flags(topo.mob, "m0").split(",")
        assert "UP" in _flags(topo.mob, "m1").split(",")  # only the one named


def test_an_unknown_link_is_the_kernel_s_error(lab: Lab) -> None:
    topo = mobile(lab)
    with LinkSwitch(topo.mob.name) as links, pytest.raises(OSError) as raised:
        links.set("nosuch0", False)
    assert raised.value.errno == errno.ENODEV
