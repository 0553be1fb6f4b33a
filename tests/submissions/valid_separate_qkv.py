# expect: valid
"""Three Linear layers for q, k and v, heads split with view/transpose, torch's fused attention when the weights are not asked for."""

CHANGES = [
    ("        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)\n",
     "        self.q_proj = nn.Linear(embed_dim, embed_dim)\n"
     "        self.k_proj = nn.Linear(embed_dim, embed_dim)\n"
     "        self.v_proj = nn.Linear(embed_dim, embed_dim)\n"),
    ("        qkv = self.qkv_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, NH, d]\n"
     "        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                     # 3 x [B, NH, N, d]\n"
     "        return q, k, v\n",
     "        def heads(t: Tensor) -> Tensor:\n"
     "            return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, NH, N, d]\n"
     "        return heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))\n"),
    ("        out, weights = scaled_dot_product_attention(q, k, v)\n",
     "        if return_attention:\n"
     "            out, weights = scaled_dot_product_attention(q, k, v)\n"
     "        else:\n"
     "            out = F.scaled_dot_product_attention(q, k, v)\n"),
]
