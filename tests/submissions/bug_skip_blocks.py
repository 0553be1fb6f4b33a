# expect: skeleton: never applies self.blocks
# also-fails: head
"""forward_features returns before the encoder blocks."""

CHANGES = [
    ("return self.blocks(x)     # [B, N + 1, E]",
     "return x                  # [B, N + 1, E]"),
]
