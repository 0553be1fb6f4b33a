# expect: skeleton: so the blocks' parameters are registered
"""The blocks live in a Python list, so their parameters are never registered."""

BASE = "valid_modulelist_blocks"
CHANGES = [
    ("self.blocks = nn.ModuleList(\n"
     "            [TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)]\n"
     "        )",
     "self.blocks = [TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)]"),
]
