"""Reassembly of RFC 7383 fragments (pure): order, duplicates, changed totals, bounds, time."""

from __future__ import annotations

from mobike_vici.core.fragments import (
    MAX_FRAGMENTS,
    REASSEMBLY_TIMEOUT,
    Reassembly,
    add_fragment,
    deadline,
    expire,
)
from mobike_vici.ikev2.constants import ExchangeType, PayloadType
from mobike_vici.ikev2.message import MAX_MESSAGE_LENGTH, Fragment

AUTH = int(ExchangeType.IKE_AUTH)


def frag(number: int, total: int, data: bytes | None = None) -> Fragment:
    first = PayloadType.IDi if number == 1 else 0
    return Fragment(number, total, first, data if data is not None else bytes([number]) * 10)


def feed(slots: dict[bool, Reassembly], *fragments: Fragment, mid: int = 1,
         now: float = 0.0) -> list[str]:
    """Reasons of the drops; the completed message is checked by the caller."""
    out = []
    for f in fragments:
        added = add_fragment(slots, False, mid, AUTH, f, now, REASSEMBLY_TIMEOUT)
        out.append(added.reason or ("done" if added.done is not None else "kept"))
    return out


def test_out_of_order_fragments_join_in_number_order() -> None:
    slots: dict[bool, Reassembly] = {}
    assert feed(slots, frag(3, 3), frag(1, 3)) == ["kept", "kept"]
    added = add_fragment(slots, False, 1, AUTH, frag(2, 3), 0.0, REASSEMBLY_TIMEOUT)
    assert added.done == (b"\x01" * 10, b"\x02" * 10, b"\x03" * 10)
    assert added.first_payload == PayloadType.IDi
    assert slots == {}  # nothing kept once whole


def test_duplicates_are_dropped_and_change_nothing() -> None:
    slots: dict[bool, Reassembly] = {}
    assert feed(slots, frag(1, 2), frag(1, 2, b"other")) == ["kept", "duplicate fragment"]
    added = add_fragment(slots, False, 1, AUTH, frag(2, 2), 0.0, REASSEMBLY_TIMEOUT)
    assert added.done is not None and added.done[0] == b"\x01" * 10


def test_a_larger_total_starts_over_and_a_smaller_one_is_dropped() -> None:
    slots: dict[bool, Reassembly] = {}
    assert feed(slots, frag(1, 2), frag(2, 4), frag(1, 3)) == [
        "kept", "kept", "fragment with fewer Total Fragments than before"]
    assert set(slots[False].pieces) == {2} and slots[False].total == 4
    assert feed(slots, frag(1, 4), frag(3, 4), frag(4, 4)) == ["kept", "kept", "done"]


def test_too_many_fragments_and_too_many_bytes_are_refused() -> None:
    slots: dict[bool, Reassembly] = {}
    assert feed(slots, frag(1, MAX_FRAGMENTS + 1))[0].startswith("too many fragments")
    assert slots == {}
    big = MAX_MESSAGE_LENGTH // 2 + 1
    reasons = feed(slots, frag(1, 3, bytes(big)), frag(2, 3, bytes(big)))
    assert reasons[0] == "kept" and reasons[1].startswith("fragmented message longer")
    assert slots == {}  # the whole message is given up


def test_a_newer_message_id_replaces_the_old_reassembly() -> None:
    slots: dict[bool, Reassembly] = {}
    feed(slots, frag(1, 2), mid=1)
    assert feed(slots, frag(2, 2), mid=2) == ["kept"]
    assert slots[False].message_id == 2 and set(slots[False].pieces) == {2}


def test_requests_and_responses_are_kept_apart() -> None:
    slots: dict[bool, Reassembly] = {}
    feed(slots, frag(1, 2))
    response = add_fragment(slots, True, 5, AUTH, frag(1, 2), 0.0, REASSEMBLY_TIMEOUT)
    assert response.reason == "" and set(slots) == {False, True}


def test_reassembly_expires_on_the_clock() -> None:
    slots: dict[bool, Reassembly] = {}
    feed(slots, frag(1, 2), now=10.0)
    assert deadline(slots, REASSEMBLY_TIMEOUT) == 10.0 + REASSEMBLY_TIMEOUT
    expire(slots, 10.0 + REASSEMBLY_TIMEOUT - 0.001, REASSEMBLY_TIMEOUT)
    assert slots
    expire(slots, 10.0 + REASSEMBLY_TIMEOUT, REASSEMBLY_TIMEOUT)
    assert slots == {} and deadline(slots, REASSEMBLY_TIMEOUT) is None
    # A late fragment after the deadline starts a new reassembly instead of completing.
    feed(slots, frag(1, 2), now=0.0)
    assert feed(slots, frag(2, 2), now=REASSEMBLY_TIMEOUT) == ["kept"]
