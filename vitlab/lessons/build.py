"""Generate the lesson notebooks from `lessons/src/*.md` and the answers in `solutions/*.py`.

    python -m vitlab.lessons                   # rewrite lessons/*.ipynb, the student versions
    python -m vitlab.lessons --check           # exit 1 if lessons/*.ipynb are out of date
    python -m vitlab.lessons --answers DIR     # write the versions with answers into DIR

A source is Markdown: its text becomes markdown cells (a line `+++` starts a new one) and its
fenced blocks become code cells:

    ```python                                      an ordinary code cell
    ```solution solutions/patching.py PatchEmbedding  a solution cell: that code, copied from
                                                   solutions/, every function and method body
                                                   between ### BEGIN/END SOLUTION markers
    ```tests patching                              the stage's graded test cell: the checkpoint's
                                                   checks, then hidden ones with another seed

So the answers live only in solutions/. The student version replaces every solution region by
nbgrader's stub and drops the hidden tests, as `nbgrader generate_assignment` does.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from vitlab.lessons import LESSONS

REPO = Path(__file__).resolve().parents[2]
LESSON_DIR = REPO / "lessons"
SOURCE_DIR = LESSON_DIR / "src"
REGENERATE = "python -m vitlab.lessons"

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"   # nbgrader's, and the course's
HIDDEN_SEED = 2718
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

TEST_CELL = '''\
# Graded tests: {title}, {points:g} points. The checkpoint's checks, then hidden ones with
# other random inputs: it passes when the checkpoint above shows only ✓.
from vitlab.checks import assert_stage, run_in_process
from vitlab.lessons import quiet

assert_stage("{stage}")  # finds {names} in this notebook
{begin_hidden}
with quiet():
    hidden = run_in_process("{stage}", {{name: globals().get(name) for name in {lookup!r}}},
                            seed={seed})
assert hidden.status == "passed", "hidden tests (other random inputs):\\n" + hidden.report()
{end_hidden}'''


class SourceError(ValueError):
    """A lesson source that cannot be turned into a notebook (the message names file and line)."""


@dataclass(frozen=True)
class Block:
    kind: str            # "markdown", "python", "solution" or "tests"
    text: str
    args: tuple[str, ...]
    line: int            # where it starts in the source, for messages


# --- reading a source ------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w+)((?:\s+\S+)*)\s*$")


def parse_source(path: Path) -> list[Block]:
    blocks: list[Block] = []
    text: list[tuple[int, str]] = []           # (line number, line) of the markdown so far
    fence: tuple[str, tuple[str, ...], int] | None = None
    body: list[str] = []

    def flush_markdown() -> None:
        content = "\n".join(line for _, line in text).strip("\n")
        if content.strip():
            first = next(number for number, line in text if line.strip())
            blocks.append(Block("markdown", content, (), first))
        text.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is not None:
            if line.rstrip() == "```":
                blocks.append(Block(fence[0], "\n".join(body), fence[1], fence[2]))
                fence, body = None, []
            else:
                body.append(line)
            continue
        opening = FENCE.match(line)
        if opening:
            flush_markdown()
            kind, args = opening.group(1), tuple(opening.group(2).split())
            if kind not in ("python", "solution", "tests"):
                raise SourceError(f"{path}:{number}: unknown block ```{kind}: use python, "
                                  f"solution or tests.")
            fence = (kind, args, number)
        elif line.strip() == "+++":
            flush_markdown()
        else:
            text.append((number, line))
    if fence is not None:
        raise SourceError(f"{path}:{fence[2]}: the ```{fence[0]} block is never closed.")
    flush_markdown()
    return blocks


# --- solution cells --------------------------------------------------------------------------

def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node
    return found


def _body_region(function: ast.FunctionDef, lines: list[str]) -> tuple[int, int, str]:
    """(first line, last line, indent) of a function's body after its docstring, 1-based; comment
    lines right above the first statement belong to the body."""
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        raise SourceError(f"{function.name} has a docstring only: nothing to mark as a solution.")
    first = body[0].lineno
    while lines[first - 2].strip().startswith("#"):
        first -= 1
    indent = re.match(r"\s*", lines[body[0].lineno - 1]).group(0)
    return first, body[-1].end_lineno, indent


def solution_code(path: Path, names: tuple[str, ...]) -> str:
    """The named top-level classes, functions and constants of `path`, with every function and
    method body (after its docstring) between BEGIN/END SOLUTION markers."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    nodes = _top_level(ast.parse(source, filename=str(path)))
    pieces = []
    for name in names:
        if name not in nodes:
            raise SourceError(f"{path} defines no top-level {name} (it has {', '.join(nodes)}).")
        node = nodes[name]
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        piece = lines[start - 1:node.end_lineno]
        functions = [node] if isinstance(node, ast.FunctionDef) else [
            child for child in getattr(node, "body", []) if isinstance(child, ast.FunctionDef)]
        regions = sorted((_body_region(f, lines) for f in functions), reverse=True)
        for first, last, indent in regions:      # from the bottom up, so indices stay valid
            piece.insert(last - start + 1, indent + END_SOLUTION)
            piece.insert(first - start, indent + BEGIN_SOLUTION)
        pieces.append("\n".join(piece))
    return "\n\n\n".join(pieces)


def _replace_regions(code: str, begin: str, end: str, stub: str | None) -> str:
    """Drop every begin...end region (markers included), or put `stub` in its place, indented
    like the begin marker: nbgrader's ClearSolutions and ClearHiddenTests."""
    out, inside = [], False
    for line in code.split("\n"):
        if begin in line:
            inside = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out += [indent + stub_line for stub_line in stub.split("\n")]
        elif end in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def clear_solutions(code: str) -> str:
    return _replace_regions(code, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB)


def clear_hidden_tests(code: str) -> str:
    return _replace_regions(code, BEGIN_HIDDEN, END_HIDDEN, None)


# --- test cells ------------------------------------------------------------------------------

def test_code(stage_name: str) -> tuple[str, float]:
    """The graded test cell of a stage (with its hidden tests) and its points."""
    from vitlab.checks import STAGES

    if stage_name not in STAGES:
        raise SourceError(f"Unknown stage {stage_name!r}: use one of {', '.join(STAGES)}.")
    stage = STAGES[stage_name]
    code = TEST_CELL.format(title=stage.title, points=stage.max_points, stage=stage.name,
                            names=", ".join(stage.symbols),
                            lookup=stage.symbols + stage.optional_symbols, seed=HIDDEN_SEED,
                            begin_hidden=BEGIN_HIDDEN, end_hidden=END_HIDDEN)
    return code, stage.max_points


# --- notebooks -------------------------------------------------------------------------------

def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _nbgrader(grade_id: str, *, solution: bool, points: float | None = None) -> dict:
    meta = {"grade": points is not None, "grade_id": grade_id, "locked": points is not None,
            "schema_version": 3, "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def build_notebook(path: Path, answers: bool) -> nbformat.NotebookNode:
    """The notebook of the lesson source `path`: with answers and hidden tests (nbgrader's source
    version), or the student version (stubs, visible tests only)."""
    cells = []
    for block in parse_source(path):
        where = f"{path}:{block.line}"
        for marker in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN):
            if marker.lstrip("# ") in block.text:
                raise SourceError(f"{where}: {marker!r} may only come from a solution or tests "
                                  f"block (nbgrader would treat this cell as one).")
        if block.kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(block.text))
        elif block.kind == "python":
            cells.append(nbformat.v4.new_code_cell(block.text))
        elif block.kind == "solution":
            if len(block.args) < 2 or block.text.strip():
                raise SourceError(f"{where}: write ```solution FILE NAME... with an empty body.")
            code = solution_code(REPO / block.args[0], block.args[1:])
            cell = nbformat.v4.new_code_cell(code if answers else clear_solutions(code))
            grade_id = "_and_".join(_snake(name) for name in block.args[1:] if not name.isupper())
            cell.metadata = _nbgrader(grade_id, solution=True)
            cells.append(cell)
        else:
            if len(block.args) != 1 or block.text.strip():
                raise SourceError(f"{where}: write ```tests STAGE with an empty body.")
            code, points = test_code(block.args[0])
            cell = nbformat.v4.new_code_cell(code if answers else clear_hidden_tests(code))
            cell.metadata = _nbgrader(f"test_{block.args[0]}", solution=False, points=points)
            cells.append(cell)
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    if len(ids) != len(set(ids)):
        raise SourceError(f"{path}: two solution or test cells share a grade id: {ids}")
    for number, cell in enumerate(cells):
        cell.id = f"{path.stem[:2]}-{number:02d}"
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {"kernelspec": dict(KERNELSPEC),
                         "language_info": {"name": "python", "pygments_lexer": "ipython3"}}
    nbformat.validate(notebook)
    return notebook


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def write_lessons(out_dir: Path, answers: bool) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for lesson in LESSONS:
        path = out_dir / f"{lesson}.ipynb"
        notebook = build_notebook(SOURCE_DIR / f"{lesson}.md", answers)
        path.write_text(notebook_text(notebook), encoding="utf-8")
        written.append(path)
    return written


def stale_lessons(lesson_dir: Path = LESSON_DIR) -> list[str]:
    """The committed student notebooks that differ from what the sources give now."""
    stale = []
    for lesson in LESSONS:
        path = lesson_dir / f"{lesson}.ipynb"
        expected = notebook_text(build_notebook(SOURCE_DIR / f"{lesson}.md", answers=False))
        if not path.is_file() or path.read_text(encoding="utf-8") != expected:
            stale.append(path.name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlab.lessons", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only say whether lessons/*.ipynb are up to date (exit 1 if not)")
    parser.add_argument("--answers", type=Path, metavar="DIR",
                        help="write the versions with answers and hidden tests into DIR")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_lessons()
            if stale:
                print(f"out of date: {', '.join(stale)}; regenerate them with `{REGENERATE}`")
                return 1
            print("lessons/*.ipynb are up to date")
            return 0
        out_dir, answers = (args.answers, True) if args.answers else (LESSON_DIR, False)
        for path in write_lessons(out_dir, answers):
            print(f"wrote {path}")
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
