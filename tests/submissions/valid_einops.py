# expect: valid
"""einops for the patches and for splitting and merging the heads."""

from einops import rearrange

CHANGES = [
    ("        x = self.proj(x)          # [B, E, H/P, W/P]\n"
     "        x = x.flatten(2)          # [B, E, N]\n"
     "        return x.transpose(1, 2)  # [B, N, E]\n",
     "        p = self.patch_size\n"
     '        return self.proj(rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p))\n'),
    ("self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)",
     "self.proj = nn.Linear(in_channels * patch_size * patch_size, embed_dim)"),
    ("        qkv = self.qkv_proj(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, NH, d]\n"
     "        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                     # 3 x [B, NH, N, d]\n",
     '        q, k, v = rearrange(self.qkv_proj(x), "b n (three h d) -> three b h n d",\n'
     "                            three=3, h=self.num_heads)\n"),
    ("out = out.transpose(1, 2).reshape(B, N, E)  # [B, N, NH * d]",
     'out = rearrange(out, "b h n d -> b n (h d)")'),
]
