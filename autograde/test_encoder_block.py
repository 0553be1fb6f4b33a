"""Stage 4 — encoder block: scaled_dot_product_attention, MultiHeadSelfAttention, TransformerEncoderBlock."""
import pytest

STAGE = "encoder_block"


def test_encoder_block(verdict):
    result = verdict.stages[STAGE]
    if result.status != "passed":
        pytest.fail(result.report(), pytrace=False)
