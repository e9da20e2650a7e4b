"""The IKE_SA state table: every (state, state) pair against set_state, and which
exchanges the peer may start."""

from __future__ import annotations

import ipaddress

import pytest

from mobike_vici.core import ike_sa
from mobike_vici.core.ike_sa import IkeSa, IkeState, InvalidTransition
from mobike_vici.ikev2.constants import ExchangeType
from mobike_vici.types import Endpoint, Path

from .harness import BOB, config_pair

CONN = config_pair()[1].connections[0]
PEER = ipaddress.ip_address("198.51.100.1")

# What the exchanges do today: auth, IKE rekey (and its undo), hand-over, delete.
ALLOWED = {
    (IkeState.CONNECTING, IkeState.ESTABLISHED), (IkeState.CONNECTING, IkeState.DELETING),
    (IkeState.CONNECTING, IkeState.DELETED),
    (IkeState.ESTABLISHED, IkeState.REKEYING), (IkeState.ESTABLISHED, IkeState.REKEYED),
    (IkeState.ESTABLISHED, IkeState.DELETING), (IkeState.ESTABLISHED, IkeState.DELETED),
    (IkeState.REKEYING, IkeState.ESTABLISHED), (IkeState.REKEYING, IkeState.REKEYED),
    (IkeState.REKEYING, IkeState.DELETING), (IkeState.REKEYING, IkeState.DELETED),
    (IkeState.REKEYED, IkeState.DELETING), (IkeState.REKEYED, IkeState.DELETED),
    (IkeState.DELETING, IkeState.REKEYED), (IkeState.DELETING, IkeState.DELETED),
}


def _sa(state: IkeState, initiator: bool = False) -> IkeSa:
    path = Path(Endpoint(BOB, 500), Endpoint(PEER, 500))
    return IkeSa(conn=CONN, initiator=initiator, spi_i=b"\x01" * 8, spi_r=b"\x02" * 8,
                 path=path, created=0.0, state=state)


@pytest.mark.parametrize("old", list(IkeState))
@pytest.mark.parametrize("new", list(IkeState))
def test_set_state_follows_the_table(old: IkeState, new: IkeState) -> None:
    sa = _sa(old)
    if old is new or (old, new) in ALLOWED:
        sa.set_state(new)
        assert sa.state is new
    else:
        with pytest.raises(InvalidTransition):
            sa.set_state(new)
        assert sa.state is old


def test_a_deleted_sa_stays_deleted() -> None:
    sa = _sa(IkeState.ESTABLISHED)
    sa.set_state(IkeState.DELETED)
    with pytest.raises(InvalidTransition):
        sa.set_state(IkeState.ESTABLISHED)


def test_outside_the_tests_a_change_the_table_lacks_is_made_and_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ike_sa, "STRICT_TRANSITIONS", False)
    sa = _sa(IkeState.DELETED)
    sa.set_state(IkeState.ESTABLISHED)
    assert sa.state is IkeState.ESTABLISHED
    assert "DELETED -> ESTABLISHED" in caplog.text


def test_the_suite_runs_strict() -> None:
    assert ike_sa.STRICT_TRANSITIONS


def test_only_the_responder_accepts_ike_auth_while_connecting() -> None:
    assert _sa(IkeState.CONNECTING).peer_may_start() == (ExchangeType.IKE_AUTH,)
    assert _sa(IkeState.CONNECTING, initiator=True).peer_may_start() == ()
    assert _sa(IkeState.DELETING).peer_may_start() == (ExchangeType.INFORMATIONAL,)
    assert _sa(IkeState.DELETED).peer_may_start() == ()
    assert ExchangeType.CREATE_CHILD_SA in _sa(IkeState.REKEYED).peer_may_start()
