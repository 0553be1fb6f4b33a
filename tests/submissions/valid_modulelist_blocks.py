# expect: valid
"""The blocks in an nn.ModuleList, applied in a loop."""

CHANGES = [
    ("self.blocks = nn.Sequential(*[\n"
     "            TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)\n"
     "        ])",
     "self.blocks = nn.ModuleList(\n"
     "            [TransformerEncoderBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)]\n"
     "        )"),
    ("        return self.blocks(x)     # [B, N + 1, E]\n",
     "        for block in self.blocks:\n"
     "            x = block(x)\n"
     "        return x\n"),
]
