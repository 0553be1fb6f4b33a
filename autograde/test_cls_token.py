"""Stage 2 — class token: ClassToken."""
import pytest

STAGE = "cls_token"


def test_cls_token(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
