# expect: encoder_block: BatchNorm
# also-fails: head
"""BatchNorm instead of LayerNorm before the MLP."""

CHANGES = [
    ("self.norm2 = nn.LayerNorm(embed_dim)",
     "self.norm2 = nn.BatchNorm1d(embed_dim)"),
    ("self.mlp(self.norm2(x))",
     "self.mlp(self.norm2(x.transpose(1, 2)).transpose(1, 2))"),
]
