"""The submission catalogue (tests/submissions/, see its README.md): each entry is the base answer
with one change; this builds an entry's whole submission text."""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import NamedTuple

SUBMISSIONS = Path(__file__).parent / "submissions"
BASE_ANSWER = "base_answer"  # the correct answer the entries change (README.md)
ENTRY_KINDS = ("bug_", "valid_", "stub_", "partial_")


class Entry(NamedTuple):
    """A catalogue file, parsed: its header (comments and docstring) and its change."""
    header: str
    base: str | None          # BASE = "...": the entry it changes (base_answer unless named)
    changes: list             # CHANGES = [(old, new), ...]: exact text, each old once
    imports: list[str]        # import lines, added after the base's
    definitions: dict         # top-level class/def: replaces the base's of the same name
    text: str                 # the whole file


@functools.cache
def read_entry(name: str) -> Entry:
    path = SUBMISSIONS / f"{name}.py"
    text = path.read_text()
    tree = ast.parse(text, filename=path.name)
    lines = text.splitlines(keepends=True)
    docstring, *statements = tree.body
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant) \
        and isinstance(docstring.value.value, str), f"{path.name} does not start with its docstring"
    base, changes, imports, definitions, other = BASE_ANSWER, [], [], {}, []
    for node in statements:
        match node:
            case ast.Assign(targets=[ast.Name("BASE")]):
                base = ast.literal_eval(node.value)
            case ast.Assign(targets=[ast.Name("CHANGES")]):
                changes = ast.literal_eval(node.value)
            case ast.Import() | ast.ImportFrom():
                imports.append("".join(lines[node.lineno - 1:node.end_lineno]))
            case ast.ClassDef() | ast.FunctionDef():
                definitions[node.name] = "".join(lines[first_line(node) - 1:node.end_lineno])
            case _:
                other.append(node.lineno)
    assert base is None or not other, (f"{path.name}:{other[0]}: an entry holds BASE, CHANGES, "
                                       "imports and whole class/def definitions, nothing else")
    assert all(isinstance(c, tuple) and len(c) == 2 and all(isinstance(s, str) for s in c)
               for c in changes), f"{path.name}: CHANGES must be a list of (old, new) strings"
    return Entry("".join(lines[:docstring.end_lineno]), base, changes, imports, definitions, text)


def first_line(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


@functools.cache
def submission_source(name: str) -> str:
    """The whole submission: the entry's header, then its base with the entry's change made.

    The base answer is a whole submission already, and so is an entry with BASE = None."""
    if name == BASE_ANSWER:
        return (SUBMISSIONS / f"{BASE_ANSWER}.py").read_text()
    entry = read_entry(name)
    if entry.base is None:
        return entry.text
    return entry.header + changed(name, entry, submission_body(entry.base))


def submission_body(name: str) -> str:
    """The submission without its header: the code an entry based on it changes."""
    source = submission_source(name)
    docstring = ast.parse(source).body[0]
    return "".join(source.splitlines(keepends=True)[docstring.end_lineno:])


def changed(name: str, entry: Entry, body: str) -> str:
    """`body` (the base's code) with the entry's CHANGES made in turn, each `old` found exactly
    once, then its definitions in place of the base's and its imports after the base's."""
    for old, new in entry.changes:
        count = body.count(old)
        assert count == 1, f"{name}: {old!r} occurs {count} times in {entry.base}, not once"
        body = body.replace(old, new)
    lines = body.splitlines(keepends=True)
    statements = ast.parse(body).body
    spans = {node.name: (first_line(node) - 1, node.end_lineno) for node in statements
             if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    unknown = set(entry.definitions) - set(spans)
    assert not unknown, f"{name}: {entry.base} defines no {', '.join(sorted(unknown))} to replace"
    for symbol, (start, end) in sorted(spans.items(), key=lambda item: -item[1][0]):
        if symbol in entry.definitions:
            lines[start:end] = [entry.definitions[symbol]]
    if entry.imports:  # the imports stand above every definition: their line is still right
        after = max(node.end_lineno for node in statements
                    if isinstance(node, (ast.Import, ast.ImportFrom)))
        lines[after:after] = entry.imports
    return "".join(lines)
