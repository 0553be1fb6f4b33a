"""The checks of every stage, in course order (see ../shared/STAGE_CONTRACT.md).

`STAGES[name]` is a `Stage` (base.py): `make_inputs`, `probe` (runs student code, returns plain
data) and `judge` (decides from plain data). `run_in_process` runs both halves here, for the
notebook checkpoints; the grader runs the probe in an isolated child process instead.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import torch

from vitlab.checks import cls_token, encoder_block, head, patching, skeleton, training
from vitlab.checks.base import (CheckResult, Stage, StageResult, describe_exception,
                                error_result, evaluate_stage, not_implemented_result)

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE
    for module in (patching, cls_token, skeleton, encoder_block, head, training)
}

_fork_rng = torch.random.fork_rng


def stage_names(stages: Iterable[str] | None = None) -> list[str]:
    """`stages` as a list, every name checked against STAGES (default: all, in course order)."""
    names = list(STAGES) if stages is None else list(stages)
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown}: the stages are {list(STAGES)}.")
    return names


def run_in_process(stage_name: str, symbols: Mapping[str, Any], seed: int = 0) -> StageResult:
    """Probe and judge one stage in this process (for notebooks, NOT for grading: here student
    code could tamper with the checker). A missing symbol or a NotImplementedError gives
    `not_implemented`, any other exception outside a sub-check gives `error`."""
    stage = STAGES[stage_name]
    missing = [name for name in stage.symbols if symbols.get(name) is None]
    if missing:
        return not_implemented_result(stage, f"{', '.join(missing)} is not defined")
    inputs = stage.make_inputs(seed)
    with _fork_rng(devices=[]):  # the caller's random state is left as it was
        try:
            data = stage.probe(symbols, copy.deepcopy(inputs))
        except NotImplementedError as exc:
            return not_implemented_result(stage, describe_exception(exc))
        except (Exception, SystemExit) as exc:
            return error_result(stage, f"your code stopped the check: {describe_exception(exc)}")
        return evaluate_stage(stage, inputs, data)


from vitlab.checks.notebook import assert_stage, check  # noqa: E402  (uses run_in_process)

__all__ = ["STAGES", "stage_names", "Stage", "StageResult", "CheckResult", "run_in_process", "evaluate_stage",
           "check", "assert_stage"]
