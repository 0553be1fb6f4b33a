"""Stage 3 (completed by stages 4 and 5): the Vision Transformer itself."""
import torch
from torch import Tensor, nn

from solutions.cls_token import ClassToken
from solutions.encoder_block import TransformerEncoderBlock
from solutions.head import ClassificationHead
from solutions.patching import PatchEmbedding


class VisionTransformer(nn.Module):
    """[B, C, H, W] -> [B, num_classes] (Dosovitskiy et al., "An Image is Worth 16x16 Words")."""

    def __init__(self, img_size: int = 256, patch_size: int = 16, in_channels: int = 1,
                 num_classes: int = 3, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, mlp_ratio: float = 4.0,
                 layer_scale: float | None = None, pool: str = "cls"):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}.")
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_channels, patch_size, embed_dim)
        self.class_token = ClassToken(embed_dim)
        # One learnable vector per position, the class token's slot included: without it
        # the encoder sees an unordered bag of patches.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[
            TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio, layer_scale)
            for _ in range(depth)
        ])
        self.head = ClassificationHead(embed_dim, num_classes, pool)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)   # [B, N, E]
        x = self.class_token(x)   # [B, N + 1, E]
        x = x + self.pos_embed    # [B, N + 1, E]
        return self.blocks(x)     # [B, N + 1, E]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # [B, num_classes]
