"""The model answer for every stage of the course (the contract: ../shared/STAGE_CONTRACT.md)."""
from solutions.patching import PatchEmbedding
from solutions.cls_token import ClassToken
from solutions.encoder_block import (
    MultiHeadSelfAttention,
    TransformerEncoderBlock,
    scaled_dot_product_attention,
)
from solutions.head import ClassificationHead
from solutions.skeleton import VisionTransformer
from solutions.training import evaluate, train_one_epoch

__all__ = [
    "PatchEmbedding",
    "ClassToken",
    "VisionTransformer",
    "scaled_dot_product_attention",
    "MultiHeadSelfAttention",
    "TransformerEncoderBlock",
    "ClassificationHead",
    "train_one_epoch",
    "evaluate",
]
