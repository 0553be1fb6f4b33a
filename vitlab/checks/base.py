"""What a check is.

Every stage is checked in two halves, so that student code never runs where a verdict is made:

- ``probe(symbols, inputs) -> data`` runs the student's code (in the notebook's own process for
  ``vitlab.check``, in an isolated child process for the grader) and returns *plain data* only:
  None, bool, int, float, str, lists/tuples, dicts with str keys and numeric numpy arrays.
  Errors raised by student code are recorded in that data as strings; a ``NotImplementedError``
  from student code is re-raised so the stage becomes ``not_implemented``.
- ``judge(inputs, data) -> (results, warnings)`` runs in the deciding process, never calls student
  code, and re-computes every expected value itself from ``inputs``.

``make_inputs(seed)`` draws the inputs (numpy arrays and numbers) in the deciding process; the
probe receives a copy.
"""
from __future__ import annotations

import linecache
import os
import sysconfig
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

STATUSES = ("passed", "failed", "not_implemented", "error")


@dataclass
class CheckResult:
    name: str
    passed: bool
    points: float          # earned
    max_points: float
    expected: str = ""
    got: str = ""
    hint: str = ""

    @property
    def message(self) -> str:
        if self.passed:
            return ""
        parts = [f"{self.name}: expected {self.expected}, got {self.got}"]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return " — ".join(parts)


@dataclass
class StageResult:
    stage: str
    status: str                         # one of STATUSES
    max_points: float
    checks: list[CheckResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str = ""                     # why the stage is `error` or `not_implemented`
    title: str = ""                     # e.g. "Stage 1 — patching", for reports

    @property
    def points(self) -> float:
        return sum(c.points for c in self.checks) if self.status in ("passed", "failed") else 0.0

    @property
    def messages(self) -> list[str]:
        if self.error:
            return [self.error]
        return [c.message for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        """The per-stage entry of the contract's JSON verdict."""
        return {
            "passed": sum(c.passed for c in self.checks),
            "failed": sum(not c.passed for c in self.checks),
            "points": round(self.points, 4),
            "max_points": self.max_points,
            "status": self.status,
            "messages": self.messages,
        }

    def report(self) -> str:
        """The ✓/✗ report a student reads: one line per check, and for each failure what was
        expected, what came instead and a hint."""
        head = f"{self.title or self.stage}: {_num(self.points)}/{_num(self.max_points)} points"
        lines = [f"{head} ({self.status.replace('_', ' ')})"]
        if self.error:
            lines.append(f"  ✗ {self.error}")
        for c in self.checks:
            mark = "✓" if c.passed else "✗"
            lines.append(f"  {mark} {c.name}  [{_num(c.points)}/{_num(c.max_points)}]")
            if not c.passed:
                lines.append(f"      expected: {c.expected}")
                lines.append(f"      got:      {c.got}")
                if c.hint:
                    lines.append(f"      hint:     {c.hint}")
        lines.extend(f"  ! warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    __str__ = report

    def __repr__(self) -> str:
        return (f"StageResult({self.stage!r}, {self.status!r}, "
                f"{_num(self.points)}/{_num(self.max_points)} points)")


def _num(x: float) -> str:
    return f"{x:g}"


Inputs = dict[str, Any]
Data = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str                                   # contract name, e.g. "patching"
    title: str                                  # e.g. "Stage 1 — patching"
    symbols: tuple[str, ...]                    # contract symbols the stage needs
    max_points: float
    make_inputs: Callable[[int], Inputs]
    probe: Callable[[Mapping[str, Any], Inputs], Data]
    judge: Callable[[Inputs, Data], tuple[list[CheckResult], list[str]]]
    time_limit_s: float = 30.0
    # Symbols the probe uses when they exist (e.g. the head stage's whole-model checks use
    # VisionTransformer); a missing one fails those checks only, it does not make the stage
    # not_implemented.
    optional_symbols: tuple[str, ...] = ()


def evaluate_stage(stage: Stage, inputs: Inputs, data: Any) -> StageResult:
    """Judge the probe's plain `data` (never calls student code): `passed` when every check
    passed, `failed` otherwise, points = the sum of the checks' points (partial credit)."""
    where = first_non_plain(data)
    if where is not None:
        return StageResult(stage.name, "error", stage.max_points, title=stage.title,
                           error=f"the probe sent back data that is not plain data ({where})")
    try:
        checks, warnings = stage.judge(inputs, data)
    except Exception as exc:  # a judge must not crash; if it does, say so instead of a verdict
        return StageResult(stage.name, "error", stage.max_points, title=stage.title,
                           error=f"the {stage.name} judge failed: {type(exc).__name__}: {exc}")
    status = "passed" if all(c.passed for c in checks) else "failed"
    return StageResult(stage.name, status, stage.max_points, checks, list(warnings),
                       title=stage.title)


def not_implemented_result(stage: Stage, why: str) -> StageResult:
    return StageResult(stage.name, "not_implemented", stage.max_points, title=stage.title,
                       error=f"not implemented: {why}")


def error_result(stage: Stage, why: str) -> StageResult:
    return StageResult(stage.name, "error", stage.max_points, title=stage.title, error=why)


# --- plain data ----------------------------------------------------------------------------

_PLAIN_SCALARS = (type(None), bool, int, float, str)


def first_non_plain(value: Any, path: str = "data") -> str | None:
    """Where `value` holds something that is not plain data, as "data['x'][2]: Tensor"; None when
    all of it is plain (None, bool, int, float, str, list/tuple, dict with str keys, numeric or
    boolean numpy arrays)."""
    if type(value) in _PLAIN_SCALARS:
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            found = first_non_plain(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{path}: a key of type {type(key).__name__}"
            found = first_non_plain(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if type(value) is np.ndarray and value.dtype.kind in "biuf":
        return None
    return f"{path}: {type(value).__name__}"


# --- where an exception came from ----------------------------------------------------------

_LIBRARY_DIRS = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
              sysconfig.get_paths()["platlib"], os.path.dirname(os.path.dirname(__file__))}
)


def _is_library_file(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_LIBRARY_DIRS)


def describe_exception(exc: BaseException, limit: int = 400) -> str:
    """`ValueError: message (in PatchEmbedding.forward, line 12 of patching.py: x = x.flatten(2))`:
    the type, the message and the last frame of the student's own code (not torch's, not vitlab's)."""
    message = str(exc).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    try:
        frames = [(frame, lineno) for frame, lineno in traceback.walk_tb(exc.__traceback__)
                  if not _is_library_file(frame.f_code.co_filename)]
        if frames:
            frame, lineno = frames[-1]
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            line = linecache.getline(code.co_filename, lineno).strip()
            text += (f" (in {name}, line {lineno} of {os.path.basename(code.co_filename)}"
                     f"{': ' + line if line else ''})")
    except Exception:  # e.g. a sandbox that forbids reading the source: the message alone will do
        pass
    return text


__all__ = [
    "STATUSES", "CheckResult", "StageResult", "Stage", "Inputs", "Data", "evaluate_stage",
    "not_implemented_result", "error_result", "first_non_plain", "describe_exception",
]
