# expect: head: pools the last token
"""pool='cls' takes the last token."""

CHANGES = [
    ("x = x[:, 0] if self.pool",
     "x = x[:, -1] if self.pool"),
]
