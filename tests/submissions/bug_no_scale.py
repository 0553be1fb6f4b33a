# expect: encoder_block: the scores are not scaled
"""The attention scores are not scaled by 1/sqrt(d)."""

CHANGES = [
    ("scores = q @ k.transpose(-2, -1) / math.sqrt(d)",
     "scores = q @ k.transpose(-2, -1)"),
]
