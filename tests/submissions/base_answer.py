"""The correct student-style answer that every catalogue entry changes; not an entry itself.

Self-contained, like every submission; tests/test_checks.py checks that it scores 60/60 points with
no warnings. See README.md for how an entry states its change."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbedding(nn.Module):
    def __init__(self, in_channels: int = 1, patch_size: int = 16, embed_dim: int = 192):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)          # [B, E, H/P, W/P]
        x = x.flatten(2)          # [B, E, N]
        return x.transpose(1, 2)  # [B, N, E]


class ClassToken(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, E]
        return torch.cat([cls, x], dim=1)                 # [B, N + 1, E]


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # [B, NH, N, N]
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, NH, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                     # 3 x [B, NH, N, d]
        return q, k, v

    def forward(self, x: Tensor, return_attention: bool = False):
        B, N, E = x.shape
        q, k, v = self.qkv(x)
        out, weights = scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, E)  # [B, N, NH * d]
        out = self.out_proj(out)
        return (out, weights) if return_attention else out


class LayerScale(nn.Module):
    def __init__(self, embed_dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((embed_dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerEncoderBlock(nn.Module):
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
        attn_out, weights = self.attn(self.norm1(x), return_attention=True)
        x = x + self.ls1(attn_out)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class ClassificationHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"Unknown pool {pool!r}: use 'cls' or 'mean'.")
        self.pool = pool
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)                                       # [B, N + 1, E]
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)  # [B, E]
        return self.fc(x)                                      # [B, num_classes]


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 256, patch_size: int = 16, in_channels: int = 1,
                 num_classes: int = 3, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_channels, patch_size, embed_dim)
        self.class_token = ClassToken(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[
            TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)
        ])
        self.head = ClassificationHead(embed_dim, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)   # [B, N, E]
        x = self.class_token(x)   # [B, N + 1, E]
        x = x + self.pos_embed    # [B, N + 1, E]
        return self.blocks(x)     # [B, N + 1, E]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def train_one_epoch(model, loader, optimizer, criterion, device) -> float:
    model.train()
    total_loss, total_samples = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(targets)
        total_samples += len(targets)
    return total_loss / total_samples


def evaluate(model, loader, criterion, device) -> tuple[float, float]:
    model.eval()
    correct, total_loss, total_samples = 0, 0.0, 0
    with torch.no_grad():
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            total_loss += criterion(logits, targets).item() * len(targets)
            correct += (logits.argmax(dim=1) == targets).sum().item()
            total_samples += len(targets)
    return correct / total_samples, total_loss / total_samples
