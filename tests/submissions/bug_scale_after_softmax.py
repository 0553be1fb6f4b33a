# expect: encoder_block: applied after the softmax
"""The 1/sqrt(d) scale is applied to the weights after the softmax."""

CHANGES = [
    ("scores = q @ k.transpose(-2, -1) / math.sqrt(d)",
     "scores = q @ k.transpose(-2, -1)"),
    ("weights = scores.softmax(dim=-1)",
     "weights = scores.softmax(dim=-1) / math.sqrt(d)"),
]
