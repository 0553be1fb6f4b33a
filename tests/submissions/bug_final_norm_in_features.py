# expect: skeleton: the final LayerNorm belongs to the head
"""timm-style: forward_features ends with a LayerNorm after the blocks (the head has its own)."""

CHANGES = [
    ("        self.head = ClassificationHead(embed_dim, num_classes)\n",
     "        self.norm = nn.LayerNorm(embed_dim)\n"
     "        self.head = ClassificationHead(embed_dim, num_classes)\n"),
    ("return self.blocks(x)     # [B, N + 1, E]",
     "return self.norm(self.blocks(x))  # [B, N + 1, E]"),
]
