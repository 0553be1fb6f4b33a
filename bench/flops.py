"""FLOPs of one image through the ViT, counted from its shapes (multiply-add = 2 FLOPs).

Counted: the patch convolution, every Linear, and the two attention matmuls (q k^T and
weights v). Not counted: LayerNorm, softmax, GELU, additions (well under 1% here).
torch.utils.flop_counter does not see the CPU flash-attention kernel, hence the count by hand;
tests check it against FlopCounterMode on the textbook model, whose matmuls it does see.
"""


def forward_flops(img_size: int = 256, patch_size: int = 16, in_channels: int = 1,
                  num_classes: int = 3, embed_dim: int = 192, depth: int = 6,
                  num_heads: int = 3, mlp_ratio: float = 4.0) -> dict[str, int]:
    E, hidden = embed_dim, int(embed_dim * mlp_ratio)
    num_patches = (img_size // patch_size) ** 2
    tokens = num_patches + 1
    per_block = {
        "qkv": 2 * tokens * E * 3 * E,
        "attention": 2 * 2 * tokens * tokens * E,  # q k^T and weights v, all heads together
        "out_proj": 2 * tokens * E * E,
        "mlp": 2 * 2 * tokens * E * hidden,
    }
    flops = {
        "patch_embed": 2 * num_patches * in_channels * patch_size ** 2 * E,
        **{name: depth * value for name, value in per_block.items()},
        "head": 2 * E * num_classes,
    }
    flops["total"] = sum(flops.values())
    return flops


def training_flops(**config) -> int:
    """Forward + backward of one image: backward costs twice the forward, except that no
    gradient flows into the input image (the patch convolution's input gradient is skipped)."""
    forward = forward_flops(**config)
    return 3 * forward["total"] - forward["patch_embed"]
