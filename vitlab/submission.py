"""Load a student's submission: a `.py` file, a lesson notebook, or a folder of them.

The rules are the contract's ("Submissions", ../shared/STAGE_CONTRACT.md):
- a `.py` file is imported as a module under a unique name, so `if __name__ == "__main__":`
  code does not run;
- from a notebook only solution cells (nbgrader metadata ``"solution": true``) and import cells
  (every statement an import; ``%`` and ``!`` lines are skipped) run, in notebook order, in one
  namespace, so a later definition replaces an earlier one; training and plotting cells never run;
- a folder's `.py` files and notebooks run in name order, sharing that namespace.

A cell or module that fails is recorded as a `LoadFailure` naming the file, cell and line, and
loading goes on with the next cell. The grader runs this in an isolated child process
(vitlab.grading); a lesson notebook may call `load_submission` in its own kernel to reuse a
student's earlier notebooks, e.g. ``load_submission("01_patching.ipynb").PatchEmbedding``.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import json
import linecache
import re
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

SOURCE_SUFFIXES = (".py", ".ipynb")
_MODULE_COUNTER = itertools.count()


class SubmissionError(ValueError):
    """A file that cannot be read as a submission (the message names it and says what to do)."""


class SubmissionWarning(UserWarning):
    """A cell or module of a submission that failed while loading it in-process."""


@dataclass(frozen=True)
class CodeCell:
    """Code that counts: one selected notebook cell, or a whole `.py` file."""

    file: Path            # the notebook or .py file on disk
    label: str            # how messages name the file, e.g. "lessons/01_patching.ipynb"
    number: int | None    # 1-based position among the notebook's cells; None for a .py file
    kind: str             # "solution", "import" or "module"
    code: str             # `%` and `!` lines blanked, so line numbers match the notebook
    grade_id: str = ""

    @property
    def where(self) -> str:
        if self.number is None:
            return self.label
        tag = f" ({self.grade_id})" if self.grade_id else ""
        return f"{self.label}, cell {self.number}{tag}"

    @property
    def filename(self) -> str:
        """The name its code is compiled under (what tracebacks show)."""
        return str(self.file) if self.number is None else f"{self.label} [cell {self.number}]"

    def defines(self, imports: bool = True) -> tuple[str, ...]:
        """The names this code binds at top level (`imports=False`: leaving out imported ones)."""
        return defined_names(self.code, imports)


@dataclass(frozen=True)
class LoadFailure:
    """A cell, module or file that failed to load."""

    where: str
    defines: tuple[str, ...] | None   # names it should have defined; None when unknown
    message: str                      # "<file>, cell 5, line 3: NameError: ..."
    position: int | None = None       # index in the list of cells; None for an unreadable file
    not_implemented: bool = False     # it raised NotImplementedError: an untouched stub


class Submission(types.SimpleNamespace):
    """The contract symbols found in a submission, as attributes."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"The submission defines no {name}: check that the solution cell defining it ran "
            f"without an error (and that it is marked as a solution cell)."
        )


# --- reading -----------------------------------------------------------------------------------

def notebook_code(path: str | Path, label: str | None = None) -> list[CodeCell]:
    """The cells of a notebook that count: solution cells and import cells, in notebook order."""
    path = Path(path)
    label = label or path.name
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{label} is not a readable notebook ({error}): "
                              f"open it in Jupyter and save it again.") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise SubmissionError(f"{label} has no list of cells: is it a Jupyter notebook "
                              f"(format 4)? Open it in Jupyter and save it again.")
    cells = []
    for number, cell in enumerate(notebook["cells"], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        code = _without_magics("".join(source) if isinstance(source, list) else str(source))
        metadata = cell.get("metadata")
        nbgrader = metadata.get("nbgrader") if isinstance(metadata, dict) else None
        nbgrader = nbgrader if isinstance(nbgrader, dict) else {}
        if nbgrader.get("solution") is True:
            kind = "solution"
        elif _is_import_cell(code):
            kind = "import"
        else:
            continue
        cells.append(CodeCell(path, label, number, kind, code, str(nbgrader.get("grade_id", ""))))
    return cells


def read_submission(path: str | Path) -> tuple[list[CodeCell], list[LoadFailure]]:
    """Every `CodeCell` of a submission, in running order, and the files that cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (expected a .py file, a "
                                f".ipynb notebook, or a folder of them)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix in SOURCE_SUFFIXES
                       and not p.name.startswith(".") and p.name != "__init__.py")
        if not files:
            raise SubmissionError(f"{path} holds no .py file and no .ipynb notebook")
        labels = [f"{path.name}/{p.name}" for p in files]
    elif path.suffix in SOURCE_SUFFIXES:
        files, labels = [path], [path.name]
    else:
        raise SubmissionError(f"{path}: expected a .py file, a .ipynb notebook, or a folder")
    cells, failures = [], []
    for file, label in zip(files, labels):
        try:
            if file.suffix == ".ipynb":
                cells += notebook_code(file, label)
            else:
                cells.append(CodeCell(file, label, None, "module", _read_text(file, label)))
        except SubmissionError as error:
            failures.append(LoadFailure(label, None, str(error)))
    return cells, failures


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SubmissionError(f"{label} is not UTF-8 text ({error}): save it as UTF-8.") from None


def _without_magics(code: str) -> str:
    return "".join("\n" if line.lstrip().startswith(("%", "!")) else line
                   for line in code.splitlines(keepends=True))


def _is_import_cell(code: str) -> bool:
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


@functools.lru_cache(maxsize=1024)
def defined_names(code: str, imports: bool = True) -> tuple[str, ...]:
    """Names bound by the top-level statements of `code` (defs, classes, assignments, and with
    `imports` the names imports bind).

    Code that does not parse falls back to the `def`/`class` lines, so that a cell with a syntax
    error still says which symbols it was meant to define.
    """
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return tuple(dict.fromkeys(a or b for a, b in _FALLBACK_DEFINITION.findall(code)))
    names: dict[str, None] = {}
    for node in body:
        _collect_bound(node, names, imports)
    return tuple(names)


# `class X`, `def X` and `X = ...` at the start of a line
_FALLBACK_DEFINITION = re.compile(r"^(?:class|def|async\s+def)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*=(?!=)",
                                  re.MULTILINE)
_BLOCKS = (ast.If, ast.Try, getattr(ast, "TryStar", ast.Try), ast.With, ast.For, ast.While,
           ast.ExceptHandler)


def _collect_bound(node: ast.AST, names: dict[str, None], imports: bool) -> None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names[node.name] = None
    elif isinstance(node, (ast.Import, ast.ImportFrom)) and imports:
        for alias in node.names:
            if alias.name != "*":
                names[alias.asname or alias.name.split(".")[0]] = None
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [item.optional_vars for item in node.items] if isinstance(node, ast.With)
                   else [node.target])
        for target in targets:
            for leaf in ast.walk(target) if target is not None else ():
                if isinstance(leaf, ast.Name):
                    names[leaf.id] = None
    if isinstance(node, _BLOCKS):
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, ()):
                _collect_bound(child, names, imports)


# --- running -----------------------------------------------------------------------------------

def run_cells(cells: list[CodeCell], skip: Iterable[int] = (),
              before_cell: Callable[[int], None] | None = None
              ) -> tuple[dict[str, Any], list[LoadFailure]]:
    """Run the cells in order in one namespace; return it and the cells that failed.

    `skip` holds positions in `cells` not to run (the grader's child skips a cell that killed or
    hung an earlier child); `before_cell(position)` is called before each cell runs.
    """
    skip = set(skip)
    shared = _new_module("vitlab_submission")
    for folder in dict.fromkeys(str(cell.file.parent) for cell in cells):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    failures = []
    for position, cell in enumerate(cells):
        if position in skip:
            continue
        if before_cell is not None:
            before_cell(position)
        failure = run_cell(cell, shared.__dict__)
        if failure is not None:
            failures.append(dataclasses.replace(failure, position=position))
    return shared.__dict__, failures


def run_cell(cell: CodeCell, namespace: dict[str, Any]) -> LoadFailure | None:
    """Run one cell in `namespace` (a `.py` file in a module of its own, whose top-level names are
    then copied into `namespace`). Returns the failure, or None."""
    if cell.kind == "module":
        module = _new_module(f"vitlab_submission_{_identifier(cell.file.stem)}")
        module.__file__ = str(cell.file)
        target = module.__dict__
    else:
        target = namespace
        linecache.cache[cell.filename] = (len(cell.code), None,
                                          cell.code.splitlines(keepends=True), cell.filename)
    try:
        exec(compile(cell.code, cell.filename, "exec"), target)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # SystemExit too: a student's sys.exit() fails only this cell
        return LoadFailure(cell.where, cell.defines(),
                           describe_exception(error, {cell.filename: cell.where}),
                           not_implemented=isinstance(error, NotImplementedError))
    if cell.kind == "module":
        namespace.update({name: target[name] for name in cell.defines() if name in target})
    return None


def describe_exception(error: BaseException, student_files: dict[str, str]) -> str:
    """ "<where>, line N: Type: message", at the deepest line of the student's own code.

    `student_files` maps compiled file names to how messages name them.
    """
    if isinstance(error, SyntaxError) and error.filename in student_files:
        text = f" ({error.text.strip()})" if error.text and error.text.strip() else ""
        return (f"{student_files[error.filename]}, line {error.lineno}: "
                f"SyntaxError: {error.msg}{text}")
    if isinstance(error, SystemExit):
        what = f"SystemExit: the code called sys.exit({_text(error.code)}) or exit()"
    else:
        what = f"{type(error).__name__}: {_text(error)}".rstrip(": ")
    frame = None
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename in student_files:
            frame = traceback
        traceback = traceback.tb_next
    if frame is None:
        return what
    where = student_files[frame.tb_frame.f_code.co_filename]
    return f"{where}, line {frame.tb_lineno}: {what}"


def _text(value: Any, limit: int = 1000) -> str:
    """str(value), cut to `limit` characters; student objects may fail to print, or print a lot."""
    try:
        text = str(value) if isinstance(value, BaseException) else repr(value)
    except Exception as error:  # any failure of a student's __str__ or __repr__
        text = f"<cannot be printed: {type(error).__name__}>"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _new_module(prefix: str) -> types.ModuleType:
    module = types.ModuleType(f"{prefix}_{next(_MODULE_COUNTER)}")
    sys.modules[module.__name__] = module
    return module


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


# --- in-process loading (for lesson notebooks; the grader isolates it) --------------------------

def contract_symbols(stages: Iterable[str] | None = None) -> list[str]:
    """The contract symbols of the given stages (all stages by default), in course order."""
    from vitlab.checks import STAGES, stage_names

    names = stage_names(stages)
    return list(dict.fromkeys(symbol for name in names for symbol in STAGES[name].symbols))


def load_submission(path: str | Path, stages: Iterable[str] | None = None) -> Submission:
    """Run a submission here, in this process, and return the contract symbols it defines.

    Cells that fail are reported as `SubmissionWarning`s naming the file, cell and line. For
    grading use `vitlab.grading.grade_submission`, which runs the code in an isolated process.
    """
    cells, failures = read_submission(path)
    namespace, run_failures = run_cells(cells)
    for failure in failures + run_failures:
        if not failure.not_implemented:
            warnings.warn(failure.message, SubmissionWarning, stacklevel=2)
    return Submission(**{name: namespace[name] for name in contract_symbols(stages)
                         if name in namespace})
