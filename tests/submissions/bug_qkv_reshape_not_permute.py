# expect: encoder_block: reshape to [B, N, NH, d]
"""q, k, v are split into heads with a reshape where a permute is needed."""

CHANGES = [
    ("        qkv = self.qkv_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, NH, d]\n"
     "        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                     # 3 x [B, NH, N, d]\n",
     "        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)                               # 3 x [B, N, E]\n"
     "        q, k, v = (t.reshape(B, self.num_heads, N, self.head_dim) for t in (q, k, v))\n"),
]
