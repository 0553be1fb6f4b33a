# expect: valid
"""Patches cut with F.unfold, then one shared Linear."""

CHANGES = [
    ("        x = self.proj(x)          # [B, E, H/P, W/P]\n"
     "        x = x.flatten(2)          # [B, E, N]\n"
     "        return x.transpose(1, 2)  # [B, N, E]\n",
     "        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size)  # [B, C*P*P, N]\n"
     "        return self.proj(patches.transpose(1, 2))                                   # [B, N, E]\n"),
    ("self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)",
     "self.proj = nn.Linear(in_channels * patch_size * patch_size, embed_dim)"),
]
