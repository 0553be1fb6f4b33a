"""The checkpoint cells of the notebooks: `vitlab.check(...)` and `assert_stage(...)`.

Both run the same checks as the grader, in this process, quietly (no warnings, nothing on
stderr: nbgrader scores a test cell 0 when anything appears there), and never raise because of a
bug in the student's code; `assert_stage` raises AssertionError with the report when a check fails.
"""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any

from vitlab.checks.base import StageResult


def check(stage: str, *symbols: Any, _caller_depth: int = 1, **named: Any) -> StageResult:
    """Check one stage of your own code and print a short ✓/✗ report.

    Pass your objects (matched by their __name__, or by keyword: `MultiHeadSelfAttention=MyMHSA`);
    whatever the stage needs and you did not pass is looked up among the caller's variables.
    """
    result = _run(stage, symbols, named, sys._getframe(_caller_depth))
    print(result.report())
    return result


def assert_stage(stage: str, *symbols: Any, _caller_depth: int = 1, **named: Any) -> StageResult:
    """Like `check`, but raise AssertionError with the report unless every check passed."""
    result = _run(stage, symbols, named, sys._getframe(_caller_depth))
    if result.status != "passed":
        raise AssertionError("\n" + result.report())
    print(result.report())
    return result


def _run(stage_name: str, positional: tuple, named: dict, frame) -> StageResult:
    from vitlab.checks import STAGES, run_in_process

    if stage_name not in STAGES:
        raise ValueError(f"Unknown stage {stage_name!r}: use one of {', '.join(STAGES)}.")
    stage = STAGES[stage_name]
    wanted = stage.symbols + stage.optional_symbols
    symbols, notes = dict(named), []
    for obj in positional:
        name = getattr(obj, "__name__", None)
        if name in wanted:
            symbols.setdefault(name, obj)
        else:
            notes.append(f"{name or type(obj).__name__} is not one of {', '.join(wanted)}: "
                         f"pass it by keyword, e.g. {wanted[0]}=...")
    scope = {**frame.f_globals, **frame.f_locals}
    for name in wanted:
        if name not in symbols and scope.get(name) is not None:
            symbols[name] = scope[name]
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        result = run_in_process(stage_name, symbols)
    result.warnings[:0] = notes
    return result
