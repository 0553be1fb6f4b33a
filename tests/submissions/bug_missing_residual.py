# expect: encoder_block: skip connection is missing
"""The attention branch has no skip connection."""

CHANGES = [
    ("x = x + self.ls1(attn_out)",
     "x = self.ls1(attn_out)"),
]
