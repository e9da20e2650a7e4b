"""The controller's throwaway IKE_SA_INIT and when a lost IKE_SA is set up again."""

from __future__ import annotations

from mobike_vici.config.parser import Section, parse_string
from mobike_vici.daemon.state_probe import answers, probe_message, restarts
from mobike_vici.ikev2.constants import ExchangeType, HeaderFlag
from mobike_vici.ikev2.message import Header, decode_message, encode_message
from mobike_vici.ikev2.payloads import KE, SA, Nonce, Notify

SPI_I = bytes(range(1, 9))


def test_the_probe_is_a_well_formed_ike_sa_init_request() -> None:
    msg = decode_message(probe_message(SPI_I))
    assert msg.header.spi_i == SPI_I and msg.header.spi_r == bytes(8)
    assert msg.header.exchange == ExchangeType.IKE_SA_INIT
    assert not msg.header.is_response and msg.header.message_id == 0
    assert [type(p) for p in msg.payloads] == [SA, KE, Nonce]


def _response(spi_i: bytes, exchange: ExchangeType = ExchangeType.IKE_SA_INIT,
              flags: HeaderFlag = HeaderFlag.RESPONSE) -> bytes:
    header = Header(spi_i, bytes(8), 0, exchange, flags, 0)
    return encode_message(header, [Notify(17, b"")])  # INVALID_KE_PAYLOAD-like refusal


def test_any_response_to_the_probe_is_an_answer() -> None:
    assert answers(_response(SPI_I), SPI_I)


def test_other_datagrams_are_no_answer() -> None:
    assert not answers(_response(bytes(8)), SPI_I)  # another SPI
    assert not answers(_response(SPI_I, flags=HeaderFlag.INITIATOR), SPI_I)  # a request
    assert not answers(_response(SPI_I, ExchangeType.INFORMATIONAL), SPI_I)
    assert not answers(b"\x00" * 10, SPI_I)


def _conn(children: str) -> Section:
    root = parse_string(f"connections {{ home {{ children {{ {children} }} }} }}")
    return root.sections["connections"].sections["home"]


def test_restart_follows_dpd_action_in_charon_or_start_action_in_the_file() -> None:
    restart = {"children": {"net": {"dpd_action": "restart"}}}
    clear = {"children": {"net": {"dpd_action": "clear"}}}
    started = _conn("net { start_action = start }")
    trapped = _conn("net { start_action = trap }")
    assert restarts(restart, None)
    assert restarts(clear, started)
    assert not restarts(clear, trapped)
    assert not restarts(clear, None)
    assert not restarts(None, None)
