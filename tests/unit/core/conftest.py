"""Every engine call in these tests is followed by a check of the engine's SA index
against a full recount of its table, so each scenario here also tests the index."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mobike_vici.core.engine import Engine

from .index_check import assert_index_matches

CALLS = ("initiate", "receive_datagram", "handle_timer", "rekey_child",
         "delete_ike", "delete_child", "set_local_addresses", "probe", "move")
"""The public calls that may change SAs."""


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Engine, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            assert_index_matches(self)
    return call


@pytest.fixture(autouse=True)
def _index_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in CALLS:
        monkeypatch.setattr(Engine, name, _checked(getattr(Engine, name)))
    yield
