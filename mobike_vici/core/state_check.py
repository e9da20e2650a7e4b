"""Did a silent peer lose our IKE_SA? (a restart without DELETE, RFC 7296 §2.4).

A peer whose daemon stops while an exchange of its own is in flight may destroy the
IKE_SA without a DELETE; once back, it drops our requests for the SPI it no longer
knows, and many peers (charon) send no INVALID_IKE_SPI (§2.21.4). Then only
``dead_after`` or the retransmission bound would end the IKE_SA.

So an IKE_SA we initiated whose requests the peer has answered on no path for
``state_check_after`` asks the peer's IKE port, on the IKE_SA's path, with the
IKE_SA_INIT of a half-open IKE_SA of its own (never reported, never authenticated,
dropped at the first answer). Any answer (a response, COOKIE, INVALID_KE_PAYLOAD)
shows the peer's daemon up and reachable there; the IKE_SA's outstanding request is
resent on its path at once. If the peer still says nothing to the IKE_SA within
``LOST_RTTS`` times the IKE_SA_INIT's round trip (at least ``LOST_FLOOR``), it lost
the IKE_SA (reason ``peer_lost_state``). A peer that answers nothing at all, or that
answers the IKE_SA too (an outage that ended), keeps it, until ``dead_after`` as
before. One check per silence; the peer keeps a half-open SA until its own timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..types import Endpoint, Path
from .context import Context
from .exchanges.ike_init import ZERO_SPI, IkeInitTask
from .ike_sa import IkeSa, IkeState
from .mobike_paths import update_in_flight
from .settings import EngineSettings

LOST_FLOOR = 0.2
"""Seconds the IKE_SA's resent request gets at least after the peer answered the check."""
LOST_RTTS = 4.0
"""... or this many round trips of the check's IKE_SA_INIT, whichever is longer."""

SendAll = Callable[[Sequence[bytes], Path, IkeSa, float], None]
Kick = Callable[[IkeSa, float], None]
Table = Callable[[IkeSa], None]


class StateCheck:
    """The engine's checks; it calls ``arm`` when a silence starts, ``lost`` from the
    SA's timer, ``answered`` for a check's response and ``forget`` to drop a check."""

    def __init__(self, ctx: Context, settings: EngineSettings, register: Table,
                 unregister: Table, kick: Kick, send_all: SendAll) -> None:
        self._ctx = ctx
        self._settings = settings
        self._register = register
        self._unregister = unregister
        self._kick = kick
        self._send_all = send_all

    def arm(self, sa: IkeSa, now: float) -> None:
        """A request of ours starts counting the peer's silence at ``now``."""
        self.forget(sa.state_check)
        sa.lost_at = None
        after = self._settings.state_check_after
        sa.state_check_at = now + after if after > 0 else None

    def lost(self, sa: IkeSa, now: float) -> bool:
        """True when the peer lost ``sa``; starts the check when it is due."""
        if not sa.silent_since_asked():
            return False
        if sa.lost_at is not None and now >= sa.lost_at:
            return True
        if (sa.state_check is None and sa.state_check_at is not None
                and now >= sa.state_check_at):
            self._start(sa, now)
        return False

    def answered(self, check: IkeSa, path: Path, now: float) -> None:
        """The peer answered the check's IKE_SA_INIT (on ``path``)."""
        sa = check.check_of
        rtt = max(0.0, now - check.last_sent)
        self.forget(check)
        if sa is None or sa.state == IkeState.DELETED or not sa.silent_since_asked():
            return
        self._ctx.touch(sa)
        pending = sa.pending
        if pending is None or update_in_flight(pending.task) is not None:
            # An update in flight is not resent here (the peer would move to this
            # path): no verdict without that resend, ask again later.
            self.arm(sa, now)
            return
        # Its last chance on the path where the peer's daemon just answered: an outage
        # that ended is told from a lost IKE_SA by this answer.
        sa.lost_at = now + max(LOST_FLOOR, LOST_RTTS * rtt)
        self._send_all(pending.datagrams, sa.path, sa, now)

    def forget(self, check: IkeSa | None) -> None:
        """Drop a check quietly (its IKE_SA_INIT was only a question)."""
        if check is None:
            return
        sa = check.check_of
        if sa is not None and sa.state_check is check:
            sa.state_check = None
        check.check_of = None
        check.pending = None
        check.tasks.clear()
        check.set_state(IkeState.DELETED)
        self._unregister(check)

    def _start(self, sa: IkeSa, now: float) -> None:
        conn = sa.conn
        path = Path(Endpoint(sa.path.local.addr, conn.local_port),
                    Endpoint(sa.path.remote.addr, conn.remote_port))
        check = IkeSa(conn=conn, initiator=True, spi_i=self._ctx.new_ike_spi(),
                      spi_r=ZERO_SPI, path=path, created=now, last_received=now,
                      last_sent=now)
        check.check_of = sa
        sa.state_check = check
        sa.state_check_at = None  # one check per silence
        self._register(check)
        # Resent like the IKE_SA_INIT to a restarting peer: it answers once it is up.
        check.tasks.append(IkeInitTask(now + self._settings.eager_window))
        self._kick(check, now)
