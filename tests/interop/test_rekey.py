"""IKE_SA and CHILD_SA rekeying with charon, started by either side, in either IKE role.

After a rekey both sides must show the NEW SPIs and only those, and the IKE_SA
stays ESTABLISHED. charon rekeys on `swanctl --rekey`; we rekey on a short
rekey_time (rand_time 0, so the moment is known).
"""

from __future__ import annotations

import pytest

from .configs import CHILD, CONN
from .support import CHANGE_TIMEOUT, Interop, Tunnel, charon_children, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon]

ROLES = pytest.mark.parametrize("native_initiates", [True, False],
                                ids=["native-initiator", "charon-initiator"])
PFS = pytest.mark.parametrize("pfs", [False, True], ids=["no-pfs", "pfs"])
OUR_REKEY = "8s"


def _esp(pfs: bool) -> str:
    """The CHILD_SA proposal; with PFS a rekey carries its own x25519 exchange."""
    return "aes128-sha256-x25519" if pfs else "aes128-sha256"


def _check_ike_rekeyed(tunnel: Tunnel) -> None:
    old = tunnel.ike_spi
    rekeyed = tunnel.daemon.wait_event(
        lambda ev: ev.get("event") == "ike_sa_rekeyed" and ev.get("ike_spi") == old,
        CHANGE_TIMEOUT)
    new = str(rekeyed["new_ike_spi"])
    assert new != old
    assert new.split("_")[0] != old.split("_")[0] and new.split("_")[1] != old.split("_")[1]
    child = tunnel.child_event
    # The CHILD_SA moves to the new IKE_SA unchanged; the old IKE_SA is gone everywhere.
    wait_until(lambda: tunnel.both_show_only(new, child["spi_in"], child["spi_out"]),
               CHANGE_TIMEOUT, f"both sides to show only IKE_SA {new}")
    assert tunnel.charon_sa(old) is None
    assert tunnel.daemon.alive()


def _check_child_rekeyed(tunnel: Tunnel, pfs: bool) -> None:
    old = tunnel.child_event
    new = tunnel.daemon.wait_event(
        lambda ev: ev.get("event") == "child_sa_installed"
        and ev.get("rekey_of") == old["unique_id"], CHANGE_TIMEOUT)
    assert new["ike_spi"] == tunnel.ike_spi
    assert new["unique_id"] != old["unique_id"]
    assert new["spi_in"] != old["spi_in"] and new["spi_out"] != old["spi_out"]
    rekeyed = tunnel.daemon.wait_event(
        lambda ev: ev.get("event") == "child_sa_rekeyed"
        and ev.get("old_unique_id") == old["unique_id"], CHANGE_TIMEOUT)
    assert rekeyed["new_spi_in"] == new["spi_in"]
    wait_until(lambda: tunnel.both_show_only(tunnel.ike_spi, new["spi_in"], new["spi_out"]),
               CHANGE_TIMEOUT, f"both sides to show only CHILD_SA {new['spi_in']}")
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    (child,) = charon_children(sa)
    # With PFS the rekey ran its own key exchange (a KE payload each way).
    assert child.get("dh-group") == ("CURVE_25519" if pfs else None), child
    assert tunnel.daemon.alive()


@ROLES
def test_charon_rekeys_ike_sa(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates))
    tunnel.charon.swanctl("--rekey", "--ike", CONN)
    _check_ike_rekeyed(tunnel)


@PFS
@ROLES
def test_charon_rekeys_child_sa(interop: Interop, native_initiates: bool, pfs: bool) -> None:
    tunnel = interop.establish(*interop.sides(native_initiates=native_initiates,
                                              esp_proposals=_esp(pfs)))
    tunnel.charon.swanctl("--rekey", "--child", CHILD)
    _check_child_rekeyed(tunnel, pfs)


@ROLES
def test_we_rekey_ike_sa(interop: Interop, native_initiates: bool) -> None:
    tunnel = interop.establish(*interop.sides(
        native_initiates=native_initiates,
        native={"ike_rekey_time": OUR_REKEY, "ike_rand_time": "0s"}))
    _check_ike_rekeyed(tunnel)


@PFS
@ROLES
def test_we_rekey_child_sa(interop: Interop, native_initiates: bool, pfs: bool) -> None:
    tunnel = interop.establish(*interop.sides(
        native_initiates=native_initiates, esp_proposals=_esp(pfs),
        native={"child_rekey_time": OUR_REKEY, "child_rand_time": "0s"}))
    _check_child_rekeyed(tunnel, pfs)
