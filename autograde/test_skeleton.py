"""Stage 3 — skeleton: VisionTransformer (patch_embed -> class_token -> pos_embed -> blocks)."""
import pytest

STAGE = "skeleton"


def test_skeleton(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
