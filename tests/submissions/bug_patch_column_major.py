# expect: patching: column-major
"""Patch tokens in column-major order: the patch grid is transposed before flattening."""

CHANGES = [
    ("x = x.flatten(2)          # [B, E, N]",
     "x = x.transpose(2, 3).flatten(2)  # [B, E, N]"),
]
