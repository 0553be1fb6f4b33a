"""The judge side of a check: decide from plain data, never from student code.

A stage module lists its checks with ``CheckList.add``; each check reads the probe's data with
``need``/``array``, recomputes what it expects from the inputs, and raises ``Fail`` (what came
instead, and a hint) when the data does not match. Malformed data fails that check only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vitlab.checks.base import CheckResult, Data, Inputs
from vitlab.checks.probing import NOT_IMPLEMENTED, RAISED, SKIPPED

Warn = Callable[[str], None]


class Fail(Exception):
    """A failed check: what came instead (`got`), a hint naming the likely mistake, and the
    expectation when it is more precise than the check's own."""

    def __init__(self, got: str, hint: str = "", expected: str | None = None):
        super().__init__(got)
        self.got, self.hint, self.expected = got, hint, expected


@dataclass(frozen=True)
class Check:
    name: str
    points: float
    expected: str
    run: Callable[[Inputs, Data, Warn], None]


class CheckList:
    """The ordered checks of one stage; `judge` is the stage's judge."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, points: float, expected: str):
        def register(run: Callable[[Inputs, Data, Warn], None]):
            self.checks.append(Check(name, points, expected, run))
            return run
        return register

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks)

    def judge(self, inputs: Inputs, data: Data) -> tuple[list[CheckResult], list[str]]:
        warnings: list[str] = []
        results = []
        for check in self.checks:
            try:
                if not isinstance(data, dict):
                    raise Fail(f"probe data of type {type(data).__name__}", MALFORMED_HINT)
                check.run(inputs, data, warnings.append)
            except Fail as fail:
                results.append(CheckResult(check.name, False, 0.0, check.points,
                                           fail.expected or check.expected, fail.got, fail.hint))
            except Exception as exc:  # malformed data: fail this check, never the judge
                results.append(CheckResult(
                    check.name, False, 0.0, check.points, check.expected,
                    f"malformed probe data ({type(exc).__name__}: {exc})", MALFORMED_HINT))
            else:
                results.append(CheckResult(check.name, True, check.points, check.points))
        return results, warnings


MALFORMED_HINT = ("the data sent back from your code's run was not what the checker expects; "
                  "if your code does not tamper with torch or vitlab, tell your instructor")
NOT_IMPLEMENTED_HINT = "finish this part first: it still raises NotImplementedError"
RAISED_HINT = "your code raised this exception while the check ran it: fix the line named"


def need(data: Data, key: str) -> Any:
    """The value the probe recorded under `key`, or Fail when the step raised or did not run."""
    if key not in data:
        raise Fail("nothing: the probe recorded no result for this step", MALFORMED_HINT)
    value = data[key]
    if isinstance(value, dict) and RAISED in value:
        hint = NOT_IMPLEMENTED_HINT if value.get(NOT_IMPLEMENTED) else RAISED_HINT
        raise Fail(f"an exception: {value[RAISED]}", hint)
    if isinstance(value, dict) and SKIPPED in value:
        hint = NOT_IMPLEMENTED_HINT if value.get(NOT_IMPLEMENTED) else RAISED_HINT
        raise Fail(f"no result: not run, because {value[SKIPPED]}", hint)
    return value


def array(value: Any, shape: tuple[int, ...] | None = None, what: str = "the output") -> np.ndarray:
    """`value` as a float64 array, with the given shape, else Fail saying what came instead."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise Fail(f"{what} as {type(value).__name__}, not an array", MALFORMED_HINT)
    if shape is not None and value.shape != tuple(shape):
        raise Fail(f"{what} of shape {shape_text(value.shape)}",
                   "see the shape check: this one needs the right shape first",
                   expected=f"{what} of shape {shape_text(shape)}")
    return value.astype(np.float64)


def number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Fail(f"{what} as {type(value).__name__}, not a number", MALFORMED_HINT)
    return float(value)


def shape_text(shape: Any, names: str = "") -> str:
    text = "[" + ", ".join(str(int(s)) for s in shape) + "]"
    return f"{text} = [{names}]" if names else text


def close(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Same shape and numerically equal (NaN is never close)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.abs(b).max(initial=0)))))


def max_diff(a: np.ndarray, b: np.ndarray) -> str:
    """`max |difference| 0.0123` for a got-message."""
    if a.shape != b.shape:
        return f"shape {shape_text(a.shape)} instead of {shape_text(b.shape)}"
    return f"values off by up to {float(np.nanmax(np.abs(a - b), initial=0)):.3g}" + (
        " (NaN in the output)" if np.isnan(a).any() else "")
