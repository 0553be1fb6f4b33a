# expect: skeleton: pos_embed covers the patches only
"""pos_embed has N rows and is added before the class token."""

CHANGES = [
    ("torch.zeros(1, num_patches + 1, embed_dim)",
     "torch.zeros(1, num_patches, embed_dim)"),
    ("        x = self.class_token(x)   # [B, N + 1, E]\n"
     "        x = x + self.pos_embed    # [B, N + 1, E]\n",
     "        x = x + self.pos_embed    # [B, N, E]\n"
     "        x = self.class_token(x)   # [B, N + 1, E]\n"),
]
