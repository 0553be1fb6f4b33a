"""A textbook Vision Transformer: the comparison point a first implementation usually looks like.

Same architecture and sizes as `solutions.VisionTransformer`, written the way tutorials
write it: separate q, k and v Linears and attention spelled out as matmul, scale, softmax,
matmul. It is a benchmark baseline, not a model answer.
"""
import torch
from torch import Tensor, nn


class TextbookAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q = nn.Linear(embed_dim, embed_dim)
        self.k = nn.Linear(embed_dim, embed_dim)
        self.v = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, NH, N, d]

    def forward(self, x: Tensor) -> Tensor:
        B, N, E = x.shape
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5   # [B, NH, N, N]
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(B, N, E)        # [B, N, E]
        return self.out(out)


class TextbookBlock(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden_dim = int(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = TextbookAttention(embed_dim, num_heads)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TextbookViT(nn.Module):
    """[B, C, H, W] -> [B, num_classes], with the reference's constructor arguments."""

    def __init__(self, img_size: int = 256, patch_size: int = 16, in_channels: int = 1,
                 num_classes: int = 3, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[TextbookBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                   # [B, N, E]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, N + 1, E]
        x = self.blocks(x + self.pos_embed)
        return self.head(self.norm(x)[:, 0])                                 # [B, num_classes]
