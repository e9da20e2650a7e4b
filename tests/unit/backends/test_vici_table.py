"""The SA table against events and list-sas answers recorded from charon 5.9.8 (fixtures)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from mobike_vici.backends.vici.events import (
    ChildAdded,
    ChildRekeyed,
    ChildRemoved,
    SaAdded,
    SaEvent,
    SaRekeyed,
    SaRemoved,
    SaUpdated,
)
from mobike_vici.backends.vici.table import (
    ParseError,
    SaTable,
    decode,
    parse_list_sas,
    proposal_text,
)

FIXTURE = Path(__file__).parent / "fixtures" / "charon_events.json"
# Recorded by fixtures/capture_vici.py: establish, child rekey, IKE rekey, MOBIKE
# move from uplink 10.1.0.2 to 10.2.0.2 (with a child rekey), terminate.
RECORD: list[tuple[str, Any]] = [(name, msg) for name, msg in json.loads(FIXTURE.read_text())]


def _section(index: int) -> dict[str, Any]:
    _name, msg = RECORD[index]
    (conn,) = [k for k, v in msg.items() if isinstance(v, dict)]
    section: dict[str, Any] = msg[conn]
    return section


def _key(d: dict[str, Any]) -> str:
    return f"{d['initiator-spi']}_{d['responder-spi']}"


def _replay(table: SaTable, upto: int) -> list[list[SaEvent]]:
    out = []
    for name, msg in RECORD[:upto]:
        if name == "list-sas":
            out.append(table.reconcile(parse_list_sas(msg)))
        else:
            out.append(table.apply(name, msg))
    return out


def test_fixture_has_no_key_material() -> None:
    text = FIXTURE.read_text().lower()
    for word in ('"sk_', 'secret', 'psk', 'nonce'):
        assert word not in text


def test_establishment_adds_the_sa_then_its_child_with_charons_spis() -> None:
    table = SaTable()
    first, second = _replay(table, 2)
    ike = _section(0)
    spi = _key(ike)
    assert [type(e) for e in first] == [SaAdded]
    added = first[0]
    assert isinstance(added, SaAdded) and added.ike_spi == spi and added.conn == "home"
    assert str(added.sa.path.local) == "10.1.0.2[4500]"
    assert str(added.sa.path.remote) == "192.0.2.2[4500]"
    assert added.sa.initiator and added.sa.local_id == "mob@lab"
    assert [type(e) for e in second] == [ChildAdded]
    child = _section(1)["child-sas"]["net-1"]
    assert isinstance(second[0], ChildAdded)
    assert (second[0].child.spi_in, second[0].child.spi_out) == (child["spi-in"], child["spi-out"])
    assert second[0].child.local_ts == tuple(child["local-ts"])
    sa = table.get(spi)
    assert sa is not None and [c.unique_id for c in sa.children] == [1]


def test_resync_right_after_events_changes_nothing() -> None:
    table = SaTable()
    *_, resync = _replay(table, 3)
    assert resync == []
    assert len(table) == 1


def test_child_rekey_replaces_the_child() -> None:
    table = SaTable()
    *_, rekey = _replay(table, 4)
    assert [type(e) for e in rekey] == [ChildRekeyed]
    event = rekey[0]
    assert isinstance(event, ChildRekeyed)
    assert (event.old.unique_id, event.new.unique_id) == (1, 2)
    assert event.old.spi_in != event.new.spi_in
    (sa,) = table.sas()
    assert [c.unique_id for c in sa.children] == [2]


def test_ike_rekey_moves_key_and_children_to_the_new_sa() -> None:
    table = SaTable()
    *_, rekey = _replay(table, 5)
    section = _section(4)
    old_key, new_key = _key(section["old"]), _key(section["new"])
    assert [type(e) for e in rekey] == [SaRekeyed]
    event = rekey[0]
    assert isinstance(event, SaRekeyed)
    assert (event.ike_spi, event.new_ike_spi) == (old_key, new_key)
    assert old_key not in table and new_key in table
    sa = table.get(new_key)
    assert sa is not None and [c.unique_id for c in sa.children] == [2]


def test_ike_update_reports_the_move_between_uplinks() -> None:
    table = SaTable()
    *_, update = _replay(table, 6)
    assert [type(e) for e in update] == [SaUpdated]
    event = update[0]
    assert isinstance(event, SaUpdated) and event.moved
    assert event.old.path.local.addr == ipaddress.ip_address("10.1.0.2")
    assert event.new.path.local.addr == ipaddress.ip_address("10.2.0.2")
    assert event.new.path.remote == event.old.path.remote
    assert [c.unique_id for c in event.new.children] == [2]  # children stay with the SA


def test_after_the_whole_story_a_resync_agrees_with_charon() -> None:
    table = SaTable()
    *_, rekey2, resync = _replay(table, 8)
    assert [type(e) for e in rekey2] == [ChildRekeyed]
    assert resync == []  # the table followed charon exactly through rekeys and the move
    (sa,) = table.sas()
    assert [c.unique_id for c in sa.children] == [3]
    assert str(sa.path.local.addr) == "10.2.0.2"


def test_termination_removes_children_then_the_sa_once() -> None:
    table = SaTable()
    *_, down, child_down = _replay(table, 10)
    assert [type(e) for e in down] == [ChildRemoved, SaRemoved]
    removed = down[1]
    assert isinstance(removed, SaRemoved) and removed.reason == "down"
    assert isinstance(down[0], ChildRemoved) and down[0].reason == "ike_removed"
    assert child_down == []  # the SA is gone already; nothing reported twice
    assert len(table) == 0


def _snapshot(index: int) -> dict[str, Any]:
    return parse_list_sas(RECORD[index][1])


def test_reconcile_reports_removed_added_and_leaves_the_unchanged_alone() -> None:
    table = SaTable()
    first = _snapshot(2)
    (sa,) = first.values()
    other = dataclasses.replace(sa, ike_spi="00000000000000aa_00000000000000bb", unique_id=9,
                                children=())
    events = table.reconcile({**first, other.ike_spi: other})
    assert [type(e) for e in events] == [SaAdded, ChildAdded, SaAdded]
    # charon restarted: the old SAs are gone, a new one exists.
    later = _snapshot(7)
    events = table.reconcile({**later, other.ike_spi: other})
    kinds = [(type(e), e.ike_spi) for e in events]
    assert (ChildRemoved, sa.ike_spi) in kinds and (SaRemoved, sa.ike_spi) in kinds
    (new_key,) = later
    assert (SaAdded, new_key) in kinds
    assert all(spi != other.ike_spi for _, spi in kinds)  # unchanged: untouched
    removed = [e for e in events if isinstance(e, SaRemoved)]
    assert [e.reason for e in removed] == ["resync"]
    assert set(s.ike_spi for s in table.sas()) == {new_key, other.ike_spi}


def test_list_sas_leaves_out_dying_children_and_half_open_sas() -> None:
    later = _snapshot(7)
    (sa,) = later.values()
    assert [c.unique_id for c in sa.children] == [3]  # DELETED children 1, 2 left out
    entry = json.loads(json.dumps(RECORD[2][1]))
    entry[0]["home"]["state"] = "CONNECTING"
    assert parse_list_sas(entry) == {}


def test_a_malformed_event_raises_and_changes_nothing() -> None:
    table = SaTable()
    _replay(table, 2)
    before = table.sas()
    _name, msg = RECORD[5]
    broken = json.loads(json.dumps(msg))
    broken["local-host"] = "not-an-address"
    with pytest.raises(ParseError):
        table.apply("ike-update", broken)
    bad = {"home": {"initiator-spi": "01", "uniqueid": "x"}}
    with pytest.raises(ParseError):
        table.apply("ike-updown", {"up": "yes", **bad})
    assert table.sas() == before


def test_unknown_events_are_ignored() -> None:
    table = SaTable()
    assert table.apply("log", {"msg": "hello"}) == []
    assert len(table) == 0


def test_decode_turns_vici_bytes_into_plain_data() -> None:
    raw = {b"home": {b"local-vips": [b"10.0.0.1"], b"state": b"ESTABLISHED"}}
    assert decode(raw) == {"home": {"local-vips": ["10.0.0.1"], "state": "ESTABLISHED"}}


def test_state_is_kept_while_nothing_is_applied() -> None:
    # A dead charon sends nothing: the table keeps its SAs until a reconcile says otherwise.
    table = SaTable()
    _replay(table, 2)
    assert len(table) == 1
    assert table.reconcile(_snapshot(2)) == []
    assert len(table) == 1


def _as_responder(d: dict[str, Any]) -> dict[str, Any]:
    """An IKE_SA section as a gateway's charon lists it: not the original initiator."""
    out = {k: v for k, v in d.items() if k != "initiator"}
    return out


def _gateway_rekey(*, by_charon: bool) -> tuple[SaTable, list[SaEvent]]:
    """The recorded IKE rekey replayed on a gateway's charon: the SA it was responder of,
    rekeyed by charon (new section "initiator": yes) or by the peer (no flag)."""
    table = SaTable()
    _name, est = RECORD[0]
    table.apply("ike-updown", {"up": "yes", "home": _as_responder(est["home"])})
    _name, rekey = RECORD[4]
    section = {"old": _as_responder(rekey["home"]["old"]), "new": dict(rekey["home"]["new"])}
    if not by_charon:
        section["new"] = _as_responder(section["new"])
    return table, table.apply("ike-rekey", {"home": section})


def test_a_gateway_sa_rekeyed_by_charon_keeps_its_role_and_says_who_rekeyed() -> None:
    table, events = _gateway_rekey(by_charon=True)
    (event,) = events
    assert isinstance(event, SaRekeyed) and event.by_charon
    assert not event.new.initiator  # charon's flag now says "initiator": the role did not change
    new = table.get(event.new_ike_spi)
    assert new is not None and not new.initiator
    # Later events list charon's flag again; the table keeps the original role.
    _name, update = RECORD[6]
    moved = {k: v for k, v in update.items() if k != "home"}
    section = dict(update["home"])
    section.update({"initiator-spi": rekey_spi(event.new_ike_spi, 0),
                    "responder-spi": rekey_spi(event.new_ike_spi, 1), "initiator": "yes"})
    (updated,) = table.apply("ike-update", {**moved, "home": section})
    assert isinstance(updated, SaUpdated) and not updated.new.initiator


def rekey_spi(key: str, index: int) -> str:
    return key.split("_")[index]


def test_a_gateway_sa_rekeyed_by_the_peer_is_not_charons_rekey() -> None:
    _table, events = _gateway_rekey(by_charon=False)
    (event,) = events
    assert isinstance(event, SaRekeyed) and not event.by_charon and not event.new.initiator


def test_a_client_sa_rekeyed_by_the_gateway_stays_the_clients() -> None:
    """The recorded (client-side) IKE rekey as if the gateway had started it: charon lists
    the new IKE_SA without "initiator", yet it is still the one charon initiated."""
    table = SaTable()
    _replay(table, 4)
    _name, rekey = RECORD[4]
    section = {"old": rekey["home"]["old"], "new": _as_responder(rekey["home"]["new"])}
    (event,) = table.apply("ike-rekey", {"home": section})
    assert isinstance(event, SaRekeyed) and not event.by_charon
    assert event.new.initiator
    new = table.get(event.new_ike_spi)
    assert new is not None and new.initiator


def test_a_first_look_at_a_gateway_sa_after_charons_rekey_keeps_it_a_responder() -> None:
    """A controller (re)started after charon rekeyed a gateway's IKE_SA: list-sas says
    "initiator", but charon cannot initiate a connection to %any."""
    from mobike_vici.backends.vici.table import responder_only

    conns = {"home": {"remote_addrs": ["%any"]}, "site": {"remote_addrs": ["192.0.2.9"]},
             "nets": {"remote_addrs": ["10.0.0.0/8", "%any6"]}, "dyn": {}}
    assert responder_only(conns) == {"home", "nets", "dyn"}
    listed = RECORD[2][1]
    (sa,) = parse_list_sas(listed).values()
    assert sa.initiator  # charon's flag
    (sa,) = parse_list_sas(listed, responder_only(conns)).values()
    assert not sa.initiator
    (sa,) = parse_list_sas(listed, responder_only({"home": {"remote_addrs": ["gw.example"]}})
                           ).values()
    assert sa.initiator


def test_virtual_ips_follow_every_change_without_a_walk() -> None:
    # The controller asks for them per path manager and per address event: the table
    # keeps them as SAs come, rekey and go, equal to a walk of the table at every step.
    table = SaTable()
    seen_any = False
    for name, msg in RECORD:
        if name == "list-sas":
            table.reconcile(parse_list_sas(msg))
        else:
            table.apply(name, msg)
        walked = {vip for sa in table.sas() for vip in sa.virtual_ips}
        assert table.virtual_ips() == walked
        seen_any = seen_any or bool(walked)
    assert seen_any and table.virtual_ips() == frozenset()  # terminated at the end


def test_a_virtual_ip_two_sas_share_stays_until_both_are_gone() -> None:
    table = SaTable()
    first = parse_list_sas(RECORD[2][1])
    (sa,) = first.values()
    twin = dataclasses.replace(sa, ike_spi="00000000000000aa_00000000000000bb", unique_id=99)
    table.reconcile({sa.ike_spi: sa, twin.ike_spi: twin})
    assert table.virtual_ips() == frozenset(sa.virtual_ips) != frozenset()
    table.reconcile({twin.ike_spi: twin})
    assert table.virtual_ips() == frozenset(sa.virtual_ips)
    table.reconcile({})
    assert table.virtual_ips() == frozenset()


def test_the_sas_carry_the_algorithms_as_swanctl_writes_them() -> None:
    """status shows charon's negotiated algorithms (it showed an empty ``proposal``)."""
    table = SaTable()
    _replay(table, 2)
    sa = table.get(_key(_section(0)))
    assert sa is not None
    assert sa.proposal == "AES_CBC/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519"
    assert [c.proposal for c in sa.children] == ["AES_CBC/HMAC_SHA2_256_128"]
    assert proposal_text({"encr-alg": "AES_GCM_16", "encr-keysize": "256",
                          "dh-group": "ECP_256"}) == "AES_GCM_16-256/ECP_256"
    assert proposal_text({}) == ""


def _child_down(child: dict[str, Any], state: str = "DELETED") -> dict[str, Any]:
    """A child-updown event (down) for ``child`` of the recorded IKE_SA."""
    _name, up = RECORD[1]
    section = {k: v for k, v in up["home"].items() if k != "child-sas"}
    section["child-sas"] = {f"net-{child['uniqueid']}": {**child, "state": state}}
    return {"home": section}


def test_a_child_reported_rekeyed_and_then_down_is_a_rekey_undone() -> None:
    """Soak (seed 41, link_down 2.94 s): charon answered the gateway's rekey (child-rekey,
    old -> new), then its own retried rekey of the old CHILD_SA met the gateway's DELETE of
    it: charon took the old one down (child-updown) and never installed the new one's
    outbound half. The table had dropped the old one at the rekey, so that down event
    said nothing before."""
    table = SaTable()
    _replay(table, 4)  # established, child 1 rekeyed to child 2
    old = _section(3)["child-sas"]["net"]["old"]
    events = table.apply("child-updown", _child_down(old))
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [
        (ChildRemoved, "rekey_undone")]
    event = events[0]
    assert isinstance(event, ChildRemoved)
    assert event.child.unique_id == 1 and event.ike_spi == _key(_section(0))
    (sa,) = table.sas()
    assert [c.unique_id for c in sa.children] == [2]  # the new one stays
    assert table.apply("child-updown", _child_down(old)) == []  # said once


def test_a_live_child_going_down_is_no_rekey_undone() -> None:
    table = SaTable()
    _replay(table, 4)
    new = _section(3)["child-sas"]["net"]["new"]
    events = table.apply("child-updown", _child_down(new))
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [(ChildRemoved, "down")]


def test_the_recorded_story_has_no_rekey_undone() -> None:
    table = SaTable()
    for events in _replay(table, len(RECORD)):
        assert not [e for e in events if getattr(e, "reason", None) == "rekey_undone"]
