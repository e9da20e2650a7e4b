"""IKE_SA_INIT requests received: DoS admission (as charon's receiver), then the
half-open responder SA.

:func:`receive_init` takes every IKE_SA_INIT request: a retransmission gets the
cached answer, a new one is screened, decoded and answered, and the engine is told
what to send, drop and register.
The engine hands each new request to :meth:`Admission.screen_request`, which screens
it before decoding it (:meth:`Admission.screen`), and tells
it when a half-open SA is created (:meth:`admit`) or leaves that state
(:meth:`forget`). Order as charon: first the COOKIE (stateless, no DH: a flood
from spoofed sources ends here), then the per-source and global caps, then the
DH budget.

Bounds: half-open SAs by ``half_open_limit``; the per-source counts have no
entry at zero, so they are bounded by it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ikev2.constants import ExchangeType, NotifyType
from ..ikev2.crypto import DH_COST_MS
from ..ikev2.message import DecodeError, Header, Message, decode_message
from ..ikev2.payloads import Encrypted, EncryptedFragment, Notify
from ..types import Endpoint, IPAddress, Path
from .context import Context, candidates
from .cookies import CookieJar
from .exchanges.base import DropPacket
from .exchanges.ike_init import ZERO_SPI, init_scan, respond_init, stateless_response
from .exchanges.redirect import InitPolicy, init_redirect
from .ike_sa import CachedResponse, IkeSa
from .protection import encode
from .settings import EngineSettings


@dataclass(frozen=True, slots=True)
class DemandCookie:
    """Answer statelessly with this COOKIE; the peer has to retry with it."""
    token: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """Drop the request silently."""
    reason: str


@dataclass(frozen=True, slots=True)
class InitOutcome:
    """What the engine does with one IKE_SA_INIT request."""
    response: bytes | None = None
    """Send this back on the request's path."""
    sa: IkeSa | None = None
    """The SA the response belongs to (None: a stateless answer)."""
    new: bool = False
    """``sa`` was just created half-open: register it."""
    drop: str | None = None
    """Report the request as dropped, for this reason."""


InitKey = tuple[bytes, Endpoint]


def receive_init(ctx: Context, admission: Admission, by_init: dict[InitKey, IkeSa],
                 header: Header, data: bytes, path: Path, now: float, *,
                 redirect_policy: InitPolicy | None = None, ike_sas: int = 0) -> InitOutcome:
    """Answer an IKE_SA_INIT request; ``by_init`` (the engine's responder SAs by
    (SPIi, remote)) gets a new half-open SA. ``redirect_policy`` may send the client
    to another gateway instead (RFC 5685), given the ``ike_sas`` we hold."""
    if header.spi_r != ZERO_SPI or header.message_id != 0:
        return InitOutcome(drop="IKE_SA_INIT request with responder SPI or message ID")
    key = (header.spi_i, path.remote)
    existing = by_init.get(key)
    if existing is not None:
        if data == existing.init_request:
            return InitOutcome(existing.init_response, existing)
        return InitOutcome(drop="IKE_SA_INIT for an SA being set up")
    msg = admission.screen_request(header, data, path.remote, now)
    if isinstance(msg, DemandCookie):
        return InitOutcome(stateless_response(header, [Notify(NotifyType.COOKIE, msg.token)]))
    if isinstance(msg, Refuse):
        return InitOutcome(drop=msg.reason)
    redirected = init_redirect(ctx, redirect_policy, msg, path, ike_sas)
    if redirected is not None:
        return InitOutcome(stateless_response(header, redirected))
    try:
        reply = respond_init(ctx, msg, path, candidates(ctx.config, path), now)
    except DropPacket as exc:
        return InitOutcome(drop=exc.reason)
    if reply.sa is None:
        # Stateless answer (INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN).
        return InitOutcome(stateless_response(header, reply.payloads),
                           drop=None if reply.reason == "invalid_ke_payload" else reply.reason)
    sa = reply.sa
    assert sa.suite is not None
    sa.init_request = data
    response = encode(ctx, sa, ExchangeType.IKE_SA_INIT, 0, True, reply.payloads)
    sa.init_response = response
    sa.cached = CachedResponse(0, data, response, path)
    sa.peer_next_id = 1
    sa.last_received = now
    admission.admit(key, sa, sa.suite.dh)
    by_init[key] = sa
    sa.init_key = key
    return InitOutcome(response, sa, new=True)


class Admission:
    def __init__(self, settings: EngineSettings, cookies: CookieJar) -> None:
        self._settings = settings
        self._cookies = cookies
        self._half_open: dict[tuple[bytes, Endpoint], IkeSa] = {}
        """Responder SAs before IKE_AUTH, by (SPIi, remote)."""
        self._half_open_from: dict[IPAddress, int] = {}
        """Half-open SAs per source address (block_threshold)."""
        self._cookies_until: float | None = None
        """Cookies are demanded until then (cookie_calmdown after the threshold was hit)."""
        self._dh_tokens = settings.dh_budget
        """Milliseconds of DH work left (dh_budget per second; below 0 only for newcomers)."""
        self._dh_refilled: float | None = None

    def screen_request(self, header: Header, data: bytes, remote: Endpoint,
                       now: float) -> Message | DemandCookie | Refuse:
        """The IKE_SA_INIT request, decoded, when it may be answered; screened first
        from the few fields read without decoding it."""
        try:
            scan = init_scan(header, data)
        except DropPacket as exc:
            return Refuse(exc.reason)
        verdict = self.screen(header.spi_i, remote.addr, scan.nonce, scan.cookie,
                              scan.ke_group, now)
        if verdict is not None:
            return verdict
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            return Refuse(f"malformed message: {exc}")
        if any(isinstance(p, Encrypted | EncryptedFragment) for p in msg.payloads):
            return Refuse("SK payload in IKE_SA_INIT")
        return msg

    def screen(self, spi_i: bytes, source: IPAddress, nonce: bytes, cookie: bytes | None,
               ke_group: int | None, now: float) -> DemandCookie | Refuse | None:
        """Whether an IKE_SA_INIT request from ``source`` may go on to be decoded
        (None), must first return a COOKIE, or is dropped."""
        settings = self._settings
        if self._cookie_required(now):
            jar = self._cookies
            if cookie is None or not jar.verify(cookie, nonce, source, spi_i, now):
                return DemandCookie(jar.make(nonce, source, spi_i, now))
        if settings.block_threshold > 0 and self._half_open_from.get(source, 0) >= \
                settings.block_threshold:
            return Refuse("too many half-open IKE_SAs from this address")
        if len(self._half_open) >= settings.half_open_limit:
            return Refuse("too many half-open IKE_SAs")
        newcomer = source not in self._half_open_from
        if ke_group is not None and not self._dh_affordable(ke_group, newcomer, now):
            return Refuse("DH budget spent")
        return None

    def admit(self, key: tuple[bytes, Endpoint], sa: IkeSa, dh_group: int) -> None:
        """``sa`` was created half-open, doing one DH of ``dh_group`` (only then: an
        INVALID_KE_PAYLOAD answer costs none)."""
        if self._settings.dh_budget > 0:
            self._dh_tokens -= _dh_cost(dh_group)
        self._half_open[key] = sa
        addr = key[1].addr
        self._half_open_from[addr] = self._half_open_from.get(addr, 0) + 1

    def forget(self, sa: IkeSa) -> None:
        """``sa`` is no longer half-open (authenticated or gone)."""
        if sa.init_key is not None and self._half_open.get(sa.init_key) is sa:
            del self._half_open[sa.init_key]
            addr = sa.init_key[1].addr
            left = self._half_open_from.get(addr, 1) - 1
            if left > 0:
                self._half_open_from[addr] = left
            else:
                self._half_open_from.pop(addr, None)

    def _dh_affordable(self, group: int, newcomer: bool, now: float) -> bool:
        """Whether the DH budget has room for one responder DH of ``group``; a
        ``newcomer`` (a source holding no half-open SA) may dig into the reserve."""
        budget = self._settings.dh_budget
        if budget <= 0:
            return True
        if self._dh_refilled is not None:
            elapsed = max(0.0, now - self._dh_refilled)
            self._dh_tokens = min(budget, self._dh_tokens + elapsed * budget)
        self._dh_refilled = now
        floor = -self._settings.dh_reserve if newcomer else 0.0
        return self._dh_tokens - _dh_cost(group) >= floor

    def _cookie_required(self, now: float) -> bool:
        """charon's rule: the threshold of half-open SAs switches cookies on; they stay on
        until it has not been reached for cookie_calmdown seconds."""
        settings = self._settings
        if len(self._half_open) >= settings.cookie_threshold:
            self._cookies_until = now + settings.cookie_calmdown
            return True
        return self._cookies_until is not None and now < self._cookies_until


_DH_COST: dict[int, float] = {int(group): ms for group, ms in DH_COST_MS.items()}


def _dh_cost(group: int) -> float:
    """CPU milliseconds of one responder DH of ``group`` (1 for groups not measured)."""
    return _DH_COST.get(group, 1.0)
