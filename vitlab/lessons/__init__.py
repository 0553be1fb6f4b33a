"""What the lesson notebooks call: reuse earlier answers, a quick mode for tests and autograde.

The notebooks themselves are generated from `lessons/src/*.md` and `solutions/*.py` by
`python -m vitlab.lessons` (see vitlab/lessons/build.py).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

# lesson notebook (without .ipynb) -> the stage it teaches, in course order
LESSONS = {
    "01_patching": "patching",
    "02_cls_token": "cls_token",
    "03_skeleton": "skeleton",
    "04_encoder_block": "encoder_block",
    "05_head": "head",
    "06_training": "training",
}
QUICK_ENV = "VITLAB_LESSON_QUICK"
# What nbgrader leaves in a solution cell the student has not touched yet.
UNTOUCHED_STUB = re.compile(r"#\s*YOUR CODE HERE\s*\n\s*raise NotImplementedError\(\)")


class EarlierLessonNotDone(RuntimeError):
    """An earlier notebook this one builds on is not finished, or its answer fails to run."""


def quick_mode() -> bool:
    """True for a short run: under the tests (VITLAB_LESSON_QUICK=1) and nbgrader's autograde
    (nbgrader sets NBGRADER_EXECUTION while it executes notebooks)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0") or "NBGRADER_EXECUTION" in os.environ


def dataset_root() -> Path:
    """The built-in CT-like dataset: the full one (generated once, then cached), or a small one in
    quick mode."""
    from vitlab.phantom import builtin_dataset

    return builtin_dataset(volumes=6, slices=12) if quick_mode() else builtin_dataset()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings and nothing on stderr: nbgrader scores a test cell 0 when stderr is written."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def use_earlier_answers(*notebooks: str, namespace: dict[str, Any]) -> None:
    """Run the solution and import cells of your earlier notebooks into `namespace` (pass
    `globals()`), in order, so this notebook builds on your own code.

    Raises EarlierLessonNotDone, naming the notebook and cell, when one of them still holds an
    untouched stub or fails to run; everything that did load stays in `namespace`.
    """
    from vitlab.submission import notebook_code, run_cell

    problems = []
    for name in notebooks:
        path = Path(name)
        if not path.is_file():
            raise EarlierLessonNotDone(
                f"{path} is not in this folder ({Path.cwd()}): this notebook reuses your answers "
                f"from it, so keep all lesson notebooks side by side in one folder.")
        loaded, stubs = [], []
        for cell in notebook_code(path):
            failure = run_cell(cell, namespace)
            if failure is not None:
                problems.append(f"{failure.message}\n    Fix it in {path.name}, run that cell again, "
                                f"then this one.")
            elif cell.kind == "solution" and UNTOUCHED_STUB.search(cell.code):
                stubs.append(f"cell {cell.number} ({cell.grade_id})")
            elif cell.kind == "solution":
                loaded += cell.defines()
        if stubs:
            problems.append(f"{path.name} is not finished: {', '.join(stubs)} still raise "
                            f"NotImplementedError. Finish {path.name} first (its checkpoints show "
                            f"✓ when it is done), then run this cell again.")
        if loaded:
            print(f"✓ from {path.name}: {', '.join(loaded)}")
    if problems:
        raise EarlierLessonNotDone(
            "This notebook builds on your earlier ones, but:\n  - " + "\n  - ".join(problems))
