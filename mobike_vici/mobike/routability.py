"""COOKIE2 bookkeeping and return-routability checks of one IKE_SA (RFC 4555 §3.5, §3.7).

A COOKIE2 is unpredictable data in an INFORMATIONAL request that the peer must copy
into its response (§4.2.5: 8 to 64 octets); a matching copy proves the peer
received the request at the address it went to. A response with a different or
missing copy means the IKE_SA MUST be closed (§3.7). A request that was sent to
more than one address proves nothing about either (§3.7, last paragraph).

``Cookie2Book`` tracks outstanding cookies by IKE message ID. ``ReturnRoutability``
is the check on top: whether a new peer address needs one (the
``return_routability`` policy), the outstanding check, its verdict and its
timeout, and the addresses already verified. Randomness comes in as
``random_bytes(n)``, time as ``now``.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ..config.mobike import RoutabilityMode
from ..types import IPAddress, Path

RandomBytes = Callable[[int], bytes]

COOKIE2_LEN = 16  # RFC 4555 §4.2.5 allows 8..64 octets; 128 bits cannot be guessed
COOKIE2_MIN, COOKIE2_MAX = 8, 64
MAX_OUTSTANDING = 8  # cookies per IKE_SA; the oldest is forgotten beyond this
# Seconds a cookie stays matchable: an INFORMATIONAL exchange with retransmissions ends
# well before this; it only keeps cookies of abandoned requests from piling up.
COOKIE2_LIFETIME = 30.0
MAX_VERIFIED = 16  # peer addresses remembered as verified
CHECK_TIMEOUT = 5.0  # seconds until an unanswered return-routability check fails


class Verdict(Enum):
    MATCHED = "matched"  # the peer echoed our cookie: it got the request on that path
    MISMATCH = "mismatch"  # wrong or missing echo: the IKE_SA MUST be closed (§3.7)
    AMBIGUOUS = "ambiguous"  # echo right, but the request went to several addresses
    UNKNOWN = "unknown"  # no cookie outstanding for that message ID (expired, foreign)


@dataclass(slots=True)
class _Outstanding:
    cookie: bytes
    path: Path
    issued: float
    ambiguous: bool = False


@dataclass(frozen=True, slots=True)
class Cookie2Result:
    verdict: Verdict
    path: Path | None = None  # the path the request was sent on, when known


class Cookie2Book:
    """Outstanding COOKIE2 values by IKE message ID; bounded by ``limit``."""

    def __init__(self, random_bytes: RandomBytes, *, limit: int = MAX_OUTSTANDING,
                 lifetime: float = COOKIE2_LIFETIME, length: int = COOKIE2_LEN) -> None:
        if not COOKIE2_MIN <= length <= COOKIE2_MAX:
            raise ValueError(f"COOKIE2 length {length} is outside {COOKIE2_MIN}..{COOKIE2_MAX}")
        self._random = random_bytes
        self._limit = max(1, limit)
        self._lifetime = lifetime
        self._length = length
        self._out: OrderedDict[int, _Outstanding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._out)

    def issue(self, message_id: int, path: Path, now: float) -> bytes:
        """A fresh cookie for the request with ``message_id`` going out on ``path``."""
        self.expire(now)
        cookie = self._random(self._length)
        if len(cookie) != self._length:
            raise ValueError("random_bytes returned the wrong number of bytes")
        self._out.pop(message_id, None)
        self._out[message_id] = _Outstanding(cookie, path, now)
        while len(self._out) > self._limit:
            self._out.popitem(last=False)
        return cookie

    def resent(self, message_id: int, path: Path) -> None:
        """The request was retransmitted on ``path``; another path makes it ambiguous."""
        entry = self._out.get(message_id)
        if entry is not None and entry.path != path:
            entry.ambiguous = True

    def check(self, message_id: int, echoed: bytes | None, now: float) -> Cookie2Result:
        """Verify the response to ``message_id``; the cookie is consumed either way."""
        self.expire(now)
        entry = self._out.pop(message_id, None)
        if entry is None:
            return Cookie2Result(Verdict.UNKNOWN)
        if echoed is None or not hmac.compare_digest(echoed, entry.cookie):
            return Cookie2Result(Verdict.MISMATCH, entry.path)
        if entry.ambiguous:
            return Cookie2Result(Verdict.AMBIGUOUS, entry.path)
        return Cookie2Result(Verdict.MATCHED, entry.path)

    def forget(self, message_id: int) -> None:
        self._out.pop(message_id, None)

    def expire(self, now: float) -> None:
        for mid in [m for m, e in self._out.items() if now >= e.issued + self._lifetime]:
            del self._out[mid]

    def next_expiry(self) -> float | None:
        if not self._out:
            return None
        return min(e.issued for e in self._out.values()) + self._lifetime


class CheckState(Enum):
    IDLE = "idle"
    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CheckResult:
    path: Path
    ok: bool
    reason: str  # verified, timeout, cookie_mismatch, ambiguous, superseded
    close_sa: bool = False  # a wrong COOKIE2 echo: RFC 4555 §3.7 says close the IKE_SA


class ReturnRoutability:
    """The return-routability check of one IKE_SA (either role), one at a time.

    The caller sends an INFORMATIONAL request with the cookie from ``start`` on the
    new path and reports the response with ``on_response``; ``handle_timer`` fails a
    check that stays unanswered for ``timeout``. Bounds: one outstanding check,
    ``MAX_VERIFIED`` verified peer addresses (oldest forgotten first).
    """

    def __init__(self, random_bytes: RandomBytes, mode: RoutabilityMode, *,
                 timeout: float = CHECK_TIMEOUT) -> None:
        self.mode = mode
        self.timeout = timeout
        self.state = CheckState.IDLE
        self._book = Cookie2Book(random_bytes, limit=1, lifetime=timeout)
        self._pending: tuple[int, Path, float] | None = None  # message id, path, started
        self._verified: OrderedDict[IPAddress, None] = OrderedDict()

    @property
    def pending_path(self) -> Path | None:
        return self._pending[1] if self._pending is not None else None

    def verified(self, addr: IPAddress) -> bool:
        return addr in self._verified

    def mark_verified(self, addr: IPAddress) -> None:
        """The address answered before (e.g. the one the IKE_SA was set up with)."""
        self._verified.pop(addr, None)
        self._verified[addr] = None
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)

    def needed(self, path: Path, *, nat_detected: bool) -> bool:
        """Whether moving IPsec SAs to ``path`` must wait for a check (RFC 4555 §3.5)."""
        if self.mode == RoutabilityMode.NEVER or self.verified(path.remote.addr):
            return False
        return self.mode == RoutabilityMode.ALWAYS or nat_detected

    def start(self, message_id: int, path: Path, now: float) -> tuple[bytes, CheckResult | None]:
        """The COOKIE2 for the check request; a check still running is superseded."""
        superseded: CheckResult | None = None
        if self._pending is not None:
            old_mid, old_path, _ = self._pending
            self._book.forget(old_mid)
            superseded = CheckResult(old_path, ok=False, reason="superseded")
        cookie = self._book.issue(message_id, path, now)
        self._pending = (message_id, path, now)
        self.state = CheckState.PENDING
        return cookie, superseded

    def resent(self, message_id: int, path: Path) -> None:
        self._book.resent(message_id, path)

    def on_response(self, message_id: int, echoed: bytes | None, now: float
                    ) -> CheckResult | None:
        """The response to ``message_id``; None when it is not the check's."""
        if self._pending is None or self._pending[0] != message_id:
            return None
        _, path, _ = self._pending
        self._pending = None
        result = self._book.check(message_id, echoed, now)
        if result.verdict == Verdict.MATCHED:
            self.state = CheckState.OK
            self.mark_verified(path.remote.addr)
            return CheckResult(path, ok=True, reason="verified")
        self.state = CheckState.FAILED
        if result.verdict == Verdict.AMBIGUOUS:
            return CheckResult(path, ok=False, reason="ambiguous")
        if result.verdict == Verdict.MISMATCH:
            return CheckResult(path, ok=False, reason="cookie_mismatch", close_sa=True)
        return CheckResult(path, ok=False, reason="timeout")  # expired as it arrived

    def get_timer(self) -> float | None:
        return self._pending[2] + self.timeout if self._pending is not None else None

    def handle_timer(self, now: float) -> CheckResult | None:
        if self._pending is None or now < self._pending[2] + self.timeout:
            return None
        mid, path, _ = self._pending
        self._pending = None
        self._book.forget(mid)
        self.state = CheckState.FAILED
        return CheckResult(path, ok=False, reason="timeout")
