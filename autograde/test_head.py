"""Stage 5 — head: ClassificationHead, and the whole model."""
import pytest

STAGE = "head"


def test_head(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
