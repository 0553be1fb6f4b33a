"""Stage 6 — training: train_one_epoch and evaluate."""
import pytest

STAGE = "training"


def test_training(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
