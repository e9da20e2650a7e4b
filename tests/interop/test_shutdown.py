"""Our daemon stopped (SIGTERM) while a request of its own is unanswered: charon still
gets its DELETE.

Our daemon rekeys the CHILD_SA on a short rekey_time; charon takes the request but its
answers are lost (its host drops its CREATE_CHILD_SA responses). On SIGTERM the DELETE
waits behind that request only briefly (window size 1, RFC 7296 §2.3), then goes with
the next message ID, which charon expects, well within the daemon's shutdown grace:
charon deletes the IKE_SA at once instead of keeping it until its own liveness checks
give up. Its answer to the DELETE (an INFORMATIONAL) passes, so the stop is clean.
"""

from __future__ import annotations

import signal

import pytest

from mobike_vici.lab.native import named

from .support import CHANGE_TIMEOUT, Interop, charon_ike_sas, count_log, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon]

DROP_TABLE = "mvtest_answers"
CREATE_CHILD_SA = 36
REKEY_REQUEST_IN = r"parsed CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\)"
DELETE_IN = r"received DELETE for IKE_SA"


def _drop_charons_create_child_answers(interop: Interop) -> None:
    """charon's host drops its CREATE_CHILD_SA responses (UDP from 500, or from 4500
    after the zero non-ESP marker: exchange type 36 with the response flag)."""
    script = f"""
table inet {DROP_TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        udp sport 500 @th,208,8 {CREATE_CHILD_SA} @th,216,8 & 0x20 == 0x20 drop
        udp sport 4500 @th,64,32 0 @th,240,8 {CREATE_CHILD_SA} @th,248,8 & 0x20 == 0x20 drop
    }}
}}
"""
    interop.topo.host_b.run("nft", "-f", "-", input_text=script)


def test_stop_with_an_unanswered_rekey_still_deletes_the_ike_sa(interop: Interop) -> None:
    tunnel = interop.establish(*interop.sides(
        native_initiates=True,
        native={"child_rekey_time": "4s", "child_rand_time": "0s"}))
    _drop_charons_create_child_answers(interop)
    wait_until(lambda: count_log(tunnel.charon, REKEY_REQUEST_IN) >= 1,
               CHANGE_TIMEOUT, "our CHILD_SA rekey to reach charon")
    # charon answered (lost); our rekey is outstanding and its first resend 4 s away.
    assert tunnel.charon_sa(tunnel.ike_spi) is not None
    tunnel.daemon.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: count_log(tunnel.charon, DELETE_IN) >= 1, CHANGE_TIMEOUT,
               "charon to receive our DELETE")
    wait_until(lambda: not charon_ike_sas(tunnel.charon), CHANGE_TIMEOUT,
               "charon to drop the IKE_SA")
    assert tunnel.daemon.proc.wait(timeout=CHANGE_TIMEOUT) == 0  # it stops by itself
    tunnel.daemon.events.poll()
    gone = tunnel.daemon.events.find(named("ike_sa_deleted", ike_spi=tunnel.ike_spi))
    assert gone is not None and gone["reason"] == "deleted_locally"
    assert tunnel.daemon.events.find(named("shutdown_incomplete")) is None
