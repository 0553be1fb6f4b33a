# expect: head: averaging the tokens is pool='mean'
"""The head always averages the tokens, whatever pool says."""

CHANGES = [
    ('x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)  # [B, E]',
     "x = x.mean(dim=1)  # [B, E]"),
]
