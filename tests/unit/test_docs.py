"""The operator docs stay true to the code: every mobike { } key, every event name."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from mobike_vici.config import mobike

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mobike_vici"
# Modules that write to the daemon's stream (the lab and the demo print their own).
NOT_THE_STREAM = ("lab", "demo.py")
_EVENT = re.compile(r"[a-z][a-z0-9_]+")


def _keys_table(text: str) -> str:
    begin, end = text.index(".. mobike-keys-begin"), text.index(".. mobike-keys-end")
    return text[begin + len(".. mobike-keys-begin"):end].strip("\n")


def test_config_doc_carries_the_keys_table_of_the_code() -> None:
    table = _keys_table(mobike.__doc__ or "")
    doc = (REPO / "docs" / "config.md").read_text()
    assert table in doc, "docs/config.md: copy the table from mobike_vici/config/mobike.py"


def test_the_keys_table_lists_every_key_the_parser_accepts() -> None:
    table = _keys_table(mobike.__doc__ or "")
    listed = {line.split()[0] for line in table.splitlines()
              if line and line[0].isalpha() and line.split()[0] != "key"}
    accepted = set(mobike._TOP_KEYS) | {f"prefer.NAME.{k}" for k in mobike._RULE_KEYS}
    assert listed == accepted


def _emitted(tree: ast.AST) -> set[str]:
    """Event names: emit/log calls with a literal name, write(level, name, ...), and the
    (name, fields) pairs the event mappers return."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = node.args
            if node.func.attr in ("emit", "debug", "info", "warning", "error") and args \
                    and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                names.add(args[0].value)
            if node.func.attr == "write" and len(args) >= 2 \
                    and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                names.add(args[1].value)
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) \
                and len(node.value.elts) == 2 and isinstance(node.value.elts[0], ast.Constant) \
                and isinstance(node.value.elts[0].value, str) \
                and isinstance(node.value.elts[1], ast.Dict | ast.Name):
            names.add(node.value.elts[0].value)
    return {n for n in names if _EVENT.fullmatch(n)}


@pytest.mark.slow
def test_every_event_the_code_emits_is_documented() -> None:
    emitted: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in NOT_THE_STREAM:
            continue
        emitted |= _emitted(ast.parse(path.read_text()))
    assert {"vici_connected", "handover_completed", "config_reloaded"} <= emitted
    doc = (REPO / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", doc, re.MULTILINE))
    assert sorted(emitted - documented) == []


@pytest.mark.slow
def test_nothing_cites_a_file_outside_the_project() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    # Spelled in pieces so that this file does not match itself.
    outside = re.compile(r"\b(DESIGN|LAB|STYLE)" + r"\.md\b|/" + "work/")
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".pem", ".der", ".bin"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                 if outside.search(line)]
    assert hits == []
