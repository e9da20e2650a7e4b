"""Did the peer lose charon's IKE_SA? The controller's decision, pure (a restart of the
peer's daemon without a DELETE, RFC 7296 §2.4).

charon ignores an unauthenticated INVALID_IKE_SPI, and a restarted charon answers ESP
and IKE for SPIs it no longer knows with nothing: the IKE_SA would stay until charon's
DPD exhausts its retransmissions. The controller sees charon's outstanding request (the
IKE relay's ledger). Once one went unanswered for ``CHECK_AFTER`` it asks the peer's IKE
port with a throwaway IKE_SA_INIT of its own (``Step.PROBE``); an answer shows the
peer's daemon up and reachable, so charon's request is resent (``Step.RESEND``); if the
peer still does not answer it within ``LOST_RTTS`` round trips of the probe (at least
``LOST_FLOOR``), it lost the IKE_SA (``Step.LOST``). The bounds are the native core's
(``core.state_check``). At most one probe per IKE_SA per ``MIN_INTERVAL``: each costs
the peer one half-open SA until its own timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..core.state_check import LOST_FLOOR, LOST_RTTS

CHECK_AFTER = 1.0
"""Seconds charon's request goes unanswered before the peer's IKE port is asked."""
PROBE_WAIT = 3.0
"""Seconds a probe waits for its answer; then the next is sent (an unanswered probe
left the peer nothing to hold)."""
MIN_INTERVAL = 10.0
"""Seconds between two answered probes for one IKE_SA (one half-open SA at the peer each)."""


class Step(Enum):
    PROBE = "probe"  # send the throwaway IKE_SA_INIT
    RESEND = "resend"  # the probe was answered: charon's request once more, same path
    LOST = "lost"  # the peer answered the probe but not the IKE_SA: it lost it


@dataclass(slots=True)
class _Silence:
    message_id: int | None = None
    since: float = 0.0
    probe_sent: float | None = None
    lost_at: float | None = None
    last_probe: float | None = None


class LostStateCheck:
    """Per IKE_SA (charon's ``<spi_i>_<spi_r>``): ``observe`` on every tick with the
    message ID of charon's unanswered request (None: none), ``answered`` when the
    probe's answer came, ``forget`` when the IKE_SA is gone."""

    def __init__(self, check_after: float = CHECK_AFTER, min_interval: float = MIN_INTERVAL,
                 probe_wait: float = PROBE_WAIT) -> None:
        self.check_after = check_after
        self.min_interval = min_interval
        self.probe_wait = probe_wait
        self._sas: dict[str, _Silence] = {}

    def observe(self, ike_spi: str, pending: int | None, now: float) -> Step | None:
        st = self._sas.setdefault(ike_spi, _Silence())
        if pending is None:
            st.message_id, st.probe_sent, st.lost_at = None, None, None
            return None
        if st.message_id != pending:  # a new request: a new silence
            st.message_id, st.since, st.probe_sent, st.lost_at = pending, now, None, None
        if st.lost_at is not None:
            if now < st.lost_at:
                return None
            st.lost_at = None
            return Step.LOST
        if st.probe_sent is not None:
            if now - st.probe_sent < self.probe_wait:
                return None
            # Unanswered: the peer is down or unreachable and kept no half-open SA of
            # it; ask again now (a restarting peer answers once it is up).
            st.probe_sent = st.last_probe = None
        if now - st.since < self.check_after:
            return None
        if st.last_probe is not None and now - st.last_probe < self.min_interval:
            return None
        st.probe_sent = st.last_probe = now
        return Step.PROBE

    def answered(self, ike_spi: str, now: float) -> Step | None:
        """The probe's answer came at ``now``: RESEND when charon's request is still
        unanswered, and the verdict falls ``LOST_RTTS`` round trips later."""
        st = self._sas.get(ike_spi)
        if st is None or st.probe_sent is None or st.message_id is None:
            return None
        rtt = max(0.0, now - st.probe_sent)
        st.probe_sent = None
        st.lost_at = now + max(LOST_FLOOR, LOST_RTTS * rtt)
        return Step.RESEND

    def forget(self, ike_spi: str) -> None:
        self._sas.pop(ike_spi, None)

    def retain(self, ike_spis: set[str]) -> None:
        for spi in [s for s in self._sas if s not in ike_spis]:
            del self._sas[spi]
