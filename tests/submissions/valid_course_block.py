# expect: valid
"""The course's block: attention, then LayerNorm, Linear and activation, with a skip from before the attention; then LayerNorm, Linear and activation again with a skip around them."""


class TransformerEncoderBlock(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 layer_scale: float | None = None):
        super().__init__()
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, embed_dim)
        self.ls1 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.fc2 = nn.Linear(embed_dim, embed_dim)
        self.act = nn.GELU()
        self.ls2 = nn.Identity() if layer_scale is None else LayerScale(embed_dim, layer_scale)

    def forward(self, x: Tensor, return_attention: bool = False):
        attn_out, weights = self.attn(x, return_attention=True)
        x = x + self.ls1(self.act(self.fc1(self.norm1(attn_out))))
        x = x + self.ls2(self.act(self.fc2(self.norm2(x))))
        return (x, weights) if return_attention else x
