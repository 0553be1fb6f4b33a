# expect: valid
# expect-warning: no pos_embed
"""No position embedding at all: allowed, with a warning."""

CHANGES = [
    ("        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))\n"
     "        nn.init.trunc_normal_(self.pos_embed, std=0.02)\n",
     ""),
    ("        x = x + self.pos_embed    # [B, N + 1, E]\n",
     ""),
]
