"""Return routability for charon as responder, decided beside it (RFC 4555 §3.5, §5.2).

charon moves its IKE_SA and CHILD_SAs on an authenticated UPDATE_SA_ADDRESSES at
once and never checks that the peer can receive at the new address, so a peer
that lies about its address can aim the gateway's traffic at a victim (§5.2). The
controller sees each move (``ike-update``) and asks charon for exchanges that
only a peer reachable there can answer, in two steps:

1. an IKE rekey initiated by charon: its request carries charon's nonce and key
   exchange value, sent only to the new address; a response makes charon report
   the rekey with charon as its initiator (``SaRekeyed.by_charon``). A response
   alone proves little: the peer knows the message ID and may answer blind.
2. one more IKE rekey, of the IKE_SA step 1 made, by either side: every message
   on that IKE_SA is protected with keys derived from step 1's nonce and key
   exchange value, which only a peer that received the request can compute.

No such pair within ``timeout`` of the move: the IKE_SA is terminated, which
bounds the flood.

What does not count, because the request may have reached the peer elsewhere
(§3.7, last paragraph): a rekey the peer initiated (charon only answered it, to
wherever the request came from), and a rekey charon already had in flight when
the peer moved (sent to the old address first, then retransmitted to the new
one). The adapter reports how many of charon's IKE rekeys were active when it
asked for ours (``armed(stale=...)``); that many completions are skipped. A move
during a check voids what was in flight and asks again, but keeps the first
deadline: moving on cannot stretch the flood.

Pure: time comes in as ``now``. Bounds: one check per IKE_SA, ``MAX_VERIFIED``
addresses remembered per IKE_SA, ``MAX_ATTEMPTS`` rekey requests per check.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..config.mobike import RoutabilityMode
from ..return_routability import check_needed
from ..types import Endpoint, IPAddress

MAX_VERIFIED = 16  # peer addresses remembered as verified, per IKE_SA
MAX_ATTEMPTS = 6  # rekey requests per check: two steps, and a peer's rekey or a move voids one


@dataclass(frozen=True, kw_only=True, slots=True)
class Action:
    """Base class of what the adapter must do or report."""

    ike_spi: str
    """The IKE_SA's current ``<spi_i>_<spi_r>``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Rekey(Action):
    """Ask charon to rekey this IKE_SA: report ``armed`` just before the request (its
    answer may come back before the command's), ``rekey_failed`` when refused."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Verified(Action):
    """The peer answered at ``remote``: ``return_routability_ok``."""

    remote: Endpoint
    """The address that answered."""
    duration: float
    """Seconds from the move to the answer."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed(Action):
    """No answer in time: ``return_routability_failed``, then terminate the IKE_SA."""

    remote: Endpoint
    """The address that never answered."""
    reason: str
    """``timeout`` or ``rekey_refused`` (charon would not start a rekey)."""
    duration: float
    """Seconds from the move to the verdict."""


@dataclass(slots=True)
class _Check:
    remote: Endpoint
    started: float
    deadline: float
    armed: bool = False  # our rekey request is in charon's queue; completions count
    skip: int = 0  # completions of rekeys that were in flight before the move
    keyed: bool = False  # step 1 done: the IKE_SA's keys came from a request sent here
    attempts: int = 0


@dataclass(slots=True)
class _Sa:
    verified: OrderedDict[IPAddress, None] = field(default_factory=OrderedDict)
    check: _Check | None = None


class GatewayRoutability:
    """Every responder IKE_SA of one charon; see the module docstring."""

    def __init__(self, mode: RoutabilityMode, timeout: float) -> None:
        self.mode = mode
        self.timeout = timeout
        self._sas: dict[str, _Sa] = {}
        self._checking: set[str] = set()  # SAs with a check: timers never scan all SAs

    def set_policy(self, mode: RoutabilityMode, timeout: float) -> None:
        """A reload: checks under way keep their deadline."""
        self.mode, self.timeout = mode, timeout

    def pending(self, ike_spi: str) -> Endpoint | None:
        sa = self._sas.get(ike_spi)
        return sa.check.remote if sa is not None and sa.check is not None else None

    def seen(self, ike_spi: str, remote: Endpoint) -> None:
        """A responder IKE_SA: the address it was set up from answered IKE_SA_INIT."""
        if ike_spi not in self._sas:
            sa = self._sas[ike_spi] = _Sa()
            _remember(sa, remote.addr)

    def moved(self, ike_spi: str, remote: Endpoint, *, nat: bool, now: float) -> list[Action]:
        """charon moved the IKE_SA to ``remote`` on the peer's word."""
        sa = self._sas.setdefault(ike_spi, _Sa())
        check = sa.check
        if check is not None:
            # What is in flight may have gone to the old address: ask again, same deadline.
            check.remote, check.armed, check.skip, check.keyed = remote, False, 0, False
            return self._request(ike_spi, check)
        if not check_needed(self.mode, nat=nat, verified=remote.addr in sa.verified):
            return []
        sa.check = _Check(remote, now, now + self.timeout)
        self._checking.add(ike_spi)
        return self._request(ike_spi, sa.check)

    def armed(self, ike_spi: str, *, stale: int) -> None:
        """Our rekey is being queued; ``stale`` IKE rekeys of charon's were in flight."""
        sa = self._sas.get(ike_spi)
        if sa is not None and sa.check is not None:
            sa.check.armed, sa.check.skip = True, max(0, stale)

    def rekey_failed(self, ike_spi: str, now: float) -> list[Action]:
        """charon refused the rekey request (e.g. the SA was rekeyed meanwhile): retry."""
        sa = self._sas.get(ike_spi)
        if sa is None or sa.check is None:
            return []
        sa.check.armed = False
        return self._request(ike_spi, sa.check, now=now, reason="rekey_refused")

    def rekeyed(self, old_spi: str, new_spi: str, *, by_charon: bool, now: float
                ) -> list[Action]:
        """An IKE rekey completed: the check follows the new SPIs; charon's may verify."""
        sa = self._sas.pop(old_spi, None)
        if sa is None:
            return []
        self._sas[new_spi] = sa
        check = sa.check
        if check is None:
            return []
        self._checking.discard(old_spi)
        self._checking.add(new_spi)
        if check.keyed:
            # Step 2: whoever rekeyed it, they held keys only the request to here gave.
            sa.check = None
            self._checking.discard(new_spi)
            _remember(sa, check.remote.addr)
            return [Verified(ike_spi=new_spi, remote=check.remote,
                             duration=now - check.started)]
        if not check.armed:
            # Completed before our request was queued: proves nothing, and that request
            # named the old SPIs (charon may refuse it): ask again under the new ones.
            return self._request(new_spi, check)
        if not by_charon:
            # The peer's rekey proves nothing and may have displaced ours: ask again.
            check.armed = False
            return self._request(new_spi, check)
        if check.skip > 0:
            check.skip -= 1
            return []
        # Step 1 answered; step 2 on the IKE_SA it made (nothing older is in flight there).
        check.keyed, check.armed = True, False
        return self._request(new_spi, check)

    def removed(self, ike_spi: str) -> None:
        self._sas.pop(ike_spi, None)
        self._checking.discard(ike_spi)

    def get_timer(self) -> float | None:
        deadlines = [check.deadline for spi in self._checking
                     if (check := self._sas[spi].check) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        for spi in sorted(self._checking):
            check = self._sas[spi].check
            if check is not None and now >= check.deadline:
                self._sas[spi].check = None
                self._checking.discard(spi)
                out.append(Failed(ike_spi=spi, remote=check.remote, reason="timeout",
                                  duration=now - check.started))
        return out

    def _request(self, ike_spi: str, check: _Check, *, now: float | None = None,
                 reason: str = "timeout") -> list[Action]:
        if check.attempts >= MAX_ATTEMPTS:
            if now is None:
                return []  # no more requests; the deadline decides
            self._sas[ike_spi].check = None
            self._checking.discard(ike_spi)
            return [Failed(ike_spi=ike_spi, remote=check.remote, reason=reason,
                           duration=now - check.started)]
        check.attempts += 1
        return [Rekey(ike_spi=ike_spi)]


def _remember(sa: _Sa, addr: IPAddress) -> None:
    sa.verified.pop(addr, None)
    sa.verified[addr] = None
    while len(sa.verified) > MAX_VERIFIED:
        sa.verified.popitem(last=False)
