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

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

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
