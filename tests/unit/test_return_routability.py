"""The one return routability rule, as each policy mode reads it."""

from __future__ import annotations

import pytest

from mobike_vici.config.mobike import RoutabilityMode
from mobike_vici.return_routability import check_needed


@pytest.mark.parametrize(("mode", "nat", "needed"), [
    (RoutabilityMode.ALWAYS, False, True),
    (RoutabilityMode.ALWAYS, True, True),
    (RoutabilityMode.NAT_ONLY, False, False),
    (RoutabilityMode.NAT_ONLY, True, True),
    (RoutabilityMode.NEVER, False, False),
    (RoutabilityMode.NEVER, True, False),
])
def test_needed_by_mode(mode: RoutabilityMode, nat: bool, needed: bool) -> None:
    assert check_needed(mode, nat=nat, verified=False) is needed


@pytest.mark.parametrize("mode", list(RoutabilityMode))
@pytest.mark.parametrize("nat", [False, True])
def test_a_verified_address_is_never_checked_again(mode: RoutabilityMode, nat: bool) -> None:
    assert check_needed(mode, nat=nat, verified=True) is False
