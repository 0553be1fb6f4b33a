# expect: valid
"""nn.MultiheadAttention (batch_first=True) inside MultiHeadSelfAttention; qkv() from its in_proj."""

CHANGES = [
    ("        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)\n"
     "        self.out_proj = nn.Linear(embed_dim, embed_dim)\n",
     "        self.mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)\n"),
    ("qkv = self.qkv_proj(x).reshape(",
     "qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias).reshape("),
    ("        q, k, v = self.qkv(x)\n"
     "        out, weights = scaled_dot_product_attention(q, k, v)\n"
     "        out = out.transpose(1, 2).reshape(B, N, E)  # [B, N, NH * d]\n"
     "        out = self.out_proj(out)\n",
     "        out, weights = self.mha(x, x, x, need_weights=return_attention, average_attn_weights=False)\n"),
]
