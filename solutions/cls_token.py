"""Stage 2: prepend a learnable class token that will gather the whole image."""
import torch
from torch import Tensor, nn


class ClassToken(nn.Module):
    """[B, N, E] -> [B, N + 1, E]: the same learnable token at position 0 of every sample."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, E], a view: no copy per sample
        return torch.cat([cls, x], dim=1)                 # [B, N + 1, E]
