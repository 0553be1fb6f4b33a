# expect: encoder_block: scaled by 1/sqrt(E)
"""Attention computed inline in MultiHeadSelfAttention, scaled by sqrt(embed_dim) instead of sqrt(d)."""

CHANGES = [
    ("        self.head_dim = embed_dim // num_heads\n",
     "        self.head_dim = embed_dim // num_heads\n"
     "        self.embed_dim = embed_dim\n"),
    ("        out, weights = scaled_dot_product_attention(q, k, v)\n",
     "        weights = (q @ k.transpose(-2, -1) / math.sqrt(self.embed_dim)).softmax(dim=-1)\n"
     "        out = weights @ v\n"),
]
