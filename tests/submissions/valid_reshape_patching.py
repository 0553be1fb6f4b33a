# expect: valid
"""Patches cut with reshape/permute, then one shared Linear."""

CHANGES = [
    ("self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)",
     "self.proj = nn.Linear(in_channels * patch_size * patch_size, embed_dim)"),
    ("        x = self.proj(x)          # [B, E, H/P, W/P]\n"
     "        x = x.flatten(2)          # [B, E, N]\n"
     "        return x.transpose(1, 2)  # [B, N, E]\n",
     "        B, C, H, W = x.shape\n"
     "        P = self.patch_size\n"
     "        x = x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)  # [B, H/P, W/P, C, P, P]\n"
     "        return self.proj(x.reshape(B, (H // P) * (W // P), C * P * P))      # [B, N, E]\n"),
]
