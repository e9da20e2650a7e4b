"""The relay of charon's requests: what it remembers, and what it sends over a move's
new path (a recording sender: no sockets)."""

from __future__ import annotations

from mobike_vici.daemon.ike_relay import IkeRelay, RequestLedger, needs_relay
from mobike_vici.net.ike_wire import MARKER, IkeDatagram
from mobike_vici.types import Endpoint, Path

from .fakes import RecordingLog

SPI = "1bf9bb6df98e4f6b_fd931ed6fc98b689"
OLD = Path(Endpoint.parse("10.1.0.2", 4500), Endpoint.parse("192.0.2.2", 4500))
NEW = Path(Endpoint.parse("10.2.0.2", 4500), Endpoint.parse("192.0.2.2", 4500))
NEW6 = Path(Endpoint.parse("2001:db8:2::2", 4500), Endpoint.parse("2001:db8:ff::2", 4500))


def dgram(mid: int, on: Path = OLD, *, response: bool = False, spi: str = SPI,
          body: bytes = b"") -> IkeDatagram:
    src, dst = (on.remote, on.local) if response else (on.local, on.remote)
    return IkeDatagram(src.addr, dst.addr, src.port, dst.port, spi, 36, response, mid,
                       MARKER + mid.to_bytes(4, "big") + body)


class Relay:
    def __init__(self) -> None:
        self.log = RecordingLog()
        self.sent: list[tuple[Path, bytes]] = []
        self.relay = IkeRelay(self.log, send=lambda path, data: self.sent.append((path, data)))

    def out(self, d: IkeDatagram) -> None:
        self.relay.on_datagram(d, outgoing=True)

    def back(self, d: IkeDatagram) -> None:
        self.relay.on_datagram(d, outgoing=False)


def test_the_ledger_keeps_the_last_request_until_its_response() -> None:
    ledger = RequestLedger(limit=2)
    ledger.sent(dgram(1))
    ledger.sent(dgram(2))
    assert [d.message_id for d in ledger.pending(SPI)] == [2]
    ledger.answered(dgram(1, response=True))  # an older response: 2 still waits
    assert [d.message_id for d in ledger.pending(SPI)] == [2]
    ledger.sent(dgram(2, body=b"frag2"))  # a second fragment of the same request
    ledger.sent(dgram(2, body=b"frag2"))  # and its retransmission
    assert len(ledger.pending(SPI)) == 2
    ledger.answered(dgram(2, response=True))
    assert ledger.pending(SPI) == []
    for n in range(3):
        ledger.sent(dgram(1, spi=f"{n:016x}_{n:016x}"))
    assert ledger.pending(f"{0:016x}_{0:016x}") == []  # the oldest IKE_SA went first


def test_a_copy_leaving_after_its_answer_is_not_pending() -> None:
    # charon's path check went out on two paths; the answer came on one, then the other
    # copy left (held by neighbour resolution on an address just added). The peer
    # ignores it as old: nothing waits.
    ledger = RequestLedger()
    ledger.sent(dgram(5, NEW6))
    ledger.answered(dgram(5, NEW6, response=True))
    ledger.sent(dgram(5, OLD))
    assert ledger.pending(SPI) == []
    ledger.sent(dgram(6, NEW6))  # the next request waits as before
    assert [d.message_id for d in ledger.pending(SPI)] == [6]
    ledger.forget(SPI)
    ledger.sent(dgram(0))  # a new IKE_SA under the same SPIs starts over
    assert [d.message_id for d in ledger.pending(SPI)] == [0]


def test_a_copy_leaving_after_the_next_exchange_is_not_pending() -> None:
    """Both IKE_SAs the 30-minute soak (seed 51, code before this ledger kept the highest
    answered ID) lost outside restarts: a link_down of m0, charon's path check 40 on m0's
    IPv4 and m1's IPv6, answered on IPv6, then its UPDATE_SA_ADDRESSES 41, answered; the
    copy of 40 left m0 a second later (neighbour resolution), the gateway logged "received
    message ID 40, expected 42, ignored", and the state check ended the live IKE_SA."""
    ledger = RequestLedger()
    ledger.sent(dgram(40, NEW6))
    ledger.answered(dgram(40, NEW6, response=True))
    ledger.sent(dgram(41, NEW6))
    ledger.answered(dgram(41, NEW6, response=True))
    ledger.sent(dgram(40, OLD))
    assert ledger.pending(SPI) == []


def test_needs_relay_compares_both_endpoints() -> None:
    assert needs_relay(dgram(1, OLD), NEW)
    assert not needs_relay(dgram(1, NEW), NEW)
    assert needs_relay(dgram(1, NEW), Path(NEW.local, Endpoint(NEW.remote.addr, 4501)))


def test_a_move_sends_the_unanswered_request_over_the_new_path_once() -> None:
    r = Relay()
    r.out(dgram(5))
    r.relay.relay("home", SPI, NEW, OLD)
    assert r.sent == [(NEW, dgram(5).payload)]
    r.out(dgram(5))  # charon's own retransmission from the old address: copied already
    assert len(r.sent) == 1
    (event,) = r.log.named("ike_request_relayed")
    assert event["message_id"] == 5 and event["local"] == "10.2.0.2[4500]"
    assert event["sent_from"] == "10.1.0.2[4500]"


def test_an_answered_request_or_one_sent_on_the_new_path_is_not_sent_again() -> None:
    r = Relay()
    r.out(dgram(5))
    r.back(dgram(5, response=True))
    r.relay.relay("home", SPI, NEW, OLD)
    r.out(dgram(6, NEW))
    r.relay.relay("home", SPI, NEW, OLD)
    assert r.sent == []


def test_during_the_move_later_requests_sent_elsewhere_are_copied_until_it_ends() -> None:
    r = Relay()
    r.relay.relay("home", SPI, NEW6, OLD)
    r.out(dgram(7))  # e.g. the delete after a rekey, from the IKE_SA's old address
    r.out(dgram(8, NEW6))  # a MOBIKE check charon sends on the new path itself ...
    r.out(dgram(8))  # ... and on the old one: one copy on the new path is enough
    assert r.sent == [(NEW6, dgram(7).payload)]
    r.relay.stop("other")
    r.out(dgram(9))
    assert len(r.sent) == 2
    r.relay.stop("home")
    r.out(dgram(10))
    r.relay.forget(SPI)
    r.relay.relay("home", SPI, NEW6, OLD)
    assert len(r.sent) == 2  # no move, then nothing remembered


def test_a_request_charon_sends_on_a_path_of_its_own_choice_is_not_copied() -> None:
    # The controller steers onto m1's IPv4 (NEW), charon's MOBIKE update goes out on
    # m1's IPv6 (NEW6), where it found a way: a copy from NEW's address would move the
    # peer onto NEW and leave charon on NEW6 (soak: 37 s without ESP).
    r = Relay()
    r.relay.relay("home", SPI, NEW, OLD)
    r.out(dgram(6, NEW6))
    assert r.sent == []
    r.out(dgram(7))  # sent on the path it leaves: copied
    assert r.sent == [(NEW, dgram(7).payload)]


def test_a_send_that_fails_is_reported_not_raised() -> None:
    log = RecordingLog()

    def refuse(path: Path, data: bytes) -> None:
        raise OSError(101, "Network is unreachable")

    relay = IkeRelay(log, send=refuse)
    relay.on_datagram(dgram(3), outgoing=True)
    relay.relay("home", SPI, NEW, OLD)
    (failed,) = log.named("ike_relay_failed")
    assert failed["message_id"] == 3 and "unreachable" in str(failed["error"])
    assert relay.relayed == 0


def test_an_escalated_move_leaves_the_ike_sas_requests_to_charon_in_later_moves_too() -> None:
    r = Relay()
    r.relay.relay("home", SPI, NEW, OLD)
    r.relay.retire("home")
    r.out(dgram(2))  # a reauthentication's delete of the IKE_SA, from the dead address
    r.relay.relay("home", SPI, NEW, OLD)  # the path manager's next move of the same IKE_SA
    r.out(dgram(2))
    assert r.sent == []
    r.relay.forget(SPI)  # gone: a new IKE_SA of the same SPIs would be relayed again
    r.out(dgram(3))
    r.relay.relay("home", SPI, NEW, OLD)
    assert r.sent == [(NEW, dgram(3).payload)]
