# expect: head: raise ValueError
"""An unknown pool silently falls back to averaging."""

CHANGES = [
    ('        if pool not in ("cls", "mean"):\n'
     '            raise ValueError(f"Unknown pool {pool!r}: use \'cls\' or \'mean\'.")\n',
     ""),
]
