"""The strongSwan settings syntax (strongswan.conf(5), swanctl.conf(5)) into a located tree.

Owns: sections ``name { }``, ``key = value``, ``#`` comments, quoted strings,
``include`` with globs, section references ``name : a, b { }``. Every key and
section remembers the file and line it came from so that the loader can say
``FILE:LINE: what is wrong``. Only ``ConfigError`` escapes ``parse_file`` and
``parse_string``; anything else escaping is a bug.

Deliberate differences from strongSwan's own parser, all stricter:
- an ``include`` of an explicit path (no wildcard) that does not exist is an
  error; strongSwan logs it and carries on, which hides typos. A wildcard
  pattern that matches nothing stays fine (``include conf.d/*.conf``).
- names containing ``.`` are rejected: swanctl looks keys up by dotted path,
  so such a section could never be read back.
- a file must close the sections it opens; an included file cannot close a
  section of the file that includes it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigError

# Bounds: a config is written by a person; anything deeper is a mistake or an attack.
MAX_SECTION_DEPTH = 64
MAX_INCLUDE_DEPTH = 16
MAX_RESOLVED_GROWTH = 16
MIN_RESOLVED_BUDGET = 4096
"""References copy sections, so nested references can grow a tree exponentially in
its text: the resolved tree may hold MAX(MIN_RESOLVED_BUDGET, MAX_RESOLVED_GROWTH x
the parsed tree) sections and keys."""

_NAME_STOP = frozenset('#{}=,:"\r\n\t ')
_VALUE_STOP = frozenset('#}"\r\n\t ')
_BLANK = frozenset(" \t\r")
_STRING_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


@dataclass(slots=True)
class Value:
    """A key's value and where it was (last) set."""

    value: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Reference:
    """``name : other.section`` in the header of a section."""

    name: str
    file: str
    line: int


@dataclass(slots=True)
class Section:
    """A settings section; ``keys`` and ``sections`` keep definition order."""

    name: str
    file: str
    line: int
    keys: dict[str, Value] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    refs: list[Reference] = field(default_factory=list)

    def merge(self, other: Section) -> None:
        """Extend this section with ``other`` as strongSwan does: later values replace."""
        for key, value in other.keys.items():
            self.keys.pop(key, None)  # the later definition also moves to the end
            self.keys[key] = value
        for name, sub in other.sections.items():
            if name in self.sections:
                self.sections[name].merge(sub)
            else:
                self.sections[name] = sub
        for ref in other.refs:
            if ref.name not in {r.name for r in self.refs}:
                self.refs.append(ref)


ReadFile = Callable[[str], bytes]


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def parse_file(path: str, *, resolve: bool = True) -> Section:
    """Parse ``path`` (and what it includes) into the root section.

    With ``resolve`` (the default) section references are applied, so callers
    see the effective tree swanctl would see.
    """
    root = Section("", path, 0)
    parser = _Parser(_read_file)
    parser.parse_path(path, root, include_line=None, stack=())
    return resolve_references(root) if resolve else root


def parse_string(text: str, file: str = "<string>", *, resolve: bool = True) -> Section:
    """Parse ``text`` as if it were the content of ``file`` (includes are relative to it)."""
    root = Section("", file, 0)
    parser = _Parser(_read_file)
    parser.parse_text(text, file, root, stack=(os.path.abspath(file),))
    return resolve_references(root) if resolve else root


class _Parser:
    def __init__(self, read: ReadFile) -> None:
        self._read = read

    def parse_path(
        self,
        path: str,
        into: Section,
        include_line: tuple[str, int] | None,
        stack: tuple[str, ...],
    ) -> None:
        where = include_line or (path, 0)
        real = os.path.realpath(path)
        if real in stack:
            chain = " -> ".join([*stack[stack.index(real) :], real])
            raise ConfigError(*where, f"include cycle: {chain}")
        if len(stack) >= MAX_INCLUDE_DEPTH:
            raise ConfigError(*where, f"includes nested deeper than {MAX_INCLUDE_DEPTH} files")
        try:
            data = self._read(path)
        except OSError as exc:
            raise ConfigError(*where, f"cannot read {path!r}: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(path, line, "file is not valid UTF-8") from None
        self.parse_text(text, path, into, (*stack, real))

    def parse_text(self, text: str, file: str, into: Section, stack: tuple[str, ...]) -> None:
        _FileParser(self, text, file, stack).run(into)

    def include(
        self, pattern: str, file: str, line: int, into: Section, stack: tuple[str, ...]
    ) -> None:
        if "\0" in pattern:
            # No path holds a NUL; the os functions would raise ValueError on it.
            raise ConfigError(file, line, "include pattern contains a NUL character")
        base = os.path.dirname(file)
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if glob.has_magic(full):
            # glob(3) as strongSwan uses it: sorted, no dot files, nothing matched is fine.
            paths = [p for p in sorted(glob.glob(full)) if not os.path.isdir(p)]
        else:
            if not os.path.exists(full):
                raise ConfigError(file, line, f"included file {full!r} does not exist")
            if os.path.isdir(full):
                raise ConfigError(file, line, f"included path {full!r} is a directory")
            paths = [full]
        for path in paths:
            self.parse_path(path, into, (file, line), stack)


class _FileParser:
    """One file's text; the section stack lives here, so nesting is iterative."""

    def __init__(self, owner: _Parser, text: str, file: str, stack: tuple[str, ...]) -> None:
        self.owner = owner
        self.text = text
        self.file = file
        self.stack = stack
        self.pos = 0
        self.line = 1

    # -- low-level scanning -------------------------------------------------

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(self.file, self.line if line is None else line, message)

    def _skip_blank(self) -> None:
        while self._peek() in _BLANK and self._peek():
            self.pos += 1

    def _skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _skip_space_and_comments(self) -> None:
        """Whitespace, newlines and comments between statements."""
        while True:
            ch = self._peek()
            if ch and ch in _BLANK:
                self.pos += 1
            elif ch == "\n":
                self.pos += 1
                self.line += 1
            elif ch == "#":
                self._skip_comment()
            else:
                return

    def _read_run(self, stop: frozenset[str]) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            self.pos += 1
        return self.text[start : self.pos]

    def _read_quoted(self) -> str:
        """A ``"..."`` string; the opening quote is at ``pos``. May span lines."""
        start_line = self.line
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self._error("unterminated quoted string", start_line)
            ch = self.text[self.pos]
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\r":
                continue  # as strongSwan: CRs inside strings are dropped
            if ch == "\n":
                self.line += 1
                out.append(ch)
            elif ch == "\\":
                if self.pos >= len(self.text):
                    raise self._error("unterminated quoted string", start_line)
                esc = self.text[self.pos]
                self.pos += 1
                if esc == "\r" and self._peek() == "\n":
                    self.pos += 1
                    esc = "\n"
                if esc == "\n":
                    self.line += 1  # an escaped line end joins the lines
                else:
                    out.append(_STRING_ESCAPES.get(esc, esc))
            else:
                out.append(ch)

    # -- grammar --------------------------------------------------------------

    def run(self, root: Section) -> None:
        sections: list[Section] = [root]
        while True:
            self._skip_space_and_comments()
            ch = self._peek()
            if not ch:
                if len(sections) > 1:
                    open_sec = sections[-1]
                    raise self._error(
                        f"section '{open_sec.name}' opened at line {open_sec.line} is not closed"
                    )
                return
            if ch == "}":
                if len(sections) == 1:
                    raise self._error("unexpected '}' without an open section")
                self.pos += 1
                done = sections.pop()
                self._add_section(sections[-1], done)
                continue
            if ch in "{=,:":
                raise self._error(f"unexpected '{ch}': expected a key or section name")
            if ch == '"':
                raise self._error("unexpected quoted string: only values may be quoted")
            line = self.line
            name = self._read_run(_NAME_STOP)
            self._skip_blank()
            nxt = self._peek()
            # `include PATTERN` needs a blank after the word; `include = x` is a plain key
            if (
                name == "include"
                and nxt not in ("=", "{", ":", "\n", "")
                and self.text[self.pos - 1] in " \t"
            ):
                self._include(sections[-1], line)
                continue
            if "." in name:
                raise self._error(f"'{name}': names cannot contain '.'", line)
            if nxt == "=":
                self.pos += 1
                value = self._read_value()
                self._add_key(sections[-1], name, Value(value, self.file, line))
                continue
            refs: list[Reference] = []
            if nxt == ":":
                self.pos += 1
                refs = self._read_references(line)
                nxt = self._peek()
            if nxt != "{":
                # strongSwan allows the brace on the next line: `name NEWLINE {`
                self._skip_space_and_comments()
                if self._peek() != "{":
                    raise self._error(f"expected '=' or '{{' after '{name}'", line)
            self.pos += 1
            if len(sections) > MAX_SECTION_DEPTH:
                raise self._error(f"sections nested deeper than {MAX_SECTION_DEPTH}", line)
            sections.append(Section(name, self.file, line, refs=refs))

    def _read_value(self) -> str:
        """The rest of the line after ``=``: words joined by one space, quotes kept whole."""
        parts: list[str] = []
        while True:
            self._skip_blank()
            ch = self._peek()
            if ch in ("", "\n", "#", "}"):
                # '#' and '}' end the value and are handled by the statement loop
                return " ".join(parts)
            if ch == '"':
                parts.append(self._read_quoted())
            else:
                parts.append(self._read_run(_VALUE_STOP))

    def _read_references(self, line: int) -> list[Reference]:
        refs: list[Reference] = []
        while True:
            self._skip_blank()
            name = self._read_run(_NAME_STOP)
            if not name:
                raise self._error("expected a section name in the reference list", line)
            refs.append(Reference(name, self.file, line))
            self._skip_blank()
            if self._peek() != ",":
                return refs
            self.pos += 1

    def _include(self, into: Section, line: int) -> None:
        pattern = self._read_include_pattern()
        if not pattern:
            raise self._error("include without a file pattern", line)
        self.owner.include(pattern, self.file, line, into, self.stack)

    def _read_include_pattern(self) -> str:
        """As strongSwan: quoted, or up to blank/#/}/EOL with ``\\`` escaping those."""
        out: list[str] = []
        while True:
            ch = self._peek()
            if ch in ("", "\n", " ", "\t", "#", "}"):
                return "".join(out)
            if ch == "\r":
                self.pos += 1
            elif ch == '"':
                out.append(self._read_quoted())
            elif ch == "\\" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] in '"#} ':
                out.append(self.text[self.pos + 1])
                self.pos += 2
            else:
                out.append(ch)
                self.pos += 1

    @staticmethod
    def _add_key(section: Section, name: str, value: Value) -> None:
        section.keys.pop(name, None)
        section.keys[name] = value

    @staticmethod
    def _add_section(parent: Section, section: Section) -> None:
        if section.name in parent.sections:
            parent.sections[section.name].merge(section)
        else:
            parent.sections[section.name] = section


# -- section references ---------------------------------------------------------


def resolve_references(root: Section) -> Section:
    """A copy of ``root`` where every ``name : ref`` section also holds what it inherits.

    As strongswan.conf(5): own keys and sections win over inherited ones and come
    first; several references are applied left to right; references nest.
    """
    budget = max(MIN_RESOLVED_BUDGET, MAX_RESOLVED_GROWTH * _size(root))
    resolver = _Resolver(root, budget)
    return resolver.effective(root, ())


def _size(sec: Section) -> int:
    return 1 + len(sec.keys) + sum(_size(sub) for sub in sec.sections.values())


class _Resolver:
    def __init__(self, root: Section, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.done: dict[int, Section] = {}
        """Referenced sections, resolved, by id: each is resolved once however often it
        is referenced (it is acyclic, or resolving it the first time failed)."""

    def _charge(self, sec: Section, nodes: int) -> None:
        self.budget -= nodes
        if self.budget < 0:
            raise ConfigError(sec.file, sec.line,
                              "section references expand the config beyond its bounds")

    def _lookup(self, ref: Reference) -> Section:
        node = self.root
        for part in ref.name.split("."):
            found = node.sections.get(part)
            if found is None:
                raise ConfigError(ref.file, ref.line, f"referenced section '{ref.name}' not found")
            node = found
        return node

    def effective(self, sec: Section, active: tuple[int, ...]) -> Section:
        if id(sec) in active:
            raise ConfigError(sec.file, sec.line, f"section '{sec.name}' references itself")
        active = (*active, id(sec))
        self._charge(sec, 1 + len(sec.keys))
        out = Section(sec.name, sec.file, sec.line, dict(sec.keys))
        for name, sub in sec.sections.items():
            out.sections[name] = self.effective(sub, active)
        for ref in sec.refs:
            target = self._lookup(ref)
            if target is sec:
                raise ConfigError(ref.file, ref.line, f"section '{sec.name}' references itself")
            self.inherit(out, self.referenced(target, active))
        return out

    def referenced(self, target: Section, active: tuple[int, ...]) -> Section:
        """``target`` resolved, read-only: shared by every section that references it."""
        if id(target) in active:
            raise ConfigError(target.file, target.line,
                              f"section '{target.name}' references itself")
        done = self.done.get(id(target))
        if done is None:
            done = self.done[id(target)] = self.effective(target, active)
        return done

    def inherit(self, into: Section, base: Section) -> None:
        """Add what ``into`` lacks from ``base`` (copied, never shared: ``base`` stays
        read-only); existing keys and sections win."""
        self._charge(into, len(base.keys))
        for key, value in base.keys.items():
            into.keys.setdefault(key, value)
        for name, sub in base.sections.items():
            if name in into.sections:
                self.inherit(into.sections[name], sub)
            else:
                into.sections[name] = self.copy(sub)

    def copy(self, sec: Section) -> Section:
        self._charge(sec, 1 + len(sec.keys))
        out = Section(sec.name, sec.file, sec.line, dict(sec.keys))
        for name, sub in sec.sections.items():
            out.sections[name] = self.copy(sub)
        return out
