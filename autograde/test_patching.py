"""Stage 1 — patching: PatchEmbedding."""
import pytest

STAGE = "patching"


def test_patching(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
