"""Network-namespace lab: topologies, real charon and native-daemon runners (root only)."""

from __future__ import annotations

from mobike_vici.lab.netns import Lab, LabError, Netns, is_root, lab, list_namespaces, sweep_stale
from mobike_vici.lab.topology import Mobile, TwoHosts, Uplink, mobile, two_hosts

__all__ = [
    "Lab",
    "LabError",
    "Mobile",
    "Netns",
    "TwoHosts",
    "Uplink",
    "is_root",
    "lab",
    "list_namespaces",
    "mobile",
    "sweep_stale",
    "two_hosts",
]
