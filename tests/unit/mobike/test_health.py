"""The data path health model on a fake clock, with each shape of traffic: request/reply
(a ping, fast and slow), one-way in, one-way out, bursty, idle.

Traffic is a list of packets (time, inbound); the native daemon sees it as counter
samples every 25 ms, ``mobike-vici run`` packet by packet: both feeds are tried where
the verdict must not depend on it. A path dies at ``death``: from then on nothing comes
in (the replies are what stop), while ours keeps leaving.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest

from mobike_vici.config.mobike import MobikePolicy
from mobike_vici.mobike.health import (
    BURST,
    DEAD_HOLD_CAP,
    MAX_REPAIR_RETRIES,
    REPAIR_RETRY_FLOOR,
    DataPathDead,
    DataPathRepaired,
    DataPathUnverified,
    DataPathVerified,
    Event,
    Flow,
    HealthSettings,
    MoveCheck,
    Phase,
    RepairRequested,
    Stall,
    dead_hold,
    settings_of,
)
from mobike_vici.mobike.health import Burst as ProbeBurst

from .sim import path

SAMPLE = 0.025
FLOOR, CAP = 0.1, 0.2  # stall_timeout, probe_interval defaults
NEW = path("10.2.0.2", "192.0.2.2")
OLD = path("10.1.0.2", "192.0.2.2")
SETTINGS = HealthSettings(verify_timeout=0.2, repair_timeout=2.0, active_window=2.0)
INF = float("inf")

Packets = list[tuple[float, bool]]
"""(time, inbound) of every ESP packet, in time order."""


# -- traffic shapes -------------------------------------------------------------------------


def ping(start: float, end: float, rate: float, rtt: float = 0.002,
         death: float = INF) -> Packets:
    """Request/reply: ours every 1/rate, the peer's answer an RTT later (not past death)."""
    out: Packets = []
    k = 0
    while (t := start + k / rate) < end:
        out.append((t, False))
        if t + rtt < min(death, end):
            out.append((t + rtt, True))
        k += 1
    return sorted(out)


def one_way_out(start: float, end: float, rate: float = 100.0) -> Packets:
    return [(start + k / rate, False) for k in range(int((end - start) * rate))]


def one_way_in(start: float, end: float, rate: float = 100.0, death: float = INF) -> Packets:
    return [(start + k / rate, True) for k in range(int((end - start) * rate))
            if start + k / rate < death]


def bursty(start: float, end: float, every: float = 2.0, size: int = 20,
           death: float = INF) -> Packets:
    """Request/reply bursts (size exchanges at 100 Hz) every ``every`` seconds."""
    out: Packets = []
    t = start
    while t < end:
        out += ping(t, min(t + size / 100.0, end), 100.0, death=death)
        t += every
    return sorted(out)


Feed = Callable[[Packets], list[tuple[float, int, int]]]


def per_packet(packets: Packets) -> list[tuple[float, int, int]]:
    return [(t, int(inb), int(not inb)) for t, inb in packets]


def sampled(packets: Packets) -> list[tuple[float, int, int]]:
    """Counters every SAMPLE seconds, as daemon.traffic reads them."""
    if not packets:
        return []
    out: list[tuple[float, int, int]] = []
    i, t = 0, SAMPLE * (int(packets[0][0] / SAMPLE) + 1)
    while i < len(packets):
        inb = outb = 0
        while i < len(packets) and packets[i][0] <= t:
            inb += packets[i][1]
            outb += not packets[i][1]
            i += 1
        out.append((t, inb, outb))
        t += SAMPLE
    return out


FEEDS = [pytest.param(per_packet, id="per-packet"), pytest.param(sampled, id="sampled")]


def stalls(feed: Feed, packets: Packets, srtt: float | None = 0.002,
           stall: Stall | None = None) -> list[float]:
    """When stalls started (each one is probed; a quiet peer answers the probe)."""
    s = stall or Stall(FLOOR, CAP)
    got = []
    for t, inb, outb in feed(packets):
        if s.on_traffic(inb, outb, t, srtt):
            got.append(t)
            s.on_alive()  # the probe is answered: the IKE peer lives
    return got


# -- stalls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
def test_a_slow_ping_never_stalls_while_its_replies_come(feed: Feed) -> None:
    """5 packets/s with a 20 ms RTT: a silence of 180 ms between a reply and the next
    request is the ping's pace, not a stall (it was logged every 0.6 s)."""
    assert stalls(feed, ping(0.0, 60.0, 5.0, rtt=0.02), srtt=0.02) == []


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("death", [3.0, 3.004, 3.013, 3.021])
def test_a_100hz_ping_that_dies_stalls_within_the_floor(feed: Feed, death: float) -> None:
    got = stalls(feed, ping(0.0, 5.0, 100.0, death=death))
    assert got, "never stalled"
    # Samples see the silence up to one late, and it starts at the first sample without
    # an answer: the floor and the sampling's granularity, no more.
    assert death < got[0] <= death + FLOOR + 3 * SAMPLE


@pytest.mark.parametrize("feed", FEEDS)
def test_fast_request_reply_and_bursts_never_stall_while_answered(feed: Feed) -> None:
    assert stalls(feed, ping(0.0, 30.0, 100.0)) == []
    assert stalls(feed, bursty(0.0, 30.0)) == []


@pytest.mark.parametrize("feed", FEEDS)
def test_bursts_on_a_dead_path_stall_from_the_first_unanswered_request(feed: Feed) -> None:
    packets = bursty(0.0, 6.0, death=4.0)  # the burst at 4.0 finds the path dead
    got = stalls(feed, packets)
    assert got and 4.0 < got[0] <= 4.0 + FLOOR + 3 * SAMPLE


@pytest.mark.parametrize("feed", FEEDS)
def test_one_way_in_and_idle_never_stall(feed: Feed) -> None:
    assert stalls(feed, one_way_in(0.0, 30.0)) == []
    assert stalls(feed, []) == []


@pytest.mark.parametrize("feed", FEEDS)
def test_one_way_out_with_a_slow_answer_learns_its_pace(feed: Feed) -> None:
    """Ours at 100 Hz, the peer's packet once a second (a keepalive): the first silence
    is suspect, then the flow's own pace is known and its silences are not."""
    packets = sorted(one_way_out(0.0, 30.0) + [(k + 0.5, True) for k in range(30)])
    got = stalls(feed, packets)
    assert 1 <= len(got) <= 2, got


@pytest.mark.parametrize("feed", FEEDS)
def test_a_flow_that_turns_two_way_relearns_its_pace_and_a_death_stalls_fast(
        feed: Feed) -> None:
    """Ours alone for 2 s (the peer's first packet after 2 s), then a stream from the
    peer too: the long first wait must not linger, or a death later is found late."""
    packets = sorted(one_way_out(0.0, 10.0) + one_way_in(2.0, 10.0, death=8.0))
    got = [t for t in stalls(feed, packets) if t >= 2.0]
    assert got and 8.0 < got[0] <= 8.0 + FLOOR + 3 * SAMPLE, got


@pytest.mark.parametrize("feed", FEEDS)
def test_one_way_out_alone_stalls_once_and_backs_off(feed: Feed) -> None:
    """Nothing ever comes back: each stall probe is answered, the silence needed doubles
    up to probe_interval, so the probes cost what the regular schedule does."""
    got = stalls(feed, one_way_out(0.0, 30.0))
    assert got and len(got) <= 30.0 / CAP + 1


def test_the_threshold_follows_the_rtt_and_the_backoff_and_inbound_resets_it() -> None:
    s = Stall(FLOOR, 0.4)
    assert s.threshold(0.002) == pytest.approx(FLOOR)
    assert s.threshold(0.25) == pytest.approx(1.0)  # 4 SRTT, above the cap too
    assert not s.on_traffic(0, 1, 0.0, None)  # opens the window
    assert not s.on_traffic(0, 0, 0.2, None)  # nothing more went out: not flowing
    assert s.on_traffic(0, 1, 0.2, None)
    assert not s.on_traffic(0, 1, 0.25, None)  # once per stall
    s.on_alive()
    assert s.backoff == 1 and s.threshold(None) == pytest.approx(0.2)
    s.on_traffic(0, 1, 0.3, None)
    assert s.on_traffic(0, 1, 0.5, None)
    s.on_alive()
    s.on_alive()  # no stall in between: no more doubling
    assert s.threshold(None) == pytest.approx(0.4)
    s.on_traffic(3, 1, 0.6, None)
    assert s.backoff == 0 and not s.stalled
    s.reset()
    assert s.flow.last_in == 0.6  # a new path: the flow's history stays


def test_a_burst_sends_its_probes_paced_and_is_dead_when_all_time_out() -> None:
    b = ProbeBurst.at(1.0, 0.001, 0.1)
    sent = [t for t in (1.0, 1.005, 1.02, 1.03, 1.04, 1.05) if b.due(t)]
    assert sent == [1.0, 1.02, 1.04] and b.sent == BURST
    assert not b.missed(1.1) and b.deadline() == pytest.approx(1.14)
    assert b.missed(1.15)


def test_a_burst_waits_stall_probe_timeout_for_its_last_probe_as_the_native_probe() -> None:
    # The burst decides a silent death for ``mobike-vici run``: the wait for its last
    # answer is the operator's stall_probe_timeout (50 ms), not a fixed 100 ms.
    settings = settings_of(MobikePolicy())
    b = ProbeBurst.at(1.0, 0.001, settings.burst_timeout)
    for t in (1.0, 1.02, 1.04):
        assert b.due(t)
    assert not b.missed(1.085)
    assert b.missed(1.09) and b.deadline() == pytest.approx(1.09)
    slow = ProbeBurst.at(1.0, 0.04, settings.burst_timeout)  # a long path: 3 SRTTs
    assert slow.timeout == pytest.approx(0.12)


# -- the check after a move ---------------------------------------------------------------


class Run:
    """A flow fed by samples, a move at ``moved`` (begun 5 ms before), the check polled
    as the backend does; ``answers`` says when the peer's ESP reaches us again."""

    def __init__(self, before: Packets, *, moved: float = 10.0, srtt: float = 0.001,
                 settings: HealthSettings = SETTINGS) -> None:
        self.flow = Flow()
        self.counts = [500, 500]
        for t, inb, outb in sampled([p for p in before if p[0] < moved]):
            self.flow.on_traffic(inb, outb, t)
            self.counts[0] += inb
            self.counts[1] += outb
        self.check = MoveCheck(settings)
        self.check.on_moved(NEW, OLD, started=moved - 0.005, srtt=srtt,
                            sample=self.sample(), flow=self.flow, now=moved)
        self.events: list[tuple[float, Event]] = []

    def sample(self) -> dict[int, tuple[int, int]]:
        return {1: (self.counts[0], self.counts[1])}

    def run(self, until: float, *, sending: bool = True, answers: float = INF,
            refuse: Iterable[int] = ()) -> list[tuple[float, Event]]:
        refused = set(refuse)
        while (t := self.check.get_timer()) is not None and t <= until:
            self.counts[1] += sending
            self.counts[0] += t >= answers
            self.check.observe(self.sample(), t)
            while (ev := self.check.next_event()) is not None:
                self.events.append((t, ev))
                if isinstance(ev, RepairRequested) and ev.attempt in refused:
                    self.check.on_repair_refused(t + 0.002)  # the answer, an RTT later
        return self.events

    def kinds(self) -> list[type]:
        return [type(e) for _, e in self.events]


def test_a_young_ping_whose_replies_stopped_at_the_fault_is_repaired() -> None:
    """The bug: 100 Hz ping for half a second, the replies stop at 9.8 (the fault), the
    move at 10.0, our pings still leave. Expected back, so repaired, not one_way."""
    r = Run(ping(9.3, 10.0, 100.0, death=9.8))
    assert r.check.expects_inbound
    r.run(10.5, answers=10.3)
    assert r.kinds() == [RepairRequested, DataPathRepaired]
    (t_req, _), (_, ok) = r.events
    assert t_req == pytest.approx(10.2, abs=0.03)  # the bound: verify_timeout
    assert isinstance(ok, DataPathRepaired) and ok.repair_ms < 150


@pytest.mark.parametrize(("before", "why"), [
    (one_way_out(5.0, 10.0), "nothing ever came back"),
    (sorted(ping(5.0, 5.01, 1.0) + one_way_out(5.01, 10.0)), "one answer, then one-way"),
    (sorted(ping(3.0, 6.0, 100.0) + one_way_out(6.0, 10.0)), "the answers ended long ago"),
])
def test_one_way_out_is_not_repaired_per_move(before: Packets, why: str) -> None:
    r = Run(before)
    assert not r.check.expects_inbound, why
    r.run(15.0)
    assert r.kinds() == [DataPathUnverified]
    assert isinstance(r.events[0][1], DataPathUnverified)
    assert r.events[0][1].reason == "one_way"


@pytest.mark.parametrize("before", [[], ping(5.0, 9.5, 100.0), one_way_in(5.0, 10.0,
                                                                         death=9.8)],
                         ids=["idle", "ping-then-idle", "one-way-in"])
def test_nothing_leaving_after_the_move_is_idle_never_a_rekey(before: Packets) -> None:
    r = Run(before)
    r.run(15.0, sending=False)
    assert r.kinds() == [DataPathUnverified]
    assert isinstance(r.events[0][1], DataPathUnverified)
    assert r.events[0][1].reason == "idle"


@pytest.mark.parametrize("before", [ping(5.0, 10.0, 100.0, death=9.8),
                                    bursty(4.0, 10.0, death=9.8), one_way_in(5.0, 10.0)],
                         ids=["ping", "bursty", "one-way-in"])
def test_the_peers_esp_on_the_new_path_verifies_each_shape(before: Packets) -> None:
    r = Run(before)
    r.run(11.0, answers=10.01)
    assert r.kinds() == [DataPathVerified]


def test_a_bursty_flow_between_bursts_is_still_expected_back() -> None:
    """The fault came in a pause between bursts (the last answer 0.8 s before the move):
    the peer was sending, so silence after the move with ours leaving is a dead path."""
    r = Run(bursty(4.0, 10.0, death=9.3), moved=10.0)
    assert r.check.expects_inbound
    r.run(10.5)
    assert r.kinds() == [RepairRequested]


def test_the_bound_follows_the_flows_own_pace() -> None:
    """The peer answers once a second: 0.2 s without its ESP is normal, not dead."""
    before = sorted(one_way_out(2.0, 10.0) + [(k + 0.5, True) for k in range(2, 10)])
    r = Run(before)
    assert r.check.expects_inbound
    r.run(12.0, answers=10.9)
    assert r.kinds() == [DataPathVerified]


def test_a_rekey_refused_for_now_is_asked_again_at_rtt_pace_then_repaired() -> None:
    r = Run(ping(5.0, 10.0, 100.0, death=9.8), srtt=0.01)
    r.run(11.0, answers=10.6, refuse={1, 2, 3})
    reqs = [(t, e) for t, e in r.events if isinstance(e, RepairRequested)]
    assert [e.attempt for _, e in reqs] == [1, 2, 3, 4]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(reqs)]
    assert all(gap <= 2 * 0.01 + REPAIR_RETRY_FLOOR + 0.01 for gap in gaps), gaps
    assert r.kinds()[-1] is DataPathRepaired


def test_refusals_are_bounded_and_end_in_a_dead_verdict() -> None:
    r = Run(ping(5.0, 10.0, 100.0, death=9.8))
    r.run(13.0, refuse=range(1, 1000))
    attempts = [e.attempt for _, e in r.events if isinstance(e, RepairRequested)]
    assert 1 < len(attempts) <= MAX_REPAIR_RETRIES + 1
    dead = [e for _, e in r.events if isinstance(e, DataPathDead)]
    assert len(dead) == 1 and dead[0].rekeyed is False


def test_a_late_answer_after_the_dead_verdict_is_a_late_repair_then_the_watch_ends() -> None:
    r = Run(ping(5.0, 10.0, 100.0, death=9.8))
    r.run(14.0, answers=13.9)
    assert r.kinds() == [RepairRequested, DataPathDead, DataPathRepaired]
    late = r.run(60.0)
    assert late == r.events and r.check.phase is Phase.DONE


def test_a_zero_verify_timeout_checks_nothing_and_a_second_move_replaces_the_first() -> None:
    off = Run(ping(5.0, 10.0, 100.0), settings=HealthSettings(verify_timeout=0))
    assert off.check.get_timer() is None
    r = Run(ping(5.0, 10.0, 100.0, death=9.8))
    r.run(10.1)
    r.check.on_moved(OLD, NEW, started=10.1, srtt=None, sample=r.sample(), flow=r.flow,
                     now=10.1)
    r.run(10.2, answers=10.15)
    assert r.kinds() == [DataPathVerified]
    r.check.cancel()
    assert r.check.get_timer() is None


def test_settings_come_from_the_policy_for_both_backends() -> None:
    policy = MobikePolicy(probe_interval=0.5, probe_misses=3, probe_timeout=1.0,
                          verify_timeout=0.3, repair_timeout=4.0, stall_timeout=0.15)
    s = settings_of(policy)
    assert (s.verify_timeout, s.repair_timeout, s.stall_timeout, s.stall_cap) == \
        (0.3, 4.0, 0.15, 0.5)
    assert s.active_window == pytest.approx(3.5)  # detection (2.5 s) + 1 s


def test_a_dead_data_path_is_held_longer_for_each_verdict_in_a_row_up_to_a_cap() -> None:
    holds = [dead_hold(n) for n in range(1, 12)]
    assert holds[:3] == [2.0, 4.0, 8.0]
    assert all(a <= b for a, b in itertools.pairwise(holds))
    assert holds[-1] == DEAD_HOLD_CAP
    assert dead_hold(10**9) == DEAD_HOLD_CAP  # no overflow, still bounded
    assert dead_hold(0) == dead_hold(1)
