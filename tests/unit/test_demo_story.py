"""How the demo tells the way a fault was noticed, from the initiator's events."""

from __future__ import annotations

from typing import Any

from mobike_vici.demo import _noticed


def ev(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}


def test_a_link_event_is_named_as_it_is() -> None:
    assert _noticed([ev("path_down", reason="link_down")]) == "noticed as link_down, "


def test_a_stall_before_the_probe_timeout_is_what_set_the_probes_off() -> None:
    events = [ev("path_stalled", silent_ms=104.4), ev("path_down", reason="probe_timeout")]
    assert _noticed(events) == ("noticed as a stall, nothing back for 104 ms, "
                                "then unanswered probes, ")


def test_a_stall_after_the_first_path_down_is_not_the_cause() -> None:
    events = [ev("path_down", reason="probe_timeout"), ev("path_stalled", silent_ms=90)]
    assert _noticed(events) == "noticed as probe_timeout, "


def test_no_path_down_tells_nothing() -> None:
    assert _noticed([ev("path_stalled", silent_ms=90)]) == ""
    assert _noticed([ev("path_down")]) == ""
