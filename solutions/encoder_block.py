"""Stage 4: multi-head self-attention and the pre-norm Transformer encoder block."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d)) v, with the attention weights.

    q, k, v: [B, NH, N, d] -> (out [B, NH, N, d], weights [B, NH, N, N]).
    The 1/sqrt(d) scale goes inside the softmax: it keeps the scores' variance near 1
    so the softmax does not saturate as d grows.
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # [B, NH, N, N]
    weights = scores.softmax(dim=-1)                  # every row sums to 1
    return weights @ v, weights                       # [B, NH, N, d], [B, NH, N, N]


class MultiHeadSelfAttention(nn.Module):
    """[B, N, E] -> [B, N, E]: NH heads of attention, each over a d = E / NH slice."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}: "
                f"every head needs the same size d = embed_dim / num_heads."
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)  # q, k and v in one matmul
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, N, E] -> q, k, v, each [B, NH, N, d]."""
        B, N, _ = x.shape
        qkv = self.qkv_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, NH, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                     # 3 x [B, NH, N, d]
        return q, k, v

    def forward(self, x: Tensor, return_attention: bool = False):
        B, N, E = x.shape
        q, k, v = self.qkv(x)
        if return_attention:
            out, weights = scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # the same formula, fused
        out = out.transpose(1, 2).reshape(B, N, E)         # [B, N, NH * d]: heads side by side
        out = self.out_proj(out)
        return (out, weights) if return_attention else out


class LayerScale(nn.Module):
    """Multiply each channel of a residual branch by a learnable gamma (CaiT, Touvron et al. 2021)."""

    def __init__(self, embed_dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((embed_dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerEncoderBlock(nn.Module):
    """The ViT paper's pre-norm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 layer_scale: float | None = None):
        super().__init__()
        hidden_dim = int(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads)
        self.ls1 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, embed_dim),
        )
        self.ls2 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)

    def forward(self, x: Tensor, return_attention: bool = False):
        if return_attention:
            attn_out, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            attn_out = self.attn(self.norm1(x))
        x = x + self.ls1(attn_out)                  # [B, N, E]
        x = x + self.ls2(self.mlp(self.norm2(x)))   # [B, N, E]
        return (x, weights) if return_attention else x
