"""Replay a corpus through a fuzz target once, without libFuzzer: for line coverage.

    python -m coverage run --source=mobike_vici -m tests.fuzz.replay TARGET DIR...
    python -m coverage report

Every input goes through the same oracle as under atheris, so a corpus that
replays cleanly is also a regression check. Prints how many inputs ran.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .harness import guarded


def replay(name: str, dirs: list[str]) -> int:
    module = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    one_input = guarded(module.target, module.ALLOWED)
    count = 0
    for directory in dirs:
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                one_input(path.read_bytes())
                count += 1
    return count


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m tests.fuzz.replay TARGET CORPUS_DIR...")
    print(f"{sys.argv[1]}: replayed {replay(sys.argv[1], sys.argv[2:])} inputs")


if __name__ == "__main__":
    main()
