# expect: encoder_block: softmax over the wrong dimension
"""The softmax runs over the queries (dim=-2) instead of the keys."""

CHANGES = [
    ("scores.softmax(dim=-1)",
     "scores.softmax(dim=-2)"),
]
