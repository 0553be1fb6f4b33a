# expect: valid
"""pool='mean' averages the patch tokens only (not the class token), LayerNorm after the mean."""

CHANGES = [
    ("        x = self.norm(x)                                       # [B, N + 1, E]\n"
     '        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)  # [B, E]\n',
     '        x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)  # [B, E]\n'
     "        x = self.norm(x)\n"),
]
