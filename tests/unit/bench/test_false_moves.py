"""What the false-move soak counts as a false move (pure helpers, no lab)."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import pytest

from .test_bench_logic import load


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load("false_moves")


def test_soak_counts_address_changes_across_unknown_samples(soak: ModuleType) -> None:
    assert soak.changes(["10.1.0.2", None, "10.1.0.2", "10.1.0.2"]) == 0
    assert soak.changes(["10.1.0.2", "10.2.0.2", None, "10.1.0.2"]) == 2
    assert soak.changes([]) == 0


def test_soak_false_moves_do_not_count_one_move_twice(soak: ModuleType) -> None:
    names = Counter({"handover_started": 1, "handover_completed": 1, "path_up": 3})
    assert soak.false_moves(names, 1) == 1
    assert soak.false_moves(Counter(), 2) == 2  # moved with no event (charon alone)
    assert soak.false_moves(Counter({"path_up": 4}), 0) == 0
    assert soak.suspect(names) == {"handover_completed": 1, "handover_started": 1}
    assert soak.suspect(Counter({"path_down": 2, "data_path_repaired": 1})) == {
        "data_path_repaired": 1, "path_down": 2}
