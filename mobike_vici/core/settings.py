"""Tunables of the native core, with charon 5.9.8's defaults (strongswan.conf(5))."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.mobike import MobikePolicy

# The DoS limits an operator sets in ``mobike { }``: one set of defaults, the policy's.
_POLICY = MobikePolicy()


@dataclass(frozen=True, slots=True)
class RetransmitSettings:
    """charon.retransmit_*: resend after timeout * base**n, give up after ``tries`` resends."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def wait(self, retransmitted: int) -> float:
        """Seconds to wait after the (``retransmitted``)th resend before the next step."""
        return self.timeout * self.base**retransmitted

    def give_up_after(self) -> float:
        """Seconds from the first send until a request is abandoned (165.06 by default)."""
        return sum(self.wait(n) for n in range(self.tries + 1))


@dataclass(frozen=True, slots=True)
class EngineSettings:
    retransmit: RetransmitSettings = field(default_factory=RetransmitSettings)
    half_open_timeout: float = 30.0
    """charon.half_open_timeout: a responder SA that never authenticates is dropped."""
    half_open_limit: int = _POLICY.half_open_limit
    """charon.init_limit_half_open: bound on half-open responder SAs; an IKE_SA_INIT
    beyond it is dropped, even with a valid COOKIE (cookies come long before)."""
    cookie_threshold: int = _POLICY.cookie_threshold
    """charon.cookie_threshold: from this many half-open SAs on, every IKE_SA_INIT must
    carry a valid COOKIE before any DH work is done for it (0: always)."""
    cookie_calmdown: float = 10.0
    """Cookies stay demanded this many seconds after the threshold was last reached, so
    a flood does not switch them off and on (charon: COOKIE_CALMDOWN_DELAY)."""
    block_threshold: int = _POLICY.block_threshold
    """charon.block_threshold: half-open SAs one source address may hold; its further
    IKE_SA_INIT requests are dropped (checked after the COOKIE, so a spoofer cannot
    lock a real address out; 0: no cap)."""
    dh_budget: float = float(_POLICY.dh_budget)
    """Milliseconds of DH work per second the responder spends on new IKE_SAs (priced
    per group, ikev2.crypto.DH_COST_MS; a tenth of a core by default; burst: one
    second's worth). An IKE_SA_INIT beyond it is dropped (the initiator retransmits),
    so a flood of requests with valid COOKIEs cannot take the event loop from the
    data plane and from reading. 0: no budget."""
    dh_reserve: float = 100.0
    """Milliseconds below zero the budget may go for a source that holds no half-open
    SA: new peers still get in while sources already holding some use it all up."""
    max_ike_sas_per_peer: int = _POLICY.max_ike_sas_per_peer
    """IKE_SAs one authenticated peer (identity at one address) may hold; IKE_AUTH beyond
    it fails (AUTHENTICATION_FAILED). Rekeys and INITIAL_CONTACT replacements are not
    counted. Generous for a host, a hard stop for a credential used to fill memory."""
    max_child_sas_per_peer: int = _POLICY.max_child_sas_per_peer
    """CHILD_SAs over all IKE_SAs of one authenticated peer; a new one beyond it is refused
    with NO_ADDITIONAL_SAS (rekeys are not counted)."""
    cookie_secret_lifetime: float = 120.0
    """The COOKIE secret rotates this often; the previous one stays valid."""
    keepalive_interval: float = 20.0
    """charon.keep_alive: NAT-T keepalives when we are behind a NAT and idle."""
    nonce_size: int = 32
    max_events: int = 10000
    """Bound on queued events; the oldest are dropped beyond it."""
    probe_timeout: float = 0.3
    """MOBIKE: a probe unanswered this long is reported failed (ProbeResult ok=False)."""
    move_timeout: float = 10.0
    """MOBIKE: an UPDATE_SA_ADDRESSES unanswered this long fails (MoveFailed timeout)."""
    move_retransmit: float = 1.0
    """MOBIKE: resend interval of an unanswered UPDATE_SA_ADDRESSES."""
    rebind_resend: float = 0.2
    """MOBIKE: the first resend of the update on the same path after a NAT rebinding (the
    path answered the check that showed the new mapping a moment before); then
    move_retransmit."""
    overdue_after: float = 0.1
    """MOBIKE: a request unanswered this long on its own path is sent there again by the
    next probe of that path (the peer answers in milliseconds: it or its answer is lost)."""
    eager_resend: float = 0.25
    """Resend interval of an IKE_SA_INIT to a peer known to be restarting (it deleted
    the IKE_SA, so its daemon is coming back), for ``eager_window``; then charon's
    retransmission schedule (the window's last send counts as its first resend). The
    peer answers a resent IKE_SA_INIT like the first, so a short interval costs it
    nothing but a small datagram (an ICMP error while its port is closed), and the
    tunnel is back within a quarter second of the peer's daemon."""
    eager_window: float = 20.0
    fragment_size: int = _POLICY.fragment_size
    """charon.fragment_size: the largest IP datagram an IKE message of ours may make
    where RFC 7383 fragmentation was negotiated; larger ones (never IKE_SA_INIT) go as
    fragments. 0: 576 bytes on IPv4, 1280 on IPv6."""

    delete_wait: float = 0.5
    """How long a DELETE of the IKE_SA (``Engine.delete_ike``) waits behind a request of
    ours still unanswered, resent at once (a peer that lost its answer sends it again
    from its cache), before it goes anyway with the next message ID: a peer that took
    that request expects that ID, and the DELETE reaches it while we shut down."""
    dead_after: float = 0.0
    """An established IKE_SA whose requests the peer has answered on no path for this
    long is destroyed (reason ``dead_after``), long before the retransmission bound
    (165 s) would: MOBIKE has tried every path by then. 0 (charon's way, the core's
    default): only that bound. The daemon passes ``mobike { dead_after }``."""
    state_check_after: float = 0.0
    """An established IKE_SA we initiated whose requests the peer has answered on no
    path for this long asks the peer's IKE port with a new IKE_SA_INIT whether it is
    up: a peer that answers it but not the IKE_SA lost it (a restart without DELETE),
    and the IKE_SA goes (reason ``peer_lost_state``) long before ``dead_after``. A peer
    that answers nothing keeps it until then. 0 (the core's default): no such check."""

    def fragment_limit(self, ip_version: int) -> int:
        """The IP datagram size for ``ip_version`` (the 0 default resolved)."""
        if self.fragment_size:
            return self.fragment_size
        return 576 if ip_version == 4 else 1280
