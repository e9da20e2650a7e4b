"""The event stream: JSON line format, the core event schema, and that keys never leak."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mobike_vici.core.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    Event,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    MessageFragmented,
    PacketDropped,
)
from mobike_vici.eventlog import (
    REDACTED,
    EventLog,
    event_fields,
    format_timestamp,
    is_secret_name,
    make_logger,
)
from mobike_vici.ikev2.constants import EncrId
from mobike_vici.ikev2.crypto import ChildKeys, EspSuite
from mobike_vici.types import Endpoint, Path

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

PATH = Path(Endpoint.parse("10.1.0.2", 4500), Endpoint.parse("192.0.2.2", 4500))
SPI = "0123456789abcdef_fedcba9876543210"
# Distinctive key bytes, so a leak in any encoding (raw, hex, repr) is findable.
KEY_I = bytes(range(0xA0, 0xB4))
KEY_R = bytes(range(0xC0, 0xD4))


def child_installed() -> ChildSaInstalled:
    return ChildSaInstalled(
        conn="home", ike_spi=SPI, child="net", unique_id=7, spi_in=0xC1A2B3, spi_out=0xDEADBEEF,
        path=PATH, encap=True, local_ts=("10.3.0.1/32",), remote_ts=("10.2.0.0/16",),
        suite=EspSuite(encr=EncrId.AES_GCM_16, encr_key_bits=128, integ=None),
        proposal="aes128gcm16", keys=ChildKeys(KEY_I, b"", KEY_R, b""), initiator=True,
    )


def capture() -> tuple[EventLog, io.StringIO]:
    out = io.StringIO()
    return EventLog(make_logger(out)), out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def leaks(text: str) -> bool:
    for key in (KEY_I, KEY_R):
        if key.hex() in text.lower() or repr(key) in text or key.decode("latin-1") in text:
            return True
    return False


def test_line_has_timestamp_event_level_first() -> None:
    log, out = capture()
    log.emit("path_up", conn="home", local=PATH.local, remote=PATH.remote)
    [obj] = lines(out)
    assert list(obj)[:3] == ["timestamp", "event", "level"]
    assert TIMESTAMP.match(str(obj["timestamp"]))
    assert obj["event"] == "path_up"
    assert obj["level"] == "info"
    assert obj["local"] == "10.1.0.2[4500]"
    assert obj["remote"] == "192.0.2.2[4500]"


def test_one_line_per_event() -> None:
    log, out = capture()
    log.emit("a")
    log.emit("b")
    assert out.getvalue().count("\n") == 2
    assert [o["event"] for o in lines(out)] == ["a", "b"]


def test_timestamp_is_utc_and_keeps_zero_microseconds() -> None:
    moment = datetime(2026, 11, 26, 23, 59, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2026-11-26T21:59:01.000000Z"
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.123456Z"
    )


def test_injected_clock_is_used() -> None:
    out = io.StringIO()
    fixed = datetime(2026, 11, 26, 23, 59, 1, 123456, tzinfo=UTC)
    EventLog(make_logger(out, clock=lambda: fixed)).emit("x")
    assert lines(out)[0]["timestamp"] == "2026-11-26T23:59:01.123456Z"


@pytest.mark.parametrize(
    "name", ["key", "keys", "psk", "secret", "shared_secret", "sk_ei", "SK_pr", "private-key",
             "keymat", "password"],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["ike_spi", "keyingtries", "keepalive", "spi_in", "conn", "monkey", "task"],
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redaction_of_named_nested_and_raw_values() -> None:
    log, out = capture()
    log.emit("x", psk="topsecret", sk_ei="abc", nested={"secret": "s", "ok": 1},
             blob=KEY_I, keys=ChildKeys(KEY_I, KEY_I, KEY_R, KEY_R), listed=[KEY_R, 2])
    [obj] = lines(out)
    assert obj["psk"] == REDACTED
    assert obj["sk_ei"] == REDACTED
    assert obj["nested"] == {"secret": REDACTED, "ok": 1}
    assert obj["blob"] == REDACTED
    assert obj["keys"] == REDACTED
    assert obj["listed"] == [REDACTED, 2]
    assert "topsecret" not in out.getvalue()
    assert not leaks(out.getvalue())


def test_key_container_under_an_innocent_name_is_redacted() -> None:
    log, out = capture()
    log.emit("x", material=ChildKeys(KEY_I, KEY_I, KEY_R, KEY_R))
    assert lines(out)[0]["material"] == REDACTED
    assert not leaks(out.getvalue())


def test_child_sa_installed_never_shows_keys() -> None:
    log, out = capture()
    event = child_installed()
    log.core_event(event)
    text = out.getvalue()
    assert not leaks(text)
    [obj] = lines(out)
    assert obj["event"] == "child_sa_installed"
    assert "keys" not in obj
    assert obj["spi_in"] == "00c1a2b3"
    assert obj["spi_out"] == "deadbeef"
    assert obj["local_ts"] == ["10.3.0.1/32"]
    assert obj["remote_ts"] == ["10.2.0.0/16"]
    assert obj["encap"] is True
    assert obj["proposal"] == "aes128gcm16"
    assert (obj["conn"], obj["ike_spi"], obj["child"]) == ("home", SPI, "net")
    assert (obj["local"], obj["remote"]) == ("10.1.0.2[4500]", "192.0.2.2[4500]")
    assert "rekey_of" not in obj


def test_child_sa_installed_fields_do_not_contain_keys() -> None:
    _, fields = event_fields(child_installed())
    assert not any(isinstance(v, ChildKeys | bytes) for v in fields.values())
    assert "keys" not in fields and "suite" not in fields


CASES: list[tuple[Event, str, dict[str, object]]] = [
    (IkeSaEstablished(conn="home", ike_spi=SPI, path=PATH, initiator=True, local_id="moon",
                      remote_id="sun", proposal="aes128-sha256-x25519",
                      virtual_ips=(ipaddress.ip_address("10.3.0.1"),)),
     "ike_sa_established",
     {"conn": "home", "ike_spi": SPI, "local": "10.1.0.2[4500]", "remote": "192.0.2.2[4500]",
      "initiator": True, "local_id": "moon", "remote_id": "sun",
      "proposal": "aes128-sha256-x25519", "virtual_ips": ["10.3.0.1"]}),
    (IkeSaDeleted(conn="home", ike_spi=SPI, path=PATH, reason="dpd_timeout"),
     "ike_sa_deleted", {"reason": "dpd_timeout", "local": "10.1.0.2[4500]"}),
    (IkeSaRekeyed(conn="home", ike_spi=SPI, new_ike_spi="11_22"),
     "ike_sa_rekeyed", {"ike_spi": SPI, "new_ike_spi": "11_22"}),
    (ChildSaDeleted(conn="home", ike_spi=SPI, child="net", unique_id=3, spi_in=1, spi_out=0xFF,
                    reason="deleted_by_peer"),
     "child_sa_deleted", {"spi_in": "00000001", "spi_out": "000000ff",
                          "reason": "deleted_by_peer", "unique_id": 3}),
    (ChildSaRekeyed(conn="home", ike_spi=SPI, child="net", old_unique_id=3, new_unique_id=4,
                    old_spi_in=0xA, new_spi_in=0xB),
     "child_sa_rekeyed", {"old_unique_id": 3, "new_unique_id": 4,
                          "old_spi_in": "0000000a", "new_spi_in": "0000000b"}),
    (PacketDropped(path=PATH, reason="unknown_spi"),
     "packet_dropped", {"reason": "unknown_spi", "remote": "192.0.2.2[4500]"}),
    (ExchangeFailed(conn="home", ike_spi=SPI, exchange="INFORMATIONAL",
                    reason="retransmits_exceeded"),
     "exchange_failed", {"exchange": "INFORMATIONAL", "reason": "retransmits_exceeded"}),
    (MessageFragmented(conn="home", ike_spi=SPI, exchange="IKE_AUTH", sent=True, fragments=3,
                       length=2900, path=PATH),
     "fragments_sent", {"exchange": "IKE_AUTH", "fragments": 3, "length": 2900,
                        "remote": "192.0.2.2[4500]"}),
    (MessageFragmented(conn="home", ike_spi=SPI, exchange="IKE_AUTH", sent=False,
                       fragments=2, length=1500, path=PATH),
     "fragments_reassembled", {"exchange": "IKE_AUTH", "fragments": 2, "length": 1500}),
]


@pytest.mark.parametrize(("event", "name", "expected"), CASES,
                         ids=[c[1] for c in CASES])
def test_core_event_mapping(event: Event, name: str, expected: dict[str, object]) -> None:
    got_name, fields = event_fields(event)
    assert got_name == name
    for key, value in expected.items():
        assert fields[key] == value, key


@pytest.mark.parametrize(("event", "name", "expected"), CASES,
                         ids=[c[1] for c in CASES])
def test_core_event_renders_as_json(
    event: Event, name: str, expected: dict[str, object]
) -> None:
    log, out = capture()
    log.core_event(event)
    [obj] = lines(out)
    assert obj["event"] == name
    assert TIMESTAMP.match(str(obj["timestamp"]))
    for key, value in expected.items():
        assert obj[key] == value, key


def test_packet_dropped_is_a_warning_and_keeps_ike_spi() -> None:
    log, out = capture()
    log.core_event(PacketDropped(path=PATH, reason="integrity", ike_spi=SPI))
    [obj] = lines(out)
    assert obj["level"] == "warning"
    assert obj["ike_spi"] == SPI


def test_rekey_of_is_reported_when_set() -> None:
    rekeyed = dataclasses.replace(child_installed(), rekey_of=5)
    assert event_fields(rekeyed)[1]["rekey_of"] == 5


def test_a_raw_event_object_passed_as_a_field_is_not_expanded() -> None:
    log, out = capture()
    log.emit("x", raw=child_installed())
    assert lines(out)[0]["raw"] == "<ChildSaInstalled>"
    assert not leaks(out.getvalue())
