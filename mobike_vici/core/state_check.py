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
resent on its path at once (``LAST_COPIES`` copies). If the peer still says nothing to
the IKE_SA within ``LOST_RTTS`` times the IKE_SA_INIT's round trip (at least
``LOST_FLOOR``), it lost the IKE_SA (reason ``peer_lost_state``). A peer that answers
nothing at all, or that answers the IKE_SA too (an outage that ended), keeps it, until
``dead_after`` as before. One check per silence; the peer keeps a half-open SA until
its own timeout. Both bounds count from the same request (``arm``), so ``dead_after``
lives here too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..ikev2.constants import ExchangeType
from ..ikev2.message import Header
from ..types import Endpoint, Path
from .context import Context
from .exchanges.ike_init import ZERO_SPI, IkeInitTask
from .ike_sa import IkeSa, IkeState
from .mobike_paths import update_in_flight
from .settings import EngineSettings

LOST_FLOOR = 1.0
"""Seconds the IKE_SA's resent request gets at least after the peer answered the check:
a peer busy with the request answers it late (charon runs the updown script while it
installs a CHILD_SA), and a live IKE_SA ended for that costs more than this wait."""
LOST_RTTS = 4.0
"""... or this many round trips of the check's IKE_SA_INIT, whichever is longer."""
LAST_COPIES = 3
"""Copies of the IKE_SA's request sent then (the peer answers each from its cache): on
a lossy path one lost copy or answer must not cost a live IKE_SA."""

SendAll = Callable[[Sequence[bytes], Path, IkeSa, float], None]
Kick = Callable[[IkeSa, float], None]
Register = Callable[[IkeSa], None]


class StateCheck:
    """The engine's checks, and its ``dead_after`` bound: it calls ``arm`` when a silence
    starts, ``verdict`` from the SA's timer, ``answered`` for a check's response and
    ``dropped`` when it destroys an SA."""

    def __init__(self, ctx: Context, settings: EngineSettings, sas: dict[bytes, IkeSa],
                 register: Register, kick: Kick, send_all: SendAll) -> None:
        self._ctx = ctx
        self._settings = settings
        self._sas = sas
        self._register = register
        self._kick = kick
        self._send_all = send_all

    def arm(self, sa: IkeSa, now: float) -> None:
        """A request of ours starts counting the peer's silence at ``now``."""
        dead_after = self._settings.dead_after
        sa.dead_at = now + dead_after if dead_after > 0 else None
        self.forget(sa.state_check)
        sa.lost_at = None
        after = self._settings.state_check_after
        sa.state_check_at = now + after if after > 0 else None

    def verdict(self, sa: IkeSa, now: float) -> str | None:
        """Why the silent ``sa`` is dead now (None: not yet); starts the check when due."""
        if not sa.silent_since_asked():
            return None
        if sa.dead_at is not None and now >= sa.dead_at:
            return "dead_after"
        if sa.lost_at is not None and now >= sa.lost_at:
            return "peer_lost_state"
        if (sa.state_check is None and sa.state_check_at is not None
                and now >= sa.state_check_at):
            self._start(sa, now)
        return None

    def dropped(self, sa: IkeSa) -> bool:
        """``sa`` is being destroyed: True when it is a check (dropped quietly here)."""
        if sa.check_of is not None:
            self.forget(sa)
            return True
        self.forget(sa.state_check)
        return False

    def answered(self, check: IkeSa, header: Header, now: float) -> None:
        """A response to the check: any answer to its IKE_SA_INIT will do."""
        if header.exchange != ExchangeType.IKE_SA_INIT or header.message_id != 0:
            return
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
        for _ in range(LAST_COPIES):
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
        if self._sas.get(check.our_spi) is check:
            del self._sas[check.our_spi]
            self._ctx.index.remove(check)
            self._ctx.release_ike_spi(check.our_spi)

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
