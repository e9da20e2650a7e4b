"""The settings syntax: sections, values, strings, includes, references, located errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobike_vici.config.model import ConfigError
from mobike_vici.config.parser import MAX_SECTION_DEPTH, parse_file, parse_string


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_sections_keys_and_lines() -> None:
    root = parse_string(
        "# leading comment\n"
        "connections {\n"
        "  gw {\n"
        "    remote_addrs = 192.0.2.1  # trailing comment\n"
        "    empty =\n"
        "  }\n"
        "}\n",
        "/etc/x.conf",
    )
    gw = root.sections["connections"].sections["gw"]
    assert (gw.file, gw.line) == ("/etc/x.conf", 3)
    assert gw.keys["remote_addrs"].value == "192.0.2.1"
    assert gw.keys["remote_addrs"].line == 4
    assert gw.keys["empty"].value == ""
    assert gw.keys["empty"].line == 5


def test_unquoted_words_join_with_one_space_and_brace_ends_value() -> None:
    root = parse_string("s { a = one   two\tthree }\nb = x=y,z")
    assert root.sections["s"].keys["a"].value == "one two three"
    assert root.keys["b"].value == "x=y,z"


def test_brace_on_next_line() -> None:
    root = parse_string("s\n{\n  k = v\n}\n")
    assert root.sections["s"].keys["k"].value == "v"


def test_quoted_strings_escapes_and_lines() -> None:
    text = 'a = "x # not a comment"\nb = "q\\"uote \\\\ \\t \\n end"\nc = "two\nlines"\nd = 1\n'
    root = parse_string(text)
    assert root.keys["a"].value == "x # not a comment"
    assert root.keys["b"].value == 'q"uote \\ \t \n end'
    assert root.keys["c"].value == "two\nlines"
    assert root.keys["d"].line == 5  # the newline inside the string was counted


def test_escaped_line_end_joins_lines() -> None:
    root = parse_string('a = "one \\\ntwo"\nb = 2\n')
    assert root.keys["a"].value == "one two"
    assert root.keys["b"].line == 3


def test_duplicate_sections_merge_and_later_key_wins() -> None:
    root = parse_string("s {\n a = 1\n b = 1\n}\ns {\n a = 2\n t { c = 3 }\n}\n")
    s = root.sections["s"]
    assert s.keys["a"].value == "2"
    assert s.keys["a"].line == 6
    assert s.keys["b"].value == "1"
    assert s.sections["t"].keys["c"].value == "3"
    assert s.line == 1  # the section is located where it was first opened


def test_references_inherit_and_own_values_win() -> None:
    root = parse_string(
        "base {\n a = base\n b = base\n sub { x = 1 }\n}\n"
        "more { c = more }\n"
        "s : base, more {\n a = own\n sub { y = 2 }\n}\n"
    )
    s = root.sections["s"]
    assert {k: v.value for k, v in s.keys.items()} == {"a": "own", "b": "base", "c": "more"}
    assert list(s.keys) == ["a", "b", "c"]  # own first, then inherited left to right
    assert {k: v.value for k, v in s.sections["sub"].keys.items()} == {"y": "2", "x": "1"}


def test_dotted_reference_and_nested_references() -> None:
    root = parse_string("a { x { k = 1 } }\nb : a.x { }\nc : b { }\n")
    assert root.sections["c"].keys["k"].value == "1"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("s {\n a = 1\n", 3, "'s' opened at line 1 is not closed"),
        ("a = 1\n}\n", 2, "unexpected '}'"),
        ("s {\n  = 1\n}", 2, "unexpected '='"),
        ('s {\n "k" = 1\n}', 2, "only values may be quoted"),
        ("s {\n k\n}", 2, "expected '=' or '{' after 'k'"),
        ('a = 1\nb = "open\n\n', 2, "unterminated quoted string"),
        ("a.b = 1\n", 1, "cannot contain '.'"),
        ("\n\ns : nowhere { }\n", 3, "referenced section 'nowhere' not found"),
        ("s : t { }\nt : s { }\n", 1, "references itself"),
        ("s : { }\n", 1, "expected a section name"),
    ],
)
def test_syntax_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, "f.conf")
    assert info.value.file == "f.conf"
    assert info.value.line == line
    assert fragment in info.value.message
    assert str(info.value).startswith(f"f.conf:{line}: ")


def test_nesting_is_bounded() -> None:
    deep = "s {" * (MAX_SECTION_DEPTH + 5) + "}" * (MAX_SECTION_DEPTH + 5)
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_string(deep)


def test_include_relative_glob_sorted_and_into_current_section(tmp_path: Path) -> None:
    main = write(
        tmp_path / "swanctl.conf",
        "connections {\n  include conf.d/*.conf\n}\nafter = yes\n",
    )
    write(tmp_path / "conf.d" / "20-b.conf", "b {\n  k = from-b\n}\nshared = b\n")
    write(tmp_path / "conf.d" / "10-a.conf", "a { k = from-a }\nshared = a\n")
    write(tmp_path / "conf.d" / "ignored.txt", "this is not = parsed {")
    root = parse_file(main)
    conns = root.sections["connections"]
    assert list(conns.sections) == ["a", "b"]
    # files are read in sorted order, so 20-b's value is the later one
    assert conns.keys["shared"].value == "b"
    assert conns.keys["shared"].file == str(tmp_path / "conf.d" / "20-b.conf")
    assert conns.sections["b"].keys["k"].line == 2
    assert root.keys["after"].value == "yes"


def test_include_absolute_and_quoted_pattern(tmp_path: Path) -> None:
    other = write(tmp_path / "dir with space" / "x.conf", "x = 1\n")
    main = write(tmp_path / "main.conf", f'include "{other}"\ninclude {tmp_path}/none-*.conf\n')
    root = parse_file(main)
    assert root.keys["x"].file == other


def test_include_of_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "a = 1\n\ninclude missing.conf\n")
    with pytest.raises(ConfigError) as info:
        parse_file(main)
    assert (info.value.file, info.value.line) == (main, 3)
    assert "does not exist" in info.value.message


def test_include_cycle_is_detected(tmp_path: Path) -> None:
    main = write(tmp_path / "a.conf", "include b.conf\n")
    write(tmp_path / "b.conf", "k = v\ninclude a.conf\n")
    with pytest.raises(ConfigError) as info:
        parse_file(main)
    assert info.value.file == str(tmp_path / "b.conf")
    assert info.value.line == 2
    assert "include cycle" in info.value.message


def test_error_inside_included_file_names_that_file(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "s {\n include inc.conf\n}\n")
    inc = write(tmp_path / "inc.conf", "ok = 1\n\nbroken {\n")
    with pytest.raises(ConfigError) as info:
        parse_file(main)
    assert info.value.file == inc
    assert info.value.line == 4


def test_included_file_cannot_close_the_including_section(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "s {\n include inc.conf\n}\n")
    write(tmp_path / "inc.conf", "}\n")
    with pytest.raises(ConfigError, match="unexpected '}'"):
        parse_file(main)


def test_include_word_as_plain_key() -> None:
    root = parse_string("include = yes\n")
    assert root.keys["include"].value == "yes"


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"a = 1\nb = \xff\n")
    with pytest.raises(ConfigError) as info:
        parse_file(str(bad))
    assert info.value.line == 2
    with pytest.raises(ConfigError, match="cannot read"):
        parse_file(str(tmp_path / "nope.conf"))
    if os.geteuid() != 0:  # root can read anything
        locked = tmp_path / "locked.conf"
        locked.write_text("a = 1\n")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            parse_file(str(locked))


_ALPHABET = st.sampled_from([*'ab =#{}:,."\\\n\t\r', "include ", "x.conf", "é", "\x00"])


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=60).map("".join))
def test_random_syntax_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_string(text, "/nonexistent-dir/fuzz.conf")
    except ConfigError as exc:
        # Nothing is included (the directory does not exist): the error is this text's,
        # at one of its lines.
        assert exc.file == "/nonexistent-dir/fuzz.conf", exc
        assert 1 <= exc.line <= text.count("\n") + text.count("\r") + 1, exc


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_string(text, "/nonexistent-dir/fuzz.conf")
    except ConfigError as exc:
        assert str(exc).startswith(f"{exc.file}:{exc.line}: ")


def _count_resolutions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every section resolution: work measured by structure, not by the clock."""
    from mobike_vici.config import parser

    calls = [0]
    original = parser._Resolver.effective

    def counting(self: parser._Resolver, sec: parser.Section,
                 active: tuple[int, ...]) -> parser.Section:
        calls[0] += 1
        return original(self, sec, active)

    monkeypatch.setattr(parser._Resolver, "effective", counting)
    return calls


def test_a_section_referenced_many_times_is_resolved_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each section references the previous one twice: 2**17 resolutions if redone each time.
    text = "s0 { k = v }\n" + "".join(f"s{i} : s{i - 1}, s{i - 1} {{ }}\n" for i in range(1, 18))
    calls = _count_resolutions(monkeypatch)
    root = parse_string(text)
    assert {k: v.value for k, v in root.sections["s17"].keys.items()} == {"k": "v"}
    assert calls[0] <= 2 * 18 + 1


def test_references_that_grow_the_tree_exponentially_are_refused() -> None:
    # s13 holds two copies of s12, each two of s11, ...: 2**13 copies of s0 from 40 lines.
    text = "s0 { k = v }\n" + "".join(
        f"s{i} {{\n a : s{i - 1} {{ }}\n b : s{i - 1} {{ }}\n}}\n" for i in range(1, 14))
    with pytest.raises(ConfigError, match="beyond its bounds"):
        parse_string(text)


def test_ordinary_templates_stay_within_the_bounds() -> None:
    # One template referenced by many connections: growth proportional to the text.
    text = "tpl { a = 1\n b = 2\n c = 3\n sub { d = 4 } }\nconnections {\n" + "".join(
        f" c{i} : tpl {{ own = {i} }}\n" for i in range(300)) + "}\n"
    root = parse_string(text)
    assert len(root.sections["connections"].sections) == 300
    assert root.sections["connections"].sections["c299"].sections["sub"].keys["d"].value == "4"


def test_include_pattern_with_a_nul_is_a_config_error() -> None:
    # Found by tests/fuzz/fuzz_config: glob raised ValueError("embedded null byte").
    for pattern in ("conf.d/*\0.conf", "x\0y"):
        with pytest.raises(ConfigError, match="NUL"):
            parse_string(f"include {pattern}\n", "/nonexistent/swanctl.conf")
